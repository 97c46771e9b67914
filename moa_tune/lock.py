"""One writer per run folder: an exclusive lock beside ``results/<name>/`` for sweep, collect and run.

Two ``moa-tune run --name same`` at once would both write one Tune experiment and one export, and
the second's collector would delete the first's staging folder as "left by an interrupted
collection". The lock is ``results/.<name>.lock``, beside the run folder rather than in it, so
``--force`` can replace the folder while holding it. It is an ``flock`` on that file: the kernel
releases it when its process ends however it ends (SIGKILL included), so a lock left by a dead
process is simply taken; the file's text names the holder for the refusal message.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ConfigError

__all__ = ["lock_path", "run_lock"]


def lock_path(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir).resolve()
    return run_dir.parent / f".{run_dir.name}.lock"


@contextmanager
def run_lock(run_dir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the block; ConfigError in one line when another process holds it."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"{Path(run_dir)}: in use by {holder}; wait for it to end, or choose another "
                              f"--name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"moa-tune {command} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
