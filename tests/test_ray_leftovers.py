"""What a SIGKILLed driver leaves running is recorded, reported and stopped by the next start.

Real processes, no Ray: a stand-in driver records its descendants as moa-tune does while it holds
a local Ray, starts a process that ignores SIGTERM (as Ray's agents do), and is killed with
SIGKILL. (The same through a real sweep and Ray: tests/test_interrupt.py.)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from moa_tune.ray_leftovers import Recorder, leftovers, stop_leftovers

DRIVER = """
import subprocess, sys, time
from pathlib import Path
from moa_tune.ray_leftovers import Recorder
child = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 600 & wait"])
Recorder(Path(sys.argv[1]), refresh_s=0.1).start()
time.sleep(0.5)  # a refresh has seen the sleep too
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_drivers_processes_are_found_and_stopped_and_a_live_drivers_are_not(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready"
        descendants = psutil.Process(driver.pid).children(recursive=True)
        assert len(descendants) == 2  # bash and its sleep
        assert leftovers(folder) == []  # its driver is alive: nothing is left over
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        time.sleep(0.2)
        assert all(p.is_running() for p in descendants)  # orphans now, ignoring SIGTERM
        found = leftovers(folder)
        assert len(found) == 1 and found[0].driver == driver.pid
        assert sorted(p.pid for p in found[0].processes) == sorted(p.pid for p in descendants)
        assert f"pid {driver.pid}" in found[0].describe() and "sleep" in found[0].describe()
        said: list[str] = []
        assert stop_leftovers(said.append, grace_s=1.0, folder=folder) == 2
        assert said and said[0].startswith("stopping 2 process(es)")
        _, alive = psutil.wait_procs(descendants, timeout=5)
        assert not alive
        assert leftovers(folder) == [] and not list(folder.glob("*.json"))  # the record went with them
    finally:
        driver.kill()
        for p in psutil.Process().children(recursive=True):
            p.kill()


def test_a_recorded_pid_taken_by_a_new_process_is_not_touched(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        # a record of a dead driver naming the bystander's PID with another start time: PID reuse
        started = psutil.Process(bystander.pid).create_time()
        folder.mkdir()
        (folder / "1.json").write_text(f'{{"driver": 999999999, "driver_started": 1.0, '
                                       f'"processes": [[{bystander.pid}, {started - 100}, "raylet"]]}}')
        assert leftovers(folder) == []
        assert not (folder / "1.json").exists()  # nothing of it runs: the record is dropped
        assert stop_leftovers(folder=folder) == 0 and bystander.poll() is None
    finally:
        bystander.kill()


def test_a_clean_end_leaves_no_record(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, refresh_s=0.05).start()
    assert recorder.path.exists()
    recorder.stop()
    assert not recorder.path.exists()
