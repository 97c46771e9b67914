"""moa_tune.train and moa_tune.stages: every stage, every family, resume, determinism, CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import FAST_TRAIN, SMALL_MLP, run_cli
from moa_tune import ConfigError, DataError
from moa_tune.artifacts import load_fitted
from moa_tune.config import resolve_config
from moa_tune.metric import log_loss, prior_predictions
from moa_tune.models import FAMILIES
from moa_tune.stages import Predictions
from moa_tune.train import CVResult, FoldReport, cross_validate, predict, run_training


def run(config, data, folds, inputs=None, **kwargs) -> tuple[list[FoldReport], CVResult]:
    events = list(cross_validate(config, data, folds, inputs, **kwargs))
    assert all(isinstance(e, FoldReport) for e in events[:-1]) and isinstance(events[-1], CVResult)
    return events[:-1], events[-1]


def test_core_imports_no_ray() -> None:
    code = ("import sys, moa_tune, moa_tune.train, moa_tune.features, moa_tune.stages, moa_tune.artifacts, "
            "moa_tune.synth, moa_tune.cli; from moa_tune.models import FAMILIES, get_family; "
            "[get_family(f) for f in FAMILIES]; "
            "bad = [m for m in ('ray', 'optuna') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generator_reports_each_fold_then_the_result(tiny) -> None:
    data, folds = tiny
    reports, result = run({"family": "mlp", "model": SMALL_MLP, "train": FAST_TRAIN}, data, folds)
    assert [r.fold for r in reports] == [0, 1, 2] and [r.folds_done for r in reports] == [1, 2, 3]
    assert reports[-1].running_loss == pytest.approx(np.mean([r.loss for r in reports]))
    assert result.fold_losses == [r.loss for r in reports]
    used = folds.used
    assert result.oof.dtype == np.float32 and result.oof.shape == data.scored.shape
    assert ((result.oof >= 0) & (result.oof <= 1)).all()
    assert (result.oof[~used] == 0).all() and (result.test[data.test.is_control] == 0).all()
    assert result.loss == pytest.approx(log_loss(data.scored[used], result.oof[used]))
    assert result.loss_all_rows == pytest.approx(log_loss(data.scored, result.oof))
    for r in reports:  # each row's out-of-fold prediction comes from the fold that held it out
        np.testing.assert_array_equal(result.oof[r.valid_rows], r.valid_pred)
    np.testing.assert_allclose(result.test[~data.test.is_control],
                               np.mean([r.test_pred for r in reports], axis=0)[~data.test.is_control], rtol=1e-6)


def test_deterministic_per_seed_on_cpu(tiny) -> None:
    data, folds = tiny
    config = {"family": "mlp", "model": SMALL_MLP, "train": {**FAST_TRAIN, "seed": 3}}
    _, a = run(config, data, folds)
    _, b = run(config, data, folds)
    _, c = run({"family": "mlp", "model": SMALL_MLP, "train": {**FAST_TRAIN, "seed": 4}}, data, folds)
    np.testing.assert_array_equal(a.oof, b.oof)
    assert not np.array_equal(a.oof, c.oof)


def test_num_threads_limits_torch_and_the_blas_pools(tiny) -> None:
    """A 1-CPU trial must not run numpy's BLAS on every core (Ray sets no OMP_NUM_THREADS for Tune's trials)."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    data, folds = tiny
    with threadpool_limits(2):  # restored afterwards, whatever cross_validate set
        config = {"family": "linear", "train": {**FAST_TRAIN, "epochs": 1, "num_threads": 1}}
        events = list(cross_validate(config, data, folds))
        assert isinstance(events[-1], CVResult)
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info()), threadpool_info()


