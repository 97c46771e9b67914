"""moa_tune.models: common checks run over every registered family, then family-specific ones.

In the spirit of scikit-learn's common estimator checks: every family in ``FAMILIES`` must resolve
its defaults, build, give float32 logits of the right shape in train and eval mode (batch size 1
in eval), learn a small learnable task, be deterministic under a seed, round-trip its state dict
through safetensors, reject unknown and out-of-range parameters, and keep every tensor it uses
as a parameter or buffer (so ``.to(device)`` moves all of it).
"""
from __future__ import annotations

import copy
import importlib
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from moa_tune.errors import ConfigError
from moa_tune.models import FAMILIES, Family, MoaModel, get_family
from moa_tune.params import Param

N_INPUTS, N_OUTPUTS = 37, 11
GROUPS = {"genes": np.arange(0, 20), "cells": np.arange(20, 30), "meta": np.arange(30, 37)}
BATCH = 16
SEED = 0
# the torch networks; a family fitted by another library (catboost) has its own tests
FAMILY_NAMES = sorted(name for name in FAMILIES if get_family(name).torch_network)
SCALAR_KINDS = {"int", "float", "bool", "str"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """These networks are tiny: one intra-op thread is faster, and much faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, seed: int = SEED, groups: dict[str, np.ndarray] | None = None, **values: Any) -> MoaModel:
    family = get_family(name)
    torch.manual_seed(seed)
    return family.build(N_INPUTS, N_OUTPUTS, family.resolve(values), GROUPS if groups is None else groups)


def inputs(n: int = BATCH, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, N_INPUTS, generator=torch.Generator().manual_seed(seed))


def learnable_task(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets that are a noisy linear function of the inputs (a logistic model can learn them)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, N_INPUTS, generator=gen)
    w = torch.randn(N_INPUTS, N_OUTPUTS, generator=gen)
    y = (x @ w + 0.5 * torch.randn(n, N_OUTPUTS, generator=gen) > 0).float()
    return x, y


def train_steps(model: MoaModel, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for step in range(steps):
        rows = torch.arange(step * 64, (step + 1) * 64) % len(x)
        optimizer.zero_grad()
        loss = loss_fn(model(x[rows]), y[rows]) + model.penalty()
        loss.backward()
        optimizer.step()


def eval_outputs(model: MoaModel, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------------------------
# common checks, every registered family


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_declares_flat_documented_params(name: str) -> None:
    family = get_family(name)
    assert isinstance(family, Family) and family.name == name
    module = importlib.import_module(FAMILIES[name].split(":")[0])
    assert module.__doc__ and len(module.__doc__) > 200, "the module docstring should say why the architecture"
    assert family.params
    for pname, spec in family.params.items():
        assert isinstance(spec, Param)
        assert spec.kind in SCALAR_KINDS, f"{name}.{pname} is not a flat scalar (searched by Optuna)"
        assert spec.doc, f"{name}.{pname} has no doc"
        if spec.kind in ("int", "float"):
            assert spec.low is not None and spec.high is not None, f"{name}.{pname} has no range"
        if spec.kind == "str":
            assert spec.choices and spec.default in spec.choices
    resolved = family.resolve({})
    assert resolved == {pname: spec.default for pname, spec in family.params.items()}
    assert family.resolve(None) == resolved


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_forward_shapes_train_and_eval(name: str) -> None:
    model = build(name)
    assert isinstance(model, MoaModel)
    x = inputs()
    model.train()
    out = model(x)
    assert out.shape == (BATCH, N_OUTPUTS) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        for n in (1, 2, BATCH):
            out = model(x[:n])
            assert out.shape == (n, N_OUTPUTS) and out.dtype == torch.float32
            assert torch.isfinite(out).all()
    with torch.no_grad():  # eval mode: a row's output does not depend on the rest of the batch
        torch.testing.assert_close(model(x[:1]), model(x)[:1])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_penalty_is_a_scalar(name: str) -> None:
    model = build(name)
    model.train()
    model(inputs())
    penalty = model.penalty()
    if isinstance(penalty, torch.Tensor):
        assert penalty.dim() == 0 and penalty.dtype == torch.float32
        assert float(penalty.detach()) >= 0
    else:
        assert isinstance(penalty, float) and penalty >= 0


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_few_adam_steps_reduce_the_loss(name: str) -> None:
    x, y = learnable_task()
    model = build(name)
    loss_fn = nn.BCEWithLogitsLoss()
    train_steps(model, x, y, steps=2)  # settle the batch-norm running statistics a little first
    before = loss_fn(eval_outputs(model, x), y).item()
    train_steps(model, x, y, steps=15)
    after = loss_fn(eval_outputs(model, x), y).item()
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_same_seed_same_network(name: str) -> None:
    x = inputs()
    first, second, other = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    assert torch.equal(eval_outputs(first, x), eval_outputs(second, x))
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    assert not torch.equal(eval_outputs(first, x), eval_outputs(other, x))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_safetensors_round_trip(name: str, tmp_path: Path) -> None:
    x, y = learnable_task()
    model = build(name, seed=5)
    train_steps(model, x, y, steps=3)  # parameters and running statistics away from their initial values
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = build(name, seed=6)
    assert not torch.equal(eval_outputs(fresh, x), eval_outputs(model, x))
    result = fresh.load_state_dict(load_file(str(path)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(eval_outputs(fresh, x), eval_outputs(model, x))
    for tensor in fresh.state_dict().values():
        assert tensor.dtype in (torch.float32, torch.int64)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_tensor_is_a_parameter_or_buffer(name: str) -> None:
    """A tensor held as a plain attribute would stay on the CPU after ``model.to('cuda')``."""
    model = build(name)
    for module_name, module in model.named_modules():
        stray = [key for key, value in vars(module).items() if isinstance(value, torch.Tensor)]
        assert not stray, f"{module_name or 'model'} holds plain tensors {stray}"
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert not tensor.is_floating_point() or tensor.dtype == torch.float32, key


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_deepcopy_after_a_training_forward(name: str) -> None:
    model = build(name)
    model.train()
    model(inputs())
    clone = copy.deepcopy(model)
    x = inputs(seed=7)
    assert torch.equal(eval_outputs(clone, x), eval_outputs(model, x))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_unknown_parameter_gets_did_you_mean(name: str) -> None:
    family = get_family(name)
    pname = max(family.params, key=len)
    with pytest.raises(ConfigError, match=f"Unknown parameter 'model.{pname[:-1]}'.*Did you mean"):
        family.resolve({pname[:-1]: family.params[pname].default})


def bad_values(spec: Param) -> list[Any]:
    if spec.kind == "bool":
        return ["yes", 1]
    if spec.kind == "str":
        return ["no-such-choice", 3]
    values: list[Any] = ["3"]
    if spec.high is not None:
        values.append(spec.high if spec.high_open else spec.high + 1)
    if spec.low is not None:
        values.append(spec.low if spec.low_open else spec.low - 1)
    if spec.kind == "int":
        values.append(1.5)
    return values


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_out_of_range_values_name_the_parameter(name: str) -> None:
    family = get_family(name)
    for pname, spec in family.params.items():
        for value in bad_values(spec):
            with pytest.raises(ConfigError, match=f"The 'model.{pname}' parameter must be"):
                family.resolve({pname: value})


def test_unknown_family_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'mlp'"):
        get_family("mlpp")


# ---------------------------------------------------------------------------------------------
# linear and mlp


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_linear_is_one_layer() -> None:
    model = build("linear")
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(N_INPUTS, N_OUTPUTS)]
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    bare = build("linear", batch_norm=False, input_dropout=0.0, weight_norm=False)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in bare.modules())
    assert not hasattr(linears(bare)[0], "parametrizations")


@pytest.mark.parametrize(("n_layers", "hidden", "factor", "widths"), [
    (1, 64, 1.0, [64]),
    (3, 64, 1.0, [64, 64, 64]),
    (3, 256, 0.5, [256, 128, 64]),
    (5, 64, 0.5, [64, 32, 16, 16, 16]),  # never below MIN_WIDTH
])
def test_mlp_depth_and_width(n_layers: int, hidden: int, factor: float, widths: list[int]) -> None:
    model = build("mlp", n_layers=n_layers, hidden_size=hidden, width_factor=factor)
    layers = linears(model)
    assert len(layers) == n_layers + 1
    assert [m.out_features for m in layers] == [*widths, N_OUTPUTS]
    assert [m.in_features for m in layers] == [N_INPUTS, *widths]


def test_mlp_switches() -> None:
    default = build("mlp")
    assert all(hasattr(m, "parametrizations") for m in linears(default))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in default.modules()) == 3
    assert [m.p for m in default.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5]
    bare = build("mlp", weight_norm=False, batch_norm=False, input_dropout=0.0, dropout=0.0, activation="gelu")
    assert not any(hasattr(m, "parametrizations") for m in linears(bare))
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in bare.modules())
    assert sum(isinstance(m, nn.GELU) for m in bare.modules()) == 2


def captured(model: MoaModel, x: torch.Tensor, names: Sequence[str], *,
             what: str = "input") -> dict[str, torch.Tensor]:
    """What the named submodules receive (``what="input"``) or return (``"output"``) in one eval forward.

    Forward (pre-)hooks read the tensors where they flow, so the tests check the wiring itself
    rather than re-implementing the forward pass.
    """
    seen: dict[str, torch.Tensor] = {}
    modules = [getattr(model, name) for name in names]
    if what == "input":
        handles = [m.register_forward_pre_hook(lambda module, args, name=name: seen.update({name: args[0]}))
                   for name, m in zip(names, modules)]
    else:
        handles = [m.register_forward_hook(lambda module, args, out, name=name: seen.update({name: out}))
                   for name, m in zip(names, modules)]
    try:
        eval_outputs(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


# ---------------------------------------------------------------------------------------------
# resnet2head


@pytest.mark.parametrize(("subset", "columns"), [
    ("genes_cells", np.arange(0, 30)),
    ("genes", np.arange(0, 20)),
    ("cells", np.arange(20, 30)),
])
def test_resnet2head_head_b_sees_the_subset(subset: str, columns: np.ndarray) -> None:
    model = build("resnet2head", subset=subset)
    bottleneck = get_family("resnet2head").params["bottleneck_size"].default
    first_a, first_b = model.head_a[0].linear, model.head_b[0].linear
    assert first_a.in_features == N_INPUTS
    assert first_b.in_features == len(columns) + bottleneck
    x = inputs()
    seen = captured(model, x, ["head_b"])["head_b"]
    assert torch.equal(seen[:, :len(columns)], x[:, columns])
    with torch.no_grad():
        assert torch.equal(seen[:, len(columns):], model.head_a(x))
    # a column outside the subset reaches head B only through head A's output
    outside = np.setdiff1d(np.arange(N_INPUTS), columns)[0]
    changed = x.clone()
    changed[:, outside] += 10.0
    assert torch.equal(captured(model, changed, ["head_b"])["head_b"][:, :len(columns)], x[:, columns])


def test_resnet2head_widths_and_combine() -> None:
    model = build("resnet2head")
    assert [b.linear.out_features for b in model.head_a] == [512, 256]
    assert [b.linear.out_features for b in model.head_b] == [512, 512, 256, 256]
    assert model.final.linear.in_features == 256
    concat = build("resnet2head", combine="concat", hidden_size=64, bottleneck_size=32, n_blocks_a=1, n_blocks_b=3)
    assert [b.linear.out_features for b in concat.head_a] == [32]
    assert [b.linear.out_features for b in concat.head_b] == [64, 32, 32]
    assert concat.final.linear.in_features == 64
    assert concat.head_b[0].linear.in_features == 30 + 32


def test_resnet2head_missing_groups_fall_back_to_all_features() -> None:
    with pytest.warns(UserWarning, match="head B uses all 37 features"):
        model = build("resnet2head", subset="pca")
    assert torch.equal(model.subset_index, torch.arange(N_INPUTS))
    with pytest.warns(UserWarning, match="head B uses all 37 features"):
        model = build("resnet2head", groups={"genes": np.array([], dtype=int)}, subset="genes")
    assert model.head_b[0].linear.in_features == N_INPUTS + 256
    with warnings.catch_warnings():  # a partly present subset is used without a warning
        warnings.simplefilter("error")
        model = build("resnet2head", groups={"cells": np.arange(20, 30)}, subset="genes_cells")
    assert torch.equal(model.subset_index, torch.arange(20, 30))
    assert "subset_index" in model.state_dict()


def test_resnet2head_rejects_bad_group_indices() -> None:
    with pytest.raises(ValueError, match="outside"):
        build("resnet2head", groups={"genes": np.array([0, N_INPUTS])}, subset="genes")
    with pytest.raises(ValueError, match="integer"):
        build("resnet2head", groups={"genes": np.array([0.0, 1.0])}, subset="genes")


# ---------------------------------------------------------------------------------------------
# resnet3head

# The common checks' GROUPS have no PCA/stats/inputs columns, so head C's default subset
# ('engineered') falls back to all features there, with a warning that is expected (and checked below).
pytestmark = pytest.mark.filterwarnings("ignore:resnet3head. none of the feature groups:UserWarning")

#: Feature groups as a pipeline with PCA and row statistics lays them out (37 columns).
GROUPS_3HEAD = {"genes": np.arange(0, 15), "cells": np.arange(15, 22), "gene_pca": np.arange(22, 25),
                "cell_pca": np.arange(25, 26), "stats": np.arange(26, 30), "meta": np.arange(30, 37)}
HEADS = ("head_a", "head_b", "head_c")


@pytest.mark.parametrize(("subset_b", "subset_c", "columns_b", "columns_c"), [
    ("genes_cells", "engineered", np.arange(0, 22), np.arange(22, 30)),
    ("genes", "pca_stats", np.arange(0, 15), np.arange(22, 30)),
    ("pca", "stats", np.arange(22, 26), np.arange(26, 30)),
    ("cells", "cells", np.arange(15, 22), np.arange(15, 22)),
])
def test_resnet3head_heads_see_their_subsets(subset_b: str, subset_c: str, columns_b: np.ndarray,
                                             columns_c: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every subset is present: no fallback
        model = build("resnet3head", groups=GROUPS_3HEAD, subset_b=subset_b, subset_c=subset_c,
                      hidden_size=32, bottleneck_size=16)
    assert model.head_b[0].linear.in_features == len(columns_b) + 16
    assert model.head_c[0].linear.in_features == len(columns_c) + 16
    x = inputs()
    seen = captured(model, x, HEADS)
    torch.testing.assert_close(seen["head_a"], x, rtol=0, atol=0)
    with torch.no_grad():  # B: its columns next to A's output; C: its columns next to B's output
        assert torch.equal(seen["head_b"], torch.cat([x[:, columns_b], model.head_a(x)], dim=1))
        assert torch.equal(seen["head_c"], torch.cat([x[:, columns_c], model.head_b(seen["head_b"])], dim=1))
    # a column outside C's subset reaches head C only through head B's output
    changed = x.clone()
    changed[:, np.setdiff1d(np.arange(N_INPUTS), columns_c)[0]] += 10.0
    assert torch.equal(captured(model, changed, ["head_c"])["head_c"][:, :len(columns_c)], x[:, columns_c])


def test_resnet3head_widths_combine_and_state() -> None:
    model = build("resnet3head", groups=GROUPS_3HEAD)
    assert [b.linear.out_features for b in model.head_a] == [512, 256]
    assert [b.linear.out_features for b in model.head_b] == [512, 512, 256, 256]
    assert [b.linear.out_features for b in model.head_c] == [256]
    assert model.final.linear.in_features == 256
    x = inputs()
    outputs = captured(model, x, HEADS, what="output")  # 'average': the final block reads the mean of the three heads
    torch.testing.assert_close(captured(model, x, ["final"])["final"], (outputs["head_a"] + outputs["head_b"] + outputs["head_c"]) / 3)
    concat = build("resnet3head", groups=GROUPS_3HEAD, combine="concat", hidden_size=64, bottleneck_size=32,
                   n_blocks_a=1, n_blocks_b=3, n_blocks_c=4)
    assert [b.linear.out_features for b in concat.head_c] == [64, 64, 32, 32]
    assert concat.final.linear.in_features == 3 * 32
    assert concat.head_c[0].linear.in_features == 8 + 32
    state = model.state_dict()
    assert torch.equal(state["subset_b_index"], torch.arange(0, 22))
    assert torch.equal(state["subset_c_index"], torch.arange(22, 30))


def test_resnet3head_fallback_names_the_head() -> None:
    with pytest.warns(UserWarning, match="resnet3head: .* head C uses all 37 features") as record:
        model = build("resnet3head")  # GROUPS: genes, cells and meta only
    assert len(record) == 1 and "subset 'engineered'" in str(record[0].message)  # B's genes_cells is present
    assert torch.equal(model.subset_c_index, torch.arange(N_INPUTS))
    assert model.head_c[0].linear.in_features == N_INPUTS + 256
    with pytest.warns(UserWarning, match="head B uses all 37 features"):
        build("resnet3head", groups={"stats": np.arange(0, 4)}, subset_b="genes_cells")
    with pytest.raises(ValueError, match="outside"):
        build("resnet3head", groups={"stats": np.array([0, N_INPUTS])})


def test_resnet3head_cross_validates_at_stage2(tiny, tmp_path: Path) -> None:
    """End to end on the tiny preset: head C gets the pipeline's PCA, stats and stage-1 columns, and a fold reloads."""
    from conftest import FAST_TRAIN

    from moa_tune.artifacts import load_fitted, save_fitted
    from moa_tune.train import CVResult, cross_validate

    data, folds = tiny
    bare = {"scaler": "none", "gene_pca": 0, "cell_pca": 0, "row_stats": False}  # stage 1 only makes inputs
    *_, stage1 = cross_validate({"family": "linear", "stage": "stage1", "features": bare,
                                 "train": {**FAST_TRAIN, "epochs": 1}}, data, folds)
    config = {"family": "resnet3head", "stage": "stage2", "train": {**FAST_TRAIN, "epochs": 2},
              "model": {"hidden_size": 32, "bottleneck_size": 16, "n_blocks_b": 2}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # both subsets are present in a real pipeline
        *reports, result = cross_validate(config, data, folds, stage1.predictions, keep_models=True)
    assert isinstance(result, CVResult) and np.isfinite(result.loss)
    assert result.oof.shape == data.scored.shape and result.predictions.columns == data.scored_columns
    report = reports[0]
    groups = report.pipeline.groups_
    assert groups["inputs"].size and groups["gene_pca"].size and groups["stats"].size
    engineered = np.concatenate([groups[g] for g in ("gene_pca", "cell_pca", "stats", "inputs")])
    np.testing.assert_array_equal(report.model.subset_c_index.numpy(), np.sort(engineered))
    np.testing.assert_array_equal(report.model.subset_b_index.numpy(),
                                  np.concatenate([groups["genes"], groups["cells"]]))
    resolved = get_family("resnet3head").resolve(config["model"])
    save_fitted(tmp_path / "fold_0", family="resnet3head", model_params=resolved, n_outputs=report.model_outputs,
                model=report.model, pipeline=report.pipeline)
    _, loaded, _ = load_fitted(tmp_path / "fold_0")
    x = torch.randn(5, report.pipeline.n_features_out_, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(eval_outputs(loaded, x), eval_outputs(report.model.cpu(), x))


# ---------------------------------------------------------------------------------------------
# tabnet


def test_tabnet_penalty() -> None:
    model = build("tabnet", lambda_sparse=1e-3, n_steps=2)
    model.train()
    model(inputs())
    penalty = model.penalty()
    assert isinstance(penalty, torch.Tensor) and penalty.requires_grad
    assert float(penalty.detach()) > 0
    default = build("tabnet")  # lambda_sparse = 0: no penalty
    default.train()
    default(inputs())
    assert float(torch.as_tensor(default.penalty()).detach()) == 0


@pytest.mark.parametrize("mask_type", ["sparsemax", "entmax"])
def test_tabnet_any_batch_size(mask_type: str) -> None:
    """Ghost batch norm: train mode works for every batch of >= 2 rows, eval mode for >= 1."""
    model = build("tabnet", virtual_batch_size=2, n_steps=2, mask_type=mask_type)
    model.train()
    for n in (2, 3, 5, 7, 9, 33):
        assert model(inputs(n)).shape == (n, N_OUTPUTS)
    model.eval()
    with torch.no_grad():
        for n in (1, 3, 5):
            assert model(inputs(n)).shape == (n, N_OUTPUTS)


def test_tabnet_structure() -> None:
    from pytorch_tabnet import tab_network

    from moa_tune.models.tabnet import GhostBatchNorm

    model = build("tabnet", n_steps=3, n_shared=2, n_independent=1)
    assert not any(isinstance(m, tab_network.GBN) for m in model.modules())
    assert any(isinstance(m, GhostBatchNorm) for m in model.modules())
    assert any(key.endswith("group_attention_matrix") for key, _ in model.named_buffers())
    assert not any(key.endswith("group_attention_matrix") for key in model.state_dict())
    with pytest.raises(ConfigError, match="may not both be 0"):
        get_family("tabnet").resolve({"n_independent": 0, "n_shared": 0})
