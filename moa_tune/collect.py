"""The collector: top-k configurations x seeds retrained as Ray tasks, blended, exported.

``collect(sweep_dir)`` turns a finished sweep into what its user takes home:

1. per stage (in the sweep's order) and family, the ``top_k`` completed trials (lowest CV loss)
   become *components*, each trained on every fold with each of the sweep's ``seeds``. The seed the
   sweep's trials trained with is the sweep trial itself (:func:`reuse_trial`: its checkpoints hold
   every fold's fitted pipeline and network) when the component's inputs are the ones it trained
   on; every other seed is retrained as one Ray task (``num_cpus``/``num_gpus`` as the sweep's
   trials), so the work spreads over the cluster and nothing the sweep trained is trained again;
2. a component's predictions are the mean over its seeds (out-of-fold on train, fold-averaged on
   test); the next stage's inputs are this stage's components combined as the sweep said
   (``inputs: best`` -> their blend, ``per_family`` -> each family's mean side by side), so a
   stage-3 stacker learns from the stage-2 ensemble's out-of-fold predictions;
3. the scored components are blended on their out-of-fold predictions (:mod:`moa_tune.blend`:
   Caruana selection and SLSQP weights, each also cross-fitted across folds);
4. everything is written atomically: ``collect/`` (components.csv, blend.json, per_target.csv,
   the blend's oof/test predictions, each component's predictions) and ``ensemble/`` (the export,
   :mod:`moa_tune.export`), which :class:`moa_tune.predict.Ensemble` loads without Ray.

Only the fan-out uses Ray; the retraining itself is :func:`moa_tune.train.cross_validate`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import ray
import yaml

from .blend import BlendResult, blend
from .budget import JobPlan, collect_seconds, format_seconds, seed_plan
from .data import MoaData
from .errors import ConfigError, MoaTuneError
from .export import write_manifest
from .folds import Folds
from .io import atomic_dir, write_json, write_text
from .metric import columnwise_log_loss, log_loss
from .predict import combine_inputs, mean_of
from .stages import NEEDS_INPUTS, Predictions, fold_fingerprint
from .ray_session import DASHBOARD_HOST, quiet, shutdown, start_or_join
from .sweep import DONE_MARKER, load_sweep_data, recorded_storage, resume_spec, trial_config
from .sweep_spec import SweepSpec

__all__ = ["Candidate", "CollectResult", "Component", "collect", "reuse_trial", "top_configs"]


@dataclass(frozen=True)
class Candidate:
    """A completed trial picked for retraining."""

    stage: str
    family: str
    rank: int
    trial_id: str
    sweep_loss: float
    config: dict[str, Any]
    sweep_seconds: float | None = None      # the trial's wall time: what one retraining costs
    trial_dir: str | None = None            # its folder, relative to its experiment's folder
    inputs_digest: str | None = None        # the inputs it trained on (moa_tune.stages.inputs_digest)
    node: str | None = None                 # the Ray node it ran on
    fold_losses: tuple[float, ...] = ()     # as the sweep recorded them

    @property
    def trained_seed(self) -> int:
        return int(self.config.get("train", {}).get("seed", 0))

    @property
    def id(self) -> str:
        return f"{self.stage}-{self.family}-r{self.rank}"


@dataclass(frozen=True, eq=False)
class Component:
    """A candidate retrained with every seed: seed-averaged predictions and what the export needs."""

    candidate: Candidate
    seeds: tuple[int, ...]
    seed_losses: tuple[float, ...]
    loss: float
    predictions: Predictions
    output: list[int]
    restore: list[int]
    config: dict[str, Any]
    folds_of: dict[int, list[str]]          # seed -> its fold folders, relative to the export
    n_folds: int
    nodes: tuple[str, ...]                  # Ray nodes the seeds ran on
    reused: tuple[int, ...] = ()            # seeds that are the sweep's own trial (not trained again)


@dataclass(frozen=True, eq=False)
class CollectResult:
    path: Path                              # results/<sweep>
    components: pd.DataFrame
    blend: BlendResult
    oof: np.ndarray                         # the blend's out-of-fold predictions (scored)
    test: np.ndarray | None                 # the blend's test predictions
    export: Path


def top_configs(sweep_dir: Path, spec: SweepSpec, stage: str, family: str, k: int) -> list[Candidate]:
    """The ``k`` completed trials of ``stage``/``family`` with the lowest CV loss, as full configs."""
    done = sweep_dir / stage / family / DONE_MARKER
    if not done.is_file():
        raise ConfigError(f"{sweep_dir}: experiment {stage}/{family} has not finished; finish the sweep first "
                          f"(moa-tune sweep --resume {sweep_dir})")
    record = json.loads(done.read_text())
    rows = record["trials"]
    completed = sorted((r for r in rows if r.get("state") == "completed" and r.get("loss") is not None),
                       key=lambda r: r["loss"])
    picked = []
    for rank, row in enumerate(completed[:k], start=1):
        flat = {key[len("param."):]: value for key, value in row.items() if key.startswith("param.")}
        config = trial_config(flat, spec.fixed_for(family), stage, None)
        config["family"] = family
        seconds = row.get("time_s")
        picked.append(Candidate(stage, family, rank, str(row["trial_id"]), float(row["loss"]), config,
                                float(seconds) if isinstance(seconds, (int, float)) else None,
                                row.get("trial_dir"), record.get("inputs_digest"), row.get("node"),
                                tuple(math.nan if row.get(f"fold_{i}_loss") is None else float(row[f"fold_{i}_loss"])
                                      for i in range(int(row["folds_done"])))))
    return picked


def retrain(config: Mapping[str, Any], data: MoaData, folds: Folds, inputs: Predictions | None, seed: int,
            threads: int | None) -> dict[str, Any]:
    """One configuration with one seed on every fold; predictions, losses and the fold files as bytes.

    Runs inside a Ray task: the fitted folds travel back as bytes, so the driver can write the
    export even when the task ran on another node without a shared filesystem.
    """
    from .artifacts import save_fitted
    from .config import resolve_config
    from .stages import plan
    from .train import CVResult, FoldReport, cross_validate

    cfg = copy.deepcopy(dict(config))
    cfg.setdefault("train", {})["seed"] = int(seed)
    if threads:
        cfg["train"].setdefault("num_threads", threads)
    reports: list[FoldReport] = []
    result: CVResult | None = None
    for event in cross_validate(cfg, data, folds, inputs, keep_models=True):
        if isinstance(event, FoldReport):
            reports.append(event)
        else:
            result = event
    assert result is not None
    spec = plan(resolve_config(cfg), data, folds, inputs)
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in reports:
            save_fitted(Path(tmp) / f"fold_{r.fold}", family=result.config["family"],
                        model_params=result.config["model"], n_outputs=r.model_outputs, model=r.model,
                        pipeline=r.pipeline)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                files[path.relative_to(tmp).as_posix()] = path.read_bytes()
    return {"seed": int(seed), "loss": result.loss, "oof": result.predictions.oof, "test": result.predictions.test,
            "columns": list(result.predictions.columns), "output": spec.output.tolist(),
            "restore": spec.restore.tolist(), "config": result.config, "files": files}


def reuse_trial(candidate: Candidate, experiments: str, data: MoaData, folds: Folds,
                inputs: Predictions | None) -> dict[str, Any] | None:
    """The candidate's sweep trial as one seed of its component (as :func:`retrain` returns it), or None.

    Retraining the candidate with the sweep's seed, on the sweep's folds and the inputs the trial
    trained on, would repeat the trial exactly; its checkpoints already hold every fold's
    predictions and fitted pipeline and network. None when they do not (an older sweep, a trial
    outside the sweep's ``top_k``) or when the collector's inputs differ from the trial's (the
    previous stage was collected with several seeds or families): then it is retrained.
    ``experiments``: the sweep's experiments root (a folder or URI).
    """
    import pyarrow.fs as pafs

    from .config import resolve_config
    from .stages import inputs_digest, plan
    from .sweep import CHECKPOINT_FILE, FITTED_DIR, reports_of, trial_checkpoints
    from .train import assemble_predictions

    if candidate.trial_dir is None or inputs_digest(inputs) != candidate.inputs_digest:
        return None
    try:
        filesystem, path = pafs.FileSystem.from_uri(f"{experiments}/{candidate.stage}/{candidate.family}/"
                                                    f"{candidate.trial_dir}")
        checkpoints = trial_checkpoints(filesystem, path)
        files: dict[int, dict[str, bytes]] = {}  # fold -> its fitted files, from the last checkpoint holding it
        for checkpoint in checkpoints:
            with checkpoint.as_directory() as directory:
                fitted = Path(directory) / FITTED_DIR
                with np.load(Path(directory) / CHECKPOINT_FILE, allow_pickle=False) as archive:
                    fold = int(json.loads(str(archive["meta"]))["fold"])
                files[fold] = {f"fold_{fold}/{p.relative_to(fitted).as_posix()}": p.read_bytes()
                               for p in sorted(fitted.rglob("*")) if p.is_file()}
        reports = reports_of(checkpoints, folds)
    except (FileNotFoundError, OSError, KeyError, ValueError):
        return None
    # every fold, fitted, and the very folds the sweep recorded for this trial
    if sorted(files) != list(range(folds.n_splits)) or not all(files.values()) or \
            len(reports) != len(candidate.fold_losses) or \
            not np.allclose([r.loss for r in reports], candidate.fold_losses, rtol=0, atol=1e-7):
        return None
    config = resolve_config(candidate.config)
    spec = plan(config, data, folds, inputs)
    predictions = assemble_predictions(reports, data, folds, spec.output_columns, candidate.stage, candidate.family)
    return {"seed": candidate.trained_seed, "oof": predictions.oof, "test": predictions.test,
            "loss": _component_loss(data, folds, candidate.stage, predictions.oof, spec.restore),
            "columns": list(predictions.columns), "output": spec.output.tolist(), "restore": spec.restore.tolist(),
            "config": config, "files": {k: v for fold in files.values() for k, v in fold.items()},
            "node": candidate.node or "sweep", "reused": True}


def _retrain_task(config: Mapping[str, Any], data: MoaData, folds: Folds, inputs: Predictions | None, seed: int,
                  threads: int | None) -> dict[str, Any]:
    """:func:`retrain` as a Ray task, recording the node it ran on."""
    out = retrain(config, data, folds, inputs, seed, threads)
    out["node"] = ray.get_runtime_context().get_node_id()
    return out


def _truth(data: MoaData, stage: str) -> np.ndarray:
    return (data.nonscored if stage == "stage1" else data.scored).astype(np.float32)


def _component_loss(data: MoaData, folds: Folds, stage: str, oof: np.ndarray, restore: Sequence[int]) -> float:
    used = folds.used
    return log_loss(_truth(data, stage)[used][:, restore], oof[used][:, restore])


def _recipe(mode: str, components: Sequence[Component], data: MoaData, folds: Folds) -> dict[str, Any]:
    """How the next stage combines these components into its inputs (recorded in the manifest)."""
    if mode == "per_family":
        families: dict[str, list[str]] = {}
        for c in components:
            families.setdefault(c.candidate.family, []).append(c.candidate.id)
        return {"mode": "per_family", "families": families}
    stage = components[0].candidate.stage
    restore = components[0].restore
    used = folds.used
    fitted = blend({c.candidate.id: c.predictions.oof[used][:, restore] for c in components},
                   _truth(data, stage)[used][:, restore], folds.fold[used])
    return {"mode": "blend", "weights": fitted.weights, "loss": fitted.loss,
            "cross_fitted_loss": fitted.cross_fitted_loss, "method": fitted.chosen}


def _inputs(recipe: Mapping[str, Any], components: Sequence[Component], folds: Folds) -> Predictions:
    oof = combine_inputs(recipe, {c.candidate.id: c.predictions.oof for c in components})
    has_test = all(c.predictions.test is not None for c in components)
    test = combine_inputs(recipe, {c.candidate.id: c.predictions.test for c in components}) if has_test else None
    if recipe["mode"] == "per_family":
        by_id = {c.candidate.id: c for c in components}
        columns = tuple(f"{f}:{col}" for f in sorted(recipe["families"])
                        for col in by_id[recipe["families"][f][0]].predictions.columns)
    else:
        columns = components[0].predictions.columns
    return Predictions(oof, test, columns, fold_fingerprint(folds), components[0].candidate.stage, "collected")


def _run_tasks(candidates: Sequence[Candidate], seeds: Sequence[int], spec: SweepSpec, data_ref: Any, data: MoaData,
               folds: Folds, inputs: Predictions | None, experiments: str | None, staging: Path,
               emit: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    """Every (candidate, seed): the sweep trial where it can be reused, else a Ray task; by candidate, in seed order.

    Each member's fold files are written under ``staging`` (the export being built) as soon as it
    is ready and dropped from memory, so the driver never holds every network of the ensemble.
    """
    threads = max(1, int(spec.resources["cpu"]))
    task = ray.remote(_retrain_task).options(num_cpus=spec.resources["cpu"], num_gpus=spec.resources["gpu"],
                                       max_retries=spec.max_failures, retry_exceptions=False)
    inputs_ref = ray.put(inputs) if inputs is not None else None
    results: dict[str, list[dict[str, Any]]] = {c.id: [] for c in candidates}
    reused: set[tuple[str, int]] = set()
    for c in candidates:
        out = reuse_trial(c, experiments, data, folds, inputs) if experiments and c.trained_seed in seeds else None
        if out is not None:
            _stage_member(staging, c, out)
            results[c.id].append(out)
            reused.add((c.id, out["seed"]))
            emit(f"[collect] {c.id} seed {out['seed']}: the sweep's trial {c.trial_id} reused, CV {out['loss']:.6f}")
    pending = {task.remote(c.config, data_ref, folds, inputs_ref, s, threads): (c, s)
               for c in candidates for s in seeds if (c.id, s) not in reused}
    total = len(pending)
    started = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        candidate, seed = pending.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            cause = str(exc).strip().splitlines()[-1][:300]
            raise MoaTuneError(f"collect: retraining {candidate.id} (trial {candidate.trial_id}) with seed {seed} "
                               f"failed: {cause}") from None
        _stage_member(staging, candidate, out)
        results[candidate.id].append(out)
        emit(f"[collect] {candidate.id} seed {seed}: CV {out['loss']:.6f}  "
             f"({total - len(pending)}/{total}, {time.perf_counter() - started:.0f} s)")
    for rows in results.values():
        rows.sort(key=lambda r: seeds.index(r["seed"]))
    return results


def _stage_member(staging: Path, candidate: Candidate, out: dict[str, Any]) -> None:
    """Write one member's fold files into the export being built; keep only their folder names."""
    from .export import member_dir

    base = member_dir(candidate.id, out["seed"])
    for name, content in out.pop("files").items():
        path = staging / base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    out["folds"] = sorted({f"{base}/{name.split('/')[0]}" for name in os.listdir(staging / base)})


