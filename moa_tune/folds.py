"""Cross-validation folds: multilabel-stratified and drug-aware, as scikit-learn splitters.

Replicates of one drug (its rows across cp_time and cp_dose) share one label vector and very
similar features. A row-wise split puts replicates on both sides, so the CV loss rewards
memorising drugs and overstates what a model does on unseen drugs. The competition's winning
solution therefore assigned rare drugs (at most ``threshold`` rows) to folds as whole drugs,
stratified on their label vectors, and stratified the rows of frequent drugs (mostly controls and
reference compounds with hundreds of rows) one by one. :class:`DrugAwareKFold` is that scheme.

:func:`make_folds` turns a :class:`~moa_tune.data.MoaData` into a :class:`Folds` object: one fold
index per train row (``-1`` for rows left out, by default the controls, whose predictions are
zeroed), saved to ``folds.npz`` beside the results so every stage of a run uses the same folds.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from .data import MoaData
from .errors import DataError
from .io import write_npz

__all__ = ["DEFAULT_DRUG_THRESHOLD", "DrugAwareKFold", "Folds", "Scheme", "make_folds"]

#: Drugs with at most this many rows go to folds whole (the winning solution's value).
DEFAULT_DRUG_THRESHOLD = 18
Scheme = Literal["drug", "multilabel", "auto"]
SCHEMES: tuple[str, ...] = ("drug", "multilabel", "auto")


class DrugAwareKFold:
    """K-fold that keeps rare drugs whole and stratifies frequent drugs' rows one by one.

    ``split(X, y, groups)`` follows scikit-learn's protocol: ``y`` is the (rows, targets) 0/1
    matrix to stratify on and ``groups`` the drug id of each row. Drugs with at most
    ``threshold`` rows are stratified on their (mean) label vector by
    :class:`~iterstrat.ml_stratifiers.MultilabelStratifiedKFold` and every row of such a drug
    lands in the same fold; the rows of the other drugs are stratified individually.
    """

    def __init__(self, n_splits: int = 5, threshold: int = DEFAULT_DRUG_THRESHOLD, shuffle: bool = True,
                 random_state: int | None = None) -> None:
        self.n_splits = n_splits
        self.threshold = threshold
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X: object = None, y: object = None, groups: object = None) -> int:
        return self.n_splits

    def _stratifier(self) -> MultilabelStratifiedKFold:
        return MultilabelStratifiedKFold(n_splits=self.n_splits, shuffle=self.shuffle,
                                         random_state=self.random_state if self.shuffle else None)

    def fold_of_rows(self, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """The fold index of every row (what :meth:`split` yields, as one array)."""
        if groups is None:
            raise ValueError("DrugAwareKFold needs groups: the drug id of every row")
        y = np.asarray(y)
        groups = np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries, y has {len(y)} rows")
        drugs, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        fold = np.full(len(y), -1, dtype=np.int64)

        rare = np.flatnonzero(counts <= self.threshold)
        if len(rare):
            if len(rare) < self.n_splits:
                raise ValueError(f"only {len(rare)} drugs have at most {self.threshold} rows; "
                                 f"cannot make {self.n_splits} folds of whole drugs")
            # One label vector per drug (the mean over its replicates; identical rows in practice).
            sums = np.zeros((len(drugs), y.shape[1]))
            np.add.at(sums, inverse, y)
            drug_labels = (sums / counts[:, None])[rare] >= 0.5
            drug_fold = np.full(len(drugs), -1, dtype=np.int64)
            for k, (_, valid) in enumerate(self._stratifier().split(np.zeros(len(rare)), drug_labels)):
                drug_fold[rare[valid]] = k
            in_rare = drug_fold[inverse] >= 0
            fold[in_rare] = drug_fold[inverse][in_rare]

        frequent_rows = np.flatnonzero(fold < 0)
        if len(frequent_rows):
            if len(frequent_rows) < self.n_splits:
                raise ValueError(f"{len(frequent_rows)} rows of frequent drugs cannot fill {self.n_splits} folds")
            for k, (_, valid) in enumerate(self._stratifier().split(np.zeros(len(frequent_rows)), y[frequent_rows])):
                fold[frequent_rows[valid]] = k
        return fold

    def split(self, X: object, y: np.ndarray, groups: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        fold = self.fold_of_rows(y, groups)
        for k in range(self.n_splits):
            yield np.flatnonzero(fold != k), np.flatnonzero(fold == k)


@dataclass(frozen=True, eq=False)
class Folds:
    """The fold index of every train row (``-1``: left out of training and scoring).

    ``sig_id`` records which rows the folds were made for, so loading them against other data
    fails loudly instead of silently misaligning.
    """

    fold: np.ndarray
    sig_id: np.ndarray
    n_splits: int
    scheme: str
    seed: int
    threshold: int
    keep_controls: bool

    def __len__(self) -> int:
        return self.n_splits

    @property
    def used(self) -> np.ndarray:
        """Boolean mask of the rows that take part in training and scoring."""
        return self.fold >= 0

    def split(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(train row indices, validation row indices) for each fold, over used rows only."""
        for k in range(self.n_splits):
            yield np.flatnonzero(self.used & (self.fold != k)), np.flatnonzero(self.fold == k)

    def check(self, data: MoaData) -> None:
        """Raise DataError unless these folds were made for ``data``'s train rows, in its order."""
        if len(self.sig_id) != len(data.train) or not np.array_equal(self.sig_id, data.train.sig_id):
            raise DataError(f"the folds were made for {len(self.sig_id)} rows that are not the "
                            f"{len(data.train)} train rows of {data.source or 'this dataset'}")

    def settings(self) -> dict:
        return {"n_splits": self.n_splits, "scheme": self.scheme, "seed": self.seed,
                "threshold": self.threshold, "keep_controls": self.keep_controls}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``folds.npz`` (no pickle), atomically."""
        return write_npz(path, {"fold": self.fold, "sig_id": self.sig_id.astype(str),
                                "settings": np.array(json.dumps(self.settings()))})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Folds":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                settings = json.loads(str(archive["settings"]))
                return cls(fold=archive["fold"].astype(np.int64), sig_id=archive["sig_id"], **settings)
        except FileNotFoundError:
            raise DataError(f"{path}: no such folds file") from None
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise DataError(f"{path}: not a folds file written by moa-tune ({exc})") from None


def make_folds(data: MoaData, n_splits: int = 5, scheme: Scheme = "drug", seed: int = 0,
               threshold: int = DEFAULT_DRUG_THRESHOLD, keep_controls: bool = False) -> Folds:
    """Assign every train row of ``data`` to one of ``n_splits`` folds, deterministically per seed.

    ``scheme``: ``"drug"`` (drug-aware; needs ``train_drug.csv``), ``"multilabel"`` (rows
    stratified one by one), or ``"auto"`` (drug-aware when drug ids exist, else multilabel with a
    warning). Control rows get fold ``-1`` unless ``keep_controls``. Stratified on the scored
    targets.
    """
    if scheme not in SCHEMES:
        raise DataError(f"unknown fold scheme '{scheme}'; expected one of {', '.join(SCHEMES)}")
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise DataError(f"n_splits must be an integer of at least 2, got {n_splits!r}")
    if scheme == "auto":
        scheme = "drug" if data.drug_id is not None else "multilabel"
        if scheme == "multilabel":
            warnings.warn("no train_drug.csv: folds are stratified row by row, so replicates of one drug "
                          "can sit in training and validation and the CV loss will be optimistic",
                          UserWarning, stacklevel=2)
    if scheme == "drug" and data.drug_id is None:
        raise DataError(f"{data.source or 'the dataset'}: drug-aware folds need train_drug.csv "
                        "(sig_id, drug_id); add it, or choose the multilabel scheme (--folds multilabel)")
    used = np.ones(len(data.train), dtype=bool) if keep_controls else ~data.train.is_control
    rows = np.flatnonzero(used)
    if len(rows) < n_splits:
        raise DataError(f"{len(rows)} usable train rows cannot make {n_splits} folds")
    y = data.scored[rows]
    try:
        if scheme == "drug":
            inner = DrugAwareKFold(n_splits, threshold, shuffle=True, random_state=seed).fold_of_rows(
                y, data.drug_id[rows])
        else:
            inner = np.full(len(rows), -1, dtype=np.int64)
            splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            for k, (_, valid) in enumerate(splitter.split(np.zeros(len(rows)), y)):
                inner[valid] = k
    except ValueError as exc:
        raise DataError(f"{data.source or 'the dataset'}: {exc}") from None
    fold = np.full(len(data.train), -1, dtype=np.int64)
    fold[rows] = inner
    return Folds(fold, data.train.sig_id.copy(), int(n_splits), scheme, int(seed), int(threshold), bool(keep_controls))
