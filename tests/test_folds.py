"""moa_tune.folds: drug-aware and multilabel folds, determinism, prevalence, save/load, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from moa_tune import DataError, load
from moa_tune.data import Features, MoaData
from moa_tune.folds import DrugAwareKFold, Folds, make_folds


def labels_only(real_labels: Path) -> MoaData:
    """The real labels and drugs with placeholder features (the folds never look at features)."""
    scored = pd.read_csv(real_labels / "train_targets_scored.csv.zip")
    drugs = pd.read_csv(real_labels / "train_drug.csv.gz")
    n = len(scored)
    control = (drugs.drug_id == "cacb2b860").to_numpy()
    train = Features(scored.sig_id.to_numpy(dtype=str), np.where(control, "ctl_vehicle", "trt_cp"),
                     np.full(n, 24), np.full(n, "D1"), np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32),
                     ("g-0",), ("c-0",))
    return MoaData(train, scored.drop(columns="sig_id").to_numpy(np.uint8), tuple(scored.columns[1:]),
                   drug_id=drugs.drug_id.to_numpy(dtype=str))


def straddling_rare_drugs(data: MoaData, folds: Folds, threshold: int) -> int:
    frame = pd.DataFrame({"drug": data.drug_id, "fold": folds.fold})
    frame = frame[frame.fold >= 0]
    per_drug = frame.groupby("drug").agg(n=("fold", "size"), folds=("fold", "nunique"))
    return int(((per_drug.n <= threshold) & (per_drug.folds > 1)).sum())


@pytest.mark.real_labels
def test_drug_aware_folds_on_the_real_labels(real_labels: Path) -> None:
    data = labels_only(real_labels)
    folds = make_folds(data, n_splits=5, scheme="drug", seed=0)
    assert straddling_rare_drugs(data, folds, 18) == 0
    assert (folds.fold[data.train.is_control] == -1).all()
    assert (folds.fold[~data.train.is_control] >= 0).all()
    sizes = np.bincount(folds.fold[folds.used])
    assert sizes.min() > 0.9 * sizes.mean()
    whole = data.scored[folds.used].mean(axis=0)
    for _, valid in folds.split():
        assert np.abs(data.scored[valid].mean(axis=0) - whole).max() < 0.005
        assert abs(data.scored[valid].mean() - whole.mean()) < 0.0003
    # rows of the frequent drugs really are spread over folds (stratified one by one)
    counts = pd.Series(data.drug_id).value_counts()
    frequent = counts[(counts > 18) & (counts.index != "cacb2b860")].index
    assert len(frequent) == 9
    assert all(len(np.unique(folds.fold[data.drug_id == d])) == 5 for d in frequent)


def test_splitter_protocol_and_threshold() -> None:
    rng = np.random.default_rng(1)
    drugs = np.repeat(np.arange(60), rng.choice([3, 6, 12, 40], 60, p=[0.4, 0.4, 0.15, 0.05]))
    drug_labels = (rng.random((60, 5)) < 0.2).astype(int)
    y = drug_labels[drugs]
    splitter = DrugAwareKFold(n_splits=4, threshold=6, random_state=3)
    assert splitter.get_n_splits() == 4
    seen = np.zeros(len(y), dtype=int)
    for train, valid in splitter.split(np.zeros(len(y)), y, groups=drugs):
        assert len(np.intersect1d(train, valid)) == 0 and len(train) + len(valid) == len(y)
        seen[valid] += 1
        small = [d for d in np.unique(drugs[valid]) if (drugs == d).sum() <= 6]
        assert not np.isin(small, drugs[train]).any()
    assert (seen == 1).all()
    with pytest.raises(ValueError, match="groups"):
        list(splitter.split(None, y, None))


def test_deterministic_per_seed_and_saved(kaggle_dir: Path, tmp_path: Path) -> None:
    data = load(kaggle_dir)
    a = make_folds(data, 3, "drug", seed=7, threshold=3)
    b = make_folds(data, 3, "drug", seed=7, threshold=3)
    c = make_folds(data, 3, "drug", seed=8, threshold=3)
    np.testing.assert_array_equal(a.fold, b.fold)
    assert not np.array_equal(a.fold, c.fold)
    path = a.save(tmp_path / "out" / "folds.npz")
    back = Folds.load(path)
    np.testing.assert_array_equal(back.fold, a.fold)
    assert back.settings() == a.settings()
    back.check(data)
    with np.load(path, allow_pickle=False) as archive:  # loads without pickle
        assert set(archive.files) == {"fold", "sig_id", "settings"}
    assert [p.name for p in path.parent.iterdir()] == ["folds.npz"]


def test_controls_kept_on_request_and_multilabel_scheme(kaggle_dir: Path) -> None:
    data = load(kaggle_dir)
    kept = make_folds(data, 3, "multilabel", seed=0, keep_controls=True)
    assert (kept.fold >= 0).all() and kept.scheme == "multilabel"
    dropped = make_folds(data, 3, "multilabel", seed=0)
    assert (dropped.fold == -1).sum() == data.train.is_control.sum()


def test_without_drug_file_a_clear_message_or_the_chosen_fallback(kaggle_dir: Path) -> None:
    (kaggle_dir / "train_drug.csv").unlink()
    data = load(kaggle_dir)
    with pytest.raises(DataError, match="drug-aware folds need train_drug.csv.*multilabel"):
        make_folds(data, 3, "drug")
    with pytest.warns(UserWarning, match="no train_drug.csv"):
        folds = make_folds(data, 3, "auto")
    assert folds.scheme == "multilabel"


def test_folds_for_other_data_are_rejected(kaggle_dir: Path, tmp_path: Path) -> None:
    data = load(kaggle_dir)
    folds = make_folds(data, 3, "drug", threshold=3)
    other = MoaData(data.train.take(np.arange(10)), data.scored[:10], data.scored_columns, source="other")
    with pytest.raises(DataError, match="not the 10 train rows"):
        folds.check(other)
    (tmp_path / "bad.npz").write_bytes(b"nonsense")
    with pytest.raises(DataError, match="not a folds file"):
        Folds.load(tmp_path / "bad.npz")


def test_folds_cli(kaggle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "f.npz"
    code, text, _ = run_cli(["data", "folds", str(kaggle_dir), "--n-splits", "3", "--threshold", "3",
                             "--out", str(out)], capsys)
    assert code == 0 and out.is_file() and "left out" in text
    (kaggle_dir / "train_drug.csv").unlink()
    code, text, err = run_cli(["data", "folds", str(kaggle_dir), "--out", str(tmp_path / "g.npz")], capsys)
    assert code == 2 and "train_drug.csv" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.npz").exists()
