"""`moa-tune data synth` through the CLI: writes a loadable directory, refuses bad input with exit 2."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import run_cli
from moa_tune import load
from moa_tune.synth import generate


def test_synth_cli_writes_the_preset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "tiny"
    code, text, err = run_cli(["data", "synth", "--preset", "tiny", "--seed", "3", "--out", str(out)], capsys)
    assert code == 0, err
    assert f"wrote {out}" in text
    data = load(out)
    expected = generate("tiny", seed=3)
    np.testing.assert_array_equal(data.scored, expected.scored)
    np.testing.assert_array_equal(data.drug_id, expected.drug_id)
    assert {p.name for p in out.iterdir()} == {"train_features.csv", "train_targets_scored.csv",
                                               "train_targets_nonscored.csv", "train_drug.csv",
                                               "test_features.csv", "sample_submission.csv"}
    code, _, err = run_cli(["data", "synth", "--preset", "tiny", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["data", "synth", "--preset", "tiny", "--seed", "4", "--out", str(out), "--force"], capsys)
    assert code == 0 and not np.array_equal(load(out).scored, data.scored)


def test_synth_cli_bad_input(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["data", "synth", "--preset", "huge", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "huge" in err and "tiny" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["data", "synth", "--preset", "tiny", "--labels", str(tmp_path / "nolabels"),
                            "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nolabels" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_synth_cli_labels_default_to_the_full_feature_counts(tmp_path: Path, capsys) -> None:
    """Semi-real mode without --preset keeps the real problem's gene and cell counts (full preset)."""
    from moa_tune.data import save
    from moa_tune.synth import PRESETS

    labels = save(generate("tiny", seed=1), tmp_path / "labels")
    out = tmp_path / "semi"
    code, text, err = run_cli(["data", "synth", "--labels", str(labels), "--out", str(out)], capsys)
    assert code == 0, err
    data = load(out)
    assert (data.train.n_genes, data.train.n_cells) == (PRESETS["full"].n_genes, PRESETS["full"].n_cells)
    np.testing.assert_array_equal(data.scored, load(labels).scored)
