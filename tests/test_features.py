"""moa_tune.features: per-fold fitting (no leakage), groups, options, state without pickle."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FAST_TRAIN
from moa_tune import ConfigError
from moa_tune.features import FeaturePipeline
from moa_tune.train import FoldReport, cross_validate


def split(data, folds, k=0):
    train_rows, valid_rows = list(folds.split())[k]
    return data.train.take(train_rows), data.train.take(valid_rows)


def test_groups_and_shapes(tiny) -> None:
    data, folds = tiny
    train, valid = split(data, folds)
    pipe = FeaturePipeline({"gene_pca": 5, "cell_pca": 3}).fit(train)
    x = pipe.transform(valid)
    assert x.dtype == np.float32 and x.shape == (len(valid), pipe.n_features_out_)
    sizes = {k: len(v) for k, v in pipe.groups_.items()}
    assert sizes == {"genes": data.train.n_genes, "cells": data.train.n_cells, "gene_pca": 5, "cell_pca": 3,
                     "stats": 8, "meta": 4}
    assert np.concatenate(list(pipe.groups_.values())).tolist() == list(range(x.shape[1]))
    meta = x[:, pipe.groups_["meta"]]
    assert (meta[:, :3].sum(axis=1) == 1).all()  # cp_time one-hot
    np.testing.assert_array_equal(meta[:, 3], valid.cp_dose == "D2")


def test_rankgauss_is_normal_on_the_training_rows(tiny) -> None:
    data, folds = tiny
    train, _ = split(data, folds)
    x = FeaturePipeline({"gene_pca": 0, "cell_pca": 0, "row_stats": False, "meta": False}).fit_transform(train)
    assert abs(float(np.median(x))) < 0.05 and 0.8 < float(x.std()) < 1.2
    standard = FeaturePipeline({"scaler": "standard", "gene_pca": 0, "cell_pca": 0, "row_stats": False,
                                "meta": False}).fit_transform(train)
    np.testing.assert_allclose(standard.mean(axis=0), 0, atol=1e-4)


def test_fitted_on_training_rows_only(tiny) -> None:
    """Changing validation or test rows must not change what the pipeline learns."""
    data, folds = tiny
    train, valid = split(data, folds)
    params = {"gene_pca": 6, "cell_pca": 2, "variance_threshold": 0.1}
    a = FeaturePipeline(params).fit(train)
    spoiled = valid.take(np.arange(len(valid)))
    spoiled.genes[:] = 50.0 * np.random.default_rng(0).standard_normal(spoiled.genes.shape)
    b = FeaturePipeline(params).fit(train)
    arrays_a, meta_a = a.state()
    arrays_b, meta_b = b.state()
    assert meta_a == meta_b and all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
    # and a pipeline fitted on train + validation rows differs (so the check above can fail)
    both = data.train.take(np.concatenate([np.flatnonzero(folds.fold != 0), np.flatnonzero(folds.fold == 0)]))
    c = FeaturePipeline(params).fit(both)
    assert not np.array_equal(c.state()[0]["gene_pca.components_"], arrays_a["gene_pca.components_"])


def test_cross_validate_fits_each_fold_without_its_validation_rows(tiny) -> None:
    """Through the public API: spoiling fold 0's validation rows leaves fold 0's fitted pipeline unchanged."""
    data, folds = tiny
    config = {"family": "linear", "train": FAST_TRAIN, "features": {"gene_pca": 4, "cell_pca": 2}}

    def first_pipeline(d):
        report = next(e for e in cross_validate(config, d, folds, keep_models=True) if isinstance(e, FoldReport))
        return report.pipeline.state()

    clean = first_pipeline(data)
    valid_rows = np.flatnonzero(folds.fold == 0)
    train = data.train.take(np.arange(len(data.train)))
    train.genes[valid_rows] = 100.0
    from dataclasses import replace
    spoiled = first_pipeline(replace(data, train=train))
    assert all(np.array_equal(clean[0][k], spoiled[0][k]) for k in clean[0])
    # the other direction: spoiling fold 0's training rows does change it
    train2 = data.train.take(np.arange(len(data.train)))
    train2.genes[np.flatnonzero(folds.fold == 1)] *= 3.0
    changed = first_pipeline(replace(data, train=train2))
    assert not all(np.array_equal(clean[0][k], changed[0][k]) for k in clean[0])


@pytest.mark.parametrize("scaler", ["rankgauss", "standard", "none"])
def test_state_round_trip_gives_identical_outputs(tiny, tmp_path, scaler: str) -> None:
    data, folds = tiny
    train, valid = split(data, folds)
    inputs = np.random.default_rng(1).random((len(data.train), 5)).astype(np.float32)
    train_rows, valid_rows = list(folds.split())[0]
    pipe = FeaturePipeline({"scaler": scaler, "gene_pca": 7, "cell_pca": 3, "variance_threshold": 0.05,
                            "inputs_transform": "rankgauss"}).fit(train, inputs[train_rows])
    expected = pipe.transform(valid, inputs[valid_rows])
    pipe.save(tmp_path / "features")
    again = FeaturePipeline.load(tmp_path / "features")
    np.testing.assert_array_equal(again.transform(valid, inputs[valid_rows]), expected)
    with np.load(tmp_path / "features.npz", allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)
    assert {k: v.tolist() for k, v in again.groups_.items()} == {k: v.tolist() for k, v in pipe.groups_.items()}


def test_inputs_transforms_and_mismatch(tiny) -> None:
    data, folds = tiny
    train, valid = split(data, folds)
    train_rows, valid_rows = list(folds.split())[0]
    probs = np.random.default_rng(2).random((len(data.train), 3)).astype(np.float32)
    pipe = FeaturePipeline({"inputs_transform": "logit"}).fit(train, probs[train_rows])
    x = pipe.transform(valid, probs[valid_rows])
    p = np.clip(probs[valid_rows], 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(x[:, pipe.groups_["inputs"]], np.log(p / (1 - p)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="3 previous-stage input columns, got 0"):
        pipe.transform(valid)


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match=r"The 'features.n_quantiles' parameter must be an int in \[10, 10000\]. Got 5"):
        FeaturePipeline({"n_quantiles": 5})
    with pytest.raises(ConfigError, match="Did you mean 'gene_pca'"):
        FeaturePipeline({"genes_pca": 5})
    with pytest.raises(ConfigError, match="one of 'rankgauss', 'standard', 'none'"):
        FeaturePipeline({"scaler": "minmax"})


def test_pca_is_capped_and_threshold_that_removes_all_fails(tiny) -> None:
    data, folds = tiny
    train, _ = split(data, folds)
    pipe = FeaturePipeline({"gene_pca": 5000, "cell_pca": 1000}).fit(train)
    assert len(pipe.groups_["gene_pca"]) == data.train.n_genes and len(pipe.groups_["cell_pca"]) == data.train.n_cells
    with pytest.raises(ConfigError, match="removes every column"):
        FeaturePipeline({"variance_threshold": 99.0, "meta": False}).fit(train)


def test_variance_threshold_spares_previous_stage_inputs(tiny) -> None:
    """Stage-1 probabilities have tiny variances: a feature threshold must not drop them (only constants)."""
    data, folds = tiny
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0.0, 0.05, size=(len(data.train), 6)).astype(np.float32)
    inputs[:, 2] = 0.0  # a stage-1 column restored as zeros
    pipe = FeaturePipeline({"variance_threshold": 1.5, "gene_pca": 0, "cell_pca": 0}).fit(data.train, inputs)
    assert len(pipe.groups_["inputs"]) == 5
    x = pipe.transform(data.train, inputs)
    np.testing.assert_allclose(x[:, pipe.groups_["inputs"]], np.delete(inputs, 2, axis=1), rtol=1e-6)
    assert len(pipe.groups_["genes"]) == 0  # the threshold still applies to features (RankGauss: variance ~1)
