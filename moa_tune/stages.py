"""Stages of the multi-stage scheme, and the predictions that flow between them.

- ``direct``: features -> scored targets.
- ``stage1``: features -> nonscored targets (columns that are all zero on the used train rows are
  dropped for training and restored as zeros in the output).
- ``stage2``: features + stage-1 out-of-fold predictions -> scored.
- ``stage3``: stage-2 out-of-fold predictions (optionally with features) -> scored: a stacker.
- ``transfer``: pretrain on nonscored (optionally with scored) targets, then fine-tune on scored.

A stage's inputs are the previous stage's *out-of-fold* predictions on train rows and its
*fold-averaged* predictions on test rows (:class:`Predictions`), so no train row is ever fed a
prediction made by a model that saw its label. Every stage of a run must use the same folds:
:class:`Predictions` records a fingerprint of the folds that made them, and
:func:`plan` refuses inputs made with other folds.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .data import MoaData
from .errors import ConfigError, DataError
from .folds import Folds
from .io import write_json
from .params import Param

__all__ = ["STAGES", "STAGE_PARAMS", "Plan", "Predictions", "fold_fingerprint", "inputs_digest", "plan"]

STAGE_PARAMS: dict[str, dict[str, Param]] = {
    "direct": {
        "also_nonscored": Param("bool", False, "Train on scored and nonscored targets together (multi-task); "
                                "only scored predictions are kept."),
    },
    "stage1": {},
    "stage2": {},
    "stage3": {
        "with_features": Param("bool", False, "Feed the features (as configured) besides the stage-2 predictions."),
    },
    "transfer": {
        "pretrain_targets": Param("str", "nonscored", "Targets of the pretraining phase.",
                                  choices=("nonscored", "both")),
        "pretrain_epochs": Param("int", 10, "Epochs of the pretraining phase.", low=1, high=500),
    },
}
STAGES: tuple[str, ...] = tuple(STAGE_PARAMS)
#: Stages that need a previous stage's predictions as inputs.
NEEDS_INPUTS: dict[str, str] = {"stage2": "stage1", "stage3": "stage2"}


def fold_fingerprint(folds: Folds) -> str:
    """A short hash of the fold assignment (and the rows it is for)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(folds.fold, dtype=np.int64).tobytes())
    digest.update("\n".join(folds.sig_id.tolist()).encode())
    return digest.hexdigest()[:16]


def inputs_digest(inputs: "Predictions | None") -> str | None:
    """A hash of a stage's inputs (values and columns): a trained stage-2/3 model is only valid on these.

    The sweep records the digest of the inputs each experiment trained on; the collector reuses a
    sweep trial's fitted folds only when its own inputs have the same digest.
    """
    if inputs is None:
        return None
    digest = hashlib.sha256()
    for array in (inputs.oof, inputs.test):
        if array is not None:
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    digest.update("\n".join(inputs.columns).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Predictions:
    """A stage's output: out-of-fold predictions on train, fold-averaged predictions on test.

    ``oof`` is (train rows, columns) float32 with rows left out of the folds set to 0; ``test``
    is (test rows, columns) or None. ``folds`` is the :func:`fold_fingerprint` of the folds.
    """

    oof: np.ndarray
    test: np.ndarray | None
    columns: tuple[str, ...]
    folds: str
    stage: str = ""
    name: str = ""

    def save(self, directory: str | os.PathLike) -> Path:
        """``oof.npy``, ``test.npy`` and ``predictions.json`` in ``directory`` (each written atomically)."""
        from .io import atomic_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, array in (("oof", self.oof), ("test", self.test)):
            if array is not None:
                with atomic_file(directory / f"{name}.npy") as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, array.astype(np.float32))
        write_json(directory / "predictions.json", {"columns": list(self.columns), "folds": self.folds,
                                                    "stage": self.stage, "name": self.name,
                                                    "has_test": self.test is not None})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Predictions":
        directory = Path(directory)
        meta_path = directory / "predictions.json"
        if not meta_path.is_file():
            raise DataError(f"{directory}: no predictions.json (not a stage output of moa-tune)")
        meta = json.loads(meta_path.read_text())
        oof = np.load(directory / "oof.npy", allow_pickle=False)
        test = np.load(directory / "test.npy", allow_pickle=False) if meta.get("has_test") else None
        return cls(oof, test, tuple(meta["columns"]), meta["folds"], meta.get("stage", ""), meta.get("name", ""))

    @staticmethod
    def concat(parts: Sequence["Predictions"]) -> "Predictions":
        """Several models' predictions side by side (the inputs of a stacker), column names prefixed."""
        if len(parts) == 1:
            return parts[0]
        if len({p.folds for p in parts}) != 1:
            raise DataError("the predictions to combine were made with different folds")
        has_test = all(p.test is not None for p in parts)
        columns = tuple(f"{p.name or i}:{c}" for i, p in enumerate(parts) for c in p.columns)
        return Predictions(np.hstack([p.oof for p in parts]),
                           np.hstack([p.test for p in parts]) if has_test else None,
                           columns, parts[0].folds, parts[0].stage, "+".join(p.name for p in parts))


