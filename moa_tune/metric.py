"""The competition metric: mean column-wise binary log loss, predictions clipped to [eps, 1 - eps].

Kaggle's lish-moa scorer clips with eps = 1e-15, computes the binary log loss of each target column
over all rows and averages the columns. Vectorized over the whole matrix; no per-column loop.
"""
from __future__ import annotations

import numpy as np

__all__ = ["EPS", "columnwise_log_loss", "log_loss", "prior_predictions"]

EPS = 1e-15


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_pred.ndim == 1:
        y_pred = y_pred[:, None]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}")
    if y_true.shape[0] == 0:
        raise ValueError("log loss of zero rows is undefined")
    return y_true, y_pred


def columnwise_log_loss(y_true: np.ndarray, y_pred: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Binary log loss of each column (shape: columns), predictions clipped to [eps, 1 - eps]."""
    y_true, y_pred = _check(y_true, y_pred)
    p = np.clip(y_pred, eps, 1.0 - eps)
    return -(y_true * np.log(p) + (1.0 - y_true) * np.log1p(-p)).mean(axis=0)


def log_loss(y_true: np.ndarray, y_pred: np.ndarray, eps: float = EPS) -> float:
    """The lish-moa score: the mean over columns of :func:`columnwise_log_loss`. Lower is better."""
    return float(columnwise_log_loss(y_true, y_pred, eps).mean())


def prior_predictions(y_fit: np.ndarray, n_rows: int) -> np.ndarray:
    """The constant-prior baseline: each column's positive rate in ``y_fit``, repeated ``n_rows`` times."""
    prior = np.asarray(y_fit, dtype=np.float64).mean(axis=0)
    return np.broadcast_to(prior, (n_rows, prior.shape[0])).copy()
