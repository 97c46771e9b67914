"""Ctrl-C and SIGTERM are a state, not a finish: real signals at each phase of sweep, collect and run.

Each case starts the real CLI in a subprocess with its own local Ray, waits for a line that says
which phase it is in, sends the signal, and checks: exit code 130, one line saying what was kept
and how to go on (no traceback), the interrupted work not recorded as finished, no Ray process of
the run left, and the command it names completing the work with nothing lost or told twice.
"""
from __future__ import annotations

import os
import re
import shutil
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


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """The CLI in its own process group, as a shell runs a foreground job (Ctrl-C reaches the group)."""
    with open(log, "w") as handle:
        return subprocess.Popen(moa_tune(*args), stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def wait_for(driver: subprocess.Popen, log: Path, pattern: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not re.search(pattern, log.read_text(), re.MULTILINE):
        assert driver.poll() is None, f"ended before /{pattern}/:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, f"no /{pattern}/:\n" + log.read_text()[-3000:]
        time.sleep(0.05)


def signal_and_wait(driver: subprocess.Popen, log: Path, how: str) -> list[psutil.Process]:
    """Send Ctrl-C to the process group (``how="ctrl-c"``) or SIGTERM to the driver; wait for its end.

    Returns the driver's processes (Ray's, started by it) that are still alive a minute later.
    """
    try:
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        ray_processes = []
    if how == "ctrl-c":
        os.killpg(driver.pid, signal.SIGINT)
    else:
        driver.send_signal(signal.SIGTERM)
    try:
        driver.wait(timeout=180)
    except subprocess.TimeoutExpired:
        driver.kill()
        raise AssertionError("the driver did not stop:\n" + log.read_text()[-3000:])
    _, alive = psutil.wait_procs(ray_processes, timeout=60)
    for process in alive:  # leave nothing behind for the next test, then fail
        process.kill()
    return alive


def assert_interrupted(driver: subprocess.Popen, log: Path, alive: list, *says: str) -> None:
    text = log.read_text()
    assert driver.returncode == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    line = [x for x in text.splitlines() if x.startswith("interrupted: ")]
    assert len(line) == 1, text[-3000:]
    for what in says:
        assert what in line[0], line[0]
    assert not alive, [(p.pid, p.name()) for p in alive]


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def linear_sweep(tmp_path: Path, name: str, stages: list[dict], **extra: object) -> Path:
    raw = {"name": name, "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3},
           "fixed": {"train.epochs": 20, "train.early_stopping": 0, "train.batch_size": 32},
           "asha": {"grace_period": 3, "reduction_factor": 2}, "max_concurrent": 2, "seeds": [0, 1],
           "stages": stages, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(tmp_path: Path, command: str, name: str, stages: list[dict], **extra: object
           ) -> tuple[subprocess.Popen, Path, dict[str, str], Path]:
    """``moa-tune COMMAND`` (sweep or run) of a small linear sweep: (driver, its log, its env, the run folder)."""
    sweep = linear_sweep(tmp_path, name, stages, **extra)
    results, log = tmp_path / "results", tmp_path / f"{command}.log"
    env = subprocess_env(tmp_path / "home")
    driver = start([command, "--config", str(sweep), "--results", str(results), "--num-cpus", "2"], log, env)
    return driver, log, env, results / name


def resume_sweep(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    resumed = subprocess.run(moa_tune("sweep", "--resume", str(out), "--num-cpus", "2"), capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return resumed


def test_ctrl_c_mid_experiment_then_resume_keeps_every_trial_once(tmp_path: Path) -> None:
    n_trials = 6
    driver, log, env, out = launch(tmp_path, "sweep", "cc", [{"stage": "direct", "families": ["linear"],
                                                              "trials": n_trials}])
    wait_for(driver, log, r"trial \w+ completed")
    alive = signal_and_wait(driver, log, "ctrl-c")
    assert_interrupted(driver, log, alive, "direct/linear", f"moa-tune sweep --resume {out}")
    finished_before = set(re.findall(r"trial (\w+) (?:completed|pruned)", log.read_text()))
    # not recorded as finished: no done.json, no trials.csv, so --resume goes on with it
    assert not (out / "direct" / "linear" / "done.json").exists()
    assert not (out / "trials.csv").exists()

    assert "resuming" in resume_sweep(out, env).stdout
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == n_trials and trials.trial_id.is_unique, trials[["trial_id", "state"]]
    assert set(trials.state) <= {"completed", "pruned"}, trials[["state", "error"]]
    # Tune saved its state when the Ctrl-C came: every trial finished before it is kept, none rerun
    assert finished_before <= set(trials.trial_id), (finished_before, list(trials.trial_id))
    assert (out / "direct" / "linear" / "best" / "oof.npy").exists()


def test_sigterm_at_a_stage_start_of_a_run_then_the_named_commands_finish_it(tmp_path: Path) -> None:
    driver, log, env, out = launch(tmp_path, "run", "st", [{"stage": "stage1", "families": ["linear"], "trials": 2},
                                                           {"stage": "stage2", "families": ["linear"], "trials": 2}])
    wait_for(driver, log, r"^\[stage2/linear\]")
    alive = signal_and_wait(driver, log, "sigterm")
    assert_interrupted(driver, log, alive, "in its sweep", f"moa-tune sweep --resume {out}",
                       f"moa-tune collect {out}")
    assert (out / "stage1" / "linear" / "done.json").exists()
    assert not (out / "stage2" / "linear" / "done.json").exists()  # not "finished" with no trial
    assert not (out / "ensemble").exists() and not (out / "submission.csv").exists()

    resumed = resume_sweep(out, env).stdout
    assert "[stage1/linear] already finished; kept" in resumed
    trials = pd.read_csv(out / "trials.csv")
    if not (len(trials) == 4 and trials.trial_id.is_unique):  # the whole story, untruncated
        pytest.fail(f"{trials[['trial_id', 'stage', 'state']]}\n--- run:\n{log.read_text()[-4000:]}\n"
                    f"--- resume:\n{resumed[-4000:]}")
    assert (trials.stage == "stage2").sum() == 2
    assert (out / "stage2" / "linear" / "best" / "oof.npy").exists()


@pytest.mark.parametrize("command, how", [("run", "ctrl-c"), ("sweep", "sigterm")])
def test_a_signal_while_ray_starts_is_held_then_ends_the_command_cleanly(tmp_path: Path, command: str,
                                                                          how: str) -> None:
    """Ray's start-up (``ray.init``, several seconds) is where a signal met Ray's own handlers: a
    SIGTERM ended the process at once, leaving Ray's processes; a Ctrl-C to the process group killed
    the dashboard that was starting and ``ray.init`` failed with a traceback."""
    driver, log, env, out = launch(tmp_path, command, "ri", [{"stage": "direct", "families": ["linear"],
                                                              "trials": 2}])
    wait_for(driver, log, r"authentication token")  # printed just before ray.init, in a fresh HOME
    time.sleep(1.5)
    assert "Ray dashboard:" not in log.read_text()  # still starting: the signal falls inside ray.init
    alive = signal_and_wait(driver, log, how)
    assert_interrupted(driver, log, alive, f"the {command} was interrupted before its sweep had written anything",
                       "start it again with the same command")
    assert not out.exists() or not any(p.name != ".ri.lock" for p in out.iterdir())
    if command == "sweep":  # and the same command then works
        again = subprocess.run(driver.args, capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert len(pd.read_csv(out / "trials.csv")) == 2


def test_sigterm_in_runs_collect_and_in_collect_exports_nothing_and_collect_restarts(tmp_path: Path) -> None:
    driver, log, env, out = launch(tmp_path, "run", "co", [{"stage": "direct", "families": ["linear"], "trials": 2}],
                                   fixed={"train.epochs": 60, "train.early_stopping": 0, "train.batch_size": 16})
    wait_for(driver, log, r"^\[collect\] .*seeds \[0, 1\]")  # planned; its retraining is under way
    alive = signal_and_wait(driver, log, "sigterm")
    assert_interrupted(driver, log, alive, "while collecting", f"moa-tune collect {out}")
    assert not (out / "ensemble").exists() and not (out / "collect").exists()
    assert (out / "trials.csv").exists()  # the sweep is complete and kept

    # `moa-tune collect` itself, stopped by SIGTERM once its retraining is under way (its first seed reused:
    # Ray is up; a signal while `ray.init` runs can meet Ray's own C-level handler), then run to the end
    collect_log = tmp_path / "collect.log"
    collector = start(["collect", str(out), "--num-cpus", "2"], collect_log, env)
    wait_for(collector, collect_log, r"^\[collect\] .* reused, CV")
    alive = signal_and_wait(collector, collect_log, "sigterm")
    assert_interrupted(collector, collect_log, alive, "collect was interrupted", "nothing was exported",
                       f"moa-tune collect {out}")
    assert not (out / "ensemble").exists()
    again = subprocess.run(moa_tune("collect", str(out), "--num-cpus", "2"), capture_output=True, text=True,
                           env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (out / "ensemble" / "manifest.json").exists()


def test_sigkill_leftovers_are_reported_by_status_and_stopped_by_the_next_start(tmp_path: Path) -> None:
    driver, log, env, out = launch(tmp_path, "sweep", "kl", [{"stage": "direct", "families": ["linear"], "trials": 16}])
    try:
        wait_for(driver, log, r"trial \w+ (?:completed|pruned)")
        time.sleep(3)  # the record has been refreshed since Ray started its agents (every 2 s)
        assert driver.poll() is None, log.read_text()[-3000:]
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        os.kill(driver.pid, signal.SIGKILL)  # only the driver, as the OOM killer would
    finally:
        driver.kill()
        driver.wait()
    time.sleep(5)
    still = [p for p in ray_processes if running(p)]
    print("left running after the kill:", [(p.pid, p.name()) for p in still])
    assert still, "Ray stopped every process itself: nothing to test here"
    status = subprocess.run(moa_tune("status", str(out)), capture_output=True, text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "still running:" in status.stdout and f"pid {driver.pid}" in status.stdout, status.stdout[-2000:]

    try:
        resumed = resume_sweep(out, env)
        assert f"stopping {len(still)} process(es) of a local Ray whose moa-tune (pid {driver.pid})" in resumed.stdout
        _, alive = psutil.wait_procs(ray_processes, timeout=30)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        for process in ray_processes:
            if process.is_running():
                process.kill()


@pytest.mark.parametrize("kept", [("tuner.pkl",), ("tuner.pkl", "experiment_state-", "search_gen_state-",
                                                  "searcher-state-")])
def test_an_experiment_stopped_before_a_trial_reported_is_started_again_by_resume(tmp_path: Path,
                                                                                   kept: tuple[str, ...]) -> None:
    """The states a signal leaves just after an experiment starts: ``tuner.pkl`` alone, or Tune's first
    saved state with no trial's fold in it (seen in CI: the restored experiment ran 1 of 2 trials)."""
    sweep = linear_sweep(tmp_path, "ns", [{"stage": "direct", "families": ["linear"], "trials": 2}])
    env, out = subprocess_env(tmp_path / "home"), tmp_path / "results" / "ns"
    first = subprocess.run(moa_tune("sweep", "--config", str(sweep), "--results", str(tmp_path / "results"),
                                    "--num-cpus", "2"), capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    tune_dir = next((tmp_path / "home" / "ray_results").rglob("tuner.pkl")).parent
    for path in tune_dir.iterdir():  # what was there when the signal came
        if not path.name.startswith(kept):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "direct" / "linear" / "done.json").unlink()
    (out / "trials.csv").unlink()

    resumed = resume_sweep(out, env)
    assert "Traceback" not in resumed.stdout + resumed.stderr, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" not in resumed.stdout, resumed.stdout[-3000:]
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and trials.trial_id.is_unique, (trials[["trial_id", "state"]], resumed.stdout[-3000:])