def _component(candidate: Candidate, members: list[dict[str, Any]], data: MoaData, folds: Folds,
               n_folds: int) -> Component:
    oof = mean_of([m["oof"] for m in members])
    test = mean_of([m["test"] for m in members]) if members[0]["test"] is not None else None
    predictions = Predictions(oof, test, tuple(members[0]["columns"]), fold_fingerprint(folds), candidate.stage,
                              candidate.id)
    restore = members[0]["restore"]
    return Component(candidate, tuple(m["seed"] for m in members), tuple(m["loss"] for m in members),
                     _component_loss(data, folds, candidate.stage, oof, restore), predictions, members[0]["output"],
                     restore, members[0]["config"], {m["seed"]: m["folds"] for m in members}, n_folds,
                     tuple(dict.fromkeys(m["node"] for m in members)),
                     tuple(m["seed"] for m in members if m.get("reused")))


def collect(sweep_dir: str | os.PathLike, *, top_k: int | None = None, seeds: Sequence[int] | None = None,
            data_dir: str | os.PathLike | None = None, data: MoaData | None = None, address: str | None = None,
            num_cpus: int | None = None, emit: Callable[[str], None] = print,
            dashboard_host: str = DASHBOARD_HOST, plan: JobPlan | None = None) -> CollectResult:
    """Retrain, blend and export the best configurations of the sweep in ``sweep_dir``.

    The data is ``data`` if given (already loaded), else ``data_dir``, else what the sweep used.
    With a ``plan`` (a budgeted job) the collector keeps as many of the seeds as fit the time left
    before the plan's collect deadline, estimated from the sweep trials' own times (at least one),
    stage by stage (:func:`moa_tune.budget.seed_plan`: a chain of stages takes one number of seeds,
    ``direct`` may take more).
    """
    sweep_dir = Path(sweep_dir).resolve()
    spec = resume_spec(sweep_dir)
    k = int(top_k if top_k is not None else spec.collect["top_k"])
    seeds = tuple(int(s) for s in (seeds if seeds is not None else spec.seeds))
    if k < 1 or not seeds:
        raise ConfigError("collect needs top_k >= 1 and at least one seed")
    data = data if data is not None else load_sweep_data(spec, data_dir)
    folds_path = sweep_dir / "folds.npz"
    if not folds_path.is_file():
        raise ConfigError(f"{sweep_dir}: no folds.npz (the sweep did not start)")
    folds = Folds.load(folds_path)
    folds.check(data)
    plan_by_stage = [(s, [c for f in s.families for c in top_configs(sweep_dir, spec, s.stage, f, k)])
                     for s in spec.stages]
    plan_by_stage = _stages_to_collect(plan_by_stage, sweep_dir, emit)
    seeds_of = {stage_spec.stage: seeds for stage_spec, _ in plan_by_stage}
    if plan is not None:
        per_stage = {stage_spec.stage: [c.sweep_seconds or 0.0 for c in candidates]
                     for stage_spec, candidates in plan_by_stage}
        available = plan.collect_deadline() - time.time()
        fit = seed_plan(per_stage, len(seeds), plan.slots, available)
        seeds_of = {stage: seeds[:fit[stage]] for stage in seeds_of}
        if any(n < len(seeds) for n in fit.values()):
            which = ", ".join(f"{stage} {n}" for stage, n in fit.items())
            emit(f"[collect] {format_seconds(max(0.0, available))} of the budget left for collecting: seeds that fit "
                 f"of {len(seeds)}: {which} (estimated {format_seconds(collect_seconds(per_stage, fit, plan.slots))})")
    n_tasks = sum(len(c) * len(seeds_of[s.stage]) for s, c in plan_by_stage)
    used_seeds = sorted({seed for chosen in seeds_of.values() for seed in chosen}, key=seeds.index)
    emit(f"[collect] {sweep_dir.name}: top {k} per family x stage, seeds {used_seeds}: {n_tasks} component seeds "
         f"of {folds.n_splits} folds (a sweep trial that matches one is reused, the others trained)")

    quiet()
    for stale in [*sweep_dir.glob(".ensemble.tmp-*"), *sweep_dir.glob(".collect.tmp-*")]:
        # the staging folder of a collector that was killed: never renamed into place, safe to drop
        shutil.rmtree(stale, ignore_errors=True)
        emit(f"[collect] removed {stale.name}, left by an interrupted collection")
    with atomic_dir(sweep_dir / "ensemble", overwrite=True) as staging:
        components, stages = _retrain_stages(plan_by_stage, seeds_of, spec, data, folds, staging,
                                             recorded_storage(sweep_dir), address, num_cpus, dashboard_host, emit)
        fitted, oof, test, table = _blend_and_write(sweep_dir, components, stages, used_seeds, k, data, folds, emit)
        write_manifest(staging, _manifest(spec, data, folds, stages, components, fitted))
    export = sweep_dir / "ensemble"
    emit(f"[collect] wrote {sweep_dir / 'collect'} and {export}")
    return CollectResult(sweep_dir, table, fitted, oof, test, export)


