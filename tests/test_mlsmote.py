"""moa_tune.mlsmote and its hook in cross_validate: training rows only, rare labels, seeds, parameters."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FAST_TRAIN, SMALL_MLP
from moa_tune import ConfigError
from moa_tune.config import resolve_config
from moa_tune.features import FeaturePipeline
from moa_tune.mlsmote import imbalance_ratios, mlsmote, nominal_blocks, oversample, rare_labels
from moa_tune.train import CVResult, FoldReport, cross_validate

ON = {"mlsmote": 0.5, "mlsmote_neighbors": 5, "mlsmote_threshold": 1.0}


@pytest.fixture(scope="module")
def fold(tiny):
    """The first fold of the tiny preset: (x_train, scored y_train, pipeline groups, train rows, valid rows)."""
    data, folds = tiny
    train_rows, valid_rows = next(iter(folds.split()))
    pipeline = FeaturePipeline().fit(data.train.take(train_rows))
    x = pipeline.transform(data.train.take(train_rows))
    return x, data.scored[train_rows].astype(np.float32), pipeline.groups_, train_rows, valid_rows


def n_pairs(y: np.ndarray, threshold: float = 1.0) -> int:
    """One pass of the paper: a synthetic row per positive row of each rare label with >= 2 positives."""
    counts = (y > 0).sum(axis=0)[rare_labels(y, threshold)]
    return int(counts[counts >= 2].sum())


def run(config, data, folds) -> tuple[list[FoldReport], CVResult]:
    events = list(cross_validate(config, data, folds))
    assert isinstance(events[-1], CVResult)
    return events[:-1], events[-1]


def test_off_by_default_changes_nothing(tiny, fold) -> None:
    data, folds = tiny
    x, y, groups, _, _ = fold
    train = resolve_config({"family": "linear"})["train"]
    assert train["mlsmote"] == 0
    same_x, same_y = oversample(x, y, train, groups=groups, seed=3)
    assert same_x is x and same_y is y
    config = {"family": "linear", "train": {**FAST_TRAIN, "epochs": 1}}
    _, default = run(config, data, folds)
    off = {**config, "train": {**config["train"], "mlsmote": 0.0, "mlsmote_neighbors": 2, "mlsmote_threshold": 3.0}}
    _, explicit = run(off, data, folds)
    np.testing.assert_array_equal(default.oof, explicit.oof)
    np.testing.assert_array_equal(default.test, explicit.test)
    assert default.loss == explicit.loss


def test_synthetic_rows_come_from_training_rows(fold) -> None:
    x, y, groups, train_rows, _ = fold
    extra = mlsmote(x, y, 300, nominal=nominal_blocks(groups), seed=1)
    assert extra.x.shape == (300, x.shape[1]) and extra.y.shape == (300, y.shape[1]) and extra.y.dtype == y.dtype
    assert extra.seed_rows.max() < len(train_rows) and extra.reference_rows.max() < len(train_rows)
    rows = np.arange(300)
    # seed and reference are distinct positives of the rare label, which the synthetic row carries too
    assert (y[extra.seed_rows, extra.labels] == 1).all() and (y[extra.reference_rows, extra.labels] == 1).all()
    assert (extra.seed_rows != extra.reference_rows).all() and (extra.y[rows, extra.labels] == 1).all()
    meta = groups["meta"]
    numeric = np.setdiff1d(np.arange(x.shape[1]), meta)
    low = np.minimum(x[extra.seed_rows], x[extra.reference_rows])[:, numeric]
    high = np.maximum(x[extra.seed_rows], x[extra.reference_rows])[:, numeric]
    assert ((extra.x[:, numeric] >= low) & (extra.x[:, numeric] <= high)).all()  # interpolated between the two
    # nominal columns are copied from a training row: a valid cp_time one-hot and a 0/1 dose
    time_block, dose_block = nominal_blocks(groups)
    assert (extra.x[:, time_block].sum(axis=1) == 1).all() and np.isin(extra.x[:, dose_block], (0, 1)).all()
    assert set(map(tuple, extra.x[:, meta])) <= set(map(tuple, x[:, meta]))
    # oversample keeps the training rows first, untouched, and appends round(amount x rows)
    x_fit, y_fit = oversample(x, y, ON, groups=groups, seed=1)
    assert len(x_fit) == len(x) + round(0.5 * len(x)) and len(y_fit) == len(x_fit)
    np.testing.assert_array_equal(x_fit[:len(x)], x)
    np.testing.assert_array_equal(y_fit[:len(y)], y)


def test_rare_labels_get_more_positives(fold) -> None:
    x, y, _, _, _ = fold
    rare = rare_labels(y)
    counts = (y > 0).sum(axis=0)
    eligible = rare[counts[rare] >= 2]
    assert len(eligible) >= 3
    extra = mlsmote(x, y, n_pairs(y), seed=0)  # one pass of the paper: each pair once
    new_counts = (extra.y > 0).sum(axis=0)
    assert (new_counts[eligible] >= counts[eligible]).all()  # every eligible rare label at least doubles
    assert set(extra.labels) == set(eligible)
    after = imbalance_ratios(np.vstack([y, extra.y]))
    before = imbalance_ratios(y)
    assert after[eligible].mean() < before[eligible].mean()


def test_rows_without_labels_never_seed_and_absent_labels_are_skipped() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.zeros((60, 4), dtype=np.float32)
    y[:30, 0] = 1       # the frequent label
    y[30:33, 1] = 1     # rare, 3 positives
    y[33, 2] = 1        # rare, a single positive: nothing to interpolate with
    # label 3 has no positive: no imbalance ratio, not in the mean, not rare; rows 34.. have no label at all
    # (ratios 1, 10, 30: the mean is 13.7, so half of it makes labels 1 and 2 rare)
    assert np.isinf(imbalance_ratios(y)[3]) and list(rare_labels(y, 0.5)) == [1, 2]
    extra = mlsmote(x, y, 20, neighbors=2, threshold=0.5, seed=0)
    assert set(extra.labels) == {1} and set(extra.seed_rows) <= {30, 31, 32}
    assert set(extra.reference_rows) <= {30, 31, 32} and (extra.y[:, [0, 2, 3]] == 0).all()


def test_deterministic_by_seed(fold) -> None:
    x, y, groups, _, _ = fold
    a = mlsmote(x, y, 150, nominal=nominal_blocks(groups), seed=7)
    b = mlsmote(x, y, 150, nominal=nominal_blocks(groups), seed=7)
    c = mlsmote(x, y, 150, nominal=nominal_blocks(groups), seed=8)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def _bag_ranks(x: np.ndarray, y: np.ndarray, seed_rows, reference_rows, labels) -> np.ndarray:
    """Rank (1 = nearest) of each reference among the seed's fellow positives of the label, by brute force."""
    ranks = []
    for s, r, label in zip(seed_rows, reference_rows, labels):
        bag = np.setdiff1d(np.flatnonzero(y[:, label] > 0), [s])
        distances = np.linalg.norm(x[bag].astype(np.float64) - x[s], axis=1)
        ranks.append(int((distances < distances[bag == r][0] - 1e-6).sum()) + 1)
    return np.array(ranks)


