"""Adversarial validation: can a classifier tell the train rows from the test rows?

If it cannot, cross-validation on train is a fair estimate of the test loss; if it can, the test
rows come from elsewhere and the CV loss may not transfer. :func:`adversarial_validation` answers
two questions with two tools:

* **Is there a shift?** A :class:`~sklearn.ensemble.HistGradientBoostingClassifier` learns
  "test or train" from the gene and cell columns plus ``cp_time`` and ``cp_dose``; the ROC AUC of
  its out-of-fold probabilities is the answer (0.5: indistinguishable, 1.0: fully separable). A
  classifier sees multivariate shifts that no single column shows.
* **Where?** Each column's two-sample Kolmogorov-Smirnov statistic (the largest gap between the
  train and test CDFs; :func:`scipy.stats.ks_2samp`) on the same sampled rows. It catches a change
  of location, spread or shape alike, is on one scale (0 to 1) for every column, is not moved by
  the heavy tails of the gene and cell values (a mean difference is), and does not depend on which
  of several correlated columns the classifier happened to split on (permutation importance would,
  and would cost one prediction per column and repeat: thousands at 874 columns). The mean shift (in
  train standard deviations) and the SD ratio beside it say which way. KS p-values are left out:
  they assume independent rows, and replicates of a drug are not.

**Why the folds hold out blocks of feature space, not rows.** A drug is profiled in several
replicate rows with near-identical features, and the test set is made of drugs train does not have
(Kaggle's test set, and :mod:`moa_tune.synth`'s). With row-wise folds a held-out test row's
replicates sit in the fitted part labelled "test", so the classifier recognises the *drug*, not a
shift: on the synthetic ``tiny`` preset, whose test rows come from the same distribution as train,
row-wise folds give an AUC of about 0.8. Test rows carry no drug id, so the folds cannot be grouped
by drug; instead :class:`~sklearn.cluster.KMeans` cuts the pooled rows into ``blocks`` regions of
feature space (on the direction of the standardised, PCA-reduced gene and cell profile, so that a
drug's replicates at 24 to 72 h and two doses, which differ mostly in effect size, fall together)
and :class:`~sklearn.model_selection.StratifiedGroupKFold` holds out whole blocks (spatial block
cross-validation). Rare train drugs (at most :data:`~moa_tune.folds.DEFAULT_DRUG_THRESHOLD` rows,
the same rule as the training folds) are moved whole into the block most of their rows fell in
when ``train_drug.csv`` is there. The ``tiny`` preset then scores 0.47 to 0.65 over seeds 0-5 (mean
0.56: its 150 test rows from a couple of dozen drugs are a noisy sample), ``small`` 0.53 and
``full`` 0.52, while moving a single gene of ``full``'s test rows by a quarter of its standard
deviation reads 0.66 (by half: 0.84). What this gives up: a region of feature space that only test
rows occupy is held out whole and so not detected -- which is exactly what a new test drug looks
like, and new drugs are the design of the test set, not a shift. A shift common to many drugs (a
moved gene, a new plate effect, another time/dose mix) is learnt in the other blocks and detected.

Control rows (``ctl_vehicle``) are included: the test set is predicted on all its rows, and a
different share of controls is itself worth knowing (it is reported). Rows are subsampled to
``max_rows`` per side so that the full-size data takes seconds; the result says so. One thread by
default: a boosting iteration over a few thousand rows is too little work to share, and on a busy
2-core machine two OpenMP threads spinning against each other made the ``small`` preset take 123 s
instead of 12 s (``threads`` changes it).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from scipy import stats as sps
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler, normalize
from threadpoolctl import threadpool_limits

from .data import CP_DOSES, Features, MoaData
from .errors import ConfigError, DataError
from .folds import DEFAULT_DRUG_THRESHOLD
from .params import Param, resolve

__all__ = ["PARAMS", "AdversarialResult", "FeatureShift", "adversarial_validation", "auc_meaning", "feature_matrix"]

PARAMS: dict[str, Param] = {
    "folds": Param("int", 5, "Cross-validation folds of the train-vs-test classifier.", low=2, high=20),
    "seed": Param("int", 0, "Seed of the row sample, the blocks, the folds and the classifier.", low=0),
    "max_rows": Param("int", 2000, "Rows sampled from each of train and test (the classifier's cost grows with "
                      "rows x columns); 0 uses every row.", low=0),
    "blocks": Param("int", 50, "Regions of feature space (k-means) the folds hold out whole, so that a drug's "
                    "replicates are not split between fitting and scoring.", low=2, high=100_000),
    "threads": Param("int", 1, "OpenMP/BLAS threads of the k-means and the classifier; 0: the libraries' "
                     "default (every core).", low=0, high=1024),
}
#: The classifier: small and fixed, since the question is whether *any* reasonable model separates
#: the two sets, and leaves of 20+ rows cannot single out one drug's handful of replicates.
CLASSIFIER: dict[str, Any] = {"max_iter": 50, "learning_rate": 0.2, "max_leaf_nodes": 15, "max_bins": 63,
                              "min_samples_leaf": 20, "early_stopping": False}
#: PCA components of the gene and cell profile the blocks are cut on.
BLOCK_COMPONENTS = 20
#: Rules of thumb for reading an AUC: (upper bound, meaning).
AUC_MEANINGS: tuple[tuple[float, str], ...] = (
    (0.6, "train and test look alike"), (0.7, "a mild shift"), (0.85, "a clear shift"), (1.01, "a strong shift"))

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FeatureShift:
    """How one column differs between the sampled train and test rows."""

    feature: str
    ks: float          #: Kolmogorov-Smirnov statistic: largest gap between the two CDFs, 0..1
    mean_shift: float  #: (test mean - train mean) / train SD
    sd_ratio: float    #: test SD / train SD (nan when train is constant)


@dataclass(frozen=True)
class AdversarialResult:
    """What :func:`adversarial_validation` found; ``shifts`` is every column, most shifted first."""

    auc: float
    fold_aucs: tuple[float, ...]
    shifts: tuple[FeatureShift, ...]
    train_rows: int
    test_rows: int
    train_rows_used: int
    test_rows_used: int
    control_fraction: dict[str, float]
    params: dict[str, Any]
    seconds: float
    source: str | None = None
    blocks_used: int = 0
    classifier: dict[str, Any] = field(default_factory=lambda: dict(CLASSIFIER))

    @property
    def subsampled(self) -> bool:
        return self.train_rows_used < self.train_rows or self.test_rows_used < self.test_rows

    @property
    def meaning(self) -> str:
        return auc_meaning(self.auc)

    @property
    def fold_auc_range(self) -> tuple[float, float] | None:
        """(lowest, highest) fold AUC; a fold holding rows of one set only has none (NaN) and is skipped."""
        finite = [a for a in self.fold_aucs if np.isfinite(a)]
        return (min(finite), max(finite)) if finite else None

    def top(self, n: int) -> tuple[FeatureShift, ...]:
        return self.shifts[:n]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN as null): what ``--json`` writes and the report shows."""
        return {
            "source": self.source,
            "auc": _json_float(self.auc),
            "meaning": self.meaning,
            "fold_aucs": [_json_float(a) for a in self.fold_aucs],
            "rows": {"train": self.train_rows, "test": self.test_rows, "train_used": self.train_rows_used,
                     "test_used": self.test_rows_used, "subsampled": self.subsampled},
            "control_fraction": dict(self.control_fraction),
            "params": dict(self.params),
            "blocks_used": self.blocks_used,
            "classifier": {"class": "HistGradientBoostingClassifier", **self.classifier},
            "seconds": round(self.seconds, 3),
            "features": [{"feature": s.feature, "ks": _json_float(s.ks), "mean_shift": _json_float(s.mean_shift),
                          "sd_ratio": _json_float(s.sd_ratio)} for s in self.shifts],
        }


