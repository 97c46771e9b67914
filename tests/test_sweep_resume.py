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

from conftest import FrozenRayWorkers, moa_tune_command as moa_tune, subprocess_env

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


def finished_trials(log: Path) -> set[str]:
    """Trials the driver has printed as finished (its progress lines)."""
    return set(re.findall(r"trial (\w+) (?:completed|pruned)", log.read_text()))


def shape(trials: list) -> tuple:
    """What must match between an interrupted-then-resumed sweep and an uninterrupted one.

    Not the states: which trials ASHA stops depends on the order results arrive in (asynchronous
    promotion), so each history's states are checked against its own trials.csv instead.
    """
    return len(trials), sorted(t.number for t in trials), {frozenset(t.params) for t in trials}


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
    # Tune snapshots every ~10 s by default; every second here, so the wait below is short
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    log = tmp_path / "first.log"
    with open(log, "w") as handle:
        driver = subprocess.Popen(moa_tune("sweep", "--config", str(sweep), "--results", str(results),
                                           "--num-cpus", "2"), stdout=handle, stderr=subprocess.STDOUT, env=env)
    out = results / "resume"
    deadline = time.time() + 300
    try:
        # The kill point does not race the clock: once the driver has printed two finished trials, every
        # Ray worker is stopped (SIGSTOP), so no further trial can finish however fast the machine is,
        # while the driver goes on snapshotting; the kill comes once a snapshot holds those two.
        while len(finished_trials(log)) < 2:
            assert driver.poll() is None, "the sweep ended before it could be killed:\n" + log.read_text()[-2000:]
            assert time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.02)
        with FrozenRayWorkers(driver.pid) as frozen:
            while len(terminated := snapshot_terminated(out)) < 2:
                assert driver.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
            assert driver.poll() is None, log.read_text()[-2000:]
            assert frozen.stopped, "no Ray worker was found to stop"
            # two concurrent trials may have finished in the instant before the stop: at most 4 of 8
            assert 2 <= len(terminated) <= N_TRIALS - 3, (terminated, log.read_text()[-2000:])
            kill_tree(driver.pid)
    finally:
        kill_tree(driver.pid)
        driver.wait()
    finished_before = finished_trials(log)
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
    assert shape(resumed_history)[0] == N_TRIALS
    # a trial is COMPLETE in the study exactly when it trained every fold; one ASHA stopped is PRUNED (not
    # COMPLETE with a partial loss), its fold losses kept as intermediate values
    assert sorted(t.state.name for t in resumed_history) == sorted(
        "COMPLETE" if state == "completed" else "PRUNED" for state in trials.state)
    twin_trials = pd.read_csv(results / "twin" / "trials.csv")
    assert sorted(t.state.name for t in twin_history) == sorted(
        "COMPLETE" if state == "completed" else "PRUNED" for state in twin_trials.state)
    assert "PRUNED" in {t.state.name for t in twin_history}, twin_trials[["state", "folds_done"]]
    for t in twin_history:
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        assert (len(t.intermediate_values) == 3) == (t.state.name == "COMPLETE"), (t.number, t.intermediate_values)
        assert t.value == pytest.approx(t.intermediate_values[max(t.intermediate_values)])
    # and each Optuna trial carries the loss its Tune trial reported last
    assert sorted(round(t.value, 9) for t in resumed_history) == sorted(round(x, 9) for x in trials.loss)


def test_a_relative_search_space_path_still_works_for_collect_and_resume(tmp_path: Path) -> None:
    """The sweep records the spaces it used by absolute path: `collect` and `--resume` read
    results/<name>/sweep.yaml from elsewhere, where the sweep file's relative path means nothing."""
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "my-linear.yaml").write_text(yaml.safe_dump({"family": "linear", "params": {
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}))
    (tmp_path / "sweeps").mkdir()
    sweep_file = tmp_path / "sweeps" / "rel.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "rel", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3}, "seeds": [0],
        "asha": {"grace_period": 3}, "search_spaces": {"linear": "../spaces/my-linear.yaml"},
        "fixed": {"train.epochs": 2, "train.early_stopping": 0},
        "stages": [{"stage": "direct", "families": ["linear"], "trials": 1}]}))
    env = subprocess_env(tmp_path / "home")
    results = tmp_path / "results"
    for args in (["sweep", "--config", str(sweep_file)], ["sweep", "--resume", str(results / "rel")],
                 ["collect", str(results / "rel")]):
        done = subprocess.run(moa_tune(*args, "--num-cpus", "2", *([] if args[0] == "collect" or "--resume" in args
                                                                    else ["--results", str(results)])),
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    recorded = yaml.safe_load((results / "rel" / "sweep.yaml").read_text())
    assert recorded["search_spaces"] == {"linear": str((tmp_path / "spaces" / "my-linear.yaml").resolve())}
    trials = pd.read_csv(results / "rel" / "trials.csv")
    assert len(trials) == 1 and "param.train.lr" in trials.columns
