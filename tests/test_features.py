"""moa_tune.features: per-fold fitting (no leakage), groups, options, state without pickle."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import FAST_TRAIN
from moa_tune import ConfigError
from moa_tune.features import GROUPS, PARAMS, FeaturePipeline
from moa_tune.train import FoldReport, cross_validate

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
#: The per-fold feature options added after PCA; each is off (0) by default.
NEW_OPTIONS = ("gene_fa", "cell_fa", "gene_umap", "cell_umap", "pair_products")


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
                            "inputs_transform": "rankgauss", "gene_fa": 4, "cell_fa": 2,
                            "pair_products": 6}).fit(train, inputs[train_rows])
    expected = pipe.transform(valid, inputs[valid_rows])
    pipe.save(tmp_path / "features")
    again = FeaturePipeline.load(tmp_path / "features")
    np.testing.assert_array_equal(again.transform(valid, inputs[valid_rows]), expected)
    with np.load(tmp_path / "features.npz", allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)
    assert {k: v.tolist() for k, v in again.groups_.items()} == {k: v.tolist() for k, v in pipe.groups_.items()}
    assert {"gene_fa", "cell_fa", "pairs"} <= set(pipe.groups_)


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
    with pytest.raises(ConfigError, match="Unknown parameter 'features.genes_pca'. Did you mean 'features.gene_pca'"):
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


# ---- Factor Analysis, correlated-pair products, UMAP


def scaled(pipe, features):
    """The scaled genes and cells of ``features`` as the fitted pipeline sees them."""
    return (pipe.gene_scaler_.transform(features.genes.astype(np.float64)),
            pipe.cell_scaler_.transform(features.cells.astype(np.float64)))


def test_new_options_are_off_by_default_and_leave_the_other_columns_unchanged(tiny) -> None:
    data, folds = tiny
    train, valid = split(data, folds)
    assert all(PARAMS[name].default == 0 for name in NEW_OPTIONS)
    base = FeaturePipeline({"gene_pca": 5, "cell_pca": 3}).fit(train)
    zeros = FeaturePipeline({"gene_pca": 5, "cell_pca": 3, **{name: 0 for name in NEW_OPTIONS}}).fit(train)
    np.testing.assert_array_equal(zeros.transform(valid), base.transform(valid))
    arrays, meta = base.state()
    assert not [k for k in [*arrays, *meta] if k.split(".")[0] in ("gene_fa", "cell_fa", "gene_umap", "cell_umap",
                                                                   "pairs", "pair_scaler")]
    # switched on, the options add their own groups (in GROUPS order) and change no other column
    more = FeaturePipeline({"gene_pca": 5, "cell_pca": 3, "gene_fa": 3, "cell_fa": 2, "pair_products": 4}).fit(train)
    assert list(more.groups_) == [g for g in GROUPS if g in more.groups_]
    assert list(more.groups_) == ["genes", "cells", "gene_pca", "cell_pca", "gene_fa", "cell_fa", "pairs", "stats", "meta"]
    x, x_more = base.transform(valid), more.transform(valid)
    for name, columns in base.groups_.items():
        np.testing.assert_array_equal(x_more[:, more.groups_[name]], x[:, columns])


def test_a_default_pipeline_does_not_import_umap(tmp_path) -> None:
    """Importing umap compiles numba code for seconds: only a pipeline that uses UMAP may pay it."""
    code = ("import sys; from moa_tune.synth import generate; from moa_tune.features import FeaturePipeline; "
            "d = generate('tiny', 0); p = FeaturePipeline({'gene_fa': 2, 'pair_products': 3}).fit(d.train); "
            "p.save(sys.argv[1]); FeaturePipeline.load(sys.argv[1]).transform(d.test); "
            "assert 'umap' not in sys.modules and 'pynndescent' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "features")], check=True, timeout=300)


def test_factor_analysis_is_fitted_on_the_training_rows(tiny) -> None:
    from sklearn.decomposition import FactorAnalysis

    data, folds = tiny
    train, valid = split(data, folds)
    pipe = FeaturePipeline({"gene_fa": 5, "cell_fa": 3}).fit(train)
    x = pipe.transform(valid)
    assert len(pipe.groups_["gene_fa"]) == 5 and len(pipe.groups_["cell_fa"]) == 3
    (genes_t, cells_t), (genes_v, cells_v) = scaled(pipe, train), scaled(pipe, valid)
    expected = FactorAnalysis(5, random_state=0).fit(genes_t).transform(genes_v)
    np.testing.assert_allclose(x[:, pipe.groups_["gene_fa"]], expected, rtol=1e-5, atol=1e-5)
    expected = FactorAnalysis(3, random_state=0).fit(cells_t).transform(cells_v)
    np.testing.assert_allclose(x[:, pipe.groups_["cell_fa"]], expected, rtol=1e-5, atol=1e-5)
    # capped by the columns (from the column prefixes), like PCA
    # (widths before the variance threshold, which drops the constant factors beyond the data's rank)
    capped = FeaturePipeline({"gene_fa": 5000, "cell_fa": 1000, "raw": False, "row_stats": False}).fit(train)
    widths = dict(zip(capped.block_names_, capped.block_widths_))
    assert widths["gene_fa"] == train.n_genes and widths["cell_fa"] == train.n_cells


def test_pair_products_of_the_most_correlated_training_pairs(tiny) -> None:
    data, folds = tiny
    train, valid = split(data, folds)
    pipe = FeaturePipeline({"pair_products": 6}).fit(train)
    assert len(pipe.groups_["pairs"]) == 6 and pipe.pairs_.shape == (6, 2)
    both_t, both_v = np.hstack(scaled(pipe, train)), np.hstack(scaled(pipe, valid))
    strength = np.abs(np.corrcoef(both_t, rowvar=False))
    first, second = np.triu_indices(both_t.shape[1], k=1)
    chosen = {tuple(pair) for pair in pipe.pairs_.tolist()}
    assert all(i < j for i, j in chosen)
    others = [strength[i, j] for i, j in zip(first, second) if (i, j) not in chosen]
    assert min(strength[i, j] for i, j in chosen) >= max(others)
    # standardised with the training rows' mean and scale, applied to the validation rows
    products_t = both_t[:, pipe.pairs_[:, 0]] * both_t[:, pipe.pairs_[:, 1]]
    products_v = both_v[:, pipe.pairs_[:, 0]] * both_v[:, pipe.pairs_[:, 1]]
    expected = (products_v - products_t.mean(axis=0)) / products_t.std(axis=0)
    np.testing.assert_allclose(pipe.transform(valid)[:, pipe.groups_["pairs"]], expected, rtol=1e-4, atol=1e-4)
    n_columns = train.n_genes + train.n_cells
    huge = FeaturePipeline({"pair_products": 100_000, "raw": False, "row_stats": False, "meta": False}).fit(train)
    assert len(huge.groups_["pairs"]) == n_columns * (n_columns - 1) // 2


def test_pairs_are_chosen_on_the_training_rows_only(tiny) -> None:
    """Validation rows in which two genes are identical must not make that pair chosen."""
    data, folds = tiny
    train, valid = split(data, folds)
    params = {"pair_products": 3, "scaler": "standard"}  # standard scaling keeps the planted outliers' weight
    clean = FeaturePipeline(params).fit(train).pairs_
    spoiled = valid.take(np.arange(len(valid)))
    spoiled.genes[:, 0] = spoiled.genes[:, 1] = 100.0 * np.random.default_rng(0).standard_normal(len(valid))
    assert (0, 1) not in {tuple(p) for p in clean.tolist()}
    # the pipeline never sees validation rows while fitting: transforming them changes nothing it learned
    pipe = FeaturePipeline(params).fit(train)
    pipe.transform(spoiled)
    np.testing.assert_array_equal(pipe.pairs_, clean)
    # fitted on training + spoiled rows instead, the planted pair is chosen first (so the check can fail)
    mixed = data.train.take(np.concatenate(list(folds.split())[0]))
    mixed.genes[len(train):] = spoiled.genes
    assert tuple(FeaturePipeline(params).fit(mixed).pairs_[0]) == (0, 1)


@pytest.mark.parametrize("name, value, allowed", [
    ("gene_fa", -1, r"an int in \[0, 5000\]"), ("cell_fa", -2, r"an int in \[0, 1000\]"),
    ("gene_umap", -1, r"an int in \[0, 100\]"), ("cell_umap", 2.5, r"an int in \[0, 100\]"),
    ("umap_neighbors", 1, r"an int in \[2, 1000\]"), ("pair_products", -3, r"an int in \[0, 100000\]"),
    ("pair_products", "10", r"an int in \[0, 100000\]"), ("gene_fa", True, r"an int in \[0, 5000\]"),
])
def test_bad_new_option_values(name: str, value, allowed: str) -> None:
    with pytest.raises(ConfigError, match=rf"The 'features.{name}' parameter must be {allowed}. Got {value!r}"):
        FeaturePipeline({name: value})


@pytest.fixture(scope="module")
def umap_fold(tiny):
    """One fold with gene and cell UMAPs fitted (UMAP's numba code compiles once per test process)."""
    data, folds = tiny
    train, valid = split(data, folds)
    pipe = FeaturePipeline({"gene_pca": 0, "cell_pca": 0, "gene_umap": 2, "cell_umap": 100,
                            "umap_neighbors": 10}).fit(train)
    return train, valid, pipe


@pytest.mark.slow  # the first UMAP fit and transform of a process compile umap's numba code
def test_umap_columns_groups_and_training_rows(umap_fold) -> None:
    train, valid, pipe = umap_fold
    assert len(pipe.groups_["gene_umap"]) == 2
    assert len(pipe.groups_["cell_umap"]) == train.n_cells  # capped by the cells
    assert list(pipe.groups_) == [g for g in GROUPS if g in pipe.groups_]
    # fitted on the training rows only, which keep their fitted embedding
    genes_t, cells_t = scaled(pipe, train)
    np.testing.assert_array_equal(pipe.gene_umap_._raw_data, genes_t.astype(np.float32))
    np.testing.assert_array_equal(pipe.cell_umap_._raw_data, cells_t.astype(np.float32))
    x_train = pipe.transform(train)
    np.testing.assert_array_equal(x_train[:, pipe.groups_["gene_umap"]], pipe.gene_umap_.embedding_)
    x = pipe.transform(valid)
    assert np.isfinite(x).all() and x.shape == (len(valid), pipe.n_features_out_)


@pytest.mark.slow  # the first UMAP fit and transform of a process compile umap's numba code
def test_umap_transform_of_unseen_rows_survives_save_and_load(umap_fold, tmp_path) -> None:
    import umap

    train, valid, pipe = umap_fold
    expected = pipe.transform(valid)
    first_rows = pipe.transform(valid.take(np.arange(40)))  # another batch of unseen rows
    pipe.save(tmp_path / "features")
    with np.load(tmp_path / "features.npz", allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)
        # the UMAP state is the training rows and their embedding, nothing of size rows^2 or rows x neighbours
        umap_bytes = sum(archive[k].nbytes for k in archive.files if k.startswith(("gene_umap.", "cell_umap.")))
    assert umap_bytes == 4 * len(train) * (train.n_genes + 2 + 2 * train.n_cells)
    again = FeaturePipeline.load(tmp_path / "features")
    np.testing.assert_array_equal(again.transform(valid), expected)
    np.testing.assert_array_equal(again.transform(valid.take(np.arange(40))), first_rows)
    np.testing.assert_array_equal(again.transform(train), pipe.transform(train))
    # it is UMAP: the same embedding as umap-learn's own fit, and new rows placed like its own transform
    # (the distances may differ in the last bit, which moves a few rows: compare the median)
    genes_t, _ = scaled(pipe, train)
    genes_v, _ = scaled(pipe, valid)
    own = umap.UMAP(n_components=2, n_neighbors=10, random_state=0, transform_seed=0, n_jobs=1).fit(genes_t)
    np.testing.assert_array_equal(own.embedding_, again.gene_umap_.embedding_)
    difference = np.abs(own.transform(genes_v) - expected[:, pipe.groups_["gene_umap"]]).max(axis=1)
    assert np.median(difference) < 0.05 * own.embedding_.std()


@pytest.mark.parametrize("family", ["mlp", "resnet2head"])
def test_search_spaces_search_fa_and_pairs_and_keep_umap_off(family: str) -> None:
    import optuna

    from moa_tune.config import resolve_config
    from moa_tune.search_space import parse_search_space

    raw = yaml.safe_load((SPACES / f"{family}.yaml").read_text())
    space = parse_search_space(raw, family)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    samples = []
    for _ in range(30):
        trial = study.ask()
        constants = space(trial)
        config = space.to_config({**trial.params, **constants})
        study.tell(trial, 0.0)
        samples.append(resolve_config(config)["features"])
    assert all(f["gene_umap"] == 0 and f["cell_umap"] == 0 for f in samples)
    for name in ("gene_fa", "cell_fa", "pair_products"):
        assert {f[name] > 0 for f in samples} == {True, False}
    raw["params"]["search.umap"] = True  # what a user edits to turn UMAP on
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    constants = parse_search_space(raw, family)(trial)
    features = space.to_config({**trial.params, **constants})["features"]
    assert 2 <= features["gene_umap"] <= 8 and 2 <= features["cell_umap"] <= 4 and 5 <= features["umap_neighbors"] <= 50
