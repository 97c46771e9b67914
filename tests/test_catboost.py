"""The ``catboost`` family: CatBoost's trees through fit_fold, cross_validate, save/load and an export.

Few, shallow trees on the tiny preset (one CPU thread): these tests exercise the plumbing of a
family that fits its own models (the :class:`~moa_tune.models._base.ExternalFamily` path), not
the quality of the trees.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logit

from moa_tune import ConfigError, ExportError
from moa_tune.artifacts import load_fitted, save_fitted
from moa_tune.config import resolve_config
from moa_tune.metric import log_loss, prior_predictions
from moa_tune.models import get_family
from moa_tune.models.catboost import MODEL_FILE, CatBoostModel
from moa_tune.stages import fold_fingerprint
from moa_tune.train import CVResult, FoldReport, cross_validate, fit_fold, predict

#: Few, shallow trees with coarse bins: about a second per fold on the tiny preset.
FAST_TREES = {"iterations": 25, "depth": 3, "border_count": 16, "learning_rate": 0.3, "early_stopping_rounds": 10}
FEATURES = {"gene_pca": 8, "cell_pca": 4}


def config(seed: int = 3, **sections) -> dict:
    return {"family": "catboost", "features": FEATURES, "model": FAST_TREES,
            "train": {"seed": seed, "num_threads": 1}, **sections}


def run(cfg, data, folds, inputs=None, **kwargs) -> tuple[list[FoldReport], CVResult]:
    events = list(cross_validate(cfg, data, folds, inputs, **kwargs))
    assert all(isinstance(e, FoldReport) for e in events[:-1]) and isinstance(events[-1], CVResult)
    return events[:-1], events[-1]


@pytest.fixture(scope="module")
def direct(tiny):
    """One direct cross-validation with the fitted folds kept (shared by the tests below)."""
    data, folds = tiny
    return run(config(), data, folds, keep_models=True)


def test_params_are_declared_and_checked() -> None:
    family = get_family("catboost")
    assert not family.torch_network
    assert family.resolve({}) == {name: spec.default for name, spec in family.params.items()}
    assert all(spec.doc for spec in family.params.values())
    with pytest.raises(ConfigError, match="Unknown parameter 'model.dept'. Did you mean 'model.depth'"):
        family.resolve({"dept": 3})
    with pytest.raises(ConfigError, match=r"The 'model.learning_rate' parameter must be a float in \(0, 1\]"):
        family.resolve({"learning_rate": 0})
    with pytest.raises(TypeError, match="not a torch network"):
        family.build(3, 2, family.resolve({}), {})


def test_cross_validate_gives_probabilities_that_beat_the_prior(tiny, direct) -> None:
    data, folds = tiny
    reports, result = direct
    used = folds.used
    assert result.predictions.columns == data.scored_columns
    assert result.oof.dtype == np.float32 and result.oof.shape == data.scored.shape
    assert ((result.oof >= 0) & (result.oof <= 1)).all() and ((result.test >= 0) & (result.test <= 1)).all()
    assert (result.oof[~used] == 0).all() and (result.test[data.test.is_control] == 0).all()
    assert result.loss == pytest.approx(log_loss(data.scored[used], result.oof[used]))
    prior = log_loss(data.scored[used], prior_predictions(data.scored[used], int(used.sum())))
    assert result.loss < prior
    for r in reports:
        assert isinstance(r.model, CatBoostModel)
        assert 1 <= r.best_epoch <= FAST_TREES["iterations"] and r.best_epoch == r.model.booster.tree_count_


def test_a_seed_gives_identical_predictions(tiny, direct) -> None:
    data, folds = tiny
    _, first = direct
    _, again = run(config(seed=3), data, folds)
    _, other = run(config(seed=4), data, folds)
    np.testing.assert_array_equal(first.oof, again.oof)
    np.testing.assert_array_equal(first.test, again.test)
    assert not np.array_equal(first.oof, other.oof)


def test_fit_fold_is_quiet_and_handles_constant_targets(tmp_path: Path, monkeypatch, capfd) -> None:
    """A column with no positive among the training rows is predicted as its smoothed mean, not refused."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    y = np.zeros((240, 3), dtype=np.float32)
    y[:, 0] = x[:, 0] > 0.5
    y[:, 2] = x[:, 1] < -0.5
    train_p = resolve_config(config())["train"]
    params = get_family("catboost").resolve(FAST_TREES)
    fit = fit_fold("catboost", params, train_p, x[:160], y[:160], x[160:], y[160:], x[200:], seed=7)
    assert capfd.readouterr().out == "" and not any(tmp_path.iterdir())  # no log, no catboost_info/
    assert fit.valid_pred.shape == (80, 3) and fit.test_pred.shape == (40, 3)
    assert fit.best_loss == pytest.approx(log_loss(y[160:], fit.valid_pred))
    assert len(fit.history) >= fit.best_epoch and fit.history[0]["epoch"] == 1
    assert fit.model.columns.tolist() == [0, 2]
    smoothing = train_p["label_smoothing"]
    np.testing.assert_allclose(fit.valid_pred[:, 1], smoothing / 2, rtol=1e-5)
    assert fit.model.constant_logits[1] == pytest.approx(logit(smoothing / 2))


