"""Watching a sweep: the Ray dashboard of ``moa-tune sweep``, and TensorBoard events per trial.

- ``moa-tune sweep`` without ``--address`` serves the dashboard on 127.0.0.1 behind the token and
  prints its URL (run in a subprocess: one Ray session per pytest process is the rule here; this
  test comes first in the module, before the module's own Ray starts).
- Tune (2.60) writes TensorBoard events itself for function trainables when tensorboardX is
  installed (its default TBX logger callback); they are read back with TensorBoard's own reader,
  the way ``tensorboard --logdir results/<sweep>`` finds them.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from conftest import FrozenRayWorkers, moa_tune_command, subprocess_env
from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep

pytestmark = pytest.mark.slow

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard (the dev extra) reads the event files")
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402

N_TRIALS = 4


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.mark.parametrize("host", [None, "0.0.0.0"], ids=["default-loopback", "asked-all-interfaces"])
def test_sweep_serves_the_dashboard_on_loopback_behind_the_token(tmp_path: Path, host: str | None) -> None:
    """Loopback unless ``--dashboard-host`` asks otherwise; the token is required either way."""
    sweep = tmp_path / "dash.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "dash", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3},
        "fixed": {"train.epochs": 6, "train.early_stopping": 0, "train.batch_size": 64},
        "asha": {"grace_period": 3}, "stages": [{"stage": "direct", "families": ["linear"], "trials": 2}]}))
    home = Path(os.environ["HOME"])  # conftest's hermetic HOME: the sweep creates the token there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = moa_tune_command()
    log = tmp_path / "sweep.log"
    with open(log, "w") as handle:
        driver = subprocess.Popen([*command, "sweep", "--config", str(sweep), "--results", str(tmp_path / "results"),
                                   "--num-cpus", "2", *(["--dashboard-host", host] if host else [])],
                                  stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 300
        shown = r"127\.0\.0\.1" if host is None else r"[\d.]+"
        while (found := re.search(rf"Ray dashboard: http://{shown}:(\d+) \(token in (\S+)\)",
                                  log.read_text())) is None:
            assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        # Ray's workers are stopped while the dashboard is checked, so the sweep cannot end under the
        # checks however fast the machine is (its driver still shows as a running job); then it finishes
        with FrozenRayWorkers(driver.pid):
            port = int(found.group(1))
            assert Path(found.group(2)) == home / ".ray" / "auth_token"
            token = (home / ".ray" / "auth_token").read_text().strip()
            url = f"http://127.0.0.1:{port}"
            assert http_get(f"{url}/api/jobs/")[0] == 401
            listening = [c for c in psutil.net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
            assert listening and {c.laddr.ip for c in listening} == {host or "127.0.0.1"}, listening
            jobs: list = []
            while time.time() < deadline:  # the sweep's driver shows as a job
                assert driver.poll() is None, log.read_text()[-3000:]
                status, body = http_get(f"{url}/api/jobs/", token)
                assert status == 200
                jobs = [j for j in json.loads(body) if j.get("status") == "RUNNING"]
                if jobs:
                    break
                time.sleep(0.5)
            assert jobs and "moa-tune" in jobs[0]["entrypoint"] and "sweep" in jobs[0]["entrypoint"], jobs
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:  # Ctrl-C: the driver shuts its Ray down (a SIGKILL leaves Ray's agents behind)
            driver.send_signal(signal.SIGINT)
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait()
    text = log.read_text()
    assert text.count("Ray dashboard:") == 1 and "2 trials:" in text, text[-3000:]


def scalars(accumulator, tag: str) -> tuple[list[int], np.ndarray]:
    events = accumulator.Scalars(tag)
    return [e.step for e in events], np.array([e.value for e in events])


def test_every_trial_writes_tensorboard_events_per_fold(tmp_path: Path) -> None:
    """A sweep run as a user runs it (the CLI, its own local Ray in a subprocess: a second in-process
    Ray session in one pytest process has failed to start its GCS)."""
    raw = {"name": "tb", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3},
           "fixed": {"train.epochs": 2, "train.early_stopping": 0, "train.batch_size": 64},
           "resources": {"cpu": 1}, "asha": {"grace_period": 1, "reduction_factor": 2}, "seed": 3,
           "stages": [{"stage": "direct", "families": ["linear"], "trials": N_TRIALS}]}
    parse_sweep(raw, "<monitoring sweep>", SEARCH_SPACES / "sweeps")  # valid before it runs
    sweep_file = tmp_path / "tb.yaml"
    sweep_file.write_text(yaml.safe_dump(raw))
    command = moa_tune_command()
    env = subprocess_env(tmp_path / "home")
    done = subprocess.run([*command, "sweep", "--config", str(sweep_file), "--results", str(tmp_path),
                           "--num-cpus", "2"], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = tmp_path / "tb"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == N_TRIALS
    # the Tune experiments live apart from results/ (pickled resume state), under ~/ray_results/moa-tune/
    root = Path(yaml.safe_load((out / "sweep.yaml").read_text())["_storage"])
    assert root.is_relative_to(tmp_path / "home" / "ray_results" / "moa-tune") and root.name.startswith("tb-")
    assert f"Ray Tune experiments (trials, checkpoints, TensorBoard events): {root}" in done.stdout

    for row in trials.itertuples():
        folder = Path(row.path)
        assert folder.is_relative_to(root), folder  # the storage folder, not Tune's temporary copy
        assert list(folder.glob("events.out.tfevents.*")), sorted(p.name for p in folder.iterdir())
        accumulator = event_accumulator.EventAccumulator(str(folder))
        accumulator.Reload()
        tags = set(accumulator.Tags()["scalars"])
        assert {"ray/tune/loss", "ray/tune/fold_loss", "ray/tune/folds_done"} <= tags, tags
        done = int(row.folds_done)
        steps, fold_loss = scalars(accumulator, "ray/tune/fold_loss")
        assert steps == list(range(1, done + 1)), (row.state, steps)  # training_iteration = folds done
        expected = np.array([getattr(row, f"fold_{k}_loss") for k in range(done)])
        np.testing.assert_allclose(fold_loss, expected, rtol=1e-5)
        steps, loss = scalars(accumulator, "ray/tune/loss")
        assert steps == list(range(1, done + 1))
        np.testing.assert_allclose(loss, np.cumsum(expected) / np.arange(1, done + 1), rtol=1e-5)  # running mean
        assert loss[-1] == pytest.approx(row.loss, rel=1e-5)

    # `tensorboard --logdir <the experiments root the sweep printed>` shows one run per trial
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    runs = multiplexer.Runs()
    assert {str(Path(p).relative_to(root)) for p in trials.path} == set(runs), sorted(runs)
    assert all("ray/tune/loss" in tags["scalars"] for tags in runs.values())
