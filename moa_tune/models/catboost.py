"""The ``catboost`` family: gradient-boosted oblivious trees (CatBoost) on the targets of a stage.

Why it exists. Trees see the data unlike any network here: axis-aligned splits, blind to monotone
rescaling, no optimiser noise. Their errors correlate less with the networks' than the networks'
do with each other, which is what a blend (and a stage-3 stacker) gains from.

One multi-target model, not one model per target. ``loss_function='MultiCrossEntropy'`` grows
one tree per iteration for all targets together (shared splits, one leaf value per target). The
histogram work of a tree is the same either way (rows x features x targets per level), but one
``Logloss`` model per target means 206 fits per fold on the real data, each quantising the
features again, with its own early stopping and its own file -- a fold's fixed costs times 206 --
and it wastes the shared signal of the targets of one mechanism (the networks share their hidden
layers for the same reason); one model also early-stops on the mean log loss, the metric.
MultiCrossEntropy is CatBoost's MultiLogloss for targets in [0, 1] (the same formula; with 0/1
targets it *is* MultiLogloss), so ``train.label_smoothing`` applies exactly as for the networks.
Both run on GPU in CatBoost 1.2. On one CPU a tree is slow when rows x features x targets is
large (about 1.4 s on the ``small`` preset's fold, 2,900 x 317 x 143): ``rsm`` (features per
split), fewer feature columns and ``depth`` are the levers, or ``train.device`` on a GPU.

Early stopping as for the networks. The validation fold is CatBoost's ``eval_set`` with the same
loss on the true labels (the competition metric on the modelled columns), ``use_best_model``
keeps the trees up to the best iteration and ``early_stopping_rounds`` stops after that many
rounds without improvement; ``best_epoch`` of the fold is the number of trees kept.

Targets that are constant on a fold's training rows. In stage 1 (nonscored targets) and on small
folds some targets have no positive among a fold's training rows; CatBoost refuses such a column
("All train targets are equal": its starting value would be an infinite logit). Those columns are
left out of the trees and predicted as a constant: the label-smoothed training mean, which is
what a network trained with BCE on that column converges to. With ``train.label_smoothing`` 0
that is 0, held at the metric's clip (1e-15); keep smoothing on (the default).

Which settings apply. From ``train``: ``seed`` (``random_seed`` is the fold's seed),
``num_threads`` (``thread_count``; null: every core), ``device`` (``task_type='GPU'`` when it
resolves to CUDA) and ``label_smoothing``. The torch loop's settings (epochs, lr, batch size,
optimizer, schedule, ``early_stopping`` in epochs, ...) do not apply: CatBoost's own are in this
family's ``model`` section, so a sweep's common ``fixed`` values for networks leave it alone
(what the cross-validation does before any family, such as oversampling, applies as usual). On
CPU a seed gives identical trees; on GPU CatBoost is not deterministic (floating-point summation
order), and ``rsm`` < 1 is CPU-only for these losses (a ConfigError on CUDA).

Stages: ``direct`` (with ``also_nonscored`` too), ``stage1``, ``stage2`` and ``stage3`` --
previous-stage predictions are just more feature columns. ``transfer`` needs a pretraining phase
whose weights initialise the final model; trees have neither, so it is a ConfigError.

On disk: ``model.cbm`` (CatBoost's own binary format, ``save_model(format='cbm')``) in the fold
folder, plus the modelled columns and the constant logits in ``model.json``; no pickle.
"""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import catboost
import numpy as np
import torch
from scipy.special import logit

from ..errors import ConfigError, TrainingError
from ..io import atomic_file
from ..metric import log_loss
from ..params import Param
from ._base import ExternalFamily, ExternalModel

if TYPE_CHECKING:
    from ..train import FoldFit

__all__ = ["LOSS", "MODEL_FILE", "CatBoostFamily", "CatBoostModel"]

