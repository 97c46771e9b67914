"""``moa-tune status``: where a running or finished sweep stands, read from its results folder.

Nothing here imports Ray (or Optuna): the summary comes from the files a sweep leaves behind, so
it works on a laptop with a synced copy of ``results/<sweep>/`` as well as on the head node while
the sweep runs.

- ``sweep.yaml``: the stages (``stages: [{stage, families, trials}, ...]``) and folds as run;
- ``<stage>/<family>/done.json``: a finished experiment (``{"trials": [rows], "finished": t}``),
  else its rows in ``trials.csv`` (written after ``done.json``);
- an experiment without them but with a Tune experiment folder is in progress. Those folders live
  where ``sweep.yaml`` records (``_storage``: ``~/ray_results/moa-tune/<sweep>-<hash>`` by default,
  or ``<storage>/<sweep>``), one ``trial_<id>/`` per started trial with ``result.json`` (one JSON line per reported fold) and
  ``error.txt`` when the trial failed. A trial is *completed* when it reported every fold,
  *pruned* when its last line says ``done`` before the last fold (ASHA's stop), *errored* with an
  ``error.txt``, and *running* otherwise;
- ``collect/blend.json`` and ``ensemble/manifest.json`` once collected.

With ``moa-tune sweep --storage s3://...`` (or gs://) the Tune experiments live in the bucket:
finished experiments still show (``done.json``), the one in progress shows only after its
``<stage>/<family>/`` folder is synced from ``<storage>/<sweep>/`` into the sweep folder.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .budget import BUDGET_KEY
from .errors import ConfigError
from .sweep_spec import DEFAULT_TRIALS

__all__ = ["TRIAL_STATES", "status_lines", "status_table", "sweep_status"]

#: Trial states in display order (``running`` only occurs in an experiment in progress).
TRIAL_STATES = ("completed", "pruned", "errored", "running")
DEFAULT_FOLDS = 5


# --------------------------------------------------------------------------------------------
# reading


def _number(value: Any) -> float | None:
    """A finite float, or None (empty CSV cells, NaN, None, text)."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / "sweep.yaml"
    if not path.is_file():
        what = "no such folder" if not sweep_dir.exists() else "no sweep.yaml"
        raise ConfigError(f"{sweep_dir}: not a sweep folder ({what}; `moa-tune sweep` writes results/<sweep-name>/)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: cannot be read ({first})") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("stages"), list):
        raise ConfigError(f"{path}: not a moa-tune sweep file (no 'stages' list)")
    return dict(raw)


def _planned(raw: Mapping[str, Any], source: Path) -> list[tuple[str, str, int | None]]:
    """(stage, family, requested trials) in the order the sweep runs them (None: until the budget is spent)."""
    budgeted = raw.get(BUDGET_KEY) is not None
    planned = []
    for i, entry in enumerate(raw["stages"]):
        if not isinstance(entry, Mapping) or "stage" not in entry:
            raise ConfigError(f"{source}: 'stages[{i}]' is not a mapping with stage, families, trials")
        families = entry.get("families") or []
        if isinstance(families, str):
            families = [families]
        trials = entry.get("trials")
        if trials is None and not budgeted:
            trials = DEFAULT_TRIALS
        try:
            trials = None if trials is None else int(trials)  # None: as many as the budget affords
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: 'stages[{i}].trials' is not a number: {trials!r}") from None
        for family in dict.fromkeys(str(f) for f in families):
            planned.append((str(entry["stage"]), family, trials))
    return planned


