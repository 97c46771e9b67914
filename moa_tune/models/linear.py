"""The ``linear`` family: multi-label logistic regression in torch, the baseline.

Why it exists. Every other family has to beat it: one independent logistic model per target on
the same features, trained by the same trainer with the same loss, folds and early stopping, so
the comparison isolates what depth buys. It is the first block of the ``mlp`` family with the
hidden layers taken away -- optional BatchNorm on the inputs (a learned standardisation; the
quantile-transformed features are close to standard already, so it mostly helps optimisation),
optional input dropout (a cheap ridge-like regulariser for ~870 correlated inputs) and an
optionally weight-normed Linear layer straight to the logits. The defaults are those of the seed
notebooks' first block (BatchNorm, dropout 0.2, weight norm).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..params import Param
from ._base import Family, MoaModel
from .mlp import Block

__all__ = ["Linear", "LinearNet"]


class LinearNet(MoaModel):
    """One activation-free :class:`~moa_tune.models.mlp.Block` from the inputs to the logits."""

    def __init__(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any]) -> None:
        super().__init__()
        self.head = Block(n_inputs, n_outputs, batch_norm=params["batch_norm"], dropout=params["input_dropout"],
                          weight_norm=params["weight_norm"], activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class Linear(Family):
    """Logistic regression: [BatchNorm] -> [Dropout] -> [weight-normed] Linear."""

    name = "linear"
    params = {
        "batch_norm": Param("bool", True, "BatchNorm1d on the inputs."),
        "input_dropout": Param("float", 0.2, "Dropout on the inputs (0 turns it off).",
                               low=0.0, high=1.0, high_open=True),
        "weight_norm": Param("bool", True, "Weight-normalise the Linear layer (w = g * v / ||v||)."),
    }

    def build(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
              groups: Mapping[str, np.ndarray]) -> LinearNet:
        return LinearNet(n_inputs, n_outputs, params)