#: CatBoost's multi-target log loss for targets in [0, 1] (see the module docstring).
LOSS = "MultiCrossEntropy"
#: The trees' file in a fold folder.
MODEL_FILE = "model.cbm"
#: Probability clip of the constant columns' logits: the metric's clip, so the logit stays finite.
CLIP = 1e-15


class CatBoostModel(ExternalModel):
    """Fitted trees for the varying target columns, constant logits for the others."""

    def __init__(self, booster: catboost.CatBoost, columns: np.ndarray, constant_logits: np.ndarray,
                 thread_count: int = -1) -> None:
        super().__init__()
        self.booster = booster
        self.columns = np.asarray(columns, dtype=np.int64)
        self.constant_logits = np.asarray(constant_logits, dtype=np.float64)
        self.thread_count = thread_count

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = np.tile(self.constant_logits, (len(x), 1))
        if len(x):
            raw = self.booster.predict(x, prediction_type="RawFormulaVal", thread_count=self.thread_count)
            out[:, self.columns] = np.asarray(raw).reshape(len(x), -1)
        return out


class CatBoostFamily(ExternalFamily):
    """CatBoost's multi-target trees (MultiCrossEntropy), early-stopped on the validation fold."""

    name = "catboost"
    cannot_run = {"transfer": "trees have no pretraining phase and no weights to transfer; use stage direct, stage1, "
                              "stage2 or stage3"}
    params = {
        "iterations": Param("int", 200, "Most trees per fold; early stopping usually ends sooner. Small by default "
                            "(a quick run); a sweep raises it with a lower learning rate.", low=1, high=100_000),
        "learning_rate": Param("float", 0.2, "Shrinkage of each tree's leaf values (lower: more trees, often better).",
                               low=0.0, high=1.0, low_open=True),
        "depth": Param("int", 4, "Depth of the oblivious trees (2^depth leaves, each with a value per target).",
                       low=1, high=12),
        "l2_leaf_reg": Param("float", 3.0, "L2 regularisation of the leaf values.", low=0.0, high=1000.0),
        "border_count": Param("int", 32, "Histogram bins per feature: the cost of a split search grows with it "
                              "(CatBoost's CPU default is 254).", low=2, high=1024),
        "random_strength": Param("float", 1.0, "Noise added to split scores against overfitting (0: none).",
                                 low=0.0, high=100.0),
        "rsm": Param("float", 1.0, "Fraction of features each split considers (faster below 1); CPU only.",
                     low=0.0, high=1.0, low_open=True),
        "early_stopping_rounds": Param("int", 20, "Stop after this many trees without a better validation loss "
                                       "(0: grow every tree; the best iteration is kept either way).",
                                       low=0, high=100_000),
    }

    def fit_fold(self, model_params: Mapping[str, Any], train_params: Mapping[str, Any],
                 x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                 x_test: np.ndarray | None = None, *, groups: Mapping[str, np.ndarray] | None = None,
                 seed: int = 0, epochs: int | None = None,
                 init_state: Mapping[str, torch.Tensor] | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> FoldFit:
        """One CatBoost model on one fold; ``history`` holds one entry per tree.

        ``groups`` is unused (trees treat every column alike) and ``progress`` gets no per-tree
        events (CatBoost fits in one call; the caller's fold events still arrive).
        """
        from ..train import FoldFit, choose_device, predict

        if epochs is not None or init_state is not None:  # a config that skipped check_stage
            self.check_stage("transfer")
        p = train_params
        gpu = choose_device(p["device"]).type == "cuda"
        if gpu and model_params["rsm"] < 1:
            raise ConfigError("The 'model.rsm' parameter must be 1 on CUDA: CatBoost samples features on GPU for "
                              "pairwise losses only (set train.device: cpu to keep rsm < 1)")
        smoothing = p["label_smoothing"]
        targets = np.asarray(y_train, dtype=np.float64) * (1 - smoothing) + smoothing / 2
        columns = np.flatnonzero(targets.min(axis=0) < targets.max(axis=0))
        if len(columns) == 0:
            raise TrainingError("catboost: every target column is constant on this fold's training rows; "
                                "there is nothing for the trees to learn")
        constant = logit(np.clip(targets.mean(axis=0), CLIP, 1 - CLIP))
        threads = p["num_threads"] or -1
        booster = catboost.CatBoost(self._options(model_params, seed, threads, gpu))
        try:
            booster.fit(x_train, targets[:, columns], eval_set=(x_valid, np.asarray(y_valid)[:, columns]))
        except catboost.CatBoostError as exc:
            raise TrainingError(f"catboost: {str(exc).strip().splitlines()[0]}") from None
        model = CatBoostModel(booster, columns, constant, threads)
        cpu = torch.device("cpu")
        valid_pred = predict(model, x_valid, cpu, p["eval_batch_size"])
        if not np.isfinite(valid_pred).all():
            raise TrainingError("catboost: the validation predictions are not finite; lower model.learning_rate "
                                "or raise model.l2_leaf_reg")
        test_pred = predict(model, x_test, cpu, p["eval_batch_size"]) if x_test is not None and len(x_test) else None
        return FoldFit(model, valid_pred, test_pred, log_loss(y_valid, valid_pred), int(booster.tree_count_),
                       _history(booster.get_evals_result()))

    @staticmethod
    def _options(params: Mapping[str, Any], seed: int, threads: int, gpu: bool) -> dict[str, Any]:
        """CatBoost's constructor arguments: the model section, the loss, seed, threads, device, quiet."""
        options = {
            "loss_function": LOSS, "eval_metric": LOSS,
            "iterations": params["iterations"], "learning_rate": params["learning_rate"], "depth": params["depth"],
            "l2_leaf_reg": params["l2_leaf_reg"], "border_count": params["border_count"],
            "random_strength": params["random_strength"],
            "use_best_model": True, "early_stopping_rounds": params["early_stopping_rounds"] or None,
            "random_seed": int(seed), "thread_count": threads,
            "task_type": "GPU" if gpu else "CPU",
            # quiet: no per-iteration log and no catboost_info/ folder in the working directory
            "logging_level": "Silent", "allow_writing_files": False,
        }
        if gpu:
            options["devices"] = str(torch.cuda.current_device())
        else:
            options["rsm"] = params["rsm"]
        return options

    def save(self, model: ExternalModel, directory: str | os.PathLike) -> dict[str, Any]:
        assert isinstance(model, CatBoostModel)
        with atomic_file(Path(directory) / MODEL_FILE) as tmp:
            model.booster.save_model(str(tmp), format="cbm")
        return {"file": MODEL_FILE, "columns": model.columns.tolist(),
                "constant_logits": model.constant_logits.tolist()}

    def load(self, directory: str | os.PathLike, settings: Mapping[str, Any]) -> CatBoostModel:
        path = Path(directory) / settings["file"]
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        booster = catboost.CatBoost()
        try:
            booster.load_model(str(path), format="cbm")
        except catboost.CatBoostError as exc:
            raise ValueError(f"{path.name} is not a CatBoost model: {str(exc).strip().splitlines()[0]}") from None
        columns = np.asarray(settings["columns"], dtype=np.int64)
        constants = np.asarray(settings["constant_logits"], dtype=np.float64)
        if constants.ndim != 1 or not all(math.isfinite(c) for c in constants) or \
                len(columns) == 0 or columns.min() < 0 or columns.max() >= len(constants):
            raise ValueError("the catboost settings in model.json are inconsistent (columns, constant_logits)")
        return CatBoostModel(booster, columns, constants)


def _history(evals: Mapping[str, Mapping[str, list[float]]]) -> list[dict[str, float]]:
    """CatBoost's per-iteration losses as the trainer's history (one entry per tree, like an epoch)."""
    train = evals.get("learn", {}).get(LOSS, [])
    valid = evals.get("validation", {}).get(LOSS, [])
    return [{"epoch": i + 1, "train_loss": float(t), "valid_loss": float(v)}
            for i, (t, v) in enumerate(zip(train, valid))]
