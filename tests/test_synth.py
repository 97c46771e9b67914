"""moa_tune.synth: the synthetic generator keeps the real data's schema and structure."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import skew

from moa_tune import ConfigError, DataError, load, synth
from moa_tune.data import CP_DOSES, CP_TIMES, FILES, MoaData, find_file

REAL_LABELS = Path(__file__).resolve().parents[2] / "shared/data/lish-moa-labels"
#: a semi-real preset with few features, to keep the real-label tests fast
NARROW = replace(synth.PRESETS["full"], name="narrow", n_genes=32, n_cells=8, n_pathways=8, n_test=300)
HEX9 = re.compile(r"^[0-9a-f]{9}$")


@pytest.fixture(scope="module")
def tiny_synth() -> MoaData:
    return synth.generate("tiny", seed=0)


@pytest.fixture(scope="module")
def small_synth() -> MoaData:
    return synth.generate("small", seed=0)


@pytest.fixture(scope="module")
def semi_real() -> MoaData:
    if find_file(REAL_LABELS, "train_targets_scored") is None:
        pytest.skip(f"real labels not found at {REAL_LABELS}")
    return synth.generate(NARROW, seed=0, labels=REAL_LABELS)


def arrays(data: MoaData) -> dict[str, np.ndarray]:
    out = {"scored": data.scored, "nonscored": data.nonscored, "drug_id": data.drug_id}
    for part in ("train", "test"):
        table = getattr(data, part)
        for name in ("sig_id", "cp_type", "cp_time", "cp_dose", "genes", "cells"):
            out[f"{part}.{name}"] = getattr(table, name)
    return out


def drug_label_conflicts(data: MoaData) -> int:
    """Drugs whose rows do not all carry the same scored + nonscored label vector."""
    labels = np.hstack([data.scored, data.nonscored]).astype(np.int64)
    frame = pd.DataFrame(labels).groupby(data.drug_id)
    return int((frame.max() != frame.min()).any(axis=1).sum())


# ------------------------------------------------------------------------------ API, determinism


def test_presets_have_the_documented_sizes() -> None:
    assert set(synth.PRESETS) >= {"tiny", "small", "full"}
    full = synth.PRESETS["full"]
    assert (full.n_train, full.n_test, full.n_genes, full.n_cells, full.n_scored, full.n_nonscored) == (
        23814, 3982, 772, 100, 206, 402)
    with pytest.raises(Exception):
        full.n_train = 1  # frozen


def test_same_seed_is_bit_identical_and_another_seed_differs(tiny_synth: MoaData) -> None:
    again, other = synth.generate("tiny", seed=0), synth.generate("tiny", seed=1)
    for name, array in arrays(tiny_synth).items():
        assert np.array_equal(array, arrays(again)[name]), name
        assert array.dtype == arrays(again)[name].dtype
    assert tiny_synth.scored_columns == again.scored_columns and tiny_synth.nonscored_columns == again.nonscored_columns
    assert not np.array_equal(tiny_synth.train.genes, other.train.genes[: len(tiny_synth.train)])
    assert set(tiny_synth.train.sig_id).isdisjoint(other.train.sig_id)
    # column names depend on the preset only, so seeds are comparable
    assert tiny_synth.scored_columns == other.scored_columns and tiny_synth.nonscored_columns == other.nonscored_columns


def test_generate_accepts_a_preset_object_and_defaults_to_small() -> None:
    preset = replace(synth.PRESETS["tiny"], name="mine", n_train=200, n_test=0, n_genes=10, n_cells=4)
    data = synth.generate(preset, seed=2)
    assert len(data.train) == 200 and data.test is None
    assert data.train.genes.shape == (200, 10) and data.train.cells.shape == (200, 4)
    assert synth.generate.__defaults__[0] is None  # None = small (full in semi-real mode)


def test_unknown_preset_is_a_config_error_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        synth.generate("huge")
    message = str(info.value)
    assert "huge" in message and "\n" not in message
    for name in synth.PRESETS:
        assert name in message


def test_invalid_preset_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        replace(synth.PRESETS["tiny"], n_families=100)
    with pytest.raises(ConfigError):
        replace(synth.PRESETS["tiny"], n_genes=0)


# ------------------------------------------------------------------------------ schema


def test_kaggle_schema_round_trips_through_save_and_load(tmp_path: Path, tiny_synth: MoaData) -> None:
    out = synth.write("tiny", 0, tmp_path / "moa")
    assert out == tmp_path / "moa"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.csv" for stem in FILES)
    loaded = load(out)
    assert loaded.scored_columns == tiny_synth.scored_columns and loaded.nonscored_columns == tiny_synth.nonscored_columns
    assert np.array_equal(loaded.scored, tiny_synth.scored) and np.array_equal(loaded.nonscored, tiny_synth.nonscored)
    assert np.array_equal(loaded.drug_id, tiny_synth.drug_id)
    for part in ("train", "test"):
        a, b = getattr(tiny_synth, part), getattr(loaded, part)
        assert a.gene_columns == b.gene_columns and a.cell_columns == b.cell_columns
        for name in ("sig_id", "cp_type", "cp_time", "cp_dose"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (part, name)
        for name in ("genes", "cells"):
            assert getattr(a, name).shape == getattr(b, name).shape
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=0, atol=5.1e-5)
    with pytest.raises(DataError):
        synth.write("tiny", 0, out)  # not empty and no overwrite
    synth.write("tiny", 1, out, overwrite=True)
    assert not np.array_equal(load(out).train.sig_id, tiny_synth.train.sig_id)


def test_identifiers_and_target_names_look_like_kaggle(tiny_synth: MoaData, small_synth: MoaData) -> None:
    for data in (tiny_synth, small_synth):
        ids = np.concatenate([data.train.sig_id, data.test.sig_id])
        assert all(s.startswith("id_") and HEX9.match(s[3:]) for s in ids)
        assert len(set(ids)) == len(ids)
        assert all(HEX9.match(d) for d in data.drug_id)
        names = data.scored_columns + data.nonscored_columns
        assert len(set(names)) == len(names)
        assert all(re.match(r"^[a-z0-9][a-z0-9_\-]*_[a-z]+$", n) for n in names)
        assert all(n.rsplit("_", 1)[1] in synth.ACTIONS for n in names)
        assert list(data.scored_columns) == sorted(data.scored_columns)
        assert data.train.genes.dtype == np.float32 and data.train.cells.dtype == np.float32
        assert set(data.train.cp_time) == set(CP_TIMES) and set(data.train.cp_dose) == set(CP_DOSES)


# ------------------------------------------------------------------------------ structure


def test_controls_are_one_drug_with_all_zero_targets(tiny_synth: MoaData, small_synth: MoaData) -> None:
    for data in (tiny_synth, small_synth):
        control = data.train.is_control
        assert abs(control.mean() - synth.CONTROL_FRACTION) < 0.005
        assert np.all(data.drug_id[control] == synth.CONTROL_DRUG_ID)
        assert not np.any(data.drug_id[~control] == synth.CONTROL_DRUG_ID)
        assert data.scored[control].sum() == 0 and data.nonscored[control].sum() == 0
        assert abs(data.test.is_control.mean() - synth.CONTROL_FRACTION) < 0.01


def test_every_drug_has_one_label_vector(tiny_synth: MoaData, small_synth: MoaData) -> None:
    assert drug_label_conflicts(tiny_synth) == 0
    assert drug_label_conflicts(small_synth) == 0


def test_replicates_cycle_through_time_and_dose(small_synth: MoaData) -> None:
    counts = pd.Series(small_synth.drug_id[~small_synth.train.is_control]).value_counts()
    assert (counts == 6).mean() > 0.75  # most drugs: one row per time x dose
    assert (counts > 18).sum() == synth.PRESETS["small"].n_frequent_drugs  # a few frequent drugs
    frame = pd.DataFrame({"drug": small_synth.drug_id, "time": small_synth.train.cp_time, "dose": small_synth.train.cp_dose})
    six = counts.index[counts == 6]
    combos = frame[frame.drug.isin(six)].groupby("drug")[["time", "dose"]].apply(
        lambda f: len(set(zip(f.time, f.dose))))
    assert (combos == 6).all()


def test_labels_are_sparse_and_heavy_tailed(small_synth: MoaData) -> None:
    per_row = small_synth.scored.sum(axis=1)
    assert 0.002 <= small_synth.scored.mean() <= 0.005
    assert 0.30 <= (per_row == 0).mean() <= 0.50
    assert (per_row >= 2).sum() > 0.01 * len(per_row) and per_row.max() >= 3  # a few multi-label rows
    per_target = small_synth.scored.sum(axis=0)
    assert per_target.min() >= 1 and (per_target <= 12).sum() >= 10  # every target seen, many barely
    assert per_target.max() >= 5 * np.median(per_target)
    nonscored = small_synth.nonscored.sum(axis=0)
    assert 0 < (nonscored == 0).sum() < 0.5 * len(nonscored)


def test_nonscored_targets_are_relatives_of_scored_ones(small_synth: MoaData) -> None:
    """Every nonscored target has a scored relative in its family; partners come with it."""
    universe = synth._synthetic_universe(synth.PRESETS["small"])
    n = universe.n_scored
    sibling, family = universe.sibling[n:], universe.family
    assert (sibling >= 0).all() and (sibling < n).all()
    assert np.array_equal(family[sibling], family[n:])
    partner = universe.partner[n:]
    assert 0 < partner.sum() < len(partner)
    drugs = pd.DataFrame(np.hstack([small_synth.scored, small_synth.nonscored])).groupby(small_synth.drug_id).max().to_numpy()
    scored, nonscored = drugs[:, :n], drugs[:, n:]
    with_partner = [(d, k) for d, k in np.argwhere(nonscored[:, partner]) for k in [np.flatnonzero(partner)[k]]]
    assert len(with_partner) >= 20
    together = np.mean([scored[d, sibling[k]] for d, k in with_partner])
    assert together > 0.9  # a partner label says "this drug has that scored target"
    base = scored.mean(axis=0)[sibling[partner]].mean()
    assert together > 10 * base


def test_feature_ranges_and_shapes_of_distributions(small_synth: MoaData) -> None:
    genes, cells = small_synth.train.genes, small_synth.train.cells
    treated = ~small_synth.train.is_control
    assert genes.min() >= -10 and genes.max() <= 10
    assert cells.min() >= -10 and cells.max() <= 5
    assert (cells <= -9.9).any()  # cytotoxic drugs reach the floor
    assert np.median(skew(cells[treated], axis=0)) < -0.5
    assert abs(np.median(genes)) < 0.2 and np.percentile(np.abs(genes), 50) < 2
    # cells are strongly correlated across cell lines
    corr = np.corrcoef(cells[treated].T)
    assert np.median(corr[np.triu_indices_from(corr, 1)]) > 0.5
    # effects grow with dose and time; controls are near zero
    strength = np.abs(genes).mean(axis=1)
    time, dose = small_synth.train.cp_time, small_synth.train.cp_dose
    assert strength[treated & (dose == "D2")].mean() > strength[treated & (dose == "D1")].mean()
    assert strength[treated & (time == 72)].mean() > strength[treated & (time == 48)].mean() > \
        strength[treated & (time == 24)].mean()
    assert strength[~treated].mean() < strength[treated].mean()
    for table in (small_synth.train, small_synth.test):
        assert np.isfinite(table.genes).all() and np.isfinite(table.cells).all()


def test_test_rows_are_fresh_and_sized_by_the_preset(small_synth: MoaData) -> None:
    assert len(small_synth.test) == synth.PRESETS["small"].n_test
    assert set(small_synth.test.sig_id).isdisjoint(small_synth.train.sig_id)


def test_full_preset_has_the_real_shape() -> None:
    data = synth.generate("full", seed=0)
    assert data.train.genes.shape == (23814, 772) and data.train.cells.shape == (23814, 100)
    assert data.scored.shape == (23814, 206) and data.nonscored.shape == (23814, 402)
    assert len(data.test) == 3982
    drugs = pd.Series(data.drug_id).value_counts()
    assert 3000 <= len(drugs) <= 3600 and (drugs > 18).sum() == 10  # 9 frequent drugs + the control
    assert 0.0025 <= data.scored.mean() <= 0.0045 and 0.33 <= (data.scored.sum(axis=1) == 0).mean() <= 0.45
    assert 40 <= (data.nonscored.sum(axis=0) == 0).sum() <= 110  # real: 71 of 402 empty


# ------------------------------------------------------------------------------ semi-real mode


@pytest.mark.real_labels
def test_semi_real_keeps_the_real_labels_exactly(semi_real: MoaData) -> None:
    scored = pd.read_csv(REAL_LABELS / "train_targets_scored.csv.zip")
    drug = pd.read_csv(REAL_LABELS / "train_drug.csv.gz")
    assert semi_real.scored.sum() == 16844 and semi_real.scored.shape == (23814, 206)
    assert np.array_equal(semi_real.train.sig_id, scored.sig_id.to_numpy(dtype=str))
    assert np.array_equal(semi_real.scored, scored.iloc[:, 1:].to_numpy())
    assert semi_real.scored_columns == tuple(scored.columns[1:])
    assert semi_real.nonscored.shape == (23814, 402) and (semi_real.nonscored.sum(axis=0) == 0).sum() == 71
    assert np.array_equal(semi_real.drug_id, drug.set_index("sig_id").loc[scored.sig_id, "drug_id"].to_numpy(dtype=str))
    assert len(np.unique(semi_real.drug_id)) == 3289
    control = semi_real.train.is_control
    assert np.array_equal(control, semi_real.drug_id == synth.CONTROL_DRUG_ID) and control.sum() == 1866
    assert semi_real.train.genes.shape == (23814, 32) and semi_real.train.cells.shape == (23814, 8)
    assert len(semi_real.test) == 300 and set(semi_real.test.sig_id).isdisjoint(semi_real.train.sig_id)
    assert 0.05 < semi_real.test.is_control.mean() < 0.11
    assert semi_real.train.genes.min() >= -10 and semi_real.train.cells.min() >= -10
    # replicates of a drug cycle through the 6 time x dose combinations
    frame = pd.DataFrame({"drug": semi_real.drug_id, "t": semi_real.train.cp_time, "d": semi_real.train.cp_dose})
    sizes = frame.groupby("drug").size()
    combos = frame[frame.drug.isin(sizes.index[sizes == 6])].groupby("drug")[["t", "d"]].apply(
        lambda f: len(set(zip(f.t, f.d))))
    assert (combos == 6).all()


@pytest.mark.real_labels
def test_semi_real_features_follow_the_labels(semi_real: MoaData) -> None:
    """Treated rows with a label move further from zero than controls; replicates agree."""
    strength = np.abs(semi_real.train.genes).mean(axis=1)
    control = semi_real.train.is_control
    assert strength[~control].mean() > 1.2 * strength[control].mean()


def write_labels(directory: Path, n: int = 30, drugs: bool = True) -> Path:
    directory.mkdir(parents=True)
    ids = [f"id_{i:09x}" for i in range(n)]
    scored = pd.DataFrame({"sig_id": ids, "a_inhibitor": [i % 3 == 0 for i in range(n)],
                           "b_agonist": [i % 5 == 0 for i in range(n)]}).astype({"a_inhibitor": int, "b_agonist": int})
    scored.loc[:5, ["a_inhibitor", "b_agonist"]] = 0
    scored.to_csv(directory / "train_targets_scored.csv", index=False)
    if drugs:
        drug = ["cacb2b860" if i < 6 else f"{i // 6:09x}" for i in range(n)]
        pd.DataFrame({"sig_id": ids, "drug_id": drug}).to_csv(directory / "train_drug.csv.gz", index=False)
    return directory


def test_semi_real_on_a_hand_made_label_folder(tmp_path: Path) -> None:
    preset = replace(synth.PRESETS["tiny"], n_test=20)
    data = synth.generate(preset, seed=0, labels=write_labels(tmp_path / "labels"))
    assert len(data.train) == 30 and data.nonscored is None and data.scored_columns == ("a_inhibitor", "b_agonist")
    assert data.train.is_control.sum() == 6 and len(data.test) == 20
    no_drugs = synth.generate(preset, seed=0, labels=write_labels(tmp_path / "plain", drugs=False))
    assert no_drugs.drug_id is None and not no_drugs.train.is_control.any()  # nothing tells controls apart


def test_semi_real_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train_targets_scored"):
        synth.generate("tiny", labels=tmp_path)  # exists, but no label file
    with pytest.raises(DataError, match="no such directory"):
        synth.generate("tiny", labels=tmp_path / "missing")
    bad = write_labels(tmp_path / "bad")
    frame = pd.read_csv(bad / "train_targets_scored.csv")
    frame.loc[3, "a_inhibitor"] = 2
    frame.to_csv(bad / "train_targets_scored.csv", index=False)
    with pytest.raises(DataError, match=r"train_targets_scored\.csv.*a_inhibitor"):
        synth.generate("tiny", labels=bad)
    wrong = write_labels(tmp_path / "wrong")
    pd.DataFrame({"sig_id": ["id_x"], "drug_id": ["y"]}).to_csv(wrong / "train_drug.csv.gz", index=False)
    with pytest.raises(DataError, match=r"train_drug\.csv\.gz"):
        synth.generate("tiny", labels=wrong)
    (wrong / "train_targets_nonscored.csv").write_text("sig_id,x_inhibitor\nid_1,0\n")
    with pytest.raises(DataError, match=r"train_targets_nonscored\.csv"):
        synth.generate("tiny", labels=wrong)
