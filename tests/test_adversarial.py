"""moa_tune.adversarial: train-vs-test classifier AUC and shift ranking, its CLI and its report section.

Everything runs on the synthetic ``tiny`` preset (600 train, 150 test rows), whose test rows are new
drugs from the same distribution as train: the unshifted case. Shifted cases move known columns of
its test rows.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import moa_tune_command, subprocess_env
from moa_tune.adversarial import AUC_MEANINGS, adversarial_validation, auc_meaning, feature_matrix
from moa_tune.data import MoaData
from moa_tune.errors import ConfigError, DataError
from moa_tune.report import write_report
from moa_tune.synth import generate, write

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny() -> MoaData:
    return generate("tiny", seed=0)


def shifted(data: MoaData, by: float = 1.0) -> tuple[MoaData, str, str]:
    """``data`` with its test rows' middle gene moved up and middle cell moved down by ``by`` train SDs."""
    g, c = data.train.n_genes // 2, data.train.n_cells // 2
    genes, cells = data.test.genes.copy(), data.test.cells.copy()
    genes[:, g] += by * data.train.genes[:, g].std()
    cells[:, c] -= by * data.train.cells[:, c].std()
    test = replace(data.test, genes=genes, cells=cells)
    return replace(data, test=test), data.train.gene_columns[g], data.train.cell_columns[c]


def test_unshifted_data_looks_alike_and_row_wise_folds_would_say_otherwise(tiny: MoaData) -> None:
    result = adversarial_validation(tiny)
    assert abs(result.auc - 0.5) < 0.1, result.auc
    assert result.meaning == "train and test look alike"
    assert len(result.fold_aucs) == 5 and result.blocks_used == 50
    assert (result.train_rows_used, result.test_rows_used) == (len(tiny.train), len(tiny.test))
    assert not result.subsampled
    # Every row its own block and no drug ids: row-wise folds recognise the test drugs' replicates.
    row_wise = adversarial_validation(replace(tiny, drug_id=None), {"blocks": 100_000, "folds": 3})
    assert row_wise.auc > 0.75 > result.auc + 0.1, (row_wise.auc, result.auc)


def test_shifted_columns_give_a_high_auc_and_rank_first(tiny: MoaData) -> None:
    data, gene, cell = shifted(tiny)
    result = adversarial_validation(data, {"folds": 4, "seed": 3})
    assert result.auc > 0.8, result.auc
    assert {s.feature for s in result.top(2)} == {gene, cell}
    by_name = {s.feature: s for s in result.shifts}
    assert by_name[gene].mean_shift > 0.8 and by_name[cell].mean_shift < -0.8
    assert by_name[gene].ks > 1.5 * result.shifts[2].ks
    # every column ranked once, most shifted first; the JSON form is plain and complete
    names = feature_matrix(tiny.train)[1]
    assert sorted(s.feature for s in result.shifts) == sorted(names)
    assert len(names) == tiny.train.n_genes + tiny.train.n_cells + 2 and names[-2:] == ("cp_time", "cp_dose")
    ks = [s.ks for s in result.shifts]
    assert ks == sorted(ks, reverse=True)
    exported = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert exported["auc"] == pytest.approx(result.auc) and exported["params"]["folds"] == 4
    assert [f["feature"] for f in exported["features"][:2]] == [s.feature for s in result.top(2)]


def test_a_shifted_treatment_mix_is_found_in_the_meta_columns(tiny: MoaData) -> None:
    test = replace(tiny.test, cp_time=np.full(len(tiny.test), 72))
    result = adversarial_validation(replace(tiny, test=test), {"folds": 3, "max_rows": 300})
    assert result.shifts[0].feature == "cp_time" and result.shifts[0].ks > 0.5
    assert result.subsampled and (result.train_rows_used, result.test_rows_used) == (300, len(tiny.test))


