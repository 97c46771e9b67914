"""Wall time of the main job: ``moa-tune run`` with no arguments, as a user runs it.

Runs the command in a fresh process with an empty HOME (a first run on a fresh machine: local Ray
started from nothing) on the embedded default sweep (synthetic ``small`` preset, local Ray),
times it end to end and per step from the command's own progress lines, and checks the budget
of 10 minutes on this machine.

Usage: python bench/run_time.py [--budget-s 600] [--num-cpus N] [--quick] [--keep DIR]
Writes results/bench/run_time.json and results/bench/run_time.md (run_time-quick.* with --quick,
which runs a tiny sweep to check the script itself).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_tune.io import write_json, write_text  # noqa: E402

RESULTS = ROOT / "results" / "bench"
QUICK_SWEEP = {
    "name": "run-quick", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3}, "seeds": [0, 1],
    "fixed": {"train.epochs": 2, "train.early_stopping": 0, "mlp": {"model.hidden_size": 32}},
    "stages": [{"stage": "stage1", "families": ["linear"], "trials": 2},
               {"stage": "stage2", "families": ["linear", "mlp"], "trials": 2}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--num-cpus", type=int, default=None, help="passed to moa-tune run [default: all]")
    parser.add_argument("--quick", action="store_true", help="a tiny sweep, to check this script")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run's results folder here (e.g. for bench/report_screenshot.py)")
    args = parser.parse_args()

    script = Path(sys.executable).with_name("moa-tune")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "moa_tune.cli"]
    with tempfile.TemporaryDirectory(prefix="moa-run-bench-") as tmp:
        results = args.keep.resolve() if args.keep else Path(tmp) / "results"
        run_args = [*command, "run", "--results", str(results), "--force"]
        if args.quick:
            sweep_file = Path(tmp) / "quick.yaml"
            sweep_file.write_text(yaml.safe_dump(QUICK_SWEEP))
            run_args += ["--config", str(sweep_file)]
        if args.num_cpus:
            run_args += ["--num-cpus", str(args.num_cpus)]
        env = {**os.environ, "HOME": str(Path(tmp) / "home"), "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_AUTH_MODE", None)
        env.pop("RAY_ADDRESS", None)
        print("$ " + " ".join(run_args[len(command) - 1:]), flush=True)
        start = time.perf_counter()
        process = subprocess.Popen(run_args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   cwd=ROOT)
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if re.match(r"\[\d/5\]|done in|  (ensemble|submission|report):|\[collect\] blend", line):
                print(f"{time.perf_counter() - start:6.0f} s  {line.rstrip()}", flush=True)
        code = process.wait()
        seconds = time.perf_counter() - start
    if code != 0:
        print("\n".join(lines[-30:]))
        raise SystemExit(f"moa-tune run failed with exit code {code}")

    steps = {}
    for line in lines:
        m = re.match(r"\[(\d)/5\] (\w+).*\((\d+) s\)$", line)
        if m:
            steps[m.group(2)] = int(m.group(3))
    marks = list(steps.items()) + [("end", seconds)]
    durations = {name: marks[i + 1][1] - at for i, (name, at) in enumerate(marks[:-1])}
    trials = next((line for line in lines if line.startswith("done in")), "")
    report = {"seconds": seconds, "budget_s": args.budget_s, "within_budget": seconds <= args.budget_s,
              "steps_s": durations, "summary": trials, "quick": args.quick, "cpus": os.cpu_count(),
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    table = ["| step | seconds |", "| --- | ---: |"] + [f"| {k} | {v:.0f} |" for k, v in durations.items()]
    table.append(f"| **total** | **{seconds:.0f}** |")
    text = (f"`moa-tune run` (embedded default: synthetic small preset, local Ray) on {os.cpu_count()} CPUs, "
            f"fresh HOME: **{seconds / 60:.1f} min** (budget {args.budget_s / 60:.0f} min: "
            f"{'within' if seconds <= args.budget_s else '**over**'}).\n\n" + "\n".join(table) + f"\n\n{trials}\n")
    suffix = "-quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"run_time{suffix}.json", report)
    write_text(RESULTS / f"run_time{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
