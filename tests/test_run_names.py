"""`--name` and `--force`: a run's name is a plain folder name, and --force removes only a run moa-tune made,
only after every input was checked (nothing here starts Ray: each case is refused before)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli

#: `run` and `sweep` count a budget from the process start: in a long pytest process the default
#: sweep's 10 minutes may be spent before the command starts, refused before the check under test
LONG = ["--budget", "24h"]


def _args(command: str, *rest: str) -> list[str]:
    return [command, *rest, *(LONG if command in ("run", "sweep") else [])]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder with a finished-looking run and a sibling the user keeps there."""
    results = tmp_path / "results"
    (results / "old").mkdir(parents=True)
    (results / "old" / "sweep.yaml").write_text("name: old\n")
    (results / "old" / "trials.csv").write_text("trial_id\n")
    (results / "otherrun").mkdir()
    (results / "otherrun" / "precious.txt").write_text("keep me")
    (tmp_path / "beside.txt").write_text("keep me too")
    return results


def _intact(results: Path) -> None:
    assert (results / "otherrun" / "precious.txt").read_text() == "keep me"
    assert (results / "old" / "trials.csv").exists() and (results.parent / "beside.txt").exists()


@pytest.mark.parametrize("name", ["", " ", ".", "..", "../x", "a/b", "/abs/dir", ".hidden", "a\\b"])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_name_that_is_not_a_plain_folder_is_refused_and_nothing_is_deleted(command, name, results, tmp_path,
                                                                            capsys) -> None:
    code, _, err = run_cli(_args(command, "--name", name, "--force", "--results", str(results)), capsys)
    assert code == 2 and "--name must be a plain folder name" in err and len(err.strip().splitlines()) == 1, err
    _intact(results)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_force_leaves_a_folder_moa_tune_did_not_make(command, results, capsys) -> None:
    code, _, err = run_cli(_args(command, "--name", "otherrun", "--force", "--results", str(results)), capsys)
    assert code == 2 and "not a moa-tune run" in err and len(err.strip().splitlines()) == 1, err
    _intact(results)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_force_keeps_the_earlier_run_when_an_input_is_bad(command, results, tmp_path, capsys) -> None:
    code, _, err = run_cli(_args(command, "--name", "old", "--force", "--results", str(results),
                                 "--data", str(tmp_path / "missing")), capsys)
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1, err
    _intact(results)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_without_force_an_existing_run_is_refused(command, results, capsys) -> None:
    code, _, err = run_cli(_args(command, "--name", "old", "--results", str(results)), capsys)
    assert code == 2 and "already here" in err and "--force" in err, err
    _intact(results)


def test_a_name_in_the_sweep_file_follows_the_same_rule(tmp_path, capsys) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: '..'\nstages: [{stage: direct, families: [linear]}]\n")
    code, _, err = run_cli(["sweep", "--config", str(path), "--results", str(tmp_path / "r")], capsys)
    assert code == 2 and str(path) in err and "'name' must be a plain folder name" in err


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("resources, kind", [({"cpu": 4096}, "CPU"), ({"gpu": 64}, "GPU")])
def test_resources_beyond_this_machine_are_refused_before_ray_and_before_force(command, resources, kind, results,
                                                                               tmp_path, capsys) -> None:
    import yaml

    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"name": "old", "data": {"synth": "tiny", "seed": 0}, "resources": resources,
                                    "stages": [{"stage": "direct", "families": ["linear"], "trials": 1}]}))
    code, _, err = run_cli(_args(command, "--config", str(path), "--force", "--results", str(results)), capsys)
    assert code == 2 and "per trial but this machine has" in err and kind in err, err
    assert len(err.strip().splitlines()) == 1
    _intact(results)  # the earlier run of that name is still there


def test_an_os_error_is_one_line_naming_the_path(tmp_path, capsys) -> None:
    """ENOTDIR here (a file where a folder should be); ENOSPC and EACCES take the same path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(["data", "synth", "--preset", "tiny", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(blocker) in err and ("Not a directory" in err or "File exists" in err)


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk fails
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from moa_tune.cli import main
main(sys.argv[1:])
"""


def test_a_write_that_cannot_finish_is_one_line_and_leaves_nothing_half_written(tmp_path) -> None:
    """A full disk, simulated by a file-size limit (every write beyond 20 kB fails like ENOSPC)."""
    import subprocess
    import sys

    out = tmp_path / "synth"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, "data", "synth", "--preset", "tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "File too large" in done.stderr, done.stderr
    assert not out.exists() or not any(out.rglob("*.csv"))  # nothing under the final name


def test_a_run_folder_in_use_is_refused_naming_its_holder(results, tmp_path, capsys) -> None:
    """Another process holds results/old's lock (a real flock, in a child process): sweep, run and
    collect of that folder are refused in one line naming it; once the holder dies the lock is free."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from moa_tune.lock import run_lock\n"
        f"with run_lock({str(results / 'old')!r}, 'run'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (_args("run", "--name", "old", "--force", "--results", str(results)),
                     _args("sweep", "--name", "old", "--force", "--results", str(results)),
                     ["collect", str(results / "old")]):
            code, _, err = run_cli(argv, capsys)
            assert code == 2 and "in use by moa-tune run (pid" in err and len(err.strip().splitlines()) == 1, err
        _intact(results)
    finally:
        holder.kill()
        holder.wait()
    from moa_tune.lock import run_lock

    with run_lock(results / "old", "test"):  # the dead holder's lock is free
        pass
