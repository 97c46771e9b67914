"""Synthetic lish-moa data that carries the structure of the real competition data.

The real features (L1000 gene expression and PRISM cell viability) cannot be shipped, so the
platform is developed and demonstrated on data generated here. What makes MoA prediction what it
is must survive the substitution, otherwise what wins on synthetic data need not win on real data:

* **Drugs and replicates.** A drug is profiled in several rows: one per ``cp_time`` (24/48/72 h) x
  ``cp_dose`` (D1/D2), so usually 6 rows, sometimes 12 or 18, a few broken sets (1, 5, 7 rows), and
  a handful of *frequent* reference compounds with hundreds of rows (row counts drawn from the real
  histogram). About 7.8 % of the rows are vehicle controls (``ctl_vehicle``, one drug id
  ``cacb2b860``) with all targets zero. Every drug has one label vector across all its rows, so
  cross-validation must keep a drug's replicates together, exactly as on the real data.
* **Labels.** Very sparse and heavy-tailed: about 0.7 scored labels per row (0.33 % of the cells at
  206 targets), ~39 % rows without a scored label, target frequencies lognormal (a few common
  MoAs, many with one or two drugs), a few multi-label rows (2-4 labels), ~18 % of the nonscored
  columns empty. Every scored target has at least one train drug, as in the real data.
* **Nonscored targets share mechanisms with scored ones.** Targets belong to latent mechanism
  families whose members share most of their signature. Every nonscored target has a scored
  relative in its family and is either a *look-alike* (same signature; its drugs look like the
  relative's and only the nonscored label tells them apart, like ``erbb2_inhibitor`` next to
  ``egfr_inhibitor``) or a *partner* (co-labelled: drugs of the scored target often hit it too).
  Knowing the nonscored labels therefore helps predict the scored ones.
* **Gene expression.** Genes load on latent pathways (correlated gene blocks) plus heavy-tailed
  noise; values have roughly unit spread and clip at +-10 like the real (robust z-scored) data. A
  drug's effect is the sum of its mechanisms' signatures times a lognormal potency (a quarter of
  the annotated drug-mechanism pairs are nearly inactive, as many real compounds are), plus
  unannotated "orphan" mechanisms and drug-specific noise; replicates share the drug effect and add
  row noise. Dose (D2 > D1) and time (72 > 48 > 24 h) scale the effect; every time x dose plate adds
  a mild batch shift, the only structure in controls.
* **Cell viability.** Cytotoxic mechanisms kill all cell lines at once: viability is a saturating
  function of the drug's toxicity, strongly correlated across cells, floored at -10, mostly near 0
  with a long negative tail and a soft upper tail below 4.5.
* **Non-linearity.** Half of the mechanism families act in either direction along their pathway
  (the sign is a hidden property of the drug, as with feedback loops or agonist/inverse-agonist
  binding modes): the class-conditional mean along such a signature is zero, so a linear model
  cannot see it, while a network learns ``|projection|``. Saturating toxicity and the +-10 clip add
  further curvature. A neural net therefore beats logistic regression, as on the real data.

``bench/synth_structure.py`` checks the consequences: with drug-grouped cross-validation the
constant prior loses to logistic regression, which loses to an MLP, which loses to the same MLP
given the true nonscored labels.

Two modes:

``generate("small", seed)``
    Everything synthetic. Target names, families and column order depend only on the preset (not
    on the seed), so seeds give comparable datasets with the same columns. Test rows come from new
    drugs (the Kaggle test set was mostly unseen compounds) plus the frequent reference compounds,
    which were profiled on every plate and so appear in train and test alike.
``generate(preset, seed, labels=DIR)`` (semi-real)
    DIR holds the real ``train_targets_scored``, optionally ``train_targets_nonscored`` and
    ``train_drug`` files. Their sig_ids, labels and drug ids are kept exactly; features are
    synthesized *conditioned on the real label vectors* with the same machinery (every real target
    gets a signature, families come from target names and real co-occurrence). Controls are the rows
    of drug ``cacb2b860``; without a drug file no row is a control and each row is its own drug.
    Test rows are new drugs whose label vectors are copied from random real treated drugs.

Everything is numpy float32 and vectorized (``full`` takes a few seconds) and deterministic per
seed: one ``np.random.default_rng(seed)`` drives it all.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import CELL_PREFIX, CONTROL, CP_DOSES, CP_TIMES, GENE_PREFIX, TREATED, Features, MoaData, find_file, save
from .errors import ConfigError, DataError

__all__ = ["CONTROL_DRUG_ID", "PRESETS", "Preset", "generate", "write"]

# --------------------------------------------------------------------------------------------
# presets

#: Target names are ``<pathway word>_<action>``; a family has at most one target per action.
ACTIONS: tuple[str, ...] = ("inhibitor", "antagonist", "agonist", "activator", "blocker", "modulator",
                            "inducer", "stimulant", "ligand", "enhancer")


@dataclass(frozen=True)
class Preset:
    """The size of a synthetic dataset.

    ``n_train``/``n_test``: rows of train and test features. ``n_genes``/``n_cells``: feature
    columns (real: 772 and 100). ``n_scored``/``n_nonscored``: target columns (real: 206 and 402).
    ``n_families``: latent mechanism families the targets belong to (family members share most of
    their signature). ``n_pathways``: latent gene pathways (correlated gene blocks) signatures are
    built from. ``n_frequent_drugs``: reference compounds with hundreds of replicate rows (real: 9
    besides the control). In semi-real mode only the gene/cell/pathway counts and ``n_test`` are used.
    """

    name: str
    n_train: int
    n_test: int
    n_genes: int
    n_cells: int
    n_scored: int
    n_nonscored: int
    n_families: int
    n_pathways: int
    n_frequent_drugs: int

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_genes, self.n_cells, self.n_scored, self.n_pathways, self.n_families) < 1:
            raise ConfigError(f"preset {self.name!r}: sizes must be positive")
        if self.n_test < 0 or self.n_nonscored < 0 or self.n_frequent_drugs < 0:
            raise ConfigError(f"preset {self.name!r}: n_test, n_nonscored and n_frequent_drugs must be >= 0")
        if self.n_families > self.n_scored:
            raise ConfigError(f"preset {self.name!r}: n_families ({self.n_families}) exceeds n_scored ({self.n_scored})")
        if self.n_scored + self.n_nonscored > self.n_families * len(ACTIONS):
            raise ConfigError(f"preset {self.name!r}: at most {len(ACTIONS)} targets per family")


# The sparsity of the real labels is a per-row property (~0.7 scored labels per row, ~39 % of rows
# without one), so the fraction of positive cells is ~0.7 / n_scored: `small` needs ~160 scored
# targets to show both the real cell sparsity (<0.5 %) and the real share of unlabelled rows.
PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", n_train=600, n_test=150, n_genes=48, n_cells=12, n_scored=24, n_nonscored=40,
                   n_families=12, n_pathways=8, n_frequent_drugs=1),
    "small": Preset("small", n_train=4000, n_test=800, n_genes=200, n_cells=40, n_scored=160, n_nonscored=100,
                    n_families=80, n_pathways=24, n_frequent_drugs=3),
    "full": Preset("full", n_train=23814, n_test=3982, n_genes=772, n_cells=100, n_scored=206, n_nonscored=402,
                   n_families=120, n_pathways=48, n_frequent_drugs=9),
}
DEFAULT_PRESET = "small"
SEMI_REAL_DEFAULT_PRESET = "full"

# --------------------------------------------------------------------------------------------
# constants of the real data (see ../shared/data/lish-moa-labels/README.md)

CONTROL_DRUG_ID = "cacb2b860"
CONTROL_FRACTION = 0.078          # 1,866 of 23,814 rows
SIG_ID_PREFIX = "id_"
HEX_DIGITS = 9                    # sig_ids are id_ + 9 hex digits, drug ids 9 hex digits
#: Rows per (non-frequent) treated drug in the real train set: {rows: drugs}.
REPLICATE_HISTOGRAM: dict[int, int] = {1: 129, 2: 3, 3: 2, 4: 3, 5: 66, 6: 2774, 7: 196, 8: 4, 11: 4, 12: 64,
                                       13: 25, 14: 6, 18: 3}
#: Rows of the real frequent drugs (more than 18 rows each), largest first.
FREQUENT_DRUG_ROWS: tuple[int, ...] = (718, 246, 203, 202, 196, 194, 186, 178, 19)
FREQUENT_ROW_FRACTION = sum(FREQUENT_DRUG_ROWS) / 23814
#: Labels (scored or nonscored) drawn as a drug's primary mechanisms: {count: probability}.
PRIMARY_LABELS: dict[int, float] = {0: 0.17, 1: 0.76, 2: 0.055, 3: 0.01, 4: 0.005}
SCORED_SHARE = 0.79               # share of primary labels that are scored targets
PARTNERS_PER_SCORED = 0.3         # nonscored co-labelled partners, per scored target
PARTNER_PROBABILITY = 0.7         # chance a drug of a scored target also carries each of its partners
FREQUENT_LABELS: dict[int, float] = {1: 0.4, 2: 0.35, 3: 0.25}
POPULARITY_SIGMA = 1.2            # lognormal spread of target frequencies (real: mean/median ~2)
EMPTY_NONSCORED_FRACTION = 71 / 402
COVER_DONOR_DRUGS = 4             # a target with this many train drugs can give one to an unseen target

# --------------------------------------------------------------------------------------------
# constants of the generative model (the knobs the bench/synth_structure.py ordering depends on)

TIME_EFFECT: dict[int, float] = {24: 0.55, 48: 0.8, 72: 1.0}
DOSE_EFFECT: dict[str, float] = {"D1": 0.7, "D2": 1.0}
GENE_CLIP = 10.0
GENE_UNIT = 0.6                   # overall gene scale: roughly unit spread, heavy tails reach the clip
CELL_FLOOR = -10.0
CELL_SOFT_CEILING = 4.5           # positive viability saturates towards this
FAMILY_SHARE = 0.8                # weight of the family signature in a member's signature
SIBLING_SHARE = 1.0               # weight of its scored sibling's signature in a look-alike's
PATHWAY_SIGNATURE_SHARE = 0.7     # rest of a signature: a few marker genes
MARKER_GENES = 6                  # marker genes per signature
GENE_PRIMARY_LOADING = 1.0        # a gene's loading on its own pathway
GENE_DENSE_LOADING = 0.35         # and its small loadings on all pathways
BIDIRECTIONAL_FRACTION = 0.5      # families whose effect sign is a hidden property of the drug
TOXIC_FRACTION = 0.12             # families that kill cells
TOXICITY_SIGMA = 0.8
TARGET_STRENGTH_SIGMA = 0.35      # some mechanisms leave a bigger footprint than others
SIGNATURE_SCALE = 2.0             # gene-space RMS of a full-potency mechanism at 72 h, D2
POTENCY_SIGMA = 0.6
INACTIVE_PROBABILITY = 0.25       # annotated drugs with (almost) no visible effect
INACTIVE_POTENCY = 0.1
FREQUENT_POTENCY = 1.5            # the reference compounds are potent
ORPHAN_FAMILIES_PER_FAMILY = 0.5  # unannotated mechanisms (confounders), relative to families
ORPHAN_PROBABILITY = 0.3
DRUG_LATENT_NOISE = 0.35          # drug-specific off-target effect along pathways
DRUG_GENE_NOISE = 0.25            # and per gene
ROW_LATENT_NOISE = 0.3            # replicate noise along pathways
ROW_GENE_NOISE = 0.5              # and per gene
NOISE_DF = 5                      # Student-t tails of the noise
BATCH_SCALE = 0.15                # time x dose plate effect, also on controls
TOXICITY_GENE_SCALE = 2.0         # dying cells also move a stress signature in the genes
CELL_LOADING_RANGE = (0.6, 1.3)   # sensitivity of each cell line to cytotoxicity
CELL_COMMON_NOISE = 0.35          # per-row noise shared by all cell lines
CELL_NOISE = 0.55
CELL_SKEW = 0.25                  # extra one-sided negative noise (slightly sick wells)

_WORDS: tuple[str, ...] = (
    "abl", "acat", "adenosine", "adrenergic", "akt", "alk", "ampk", "androgen", "angiotensin", "atm", "atr",
    "aurora", "bcl", "braf", "bromodomain", "btk", "calcineurin", "calcium", "cannabinoid", "casein", "caspase",
    "cdk", "chk", "cholinergic", "cyclooxygenase", "dopamine", "egfr", "elastase", "erbb2", "estrogen", "faah",
    "fgfr", "flt3", "gaba", "glucocorticoid", "glutamate", "gsk", "hdac", "histamine", "hmgcr", "hsp", "igf1",
    "ikk", "jak", "kit", "leukotriene", "lipoxygenase", "lxr", "mdm", "mek", "mtor", "nfkb", "nrf2", "opioid",
    "orexin", "p38", "parp", "pdgfr", "pdk", "phosphodiesterase", "pi3k", "pkc", "potassium", "ppar",
    "progesterone", "proteasome", "raf", "ras", "retinoid", "rho", "serotonin", "sigma", "smoothened", "sodium",
    "src", "syk", "thrombin", "tlr", "tnf", "topoisomerase", "trpv", "tubulin", "vegfr", "wnt", "xiap",
    "adenylyl", "aromatase", "autotaxin", "chloride", "gamma_secretase", "hcv", "integrin", "lipase", "mapk",
    "nitric_oxide", "prostanoid", "rna_polymerase", "sphingosine", "thymidylate", "tyrosine_kinase",
)
_QUALIFIERS: tuple[str, ...] = ("receptor", "kinase", "channel", "transporter", "synthase", "reductase")
UNIVERSE_SEED = 20200903          # names/families depend on the preset only (start of lish-moa)
FAMILY_SIZE_SIGMA = 0.5           # lognormal spread of family sizes
FIRST_ACTION_PROBABILITY = 0.5    # a member takes the family's first free action ("inhibitor" first):
                                  # inhibitors dominate the real target list


# --------------------------------------------------------------------------------------------
# public API


def generate(preset: str | Preset | None = None, seed: int = 0,
             labels: str | os.PathLike | None = None) -> MoaData:
    """A complete synthetic lish-moa dataset (train, targets, drugs, test), deterministic per ``seed``.

    ``preset`` is a name of :data:`PRESETS` or a :class:`Preset`; ``None`` means ``small``, or
    ``full`` in semi-real mode. With ``labels=DIR`` the real label files in DIR are kept as they are
    and the features are synthesized conditioned on them (semi-real mode; the preset then only sets
    the gene/cell/pathway counts and ``n_test``, the labels fix the rest).
    """
    rng = np.random.default_rng(seed)
    if labels is not None:
        return _generate_semi_real(_resolve(SEMI_REAL_DEFAULT_PRESET if preset is None else preset), Path(labels), rng)
    return _generate_synthetic(_resolve(DEFAULT_PRESET if preset is None else preset), rng)


def write(preset: str | Preset | None, seed: int, out: str | os.PathLike, labels: str | os.PathLike | None = None,
          overwrite: bool = False) -> Path:
    """:func:`generate` then :func:`moa_tune.data.save` (atomic) to ``out``; returns the directory."""
    return save(generate(preset, seed, labels), out, overwrite=overwrite)


def _resolve(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


# --------------------------------------------------------------------------------------------
# target universe: names, kinds and families


@dataclass(frozen=True)
class _Universe:
    """All targets, scored first: names, family, scored relative, and the family count.

    Every nonscored target has a scored ``sibling`` in its family. A *look-alike* (``partner`` False)
    copies the sibling's signature and is labelled on its own drugs; a *partner* has a signature of
    its own and is labelled together with its sibling (a second target of the same drugs).
    """

    scored_columns: tuple[str, ...]
    nonscored_columns: tuple[str, ...]
    family: np.ndarray            # (n_targets,) int
    sibling: np.ndarray           # (n_targets,) int: a nonscored target's scored relative, -1 for scored
    partner: np.ndarray           # (n_targets,) bool: co-labelled partner rather than look-alike
    n_families: int

    @property
    def n_scored(self) -> int:
        return len(self.scored_columns)

    @property
    def n_targets(self) -> int:
        return len(self.scored_columns) + len(self.nonscored_columns)


def _family_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pathway words: the vocabulary, then vocabulary x qualifiers."""
    words = list(rng.permutation(np.array(_WORDS)))
    extra = [f"{w}_{q}" for q in _QUALIFIERS for w in _WORDS]
    words += list(rng.permutation(np.array(extra)))
    if n > len(words):
        words += [f"{words[i % len(words)]}_{i // len(words) + 1}" for i in range(len(words), n)]
    return [str(w) for w in words[:n]]