@dataclass(frozen=True, eq=False)
class Plan:
    """What one stage trains on: targets, scored columns, inputs and feature settings."""

    targets: np.ndarray                 # (train rows, k) float32: what the network learns
    target_columns: tuple[str, ...]
    output: np.ndarray                  # indices into target_columns whose predictions are the stage's output
    output_columns: tuple[str, ...]     # names of the output columns (all-zero ones restored)
    restore: np.ndarray                 # positions of the output columns within output_columns
    pretrain: np.ndarray | None         # transfer: pretraining targets
    train_inputs: np.ndarray | None
    test_inputs: np.ndarray | None
    features: dict[str, Any]


def _nonscored(data: MoaData, used: np.ndarray, stage: str) -> tuple[np.ndarray, np.ndarray]:
    if data.nonscored is None:
        raise DataError(f"{data.source or 'the dataset'}: stage '{stage}' needs train_targets_nonscored.csv")
    keep = np.flatnonzero(data.nonscored[used].sum(axis=0) > 0)
    if len(keep) == 0:
        raise DataError(f"{data.source or 'the dataset'}: every nonscored target is zero on the training rows")
    return data.nonscored[:, keep].astype(np.float32), keep


def plan(config: Mapping[str, Any], data: MoaData, folds: Folds,
         inputs: Predictions | Sequence[Predictions] | None = None) -> Plan:
    """Targets, inputs and feature settings of ``config['stage']`` on ``data`` (config already resolved)."""
    stage = config["stage"]
    options = config["stage_options"]
    features = dict(config["features"])
    used = folds.used
    scored = data.scored.astype(np.float32)
    pretrain = None

    if isinstance(inputs, Predictions):
        inputs = [inputs]
    needed = NEEDS_INPUTS.get(stage)
    if needed and not inputs:
        raise ConfigError(f"stage '{stage}' needs the {needed} predictions as inputs (--inputs DIR)")
    if inputs and not needed:
        raise ConfigError(f"stage '{stage}' takes no previous-stage inputs")
    train_inputs = test_inputs = None
    if inputs:
        combined = Predictions.concat(list(inputs))
        if combined.folds != fold_fingerprint(folds):
            raise DataError("the input predictions were made with other folds; every stage of a run must use "
                            "the same folds (pass the folds.npz of the previous stage)")
        if combined.oof.shape[0] != len(data.train):
            raise DataError(f"the input predictions have {combined.oof.shape[0]} train rows, the data has {len(data.train)}")
        if data.test is not None and (combined.test is None or combined.test.shape[0] != len(data.test)):
            raise DataError("the input predictions have no test predictions matching the test rows")
        train_inputs, test_inputs = combined.oof, combined.test

    if stage == "stage1":
        targets, keep = _nonscored(data, used, stage)
        columns = data.nonscored_columns
        return Plan(targets, tuple(columns[i] for i in keep), np.arange(len(keep)), tuple(columns), keep,
                    None, None, None, features)
    if stage == "direct" and options["also_nonscored"]:
        extra, keep = _nonscored(data, used, stage)
        targets = np.hstack([scored, extra])
        names = data.scored_columns + tuple(data.nonscored_columns[i] for i in keep)
        return Plan(targets, names, np.arange(data.n_scored), data.scored_columns, np.arange(data.n_scored),
                    None, None, None, features)
    if stage == "transfer":
        pretrain, _ = _nonscored(data, used, stage)
        if options["pretrain_targets"] == "both":
            pretrain = np.hstack([scored, pretrain])
    if stage == "stage3" and not options["with_features"]:
        features.update(raw=False, gene_pca=0, cell_pca=0, gene_fa=0, cell_fa=0, gene_umap=0, cell_umap=0, pair_products=0,
                        row_stats=False, meta=False)
    return Plan(scored, data.scored_columns, np.arange(data.n_scored), data.scored_columns,
                np.arange(data.n_scored), pretrain, train_inputs, test_inputs, features)
