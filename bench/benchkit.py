"""What the design benchmarks (overhead, asha_value, vs_optuna, scaling, gpu_packing, memory) share.

Each prints a table, writes ``results/bench/<name>.json`` and ``.md`` (``<name>-quick.*`` for
the ``--quick`` smoke run on the ``tiny`` preset that the tests use), and runs ``moa-tune``
the way a user does: the installed command in a subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from moa_tune.io import write_json, write_text  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

RESULTS = ROOT / "results" / "bench"


def moa_tune_command(*args: str) -> list[str]:
    """``moa-tune ARGS``: the installed script next to this Python, else ``python -m moa_tune.cli``."""
    script = Path(sys.executable).with_name("moa-tune")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "moa_tune.cli", *args]


def run_sweep_cli(sweep: dict[str, Any], work: Path, *extra: str, env: dict[str, str] | None = None,
                  timeout: float = 3600) -> tuple[float, Path]:
    """``moa-tune sweep`` on ``sweep`` (written to ``work``); (wall seconds, the sweep's results folder).

    Fails with the command's last output when it does not exit 0.
    """
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{sweep['name']}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    results = work / "results"
    started = time.perf_counter()
    done = subprocess.run(moa_tune_command("sweep", "--config", str(path), "--results", str(results), *extra),
                          capture_output=True, text=True, env=env or {**os.environ, "PYTHONUNBUFFERED": "1"},
                          timeout=timeout)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"moa-tune sweep failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, results / sweep["name"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def save(name: str, quick: bool, report: dict[str, Any], lines: Sequence[str], out: Path = RESULTS) -> Path:
    """Write ``<name>[-quick].json`` and ``.md`` under ``out`` and print the markdown."""
    stem = f"{name}-quick" if quick else name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", {**report, "machine": machine(), "command": " ".join(sys.argv)})
    write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return out / f"{stem}.json"


def narrow_mlp_space(work: Path) -> str:
    """A search-space file for the MLP that searches only the learning rate and the width.

    With ``points_to_evaluate`` covering both, a sweep trains exactly the configurations given:
    how the benchmarks make two arms train the same networks.
    """
    work.mkdir(parents=True, exist_ok=True)
    path = work / "mlp-lr-width.yaml"
    path.write_text(yaml.safe_dump({"family": "mlp", "params": {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "model.hidden_size": {"type": "int", "low": 32, "high": 2048}}}))
    return str(path)


def trial_reports(trials: pd.DataFrame) -> pd.DataFrame:
    """Every fold report of the trials of a ``trials.csv`` frame, in the order they finished.

    Read from each trial's ``result.json`` in its Tune folder (the ``path`` column): trial,
    folds_done, loss, timestamp (whole seconds), time_total_s and time_this_iter_s (the fold's
    seconds inside the trial).
    """
    import pandas as pd

    rows = []
    for trial in trials.itertuples():
        for line in (Path(trial.path) / "result.json").read_text().splitlines():
            result = json.loads(line)
            rows.append({"trial": trial.trial_id, "folds_done": int(result["folds_done"]), "loss": result["loss"],
                         "timestamp": result["timestamp"], "time_total_s": result["time_total_s"],
                         "time_this_iter_s": result["time_this_iter_s"]})
    frame = pd.DataFrame(rows).drop_duplicates(["trial", "folds_done"], keep="last")
    return frame.sort_values(["timestamp", "time_total_s"], kind="stable").reset_index(drop=True)


def bench_parser(doc: str | None, epochs: int, quick_epochs: int = 2) -> argparse.ArgumentParser:
    """The options every design bench has: ``--quick`` (tiny preset, 3 folds), ``--epochs``, ``--out``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 3 folds, a short run: checks the script")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per fold [{epochs}; quick: {quick_epochs}]")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and markdown [results/bench]")
    parser.set_defaults(full_epochs=epochs, quick_epochs=quick_epochs)
    return parser


def scale(args: argparse.Namespace) -> tuple[str, int, int]:
    """(preset, folds, epochs) of a run: ``small``, 5 folds, or ``tiny``, 3 folds with ``--quick``."""
    preset, n_splits = ("tiny", 3) if args.quick else ("small", 5)
    return preset, n_splits, args.epochs or (args.quick_epochs if args.quick else args.full_epochs)


def lr_ladder(n: int) -> list[float]:
    """``n`` learning rates from 1e-3 to 3e-2, evenly spaced in log: fixed configurations that differ."""
    return [round(1e-3 * (30 ** (i / max(1, n - 1))), 6) for i in range(n)]


def trials_span(reports: pd.DataFrame) -> float:
    """Seconds from the first trial's start to the last trial's end, from :func:`trial_reports`.

    A trial starts one fold's time before its first report; Tune's timestamps are whole seconds.
    """
    first = reports.sort_values("folds_done").groupby("trial").first()
    return float(reports.timestamp.max() - (first.timestamp - first.time_this_iter_s).min())