def _synthetic_universe(preset: Preset) -> _Universe:
    """Targets named ``<pathway>_<action>``; members of a family share the pathway word.

    Drawn from a generator keyed on the preset's shape only, so column names do not move with the
    seed. Every family has at least one scored member; nonscored targets join existing families.
    """
    rng = np.random.default_rng([UNIVERSE_SEED, preset.n_scored, preset.n_nonscored, preset.n_families])
    k = preset.n_families
    words = _family_words(k, rng)
    size_weight = rng.lognormal(0.0, FAMILY_SIZE_SIGMA, k)
    family = np.empty(preset.n_scored + preset.n_nonscored, dtype=np.int64)
    family[:k] = rng.permutation(k)
    count = np.bincount(family[:k], minlength=k)
    for t in range(k, len(family)):
        p = np.where(count < len(ACTIONS), size_weight, 0.0)
        family[t] = rng.choice(k, p=p / p.sum())
        count[family[t]] += 1
    used: dict[int, list[str]] = {f: [] for f in range(k)}
    names = []
    for t in range(len(family)):
        f = int(family[t])
        free = [a for a in ACTIONS if a not in used[f]]
        action = free[0] if rng.random() < FIRST_ACTION_PROBABILITY else str(rng.choice(free))
        used[f].append(action)
        names.append(f"{words[f]}_{action}")
    scored = np.array(names[:preset.n_scored])
    nonscored = np.array(names[preset.n_scored:])
    s_order, n_order = np.argsort(scored, kind="stable"), np.argsort(nonscored, kind="stable")  # Kaggle: sorted
    order = np.concatenate([s_order, preset.n_scored + n_order])
    family = family[order]
    sibling = np.full(len(family), -1, dtype=np.int64)
    for t in range(preset.n_scored, len(family)):
        sibling[t] = rng.choice(np.flatnonzero(family[:preset.n_scored] == family[t]))
    partner = np.zeros(len(family), dtype=bool)
    n_partners = min(preset.n_nonscored, int(round(PARTNERS_PER_SCORED * preset.n_scored)))
    partner[preset.n_scored + rng.choice(preset.n_nonscored, n_partners, replace=False)] = True
    return _Universe(tuple(str(s) for s in scored[s_order]), tuple(str(s) for s in nonscored[n_order]),
                     family, sibling, partner, k)


