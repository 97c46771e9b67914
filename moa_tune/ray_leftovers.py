"""The processes of a local Ray that moa-tune started, recorded so that a killed driver's can be stopped.

``ray.shutdown()`` stops a local Ray's processes when moa-tune ends, however it ends, except when
the driver itself is killed with SIGKILL (the OOM killer, ``kill -9``, a scheduler's hard stop):
then Ray's ``DashboardAgent`` and ``RuntimeEnvAgent`` go on running, owned by no one, ignoring
SIGTERM and listening on every interface. So while moa-tune holds a local Ray, a thread records
the driver's descendants (PID and start time, which tells a recorded process from a new one that
got its PID) in ``~/.cache/moa-tune/local-ray/<driver pid>.json``, refreshed every few seconds
since Ray starts its agents and workers after ``ray.init`` returns. The next moa-tune that starts
a local Ray stops what a dead driver left (:func:`stop_leftovers`); ``moa-tune status`` reports
it (:func:`leftovers`). Processes of a live driver, of another user, or of a cluster the user
started are never touched: only recorded ones, whose driver is gone.

psutil and the standard library only: no Ray import, so ``status`` stays light.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from .io import write_json

#: How often the record is refreshed while a local Ray runs.
REFRESH_S = 2.0


def records_dir() -> Path:
    return Path.home() / ".cache" / "moa-tune" / "local-ray"


def _started(process: psutil.Process) -> float | None:
    try:
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class Recorder:
    """Records this driver's descendant processes until :meth:`stop` (a daemon thread)."""

    def __init__(self, folder: Path | None = None, refresh_s: float = REFRESH_S) -> None:
        self.path = (folder or records_dir()) / f"{os.getpid()}.json"
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._run, name="moa-tune-ray-record", daemon=True)

    def start(self) -> "Recorder":
        self.record()
        self._thread.start()
        return self

    def record(self) -> None:
        processes = []
        for child in self._me.children(recursive=True):
            started = _started(child)
            if started is not None:
                try:
                    name = child.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                processes.append([child.pid, started, name])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"driver": os.getpid(), "driver_started": _started(self._me), "processes": processes})

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.record()
            except OSError:  # a full or read-only home: the record is a safety net, not the work
                pass

    def stop(self) -> None:
        """The local Ray was shut down: nothing of it is left to record."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


_RECORDER: Recorder | None = None


def start_recording() -> None:
    """Record the local Ray this process has just started (one at a time)."""
    global _RECORDER
    stop_recording()
    try:
        _RECORDER = Recorder().start()
    except OSError:
        _RECORDER = None


def stop_recording() -> None:
    global _RECORDER
    if _RECORDER is not None:
        _RECORDER.stop()
        _RECORDER = None


@dataclass
class Leftover:
    """The processes a dead driver's local Ray left running."""

    record: Path
    driver: int
    processes: list[psutil.Process]

    def describe(self) -> str:
        names = sorted({_name(p) for p in self.processes})
        return (f"{len(self.processes)} process(es) of a local Ray whose moa-tune (pid {self.driver}) was killed "
                f"before it could shut it down: {', '.join(names)} (pids "
                f"{', '.join(str(p.pid) for p in self.processes)})")


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"


def _alive(pid: int, started: float | None) -> psutil.Process | None:
    """The process ``pid`` if it is still the one that was recorded (same start time)."""
    try:
        process = psutil.Process(pid)
        return process if started is not None and abs(process.create_time() - started) < 0.01 else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def leftovers(folder: Path | None = None) -> list[Leftover]:
    """Records whose driver is gone, with their processes still running (a record with none is removed)."""
    found = []
    folder = folder or records_dir()
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            raw = json.loads(record.read_text())
            driver, driver_started = int(raw["driver"]), raw.get("driver_started")
            recorded = [(int(pid), float(started)) for pid, started, *_ in raw["processes"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: left alone
        if _alive(driver, driver_started) is not None:
            continue  # its driver runs: its Ray is not left over
        processes = [p for p in (_alive(pid, started) for pid, started in recorded) if p is not None]
        if processes:
            found.append(Leftover(record, driver, processes))
        else:
            record.unlink(missing_ok=True)
    return found


def stop_leftovers(emit: Callable[[str], None] | None = None, grace_s: float = 5.0,
                   folder: Path | None = None) -> int:
    """Stop what dead drivers' local Rays left running: SIGTERM, then SIGKILL after ``grace_s``.

    Returns how many processes were stopped. Ray's agents ignore SIGTERM for a minute, hence the kill.
    """
    stopped = 0
    for leftover in leftovers(folder):
        if emit is not None:
            emit(f"stopping {leftover.describe()}")
        for process in leftover.processes:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(leftover.processes, timeout=grace_s)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace_s)
        stopped += len(leftover.processes)
        leftover.record.unlink(missing_ok=True)
    return stopped

