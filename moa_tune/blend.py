"""Blending components on their out-of-fold predictions: ensemble selection and constrained weights.

Two standard ways to weigh components that all predict the same targets:

- :func:`caruana`: Caruana et al.'s ensemble selection, greedy forward selection *with
  replacement*: each step adds the component that lowers the blend's loss most; the weights are
  how often each was picked. Robust with many similar components.
- :func:`slsqp`: non-negative weights summing to 1 that minimise the blend's log loss, fitted with
  scipy's SLSQP from the equal-weights start (the kernels' "optimised blend", done once properly).

Weights fitted on the same out-of-fold rows they are scored on flatter the blend. :func:`cross_fit`
guards against that: for each fold it fits the weights on the other folds' rows and predicts the
fold's rows with them, so its loss is a fair estimate of what the blend adds. :func:`blend`
runs both methods, cross-fits both, and chooses the one with the lower cross-fitted loss; then
:func:`prune` leaves out every component whose removal does not raise that loss, so a component
stays in the blend only where it lowers the cross-fitted loss.
Everything here is numpy + scipy: no Ray, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .metric import log_loss

__all__ = ["METHODS", "BlendResult", "blend", "caruana", "cross_fit", "prune", "slsqp", "weighted"]

EPS = 1e-15


def weighted(predictions: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted average of several (rows, targets) prediction arrays, float32."""
    out = np.zeros(predictions[0].shape, dtype=np.float64)
    for p, w in zip(predictions, weights):
        if w:
            out += float(w) * p
    return out.astype(np.float32)


def _loss_of(y: np.ndarray) -> Callable[[np.ndarray], float]:
    """The metric against ``y`` as a function of the predictions, fast for binary targets.

    Greedy selection scores the blend hundreds of times on every (row, target): for 0/1 targets
    the metric is the mean of -log(p) where y = 1 and -log(1 - p) where y = 0, one log per cell
    instead of two, in float32 with a float64 mean (the same value to about 1e-9).
    """
    y = np.asarray(y)
    mask = y > 0.5
    if not np.array_equal(mask, y):
        return lambda p: log_loss(y, p)

    def loss(p: np.ndarray) -> float:
        q = np.where(mask, p, 1 - p).astype(np.float32, copy=False)
        np.maximum(q, np.float32(EPS), out=q)
        return -float(np.log(q).mean(dtype=np.float64))

    return loss


def caruana(predictions: Sequence[np.ndarray], y: np.ndarray, n_iter: int = 50, patience: int = 10) -> np.ndarray:
    """Ensemble selection with replacement; returns weights (pick counts / picks) of the best bag.

    Runs up to ``n_iter`` greedy steps (a step may make the blend worse, which lets it leave a
    local optimum), stops after ``patience`` steps without a new best, and keeps the bag with the
    lowest loss seen.
    """
    n = len(predictions)
    loss_of = _loss_of(y)
    preds = [np.asarray(p, dtype=np.float32) for p in predictions]
    counts = np.zeros(n, dtype=np.int64)
    total = np.zeros_like(preds[0])
    best_loss, best_counts, since_best = np.inf, counts.copy(), 0
    for step in range(1, n_iter + 1):
        losses = [loss_of((total + p) / np.float32(step)) for p in preds]
        pick = int(np.argmin(losses))
        counts[pick] += 1
        total += preds[pick]
        if losses[pick] < best_loss - 1e-12:
            best_loss, best_counts, since_best = losses[pick], counts.copy(), 0
        else:
            since_best += 1
        if n == 1 or since_best >= patience:
            break
    return best_counts / best_counts.sum()


def slsqp(predictions: Sequence[np.ndarray], y: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """Non-negative weights summing to 1 minimising the blend's log loss (scipy SLSQP, exact gradient).

    The loss and its gradient are computed in float32 over the flattened (rows x targets) cells
    with float64 sums: a blend is fitted a few dozen times per collection (cross-fitting, pruning)
    on arrays of millions of cells.
    """
    from scipy.optimize import minimize

    n = len(predictions)
    if n == 1:
        return np.ones(1)
    stack = np.stack([np.asarray(p, dtype=np.float32).ravel() for p in predictions])  # (n, cells)
    y = np.asarray(y, dtype=np.float32).ravel()
    binary = bool(np.array_equal(y > 0.5, y))
    scale = 1.0 / y.size
    eps = np.float32(EPS)

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.clip(w.astype(np.float32) @ stack, eps, np.float32(1 - EPS))
        if binary:
            hit = y > 0.5
            loss = -float(np.log(np.where(hit, p, 1 - p)).sum(dtype=np.float64)) * scale
            dp = np.where(hit, -1 / p, 1 / (1 - p)).astype(np.float32)
        else:
            loss = -float((y * np.log(p) + (1 - y) * np.log(1 - p)).sum(dtype=np.float64)) * scale
            dp = (-(y / p - (1 - y) / (1 - p))).astype(np.float32)
        return loss, (stack @ dp).astype(np.float64) * scale

    start = np.full(n, 1.0 / n)
    result = minimize(loss_and_grad, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n,
                      constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones_like(w)}],
                      options={"maxiter": max_iter, "ftol": 1e-10})
    w = np.clip(result.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else start
    # SLSQP can stop early on flat problems: never return worse than where it started
    return w if loss_and_grad(w)[0] <= loss_and_grad(start)[0] + 1e-12 else start


METHODS: dict[str, Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray]] = {"caruana": caruana, "slsqp": slsqp}