def auc_meaning(auc: float) -> str:
    """A rule-of-thumb reading of an adversarial AUC, for people who do not read AUCs every day."""
    return next(text for bound, text in AUC_MEANINGS if auc < bound)


def feature_matrix(features: Features) -> tuple[np.ndarray, tuple[str, ...]]:
    """The columns the classifier sees: genes, cells (counts from the column prefixes), cp_time, cp_dose.

    cp_time stays numeric (24/48/72: a tree splits it as well as a one-hot) and cp_dose is 0/1.
    """
    meta = np.column_stack([features.cp_time.astype(np.float32),
                            (features.cp_dose == CP_DOSES[1]).astype(np.float32)])
    names = (*features.gene_columns, *features.cell_columns, "cp_time", "cp_dose")
    return np.hstack([features.genes, features.cells, meta]).astype(np.float32), names


def adversarial_validation(data: MoaData, params: Mapping[str, Any] | None = None,
                           progress: Progress | None = None) -> AdversarialResult:
    """Train-vs-test classifier AUC (block cross-validation) and per-column shift ranking.

    ``params`` is checked against :data:`PARAMS`. ``progress`` receives ``{"event": "start",
    "n_folds", "rows"}`` before the first fold and ``{"event": "fold_end", "fold", "n_folds", "auc"}``
    after each. Raises :class:`DataError` when ``data`` has no test set or too few rows for the folds,
    :class:`ConfigError` for bad ``params``.
    """
    p = resolve("adversarial", PARAMS, params)
    _check(data, p)
    with threadpool_limits(p["threads"] or None):
        return _validate(data, p, progress)


