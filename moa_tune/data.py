"""Reading, validating and writing lish-moa data directories.

``load(path)`` reads a directory exactly as Kaggle ships it and returns a :class:`MoaData` of plain
numpy arrays (no pandas objects, so pandas 3's string dtype never leaks into the model code).
Everything a user can get wrong raises one :class:`~moa_tune.errors.DataError` whose one-line
message names the file, the column and the first bad row. Rows are counted from 1 over the data
lines of a file (the header is not a row), and the sig_id of the row is given too.

``save(data, path)`` writes the same schema (used by the synthetic generator), atomically.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import DataError, DataWarning
from .io import atomic_dir

__all__ = [
    "CELL_PREFIX",
    "CONTROL",
    "CP_DOSES",
    "CP_TIMES",
    "CP_TYPES",
    "FILES",
    "GENE_PREFIX",
    "Features",
    "MoaData",
    "describe",
    "find_file",
    "load",
    "parse_features",
    "read_features",
    "save",
]

GENE_PREFIX = "g-"
CELL_PREFIX = "c-"
CONTROL = "ctl_vehicle"
TREATED = "trt_cp"
CP_TYPES: tuple[str, ...] = (TREATED, CONTROL)
CP_TIMES: tuple[int, ...] = (24, 48, 72)
CP_DOSES: tuple[str, ...] = ("D1", "D2")
META_COLUMNS: tuple[str, ...] = ("sig_id", "cp_type", "cp_time", "cp_dose")

#: The files of a lish-moa directory and whether they are required.
FILES: dict[str, bool] = {
    "train_features": True,
    "train_targets_scored": True,
    "train_targets_nonscored": False,
    "train_drug": False,
    "test_features": False,
    "sample_submission": False,
}
_SUFFIXES = (".csv", ".csv.zip", ".csv.gz")


@dataclass(frozen=True, eq=False)
class Features:
    """One features table (train or test): treatment metadata plus gene and cell columns.

    Arrays are numpy only: ``sig_id``, ``cp_type`` and ``cp_dose`` are fixed-width unicode,
    ``cp_time`` is int64, ``genes`` and ``cells`` are float32 of shape (rows, columns).
    """

    sig_id: np.ndarray
    cp_type: np.ndarray
    cp_time: np.ndarray
    cp_dose: np.ndarray
    genes: np.ndarray
    cells: np.ndarray
    gene_columns: tuple[str, ...]
    cell_columns: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.sig_id)
        for name in ("cp_type", "cp_time", "cp_dose", "genes", "cells"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Features.{name} has {len(getattr(self, name))} rows, sig_id has {n}")
        if self.genes.shape[1] != len(self.gene_columns) or self.cells.shape[1] != len(self.cell_columns):
            raise ValueError("Features: gene/cell matrices and column names disagree")

    def __len__(self) -> int:
        return len(self.sig_id)

    @property
    def n_genes(self) -> int:
        return len(self.gene_columns)

    @property
    def n_cells(self) -> int:
        return len(self.cell_columns)

    @property
    def is_control(self) -> np.ndarray:
        """Boolean mask of control rows (``cp_type == 'ctl_vehicle'``), which have no MoA."""
        return self.cp_type == CONTROL

    def take(self, rows: np.ndarray | Sequence[int]) -> "Features":
        """The table restricted to ``rows`` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        return Features(
            self.sig_id[rows], self.cp_type[rows], self.cp_time[rows], self.cp_dose[rows],
            self.genes[rows], self.cells[rows], self.gene_columns, self.cell_columns,
        )

    def to_frame(self) -> pd.DataFrame:
        """The table in Kaggle's column order: sig_id, cp_type, cp_time, cp_dose, g-*, c-*."""
        frame = pd.DataFrame(
            {"sig_id": self.sig_id, "cp_type": self.cp_type, "cp_time": self.cp_time, "cp_dose": self.cp_dose}
        )
        numeric = pd.DataFrame(
            np.hstack([self.genes, self.cells]), columns=[*self.gene_columns, *self.cell_columns]
        )
        return pd.concat([frame, numeric], axis=1)


