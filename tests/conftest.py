"""Shared fixtures: a small hand-made Kaggle-layout directory and the real label folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

# One torch thread per test process: on a 2-core CI machine more threads only spin against each other
# (and against Ray workers in the sweep tests).
torch.set_num_threads(1)

REAL_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lish-moa-labels"


@pytest.fixture
def real_labels() -> Path:
    """The real lish-moa label files (../shared/data/lish-moa-labels); skips when absent."""
    if not (REAL_LABELS / "train_targets_scored.csv.zip").is_file():
        pytest.skip(f"real labels not found at {REAL_LABELS}")
    return REAL_LABELS


def write_kaggle_dir(path: Path, n_train: int = 60, n_test: int = 12, n_genes: int = 5, n_cells: int = 3,
                     n_scored: int = 4, n_nonscored: int = 3, seed: int = 0) -> Path:
    """A tiny but complete lish-moa directory written with pandas (independent of moa_tune.synth)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)

    def features(prefix: str, n: int) -> pd.DataFrame:
        frame = pd.DataFrame({
            "sig_id": [f"id_{prefix}{i:06x}" for i in range(n)],
            "cp_type": np.where(np.arange(n) % 10 == 0, "ctl_vehicle", "trt_cp"),
            "cp_time": rng.choice([24, 48, 72], n),
            "cp_dose": rng.choice(["D1", "D2"], n),
        })
        numeric = pd.DataFrame(rng.normal(size=(n, n_genes + n_cells)).round(4),
                               columns=[*(f"g-{j}" for j in range(n_genes)), *(f"c-{j}" for j in range(n_cells))])
        return pd.concat([frame, numeric], axis=1)

    train = features("a", n_train)
    train.to_csv(path / "train_features.csv", index=False)
    control = (train.cp_type == "ctl_vehicle").to_numpy()
    drug = np.where(control, "cacb2b860", np.array([f"drug{i // 3:05d}" for i in range(n_train)]))
    scored = np.zeros((n_train, n_scored), dtype=int)
    for i in range(n_train):
        if not control[i] and (i // 3) % 2 == 0:
            scored[i, (i // 3) % n_scored] = 1
    pd.DataFrame(scored, columns=[f"target_{j}_inhibitor" for j in range(n_scored)]).assign(
        sig_id=train.sig_id).iloc[:, [-1, *range(n_scored)]].to_csv(path / "train_targets_scored.csv", index=False)
    nonscored = np.zeros((n_train, n_nonscored), dtype=int)
    nonscored[:, 0] = scored[:, 0]
    pd.DataFrame(nonscored, columns=[f"other_{j}_agonist" for j in range(n_nonscored)]).assign(
        sig_id=train.sig_id).iloc[:, [-1, *range(n_nonscored)]].to_csv(path / "train_targets_nonscored.csv", index=False)
    pd.DataFrame({"sig_id": train.sig_id, "drug_id": drug}).to_csv(path / "train_drug.csv", index=False)
    test = features("b", n_test)
    test.to_csv(path / "test_features.csv", index=False)
    submission = pd.DataFrame(0.5, index=range(n_test), columns=[f"target_{j}_inhibitor" for j in range(n_scored)])
    submission.insert(0, "sig_id", test.sig_id)
    submission.to_csv(path / "sample_submission.csv", index=False)
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``moa-tune ARGV`` in-process; (exit code, stdout, stderr)."""
    from moa_tune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), captured.out, captured.err


def moa_tune_command(*args: str) -> list[str]:
    """``moa-tune ARGS`` as a subprocess command line (the installed script, else ``python -m``)."""
    script = Path(sys.executable).with_name("moa-tune")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "moa_tune.cli", *args]


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``moa-tune`` subprocess that starts its own local Ray.

    ``home`` is a fresh HOME (no developer token or Ray config reaches it) and ``RAY_AUTH_MODE`` is
    dropped: an earlier in-process ``ray.init`` sets it to ``token`` in this process's environment.
    """
    env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_AUTH_MODE", None)
    return env


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    return write_kaggle_dir(tmp_path / "moa")


@pytest.fixture(autouse=True)
def _hermetic_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's own Ray token and config out of the tests."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    os.environ.setdefault("MPLBACKEND", "Agg")
    # a loaded 2-core CI machine can take over Ray's default 30 s to start a GCS (tests' own ray.init too)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")


@pytest.fixture(scope="session")
def tiny():
    """The synthetic 'tiny' preset (seed 0) and its 3 drug-aware folds."""
    from moa_tune.folds import make_folds
    from moa_tune.synth import generate

    data = generate("tiny", seed=0)
    return data, make_folds(data, n_splits=3, scheme="drug", seed=0)


#: A config that trains in about a second per fold on the tiny preset.
FAST_TRAIN = {"epochs": 3, "batch_size": 64, "early_stopping": 0}
#: A small MLP for tests that exercise the machinery rather than the model.
SMALL_MLP = {"hidden_size": 64}


class FrozenRayWorkers:
    """SIGSTOP every Ray worker process a driver started, until :meth:`thaw` (a context manager).

    Tests that must act *while* a sweep runs (kill its driver mid-sweep, query its dashboard) cannot
    race the clock: on a fast idle machine a small sweep ends before a poll notices it started. With
    the workers stopped no trial can report, finish or start a fold, so the sweep stays where it is
    for as long as the test needs, however fast or loaded the machine. The driver itself (Tune's
    controller: snapshots, callbacks) and Ray's own services keep running. A background thread
    stops workers Ray starts afterwards too.

    Workers are found by their process title (``ray::IDLE``, ``ray::ImplicitFunc...``; Ray's agents
    and services are left alone), among the driver's descendants only (by PID, never by name).
    """

    def __init__(self, driver_pid: int, poll_s: float = 0.02) -> None:
        import threading

        self.driver_pid, self.poll_s = driver_pid, poll_s
        self.stopped: dict[int, "psutil.Process"] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep_stopping, daemon=True)

    def workers(self) -> list:
        try:
            descendants = psutil.Process(self.driver_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for proc in descendants:
            try:
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if title.startswith("ray::") and "Agent" not in title:
                found.append(proc)
        return found

    def stop_all(self) -> int:
        """Stop every worker not yet stopped; how many there are now."""
        for proc in self.workers():
            if proc.pid not in self.stopped:
                try:
                    proc.suspend()
                except psutil.NoSuchProcess:
                    continue
                self.stopped[proc.pid] = proc
        return len(self.stopped)

    def _keep_stopping(self) -> None:
        while not self._done.wait(self.poll_s):
            self.stop_all()

    def __enter__(self) -> "FrozenRayWorkers":
        self.stop_all()
        self._thread.start()
        return self

    def thaw(self) -> None:
        """Let the workers go on (SIGCONT); a later SIGKILL works on stopped processes as well."""
        self._done.set()
        self._thread.join(timeout=5)
        for proc in self.stopped.values():
            try:
                proc.resume()
            except psutil.NoSuchProcess:
                pass

    def __exit__(self, *exc: object) -> None:
        self.thaw()
