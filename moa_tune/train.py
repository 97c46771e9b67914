"""Training: one fold (:func:`fit_fold`) and cross-validation (:func:`cross_validate`).

``cross_validate`` is a generator that yields a :class:`FoldReport` after each fold (fold index,
that fold's loss, running mean) and finally a :class:`CVResult` (out-of-fold predictions,
fold-averaged test predictions, CV loss). That is exactly what the sweep layer reports to Ray Tune
fold by fold, so ASHA can stop a poor configuration after its first folds; here it has no Ray
and runs in a notebook.

The loop is a plain torch loop over tensors already on the device (no DataLoader: the whole
fold fits in memory, and slicing a tensor is the cheapest batch there is). Loss: BCE with logits on
label-smoothed targets, plus the family's penalty (TabNet's sparsity). Early stopping keeps the
weights of the epoch with the best validation log loss (the competition metric, on the true
labels). The device is CUDA when available (with mixed precision) else CPU; on CPU a seed gives
identical results.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .config import resolve_config
from .data import MoaData
from .features import FeaturePipeline
from .folds import Folds
from .metric import log_loss
from .models import MoaModel, get_family
from .models._base import ExternalFamily
from .params import Param
from .stages import Plan, Predictions, fold_fingerprint, plan

__all__ = ["PARAMS", "CVResult", "FoldFit", "FoldReport", "choose_device", "cross_validate", "fit_fold",
           "predict"]

PARAMS: dict[str, Param] = {
    "epochs": Param("int", 25, "Maximum training epochs per fold.", low=1, high=1000),
    "batch_size": Param("int", 128, "Rows per optimisation step.", low=2, high=65536),
    "lr": Param("float", 1e-2, "Learning rate (the peak rate of OneCycleLR).", low=0.0, high=1.0, low_open=True),
    "weight_decay": Param("float", 1e-5, "Weight decay of the optimizer.", low=0.0, high=1.0),
    "optimizer": Param("str", "adamw", "Optimizer.", choices=("adam", "adamw")),
    "scheduler": Param("str", "onecycle", "Learning-rate schedule.", choices=("onecycle", "plateau", "none")),
    "pct_start": Param("float", 0.1, "OneCycleLR: fraction of steps spent warming up.", low=0.0, high=1.0,
                       low_open=True, high_open=True),
    "div_factor": Param("float", 1e3, "OneCycleLR: the initial rate is lr / div_factor.", low=1.0, high=1e6),
    "plateau_factor": Param("float", 0.5, "ReduceLROnPlateau: factor applied to the rate.", low=0.0, high=1.0,
                            low_open=True, high_open=True),
    "plateau_patience": Param("int", 2, "ReduceLROnPlateau: epochs without improvement before reducing.",
                              low=0, high=100),
    "label_smoothing": Param("float", 1e-3, "Targets become y (1 - s) + s / 2 for training.", low=0.0, high=0.5,
                             high_open=True),
    "early_stopping": Param("int", 8, "Stop after this many epochs without a better validation loss (0: never).",
                            low=0, high=1000),
    "grad_clip": Param("float", 1.0, "Clip the gradient norm at this value (0: no clipping).", low=0.0, high=1e6),
    "prior_bias": Param("bool", True, "Start the output layer's bias at each target's log-odds on the fold's "
                        "training rows, so an untrained network predicts the prior instead of 0.5."),
    "seed": Param("int", 0, "Seed of initialisation, shuffling and dropout.", low=0, high=2**31 - 1),
    "device": Param("str", "auto", "auto (CUDA when available), cpu or cuda.", choices=("auto", "cpu", "cuda")),
    "amp": Param("bool", True, "Mixed precision on CUDA (ignored on CPU)."),
    "num_threads": Param("int", None, "CPU threads of torch and of numpy's BLAS/OpenMP pools (feature PCA, "
                         "quantiles); null: leave as set.", low=1, high=1024, nullable=True),
    "eval_batch_size": Param("int", 4096, "Rows per step when predicting.", low=1, high=1_000_000),
    "mlsmote": Param("float", 0.0, "MLSMOTE: synthetic rows for rare labels appended to each fold's training rows, "
                     "as a fraction of them (0: off; more rows, slower epochs).", low=0.0, high=10.0),
    "mlsmote_neighbors": Param("int", 5, "MLSMOTE: nearest neighbours (among the rare label's positives) a "
                               "synthetic row is drawn from and takes its labels from.", low=1, high=100),
    "mlsmote_threshold": Param("float", 1.0, "MLSMOTE: a label is rare when its imbalance ratio (positives of "
                               "the most frequent label / its positives) exceeds this times the mean ratio "
                               "(1: the paper's rule; higher: fewer, rarer labels).", low=0.0, high=1000.0,
                               low_open=True),
}

#: Fewer optimisation steps than this run at a constant rate (a one-cycle schedule needs room).
MIN_ONECYCLE_STEPS = 5

Progress = Callable[[dict[str, Any]], None]


def limit_threads(n: int) -> None:
    """``n`` CPU threads for torch and for numpy's BLAS/OpenMP pools (feature PCA, quantiles).

    Ray does not set OMP_NUM_THREADS for Tune's trial actors: without this, two 1-CPU trials on 2
    cores would each run BLAS on every core.
    """
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def choose_device(preference: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seed_of(seed: int, *parts: int) -> int:
    """An independent seed for (seed, fold, phase): per-fold streams that don't overlap across seeds."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, device: torch.device | None = None,
            batch_size: int = 4096) -> np.ndarray:
    """Probabilities (float32, numpy) of ``model`` on ``x``, in eval mode.

    Without ``device``, the device of the model's parameters (the CPU for a model without any,
    such as a fitted :class:`~moa_tune.models._base.ExternalModel`).
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    model.eval()
    tensor = torch.as_tensor(x, dtype=torch.float32)
    out = []
    for start in range(0, len(tensor), batch_size):
        batch = tensor[start:start + batch_size].to(device, non_blocking=True)
        out.append(torch.sigmoid(model(batch).float()).cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)


@dataclass
class FoldFit:
    """A trained fold: the best weights and their predictions."""

    model: MoaModel
    valid_pred: np.ndarray
    test_pred: np.ndarray | None
    best_loss: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def _load_matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Copy every tensor of ``state`` whose name and shape match (transfer: all but the head)."""
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    own.update(matching)
    model.load_state_dict(own)
    return len(matching)


