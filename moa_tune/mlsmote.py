"""MLSMOTE: synthetic training rows for rare labels (Charte, Rivera, del Jesus, Herrera 2015).

Why. The MoA labels are extremely imbalanced: most scored mechanisms have a few dozen positives
among ~24k rows, a handful of drugs each, so a network sees a rare label's positives a few times per
epoch and learns to predict its prior. MLSMOTE ("MLSMOTE: Approaching imbalanced multilabel learning
through synthetic instance generation", Knowledge-Based Systems 89, 2015) adds positives of the rare
labels by SMOTE interpolation between a positive row and one of its nearest positive neighbours, and
-- what plain SMOTE lacks for multilabel data -- gives the new row the label set of that
neighbourhood, so labels that co-occur with the rare one come along.

Where. :func:`oversample` runs inside :func:`moa_tune.train.cross_validate` on one fold's
*training* rows after the feature pipeline has transformed them: interpolating in the space the
network sees (scaled, PCA), with the pipeline fitted on real rows only (synthetic rows never move
the scaler or PCA), and never touching validation or test rows (a synthetic row grown from a
validation row would leak its label into training).

Choices, and why:

* **Which labels are rare**: the paper's rule, a label's imbalance ratio
  ``IRLbl = positives of the most frequent label / its positives`` above ``threshold`` times the
  mean IRLbl (``threshold = 1`` is the paper). It is scale-free: it adapts to the fold's size and
  to the stage's targets (206 scored, 402 nonscored or both, with very different counts), where a
  fixed "at most N positives" would need retuning for every dataset, fold count and stage. Labels
  without a positive in the fold's training rows have no IRLbl (they take no part in the mean) and
  a label with a single positive cannot be interpolated (its only "synthetic" row would be a copy):
  both are skipped.
* **Neighbours**: the ``neighbors`` nearest rows *among the rare label's positives* (the paper's
  minority bag), Euclidean over every column, found by scikit-learn's ``NearestNeighbors``; the
  reference neighbour is drawn at random among them and each numeric column is interpolated with
  its own uniform gap (the paper's per-attribute offset). Rows without a positive label are in no
  bag, so they never seed nor guide a synthetic row.
* **Label set**: the paper's *ranking* rule, which its experiments found best: a label is set when
  it is present in more than half of the seed and its neighbours (strictly more, ``count >
  (neighbours + 1) / 2``, as in the paper and its authors' mldr.resampling code). *Union* would
  spread every neighbour's incidental labels, *intersection* would drop real co-occurrences. The
  rare label itself is always set (every row of its bag has it).
* **Nominal columns** (cp_time one-hot, cp_dose): the most frequent value among the seed and its
  neighbours (the paper's rule for non-numeric attributes; ties go to the seed), since
  interpolating a one-hot invents treatments that do not exist.
* **Amount**: the paper makes one synthetic row per (rare label, positive row) pair. Here the
  amount is a number of rows (``train.mlsmote`` is a fraction of the fold's training rows, so a
  search space can tune it at any data size): pairs are drawn without replacement, in whole passes
  when the amount exceeds one pass, so each rare label keeps the paper's share (proportional to
  its positives).

Deterministic given ``seed`` (numpy ``default_rng``; the neighbour search is exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.neighbors import NearestNeighbors

from .data import CP_TIMES
from .errors import ConfigError, DataError

__all__ = ["Synthetic", "imbalance_ratios", "mlsmote", "nominal_blocks", "oversample", "rare_labels"]


@dataclass(frozen=True, eq=False)
class Synthetic:
    """MLSMOTE's new rows and where each came from (row indices into the ``x`` it was given)."""

    x: np.ndarray                 # (rows, features) float32
    y: np.ndarray                 # (rows, labels), the dtype of the given y
    seed_rows: np.ndarray         # the positive row each synthetic row was grown from
    reference_rows: np.ndarray    # the neighbour it was interpolated towards
    labels: np.ndarray            # the rare label whose positives the seed and reference are


def imbalance_ratios(y: np.ndarray) -> np.ndarray:
    """IRLbl of each label (the paper's per-label imbalance ratio); inf for a label without positives."""
    counts = (np.asarray(y) > 0).sum(axis=0)
    ratios = np.full(counts.shape, np.inf)
    present = counts > 0
    ratios[present] = counts.max(initial=0) / counts[present]
    return ratios