def test_neighbors_parameter_is_respected(fold) -> None:
    x, y, _, _, _ = fold
    one = mlsmote(x, y, 3 * n_pairs(y), neighbors=1, seed=0)
    assert (_bag_ranks(x, y, one.seed_rows, one.reference_rows, one.labels) == 1).all()
    # ranking rule with one neighbour: more than half of 2 rows = both the seed and its neighbour
    np.testing.assert_array_equal(one.y, (y[one.seed_rows] > 0) & (y[one.reference_rows] > 0))
    three = mlsmote(x, y, 3 * n_pairs(y), neighbors=3, seed=0)
    assert (_bag_ranks(x, y, three.seed_rows, three.reference_rows, three.labels) <= 3).all()
    references = {}
    for s, r, label in zip(three.seed_rows, three.reference_rows, three.labels):
        references.setdefault((s, label), set()).add(r)
    assert max(len(v) for v in references.values()) > 1  # several neighbours are drawn from, not just one


def test_threshold_parameter_is_respected(fold) -> None:
    x, y, _, _, _ = fold
    ratios = imbalance_ratios(y)
    present = np.isfinite(ratios)
    for threshold in (0.5, 1.0, 2.0):
        expected = np.flatnonzero(present & (ratios > threshold * ratios[present].mean()))
        np.testing.assert_array_equal(rare_labels(y, threshold), expected)
    loose, strict = rare_labels(y, 0.5), rare_labels(y, 2.0)
    assert set(strict) < set(loose)
    extra = mlsmote(x, y, 200, threshold=2.0, seed=0)
    assert set(extra.labels) <= set(strict)
    assert len(mlsmote(x, y, 200, threshold=1000.0, seed=0).x) == 0  # no label that rare: nothing to add
    params = {**ON, "mlsmote_threshold": 1000.0}
    x_fit, y_fit = oversample(x, y, params)
    assert x_fit is x and y_fit is y


@pytest.mark.parametrize("name, value", [("mlsmote", -0.1), ("mlsmote", 11.0), ("mlsmote", "many"),
                                         ("mlsmote_neighbors", 0), ("mlsmote_neighbors", 2.5),
                                         ("mlsmote_threshold", 0.0), ("mlsmote_threshold", -1.0)])
def test_bad_parameters_raise_config_error(name: str, value) -> None:
    with pytest.raises(ConfigError, match=f"'train.{name}'"):
        resolve_config({"family": "mlp", "train": {name: value}})


@pytest.mark.parametrize("kwargs, name", [({"n_rows": -1}, "n_rows"), ({"neighbors": 0}, "neighbors"),
                                          ({"threshold": 0.0}, "threshold")])
def test_bad_arguments_of_the_function_name_the_parameter(fold, kwargs, name: str) -> None:
    x, y, _, _, _ = fold
    with pytest.raises(ConfigError, match=f"'{name}'"):
        mlsmote(x, y, **{"n_rows": 10, **kwargs})


def test_cross_validate_with_mlsmote_end_to_end(tiny) -> None:
    data, folds = tiny
    config = {"family": "mlp", "model": SMALL_MLP, "train": FAST_TRAIN}
    off_reports, off = run(config, data, folds)
    on_reports, on = run({**config, "train": {**FAST_TRAIN, **ON}}, data, folds)
    for a, b in zip(off_reports, on_reports):  # the same validation rows, the same count, predicted the same way
        np.testing.assert_array_equal(a.valid_rows, b.valid_rows)
        assert a.valid_pred.shape == b.valid_pred.shape
    assert np.isfinite(on.loss) and on.oof.shape == off.oof.shape and not np.array_equal(on.oof, off.oof)
    _, again = run({**config, "train": {**FAST_TRAIN, **ON}}, data, folds)
    np.testing.assert_array_equal(on.oof, again.oof)  # seeded from the fold's seed


@pytest.mark.parametrize("stage, options", [("stage1", {}), ("direct", {"also_nonscored": True})])
def test_mlsmote_on_nonscored_and_both_targets(tiny, stage: str, options: dict) -> None:
    data, folds = tiny
    config = {"family": "linear", "stage": stage, "stage_options": options,
              "train": {**FAST_TRAIN, "epochs": 1, **ON}}
    reports, result = run(config, data, folds)
    assert len(reports) == folds.n_splits and np.isfinite(result.loss)