def _stages_to_collect(plan_by_stage: list[tuple[Any, list[Candidate]]], sweep_dir: Path,
                       emit: Callable[[str], None]) -> list[tuple[Any, list[Candidate]]]:
    """The stages with candidates; a stage without one is left out unless a kept stage needs its inputs.

    Under a time budget an experiment can end before any trial trained every fold (the last stage's
    stacker, a slow family): the run goes on with what the budget bought instead of failing.
    """
    kept = []
    for stage_spec, candidates in plan_by_stage:
        if candidates:
            kept.append((stage_spec, candidates))
        else:
            emit(f"[collect] stage {stage_spec.stage}: no trial trained every fold; left out of the ensemble")
    stages = {stage_spec.stage for stage_spec, _ in kept}
    for stage_spec, _ in kept:
        needed = NEEDS_INPUTS.get(stage_spec.stage)
        if needed and needed not in stages:
            raise MoaTuneError(f"{sweep_dir}: stage '{needed}' has no completed trial to collect, and stage "
                               f"'{stage_spec.stage}' needs its predictions")
    if not kept:
        raise MoaTuneError(f"{sweep_dir}: no stage has a completed trial to collect")
    return kept


def _retrain_stages(plan_by_stage: Sequence[tuple[Any, list[Candidate]]], seeds_of: Mapping[str, Sequence[int]],
                    spec: SweepSpec,
                    data: MoaData, folds: Folds, staging: Path, experiments: str | None, address: str | None,
                    num_cpus: int | None, dashboard_host: str, emit: Callable[[str], None]
                    ) -> tuple[list[Component], list[dict[str, Any]]]:
    """Stage by stage: the candidates x seeds (reused or Ray tasks), then the next stage's inputs from them."""
    started = start_or_join(address, num_cpus, dashboard_host, emit)
    try:
        data_ref = ray.put(data)
        stages: list[dict[str, Any]] = []
        components: list[Component] = []
        previous: list[Component] = []
        for stage_spec, candidates in plan_by_stage:
            recipe = None
            inputs = None
            if NEEDS_INPUTS.get(stage_spec.stage):
                recipe = _recipe(stage_spec.inputs, previous, data, folds)
                inputs = _inputs(recipe, previous, folds)
            seeds = seeds_of[stage_spec.stage]
            results = _run_tasks(candidates, seeds, spec, data_ref, data, folds, inputs, experiments, staging, emit)
            current = [_component(c, results[c.id], data, folds, folds.n_splits) for c in candidates]
            for c in current:
                emit(f"[collect] {c.candidate.id}: {len(seeds)}-seed average CV {c.loss:.6f} "
                     f"(sweep {c.candidate.sweep_loss:.6f}; seeds {', '.join(f'{x:.6f}' for x in c.seed_losses)})")
            stages.append({"stage": stage_spec.stage, "components": [c.candidate.id for c in current],
                           "inputs": recipe, "seeds": list(seeds)})
            components.extend(current)
            previous = current
        return components, stages
    finally:
        if started:
            shutdown()