def _check(data: MoaData, p: Mapping[str, Any]) -> None:
    """Fail before any work on a missing test set, too few rows or parameters that cannot go together."""
    where = data.source or "the data"
    if data.test is None:
        raise DataError(f"{where}: no test_features.csv; adversarial validation compares train and test features")
    least = 2 * p["folds"]  # so that every fold can hold rows of both sets
    for name, table in (("train", data.train), ("test", data.test)):
        if len(table) < least:
            raise DataError(f"{where}: {len(table)} {name} row(s); adversarial validation with "
                            f"{p['folds']} folds needs at least {least}")
    if 0 < p["max_rows"] < least:
        raise ConfigError(f"The 'adversarial.max_rows' parameter must be 0 or at least twice the folds ({least}). "
                          f"Got {p['max_rows']} instead.")
    if p["blocks"] < p["folds"]:
        raise ConfigError(f"The 'adversarial.blocks' parameter must be at least the number of folds ({p['folds']}). "
                          f"Got {p['blocks']} instead.")


def _validate(data: MoaData, p: Mapping[str, Any], progress: Progress | None) -> AdversarialResult:
    started = time.perf_counter()
    x_train, names = feature_matrix(data.train)
    x_test, _ = feature_matrix(data.test)
    rng = np.random.default_rng(p["seed"])
    rows_train, rows_test = _sample(len(x_train), p["max_rows"], rng), _sample(len(x_test), p["max_rows"], rng)
    x = np.vstack([x_train[rows_train], x_test[rows_test]])
    y = np.r_[np.zeros(len(rows_train), np.int8), np.ones(len(rows_test), np.int8)]
    blocks = _blocks(x[:, : data.train.n_genes + data.train.n_cells], p["blocks"], p["seed"])
    if data.drug_id is not None:
        blocks[: len(rows_train)] = _keep_drugs_whole(blocks[: len(rows_train)], data.drug_id, rows_train)
    n_blocks = len(np.unique(blocks))
    if n_blocks < p["folds"]:
        raise DataError(f"{data.source or 'the data'}: the rows fall into {n_blocks} distinct block(s) of feature "
                        f"space, fewer than the {p['folds']} folds (too few distinct rows); use fewer folds")

    oof = np.zeros(len(y))
    fold_aucs = []
    splitter = StratifiedGroupKFold(n_splits=p["folds"], shuffle=True, random_state=p["seed"])
    if progress is not None:
        progress({"event": "start", "n_folds": p["folds"], "rows": len(y)})
    for k, (fit, held) in enumerate(splitter.split(x, y, blocks)):
        model = HistGradientBoostingClassifier(**CLASSIFIER, random_state=p["seed"])
        oof[held] = model.fit(x[fit], y[fit]).predict_proba(x[held])[:, 1]
        fold_auc = float(roc_auc_score(y[held], oof[held])) if len(np.unique(y[held])) == 2 else float("nan")
        fold_aucs.append(fold_auc)
        if progress is not None:
            progress({"event": "fold_end", "fold": k, "n_folds": p["folds"], "auc": fold_auc})

    return AdversarialResult(
        auc=float(roc_auc_score(y, oof)), fold_aucs=tuple(fold_aucs),
        shifts=_shifts(x[: len(rows_train)], x[len(rows_train):], names),
        train_rows=len(x_train), test_rows=len(x_test),
        train_rows_used=len(rows_train), test_rows_used=len(rows_test),
        control_fraction={"train": float(data.train.is_control.mean()), "test": float(data.test.is_control.mean())},
        params=dict(p), seconds=time.perf_counter() - started, source=data.source, blocks_used=n_blocks,
    )