def _start_at_the_prior(net: nn.Module, y_train: np.ndarray, smoothing: float) -> None:
    """Set the bias of the layer that makes the logits to each target's log-odds on ``y_train``.

    MoA targets are rare (most under 1% positive): a network whose logits start near 0 predicts
    0.5 everywhere and spends its first epochs (for a short budget, all of them) learning the
    prior, and a linear stacker with few steps ended worse than the constant prior. Started here,
    an untrained network *is* the prior and training only adds what the inputs explain. The layer
    is the last ``nn.Linear`` with one output per target and a bias (a family without one is left
    as it is).
    """
    n_outputs = y_train.shape[1]
    last = None
    for module in net.modules():
        if isinstance(module, nn.Linear) and module.out_features == n_outputs and module.bias is not None:
            last = module
    if last is None:
        return
    rate = np.asarray(y_train, dtype=np.float64).mean(axis=0) * (1 - smoothing) + smoothing / 2
    rate = np.clip(rate, 1e-4, 1 - 1e-4)  # a target with no positive in the fold: a small, finite logit
    with torch.no_grad():
        last.bias.copy_(torch.as_tensor(np.log(rate / (1 - rate)), dtype=last.bias.dtype))


def fit_fold(family: str, model_params: Mapping[str, Any], train_params: Mapping[str, Any],
             x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
             x_test: np.ndarray | None = None, *, groups: Mapping[str, np.ndarray] | None = None,
             seed: int = 0, epochs: int | None = None, init_state: Mapping[str, torch.Tensor] | None = None,
             progress: Progress | None = None) -> FoldFit:
    """Train one network on one fold and keep the epoch with the best validation log loss.

    ``model_params`` and ``train_params`` are resolved sections of a config. ``init_state``
    (transfer learning) initialises every tensor whose name and shape match. A family that fits
    its own models (an :class:`~moa_tune.models._base.ExternalFamily`, such as CatBoost's trees)
    gets the same arguments and returns the same :class:`FoldFit`.
    """
    owner = get_family(family)
    if isinstance(owner, ExternalFamily):
        return owner.fit_fold(model_params, train_params, x_train, y_train, x_valid, y_valid, x_test,
                              groups=groups, seed=seed, epochs=epochs, init_state=init_state, progress=progress)
    p = train_params
    device = choose_device(p["device"])
    if p["num_threads"]:
        limit_threads(p["num_threads"])
    torch.manual_seed(seed)
    net = get_family(family).build(x_train.shape[1], y_train.shape[1], model_params, groups or {}).to(device)
    smoothing = p["label_smoothing"]
    if p["prior_bias"]:
        _start_at_the_prior(net, y_train, smoothing)
    if init_state is not None:
        _load_matching(net, init_state)
    xt = torch.as_tensor(x_train, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y_train, dtype=torch.float32, device=device) * (1 - smoothing) + smoothing / 2
    n = len(xt)
    batch = min(p["batch_size"], n)
    steps = max(1, n // batch)  # a last partial batch is dropped: BatchNorm needs >= 2 rows and it is reshuffled
    epochs = epochs or p["epochs"]
    opt_cls = torch.optim.AdamW if p["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = opt_cls(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    total_steps = epochs * steps
    if p["scheduler"] == "onecycle" and total_steps >= MIN_ONECYCLE_STEPS:
        # OneCycleLR divides by the length of each phase: keep both at least two steps long.
        pct = min(max(p["pct_start"], 2 / total_steps), 1 - 2 / total_steps)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=p["lr"], total_steps=total_steps,
                                                        pct_start=pct, div_factor=p["div_factor"])
    elif p["scheduler"] == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=p["plateau_factor"],
                                                               patience=p["plateau_patience"])
    else:
        scheduler = None
    use_amp = p["amp"] and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    criterion = nn.BCEWithLogitsLoss()
    generator = torch.Generator(device="cpu").manual_seed(seed)

    best = (math.inf, -1, None)
    history: list[dict[str, float]] = []
    since_best = 0
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step on CUDA
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = criterion(net(xt[idx]).float(), yt[idx]) + net.penalty()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if p["grad_clip"] > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), p["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
                scheduler.step()
            total += loss.detach()
        train_loss = float(total) / steps
        valid_pred = predict(net, x_valid, device, p["eval_batch_size"])
        if not (math.isfinite(train_loss) and np.isfinite(valid_pred).all()):
            from .errors import TrainingError

            raise TrainingError(f"training diverged at epoch {epoch + 1}: the {'training loss' if not math.isfinite(train_loss) else 'validation prediction'} "
                                f"is not finite (train loss {train_loss}); lower train.lr, keep train.grad_clip on, "
                                "or scale the features (features.scaler) if the data has extreme values")
        valid_loss = log_loss(y_valid, valid_pred)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(valid_loss)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "valid_loss": valid_loss,
                        "lr": optimizer.param_groups[0]["lr"]})
        if progress is not None:
            progress({"event": "epoch", **history[-1], "epochs": epochs})
        if valid_loss < best[0]:
            best = (valid_loss, epoch + 1, copy.deepcopy(net.state_dict()))
            since_best = 0
        else:
            since_best += 1
            if p["early_stopping"] and since_best >= p["early_stopping"]:
                break
    net.load_state_dict(best[2])
    valid_pred = predict(net, x_valid, device, p["eval_batch_size"])
    test_pred = predict(net, x_test, device, p["eval_batch_size"]) if x_test is not None and len(x_test) else None
    return FoldFit(net, valid_pred, test_pred, best[0], best[1], history)


