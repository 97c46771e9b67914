"""moa_tune.metric against scikit-learn and the real labels' known baselines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from moa_tune.metric import EPS, columnwise_log_loss, log_loss, prior_predictions


def test_matches_sklearn_column_by_column() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 7)) < 0.1).astype(int)
    y[0] = 1  # every column has both classes for sklearn
    y[1] = 0
    p = rng.random((200, 7))
    expected = np.mean([sk_log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(7)])
    assert log_loss(y, p) == pytest.approx(expected, rel=1e-12)
    assert columnwise_log_loss(y, p).shape == (7,)


def test_clipping_at_1e_15() -> None:
    y = np.array([[1.0, 0.0]])
    p = np.array([[0.0, 1.0]])
    # a 0 for a positive costs -log(1e-15); a 1 for a negative costs -log(1 - (1 - 1e-15)) in float64
    expected = (-np.log(EPS) - np.log(1.0 - (1.0 - EPS))) / 2
    assert log_loss(y, p) == pytest.approx(expected, rel=1e-12)
    assert log_loss(y, np.array([[1.0, 0.0]])) == pytest.approx(-np.log1p(-EPS), abs=1e-12)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        log_loss(np.zeros((3, 2)), np.zeros((3, 3)))


def test_constant_prior_on_the_real_labels(real_labels: Path) -> None:
    scored = pd.read_csv(real_labels / "train_targets_scored.csv.zip")
    drugs = pd.read_csv(real_labels / "train_drug.csv.gz")
    assert (scored.sig_id == drugs.sig_id).all()
    y = scored.drop(columns="sig_id").to_numpy(dtype=np.float64)
    assert y.shape == (23814, 206)
    assert log_loss(y, prior_predictions(y, len(y))) == pytest.approx(0.0207393, abs=5e-8)
    treated = (drugs.drug_id != "cacb2b860").to_numpy()
    assert treated.sum() == 23814 - 1866
    y_t = y[treated]
    assert log_loss(y_t, prior_predictions(y_t, len(y_t))) == pytest.approx(0.0221969, abs=5e-8)