def test_resume_skips_done_folds(tiny) -> None:
    data, folds = tiny
    config = {"family": "linear", "train": FAST_TRAIN}
    reports, full = run(config, data, folds)
    resumed_reports, resumed = run(config, data, folds, resume=reports[:2])
    assert [r.fold for r in resumed_reports] == [2]  # only the work left is done and reported
    np.testing.assert_array_equal(resumed.oof, full.oof)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_learns_on_tiny(tiny, family: str) -> None:
    data, folds = tiny
    # 400 training rows: the 2- and 3-head ResNets (no dropout by default) need a gentler peak rate than the others;
    # 10 epochs put every family 15-23% below the prior here (20 epochs gain little more)
    lr = {"resnet2head": 3e-3, "resnet3head": 3e-3}.get(family, 1e-2)
    _, result = run({"family": family, "train": {"epochs": 10, "batch_size": 32, "early_stopping": 0, "lr": lr}},
                    data, folds)
    used = folds.used
    prior = log_loss(data.scored[used], prior_predictions(data.scored[used], int(used.sum())))
    assert result.predictions.columns == data.scored_columns
    assert result.loss < prior  # each family beats the constant prior; the quality bench measures real margins


def test_stages_chain_with_the_same_folds(tiny, tmp_path: Path) -> None:
    data, folds = tiny
    base = {"family": "linear", "train": FAST_TRAIN}
    _, s1 = run({**base, "stage": "stage1"}, data, folds)
    assert s1.predictions.columns == data.nonscored_columns
    zero = data.nonscored[folds.used].sum(axis=0) == 0
    assert zero.any() and (s1.oof[:, zero] == 0).all() and (s1.test[:, zero] == 0).all()
    s1.predictions.save(tmp_path / "s1")
    stage1 = Predictions.load(tmp_path / "s1")
    np.testing.assert_array_equal(stage1.oof, s1.oof)
    reports, s2 = run({**base, "stage": "stage2"}, data, folds, stage1)
    assert reports[0].pipeline is None
    assert s2.predictions.columns == data.scored_columns
    _, s3 = run({**base, "stage": "stage3"}, data, folds, [s2.predictions, s2.predictions])
    assert s3.oof.shape == data.scored.shape
    _, s3f = run({**base, "stage": "stage3", "stage_options": {"with_features": True}}, data, folds, s2.predictions)
    assert s3f.loss != s3.loss
    _, tr = run({**base, "stage": "transfer", "stage_options": {"pretrain_epochs": 2, "pretrain_targets": "both"}},
                data, folds)
    assert tr.oof.shape == data.scored.shape
    _, multi = run({**base, "stage_options": {"also_nonscored": True}}, data, folds)
    assert multi.predictions.columns == data.scored_columns