def cross_fit(method: Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray], predictions: Sequence[np.ndarray],
              y: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions of each fold's rows by weights fitted on the other folds' rows; and those weights.

    ``fold`` gives each row's fold (rows of ``predictions`` and ``y``); every fold must have rows.
    """
    out = np.zeros(predictions[0].shape, dtype=np.float32)
    fitted = []
    for k in np.unique(fold):
        rest, rows = fold != k, fold == k
        w = method([p[rest] for p in predictions], y[rest])
        fitted.append(w)
        out[rows] = weighted([p[rows] for p in predictions], w)
    return out, fitted


@dataclass(frozen=True)
class MethodResult:
    weights: np.ndarray            # one per component, non-negative, sum 1
    loss: float                    # in-sample: weights fitted and scored on all rows
    cross_fitted_loss: float       # weights fitted on the other folds, scored on each fold


@dataclass(frozen=True)
class BlendResult:
    """Both methods' weights and figures, the chosen method and each component's own loss."""

    names: tuple[str, ...]
    component_losses: dict[str, float]
    methods: dict[str, MethodResult]
    chosen: str
    cross_fitted: np.ndarray = field(repr=False)   # the chosen method's cross-fitted predictions

    @property
    def weights(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.methods[self.chosen].weights)}

    @property
    def loss(self) -> float:
        return self.methods[self.chosen].loss

    @property
    def cross_fitted_loss(self) -> float:
        return self.methods[self.chosen].cross_fitted_loss

    @property
    def best_component(self) -> tuple[str, float]:
        name = min(self.component_losses, key=self.component_losses.get)
        return name, self.component_losses[name]

    def to_json(self) -> dict:
        best = self.best_component
        return {
            "components": list(self.names),
            "component_losses": self.component_losses,
            "methods": {m: {"weights": {n: float(w) for n, w in zip(self.names, r.weights)}, "loss": r.loss,
                            "cross_fitted_loss": r.cross_fitted_loss} for m, r in self.methods.items()},
            "chosen": self.chosen, "loss": self.loss, "cross_fitted_loss": self.cross_fitted_loss,
            "best_component": {"id": best[0], "loss": best[1]},
        }


def blend(predictions: Mapping[str, np.ndarray], y: np.ndarray, fold: np.ndarray,
          methods: Sequence[str] = ("caruana", "slsqp")) -> BlendResult:
    """Fit every method on all rows and cross-fitted by fold; choose the lower cross-fitted loss.

    ``predictions``: component name -> (rows, targets) out-of-fold predictions of the rows that
    count (treated rows); ``y`` the true targets of those rows; ``fold`` their folds.
    """
    names = tuple(predictions)
    preds = [np.asarray(predictions[n], dtype=np.float32) for n in names]
    results: dict[str, MethodResult] = {}
    crossed: dict[str, np.ndarray] = {}
    fold_weights: dict[str, list[np.ndarray]] = {}
    for m in methods:
        w = METHODS[m](preds, y)
        crossed[m], fold_weights[m] = cross_fit(METHODS[m], preds, y, fold)
        results[m] = MethodResult(w, log_loss(y, weighted(preds, w)), log_loss(y, crossed[m]))
    chosen = min(results, key=lambda m: (results[m].cross_fitted_loss, m))
    pruned = prune(METHODS[chosen], preds, y, fold, results[chosen], fold_weights[chosen])
    if pruned is not None:
        name = f"{chosen}-pruned"
        results[name], crossed[name] = pruned
        if results[name].cross_fitted_loss <= results[chosen].cross_fitted_loss:
            chosen = name
    return BlendResult(names, {n: log_loss(y, p) for n, p in zip(names, preds)}, results, chosen, crossed[chosen])


def prune(method: Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray], preds: Sequence[np.ndarray],
          y: np.ndarray, fold: np.ndarray, fitted: MethodResult,
          fold_weights: Sequence[np.ndarray]) -> tuple[MethodResult, np.ndarray] | None:
    """The blend without the components that do not lower its cross-fitted loss; None if every one does.

    In-sample weights can give a component weight for what it adds on the rows the weights were
    fitted on (a stacker fitted on its inputs' out-of-fold predictions, a near-copy of another
    component). Lightest first, each component is left out when the cross-fitted blend without it
    (each fold's weights from ``fold_weights``, the ones :func:`cross_fit` fitted on the other
    folds, renormalised over the rest) scores a loss at least as low. The components kept are then
    fitted and cross-fitted again; the result counts only if that cross-fitted loss is at least as
    low as ``fitted``'s, which the caller checks.
    """
    loss_of = _loss_of(y)
    ids = np.unique(fold)

    def crossed_without(dropped: set[int]) -> np.ndarray:
        out = np.zeros(preds[0].shape, dtype=np.float32)
        for k, w in zip(ids, fold_weights):
            w = np.asarray(w, dtype=np.float64).copy()
            w[list(dropped)] = 0.0
            if w.sum() <= 0:  # this fold's weights were all on dropped components: the rest equally
                w = np.ones(len(w))
                w[list(dropped)] = 0.0
            rows = fold == k
            out[rows] = weighted([p[rows] for p in preds], w / w.sum())
        return out

    dropped: set[int] = set()
    best = fitted.cross_fitted_loss
    for i in sorted(range(len(preds)), key=lambda j: (fitted.weights[j], j)):
        if len(dropped) == len(preds) - 1:
            break
        loss = loss_of(crossed_without(dropped | {i}))
        if loss <= best:
            dropped.add(i)
            best = loss
    if not dropped:
        return None
    kept = [j for j in range(len(preds)) if j not in dropped]
    crossed, _ = cross_fit(method, [preds[j] for j in kept], y, fold)
    weights = np.zeros(len(preds))
    weights[kept] = method([preds[j] for j in kept], y)
    return MethodResult(weights, log_loss(y, weighted(preds, weights)), log_loss(y, crossed)), crossed
