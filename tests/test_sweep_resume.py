"""A sweep whose driver is killed with SIGKILL resumes to completion, every trial counted once."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

N_TRIALS = 8


def moa_tune(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("moa-tune")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "moa_tune.cli", *args]


def kill_tree(pid: int) -> None:
    """SIGKILL the driver, then every process it started (by PID: Ray's agents outlive the driver)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    os.kill(pid, signal.SIGKILL)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=30)


def test_sigkill_then_resume(tmp_path: Path) -> None:
    sweep = tmp_path / "resume.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "resume", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3},
        "fixed": {"train.epochs": 4, "train.early_stopping": 0, "train.batch_size": 64},
        "asha": {"grace_period": 1, "reduction_factor": 2}, "max_concurrent": 2,
        "stages": [{"stage": "direct", "families": ["linear"], "trials": N_TRIALS}],
    }))
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "first.log"
    with open(log, "w") as handle:
        driver = subprocess.Popen(moa_tune("sweep", "--config", str(sweep), "--results", str(results),
                                           "--num-cpus", "2"), stdout=handle, stderr=subprocess.STDOUT, env=env)
    finished_before: set[str] = set()
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None:
            finished_before = set(re.findall(r"trial (\w+) (?:completed|pruned)", log.read_text()))
            if len(finished_before) >= 2:
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended before it could be killed:\n" + log.read_text()[-2000:]
        assert len(finished_before) >= 2, log.read_text()[-2000:]
    finally:
        kill_tree(driver.pid)
        driver.wait()
    out = results / "resume"
    assert not (out / "trials.csv").exists()  # killed mid-experiment: nothing was summarised yet

    resumed = subprocess.run(moa_tune("sweep", "--resume", str(out), "--num-cpus", "2"), capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == N_TRIALS and trials.trial_id.is_unique, trials[["trial_id", "state"]]
    assert set(trials.state) <= {"completed", "pruned"}, trials[["state", "error"]]
    assert finished_before <= set(trials.trial_id)  # trials finished before the kill were kept, not rerun
    assert (trials.state == "completed").any()
    assert (out / "direct" / "linear" / "best" / "oof.npy").exists()
