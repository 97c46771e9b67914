"""moa_tune.search_space and moa_tune.sweep_spec: YAML -> define-by-run, and every kind of bad file."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from conftest import run_cli
from moa_tune import ConfigError
from moa_tune.config import resolve_config
from moa_tune.models import FAMILIES
from moa_tune.search_space import load_search_space, parse_search_space
from moa_tune.sweep_spec import SEARCH_SPACES, load_sweep, parse_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        configs.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return configs


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_a_space_whose_samples_resolve(family: str) -> None:
    space = load_search_space(SEARCH_SPACES / f"{family}.yaml")
    assert space.family == family and len(space.searched()) >= 5
    sections = {name.split(".")[0] for name in space.searched()}
    assert {"features", "model", "train"} <= sections
    for flat in sample(space, 25):
        resolve_config(space.to_config(flat))


def test_types_fixed_values_and_conditionals() -> None:
    space = parse_search_space({"family": "mlp", "params": {
        "features.scaler": {"type": "categorical", "choices": ["rankgauss", "standard"]},
        "features.n_quantiles": {"type": "int", "low": 50, "high": 500, "log": True,
                                 "when": {"features.scaler": "rankgauss"}},
        "search.pca": {"type": "categorical", "choices": [True, False]},
        "features.gene_pca": {"type": "int", "low": 10, "high": 100, "when": {"search.pca": True}, "else": 0},
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "model.dropout": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.1},
        "train.epochs": 7,
    }})
    configs = sample(space, 40)
    for flat in configs:
        assert flat["train.epochs"] == 7 and 1e-4 <= flat["train.lr"] <= 1e-1
        assert ("features.n_quantiles" in flat) == (flat["features.scaler"] == "rankgauss")
        if flat["search.pca"]:
            assert 10 <= flat["features.gene_pca"] <= 100
        else:
            assert flat["features.gene_pca"] == 0
        assert round(flat["model.dropout"] * 10, 6) == int(round(flat["model.dropout"] * 10))
        config = space.to_config(flat)
        assert "search" not in config and config["train"]["epochs"] == 7
    assert {c["search.pca"] for c in configs} == {True, False}


BAD_SPACES = {
    "unknown parameter": ({"family": "mlp", "params": {"model.hiden_size": {"type": "int", "low": 1, "high": 2}}},
                          ["'model.hiden_size'", "Did you mean 'model.hidden_size'"]),
    "unknown section": ({"family": "mlp", "params": {"optim.lr": 0.1}}, ["'optim.lr'", "section.parameter"]),
    "impossible range": ({"family": "mlp", "params": {"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
                         ["'train.lr'", "impossible range"]),
    "log with zero": ({"family": "mlp", "params": {"train.weight_decay": {"type": "float", "low": 0, "high": 1,
                                                                          "log": True}}},
                      ["'train.weight_decay'", "log range needs low > 0"]),
    "out of declared range": ({"family": "mlp", "params": {"model.dropout": {"type": "float", "low": 0, "high": 1.5}}},
                              ["'model.dropout'", "leaves the allowed values"]),
    "bad choice": ({"family": "mlp", "params": {"model.activation": {"type": "categorical", "choices": ["tanhh"]}}},
                   ["'model.activation'", "one of"]),
    "bad type": ({"family": "mlp", "params": {"train.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}},
                 ["'train.lr'", "'type' must be float, int or categorical"]),
    "int searched as float": ({"family": "mlp", "params": {"model.n_layers": {"type": "float", "low": 1, "high": 3}}},
                              ["'model.n_layers'", "cannot be searched as a float"]),
    "when refers to later": ({"family": "mlp", "params": {
        "features.gene_pca": {"type": "int", "low": 1, "high": 9, "when": {"search.pca": True}},
        "search.pca": {"type": "categorical", "choices": [True, False]}}}, ["'features.gene_pca'", "not a parameter defined above"]),
    "when never holds": ({"family": "mlp", "params": {  # (names in the order safe_dump sorts them)
        "model.activation": {"type": "categorical", "choices": ["relu", "elu"]},
        "model.n_layers": {"type": "int", "low": 1, "high": 3, "when": {"model.activation": "selu"}}}},
        ["'model.n_layers'", "'when' on 'model.activation': 'selu' is not one of", "can never hold"]),
    "unknown key": ({"family": "mlp", "params": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2, "lgo": True}}},
                    ["'train.lr'", "unknown key 'lgo'"]),
    "unknown family": ({"family": "mlpp", "params": {}}, ["'family'", "Did you mean 'mlp'"]),
    "fixed value out of range": ({"family": "mlp", "params": {"train.epochs": 0}}, ["'train.epochs'", "Got 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_search_space_names_file_and_key_exit_2(case: str, tmp_path: Path, capsys) -> None:
    raw, pieces = BAD_SPACES[case]
    space_file = tmp_path / "mlp.yaml"
    space_file.write_text(yaml.safe_dump(raw))
    sweep = tmp_path / "sweeps" / "s.yaml"
    sweep.parent.mkdir()
    sweep.write_text(yaml.safe_dump({"stages": [{"stage": "direct", "families": ["mlp"], "trials": 2}],
                                     "search_spaces": {"mlp": str(space_file)}}))
    with pytest.raises(ConfigError) as info:
        load_search_space(space_file)
    for piece in pieces:
        assert piece in str(info.value)
    assert str(space_file) in str(info.value)
    code, out, err = run_cli(["sweep", "--config", str(sweep), "--results", str(tmp_path / "res")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(space_file) in err
    assert not (tmp_path / "res").exists()


def test_invalid_yaml_and_empty_files(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: mlp\nparams:\n  train.lr: {type: float, low: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+\)"):
        load_search_space(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    code, _, err = run_cli(["sweep", "--config", str(empty)], capsys)
    assert code == 2 and "empty.yaml: expected a mapping" in err


BAD_SWEEPS = {
    "unknown key": ({"stagse": []}, "unknown key 'stagse'. Did you mean 'stages'"),
    "no stages": ({"name": "x"}, "'stages' must be a non-empty list"),
    "unknown stage": ({"stages": [{"stage": "stage9", "families": ["mlp"]}]}, "'stages[0].stage': unknown stage"),
    "stage2 first": ({"stages": [{"stage": "stage2", "families": ["mlp"]}]}, "needs a 'stage1' entry before it"),
    "unknown family": ({"stages": [{"stage": "direct", "families": ["tabnett"]}]}, "Did you mean 'tabnet'"),
    "bad trials": ({"stages": [{"stage": "direct", "families": ["mlp"], "trials": 0}]}, "'stages[0].trials'"),
    "bad asha": ({"asha": {"grace": 1}, "stages": [{"stage": "direct", "families": ["mlp"]}]},
                 "Unknown parameter 'asha.grace'"),
    "bad gpu": ({"resources": {"gpu": -1}, "stages": [{"stage": "direct", "families": ["mlp"]}]}, "'resources.gpu'"),
    "bad fixed": ({"fixed": {"train.epoch": 3}, "stages": [{"stage": "direct", "families": ["mlp"]}]},
                  "Unknown parameter 'train.epoch'"),
    "bad point": ({"points_to_evaluate": {"mlp": [{"train.lrr": 0.1}]},
                   "stages": [{"stage": "direct", "families": ["mlp"]}]}, "'train.lrr' is not searched"),
    "point out of range": ({"points_to_evaluate": {"mlp": [{"train.lr": 5.0}]},
                            "stages": [{"stage": "direct", "families": ["mlp"]}]},
                           "'points_to_evaluate.mlp[0].train.lr': 5.0 is outside the searched range"),
    "point not a choice": ({"points_to_evaluate": {"mlp": [{"features.scaler": "minmax"}]},
                            "stages": [{"stage": "direct", "families": ["mlp"]}]},
                           "'points_to_evaluate.mlp[0].features.scaler': 'minmax' is not one of"),
    "point wrong type": ({"points_to_evaluate": {"mlp": [{"model.n_layers": "two"}]},
                          "stages": [{"stage": "direct", "families": ["mlp"]}]},
                         "'points_to_evaluate.mlp[0].model.n_layers': must be an int, got 'two'"),
    "bad folds": ({"folds": {"scheme": "random"}, "stages": [{"stage": "direct", "families": ["mlp"]}]},
                  "'folds.scheme'"),
    "bad data": ({"data": {"synth": "huge"}, "stages": [{"stage": "direct", "families": ["mlp"]}]},
                 "unknown preset 'huge'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_sweep_file(case: str, tmp_path: Path, capsys) -> None:
    raw, message = BAD_SWEEPS[case]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        parse_sweep(raw, str(path), SEARCH_SPACES / "sweeps")
    assert message in str(info.value) and str(path) in str(info.value)
    code, _, err = run_cli(["sweep", "--config", str(path), "--results", str(tmp_path / "res")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_default_sweep_is_valid_and_starts_from_the_seed_notebook() -> None:
    spec = load_sweep()
    # the direct scheme competes with the 3-stage one, within a 10-minute budget for the whole job
    assert [s.stage for s in spec.stages] == ["direct", "stage1", "stage2", "stage3"]
    assert spec.budget_s == 600 and all(s.trials is None for s in spec.stages)  # trials: what the budget affords
    # epochs, width, depth and the learning-rate schedule are searched, not fixed
    assert not spec.fixed
    for name in ("train.epochs", "model.hidden_size", "model.n_layers", "train.pct_start", "train.div_factor"):
        assert name in spec.spaces["mlp"].searched()
    point = spec.points_to_evaluate["mlp"][0]
    assert point["features.scaler"] == "rankgauss" and point["model.dropout"] == 0.5
    space = spec.spaces["mlp"]
    resolve_config(space.to_config({**point, "family": "mlp"}))


def test_a_parameter_the_sweep_fixes_is_a_constant_not_a_search_dimension() -> None:
    """Fixed values override what a trial samples: Optuna must not model (or spend trials on) them."""
    raw = {"name": "fx", "data": {"synth": "tiny", "seed": 0},
           "fixed": {"train.lr": 0.004, "mlp": {"model.hidden_size": 300, "features.scaler": "standard"}},
           "stages": [{"stage": "direct", "families": ["mlp", "linear"], "trials": 2}],
           "points_to_evaluate": {"mlp": [{"model.hidden_size": 1024, "model.dropout": 0.3}]}}
    spec = parse_sweep(raw, "<fixed>", SEARCH_SPACES / "sweeps")
    mlp, linear = spec.spaces["mlp"], spec.spaces["linear"]
    assert not {"train.lr", "model.hidden_size", "features.scaler"} & set(mlp.searched())
    assert "train.lr" not in linear.searched() and "features.scaler" in linear.searched()  # mlp's own fixes stay its own
    for flat in sample(mlp, 10):
        assert flat["train.lr"] == 0.004 and flat["model.hidden_size"] == 300 and flat["features.scaler"] == "standard"
        assert "features.n_quantiles" not in flat  # conditioned on scaler == rankgauss: never sampled now
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    mlp(trial)
    assert not {"train.lr", "model.hidden_size"} & set(trial.params)
    # a starting point's fixed key gives way to the fixed value; the rest of the point stays
    assert spec.points_to_evaluate["mlp"] == [{"model.dropout": 0.3}]