def test_stage_inputs_are_checked(tiny) -> None:
    from moa_tune.folds import make_folds

    data, folds = tiny
    base = {"family": "linear", "train": FAST_TRAIN}
    with pytest.raises(ConfigError, match="needs the stage1 predictions"):
        run({**base, "stage": "stage2"}, data, folds)
    _, s1 = run({**base, "stage": "stage1"}, data, folds)
    with pytest.raises(ConfigError, match="takes no previous-stage inputs"):
        run(base, data, folds, s1.predictions)
    other = make_folds(data, 3, "drug", seed=99)
    with pytest.raises(DataError, match="same folds"):
        run({**base, "stage": "stage2"}, data, other, s1.predictions)


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="Unknown model family 'mlpp'. Did you mean 'mlp'"):
        resolve_config({"family": "mlpp"})
    with pytest.raises(ConfigError, match="Unknown stage 'stage4'"):
        resolve_config({"family": "mlp", "stage": "stage4"})
    with pytest.raises(ConfigError, match="Unknown config section 'trian'. Did you mean 'train'"):
        resolve_config({"family": "mlp", "trian": {}})
    with pytest.raises(ConfigError, match=r"'train.batch_size' parameter must be an int in \[2, 65536\]. Got 1"):
        resolve_config({"family": "mlp", "train": {"batch_size": 1}})
    with pytest.raises(ConfigError, match="Unknown parameter 'train.learning_rate'"):
        resolve_config({"family": "mlp", "train": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="'stage_options.pretrain_targets'"):
        resolve_config({"family": "mlp", "stage": "transfer", "stage_options": {"pretrain_targets": "all"}})
    with pytest.raises(ConfigError, match="Unknown parameter 'stage_options.with_features'"):
        resolve_config({"family": "mlp", "stage": "stage2", "stage_options": {"with_features": True}})


def test_train_cli_writes_everything(tiny, tmp_path: Path, capsys) -> None:
    from moa_tune.data import save

    data, _ = tiny
    data_dir = save(data, tmp_path / "data")
    config = tmp_path / "mlp.yaml"
    config.write_text(yaml.safe_dump({"family": "mlp", "model": SMALL_MLP, "train": FAST_TRAIN}))
    out = tmp_path / "run"
    code, text, err = run_cli(["train", "--config", str(config), "--data", str(data_dir), "--n-splits", "3",
                               "--set", "train.seed=5", "--out", str(out)], capsys)
    assert code == 0, err
    assert "CV log loss" in text and "fold 3/3" in err
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "folds.npz", "oof.npy", "test.npy", "predictions.json",
                                               "metrics.json", "fold_0", "fold_1", "fold_2"}
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 5
    # a saved fold predicts exactly what the run predicted for its validation rows
    from moa_tune import load
    from moa_tune.folds import Folds

    loaded = load(data_dir)
    folds = Folds.load(out / "folds.npz")
    pipeline, model, meta = load_fitted(out / "fold_1")
    rows = np.flatnonzero(folds.fold == 1)
    probs = predict(model, pipeline.transform(loaded.train.take(rows)))
    np.testing.assert_allclose(probs, np.load(out / "oof.npy")[rows], atol=1e-6)
    # stage 2 from the CLI, reusing the folds and the stage-1 output
    s1 = tmp_path / "s1"
    code, _, err = run_cli(["train", "--config", str(config), "--data", str(data_dir), "--set", "stage=stage1",
                            "--folds", str(out / "folds.npz"), "--out", str(s1), "--no-save-models"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["train", "--config", str(config), "--data", str(data_dir), "--set", "stage=stage2",
                            "--folds", str(out / "folds.npz"), "--inputs", str(s1), "--out", str(tmp_path / "s2")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("content, message", [
    ("family: mlpp\n", "Did you mean 'mlp'"),
    ("family: mlp\ntrain: {epochs: 0}\n", "'train.epochs' parameter must be an int in [1, 1000]. Got 0"),
    ("family: mlp\nmodel: {hiden: 3}\n", "Unknown parameter 'model.hiden'"),
    ("family: [mlp\n", "not valid YAML (line 2, column 1)"),
    ("", "expected a mapping of settings, got an empty file"),
])
def test_train_cli_bad_config_exit_2(tiny, tmp_path: Path, capsys, content: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    code, out, err = run_cli(["train", "--config", str(config), "--data", str(tmp_path / "nodata"),
                              "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and str(config) in err
    assert not (tmp_path / "out").exists()


def test_run_training_without_output_dir(tiny) -> None:
    data, folds = tiny
    result = run_training({"family": "linear", "train": FAST_TRAIN}, data, folds)
    assert isinstance(result, CVResult) and len(result.fold_losses) == 3


def test_train_cli_without_config_uses_set(tiny, tmp_path: Path, capsys) -> None:
    from moa_tune.data import save

    data, _ = tiny
    data_dir = save(data, tmp_path / "data")
    out = tmp_path / "lin"
    code, text, err = run_cli(["train", "--data", str(data_dir), "--set", "family=linear", "--set", "train.epochs=2",
                               "--n-splits", "2", "--out", str(out), "--no-save-models"], capsys)
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["family"] == "linear" and saved["train"]["epochs"] == 2
    code, text, err = run_cli(["train", "--data", str(data_dir), "--set", "family=linear", "--set", "train.epochz=2",
                               "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--set" in err and "train.epochz" in err and not (tmp_path / "bad").exists()


def test_diverging_training_raises_a_clear_error() -> None:
    """A non-finite loss stops the fold with TrainingError (a sweep records the trial as errored with it)."""
    from moa_tune import TrainingError
    from moa_tune.train import PARAMS, fit_fold
    from moa_tune.params import resolve

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (rng.random((64, 3)) < 0.2).astype(np.float32)
    x_bad = x.copy()
    x_bad[3, 1] = np.inf
    train = resolve("train", PARAMS, {"epochs": 2, "batch_size": 16, "num_threads": 1})
    model = resolve_config({"family": "linear"})["model"]
    with pytest.raises(TrainingError, match="training diverged at epoch 1"):
        fit_fold("linear", model, train, x_bad, y, x, y)
    fit_fold("linear", model, train, x, y, x, y)  # finite data trains