def _sample(n: int, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices: all of them, or ``max_rows`` drawn without replacement."""
    if max_rows == 0 or n <= max_rows:
        return np.arange(n)
    return np.sort(rng.choice(n, max_rows, replace=False))


def _blocks(profile: np.ndarray, n_blocks: int, seed: int) -> np.ndarray:
    """K-means regions of the direction of each row's standardised, PCA-reduced gene/cell profile.

    The direction (rows scaled to unit length) rather than the position, because a drug's
    replicates differ mostly in effect size (time and dose scale it) and so lie along one ray.
    """
    scaled = StandardScaler().fit_transform(profile)
    components = min(BLOCK_COMPONENTS, *scaled.shape)
    reduced = normalize(PCA(n_components=components, random_state=seed).fit_transform(scaled))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate rows: fewer distinct blocks, checked after
        return KMeans(n_clusters=min(n_blocks, len(reduced)), n_init=1, random_state=seed).fit_predict(reduced)


def _keep_drugs_whole(blocks: np.ndarray, drug_id: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each rare train drug's sampled rows moved to the block most of them fell in.

    Rare means at most DEFAULT_DRUG_THRESHOLD rows in the whole train set, as for the training
    folds: controls and reference compounds with hundreds of rows are not one profile each.
    """
    names, codes, counts = np.unique(drug_id, return_inverse=True, return_counts=True)
    sampled = codes[rows]
    rare = counts[sampled] <= DEFAULT_DRUG_THRESHOLD
    votes = np.zeros((len(names), int(blocks.max()) + 1), dtype=np.int64)
    np.add.at(votes, (sampled[rare], blocks[rare]), 1)
    moved = blocks.copy()
    moved[rare] = votes.argmax(axis=1)[sampled[rare]]
    return moved


def _shifts(x_train: np.ndarray, x_test: np.ndarray, names: tuple[str, ...]) -> tuple[FeatureShift, ...]:
    """Every column's KS statistic, mean shift and SD ratio, most shifted first (ties: column order)."""
    ks = sps.ks_2samp(x_train, x_test, axis=0, method="asymp").statistic
    mean_train, sd_train = x_train.mean(axis=0, dtype=np.float64), x_train.std(axis=0, dtype=np.float64)
    mean_test, sd_test = x_test.mean(axis=0, dtype=np.float64), x_test.std(axis=0, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_shift = np.where(sd_train > 0, (mean_test - mean_train) / sd_train,
                              np.where(mean_test == mean_train, 0.0, np.nan))
        sd_ratio = np.where(sd_train > 0, sd_test / sd_train, np.nan)
    order = np.argsort(-ks, kind="stable")
    return tuple(FeatureShift(names[j], float(ks[j]), float(mean_shift[j]), float(sd_ratio[j])) for j in order)


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