@dataclass(frozen=True, eq=False)
class FoldReport:
    """One finished fold of :func:`cross_validate` (what the sweep reports to Tune)."""

    fold: int
    loss: float                   # this fold's validation log loss (the stage's training targets)
    running_loss: float           # mean of the fold losses so far
    folds_done: int
    n_folds: int
    valid_rows: np.ndarray        # row indices of this fold's validation rows
    valid_pred: np.ndarray        # (valid rows, output columns) probabilities, all-zero columns restored
    test_pred: np.ndarray | None  # (test rows, output columns)
    best_epoch: int
    seconds: float
    model: MoaModel | None = None
    pipeline: FeaturePipeline | None = None
    model_outputs: int = 0        # width of the network's output layer (the trained target columns)


@dataclass(frozen=True, eq=False)
class CVResult:
    """The outcome of a cross-validation: CV loss and the stage's predictions."""

    loss: float                   # log loss over every used row's out-of-fold prediction
    fold_losses: list[float]
    predictions: Predictions      # oof (train) and fold-averaged test predictions
    config: dict[str, Any]
    loss_all_rows: float | None   # scored stages: loss over all train rows, left-out rows predicted 0

    @property
    def oof(self) -> np.ndarray:
        return self.predictions.oof

    @property
    def test(self) -> np.ndarray | None:
        return self.predictions.test