# --------------------------------------------------------------------------------------------
# the biology: signatures of mechanisms, gene and cell structure


@dataclass(frozen=True)
class _Biology:
    loadings: np.ndarray          # (pathways, genes): genes load on latent pathways
    signature: np.ndarray         # (targets + orphans, genes): gene footprint of each mechanism
    bidirectional: np.ndarray     # (targets + orphans,) bool: effect sign is a hidden drug property
    toxicity: np.ndarray          # (targets + orphans,) >= 0: how much the mechanism kills cells
    n_orphans: int
    batch: np.ndarray             # (times, doses, genes): plate effects
    toxicity_direction: np.ndarray  # (genes,): stress response of dying cells
    cell_loading: np.ndarray      # (cells,)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    rms = np.sqrt((matrix ** 2).mean(axis=1, keepdims=True))
    return matrix / np.maximum(rms, 1e-12)


def _biology(universe: _Universe, n_genes: int, n_cells: int, n_pathways: int,
             rng: np.random.Generator) -> _Biology:
    """Signatures: family direction + own direction along pathways, plus marker genes.

    Each gene loads mostly on one pathway (correlated gene blocks, as in L1000). A mechanism's
    footprint is ``FAMILY_SHARE`` its family's pathway profile and the rest its own, so members of a
    family look alike. A nonscored look-alike copies (``SIBLING_SHARE``) the signature of its scored
    sibling (``erbb2_inhibitor`` next to ``egfr_inhibitor``): its drugs look like the sibling's and
    only the nonscored label tells them apart. Unannotated "orphan" mechanisms get signatures too:
    drugs carry them without any label, so a strong signal does not simply mean "some label".
    """
    family, n_families = universe.family, universe.n_families
    primary = rng.integers(0, n_pathways, n_genes)
    loadings = rng.normal(0.0, GENE_DENSE_LOADING, (n_pathways, n_genes))
    loadings[primary, np.arange(n_genes)] += GENE_PRIMARY_LOADING * rng.choice([-1.0, 1.0], n_genes)
    loadings /= np.sqrt((loadings ** 2).sum(axis=0, keepdims=True))   # unit gene variance per latent unit

    n_orphans = max(1, int(round(ORPHAN_FAMILIES_PER_FAMILY * n_families)))
    all_family = np.concatenate([family, n_families + np.arange(n_orphans)])
    n_all_families = n_families + n_orphans
    family_latent = rng.normal(size=(n_all_families, n_pathways))
    own_latent = rng.normal(size=(len(all_family), n_pathways))
    n_markers = min(MARKER_GENES, n_genes)
    family_markers = np.zeros((n_all_families, n_genes))
    own_markers = np.zeros((len(all_family), n_genes))
    for markers in (family_markers, own_markers):
        for row in markers:
            row[rng.choice(n_genes, n_markers, replace=False)] = rng.choice([-1.0, 1.0], n_markers)

    def footprint(latent: np.ndarray, markers: np.ndarray) -> np.ndarray:
        return (PATHWAY_SIGNATURE_SHARE * _unit_rows(latent @ loadings)
                + (1 - PATHWAY_SIGNATURE_SHARE) * _unit_rows(markers))

    fam = _unit_rows(footprint(family_latent, family_markers))[all_family]
    own = _unit_rows(footprint(own_latent, own_markers))
    shape = _unit_rows(FAMILY_SHARE * fam + np.sqrt(1 - FAMILY_SHARE ** 2) * own)
    has_sibling = np.flatnonzero((universe.sibling >= 0) & ~universe.partner)
    shape[has_sibling] = _unit_rows(SIBLING_SHARE * shape[universe.sibling[has_sibling]]
                                    + np.sqrt(1 - SIBLING_SHARE ** 2) * own[has_sibling])
    strength = rng.lognormal(0.0, TARGET_STRENGTH_SIGMA, len(all_family))[:, None]
    signature = SIGNATURE_SCALE * strength * shape

    family_bidirectional = rng.random(n_all_families) < BIDIRECTIONAL_FRACTION
    family_toxic = rng.random(n_all_families) < TOXIC_FRACTION
    toxicity = np.where(family_toxic[all_family], rng.lognormal(0.0, TOXICITY_SIGMA, len(all_family)), 0.0)
    batch = BATCH_SCALE * (rng.normal(size=(len(CP_TIMES), len(CP_DOSES), n_pathways)) @ loadings)
    toxicity_direction = _unit_rows((rng.normal(size=(1, n_pathways)) @ loadings))[0]
    cell_loading = rng.uniform(*CELL_LOADING_RANGE, n_cells)
    return _Biology(loadings.astype(np.float32), signature.astype(np.float32), family_bidirectional[all_family],
                    toxicity, n_orphans, batch.astype(np.float32), toxicity_direction.astype(np.float32),
                    cell_loading.astype(np.float32))


