"""Blending on out-of-fold predictions: Caruana selection, SLSQP weights, cross-fitting."""
from __future__ import annotations

import numpy as np
import pytest

from moa_tune.blend import blend, caruana, cross_fit, slsqp, weighted
from moa_tune.metric import log_loss


def noisy_components(seed: int = 0, rows: int = 600, targets: int = 12):
    """Truth, two informative components with independent noise, and a useless constant one."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.5, 1.5, size=(rows, targets))
    y = (rng.random((rows, targets)) < 1 / (1 + np.exp(-logit))).astype(np.float32)

    def view(noise: float) -> np.ndarray:
        return (1 / (1 + np.exp(-(logit + rng.normal(0, noise, logit.shape))))).astype(np.float32)

    return y, {"a": view(0.8), "b": view(0.8), "useless": np.full(y.shape, 0.5, dtype=np.float32)}


@pytest.mark.parametrize("method", [caruana, slsqp])
def test_weights_are_a_convex_combination_that_beats_each_component(method) -> None:
    y, comps = noisy_components()
    preds = list(comps.values())
    w = method(preds, y)
    assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert w[2] < 0.05  # the constant 0.5 only hurts
    blended = log_loss(y, weighted(preds, w))
    assert blended < min(log_loss(y, p) for p in preds[:2]) - 1e-4


def test_slsqp_finds_the_optimum_of_two_components() -> None:
    """A brute-force grid over the simplex of two components agrees with SLSQP."""
    y, comps = noisy_components(seed=3)
    a, b = comps["a"], comps["b"]
    grid = np.linspace(0, 1, 201)
    losses = [log_loss(y, weighted([a, b], [t, 1 - t])) for t in grid]
    w = slsqp([a, b], y)
    assert log_loss(y, weighted([a, b], w)) <= min(losses) + 1e-7
    assert w[0] == pytest.approx(grid[int(np.argmin(losses))], abs=0.01)


def test_caruana_with_one_component_and_identical_components() -> None:
    y, comps = noisy_components()
    assert caruana([comps["a"]], y).tolist() == [1.0]
    w = caruana([comps["a"], comps["a"]], y)
    assert w.sum() == pytest.approx(1.0)


def test_cross_fit_scores_each_fold_with_weights_fitted_elsewhere() -> None:
    y, comps = noisy_components(rows=400)
    preds = list(comps.values())
    fold = np.arange(len(y)) % 4
    out, fitted = cross_fit(slsqp, preds, y, fold)
    assert len(fitted) == 4 and out.shape == y.shape
    # rows of fold 0 are predicted with the weights fitted without them
    np.testing.assert_allclose(out[fold == 0], weighted([p[fold == 0] for p in preds], fitted[0]), atol=1e-6)
    w_rest = slsqp([p[fold != 0] for p in preds], y[fold != 0])
    np.testing.assert_allclose(fitted[0], w_rest, atol=1e-6)


def test_blend_reports_both_methods_and_chooses_by_cross_fitted_loss() -> None:
    y, comps = noisy_components(rows=500)
    fold = np.arange(len(y)) % 5
    result = blend(comps, y, fold)
    assert {"caruana", "slsqp"} <= set(result.methods) <= {"caruana", "slsqp", "caruana-pruned", "slsqp-pruned"}
    chosen = result.methods[result.chosen]
    assert chosen.cross_fitted_loss == min(m.cross_fitted_loss for m in result.methods.values())
    for m in result.methods.values():
        assert m.loss <= m.cross_fitted_loss + 1e-3  # in-sample flatters (or ties)
    assert result.best_component[0] in ("a", "b")
    assert result.loss < result.best_component[1]
    doc = result.to_json()
    assert doc["chosen"] == result.chosen and sum(doc["methods"][result.chosen]["weights"].values()) == pytest.approx(1)
    assert doc["best_component"]["loss"] == pytest.approx(min(result.component_losses.values()))


def test_a_component_stays_only_where_it_lowers_the_cross_fitted_loss() -> None:
    """A component that only fits noise in-sample is left out; the others keep their weights."""
    y, comps = noisy_components(rows=400)
    rng = np.random.default_rng(1)
    # a component of pure noise around the base rate: in-sample weights give it a little, out of fold it hurts
    comps["noise"] = np.clip(y.mean() + rng.normal(0, 0.05, y.shape), 0.01, 0.99).astype(np.float32)
    fold = np.arange(len(y)) % 5
    result = blend(comps, y, fold)
    unpruned = min((m for name, m in result.methods.items() if not name.endswith("-pruned")),
                   key=lambda m: m.cross_fitted_loss)
    assert result.chosen.endswith("-pruned")
    assert result.weights["noise"] == 0 and result.weights["useless"] == 0
    assert result.weights["a"] > 0 and result.weights["b"] > 0 and sum(result.weights.values()) == pytest.approx(1)
    assert result.cross_fitted_loss <= unpruned.cross_fitted_loss
    # the pruned blend's cross-fitted predictions are what its figure says
    assert log_loss(y, result.cross_fitted) == pytest.approx(result.cross_fitted_loss, abs=1e-9)