def _trials_csv(sweep_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """trials.csv rows grouped by (stage, family); empty when the file is absent or unreadable."""
    path = sweep_dir / "trials.csv"
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if not path.is_file():
        return grouped
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                grouped.setdefault((row.get("stage", ""), row.get("family", "")), []).append(row)
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return grouped


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON objects of a result.json (a line being written is skipped)."""
    lines = []
    try:
        text = path.read_text()
    except OSError:
        return lines
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


def _trial_from_folder(folder: Path, n_folds: int) -> dict[str, Any]:
    """One trial of an experiment in progress, from its Tune trial folder."""
    lines = _json_lines(folder / "result.json")
    last = lines[-1] if lines else {}
    folds_done = int(_number(last.get("folds_done")) or len(lines))
    expected = int(_number(last.get("n_folds")) or n_folds)
    if (folder / "error.txt").exists():
        state = "errored"
    elif lines and folds_done >= expected:
        state = "completed"
    elif last.get("done") is True:
        state = "pruned"
    else:
        state = "running"
    stamps = [t for t in (_number(x.get("timestamp")) for x in lines) if t is not None]
    first_elapsed = _number(lines[0].get("time_total_s")) if lines else None
    start = stamps[0] - (first_elapsed or 0.0) if stamps else None
    if start is None:
        try:
            start = folder.stat().st_mtime
        except OSError:
            start = None
    updated = stamps[-1] if stamps else None
    for name in ("result.json", "error.txt"):
        try:
            mtime = (folder / name).stat().st_mtime
        except OSError:
            continue
        updated = mtime if updated is None else max(updated, mtime)
    return {"trial_id": str(last.get("trial_id") or folder.name.removeprefix("trial_")), "state": state,
            "loss": _number(last.get("loss")), "folds_done": folds_done, "time_s": _number(last.get("time_total_s")),
            "start": start, "updated": updated}


def _trial_folders(experiment: Path) -> list[Path]:
    if not experiment.is_dir():
        return []
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("trial_"))


def _wall_span(trials: Iterable[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    starts = [t["start"] for t in trials if t.get("start") is not None]
    ends = [t["updated"] for t in trials if t.get("updated") is not None]
    return (min(starts) if starts else None), (max(ends) if ends else None)


# --------------------------------------------------------------------------------------------
# the summary


def _experiments_root(sweep_dir: Path, raw: Mapping[str, Any]) -> tuple[str | None, Path | None]:
    """The recorded Tune experiments root, and the local folder its trial folders are read from.

    A sweep records its root in ``sweep.yaml`` (``_storage``): a local folder is read directly; a
    bucket (``s3://``, ``gs://``) is not, and a copy synced into the sweep folder is read instead.
    """
    recorded = raw.get("_storage")
    recorded = str(recorded) if recorded else None
    if recorded and "://" not in recorded and Path(recorded).is_dir():
        return recorded, Path(recorded)
    return recorded, sweep_dir


def _experiment(sweep_dir: Path, trials_root: Path, stage: str, family: str, requested: int | None, n_folds: int,
                csv_rows: Mapping[tuple[str, str], list[dict[str, Any]]], now: float) -> dict[str, Any]:
    done_file = sweep_dir / stage / family / "done.json"
    entry: dict[str, Any] = {"stage": stage, "family": family, "requested": requested, "state": "not started",
                             "trials": {s: 0 for s in TRIAL_STATES}, "started": 0, "remaining": requested,
                             "best_loss": None, "best_trial": None, "trial_time_s": None, "wall_s": None,
                             "finished": None, "last_update_s_ago": None}
    rows: list[Mapping[str, Any]] | None = None
    finished = None
    if done_file.is_file():
        try:
            done = json.loads(done_file.read_text())
            rows = list(done.get("trials") or [])
            finished = _number(done.get("finished"))
        except (OSError, json.JSONDecodeError, AttributeError):
            rows = None
    if rows is None and (stage, family) in csv_rows:
        rows = csv_rows[(stage, family)]
    folder = trials_root / stage / family
    folder_trials = [_trial_from_folder(p, n_folds) for p in _trial_folders(folder)]
    start, end = _wall_span(folder_trials)

    if rows is not None:  # finished experiment
        trials = [{"trial_id": str(r.get("trial_id")), "state": str(r.get("state") or ""),
                   "loss": _number(r.get("loss")), "time_s": _number(r.get("time_s"))} for r in rows]
        entry["state"] = "done"
        entry["remaining"] = 0
        entry["finished"] = finished
        if finished is not None:
            end = finished if end is None else max(end, finished)
    elif folder.is_dir():  # in progress (or interrupted)
        trials = folder_trials
        entry["state"] = "running"
        entry["remaining"] = None if requested is None else max(0, requested - len(trials))
        if end is not None:
            entry["last_update_s_ago"] = max(0.0, now - end)
    else:
        return entry

    for trial in trials:
        state = trial["state"] if trial["state"] in TRIAL_STATES else "errored"
        entry["trials"][state] += 1
    entry["started"] = len(trials)
    completed = [t for t in trials if t["state"] == "completed" and t["loss"] is not None]
    if completed:
        best = min(completed, key=lambda t: t["loss"])
        entry["best_loss"], entry["best_trial"] = best["loss"], best["trial_id"]
    times = [t["time_s"] for t in trials if t.get("time_s") is not None]
    entry["trial_time_s"] = float(sum(times)) if times else None
    if start is not None and end is not None:
        entry["wall_s"] = max(0.0, end - start)
    elif entry["state"] == "running" and start is not None:
        entry["wall_s"] = max(0.0, now - start)
    return entry


def _collect_info(sweep_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"collected": False, "blend_method": None, "blend_loss": None,
                            "blend_cross_fitted_loss": None, "best_component": None, "best_component_loss": None,
                            "exported": False, "ensemble_components": None}
    blend_file = sweep_dir / "collect" / "blend.json"
    if blend_file.is_file():
        info["collected"] = True
        try:
            blend = json.loads(blend_file.read_text())
        except (OSError, json.JSONDecodeError):
            blend = {}
        if isinstance(blend, dict):
            info["blend_method"] = blend.get("chosen")
            info["blend_loss"] = _number(blend.get("loss"))
            info["blend_cross_fitted_loss"] = _number(blend.get("cross_fitted_loss"))
            best = blend.get("best_component") or {}
            if isinstance(best, dict):
                info["best_component"] = best.get("id")
                info["best_component_loss"] = _number(best.get("loss"))
    manifest_file = sweep_dir / "ensemble" / "manifest.json"
    if manifest_file.is_file():
        info["exported"] = True
        try:
            manifest = json.loads(manifest_file.read_text())
            info["ensemble_components"] = len(manifest.get("components") or {})
            if info["blend_loss"] is None:
                info["blend_loss"] = _number((manifest.get("blend") or {}).get("loss"))
                info["blend_method"] = (manifest.get("blend") or {}).get("method")
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    return info


def sweep_status(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """Summarize the sweep in ``sweep_dir`` (running or finished) from its files; no Ray.

    Returns a JSON-ready dict: ``sweep``, ``path``, ``n_folds``, ``state`` (finished, running,
    incomplete, not started), ``experiments`` (one per family x stage in run order: state, trials by
    state, requested/started/remaining, best completed loss and trial, summed trial time, wall
    span, seconds since the last report), ``totals`` and ``collect`` (blend loss, export).
    Raises :class:`ConfigError` when ``sweep_dir`` has no readable ``sweep.yaml``.
    """
    sweep_dir = Path(sweep_dir)
    raw = _read_sweep_file(sweep_dir)
    planned = _planned(raw, sweep_dir / "sweep.yaml")
    folds = raw.get("folds") if isinstance(raw.get("folds"), Mapping) else {}
    n_folds = int(_number(folds.get("n_splits")) or DEFAULT_FOLDS)
    csv_rows = _trials_csv(sweep_dir)
    now = time.time()
    recorded_root, trials_root = _experiments_root(sweep_dir, raw)
    experiments = [_experiment(sweep_dir, trials_root, stage, family, trials, n_folds, csv_rows, now)
                   for stage, family, trials in planned]

    by_state = {s: sum(e["state"] == s for e in experiments) for s in ("done", "running", "not started")}
    trials = {s: sum(e["trials"][s] for e in experiments) for s in TRIAL_STATES}
    times = [e["trial_time_s"] for e in experiments if e["trial_time_s"] is not None]
    if experiments and by_state["done"] == len(experiments):
        state = "finished"
    elif by_state["running"]:
        state = "running"
    elif by_state["done"]:
        state = "incomplete"
    else:
        state = "not started"
    best_by_stage: dict[str, dict[str, Any]] = {}
    for e in experiments:
        if e["best_loss"] is None:
            continue
        current = best_by_stage.get(e["stage"])
        if current is None or e["best_loss"] < current["loss"]:
            best_by_stage[e["stage"]] = {"family": e["family"], "loss": e["best_loss"], "trial_id": e["best_trial"]}
    totals = {
        "experiments": len(experiments), **{f"experiments_{k.replace(' ', '_')}": v for k, v in by_state.items()},
        "trials_requested": None if any(e["requested"] is None for e in experiments)
        else sum(e["requested"] for e in experiments),
        "trials_started": sum(e["started"] for e in experiments),
        "trials": trials,
        "trials_remaining": None if any(e["remaining"] is None for e in experiments)
        else sum(e["remaining"] for e in experiments),
        "trial_time_s": float(sum(times)) if times else None,
    }
    collect = _collect_info(sweep_dir)
    return {"sweep": str(raw.get("name") or sweep_dir.name), "path": str(sweep_dir), "n_folds": n_folds,
            "experiments_root": recorded_root, "state": state, "experiments": experiments, "totals": totals, "best_by_stage": best_by_stage,
            "collect": collect, "budget": _budget_info(sweep_dir, raw, experiments, state, now)}


def _budget_info(sweep_dir: Path, raw: Mapping[str, Any], experiments: list[dict[str, Any]], state: str,
                 now: float) -> dict[str, Any] | None:
    """A budgeted job's budget, and what it has spent and has left (None without a budget).

    While the job runs, spent is the time since it started; once it is over (the sweep of a sweep run
    alone, the report of a whole run), the time it took.
    """
    recorded = raw.get(BUDGET_KEY)
    if not isinstance(recorded, Mapping):
        return None
    total, started = _number(recorded.get("total_s")), _number(recorded.get("started"))
    if total is None or started is None:
        return None
    end = None
    if recorded.get("sweep_only") and state == "finished":
        end = max((e["finished"] for e in experiments if e["finished"] is not None), default=None)
    elif (sweep_dir / "report.html").is_file():
        end = (sweep_dir / "report.html").stat().st_mtime
    over = end is not None
    spent = max(0.0, (end if over else now) - started)
    return {"total_s": total, "spent_s": spent, "left_s": max(0.0, total - spent), "over": over,
            "covers": "sweep" if recorded.get("sweep_only") else "sweep, collect, export, predict and report"}


# --------------------------------------------------------------------------------------------
# formatting


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _trial_counts(counts: Mapping[str, int]) -> str:
    parts = [f"{counts[s]} {s}" for s in TRIAL_STATES if counts.get(s)]
    return ", ".join(parts) if parts else "-"


def status_table(summary: Mapping[str, Any]):
    """A rich Table: one row per family x stage (fits 80 columns)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"sweep {summary['sweep']} ({summary['state']}): {summary['path']}", box=box.SIMPLE_HEAD,
                  title_justify="left", caption_justify="left", pad_edge=False, show_edge=False,
                  caption="trials: finished of requested; c/p/e/r: completed/pruned/errored/running; "
                          "left: trials not started; best: lowest loss of a completed trial; time: summed trial time")
    for name, justify in (("stage/family", "left"), ("state", "left"), ("trials", "right"), ("c/p/e/r", "right"),
                          ("left", "right"), ("best loss", "right"), ("time", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for e in summary["experiments"]:
        counts = e["trials"]
        finished = counts["completed"] + counts["pruned"] + counts["errored"]
        table.add_row(f"{e['stage']}/{e['family']}", e["state"],
                      f"{finished}/{'budget' if e['requested'] is None else e['requested']}",
                      "/".join(str(counts[s]) for s in TRIAL_STATES), "-" if e["remaining"] is None else str(e["remaining"]),
                      "-" if e["best_loss"] is None else f"{e['best_loss']:.6f}", _duration(e["trial_time_s"]))
    return table


def status_lines(summary: Mapping[str, Any]) -> list[str]:
    """The overall lines printed under the table (plain text)."""
    t = summary["totals"]
    requested = ("(as many as the budget affords)" if t["trials_requested"] is None
                 else f"of {t['trials_requested']} requested ({t['trials_remaining']} not started)")
    lines = [f"{summary['state']}: {t['experiments_done']} of {t['experiments']} experiments done, "
             f"{t['experiments_running']} running, {t['experiments_not_started']} not started; "
             f"trials: {_trial_counts(t['trials'])} {requested}; trial time {_duration(t['trial_time_s'])}"]
    budget = summary.get("budget")
    if budget:
        verb = "took" if budget["over"] else "spent so far"
        lines.append(f"budget {_duration(budget['total_s'])} ({budget['covers']}): {verb} {_duration(budget['spent_s'])}"
                     + ("" if budget["over"] else f", {_duration(budget['left_s'])} left"))
    for e in summary["experiments"]:
        if e["state"] == "running":
            lines.append(f"{e['stage']}/{e['family']}: in progress for {_duration(e['wall_s'])}, last report "
                         f"{_duration(e['last_update_s_ago'])} ago; {e['trials']['running']} trial(s) running, "
                         + ("until its share of the budget is spent" if e["requested"] is None
                            else f"{e['remaining']} of {e['requested']} not started yet"))
    for stage, best in summary["best_by_stage"].items():
        lines.append(f"best {stage}: {best['family']} {best['loss']:.6f} (trial {best['trial_id']})")
    c = summary["collect"]
    if c["collected"] or c["exported"]:
        text = "collected" if c["collected"] else "exported"
        if c["blend_loss"] is not None:
            text += f": blend ({c['blend_method'] or '?'}) CV {c['blend_loss']:.6f}"
            if c["blend_cross_fitted_loss"] is not None:
                text += f", cross-fitted {c['blend_cross_fitted_loss']:.6f}"
            if c["best_component_loss"] is not None:
                text += f"; best single component {c['best_component']} {c['best_component_loss']:.6f}"
        if c["exported"]:
            n = c["ensemble_components"]
            text += f"; ensemble exported ({n} components): {Path(summary['path']) / 'ensemble'}"
        else:
            text += "; no ensemble/ export yet"
        lines.append(text)
    elif summary["state"] == "finished":
        lines.append(f"not collected yet: moa-tune collect {summary['path']}")
    root = summary.get("experiments_root")
    if root and summary["state"] in ("running", "incomplete"):
        lines.append(f"Tune experiments: {root} (tensorboard --logdir {root})")
    if summary["state"] == "incomplete":
        lines.append("no experiment is in progress: the sweep stopped (resume it with "
                     f"moa-tune sweep --resume {summary['path']}), or it runs with --storage on a bucket "
                     "(sync <storage>/<sweep>/<stage>/<family>/ into the sweep folder to see its trials)")
    return lines