@dataclass(frozen=True, eq=False)
class MoaData:
    """A lish-moa dataset: train features and targets, and optionally drugs and test features.

    ``scored`` and ``nonscored`` are uint8 0/1 matrices aligned row for row with ``train``;
    ``drug_id`` (from ``train_drug.csv``) is aligned the same way. ``source`` is the directory
    it was read from, if any.
    """

    train: Features
    scored: np.ndarray
    scored_columns: tuple[str, ...]
    nonscored: np.ndarray | None = None
    nonscored_columns: tuple[str, ...] = ()
    drug_id: np.ndarray | None = None
    test: Features | None = None
    source: str | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.train)
        if self.scored.shape != (n, len(self.scored_columns)):
            raise ValueError(f"MoaData.scored has shape {self.scored.shape}, expected ({n}, {len(self.scored_columns)})")
        if self.nonscored is not None and self.nonscored.shape != (n, len(self.nonscored_columns)):
            raise ValueError("MoaData.nonscored does not match train rows and nonscored_columns")
        if self.drug_id is not None and len(self.drug_id) != n:
            raise ValueError("MoaData.drug_id does not match train rows")

    @property
    def n_scored(self) -> int:
        return len(self.scored_columns)

    @property
    def n_nonscored(self) -> int:
        return len(self.nonscored_columns)


# --------------------------------------------------------------------------------------------
# reading


def find_file(directory: Path, stem: str) -> Path | None:
    """The file ``stem`` in ``directory`` as ``.csv``, ``.csv.zip`` or ``.csv.gz`` (in that order)."""
    for suffix in _SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_csv(path: Path, text_columns: Iterable[str] = ()) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={c: str for c in text_columns}, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", file=path.name) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:  # bad zip, bad CSV
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot be read as CSV: {first}", file=path.name) from None
    if len(frame) == 0:
        raise DataError("the file has a header but no rows", file=path.name)
    # pandas renames a repeated header name ("x" -> "x.1"); read the raw header to catch it.
    header = [str(c) for c in pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()]
    frame.columns = [str(c) for c in frame.columns]
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise DataError("the column appears twice in the header", file=path.name, column=column)
        seen.add(column)
    return frame


def _text(values: pd.Series) -> np.ndarray:
    """A pandas column as a fixed-width numpy unicode array (no pandas string dtype)."""
    return np.asarray(values.astype(object).where(values.notna(), "").tolist(), dtype=str)


def _sig_ids(frame: pd.DataFrame, file: str) -> np.ndarray:
    if "sig_id" not in frame.columns:
        raise DataError("missing column", file=file, column="sig_id")
    raw = frame["sig_id"]
    missing = np.flatnonzero(raw.isna().to_numpy() | (raw.astype(object).astype(str).str.strip() == "").to_numpy())
    if len(missing):
        raise DataError("missing sig_id", file=file, column="sig_id", row=int(missing[0]) + 1)
    ids = _text(raw)
    duplicated = np.flatnonzero(pd.Series(ids).duplicated().to_numpy())
    if len(duplicated):
        r = int(duplicated[0])
        first = int(np.flatnonzero(ids == ids[r])[0])
        raise DataError(f"duplicate sig_id '{ids[r]}' (first seen at row {first + 1})",
                        file=file, column="sig_id", row=r + 1)
    return ids