def rare_labels(y: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Labels whose IRLbl exceeds ``threshold`` x the mean IRLbl (over labels with positives)."""
    ratios = imbalance_ratios(y)
    present = np.isfinite(ratios)
    if not present.any():
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(present & (ratios > threshold * ratios[present].mean()))


def nominal_blocks(groups: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The nominal attributes of a feature pipeline's matrix: cp_time (one-hot), then cp_dose.

    Read from its ``meta`` group, laid out by :meth:`moa_tune.features.FeaturePipeline.transform`
    as one column per ``CP_TIMES`` then one 0/1 dose column.
    """
    meta = np.asarray(groups.get("meta", ()), dtype=np.int64)
    if len(meta) == 0:
        return []
    return [meta[:len(CP_TIMES)], meta[len(CP_TIMES):]]


def _check(n_rows: int, neighbors: int, threshold: float, x: np.ndarray, y: np.ndarray) -> None:
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
        raise ConfigError(f"The 'n_rows' parameter must be an int >= 0. Got {n_rows!r} instead.")
    if isinstance(neighbors, bool) or not isinstance(neighbors, (int, np.integer)) or neighbors < 1:
        raise ConfigError(f"The 'neighbors' parameter must be an int >= 1. Got {neighbors!r} instead.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < np.inf:
        raise ConfigError(f"The 'threshold' parameter must be a float > 0. Got {threshold!r} instead.")
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise DataError(f"MLSMOTE needs x and y as 2-D arrays with the same rows; got {x.shape} and {y.shape}")


def _seed_pairs(positive: np.ndarray, x: np.ndarray, rare: np.ndarray,
                neighbors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, seed row, neighbour rows padded with -1) for every positive row of every rare label."""
    labels, seeds, near = [], [], []
    for label in rare:
        bag = np.flatnonzero(positive[:, label])
        if len(bag) < 2:
            continue
        k = min(neighbors, len(bag) - 1)
        # kneighbors() without a query returns each fitted row's neighbours, never the row itself
        index = NearestNeighbors(n_neighbors=k).fit(x[bag]).kneighbors(return_distance=False)
        padded = np.full((len(bag), neighbors), -1, dtype=np.int64)
        padded[:, :k] = bag[index]
        labels.append(np.full(len(bag), label, dtype=np.int64))
        seeds.append(bag)
        near.append(padded)
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, neighbors), np.int64)
    return np.concatenate(labels), np.concatenate(seeds), np.vstack(near)


def _nominal_mode(x: np.ndarray, block: np.ndarray, members: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The block's values of the most frequent value among each synthetic row's members (ties: the seed)."""
    codes = np.unique(x[:, block], axis=0, return_inverse=True)[1].reshape(-1)
    member_codes = codes[members]
    votes = ((member_codes[:, :, None] == member_codes[:, None, :]) & valid[:, None, :]).sum(axis=2)
    votes[~valid] = -1
    winner = members[np.arange(len(members)), votes.argmax(axis=1)]  # argmax: the first (the seed) on ties
    return x[winner][:, block]


def mlsmote(x: np.ndarray, y: np.ndarray, n_rows: int, *, neighbors: int = 5, threshold: float = 1.0,
            nominal: Sequence[np.ndarray] = (), seed: int = 0) -> Synthetic:
    """``n_rows`` synthetic rows for the rare labels of (``x``, ``y``); fewer (none) when no label qualifies.

    ``nominal``: column indices of each nominal attribute (see :func:`nominal_blocks`); every
    other column is interpolated. The input rows are not part of the result.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    _check(n_rows, neighbors, threshold, x, y)
    positive = y > 0
    labels, seeds, near = _seed_pairs(positive, x, rare_labels(y, threshold), int(neighbors))
    n_pairs = len(seeds)
    if n_rows == 0 or n_pairs == 0:
        return Synthetic(np.zeros((0, x.shape[1]), np.float32), np.zeros((0, y.shape[1]), y.dtype),
                         *(np.zeros(0, np.int64),) * 3)
    rng = np.random.default_rng(seed)
    picks = np.concatenate([np.tile(np.arange(n_pairs), n_rows // n_pairs),
                            rng.choice(n_pairs, n_rows % n_pairs, replace=False)])
    seed_rows, near = seeds[picks], near[picks]
    n_near = (near >= 0).sum(axis=1)
    reference = near[np.arange(n_rows), (rng.random(n_rows) * n_near).astype(np.int64)]
    gap = rng.random((n_rows, x.shape[1]), dtype=np.float32)
    new_x = x[seed_rows] + gap * (x[reference] - x[seed_rows])

    members = np.column_stack([seed_rows, near])
    valid = members >= 0
    members = np.where(valid, members, seed_rows[:, None])  # padding points at the seed, masked out of votes
    for block in nominal:
        block = np.asarray(block, dtype=np.int64)
        if len(block):
            new_x[:, block] = _nominal_mode(x, block, members, valid)
    votes = (positive[members] & valid[:, :, None]).sum(axis=1)
    new_y = (votes > (n_near[:, None] + 1) / 2).astype(y.dtype)
    return Synthetic(new_x, new_y, seed_rows, reference, labels[picks])


def oversample(x: np.ndarray, y: np.ndarray, train_params: Mapping[str, Any], *,
               groups: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fold's training rows with MLSMOTE's rows appended, as the ``train`` section asks.

    ``train.mlsmote`` is the number of synthetic rows as a fraction of the training rows; at 0 (the
    default) ``x`` and ``y`` come back as they are, so training is exactly what it was without it.
    ``groups``: the feature pipeline's column groups (the nominal meta columns).
    """
    amount = train_params["mlsmote"]
    if not amount:
        return x, y
    extra = mlsmote(x, y, int(round(amount * len(x))), neighbors=train_params["mlsmote_neighbors"],
                    threshold=train_params["mlsmote_threshold"], nominal=nominal_blocks(groups or {}), seed=seed)
    if len(extra.x) == 0:
        return x, y
    return np.concatenate([x, extra.x.astype(x.dtype, copy=False)]), np.concatenate([y, extra.y])