def _blend_and_write(sweep_dir: Path, components: Sequence[Component], stages: list[dict[str, Any]],
                     seeds: Sequence[int], k: int, data: MoaData, folds: Folds, emit: Callable[[str], None]
                     ) -> tuple[BlendResult, np.ndarray, np.ndarray | None, pd.DataFrame]:
    """Blend the scored components; write ``collect/`` (figures and predictions) atomically."""
    scored = [c for c in components if c.candidate.stage != "stage1"]
    if not scored:
        raise MoaTuneError(f"{sweep_dir}: no stage predicts the scored targets; nothing to blend")
    used = folds.used
    y = data.scored[used].astype(np.float32)
    fitted = blend({c.candidate.id: c.predictions.oof[used] for c in scored}, y, folds.fold[used])
    weights = fitted.weights
    oof = combine_inputs({"mode": "blend", "weights": weights}, {c.candidate.id: c.predictions.oof for c in scored})
    test = None
    if all(c.predictions.test is not None for c in scored):
        test = combine_inputs({"mode": "blend", "weights": weights}, {c.candidate.id: c.predictions.test for c in scored})
    best_id, best_loss = fitted.best_component
    emit(f"[collect] blend ({fitted.chosen}): CV {fitted.loss:.6f}, cross-fitted {fitted.cross_fitted_loss:.6f}; "
         f"best component {best_id} {best_loss:.6f}")
    table = pd.DataFrame([{
        "id": c.candidate.id, "stage": c.candidate.stage, "family": c.candidate.family, "rank": c.candidate.rank,
        "trial_id": c.candidate.trial_id, "sweep_loss": c.candidate.sweep_loss, "cv_loss": c.loss,
        "seed_losses": ";".join(f"{x:.8f}" for x in c.seed_losses), "n_seeds": len(c.seeds),
        "reused_seeds": ";".join(str(x) for x in c.reused),
        "weight": weights.get(c.candidate.id, 0.0) if c.candidate.stage != "stage1" else None,
        "nodes": ";".join(c.nodes),
    } for c in components])
    per_target = pd.DataFrame({"target": list(data.scored_columns),
                               "loss": columnwise_log_loss(y, oof[used]),
                               "positives": data.scored[used].sum(axis=0).astype(int)})
    with atomic_dir(sweep_dir / "collect", overwrite=True) as staging:
        with open(staging / "components.csv", "w") as handle:
            table.to_csv(handle, index=False)
        with open(staging / "per_target.csv", "w") as handle:
            per_target.to_csv(handle, index=False)
        write_json(staging / "blend.json", {**fitted.to_json(), "stages": stages, "seeds": list(seeds), "top_k": k})
        Predictions(oof, test, tuple(data.scored_columns), fold_fingerprint(folds), "blend", "ensemble").save(staging)
        for c in components:
            c.predictions.save(staging / "components" / c.candidate.id)
            write_text(staging / "components" / c.candidate.id / "config.yaml",
                       yaml.safe_dump(c.config, sort_keys=False))
    return fitted, oof, test, table


