"""The Ray Tune layer: one Tune experiment per family x stage, OptunaSearch + fold-level ASHA.

- The trainable (:func:`trainable`) is thin: it turns Tune's flat config into a nested config,
  runs :func:`moa_tune.train.cross_validate`, and after every fold calls ``tune.report`` with
  ``loss`` = running mean fold loss (``training_iteration`` = folds done) and a checkpoint of
  that fold (Tune keeps every one: together they are the finished folds), so a restarted or
  resumed trial goes on at its next fold.
- Data, folds and previous-stage predictions go once into the object store
  (``tune.with_parameters``); no trial reads files.
- ``ASHAScheduler(time_attr="training_iteration", max_t=n_folds)``: poor configurations stop after
  their first folds. ``OptunaSearch`` (TPE, seeded, define-by-run space) inside a
  ``ConcurrencyLimiter``.
- Stages run in order; the best completed configuration of a stage (or the best of each family)
  feeds the next one with its out-of-fold and fold-averaged test predictions.
- :class:`FoldSearch` tells Optuna a trial that did not train every fold as PRUNED, with each
  fold's running loss as an intermediate value (Ray's OptunaSearch alone tells it COMPLETE).
- With a budget (:class:`moa_tune.budget.JobPlan`), each experiment runs for its slice of the sweep
  time left (:class:`SliceStopper`), its stage entry's trial count, if any, as a cap.

Results: ``results/<sweep>/`` holds ``sweep.yaml``, ``folds.npz``, ``<stage>/<family>/`` (``done.json``
and ``best/`` predictions), ``trials.csv``. The Tune experiments themselves (pickled resume state,
trial folders, checkpoints, TensorBoard events) live apart, under ``--storage`` or
``~/ray_results/moa-tune/`` (:func:`experiments_root`). ``run_sweep(..., resume=True)`` picks up an
interrupted sweep: finished experiments are kept, an unfinished one is restored with its searcher
state (``Tuner.restore``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
import pandas as pd
import ray
import yaml
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from .budget import BUDGET_KEY, Budget, BudgetError, JobPlan, format_seconds
from .data import MoaData
from .errors import ConfigError, Interrupted, MoaTuneError
from .folds import Folds
from .io import write_json, write_text
from .ray_session import DASHBOARD_HOST, quiet, start_or_join
from .ray_session import shutdown as shutdown_ray
from .search_space import SearchSpace
from .stages import NEEDS_INPUTS, Predictions, inputs_digest
from .sweep_spec import SweepSpec, parse_sweep
from .train import FoldReport, assemble_predictions, cross_validate

__all__ = ["SweepResult", "experiments_root", "recorded_storage", "run_sweep", "trainable"]

log = logging.getLogger(__name__)
METRIC = "loss"
MODE = "min"
DONE_MARKER = "done.json"
CHECKPOINT_FILE = "folds_done.npz"
FITTED_DIR = "fitted"  # in each fold's checkpoint: that fold's pipeline and network (moa_tune.artifacts)


# --------------------------------------------------------------------------------------------
# the trainable


def _save_fold(directory: str, report: FoldReport, family: str, model_params: Mapping[str, Any]) -> None:
    """One fold's predictions and figures, and its fitted pipeline and network (``fitted/``).

    The content of the checkpoint reported after that fold. The fitted fold lets the collector
    reuse the trial (same configuration, folds, seed and inputs) as one seed of a component instead
    of training it again; the sweep deletes it from trials that cannot become a component
    (:class:`KeepTopFitted`).
    """
    arrays = {"valid": report.valid_pred}
    if report.test_pred is not None:
        arrays["test"] = report.test_pred
    meta = {"fold": report.fold, "loss": report.loss, "best_epoch": report.best_epoch, "seconds": report.seconds}
    np.savez(os.path.join(directory, CHECKPOINT_FILE), **arrays, meta=np.array(json.dumps(meta)))
    if report.model is not None and report.pipeline is not None:
        from .artifacts import save_fitted

        save_fitted(os.path.join(directory, FITTED_DIR), family=family, model_params=model_params,
                    n_outputs=report.model_outputs, model=report.model, pipeline=report.pipeline)


def _checkpoint_chain(checkpoint: "tune.Checkpoint") -> list["tune.Checkpoint"]:
    """The trial's checkpoints up to ``checkpoint`` (the latest one Tune knows), oldest first.

    Each holds one fold, so together they are the trial's finished folds. Tune keeps them all
    (``num_to_keep=None``): with ``num_to_keep=1`` Tune deleted the previous checkpoint before its
    experiment snapshot named the new one, and a driver killed in between left a resumed trial
    pointing at a deleted checkpoint ("Could not recover from checkpoint"). Checkpoints written after
    ``checkpoint`` (by a run killed before its snapshot) are ignored and rewritten.
    """
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    last = int(name.rpartition("_")[2])
    return [c for c in trial_checkpoints(checkpoint.filesystem, parent)
            if int(c.path.rstrip("/").rpartition("_")[2]) <= last]


def _load_reports(checkpoint: "tune.Checkpoint", folds: Folds) -> list[FoldReport]:
    """The finished folds of a trial, from its chain of checkpoints (see :func:`_checkpoint_chain`)."""
    return reports_of(_checkpoint_chain(checkpoint), folds)


def reports_of(checkpoints: list["tune.Checkpoint"], folds: Folds) -> list[FoldReport]:
    """The folds held by ``checkpoints`` (oldest first; a later one of the same fold wins) as reports."""
    by_fold: dict[int, tuple[dict[str, Any], np.ndarray, np.ndarray | None]] = {}
    for link in checkpoints:
        with link.as_directory() as directory:
            with np.load(os.path.join(directory, CHECKPOINT_FILE), allow_pickle=False) as archive:
                meta = json.loads(str(archive["meta"]))
                by_fold[meta["fold"]] = (meta, archive["valid"], archive["test"] if "test" in archive.files else None)
    splits = list(folds.split())
    reports: list[FoldReport] = []
    for i, (meta, valid, test) in enumerate(by_fold.values()):
        running = float(np.mean([m["loss"] for m, _, _ in list(by_fold.values())[:i + 1]]))
        reports.append(FoldReport(meta["fold"], meta["loss"], running, i + 1, folds.n_splits, splits[meta["fold"]][1],
                                  valid, test, meta["best_epoch"], meta["seconds"]))
    return reports


def trial_config(flat: Mapping[str, Any], fixed: Mapping[str, Any], stage: str, threads: int | None) -> dict[str, Any]:
    """The nested config of a trial: sampled values, then the sweep's fixed values, stage and threads."""
    from .config import set_path

    config: dict[str, Any] = {}
    for key, value in flat.items():
        if not key.startswith("search."):
            set_path(config, key, value)
    for key, value in fixed.items():
        set_path(config, key, value)
    config["stage"] = stage
    if threads and "num_threads" not in config.get("train", {}):
        set_path(config, "train.num_threads", threads)
    return config


