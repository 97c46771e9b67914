"""`--name` and `--force`: a run's name is a plain folder name, and --force removes only a run moa-tune made,
only after every input was checked (nothing here starts Ray: each case is refused before)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli


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
    code, _, err = run_cli([command, "--name", name, "--force", "--results", str(results)], capsys)
    assert code == 2 and "--name must be a plain folder name" in err and len(err.strip().splitlines()) == 1, err
    _intact(results)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_force_leaves_a_folder_moa_tune_did_not_make(command, results, capsys) -> None:
    code, _, err = run_cli([command, "--name", "otherrun", "--force", "--results", str(results)], capsys)
    assert code == 2 and "not a moa-tune run" in err and len(err.strip().splitlines()) == 1, err
    _intact(results)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_force_keeps_the_earlier_run_when_an_input_is_bad(command, results, tmp_path, capsys) -> None:
    code, _, err = run_cli([command, "--name", "old", "--force", "--results", str(results),
                            "--data", str(tmp_path / "missing")], capsys)
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1, err
    _intact(results)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_without_force_an_existing_run_is_refused(command, results, capsys) -> None:
    code, _, err = run_cli([command, "--name", "old", "--results", str(results)], capsys)
    assert code == 2 and "already here" in err and "--force" in err, err
    _intact(results)


def test_a_name_in_the_sweep_file_follows_the_same_rule(tmp_path, capsys) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: '..'\nstages: [{stage: direct, families: [linear]}]\n")
    code, _, err = run_cli(["sweep", "--config", str(path), "--results", str(tmp_path / "r")], capsys)
    assert code == 2 and str(path) in err and "'name' must be a plain folder name" in err