def test_save_and_load_round_trip_without_pickle(tiny, direct, tmp_path: Path) -> None:
    data, folds = tiny
    reports, result = direct
    report = reports[1]
    folder = save_fitted(tmp_path / "fold_1", family="catboost", model_params=result.config["model"],
                         n_outputs=report.model_outputs, model=report.model, pipeline=report.pipeline)
    assert {p.name for p in folder.iterdir()} == {MODEL_FILE, "model.json", "features.npz", "features.json"}
    assert (folder / MODEL_FILE).read_bytes()[:1] != b"\x80"  # CatBoost's own format, not a pickle
    with np.load(folder / "features.npz", allow_pickle=False) as archive:
        for key in archive.files:
            archive[key]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["family"] == "catboost" and meta["fitted"]["file"] == MODEL_FILE
    pipeline, model, _ = load_fitted(folder)
    assert isinstance(model, CatBoostModel)
    rows = np.flatnonzero(folds.fold == 1)
    x = pipeline.transform(data.train.take(rows))
    np.testing.assert_array_equal(predict(model, x), result.oof[rows])
    np.testing.assert_array_equal(predict(model, x), predict(report.model, x))
    (folder / MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(ExportError, match="is not a CatBoost model"):
        load_fitted(folder)
    (folder / MODEL_FILE).unlink()
    with pytest.raises(ExportError, match=f"missing {MODEL_FILE}"):
        load_fitted(folder)


def test_an_export_with_catboost_folds_loads_and_predicts(tiny, direct, tmp_path: Path) -> None:
    """The export's fold loading (Ensemble.load) without the collector: the manifest written by hand."""
    from moa_tune.export import member_dir, write_manifest
    from moa_tune.predict import Ensemble

    data, folds = tiny
    reports, result = direct
    cid = "direct-catboost-r1"
    export = tmp_path / "ensemble"
    fold_dirs = []
    for r in reports:
        fold_dir = f"{member_dir(cid, 3)}/fold_{r.fold}"
        save_fitted(export / fold_dir, family="catboost", model_params=result.config["model"],
                    n_outputs=r.model_outputs, model=r.model, pipeline=r.pipeline)
        fold_dirs.append(fold_dir)
    n = len(data.scored_columns)
    write_manifest(export, {
        "features": {"gene_columns": list(data.train.gene_columns), "cell_columns": list(data.train.cell_columns)},
        "targets": {"scored": list(data.scored_columns), "nonscored": list(data.nonscored_columns)},
        "folds": {**folds.settings(), "fingerprint": fold_fingerprint(folds)},
        "stages": [{"stage": "direct", "components": [cid], "inputs": None}],
        "components": {cid: {"stage": "direct", "family": "catboost", "columns": list(data.scored_columns),
                             "output": list(range(n)), "restore": list(range(n)),
                             "members": [{"seed": 3, "folds": fold_dirs}]}},
        "blend": {"weights": {cid: 1.0}},
    })
    files = json.loads((export / "manifest.json").read_text())["files"]
    assert f"{fold_dirs[0]}/{MODEL_FILE}" in files  # the trees are covered by the sha256s
    predicted = Ensemble.load(export, device="cpu").predict_array(data.test)
    np.testing.assert_allclose(predicted, result.test, rtol=1e-5, atol=1e-7)
    with open(export / fold_dirs[0] / MODEL_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ExportError, match="has changed since the export"):
        Ensemble.load(export, device="cpu")


def test_stage1_then_stage2_with_inputs(tiny) -> None:
    """Stage 1 has targets without a positive in some folds; stage 2 takes its predictions as features."""
    data, folds = tiny
    quick = {**FAST_TREES, "iterations": 12}
    reports, s1 = run(config(stage="stage1", model=quick), data, folds, keep_models=True)
    assert s1.predictions.columns == data.nonscored_columns
    trained = data.nonscored[:, data.nonscored[folds.used].sum(axis=0) > 0]
    fold_constant = [r for r in reports if len(r.model.columns) < trained.shape[1]]
    assert fold_constant, "the tiny preset should have a nonscored target without a positive in some fold"
    assert ((s1.oof >= 0) & (s1.oof <= 1)).all()
    _, s2 = run(config(stage="stage2", model=quick), data, folds, s1.predictions)
    assert s2.predictions.columns == data.scored_columns and s2.oof.shape == data.scored.shape
    assert np.isfinite(s2.loss)


def test_transfer_is_refused(tiny) -> None:
    data, folds = tiny
    with pytest.raises(ConfigError, match="cannot run stage 'transfer'"):
        run(config(stage="transfer"), data, folds)
