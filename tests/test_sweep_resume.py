"""A sweep whose driver is killed with SIGKILL resumes to completion, every trial counted once.

Tune snapshots the experiment every ~10 s: what finished after the last snapshot is redone on
resume (new trial ids), what finished before it is kept.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from conftest import moa_tune_command as moa_tune, subprocess_env

pytestmark = pytest.mark.slow

N_TRIALS = 8


def kill_tree(pid: int) -> None:
    """SIGKILL the driver, then every process it started (by PID: Ray's agents outlive the driver)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it already ended (a failed assertion says why)
        pass
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=30)


def optuna_history(sweep_dir: Path) -> list:
    """The Optuna trials of the sweep's direct/linear experiment, from the searcher state Tune saved.

    That state is a pickle, so it lives with the Tune experiment (the root sweep.yaml records), not
    under results/; only Tune (and this test) reads it.
    """
    import pickle

    root = Path(yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["_storage"])
    # newest session last: names carry the session's start time (mtimes do not order them, since a
    # resumed run copies the older session's files to storage again at the end)
    states = sorted((root / "direct" / "linear").glob("searcher-state-*.pkl"))
    assert states, f"no searcher state under {root}"
    with open(states[-1], "rb") as handle:
        return pickle.load(handle)["_ot_study"].get_trials(deepcopy=False)


def snapshot_terminated(sweep_dir: Path) -> set[str]:
    """Trials Tune's latest experiment snapshot has seen finish (empty while none is readable)."""
    try:
        root = Path(yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["_storage"])
        snapshot = sorted((root / "direct" / "linear").glob("experiment_state-*.json"))[-1]
        trials = [json.loads(t[0]) if isinstance(t[0], str) else t[0]
                  for t in json.loads(snapshot.read_text())["trial_data"]]
    except (OSError, IndexError, ValueError, KeyError, TypeError):  # not written yet, or being written
        return set()
    return {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}


def shape(trials: list) -> tuple:
    """What must match between an interrupted-then-resumed sweep and an uninterrupted one."""
    return (len(trials), sorted(t.number for t in trials), sorted(t.state.name for t in trials),
            {frozenset(t.params) for t in trials})


def test_sigkill_then_resume(tmp_path: Path) -> None:
    raw = {
        "name": "resume", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3},
        "fixed": {"train.epochs": 15, "train.early_stopping": 0, "train.batch_size": 64},
        "asha": {"grace_period": 1, "reduction_factor": 2}, "max_concurrent": 2,
        "stages": [{"stage": "direct", "families": ["linear"], "trials": N_TRIALS}],
    }
    sweep = tmp_path / "resume.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    env = subprocess_env(tmp_path / "home")
    # Tune snapshots every ~10 s by default (longer on a loaded machine); every second here, so that the
    # kill below reliably lands on a snapshot that holds finished trials while others still run
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    log = tmp_path / "first.log"
    with open(log, "w") as handle:
        driver = subprocess.Popen(moa_tune("sweep", "--config", str(sweep), "--results", str(results),
                                           "--num-cpus", "2"), stdout=handle, stderr=subprocess.STDOUT, env=env)
    out = results / "resume"
    terminated: set[str] = set()
    deadline = time.time() + 300
    try:  # kill once Tune's experiment snapshot holds two finished trials, with more still to run
        while time.time() < deadline and driver.poll() is None:
            terminated = snapshot_terminated(out)
            if 2 <= len(terminated) <= N_TRIALS - 3:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be killed:\n" + log.read_text()[-2000:]
        assert 2 <= len(terminated) <= N_TRIALS - 3, log.read_text()[-2000:]
    finally:
        kill_tree(driver.pid)
        driver.wait()
    finished_before = set(re.findall(r"trial (\w+) (?:completed|pruned)", log.read_text()))
    assert not (out / "trials.csv").exists()  # killed mid-experiment: nothing was summarised yet
    terminated = snapshot_terminated(out)  # the snapshot the resume starts from
    assert len(terminated) >= 2 and terminated <= finished_before, (terminated, finished_before)

    resumed = subprocess.run(moa_tune("sweep", "--resume", str(out), "--num-cpus", "2"), capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == N_TRIALS and trials.trial_id.is_unique, trials[["trial_id", "state"]]
    assert set(trials.state) <= {"completed", "pruned"}, trials[["state", "error"]]
    # trials the snapshot had seen finish were kept, not rerun (Tune redoes only what came after it)
    assert terminated <= set(trials.trial_id), (terminated, finished_before)
    assert (trials.state == "completed").any()
    assert (out / "direct" / "linear" / "best" / "oof.npy").exists()

    # the Optuna history has the shape of an uninterrupted sweep's: every trial once, each told its result
    twin = tmp_path / "twin.yaml"
    twin.write_text(yaml.safe_dump({**raw, "name": "twin"}))
    uninterrupted = subprocess.run(moa_tune("sweep", "--config", str(twin), "--results", str(results), "--num-cpus",
                                            "2"), capture_output=True, text=True, env=env, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-2000:] + uninterrupted.stderr[-2000:]
    resumed_history, twin_history = optuna_history(out), optuna_history(results / "twin")
    assert shape(resumed_history) == shape(twin_history)
    assert shape(resumed_history)[0] == N_TRIALS and set(shape(resumed_history)[2]) == {"COMPLETE"}
    # and each Optuna trial carries the loss its Tune trial reported last
    assert sorted(round(t.value, 9) for t in resumed_history) == sorted(round(x, 9) for x in trials.loss)