def _numeric_block(frame: pd.DataFrame, columns: Sequence[str], file: str, ids: np.ndarray,
                   what: str = "feature") -> np.ndarray:
    """The columns as float64, or a DataError at the first non-numeric, NaN or inf cell."""
    block = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        series = frame[column]
        if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
            converted = pd.to_numeric(series.astype(object), errors="coerce")
            bad = np.flatnonzero(converted.isna().to_numpy() & series.notna().to_numpy())
            if len(bad) or pd.api.types.is_bool_dtype(series):
                r = int(bad[0]) if len(bad) else 0
                raise DataError(f"non-numeric {what} value {str(series.iloc[r])!r}",
                                file=file, column=column, row=r + 1, sig_id=str(ids[r]))
            series = converted
        block[:, j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.argwhere(~np.isfinite(block))
    if len(bad):
        r, j = (int(v) for v in bad[0])
        kind = "missing value (NaN)" if np.isnan(block[r, j]) else f"infinite value ({block[r, j]})"
        raise DataError(kind, file=file, column=columns[j], row=r + 1, sig_id=str(ids[r]))
    return block


def _categorical(frame: pd.DataFrame, column: str, allowed: Sequence, file: str, ids: np.ndarray) -> np.ndarray:
    raw = frame[column]
    if all(isinstance(a, int) for a in allowed):
        values = pd.to_numeric(raw.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isin(values, np.asarray(allowed, dtype=np.float64))
        result = np.where(ok, values, 0).astype(np.int64)
    else:
        result = _text(raw)
        ok = np.isin(result, np.asarray(allowed, dtype=str)) & raw.notna().to_numpy()
    bad = np.flatnonzero(~ok)
    if len(bad):
        r = int(bad[0])
        value = raw.iloc[r]
        shown = "a missing value" if pd.isna(value) else f"unknown value {str(value)!r}"
        raise DataError(f"{shown}; expected one of {', '.join(map(str, allowed))}",
                        file=file, column=column, row=r + 1, sig_id=str(ids[r]))
    return result


def _parse_features(frame: pd.DataFrame, file: str) -> Features:
    ids = _sig_ids(frame, file)
    for column in META_COLUMNS:
        if column not in frame.columns:
            raise DataError("missing column", file=file, column=column)
    genes = [c for c in frame.columns if c.startswith(GENE_PREFIX)]
    cells = [c for c in frame.columns if c.startswith(CELL_PREFIX)]
    if not genes:
        raise DataError(f"no gene-expression column (names starting with '{GENE_PREFIX}')", file=file)
    if not cells:
        raise DataError(f"no cell-viability column (names starting with '{CELL_PREFIX}')", file=file)
    unknown = [c for c in frame.columns if c not in META_COLUMNS and c not in genes and c not in cells]
    if unknown:
        warnings.warn(f"{file}: ignoring {len(unknown)} column(s) that are neither metadata nor "
                      f"'{GENE_PREFIX}*'/'{CELL_PREFIX}*': {', '.join(unknown[:5])}", DataWarning, stacklevel=3)
    return Features(
        sig_id=ids,
        cp_type=_categorical(frame, "cp_type", CP_TYPES, file, ids),
        cp_time=_categorical(frame, "cp_time", CP_TIMES, file, ids),
        cp_dose=_categorical(frame, "cp_dose", CP_DOSES, file, ids),
        genes=_numeric_block(frame, genes, file, ids).astype(np.float32),
        cells=_numeric_block(frame, cells, file, ids).astype(np.float32),
        gene_columns=tuple(genes),
        cell_columns=tuple(cells),
    )


def parse_features(frame: pd.DataFrame, name: str = "features") -> Features:
    """A features table (Kaggle's train/test layout) from a DataFrame, checked as :func:`load` checks files.

    ``name`` is what error messages call the table (a file name when it came from one).
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame of features, got {type(frame).__name__}", file=name)
    if len(frame) == 0:
        raise DataError("the table has no rows", file=name)
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    return _parse_features(frame, name)


def read_features(path: str | os.PathLike) -> Features:
    """One features CSV (``test_features.csv`` or any file in its layout; .csv, .csv.zip, .csv.gz)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return _parse_features(_read_csv(path, ("sig_id", "cp_type", "cp_dose")), path.name)


def _parse_targets(frame: pd.DataFrame, file: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    ids = _sig_ids(frame, file)
    columns = [c for c in frame.columns if c != "sig_id"]
    if not columns:
        raise DataError("no target columns besides sig_id", file=file)
    block = _numeric_block(frame, columns, file, ids, what="target")
    bad = np.argwhere((block != 0) & (block != 1))
    if len(bad):
        r, j = (int(v) for v in bad[0])
        raise DataError(f"non-binary target value {block[r, j]:g}; targets must be 0 or 1",
                        file=file, column=columns[j], row=r + 1, sig_id=str(ids[r]))
    return ids, block.astype(np.uint8), tuple(columns)


def _alignment(reference: np.ndarray, reference_file: str, ids: np.ndarray, file: str) -> np.ndarray:
    """Indices that reorder ``ids`` into the order of ``reference``; a DataError if the sets differ."""
    if len(ids) == len(reference) and np.array_equal(ids, reference):
        return np.arange(len(ids))
    position = pd.Index(ids).get_indexer(reference)
    missing = np.flatnonzero(position < 0)
    if len(missing):
        r = int(missing[0])
        raise DataError(f"sig_id '{reference[r]}' of {reference_file} (row {r + 1}) is missing from {file}",
                        file=file, column="sig_id")
    extra = np.flatnonzero(pd.Index(reference).get_indexer(ids) < 0)
    if len(extra):
        r = int(extra[0])
        raise DataError(f"sig_id '{ids[r]}' is not in {reference_file}", file=file, column="sig_id", row=r + 1)
    return position


def load(path: str | os.PathLike) -> MoaData:
    """Read and validate a lish-moa directory (Kaggle's layout; ``.csv``, ``.csv.zip`` or ``.csv.gz``).

    Targets, drugs and the sample submission are aligned on ``sig_id`` to the order of
    ``train_features`` (the same set of ids in another order is fine). Raises
    :class:`~moa_tune.errors.DataError` on anything malformed; warns (:class:`DataWarning`) about
    positive targets on control rows.
    """
    directory = Path(path)
    if not directory.exists():
        raise DataError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (give the folder that holds train_features.csv)")
    files = {stem: find_file(directory, stem) for stem in FILES}
    for stem, required in FILES.items():
        if required and files[stem] is None:
            raise DataError(f"{directory}: missing file {stem}.csv (also looked for .csv.zip and .csv.gz)")

    train_path = files["train_features"]
    train = _parse_features(_read_csv(train_path, ("sig_id", "cp_type", "cp_dose")), train_path.name)

    def targets(stem: str) -> tuple[np.ndarray, tuple[str, ...]]:
        p = files[stem]
        ids, block, columns = _parse_targets(_read_csv(p, ("sig_id",)), p.name)
        return block[_alignment(train.sig_id, train_path.name, ids, p.name)], columns

    scored, scored_columns = targets("train_targets_scored")
    nonscored, nonscored_columns = (None, ())
    if files["train_targets_nonscored"] is not None:
        nonscored, nonscored_columns = targets("train_targets_nonscored")

    drug_id = None
    if files["train_drug"] is not None:
        p = files["train_drug"]
        frame = _read_csv(p, ("sig_id", "drug_id"))
        ids = _sig_ids(frame, p.name)
        if "drug_id" not in frame.columns:
            raise DataError("missing column", file=p.name, column="drug_id")
        empty = np.flatnonzero(frame["drug_id"].isna().to_numpy())
        if len(empty):
            r = int(empty[0])
            raise DataError("missing drug_id", file=p.name, column="drug_id", row=r + 1, sig_id=str(ids[r]))
        drug_id = _text(frame["drug_id"])[_alignment(train.sig_id, train_path.name, ids, p.name)]

    test = None
    if files["test_features"] is not None:
        p = files["test_features"]
        test = _parse_features(_read_csv(p, ("sig_id", "cp_type", "cp_dose")), p.name)
        for expected, got, kind in ((train.gene_columns, test.gene_columns, "gene"),
                                    (train.cell_columns, test.cell_columns, "cell")):
            if expected != got:
                lacking = [c for c in expected if c not in got]
                if lacking:
                    raise DataError(f"missing column (present in {train_path.name})", file=p.name, column=lacking[0])
                extra = [c for c in got if c not in expected]
                if extra:
                    raise DataError(f"{kind} column not in {train_path.name}", file=p.name, column=extra[0])
                raise DataError(f"{kind} columns are in another order than in {train_path.name}", file=p.name)

    if files["sample_submission"] is not None:
        p = files["sample_submission"]
        frame = _read_csv(p, ("sig_id",))
        ids = _sig_ids(frame, p.name)
        columns = [c for c in frame.columns if c != "sig_id"]
        lacking = [c for c in scored_columns if c not in columns]
        if lacking:
            raise DataError(f"missing scored target column (present in {files['train_targets_scored'].name})",
                            file=p.name, column=lacking[0])
        extra = [c for c in columns if c not in scored_columns]
        if extra:
            raise DataError(f"column is not a scored target of {files['train_targets_scored'].name}",
                            file=p.name, column=extra[0])
        if test is not None:
            _alignment(test.sig_id, p.name.replace("sample_submission", "test_features"), ids, p.name)

    control = train.is_control
    positives = np.flatnonzero(control & (scored.sum(axis=1) > 0))
    if len(positives):
        r = int(positives[0])
        warnings.warn(
            f"{files['train_targets_scored'].name}: {len(positives)} control row(s) ({CONTROL}) have positive "
            f"targets, first at row {r + 1} (sig_id {train.sig_id[r]}); controls are normally all zero",
            DataWarning, stacklevel=2,
        )
    return MoaData(train, scored, scored_columns, nonscored, nonscored_columns, drug_id, test, str(directory))


# --------------------------------------------------------------------------------------------
# writing


def _targets_frame(ids: np.ndarray, block: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(block.astype(np.int64), columns=list(columns))
    frame.insert(0, "sig_id", ids)
    return frame


def save(data: MoaData, path: str | os.PathLike, *, overwrite: bool = False, float_format: str = "%.4f") -> Path:
    """Write ``data`` as a Kaggle-layout directory of plain CSV files, atomically.

    The files are written to a temporary sibling folder that is renamed into place, so a crash
    leaves either the old directory or the complete new one. An existing non-empty directory is
    replaced only with ``overwrite=True``.
    """
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise DataError(f"{target}: already exists and is not empty (use overwrite/--force to replace it)")
    with atomic_dir(target, overwrite=True) as staging:
        data.train.to_frame().to_csv(staging / "train_features.csv", index=False, float_format=float_format)
        _targets_frame(data.train.sig_id, data.scored, data.scored_columns).to_csv(
            staging / "train_targets_scored.csv", index=False)
        if data.nonscored is not None:
            _targets_frame(data.train.sig_id, data.nonscored, data.nonscored_columns).to_csv(
                staging / "train_targets_nonscored.csv", index=False)
        if data.drug_id is not None:
            pd.DataFrame({"sig_id": data.train.sig_id, "drug_id": data.drug_id}).to_csv(
                staging / "train_drug.csv", index=False)
        if data.test is not None:
            data.test.to_frame().to_csv(staging / "test_features.csv", index=False, float_format=float_format)
            submission = np.full((len(data.test), data.n_scored), 0.5)
            _targets_frame(data.test.sig_id, submission, data.scored_columns).astype(
                {c: float for c in data.scored_columns}).to_csv(staging / "sample_submission.csv", index=False)
    return target


# --------------------------------------------------------------------------------------------
# describing


def describe(data: MoaData, top: int = 5) -> dict:
    """Summary statistics of a dataset, as plain Python values (what ``moa-tune data describe`` shows)."""
    train = data.train
    control = train.is_control
    labels_per_row = data.scored.sum(axis=1)
    positives = data.scored.sum(axis=0).astype(int)
    order = np.argsort(-positives, kind="stable")
    summary = {
        "source": data.source,
        "train_rows": len(train),
        "test_rows": len(data.test) if data.test is not None else 0,
        "genes": train.n_genes,
        "cells": train.n_cells,
        "control_rows": int(control.sum()),
        "control_fraction": float(control.mean()),
        "drugs": int(len(np.unique(data.drug_id))) if data.drug_id is not None else None,
        "scored_targets": data.n_scored,
        "nonscored_targets": data.n_nonscored,
        "nonscored_all_zero": int((data.nonscored.sum(axis=0) == 0).sum()) if data.nonscored is not None else None,
        "scored_positives": int(positives.sum()),
        "scored_positive_fraction": float(data.scored.mean()) if data.scored.size else 0.0,
        "rows_without_label": int((labels_per_row == 0).sum()),
        "rows_without_label_fraction": float((labels_per_row == 0).mean()),
        "treated_rows_without_label": int(((labels_per_row == 0) & ~control).sum()),
        "labels_per_row": {int(k): int(v) for k, v in zip(*np.unique(labels_per_row, return_counts=True))},
        "most_frequent": [(data.scored_columns[i], int(positives[i])) for i in order[:top]],
        "least_frequent": [(data.scored_columns[i], int(positives[i])) for i in order[::-1][:top]],
        "cp_time": {int(t): int((train.cp_time == t).sum()) for t in CP_TIMES},
        "cp_dose": {d: int((train.cp_dose == d).sum()) for d in CP_DOSES},
    }
    return summary