def _expand(pred: np.ndarray, spec: Plan) -> np.ndarray:
    """Output predictions with dropped all-zero columns restored as zeros."""
    picked = pred[:, spec.output]
    if len(spec.restore) == len(spec.output_columns):
        return picked
    full = np.zeros((len(pred), len(spec.output_columns)), dtype=np.float32)
    full[:, spec.restore] = picked
    return full


def cross_validate(config: Mapping[str, Any], data: MoaData, folds: Folds,
                   inputs: Predictions | Sequence[Predictions] | None = None, *,
                   resume: Sequence[FoldReport] = (), keep_models: bool = False,
                   progress: Progress | None = None) -> Iterator[FoldReport | CVResult]:
    """Cross-validate one configuration: yield a :class:`FoldReport` per fold, then a :class:`CVResult`.

    ``inputs``: the previous stage's predictions (stage2, stage3). ``resume``: reports of folds
    already done (from a checkpoint); those folds are not trained again. ``keep_models`` attaches
    each fold's network and feature pipeline to its report (for saving or export).
    """
    from .mlsmote import oversample

    cfg = resolve_config(config)
    folds.check(data)
    spec = plan(cfg, data, folds, inputs)
    family, train_p = cfg["family"], cfg["train"]
    if train_p["num_threads"]:
        limit_threads(train_p["num_threads"])
    test = data.test
    reports: list[FoldReport] = list(resume)
    for k, (train_rows, valid_rows) in enumerate(folds.split()):
        if k < len(reports):
            continue
        start = time.perf_counter()
        if progress is not None:
            progress({"event": "fold_start", "fold": k, "n_folds": folds.n_splits})
        sub = lambda rows, arr: None if arr is None else arr[rows]  # noqa: E731
        pipeline = FeaturePipeline(spec.features).fit(data.train.take(train_rows), sub(train_rows, spec.train_inputs))
        x_train = pipeline.transform(data.train.take(train_rows), sub(train_rows, spec.train_inputs))
        x_valid = pipeline.transform(data.train.take(valid_rows), sub(valid_rows, spec.train_inputs))
        x_test = pipeline.transform(test, spec.test_inputs) if test is not None else None
        seed = train_p["seed"]
        init_state = None
        if spec.pretrain is not None:
            pre = fit_fold(family, cfg["model"], train_p, x_train, spec.pretrain[train_rows], x_valid,
                           spec.pretrain[valid_rows], None, groups=pipeline.groups_, seed=_seed_of(seed, k, 1),
                           epochs=cfg["stage_options"]["pretrain_epochs"], progress=progress)
            init_state = pre.model.state_dict()
        # MLSMOTE (off by default) on this fold's training rows only, after the pipeline: validation untouched
        x_fit, y_fit = oversample(x_train, spec.targets[train_rows], train_p, groups=pipeline.groups_,
                                  seed=_seed_of(seed, k, 2))
        fit = fit_fold(family, cfg["model"], train_p, x_fit, y_fit, x_valid,
                       spec.targets[valid_rows], x_test, groups=pipeline.groups_, seed=_seed_of(seed, k),
                       init_state=init_state, progress=progress)
        valid_pred = _expand(fit.valid_pred, spec)
        test_pred = None if fit.test_pred is None else _expand(fit.test_pred, spec)
        loss = log_loss(spec.targets[valid_rows][:, spec.output], fit.valid_pred[:, spec.output])
        running = float(np.mean([r.loss for r in reports] + [loss]))
        report = FoldReport(k, loss, running, len(reports) + 1, folds.n_splits, valid_rows, valid_pred, test_pred,
                            fit.best_epoch, time.perf_counter() - start,
                            fit.model if keep_models else None, pipeline if keep_models else None,
                            spec.targets.shape[1])
        reports.append(report)
        if progress is not None:
            progress({"event": "fold_end", "fold": k, "loss": loss, "running_loss": running,
                      "n_folds": folds.n_splits})
        yield report

    predictions = assemble_predictions(reports, data, folds, spec.output_columns, cfg["stage"], cfg["family"])
    used = folds.used
    truth = spec.targets[:, spec.output]
    loss = log_loss(truth[used], _restrict(predictions.oof, spec)[used])
    loss_all = None
    if cfg["stage"] != "stage1" and not used.all():
        loss_all = log_loss(truth, _restrict(predictions.oof, spec))
    yield CVResult(loss, [r.loss for r in reports], predictions, cfg, loss_all)