def trainable(config: dict, *, data: MoaData, folds: Folds, inputs: Predictions | None,
              fixed: Mapping[str, Any], stage: str, threads: int | None) -> None:
    """One Tune trial: cross-validate, reporting after every fold, resuming from a checkpoint."""
    from .config import resolve_config

    nested = trial_config(config, fixed, stage, threads)
    resolved = resolve_config(nested)
    resume: list[FoldReport] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume = _load_reports(checkpoint, folds)
    reports = list(resume)
    node = ray.get_runtime_context().get_node_id()
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())  # a fractional GPU shows as the id it shares
    for event in cross_validate(nested, data, folds, inputs, resume=resume, keep_models=True):
        if not isinstance(event, FoldReport):
            continue
        reports.append(event)
        with tempfile.TemporaryDirectory() as directory:
            _save_fold(directory, event, resolved["family"], resolved["model"])
            tune.report({METRIC: event.running_loss, "fold_loss": event.loss, "folds_done": event.folds_done,
                         "fold_losses": ",".join(f"{r.loss:.8f}" for r in reports), "node": node, "gpus": gpus,
                         "n_folds": folds.n_splits},
                        checkpoint=tune.Checkpoint.from_directory(directory))


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default repeats the whole config in the name)."""
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------------------------
# the searcher


class FoldSearch(OptunaSearch):
    """Ray Tune's OptunaSearch, telling Optuna every fold's loss and a partial trial as PRUNED.

    OptunaSearch reports a trial's running CV loss to Optuna as an intermediate value (step = folds
    done), except the result on which the scheduler stops the trial (Tune does not pass that one to
    the searcher): a trial ASHA stopped after its first fold had no intermediate value at all, and a
    full one missed its last fold. It then tells every trial that ends with a value as COMPLETE, so
    a trial stopped after one or two folds (or cut by the time budget) entered TPE's history, and
    could become the study's ``best_trial``, with a noisy partial loss ranked among full CV means.

    Here the missing steps are reported from the trial's last result (its fold losses), and a trial
    that did not train every fold is told as PRUNED: Optuna stores its last intermediate value, and
    TPE ranks it as plain Optuna ranks a pruned trial (below every complete one, earlier-stopped
    lower). A trial that trained every fold is COMPLETE with its CV loss; one that errored is FAIL.
    Module-level because Tune pickles the searcher with the experiment state.

    ``warm_trials``: finished trials of an earlier experiment over the same space (the budget's
    second round of the best experiment, :func:`run_sweep`), added to the study when it is created,
    so TPE goes on from what that search learnt instead of starting at random again.
    """

    def __init__(self, *args: Any, warm_trials: Sequence[optuna.trial.FrozenTrial] = (), **kwargs: Any) -> None:
        self._warm = list(warm_trials)  # set first: OptunaSearch.__init__ creates the study
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        if self._warm:
            self._ot_study.add_trials(self._warm)
            self._warm = []  # told once; a restored searcher brings its study with it

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if error or not result or ot_trial is None or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        _report_missing_folds(ot_trial, result)
        if int(result.get("folds_done", 0)) >= int(result.get("n_folds", 0)):
            super().on_trial_complete(trial_id, result, error)
            return
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def _report_missing_folds(ot_trial: Any, result: Mapping[str, Any]) -> None:
    """Report the running CV loss after each fold the Optuna trial has not seen (steps 1..folds done).

    The last step gets the trial's reported loss itself; earlier ones the mean of the fold losses up
    to them. Steps already reported are left alone (Optuna ignores a repeated step with a warning).
    """
    losses = [float(x) for x in str(result.get("fold_losses", "")).split(",") if x]
    done = int(result.get("folds_done", len(losses)))
    if not losses or done != len(losses):
        return
    running = np.cumsum(losses) / np.arange(1, done + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for step in range(1, done + 1):
            value = float(result[METRIC]) if step == done and result.get(METRIC) is not None else float(running[step - 1])
            ot_trial.report(value, step)


class SliceStopper(tune.Stopper):
    """Ends an experiment when its share of the job's budget is spent, once a trial trained every fold.

    An experiment whose slice runs out before any trial finished every fold would leave its stage
    without a best configuration (and the next stage without inputs), so it goes on past its slice
    until one has, but never past ``hard_s`` (the sweep's own deadline). Past its slice, it also
    goes on while a trial whose running loss beats the best finished trial is still training: a
    cheap, poor configuration that happened to finish first must not cut a better, slower one.
    Trials still running when it stops are cut: they did not train every fold, so they are neither
    completed nor best (the Optuna study holds them as PRUNED or RUNNING). Module-level because Tune
    pickles it with the experiment state; the clock is kept as seconds left, counted down between
    checks, so a resumed experiment goes on with what its slice had left (as Tune's own
    TimeoutStopper does).
    """

    def __init__(self, slice_s: float, hard_s: float, n_folds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.slice_left, self.hard_left, self.n_folds = float(slice_s), float(hard_s), int(n_folds)
        self.completed = 0
        self.best = math.inf                     # CV loss of the best trial that trained every fold
        self.folds: dict[str, int] = {}
        self.live: dict[str, tuple[float, float, float]] = {}  # unfinished trial -> (seen at, s per fold, loss)
        self.late: set[str] = set()  # trials whose first report came after the slice had ended
        self._clock = clock
        self._last = clock()

    def _tick(self) -> None:
        now = self._clock()
        spent, self._last = now - self._last, now
        self.slice_left -= spent
        self.hard_left -= spent

    def __call__(self, trial_id: str, result: dict) -> bool:
        """Cut a trial that cannot help within the budget.

        A trial whose folds so far say it cannot train the rest before the sweep's deadline is cut
        at once (its remaining folds would be wasted), and so is one that cannot finish within the
        slice once another trial has finished, unless its running loss beats that trial's. Past the
        slice without a finished trial, only the furthest trial goes on; past it with one, a trial
        that first reports then is cut.
        """
        self._tick()
        done = int(result.get("folds_done", 0))
        loss = float(result[METRIC]) if result.get(METRIC) is not None else math.inf
        if trial_id not in self.folds and self.slice_left <= 0 and self.completed:
            self.late.add(trial_id)
        self.folds[trial_id] = done
        if done >= self.n_folds:
            self.completed += 1
            self.best = min(self.best, loss)
            self.live.pop(trial_id, None)
            return False
        per_fold = float(result.get("time_total_s") or 0.0) / max(1, done)
        still_needs = per_fold * (self.n_folds - done)
        # a trial begun after the slice ended (Tune starts new ones while the experiment waits for a
        # better one to finish) is cut at its first fold: it would keep the experiment open with a
        # one-fold loss, which is often below a full CV mean, and eat the later experiments' time
        cut = still_needs > self.hard_left or trial_id in self.late or \
            (self.completed and loss >= self.best and still_needs > self.slice_left)
        if not cut and self.slice_left <= 0 and not self.completed:
            leader = max(self.folds, key=lambda t: self.folds[t])
            cut = trial_id != leader and self.folds[trial_id] < self.folds[leader]
        if cut:
            self.live.pop(trial_id, None)
        else:
            self.live[trial_id] = (self._clock(), per_fold, loss)
        return cut

    def stop_all(self) -> bool:
        self._tick()
        if self.hard_left <= 0:
            return True
        if self.slice_left > 0 or not self.completed:
            return False
        # past the slice with a finished trial: go on only while one that beats it is still training (it
        # reported within about two of its folds; a trial the scheduler stopped reports no more)
        now = self._clock()
        return not any(loss < self.best and now - seen <= 2 * per_fold + 5.0
                       for seen, per_fold, loss in self.live.values())

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("late", set())
        self._last = self._clock()
        self.live = {}  # times of another process's clock; the resumed trials report again


def startup_trials(slice_s: float, slots: int, trial_s: float | None) -> int:
    """TPE's random start-up trials for an experiment: about a quarter of the trials it can afford.

    Optuna's default (10) is right for a long search; an experiment that affords 12 trials would
    then never use TPE at all. ``trial_s`` is the measured mean time of a trial so far (pruned ones
    included); before any is measured, 5.
    """
    if not trial_s or trial_s <= 0:
        return 5
    affordable = slice_s * max(1, slots) / trial_s
    return int(min(10, max(3, round(affordable / 4))))


# --------------------------------------------------------------------------------------------
# progress


class TrialLines(tune.Callback):
    """A line per finished trial (completed, pruned or errored) and the best so far.

    Module-level (not a closure) because Tune pickles callbacks with the experiment state.
    """

    def __init__(self, label: str, n_folds: int, emit: Callable[[str], None] = print) -> None:
        self.label, self.n_folds, self.emit = label, n_folds, emit
        self.best = math.inf

    def _line(self, trial: Any, state: str) -> None:
        result = trial.last_result or {}
        done = int(result.get("folds_done", 0))
        loss = result.get(METRIC)
        if state == "completed" and done < self.n_folds:
            state = "pruned"
        if state == "completed" and loss is not None:
            self.best = min(self.best, loss)
        shown = f"{loss:.6f}" if loss is not None else "-"
        best = f"{self.best:.6f}" if math.isfinite(self.best) else "-"
        self.emit(f"[{self.label}] trial {trial.trial_id} {state:9s} {done}/{self.n_folds} folds  "
                  f"loss {shown}  best {best}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "completed")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "errored")


def trial_checkpoints(filesystem: Any, trial_path: str) -> list["tune.Checkpoint"]:
    """Every checkpoint folder of a trial, oldest first, whether or not Tune registered it.

    Tune registers a trial's checkpoint when it processes the report; the last one of a trial that
    its experiment stopped at that moment can be on disk and unregistered (``Result.checkpoint``
    then names the one before), so a finished trial's folds are found by listing its folder.
    """
    import pyarrow.fs as pafs

    try:
        entries = filesystem.get_file_info(pafs.FileSelector(trial_path))
    except (FileNotFoundError, OSError):
        return []
    found = sorted((int(m.group(1)), e.path) for e in entries
                   if e.type == pafs.FileType.Directory and (m := re.fullmatch(r"checkpoint_(\d+)", e.base_name)))
    return [tune.Checkpoint(path=path, filesystem=filesystem) for _, path in found]


def _drop_fitted(filesystem: Any, trial_path: str | None) -> None:
    """Delete the fitted folds from a trial's checkpoints (its predictions stay: resume needs them)."""
    if not trial_path:
        return
    for checkpoint in trial_checkpoints(filesystem, trial_path):
        try:
            filesystem.delete_dir(f"{checkpoint.path}/{FITTED_DIR}")
        except (FileNotFoundError, OSError):
            pass  # never written (an older sweep), or already deleted


class KeepTopFitted(tune.Callback):
    """Keeps the fitted folds of the ``top_k`` trials that trained every fold; deletes the others'.

    Only those can become the collector's components, and a long sweep's fitted folds would
    otherwise fill the disk (a few MB per fold and trial). Trials are judged as they end: a partial
    one (pruned, cut by the budget) loses its folds at once, a completed one when ``top_k`` better
    ones have completed. An errored trial keeps them (it may be resumed). :func:`run_sweep` makes the
    same cut again when the experiment ends, for trials that ended in an earlier, killed run.
    Module-level because Tune pickles callbacks with the experiment state.
    """

    def __init__(self, top_k: int, n_folds: int) -> None:
        self.top_k, self.n_folds = int(top_k), int(n_folds)
        self.kept: list[tuple[float, str, Any, str]] = []  # (loss, trial id, its filesystem and folder)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        loss = result.get(METRIC)
        filesystem = trial.storage.storage_filesystem
        if int(result.get("folds_done", 0)) < self.n_folds or loss is None or not math.isfinite(float(loss)):
            _drop_fitted(filesystem, trial.path)
            return
        self.kept.append((float(loss), trial.trial_id, filesystem, trial.path))
        self.kept.sort(key=lambda item: (item[0], item[1]))
        for _, _, fs, path in self.kept[self.top_k:]:
            _drop_fitted(fs, path)
        del self.kept[self.top_k:]


# --------------------------------------------------------------------------------------------
# the sweep


@dataclass
class SweepResult:
    """What a sweep produced: its folder, every trial, and the best predictions per stage x family."""

    path: Path
    trials: pd.DataFrame
    best: dict[tuple[str, str], dict[str, Any]]


#: Where Ray Tune keeps the experiments of sweeps run without ``--storage``.
DEFAULT_STORAGE = Path("~/ray_results/moa-tune")
#: The key of ``sweep.yaml`` that records where the sweep's Tune experiments are.
STORAGE_KEY = "_storage"
#: num_samples of an experiment that runs until its slice of the budget is spent.
UNLIMITED_TRIALS = 100_000


def recorded_storage(sweep_dir: str | os.PathLike) -> str | None:
    """The experiments root recorded in ``<sweep_dir>/sweep.yaml`` (None for an older or foreign file)."""
    try:
        raw = yaml.safe_load((Path(sweep_dir) / "sweep.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    value = raw.get(STORAGE_KEY) if isinstance(raw, dict) else None
    return str(value) if value else None


def experiments_root(name: str, out: str | os.PathLike, storage: str | None, resume: bool) -> str:
    """Where this sweep's Ray Tune experiments live: ``<storage>/<name>``, else a folder of our own.

    Tune's experiment state is pickled (``tuner.pkl``, the searcher's state, each trial's
    ``params.pkl``) and only Tune reads it back, so it stays out of the sweep's results folder, which
    holds nothing but arrays, JSON, CSV, YAML and HTML that are safe to share and open. Without
    ``--storage`` it goes to ``~/ray_results/moa-tune/<name>-<hash of the results folder>`` (Ray's
    usual place; one folder per results folder, so sweeps of the same name do not mix). A resumed
    sweep uses the root recorded in its ``sweep.yaml``. A new sweep clears a stale folder of its own
    default root (left by an earlier sweep in the same, since replaced, results folder); a given
    ``--storage`` is never cleared.
    """
    if storage:
        return storage.rstrip("/") + "/" + name
    if resume:
        recorded = recorded_storage(out)
        if recorded:
            return recorded
    digest = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:8]
    root = DEFAULT_STORAGE.expanduser() / f"{name}-{digest}"
    if not resume and root.exists():
        shutil.rmtree(root)
    return str(root)


def _concurrency(spec: SweepSpec) -> int:
    if spec.max_concurrent:
        return spec.max_concurrent
    available = ray.cluster_resources()
    slots = int(available.get("CPU", 1) // spec.resources["cpu"])
    if spec.resources["gpu"] > 0:
        slots = min(slots, int(available.get("GPU", 0) // spec.resources["gpu"]))
    return max(1, slots)


def check_resources(spec: SweepSpec, available: Mapping[str, float] | None = None, where: str = "the Ray cluster") -> None:
    """Fail before any trial when the cluster cannot hold one trial (Tune would wait forever)."""
    available = ray.cluster_resources() if available is None else available
    for kind, key in (("cpu", "CPU"), ("gpu", "GPU")):
        need = spec.resources[kind]
        have = available.get(key, 0)
        if need > have:
            raise ConfigError(f"{spec.source}: 'resources.{kind}' asks for {need:g} {key} per trial but {where} "
                              f"has {have:g} (lower it, or add nodes with {key}s)")


def check_local_resources(spec: SweepSpec, address: str | None, num_cpus: int | None) -> None:
    """:func:`check_resources` against the local Ray this process would start, before it starts.

    Checked before Ray starts and before anything is written (or an earlier run is replaced): a
    sweep that asks for more than this machine has is refused in one line and leaves nothing. On a
    cluster (``--address`` or RAY_ADDRESS) the check waits for the connection (:func:`run_sweep`).
    """
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return  # a cluster, or a Ray this process already joined: check_resources asks it
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check_resources(spec, {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}, "this machine")


def _trial_rows(grid, stage: str, family: str, n_folds: int, fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """trials.csv rows; a searched parameter the sweep fixes shows the value the trial trained with."""
    rows = []
    for result in grid:
        folder = Path(result.path).name
        own_id = folder[len("trial_"):] if folder.startswith("trial_") else None  # trial_dirname's names
        metrics = result.metrics or {}
        if own_id and metrics.get("trial_id") not in (None, own_id):
            # seen on a trial that was cut before its first report, with reused actors: the result
            # Tune holds for it is another trial's; it reported nothing of its own
            metrics = {}
        config = {k: v for k, v in (result.config or {}).items() if k != "family"}
        config.update({k: v for k, v in fixed.items() if k in config})
        done = int(metrics.get("folds_done", 0))
        if result.error is not None:
            state = "errored"
        elif done >= n_folds:
            state = "completed"
        else:
            state = "pruned"
        fold_losses = [float(x) for x in str(metrics.get("fold_losses", "")).split(",") if x]
        row = {"stage": stage, "family": family, "trial_id": own_id or metrics.get("trial_id") or folder,
               "state": state, "loss": metrics.get(METRIC), "folds_done": done,
               "time_s": metrics.get("time_total_s"), "node": metrics.get("node"), "gpus": metrics.get("gpus"),
               "error": None if result.error is None else str(result.error).strip().splitlines()[-1][:500],
               "path": result.path, "trial_dir": folder}
        for k in range(n_folds):
            row[f"fold_{k}_loss"] = fold_losses[k] if k < len(fold_losses) else None
        row.update({f"param.{k}": v for k, v in sorted(config.items())})
        rows.append(row)
    return rows


def _keep_top_fitted(grid, rows: list[dict[str, Any]], top_k: int) -> None:
    """The end-of-experiment cut of :class:`KeepTopFitted`: fitted folds stay only with the top ``top_k``."""
    completed = sorted((r["loss"], i) for i, r in enumerate(rows) if r["state"] == "completed")
    keep = {i for _, i in completed[:top_k]}
    for i, result in enumerate(grid):
        if i not in keep:
            _drop_fitted(result.filesystem, result.path)


def _best_predictions(grid, rows: list[dict[str, Any]], folds: Folds, data: MoaData, stage: str,
                      family: str) -> tuple[Predictions, dict[str, Any]] | None:
    """Predictions of the best trial that completed every fold (pruned means are not comparable)."""
    completed = [(r, res) for r, res in zip(rows, grid) if r["state"] == "completed" and res.checkpoint is not None]
    if not completed:
        return None
    row, result = min(completed, key=lambda pair: pair[0]["loss"])
    # every checkpoint in the trial's folder: the last one may be on disk but not registered with Tune
    reports = reports_of(trial_checkpoints(result.filesystem, result.path), folds)
    if len(reports) != folds.n_splits:
        raise MoaTuneError(f"trial {row['trial_id']} of {stage}/{family} finished {folds.n_splits} folds but its "
                           f"checkpoints in {result.path} hold {len(reports)}")
    columns = data.nonscored_columns if stage == "stage1" else data.scored_columns
    predictions = assemble_predictions(reports, data, folds, columns, stage, family)
    return predictions, {"trial_id": row["trial_id"], "loss": row["loss"], "config": result.config}


def _stage_inputs(mode: str, previous: Mapping[str, tuple[Predictions, dict]]) -> Predictions | None:
    if not previous:
        return None
    if mode == "best":
        return min(previous.values(), key=lambda pair: pair[1]["loss"])[0]
    return Predictions.concat([previous[f][0] for f in sorted(previous)])


def _new_tuner(run: Any, searcher: FoldSearch, spec: SweepSpec, folds: Folds, name: str, storage_path: str,
               n_trials: int | None, stopper: tune.Stopper | None, concurrency: int, label: str,
               emit: Callable[[str], None]) -> tune.Tuner:
    """The Tune experiment ``storage_path/name``: the searcher within ``concurrency`` trials at once,
    the sweep's scheduler over folds, a fold checkpoint kept per report, and the progress lines."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    scheduler = FIFOScheduler() if spec.scheduler == "fifo" else ASHAScheduler(
        time_attr="training_iteration", max_t=folds.n_splits, grace_period=spec.asha["grace_period"],
        reduction_factor=spec.asha["reduction_factor"])
    return tune.Tuner(
        run,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=ConcurrencyLimiter(
            searcher, max_concurrent=concurrency), scheduler=scheduler,
            num_samples=n_trials or UNLIMITED_TRIALS, time_budget_s=spec.time_budget_s,
            reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=0, stop=stopper,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            callbacks=[TrialLines(label, folds.n_splits, emit), KeepTopFitted(spec.collect["top_k"], folds.n_splits)]),
    )


def run_sweep(spec: SweepSpec, data: MoaData, out: str | os.PathLike, *, address: str | None = None,
              storage: str | None = None, resume: bool = False, num_cpus: int | None = None,
              emit: Callable[[str], None] = print, dashboard_host: str = DASHBOARD_HOST,
              plan: JobPlan | None = None) -> SweepResult:
    """Run (or resume) every experiment of ``spec`` on ``data``; write results under ``out``.

    With a ``plan`` (a budgeted job) each experiment runs for its slice of the budget (see
    :mod:`moa_tune.budget`), stage entries without ``trials`` as many trials as that affords, and the
    plan learns every experiment's measured trial times.
    """
    from . import __version__
    from .folds import make_folds

    quiet()
    check_local_resources(spec, address, num_cpus)
    started = start_or_join(address, num_cpus, dashboard_host, emit)
    try:
        check_resources(spec)  # before anything is written: a refused sweep leaves no folder behind
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        folds_path = out / "folds.npz"
        if resume and folds_path.exists():
            folds = Folds.load(folds_path)
            folds.check(data)
        else:
            f = spec.folds
            folds = make_folds(data, f["n_splits"], f["scheme"], f["seed"], f["threshold"], f["keep_controls"])
            folds.save(folds_path)
        storage_root = experiments_root(spec.name, out, storage, resume)
        from_disk = data.source is not None and Path(data.source).is_dir()
        # the search spaces as found now, by absolute path: collect and --resume read this file from
        # elsewhere, where a path relative to the user's sweep file (or a space beside it) would
        # resolve to another file, or to none
        spaces = {family: str(Path(space.source).resolve()) for family, space in spec.spaces.items()}
        recorded = {**spec.raw, "name": spec.name, "data": str(Path(data.source).resolve()) if from_disk else spec.data,
                    "search_spaces": spaces,
                    "_versions": {"moa_tune": __version__, "ray": ray.__version__, "optuna": optuna.__version__},
                    STORAGE_KEY: storage_root}
        if plan is not None:  # for `moa-tune status`: what the job may spend, and since when
            recorded[BUDGET_KEY] = {"total_s": plan.budget.total_s, "started": plan.budget.started,
                                    "sweep_only": not plan.collect}
        write_text(out / "sweep.yaml", yaml.safe_dump(recorded, sort_keys=False))
        emit(f"Ray Tune experiments (trials, checkpoints, TensorBoard events): {storage_root}")

        concurrency = _concurrency(spec)
        threads = max(1, int(spec.resources["cpu"]))
        if plan is not None:
            plan.slots = concurrency
        trial_seconds: list[float] = []  # every trial's time so far (sizes TPE's start-up)
        experiments = spec.experiments()
        all_rows: list[dict[str, Any]] = []
        best: dict[tuple[str, str], dict[str, Any]] = {}
        previous: dict[str, tuple[Predictions, dict]] = {}
        skipped: set[str] = set()  # stages a budgeted sweep could not give a completed trial, and those after them
        inputs_of: dict[str, Predictions | None] = {}
        for stage_spec in spec.stages:
            if NEEDS_INPUTS.get(stage_spec.stage) in skipped:
                skipped.add(stage_spec.stage)
                for family in stage_spec.families:
                    emit(f"[{stage_spec.stage}/{family}] skipped: stage '{NEEDS_INPUTS[stage_spec.stage]}' has no "
                         f"completed trial to feed it")
                    if plan is not None:
                        plan.drop(stage_spec.stage, family)
                    write_json(out / stage_spec.stage / family / DONE_MARKER,
                               {"trials": [], "finished": time.time(), "skipped": True})
                continue
            inputs = _stage_inputs(stage_spec.inputs, previous) if stage_spec.stage in ("stage2", "stage3") else None
            inputs_of[stage_spec.stage] = inputs
            current: dict[str, tuple[Predictions, dict]] = {}
            for family in stage_spec.families:
                label = f"{stage_spec.stage}/{family}"
                local_dir = out / stage_spec.stage / family
                best_dir = local_dir / "best"
                ahead = experiments[experiments.index((stage_spec.stage, family)):]  # this one and the rest
                if resume and (local_dir / DONE_MARKER).exists():
                    emit(f"[{label}] already finished; kept")
                    rows = json.loads((local_dir / DONE_MARKER).read_text())["trials"]
                    all_rows.extend(rows)
                    _measure(plan, trial_seconds, stage_spec.stage, family, rows)
                    if (best_dir / "predictions.json").exists():
                        meta = json.loads((best_dir / "best.json").read_text())
                        current[family] = (Predictions.load(best_dir), meta)
                        best[(stage_spec.stage, family)] = meta
                    continue
                if plan is not None:
                    # what this experiment needs to be of use: one full trial; stage 1 also one of stage 2
                    needed = 2 if stage_spec.stage == "stage1" and any(s.stage == "stage2" for s in spec.stages) else 1
                    try:
                        plan.check_feasible(needed)
                    except BudgetError as exc:
                        if not any(stage != "stage1" for stage, _ in best):
                            raise  # nothing to blend yet: the budget is too small for this sweep
                        emit(f"[{label}] skipped: the budget left cannot pay for its trials "
                             f"({str(exc).split(': ', 1)[1]})")
                        plan.drop(stage_spec.stage, family)
                        write_json(local_dir / DONE_MARKER, {"trials": [], "finished": time.time(), "skipped": True})
                        continue
                space: SearchSpace = spec.spaces[family]
                run = _trainable_for(spec, data, folds, inputs, stage_spec.stage, family, threads)
                experiment_path = f"{storage_root}/{stage_spec.stage}/{family}"
                if resume and tune.Tuner.can_restore(experiment_path) and not _started_no_trial(experiment_path):
                    emit(f"[{label}] resuming {experiment_path}")
                    tuner = tune.Tuner.restore(experiment_path, trainable=run, resume_errored=True)
                else:
                    n_trials = spec.trials_of(stage_spec, budgeted=plan is not None)
                    stopper, slice_s = None, None
                    if plan is not None:
                        slice_s = plan.experiment_slice(len(ahead))
                        stopper = SliceStopper(slice_s, plan.sweep_deadline() - time.time(), folds.n_splits)
                    mean_trial = float(np.mean(trial_seconds)) if trial_seconds else None
                    n_startup = startup_trials(slice_s, concurrency, mean_trial) if slice_s is not None else 10
                    searcher = FoldSearch(space=space, metric=METRIC, mode=MODE,
                                          sampler=optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=n_startup),
                                          points_to_evaluate=spec.points_to_evaluate.get(family) or None)
                    tuner = _new_tuner(run, searcher, spec, folds, family, f"{storage_root}/{stage_spec.stage}",
                                       n_trials, stopper, concurrency, label, emit)
                    how_many = f"{n_trials} trials" if n_trials else "trials"
                    if slice_s is not None:
                        how_many += f" for {format_seconds(slice_s)} of the budget"
                    emit(f"[{label}] {how_many}, up to {concurrency} at once, {folds.n_splits} folds each, "
                         f"{spec.scheduler.upper()} scheduler, TPE after {n_startup} random trials")
                grid = fit_or_interrupted(tuner, f"the sweep was interrupted in {label}; the experiments and "
                                          f"trials it finished are kept; go on with: moa-tune sweep --resume {out}")
                rows = _trial_rows(grid, stage_spec.stage, family, folds.n_splits, spec.fixed_for(family))
                _keep_top_fitted(grid, rows, spec.collect["top_k"])
                all_rows.extend(rows)
                _measure(plan, trial_seconds, stage_spec.stage, family, rows)
                picked = _best_predictions(grid, rows, folds, data, stage_spec.stage, family)
                local_dir.mkdir(parents=True, exist_ok=True)
                if picked is not None:
                    predictions, meta = picked
                    predictions.save(best_dir)
                    write_json(best_dir / "best.json", meta)
                    write_text(best_dir / "config.yaml", yaml.safe_dump(
                        trial_config(meta["config"], spec.fixed_for(family), stage_spec.stage, None), sort_keys=False))
                    current[family] = picked
                    best[(stage_spec.stage, family)] = meta
                    emit(f"[{label}] best {meta['loss']:.6f} (trial {meta['trial_id']})")
                else:
                    emit(f"[{label}] no trial completed every fold")
                write_json(local_dir / DONE_MARKER, {"trials": rows, "finished": time.time(),
                                                     "inputs_digest": inputs_digest(inputs)})
                _write_trials(out, all_rows)
            needed_later = any(NEEDS_INPUTS.get(s.stage) == stage_spec.stage for s in spec.stages)
            if needed_later and not current:
                if plan is None or not any(stage != "stage1" for stage, _ in best):
                    raise MoaTuneError(f"stage '{stage_spec.stage}' produced no completed trial; the next stage needs one")
                # a budget spent before this stage finished a trial: what needs it is skipped, the rest goes on
                emit(f"[{stage_spec.stage}] no trial trained every fold within its share of the budget; "
                     f"the stages that need its predictions are skipped")
                skipped.add(stage_spec.stage)
            previous = current
        if plan is not None:
            more = _go_on_with_the_best(spec, data, folds, plan, out, storage_root, inputs_of, best, concurrency,
                                        threads, resume, emit)
            all_rows.extend(more)
        trials = _write_trials(out, all_rows)
        return SweepResult(out, trials, best)
    finally:
        if started:
            shutdown_ray()


#: The Tune experiment in which a budgeted sweep's best experiment goes on, inside that experiment's
#: folder (``<stage>/<family>/more``), so its trials' folders are found as the first round's are:
#: relative to ``<stage>/<family>`` (``more/trial_...``).
MORE = "more"


def _trainable_for(spec: SweepSpec, data: MoaData, folds: Folds, inputs: Predictions | None, stage: str,
                   family: str, threads: int) -> Any:
    run = tune.with_parameters(trainable, data=data, folds=folds, inputs=inputs, fixed=spec.fixed_for(family),
                               stage=stage, threads=threads)
    return tune.with_resources(run, {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]})


def best_to_go_on_with(spec: SweepSpec, best: Mapping[tuple[str, str], Mapping[str, Any]]) -> tuple[str, str] | None:
    """The experiment a budget's time left goes to: the lowest CV loss among those that predict the
    scored targets and feed no later stage (``direct``, the last stage of the chain), whose stage
    entry gives no trial count (a count is the user's). None when there is none."""
    fed = {NEEDS_INPUTS[s.stage] for s in spec.stages if s.stage in NEEDS_INPUTS}
    open_ended = {s.stage for s in spec.stages if s.trials is None}
    leaves = [(float(meta["loss"]), stage, family) for (stage, family), meta in best.items()
              if stage not in fed and stage != "stage1" and stage in open_ended]
    if not leaves:
        return None
    _, stage, family = min(leaves)
    return stage, family


def _study_trials(experiment_path: str, rows: Sequence[Mapping[str, Any]]) -> list[optuna.trial.FrozenTrial]:
    """The first round of an experiment as Optuna trials to warm-start a second round's study.

    Parameters and their distributions come from the study in the experiment's last saved searcher
    state (Tune's pickle, written by this sweep); outcomes from the experiment's own trial rows, which
    are the record: the study misses what Tune did not pass on (a trial cut as the experiment's
    slice ended stays RUNNING there, even one that had just trained its last fold). A trial that
    trained every fold is COMPLETE at its CV loss, one that trained some is PRUNED at its running
    loss, every fold's running loss an intermediate value (as :class:`FoldSearch` tells them); an
    errored one, or one that never reported, is left out. None without a saved state.
    """
    import pickle

    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path if "://" in experiment_path
                                              else Path(experiment_path).resolve().as_uri())
    states = sorted((info for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
                     if Path(info.path).name.startswith("searcher-state-") and info.path.endswith(".pkl")),
                    key=lambda info: info.mtime_ns or 0)
    if not states:
        return []
    with fs.open_input_stream(states[-1].path) as handle:
        saved = pickle.load(handle)  # Tune's own searcher state, written by this sweep (not a results file)
    if not isinstance(saved, dict) or saved.get("_ot_study") is None:
        return []
    tune_id = {ot_trial.number: str(trial_id) for trial_id, ot_trial in (saved.get("_ot_trials") or {}).items()}
    row_of = {str(row["trial_id"]): row for row in rows}
    told = []
    for t in saved["_ot_study"].get_trials(deepcopy=True):
        row = row_of.get(tune_id.get(t.number, ""))
        if row is None or row.get("state") == "errored" or not _finite(row.get("loss")):
            continue
        done = int(row.get("folds_done") or 0)
        losses = [float(row[f"fold_{k}_loss"]) for k in range(done) if _finite(row.get(f"fold_{k}_loss"))]
        if done < 1 or len(losses) != done:
            continue
        running = np.cumsum(losses) / np.arange(1, done + 1)
        steps = {step: float(running[step - 1]) for step in range(1, done)}
        steps[done] = float(row["loss"])
        state = optuna.trial.TrialState.COMPLETE if row["state"] == "completed" else optuna.trial.TrialState.PRUNED
        told.append(optuna.trial.create_trial(state=state, value=float(row["loss"]), params=t.params,
                                              distributions=t.distributions, intermediate_values=steps))
    return told


def _go_on_with_the_best(spec: SweepSpec, data: MoaData, folds: Folds, plan: JobPlan, out: Path, storage_root: str,
                         inputs_of: Mapping[str, Predictions | None], best: dict[tuple[str, str], dict[str, Any]],
                         concurrency: int, threads: int, resume: bool, emit: Callable[[str], None]) -> list[dict[str, Any]]:
    """Spend the sweep time the planned experiments left on more trials of the best one.

    Time is left over when an experiment is skipped for want of budget (on data where one trial
    takes minutes, the 3-stage chain cannot afford its trials; measured: bench/main_job.py on
    semi-real data left 2 to 4 of 10 minutes unused), or when one ends before its slice (a trial
    count). The collector's seeds have their reserve already (the plan's sweep deadline); what is
    left goes to the experiment most likely to improve the ensemble: the best one
    (:func:`best_to_go_on_with`), in a second Tune experiment (``<family>/more``, inside the first's
    folder), whose TPE starts from the first's trials. Its trials join the experiment's ``done.json`` (so
    the collector, ``status`` and the report see one experiment), and its best replaces the
    experiment's best when it is better. Returns the new trial rows.
    """
    target = best_to_go_on_with(spec, best)
    if target is None:
        return []
    stage, family = target
    local_dir = out / stage / family
    record = json.loads((local_dir / DONE_MARKER).read_text())
    if record.get("continued"):
        return []  # done in an earlier run of this sweep (its rows are in done.json already)
    label = f"{stage}/{family}"
    experiment_path = f"{storage_root}/{stage}/{family}/{MORE}"
    run = _trainable_for(spec, data, folds, inputs_of.get(stage), stage, family, threads)
    if resume and tune.Tuner.can_restore(experiment_path) and not _started_no_trial(experiment_path):
        emit(f"[{label}] resuming {experiment_path}")
        tuner = tune.Tuner.restore(experiment_path, trainable=run, resume_errored=True)
    else:
        left = plan.sweep_deadline() - time.time()
        times = sorted(plan.measured.get((stage, family)) or [])
        if not times or left < times[len(times) // 2]:
            return []  # not one more trial of the kind that finished there would fit
        warm = _study_trials(f"{storage_root}/{stage}/{family}", record["trials"])
        every = [float(r["time_s"]) for r in record["trials"] if _finite(r.get("time_s"))]
        n_startup = startup_trials(left, concurrency, float(np.mean(every)) if every else None)
        searcher = FoldSearch(space=spec.spaces[family], metric=METRIC, mode=MODE, warm_trials=warm,
                              sampler=optuna.samplers.TPESampler(seed=spec.seed + 1, n_startup_trials=n_startup))
        tuner = _new_tuner(run, searcher, spec, folds, MORE, f"{storage_root}/{stage}/{family}", None,
                           SliceStopper(left, left, folds.n_splits), concurrency, label, emit)
        emit(f"[{label}] more trials for the {format_seconds(left)} of the sweep's budget left (the best experiment "
             f"goes on; TPE starts from its {len(warm)} trials)")
    grid = fit_or_interrupted(tuner, f"the sweep was interrupted in {label} (more trials); the experiments and "
                              f"trials it finished are kept; go on with: moa-tune sweep --resume {out}")
    rows = _trial_rows(grid, stage, family, folds.n_splits, spec.fixed_for(family))
    for row in rows:
        row["trial_dir"] = f"{MORE}/{row['trial_dir']}"
    _keep_top_fitted(grid, rows, spec.collect["top_k"])
    picked = _best_predictions(grid, rows, folds, data, stage, family)
    before = best[(stage, family)]
    if picked is not None and float(picked[1]["loss"]) < float(before["loss"]):
        predictions, meta = picked
        best_dir = local_dir / "best"
        predictions.save(best_dir)
        write_json(best_dir / "best.json", meta)
        write_text(best_dir / "config.yaml", yaml.safe_dump(
            trial_config(meta["config"], spec.fixed_for(family), stage, None), sort_keys=False))
        best[(stage, family)] = meta
        emit(f"[{label}] best {meta['loss']:.6f} (trial {meta['trial_id']}; was {float(before['loss']):.6f})")
    else:
        emit(f"[{label}] best still {float(before['loss']):.6f} (trial {before['trial_id']})")
    combined = record["trials"] + rows
    write_json(local_dir / DONE_MARKER, {**record, "trials": combined, "finished": time.time(),
                                         "continued": {"experiment": f"{stage}/{family}/{MORE}", "trials": len(rows)}})
    _measure(plan, [], stage, family, combined)
    return rows


def _started_no_trial(experiment_path: str) -> bool:
    """True when a Tune experiment was stopped before any trial reported a fold; its folder is then removed.

    A Ctrl-C or SIGTERM just after ``Tuner.fit()`` starts leaves a folder that ``Tuner.can_restore``
    accepts: ``tuner.pkl`` alone (``Tuner.restore`` then logs a traceback), or Tune's first saved
    state. Restoring those was seen to run fewer trials than asked (1 of 2, twice in CI). Nothing
    was learnt there (a trial's fold checkpoint or result is the first trace of work), so the
    experiment starts again from scratch, which is what an uninterrupted one would have done.
    """
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path if "://" in experiment_path
                                              else Path(experiment_path).resolve().as_uri())
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True, recursive=True))
    prefix = root.rstrip("/") + "/"
    for info in infos:
        parts = info.path[len(prefix):].split("/") if info.path.startswith(prefix) else []
        if len(parts) == 2 and (parts[1].startswith("checkpoint_")
                                or (parts[1] == "result.json" and (info.size or 0) > 0)):
            return False
    fs.delete_dir(root)
    return True


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def fit_or_interrupted(tuner: tune.Tuner, message: str) -> tune.ResultGrid:
    """``tuner.fit()``, raising :class:`Interrupted` (with ``message``) when Ctrl-C or SIGTERM ended it.

    ``fit()`` installs its own SIGINT handler: the first Ctrl-C ends the experiment gracefully
    (Tune saves its state with the running trials as running, so ``Tuner.restore`` goes on with
    them from their last fold) and ``fit()`` returns as if it had finished. Left at that, the
    sweep would record the interrupted experiment as done and go on. Tune's handler puts back the
    handler it found, and leaves its own in place after a normal end; so a marker handler set
    before ``fit()`` and found again after it says the fit was interrupted. The handler from
    before is restored either way (Tune's, left in place, would swallow the next Ctrl-C, in the
    collector). SIGTERM reaches the same handler (:func:`moa_tune.cli.main`).
    """
    if threading.current_thread() is not threading.main_thread() or os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") != "0":
        return tuner.fit()  # no handler of Tune's: a Ctrl-C raises KeyboardInterrupt out of fit() itself
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        grid = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is _raise_keyboard_interrupt
    finally:
        signal.signal(signal.SIGINT, before)
    if interrupted:
        raise Interrupted(message)
    return grid


def _measure(plan: JobPlan | None, trial_seconds: list[float], stage: str, family: str,
             rows: list[dict[str, Any]]) -> None:
    """Feed an experiment's trial times to the plan (full trials, best first: what the collector will
    retrain) and to TPE sizing."""
    times = [float(r["time_s"]) for r in rows if _finite(r.get("time_s"))]
    trial_seconds.extend(times)
    if plan is not None:
        full = sorted((r for r in rows if r.get("state") == "completed" and _finite(r.get("time_s"))
                       and _finite(r.get("loss"))), key=lambda r: float(r["loss"]))
        plan.record(stage, family, [float(r["time_s"]) for r in full])  # best first: the collector's picks


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _write_trials(out: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    from .io import atomic_file

    with atomic_file(out / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def load_sweep_data(spec: SweepSpec, data_dir: str | os.PathLike | None) -> MoaData:
    """The data of a sweep: ``--data DIR`` if given, else what the sweep file names."""
    from .data import load
    from .sweep_spec import load_data_source

    if data_dir is not None:
        return load(data_dir)
    return load_data_source(spec.data, Path(spec.source).resolve().parent)


def resume_spec(path: str | os.PathLike) -> SweepSpec:
    """The sweep file as recorded in ``results/<sweep>/sweep.yaml``."""
    from .config import read_yaml

    path = Path(path)
    recorded = path / "sweep.yaml"
    if not recorded.is_file():
        raise ConfigError(f"{path}: no sweep.yaml here; give the folder of a sweep (results/<sweep-name>)")
    raw = read_yaml(recorded)
    raw.pop("_versions", None)
    raw.pop(STORAGE_KEY, None)
    raw.pop(BUDGET_KEY, None)
    from .sweep_spec import SEARCH_SPACES

    return parse_sweep(raw, str(recorded), SEARCH_SPACES / "sweeps")


def resumed_budget(path: str | os.PathLike) -> Budget | None:
    """The budget of an interrupted budgeted sweep, with the time it had spent already counted.

    ``sweep.yaml`` records the budget and when it started; the sweep was last at work when it last
    wrote a file (its results folder, or Tune's experiment state under a local experiments root,
    which Tune refreshes every few seconds). A resumed sweep gets what was left then, counted from
    now: the time between the interruption and the resume is not the sweep's.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load((path / "sweep.yaml").read_text())
        recorded = raw.get(BUDGET_KEY) if isinstance(raw, dict) else None
        total, started = float(recorded["total_s"]), float(recorded["started"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
    roots = [path] + [Path(root) for root in [raw.get(STORAGE_KEY)] if root and "://" not in str(root)]
    last = max((f.stat().st_mtime for root in roots if root.is_dir() for f in root.rglob("*") if f.is_file()),
               default=started)
    spent = min(total, max(0.0, last - started))
    return Budget(total, started=time.time() - spent)