def _manifest(spec: SweepSpec, data: MoaData, folds: Folds, stages: list[dict[str, Any]],
              components: Sequence[Component], fitted: BlendResult) -> dict[str, Any]:
    """What :class:`moa_tune.predict.Ensemble` needs to run the chain, and what a reader wants to know."""
    return {
        "sweep": spec.name,
        "features": {"gene_columns": list(data.train.gene_columns), "cell_columns": list(data.train.cell_columns),
                     "meta_columns": ["sig_id", "cp_type", "cp_time", "cp_dose"]},
        "targets": {"scored": list(data.scored_columns), "nonscored": list(data.nonscored_columns)},
        "folds": {**folds.settings(), "fingerprint": fold_fingerprint(folds)},
        "stages": stages,
        "components": {c.candidate.id: {
            "stage": c.candidate.stage, "family": c.candidate.family, "rank": c.candidate.rank,
            "trial_id": c.candidate.trial_id, "sweep_loss": c.candidate.sweep_loss, "cv_loss": c.loss,
            "seed_losses": list(c.seed_losses), "seeds": list(c.seeds), "config": c.config,
            "columns": list(c.predictions.columns), "output": c.output, "restore": c.restore,
            "members": [{"seed": seed, "folds": c.folds_of[seed]} for seed in c.seeds],
        } for c in components},
        "blend": {"method": fitted.chosen, "weights": fitted.weights, "loss": fitted.loss,
                  "cross_fitted_loss": fitted.cross_fitted_loss, "methods": fitted.to_json()["methods"]},
    }
