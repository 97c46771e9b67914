"""The wheel carries what the main job needs: built from a copy of the source, installed outside the
checkout, it imports from where it was installed and runs a sweep from the search spaces it ships."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import subprocess_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_an_installed_wheel_runs_a_sweep_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "dist")],
                   check=True, timeout=600)
    wheel, = (tmp_path / "dist").glob("moa_tune-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=600)
    assert (site / "moa_tune" / "search_spaces" / "sweeps" / "default.yaml").is_file()
    assert (site / "moa_tune" / "search_spaces" / "mlp.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = subprocess_env(tmp_path / "home", PYTHONPATH=str(site))  # the wheel first (dependencies: this venv)
    where = subprocess.run([sys.executable, "-c", "import moa_tune.sweep_spec as s; print(s.__file__); "
                            "print(s.SEARCH_SPACES); print(s.DEFAULT_SWEEP.is_file())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    module, spaces, default = where.stdout.split()
    assert module.startswith(str(site)) and spaces.startswith(str(site)) and default == "True", where.stdout

    sweep = elsewhere / "tiny.yaml"  # the families' search spaces come from the wheel
    sweep.write_text(yaml.safe_dump({
        "name": "from-wheel", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 2},
        "fixed": {"train.epochs": 2}, "stages": [{"stage": "direct", "families": ["linear", "mlp"], "trials": 1}]}))
    done = subprocess.run([sys.executable, "-m", "moa_tune.cli", "sweep", "--config", str(sweep), "--results",
                           str(elsewhere / "results"), "--num-cpus", "2"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = pd.read_csv(elsewhere / "results" / "from-wheel" / "trials.csv")
    assert sorted(trials.family) == ["linear", "mlp"] and set(trials.state) == {"completed"}
    recorded = yaml.safe_load((elsewhere / "results" / "from-wheel" / "sweep.yaml").read_text())
    assert all(str(path).startswith(str(site)) for path in recorded["search_spaces"].values()), recorded
