"""The hostile-input probe, kept as a table: each case is a real `moa-tune` subprocess that must end
with exit code 2, one `error:` line naming what is wrong (no traceback), and nothing written.

The cases are the ones issue 19's probe found unclean, refused before Ray starts. Those that need a
real Ray, an export, a signal or a full disk live beside their subject: Ctrl-C/SIGTERM and a
killed driver's leftovers in tests/test_interrupt.py, an export's trust model in
tests/test_collect.py, a resource a cluster lacks in tests/test_sweep.py, the lock and a full disk
in tests/test_run_names.py, bad budgets in tests/test_budget.py.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import moa_tune_command, subprocess_env, write_kaggle_dir

pytestmark = pytest.mark.slow

#: a search space whose condition names a choice its parameter does not have
NEVER_WHEN = """family: linear
params:
  train.optimizer: {type: categorical, choices: [adam, adamw]}
  train.lr: {type: float, low: 0.001, high: 0.1, when: {train.optimizer: sgd}}
"""
#: a sweep file the cases edit: valid as it is
SWEEP = {"name": "probe", "data": {"synth": "tiny", "seed": 0},
         "stages": [{"stage": "direct", "families": ["linear"], "trials": 1}]}

def sweep_file(tmp: Path, **changes: object) -> str:
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return str(path)


def space_file(tmp: Path, text: str) -> str:
    path = tmp / "linear.yaml"
    path.write_text(text)
    return str(path)


#: (id, the command's arguments built in a temporary folder, what the error line must say)
CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("empty --name with --force", lambda t: ["run", "--name", "", "--force"], ["--name must be a plain folder name"]),
    ("--name .. with --force", lambda t: ["run", "--name", "..", "--force"], ["--name must be a plain folder name"]),
    ("absolute --name with --force", lambda t: ["sweep", "--name", str(t / "abs"), "--force"],
     ["--name must be a plain folder name"]),
    ("GPUs beyond the machine", lambda t: ["sweep", "--config", sweep_file(t, resources={"gpu": 64})],
     ["per trial but this machine has", "GPU"]),
    ("CPUs beyond the machine", lambda t: ["run", "--config", sweep_file(t, resources={"cpu": 4096})],
     ["per trial but this machine has", "CPU"]),
    ("a point out of its range", lambda t: ["sweep", "--config", sweep_file(
        t, points_to_evaluate={"linear": [{"train.lr": 50.0}]})], ["sweep.yaml", "points_to_evaluate.linear[0]",
                                                                  "train.lr"]),
    ("a point with a choice the space lacks", lambda t: ["sweep", "--config", sweep_file(
        t, points_to_evaluate={"linear": [{"train.optimizer": "sgd-nesterov"}]})],
     ["sweep.yaml", "train.optimizer"]),
    ("catboost at stage transfer", lambda t: ["sweep", "--config", sweep_file(
        t, stages=[{"stage": "transfer", "families": ["catboost"], "trials": 1}])],
     ["sweep.yaml", "family 'catboost' cannot run stage 'transfer'"]),
    ("a misspelt parameter", lambda t: ["train", "--data", str(write_kaggle_dir(t / "moa")), "--set", "family=linear",
                                         "--set", "train.lrr=0.1"],
     ["train.lrr", "Did you mean 'train.lr'"]),
    ("catboost trained at stage transfer", lambda t: ["train", "--data", str(write_kaggle_dir(t / "moa")),
                                                "--set", "family=catboost", "--set", "stage=transfer"],
     ["family 'catboost' cannot run stage 'transfer'"]),
    ("a 'when' that can never hold", lambda t: ["sweep", "--config", sweep_file(
        t, search_spaces={"linear": space_file(t, NEVER_WHEN)})], ["linear.yaml", "can never hold"]),
     ("a sweep file that is not YAML", lambda t: ["sweep", "--config", str(_write(t / "bad.yaml", "stages: [\n"))],
     ["bad.yaml"]),
    ("an empty sweep file", lambda t: ["run", "--config", str(_write(t / "empty.yaml", ""))], ["empty.yaml"]),
    ("a data folder that is not there", lambda t: ["run", "--data", str(t / "nowhere")], ["nowhere"]),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_args, says", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_with_nothing_written(make_args, says, tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = make_args(tmp_path)
    if args[0] in ("run", "sweep"):
        args += ["--results", str(results)]
    if args[0] in ("run", "sweep") and "--budget" not in args:
        args += ["--budget", "24h"]  # the check under test comes first, not a budget spent by a slow start
    done = subprocess.run(moa_tune_command(*args), capture_output=True, text=True, timeout=300,
                          env=subprocess_env(tmp_path / "home"), cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for text in says:
        assert text in done.stderr, done.stderr
    assert not results.exists() or not any(results.iterdir()), list(results.rglob("*"))
    assert not (tmp_path / "abs").exists()