# --------------------------------------------------------------------------------------------
# drugs: effects from label vectors, rows from replicates


def _drug_effects(bio: _Biology, drug_labels: np.ndarray, potency_boost: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each drug's gene effect (drugs x genes, at 72 h D2) and toxicity (drugs,).

    effect = sum over its mechanisms of potency x sign x signature + orphan mechanisms + off-target
    noise. Potency is lognormal and a quarter of annotated drug-mechanism pairs are nearly inactive
    (the real data has many annotated compounds without a visible response). The sign is -1 or +1
    at random for bidirectional mechanisms: the non-linear part.
    """
    n_drugs = len(drug_labels)
    orphan = np.zeros((n_drugs, bio.n_orphans), dtype=np.float64)
    has_orphan = rng.random(n_drugs) < ORPHAN_PROBABILITY
    orphan[np.flatnonzero(has_orphan), rng.integers(0, bio.n_orphans, has_orphan.sum())] = 1.0
    active = np.concatenate([drug_labels.astype(np.float64), orphan], axis=1)
    potency = rng.lognormal(0.0, POTENCY_SIGMA, active.shape)
    potency *= np.where(rng.random(active.shape) < INACTIVE_PROBABILITY, INACTIVE_POTENCY, 1.0)
    potency *= potency_boost[:, None]
    flip = rng.integers(0, 2, active.shape).astype(bool)                       # a fair coin per drug x mechanism
    sign = np.where(bio.bidirectional[None, :] & flip, -1.0, 1.0)
    weight = (active * potency * sign).astype(np.float32)
    effect = weight @ bio.signature
    effect += DRUG_LATENT_NOISE * (rng.standard_normal((n_drugs, bio.loadings.shape[0]), dtype=np.float32) @ bio.loadings)
    effect += DRUG_GENE_NOISE * rng.standard_normal(effect.shape, dtype=np.float32)
    toxicity = (active * potency) @ bio.toxicity
    return effect.astype(np.float32), toxicity.astype(np.float32)


def _replicate_counts(n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Rows per drug drawn from the real histogram until ``n_rows`` are used (last drug trimmed)."""
    sizes = np.array(list(REPLICATE_HISTOGRAM), dtype=np.int64)
    p = np.array(list(REPLICATE_HISTOGRAM.values()), dtype=np.float64)
    p /= p.sum()
    expected = max(1, int(n_rows / (sizes * p).sum() * 1.2) + 10)
    counts = rng.choice(sizes, size=expected, p=p)
    while counts.sum() < n_rows:
        counts = np.concatenate([counts, rng.choice(sizes, size=expected, p=p)])
    cum = np.cumsum(counts)
    last = int(np.searchsorted(cum, n_rows))
    counts = counts[: last + 1].copy()
    counts[-1] -= cum[last] - n_rows
    return counts[counts > 0]


def _frequent_counts(n_rows: int, n_frequent: int) -> np.ndarray:
    """Rows of the frequent reference compounds: the real sizes, scaled to ``n_rows``."""
    if n_frequent == 0:
        return np.zeros(0, dtype=np.int64)
    shape = np.array([FREQUENT_DRUG_ROWS[i % len(FREQUENT_DRUG_ROWS)] for i in range(n_frequent)], dtype=np.float64)
    total = FREQUENT_ROW_FRACTION * n_rows
    return np.maximum(np.floor(shape / shape.sum() * total), 1).astype(np.int64)


def _time_dose(drug_of_row: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """cp_time/cp_dose: each drug's replicates cycle through the 6 combinations in a random order."""
    n = len(drug_of_row)
    order = np.argsort(drug_of_row, kind="stable")
    sorted_drug = drug_of_row[order]
    start = np.r_[0, np.flatnonzero(np.diff(sorted_drug)) + 1]
    first = np.repeat(start, np.diff(np.r_[start, n]))
    position = np.arange(n) - first                                # replicate index within its drug
    n_combos = len(CP_TIMES) * len(CP_DOSES)
    n_drugs = int(drug_of_row.max()) + 1 if n else 0
    perms = np.argsort(rng.random((n_drugs, n_combos)), axis=1)    # one random combo order per drug
    combo = np.empty(n, dtype=np.int64)
    combo[order] = perms[sorted_drug, position % n_combos]
    times = np.asarray(CP_TIMES, dtype=np.int64)[combo // len(CP_DOSES)]
    doses = np.asarray(CP_DOSES)[combo % len(CP_DOSES)]
    return times, doses


def _features(bio: _Biology, effect: np.ndarray, toxicity: np.ndarray, drug_of_row: np.ndarray,
              control: np.ndarray, times: np.ndarray, doses: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gene and cell matrices of the rows: scaled drug effect + plate batch + replicate noise.

    Controls get no drug effect. Toxicity acts through ``1 - exp(-tox)``: saturating, so the most
    toxic drugs all sit at the -10 floor of every cell line at once.
    """
    n = len(drug_of_row)
    n_genes, n_cells = bio.loadings.shape[1], len(bio.cell_loading)
    t_index = np.searchsorted(np.asarray(CP_TIMES), times)
    d_index = (doses == CP_DOSES[1]).astype(np.int64)
    scale = (np.asarray([TIME_EFFECT[t] for t in CP_TIMES], dtype=np.float32)[t_index]
             * np.asarray([DOSE_EFFECT[d] for d in CP_DOSES], dtype=np.float32)[d_index])
    scale = np.where(control, 0.0, scale).astype(np.float32)

    def heavy(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.standard_t(NOISE_DF, shape) * np.sqrt((NOISE_DF - 2) / NOISE_DF)).astype(np.float32)

    genes = effect[drug_of_row] * scale[:, None]
    tox = toxicity[drug_of_row] * scale
    dying = (1.0 - np.exp(-tox)).astype(np.float32)
    genes += TOXICITY_GENE_SCALE * dying[:, None] * bio.toxicity_direction[None, :]
    genes += bio.batch[t_index, d_index]
    genes += ROW_LATENT_NOISE * (rng.standard_normal((n, bio.loadings.shape[0]), dtype=np.float32) @ bio.loadings)
    genes += ROW_GENE_NOISE * heavy((n, n_genes))
    genes *= GENE_UNIT
    np.clip(genes, -GENE_CLIP, GENE_CLIP, out=genes)

    kill = 1.0 - np.exp(-tox[:, None] * bio.cell_loading[None, :])
    cells = CELL_FLOOR * kill
    cells += CELL_COMMON_NOISE * rng.standard_normal((n, 1), dtype=np.float32)
    cells += CELL_NOISE * heavy((n, n_cells))
    cells -= CELL_SKEW * np.abs(rng.standard_normal((n, n_cells), dtype=np.float32))
    positive = cells > 0
    cells[positive] = CELL_SOFT_CEILING * np.tanh(cells[positive] / CELL_SOFT_CEILING)
    np.clip(cells, CELL_FLOOR, None, out=cells)
    return genes.astype(np.float32), cells.astype(np.float32)


# --------------------------------------------------------------------------------------------
# identifiers


def _hex_ids(n: int, rng: np.random.Generator, exclude: set[str] = frozenset()) -> np.ndarray:
    """``n`` distinct random 9-digit hex strings (Kaggle's id format), none in ``exclude``."""
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        for v in rng.integers(0, 16 ** HEX_DIGITS, size=n - len(out) + 16):
            s = f"{int(v):0{HEX_DIGITS}x}"
            if s not in seen:
                seen.add(s)
                out.append(s)
                if len(out) == n:
                    break
    return np.array(out, dtype=f"<U{HEX_DIGITS}")


def _columns(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{j}" for j in range(n))


def _table(sig_id: np.ndarray, control: np.ndarray, times: np.ndarray, doses: np.ndarray,
           genes: np.ndarray, cells: np.ndarray) -> Features:
    return Features(sig_id=sig_id, cp_type=np.where(control, CONTROL, TREATED),
                    cp_time=times.astype(np.int64), cp_dose=doses.astype(str), genes=genes, cells=cells,
                    gene_columns=_columns(GENE_PREFIX, genes.shape[1]),
                    cell_columns=_columns(CELL_PREFIX, cells.shape[1]))


# --------------------------------------------------------------------------------------------
# synthetic mode


def _sample_labels(n_drugs: int, universe: _Universe, popularity: np.ndarray, counts: dict[int, float],
                   rng: np.random.Generator) -> np.ndarray:
    """Drug label vectors: primary mechanisms by popularity, plus the partners of scored ones.

    Primary labels are scored targets or nonscored look-alikes. A drug of a scored target also
    carries each of its nonscored partners with ``PARTNER_PROBABILITY`` (drugs hit related targets
    together), so a partner label says "this drug has that scored target" even when the drug shows
    no visible effect, and a look-alike label says "this signature is not the scored sibling".
    """
    labels = np.zeros((n_drugs, universe.n_targets), dtype=np.uint8)
    scored = np.arange(universe.n_targets) < universe.n_scored
    p_scored = popularity * scored
    p_nonscored = popularity * (~scored & ~universe.partner)
    partners = [np.flatnonzero(universe.partner & (universe.sibling == t) & (popularity > 0)) for t in
                range(universe.n_scored)]
    n_primary = rng.choice(np.array(list(counts)), size=n_drugs, p=np.array(list(counts.values())))
    for d in range(n_drugs):
        for _ in range(int(n_primary[d])):
            pool = p_scored if (rng.random() < SCORED_SHARE or p_nonscored.sum() == 0) else p_nonscored
            t = int(rng.choice(universe.n_targets, p=pool / pool.sum()))
            labels[d, t] = 1
            if t < universe.n_scored and len(partners[t]):
                labels[d, partners[t][rng.random(len(partners[t])) < PARTNER_PROBABILITY]] = 1
    return labels


def _cover_targets(labels: np.ndarray, train_drugs: np.ndarray, wanted: np.ndarray, rng: np.random.Generator) -> None:
    """Give every wanted target at least one train drug (the real scored targets all have one).

    The label of a train drug whose target has several drugs moves to the missing target, so the
    number of labels per row (the real sparsity) is unchanged; an unlabelled drug takes it when no
    such drug is left.
    """
    if len(train_drugs) == 0:
        return
    for t in np.flatnonzero(wanted & (labels[train_drugs].sum(axis=0) == 0)):
        block = labels[train_drugs]
        common = np.flatnonzero(block.sum(axis=0) >= COVER_DONOR_DRUGS)
        donors = train_drugs[(block.sum(axis=1) == 1) & block[:, common].any(axis=1)] if len(common) else train_drugs[:0]
        if len(donors):
            d = int(rng.choice(donors))
            labels[d] = 0
        else:
            free = train_drugs[block.sum(axis=1) == 0]
            d = int(rng.choice(free if len(free) else train_drugs))
        labels[d, t] = 1


def _generate_synthetic(preset: Preset, rng: np.random.Generator) -> MoaData:
    universe = _synthetic_universe(preset)
    popularity = rng.lognormal(0.0, POPULARITY_SIGMA, universe.n_targets)
    nonscored_index = np.arange(universe.n_scored, universe.n_targets)
    n_empty = int(round(EMPTY_NONSCORED_FRACTION * len(nonscored_index)))
    popularity[rng.choice(nonscored_index, n_empty, replace=False)] = 0.0
    bio = _biology(universe, preset.n_genes, preset.n_cells, preset.n_pathways, rng)

    # drugs: [control, frequent..., regular train..., regular test...]
    n_control_train = int(round(CONTROL_FRACTION * preset.n_train))
    n_control_test = int(round(CONTROL_FRACTION * preset.n_test))
    frequent_train = _frequent_counts(preset.n_train, preset.n_frequent_drugs)
    frequent_test = _frequent_counts(preset.n_test, preset.n_frequent_drugs) if preset.n_test else frequent_train * 0
    regular_train = _replicate_counts(max(preset.n_train - n_control_train - frequent_train.sum(), 0), rng)
    regular_test = _replicate_counts(max(preset.n_test - n_control_test - frequent_test.sum(), 0), rng)
    n_frequent = len(frequent_train)
    n_drugs = 1 + n_frequent + len(regular_train) + len(regular_test)

    labels = np.zeros((n_drugs, universe.n_targets), dtype=np.uint8)
    labels[1:1 + n_frequent] = _sample_labels(n_frequent, universe, popularity, FREQUENT_LABELS, rng)
    labels[1 + n_frequent:] = _sample_labels(n_drugs - 1 - n_frequent, universe, popularity, PRIMARY_LABELS, rng)
    # every scored target and live look-alike in train (partners follow their scored sibling)
    wanted = (popularity > 0) & ~universe.partner
    _cover_targets(labels, np.arange(1 + n_frequent, 1 + n_frequent + len(regular_train)), wanted, rng)
    boost = np.ones(n_drugs)
    boost[1:1 + n_frequent] = FREQUENT_POTENCY
    effect, toxicity = _drug_effects(bio, labels, boost, rng)
    effect[0], toxicity[0] = 0.0, 0.0

    def rows(control_rows: int, frequent: np.ndarray, regular: np.ndarray, regular_offset: int) -> np.ndarray:
        return np.concatenate([
            np.zeros(control_rows, dtype=np.int64),
            np.repeat(1 + np.arange(len(frequent)), frequent),
            np.repeat(regular_offset + np.arange(len(regular)), regular),
        ])

    train_drug = rows(n_control_train, frequent_train, regular_train, 1 + n_frequent)
    test_drug = rows(n_control_test, frequent_test, regular_test, 1 + n_frequent + len(regular_train))
    train_drug = train_drug[rng.permutation(len(train_drug))]
    test_drug = test_drug[rng.permutation(len(test_drug))]
    drug_names = np.concatenate([[CONTROL_DRUG_ID], _hex_ids(n_drugs - 1, rng, {CONTROL_DRUG_ID})])
    sig = np.char.add(SIG_ID_PREFIX, _hex_ids(len(train_drug) + len(test_drug), rng))

    tables = []
    for drug_of_row, ids in ((train_drug, sig[:len(train_drug)]), (test_drug, sig[len(train_drug):])):
        control = drug_of_row == 0
        times, doses = _time_dose(drug_of_row, rng)
        genes, cells = _features(bio, effect, toxicity, drug_of_row, control, times, doses, rng)
        tables.append(_table(ids, control, times, doses, genes, cells))
    row_labels = labels[train_drug]
    return MoaData(
        train=tables[0],
        scored=row_labels[:, :universe.n_scored].copy(),
        scored_columns=universe.scored_columns,
        nonscored=row_labels[:, universe.n_scored:].copy(),
        nonscored_columns=universe.nonscored_columns,
        drug_id=drug_names[train_drug],
        test=tables[1] if preset.n_test else None,
        source=f"synthetic:{preset.name}",
    )


# --------------------------------------------------------------------------------------------
# semi-real mode


def _read_labels(directory: Path, stem: str, required: bool) -> pd.DataFrame | None:
    """A label file of DIR as a frame with a string sig_id column, or a DataError naming the file."""
    path = find_file(directory, stem)
    if path is None:
        if required:
            raise DataError(f"{directory}: missing file {stem}.csv (also looked for .csv.zip and .csv.gz)")
        return None
    try:
        frame = pd.read_csv(path, dtype={"sig_id": str, "drug_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot be read as CSV: {first}", file=path.name) from None
    if "sig_id" not in frame.columns:
        raise DataError("missing column", file=path.name, column="sig_id")
    if len(frame) == 0:
        raise DataError("the file has a header but no rows", file=path.name)
    if frame["sig_id"].isna().any() or frame["sig_id"].duplicated().any():
        raise DataError("sig_ids must be present and unique", file=path.name, column="sig_id")
    frame.attrs["file"] = path.name
    return frame


def _label_block(frame: pd.DataFrame, reference: pd.Index) -> tuple[np.ndarray, tuple[str, ...]]:
    """The 0/1 target block of a label frame, aligned to ``reference`` sig_ids."""
    file = frame.attrs["file"]
    columns = tuple(str(c) for c in frame.columns if c != "sig_id")
    if not columns:
        raise DataError("no target columns besides sig_id", file=file)
    block = frame.loc[:, list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(block, (0.0, 1.0))
    if bad.any():
        r, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"non-binary target value {frame.iloc[r][columns[j]]!r}; targets must be 0 or 1",
                        file=file, column=columns[j], row=r + 1)
    position = pd.Index(frame["sig_id"].astype(str)).get_indexer(reference)
    if (position < 0).any():
        missing = reference[int(np.flatnonzero(position < 0)[0])]
        raise DataError(f"sig_id '{missing}' of the scored targets is missing", file=file, column="sig_id")
    if len(frame) != len(reference):
        raise DataError(f"has {len(frame)} rows, the scored targets {len(reference)}", file=file)
    return block[position].astype(np.uint8), columns


def _real_universe(scored_columns: tuple[str, ...], nonscored_columns: tuple[str, ...], scored_drug: np.ndarray,
                   nonscored_drug: np.ndarray, rng: np.random.Generator) -> _Universe:
    """Families and scored relatives for the real targets.

    Scored targets sharing their first name token form a family (``adrenergic_receptor_agonist``
    and ``_antagonist``). Every nonscored target is a look-alike of a scored relative: the one it
    co-occurs with most on real drugs, else a random scored target whose name token it shares, else
    a scored target drawn in proportion to its number of drugs (crowded target classes have the most
    relatives). It joins its relative's family. (The real labels fix who is labelled with whom, so
    there is no partner sampling here.)
    """
    def key(name: str) -> str:
        return re.split(r"[_\-]", name)[0]

    keys: dict[str, int] = {}
    family = [keys.setdefault(key(name), len(keys)) for name in scored_columns]
    by_key: dict[str, list[int]] = {}
    for t, name in enumerate(scored_columns):
        by_key.setdefault(key(name), []).append(t)
    co = nonscored_drug.T.astype(np.int64) @ scored_drug.astype(np.int64)      # (nonscored, scored)
    sibling = [-1] * len(scored_columns)
    drugs = scored_drug.sum(axis=0).astype(np.float64) + 1.0
    for j, name in enumerate(nonscored_columns):
        if co[j].max() > 0:
            mate = int(np.argmax(co[j]))
        elif key(name) in by_key:
            mate = int(rng.choice(by_key[key(name)]))
        else:
            mate = int(rng.choice(len(scored_columns), p=drugs / drugs.sum()))
        sibling.append(mate)
        family.append(family[mate])
    return _Universe(scored_columns, nonscored_columns, np.asarray(family, dtype=np.int64),
                     np.asarray(sibling, dtype=np.int64), np.zeros(len(family), dtype=bool), len(keys))


def _generate_semi_real(preset: Preset, directory: Path, rng: np.random.Generator) -> MoaData:
    """Real labels, sig_ids and drug ids; features synthesized from each drug's real label vector.

    The labels carry what no generator can invent (which MoAs exist, how often, which co-occur,
    which drugs are profiled hundreds of times), so models are compared on the real label problem
    with features that follow the same generative model as the synthetic mode. Replicates of a drug
    cycle through the 6 time x dose combinations; drugs with more than 18 rows are the potent
    reference compounds.
    """
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (labels= must name the folder with train_targets_scored.csv)")
    scored_frame = _read_labels(directory, "train_targets_scored", required=True)
    sig_id = scored_frame["sig_id"].astype(str).to_numpy()
    reference = pd.Index(sig_id)
    scored, scored_columns = _label_block(scored_frame, reference)
    nonscored_frame = _read_labels(directory, "train_targets_nonscored", required=False)
    if nonscored_frame is not None:
        nonscored, nonscored_columns = _label_block(nonscored_frame, reference)
    else:
        nonscored, nonscored_columns = np.zeros((len(sig_id), 0), dtype=np.uint8), ()
    drug_frame = _read_labels(directory, "train_drug", required=False)
    if drug_frame is not None:
        file = drug_frame.attrs["file"]
        if "drug_id" not in drug_frame.columns or drug_frame["drug_id"].isna().any():
            raise DataError("missing column or value", file=file, column="drug_id")
        position = pd.Index(drug_frame["sig_id"].astype(str)).get_indexer(reference)
        if (position < 0).any() or len(drug_frame) != len(reference):
            raise DataError("sig_ids differ from those of the scored targets", file=file, column="sig_id")
        drug_id = drug_frame["drug_id"].astype(str).to_numpy()[position]
        drug_names, drug_of_row = np.unique(drug_id, return_inverse=True)
        control_drug = drug_names == CONTROL_DRUG_ID
    else:
        # Without drugs nothing tells a vehicle control from an unlabelled treated well: every row
        # is treated and its own (single-replicate) drug; drug_id stays unknown.
        drug_id = None
        drug_of_row = np.arange(len(sig_id))
        control_drug = np.zeros(len(sig_id), dtype=bool)
    n_drugs = int(drug_of_row.max()) + 1
    row_labels = np.concatenate([scored, nonscored], axis=1)
    drug_labels = np.zeros((n_drugs, row_labels.shape[1]), dtype=np.uint8)
    np.maximum.at(drug_labels, drug_of_row, row_labels)                          # union over replicates
    n_scored = len(scored_columns)
    universe = _real_universe(scored_columns, nonscored_columns, drug_labels[:, :n_scored],
                              drug_labels[:, n_scored:], rng)
    bio = _biology(universe, preset.n_genes, preset.n_cells, preset.n_pathways, rng)

    # test drugs: label vectors of random real treated drugs, replicate counts like real drugs
    n_control_test = int(round(CONTROL_FRACTION * preset.n_test))
    regular_test = _replicate_counts(max(preset.n_test - n_control_test, 0), rng)
    treated_drugs = np.flatnonzero(~control_drug)
    if len(treated_drugs) == 0:       # only controls: test drugs get the (empty) control vector
        treated_drugs = np.flatnonzero(control_drug)
    source_drug = rng.choice(treated_drugs, len(regular_test)) if len(regular_test) else np.zeros(0, np.int64)
    all_labels = np.concatenate([drug_labels, np.zeros((1, drug_labels.shape[1]), np.uint8), drug_labels[source_drug]])
    rows_per_drug = np.bincount(drug_of_row, minlength=n_drugs)
    boost = np.where(rows_per_drug > max(REPLICATE_HISTOGRAM), FREQUENT_POTENCY, 1.0)
    boost = np.concatenate([boost, [1.0], boost[source_drug]])
    effect, toxicity = _drug_effects(bio, all_labels, boost, rng)
    test_control = n_drugs
    effect[np.flatnonzero(control_drug)], toxicity[np.flatnonzero(control_drug)] = 0.0, 0.0
    effect[test_control], toxicity[test_control] = 0.0, 0.0

    train_control = control_drug[drug_of_row]
    times, doses = _time_dose(drug_of_row, rng)
    genes, cells = _features(bio, effect, toxicity, drug_of_row, train_control, times, doses, rng)
    train = _table(sig_id.astype(str), train_control, times, doses, genes, cells)

    test = None
    if preset.n_test:
        test_drug = np.concatenate([np.full(n_control_test, test_control, dtype=np.int64),
                                    np.repeat(n_drugs + 1 + np.arange(len(regular_test)), regular_test)])
        test_drug = test_drug[rng.permutation(len(test_drug))]
        test_control_rows = test_drug == test_control
        t_times, t_doses = _time_dose(test_drug, rng)
        t_genes, t_cells = _features(bio, effect, toxicity, test_drug, test_control_rows, t_times, t_doses, rng)
        taken = {s[len(SIG_ID_PREFIX):] for s in sig_id if s.startswith(SIG_ID_PREFIX)}
        test_ids = np.char.add(SIG_ID_PREFIX, _hex_ids(len(test_drug), rng, taken))
        test = _table(test_ids, test_control_rows, t_times, t_doses, t_genes, t_cells)
    return MoaData(
        train=train,
        scored=scored,
        scored_columns=scored_columns,
        nonscored=nonscored if nonscored_frame is not None else None,
        nonscored_columns=nonscored_columns,
        drug_id=drug_id,
        test=test,
        source=f"semi-real:{directory}",
    )