def test_bad_input_is_one_line_naming_the_problem(tiny: MoaData) -> None:
    with pytest.raises(DataError, match="no test_features.csv"):
        adversarial_validation(replace(tiny, test=None))
    with pytest.raises(DataError, match=r"4 test row\(s\); .* 5 folds needs at least 10"):
        adversarial_validation(replace(tiny, test=tiny.test.take(np.arange(4))))
    with pytest.raises(ConfigError, match="'adversarial.folds' parameter must be an int in"):
        adversarial_validation(tiny, {"folds": 1})
    with pytest.raises(ConfigError, match="Did you mean 'adversarial.max_rows'"):
        adversarial_validation(tiny, {"max_row": 10})
    with pytest.raises(ConfigError, match=r"'adversarial.max_rows' parameter must be 0 or at least .* \(6\)"):
        adversarial_validation(tiny, {"max_rows": 5, "folds": 3})
    with pytest.raises(ConfigError, match=r"'adversarial.blocks' parameter must be at least .* \(5\). Got 4"):
        adversarial_validation(tiny, {"blocks": 4})
    assert [auc_meaning(b - 1e-9) for b, _ in AUC_MEANINGS] == [m for _, m in AUC_MEANINGS]


def test_cli_prints_auc_and_top_columns_writes_json_and_needs_a_test_set(tmp_path: Path) -> None:
    directory = write("tiny", 0, tmp_path / "tiny")
    env = subprocess_env(tmp_path / "home")
    out = tmp_path / "out" / "adversarial.json"
    done = subprocess.run([*moa_tune_command("data", "adversarial", str(directory), "--top", "4", "--folds", "3",
                                             "--json", str(out))], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"adversarial validation of {directory}: 600 of 600 train and 150 of 150 test rows"
    assert lines[2].startswith("ROC AUC 0.") and "3 folds holding out" in lines[2]
    saved = json.loads(out.read_text())
    assert f"ROC AUC {saved['auc']:.3f}" in lines[2]
    top = [f["feature"] for f in saved["features"][:4]]
    assert all(f" {name} " in done.stdout for name in top) and f" {saved['features'][4]['feature']} " not in done.stdout
    assert [line for line in done.stderr.splitlines() if line.startswith("fold ")][-1].startswith("fold 3/3: AUC")
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # written atomically, no leftovers

    (directory / "test_features.csv").unlink()
    (directory / "sample_submission.csv").unlink()
    missing = subprocess.run(moa_tune_command("data", "adversarial", str(directory)), capture_output=True,
                             text=True, env=env, timeout=120)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"error: {directory}: no test_features.csv; adversarial validation compares train and test features"]


def small_sweep(folder: Path) -> Path:
    """A sweep folder of two finished trials (a cheap report: no importances, no collection)."""
    folder.mkdir(parents=True)
    pd.DataFrame({"stage": "direct", "family": "mlp", "trial_id": ["t_0", "t_1"], "state": "completed",
                  "loss": [0.0171, 0.0168], "folds_done": 3, "fold_0_loss": [0.0171, 0.0168]}).to_csv(
        folder / "trials.csv", index=False)
    (folder / "sweep.yaml").write_text("name: shift-demo\ndata: {synth: tiny, seed: 0}\n")
    return folder


def test_report_shows_the_adversarial_section_when_the_data_has_a_test_set(tmp_path: Path, tiny: MoaData) -> None:
    folder = small_sweep(tmp_path / "sweep")
    code = textwrap.dedent(f"""
        import json, sys
        from moa_tune.report import write_report
        path = write_report({str(folder)!r})
        print(json.dumps({{"modules": [m for m in ("ray", "torch") if m in sys.modules]}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["modules"] == []
    text = (folder / "report.html").read_text()
    section = text[text.index('<section id="adversarial">'):]
    assert ">Adversarial validation</h2>" in section and 'href="#adversarial"' in text
    auc = adversarial_validation(tiny).auc  # what the report computed: same data, same defaults
    assert f"<b>{auc:.3f}</b>" in section and "train and test look alike" in section
    assert section.count('<img src="data:image/png;base64,') == 1 and "most shifted columns" in section
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "sweep.yaml", "trials.csv"]

    # no test set, or no data named: a note instead, and nothing computed
    write_report(folder, data=replace(tiny, test=None))
    section = (folder / "report.html").read_text().split('<section id="adversarial">')[1]
    assert "has no test set" in section and "<img" not in section
    (folder / "sweep.yaml").write_text("name: shift-demo\n")
    write_report(folder)
    section = (folder / "report.html").read_text().split('<section id="adversarial">')[1]
    assert "sweep.yaml names no data" in section and "<img" not in section