def assemble_predictions(reports: Sequence[FoldReport], data: MoaData, folds: Folds, columns: Sequence[str],
                         stage: str, family: str) -> Predictions:
    """A stage's predictions from its fold reports: out-of-fold rows on train, the fold average on test.

    The one place this is done, so a CV run and a sweep's best trial (rebuilt from its checkpoint)
    give the next stage identical inputs. Rows the folds leave out (controls) stay 0 on train and
    are set to 0 on test.
    """
    oof = np.zeros((len(data.train), len(columns)), dtype=np.float32)
    for r in reports:
        oof[r.valid_rows] = r.valid_pred
    test = None
    if data.test is not None:
        test = np.mean([r.test_pred for r in reports], axis=0).astype(np.float32)
        if not folds.keep_controls:
            test[data.test.is_control] = 0.0
    return Predictions(oof, test, tuple(columns), fold_fingerprint(folds), stage, family)


def _restrict(pred: np.ndarray, spec: Plan) -> np.ndarray:
    """Output predictions back on the trained columns (inverse of :func:`_expand`)."""
    return pred[:, spec.restore]


def run_training(config: Mapping[str, Any], data: MoaData, folds: Folds,
                 inputs: Sequence[Predictions] = (), out_dir: Any = None, *, save_models: bool = True,
                 progress: Progress | None = None) -> CVResult:
    """Run :func:`cross_validate` to the end and, with ``out_dir``, write everything atomically.

    ``out_dir`` receives ``config.yaml`` (resolved), ``folds.npz``, ``oof.npy``/``test.npy``/
    ``predictions.json`` (the next stage's ``--inputs``), ``metrics.json`` and, with
    ``save_models``, ``fold_<k>/`` (pipeline and network of each fold).
    """
    import platform
    from pathlib import Path

    import yaml

    from . import __version__
    from .artifacts import save_fitted
    from .io import atomic_dir, write_json, write_text

    reports: list[FoldReport] = []
    result: CVResult | None = None
    for event in cross_validate(config, data, folds, inputs or None, keep_models=save_models and out_dir is not None,
                                progress=progress):
        if isinstance(event, FoldReport):
            reports.append(event)
        else:
            result = event
    assert result is not None
    if out_dir is None:
        return result
    with atomic_dir(Path(out_dir), overwrite=True) as staging:
        write_text(staging / "config.yaml", yaml.safe_dump(result.config, sort_keys=False))
        folds.save(staging / "folds.npz")
        result.predictions.save(staging)
        write_json(staging / "metrics.json", {
            "loss": result.loss, "loss_all_rows": result.loss_all_rows, "fold_losses": result.fold_losses,
            "best_epochs": [r.best_epoch for r in reports], "seconds": [r.seconds for r in reports],
            "rows": int(folds.used.sum()), "folds": folds.settings(), "data": data.source,
            "versions": {"moa_tune": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
        })
        for r in reports:
            if r.model is not None:
                save_fitted(staging / f"fold_{r.fold}", family=result.config["family"],
                            model_params=result.config["model"], n_outputs=r.model_outputs,
                            model=r.model, pipeline=r.pipeline)
    return result
