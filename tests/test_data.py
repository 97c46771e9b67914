"""moa_tune.data: loading a Kaggle directory, and every kind of bad input through the CLI."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from conftest import moa_tune_command, run_cli, write_kaggle_dir
from moa_tune import DataError, DataWarning, describe, load, save


def edit(directory: Path, stem: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = directory / f"{stem}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame).to_csv(path, index=False)


def set_cell(column: str, row: int, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row - 1, column] = value
        return frame
    return change


def test_load_returns_plain_numpy(kaggle_dir: Path) -> None:
    data = load(kaggle_dir)
    assert len(data.train) == 60 and len(data.test) == 12
    assert data.train.gene_columns == tuple(f"g-{j}" for j in range(5))
    assert data.train.cell_columns == ("c-0", "c-1", "c-2")
    for array in (data.train.sig_id, data.train.cp_type, data.train.cp_dose, data.drug_id, data.test.sig_id):
        assert isinstance(array, np.ndarray) and array.dtype.kind == "U"
    assert data.train.cp_time.dtype == np.int64 and set(data.train.cp_time) <= {24, 48, 72}
    assert data.train.genes.dtype == np.float32 and data.train.genes.shape == (60, 5)
    assert data.scored.dtype == np.uint8 and data.scored.shape == (60, 4)
    assert data.nonscored.shape == (60, 3)
    assert all(type(c) is str for c in data.scored_columns + data.train.gene_columns)
    frame = pd.read_csv(kaggle_dir / "train_features.csv")
    np.testing.assert_allclose(data.train.genes, frame[[f"g-{j}" for j in range(5)]].to_numpy(), rtol=1e-6)


def test_gene_and_cell_counts_come_from_prefixes(tmp_path: Path) -> None:
    data = load(write_kaggle_dir(tmp_path / "wide", n_train=20, n_test=5, n_genes=384, n_cells=48))
    assert (data.train.n_genes, data.train.n_cells) == (384, 48)
    assert data.test.genes.shape == (5, 384)


@pytest.mark.parametrize("compression", ["zip", "gz"])
def test_compressed_files_load(kaggle_dir: Path, compression: str) -> None:
    expected = load(kaggle_dir)
    for path in list(kaggle_dir.glob("*.csv")):
        target = path.with_name(path.name + "." + compression)
        if compression == "gz":
            with open(path, "rb") as src, gzip.open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            with zipfile.ZipFile(target, "w") as archive:
                archive.write(path, path.name)
        path.unlink()
    data = load(kaggle_dir)
    np.testing.assert_array_equal(data.scored, expected.scored)
    np.testing.assert_array_equal(data.train.genes, expected.train.genes)
    np.testing.assert_array_equal(data.drug_id, expected.drug_id)


def test_targets_in_another_order_are_aligned(kaggle_dir: Path) -> None:
    expected = load(kaggle_dir)
    for stem in ("train_targets_scored", "train_targets_nonscored", "train_drug"):
        edit(kaggle_dir, stem, lambda f: f.iloc[::-1])
    data = load(kaggle_dir)
    np.testing.assert_array_equal(data.scored, expected.scored)
    np.testing.assert_array_equal(data.nonscored, expected.nonscored)
    np.testing.assert_array_equal(data.drug_id, expected.drug_id)


def test_optional_files_may_be_absent(kaggle_dir: Path) -> None:
    for stem in ("train_targets_nonscored", "train_drug", "test_features", "sample_submission"):
        (kaggle_dir / f"{stem}.csv").unlink()
    data = load(kaggle_dir)
    assert data.nonscored is None and data.drug_id is None and data.test is None


def test_save_round_trip_is_atomic_and_refuses_to_clobber(kaggle_dir: Path, tmp_path: Path) -> None:
    data = load(kaggle_dir)
    out = save(data, tmp_path / "copy")
    again = load(out)
    np.testing.assert_array_equal(again.scored, data.scored)
    np.testing.assert_allclose(again.train.cells, data.train.cells, atol=1e-4)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in kaggle_dir.iterdir())
    with pytest.raises(DataError, match="already exists"):
        save(data, out)
    save(data, out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_describe(kaggle_dir: Path) -> None:
    summary = describe(load(kaggle_dir))
    assert summary["train_rows"] == 60 and summary["control_rows"] == 6
    assert summary["genes"] == 5 and summary["cells"] == 3 and summary["drugs"] == 21
    assert summary["scored_positives"] == int(load(kaggle_dir).scored.sum())


# ---- every kind of bad input: one line naming file, column and row; exit code 2; no traceback

BAD_INPUTS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "missing train_features": (lambda d: (d / "train_features.csv").unlink(), ["missing file train_features.csv"]),
    "missing targets": (lambda d: (d / "train_targets_scored.csv").unlink(), ["missing file train_targets_scored.csv"]),
    "empty file": (lambda d: (d / "train_drug.csv").write_text(""), ["train_drug.csv", "empty"]),
    "header only": (lambda d: (d / "test_features.csv").write_text("sig_id,cp_type,cp_time,cp_dose,g-0,c-0\n"),
                    ["test_features.csv", "no rows"]),
    "missing column": (lambda d: edit(d, "train_features", lambda f: f.drop(columns="cp_dose")),
                       ["train_features.csv", "column 'cp_dose'", "missing column"]),
    "missing sig_id column": (lambda d: edit(d, "train_targets_scored", lambda f: f.drop(columns="sig_id")),
                              ["train_targets_scored.csv", "column 'sig_id'"]),
    "no genes": (lambda d: edit(d, "train_features", lambda f: f.drop(columns=[c for c in f if c.startswith("g-")])),
                 ["train_features.csv", "no gene-expression column"]),
    "unknown cp_type": (lambda d: edit(d, "train_features", set_cell("cp_type", 7, "trt_xx")),
                        ["train_features.csv", "column 'cp_type'", "row 7", "trt_xx"]),
    "unknown cp_time": (lambda d: edit(d, "train_features", set_cell("cp_time", 9, "36")),
                        ["train_features.csv", "column 'cp_time'", "row 9", "'36'"]),
    "unknown cp_dose": (lambda d: edit(d, "test_features", set_cell("cp_dose", 3, "D3")),
                        ["test_features.csv", "column 'cp_dose'", "row 3", "D3"]),
    "NaN feature": (lambda d: edit(d, "train_features", set_cell("g-2", 11, "")),
                    ["train_features.csv", "column 'g-2'", "row 11", "NaN"]),
    "inf feature": (lambda d: edit(d, "train_features", set_cell("c-1", 4, "inf")),
                    ["train_features.csv", "column 'c-1'", "row 4", "infinite"]),
    "non-numeric feature": (lambda d: edit(d, "train_features", set_cell("g-0", 5, "abc")),
                            ["train_features.csv", "column 'g-0'", "row 5", "non-numeric", "'abc'"]),
    "duplicate sig_id": (lambda d: edit(d, "train_features", set_cell("sig_id", 8, "id_a000002")),
                         ["train_features.csv", "column 'sig_id'", "row 8", "duplicate", "row 3"]),
    "duplicate header": (lambda d: (d / "train_drug.csv").write_text("sig_id,drug_id,drug_id\nid_a000000,x,x\n"),
                         ["train_drug.csv", "drug_id", "twice"]),
    "targets ids differ": (lambda d: edit(d, "train_targets_scored", set_cell("sig_id", 6, "id_zzz")),
                           ["train_targets_scored.csv", "id_a000005", "missing from"]),
    "drug ids differ": (lambda d: edit(d, "train_drug", lambda f: f.iloc[:-1]),
                        ["train_drug.csv", "id_a00003b", "missing from"]),
    "non-binary target": (lambda d: edit(d, "train_targets_scored", set_cell("target_1_inhibitor", 12, "2")),
                          ["train_targets_scored.csv", "column 'target_1_inhibitor'", "row 12", "non-binary"]),
    "NaN target": (lambda d: edit(d, "train_targets_nonscored", set_cell("other_2_agonist", 13, "")),
                   ["train_targets_nonscored.csv", "column 'other_2_agonist'", "row 13", "NaN"]),
    "text target": (lambda d: edit(d, "train_targets_scored", set_cell("target_0_inhibitor", 2, "yes")),
                    ["train_targets_scored.csv", "column 'target_0_inhibitor'", "row 2", "'yes'"]),
    "submission extra column": (
        lambda d: edit(d, "sample_submission", lambda f: f.rename(columns={"target_3_inhibitor": "bogus"})),
        ["sample_submission.csv", "column 'target_3_inhibitor'", "missing scored target"]),
    "submission ids differ": (lambda d: edit(d, "sample_submission", set_cell("sig_id", 2, "id_other")),
                              ["sample_submission.csv", "id_b000001"]),
    "test lacks a gene": (lambda d: edit(d, "test_features", lambda f: f.drop(columns="g-3")),
                          ["test_features.csv", "column 'g-3'", "missing column"]),
    "not a directory": (lambda d: shutil.rmtree(d) or d.write_text("x"), ["not a directory"]),
    "no such directory": (lambda d: shutil.rmtree(d), ["no such directory"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case: str, kaggle_dir: Path, capsys: pytest.CaptureFixture) -> None:
    break_it, expected = BAD_INPUTS[case]
    break_it(kaggle_dir)
    code, out, err = run_cli(["data", "validate", str(kaggle_dir)], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    with pytest.raises(DataError):
        load(kaggle_dir)


def test_positive_targets_on_controls_warn(kaggle_dir: Path, capsys: pytest.CaptureFixture) -> None:
    edit(kaggle_dir, "train_targets_scored", set_cell("target_2_inhibitor", 11, "1"))  # row 11 is a control
    with pytest.warns(DataWarning, match=r"1 control row.*row 11"):
        load(kaggle_dir)
    code, out, err = run_cli(["data", "validate", str(kaggle_dir)], capsys)
    assert code == 0 and out.startswith("ok:")
    assert err.strip().startswith("warning:") and "row 11" in err and len(err.strip().splitlines()) == 1


def test_validate_and_describe_cli(kaggle_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(["data", "validate", str(kaggle_dir)], capsys)
    assert code == 0
    assert "60 train rows, 5 genes, 3 cells, 4 scored targets, 3 nonscored targets, 21 drugs, 12 test rows" in out
    code, out, _ = run_cli(["data", "describe", str(kaggle_dir)], capsys)
    assert code == 0
    for word in ("train rows", "drugs", "control rows", "genes", "cells", "rows with no label", "most frequent",
                 "least frequent", "target_0_inhibitor"):
        assert word in out


def test_console_script_exit_code_and_no_traceback(tmp_path: Path) -> None:
    command = moa_tune_command()
    result = subprocess.run([*command, "data", "validate", str(tmp_path / "absent")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'absent'}: no such directory"]
    usage = subprocess.run([*command, "data", "nosuchcommand"], capture_output=True, text=True)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
