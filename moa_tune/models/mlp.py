"""The ``mlp`` family: the multilayer perceptron of the lish-moa seed notebooks.

Why this shape. The public notebooks that most lish-moa ensembles started from ("MoA | PyTorch |
RankGauss | PCA | NN" and its many forks) use a plain stack of blocks, each

    BatchNorm1d -> Dropout -> weight-normed Linear -> activation

followed by a last BatchNorm -> Dropout -> weight-normed Linear to the 206 logits. Each piece has a
reason on this data: the inputs are ~870 quantile-transformed, strongly correlated gene/cell
columns and ~24k rows, so the nets overfit within a few epochs; BatchNorm before each Linear keeps
the scale of every layer's input fixed (and lets a high learning rate with OneCycle work),
dropout (0.2 on the inputs, ~0.5 inside) is the main regulariser, and weight normalisation
decouples each unit's direction from its length, which made training noticeably more stable
across seeds. Two hidden blocks of 1024 units with ReLU are the seed notebook's values and are
this family's defaults; depth, width, a geometric width decay, the dropouts, the activation and
the two normalisations are parameters so a search can move away from them.

This module also holds the small building blocks (:class:`Block`, :func:`dense`,
:data:`ACTIVATIONS`) that the ``linear`` and ``resnet2head`` families reuse.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from ..params import Param
from ._base import Family, MoaModel

__all__ = ["ACTIVATIONS", "MIN_WIDTH", "MLP", "Block", "MLPNet", "block_widths", "dense", "make_activation"]

#: Activation name (a ``str`` parameter value) -> constructor of the activation module.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}
#: The narrowest hidden block a width decay may produce.
MIN_WIDTH = 16
#: Bounds of the declared parameters (the search spaces pick narrower ranges inside them).
MAX_LAYERS = 8
MAX_WIDTH = 8192


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for a declared activation name (one of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[name]()


def dense(n_in: int, n_out: int, weight_norm: bool) -> nn.Linear:
    """A Linear layer, weight-normalised (``w = g * v / ||v||`` per output unit) when asked.

    Uses the parametrization API, so the state dict holds ``parametrizations.weight.original0``
    (g) and ``original1`` (v): two separate tensors, which safetensors stores without complaint.
    """
    layer = nn.Linear(n_in, n_out)
    return _weight_norm(layer, name="weight", dim=0) if weight_norm else layer


class Block(nn.Module):
    """``BatchNorm1d -> Dropout -> Linear -> activation``, each optional but the Linear.

    Missing pieces are ``nn.Identity`` so the state-dict names (``norm``, ``linear``) do not shift
    when a piece is switched off.
    """

    def __init__(self, n_in: int, n_out: int, *, batch_norm: bool, dropout: float, weight_norm: bool,
                 activation: str | None) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.norm: nn.Module = nn.BatchNorm1d(n_in) if batch_norm else nn.Identity()
        self.drop: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = dense(n_in, n_out, weight_norm)
        self.act: nn.Module = make_activation(activation) if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(self.drop(self.norm(x))))


def block_widths(n_layers: int, hidden_size: int, width_factor: float) -> list[int]:
    """Widths of the hidden blocks: ``hidden_size``, then each previous width times ``width_factor``.

    Rounded to the nearest int and never below ``min(MIN_WIDTH, hidden_size)``.
    """
    floor = min(MIN_WIDTH, hidden_size)
    widths = [hidden_size]
    for _ in range(n_layers - 1):
        widths.append(max(floor, int(round(widths[-1] * width_factor))))
    return widths


class MLPNet(MoaModel):
    """Hidden :class:`Block` s (``blocks``) and a last activation-free block to the logits (``head``)."""

    def __init__(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any]) -> None:
        super().__init__()
        widths = block_widths(params["n_layers"], params["hidden_size"], params["width_factor"])
        common = {"batch_norm": params["batch_norm"], "weight_norm": params["weight_norm"]}
        blocks = []
        n_in = n_inputs
        for i, width in enumerate(widths):
            dropout = params["input_dropout"] if i == 0 else params["dropout"]
            blocks.append(Block(n_in, width, dropout=dropout, activation=params["activation"], **common))
            n_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = Block(n_in, n_outputs, dropout=params["dropout"], activation=None, **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class MLP(Family):
    """Stacked BatchNorm/Dropout/weight-normed Linear/activation blocks (the seed notebooks' net)."""

    name = "mlp"
    params = {
        "n_layers": Param("int", 2, "Number of hidden blocks (the output layer is extra). Seed notebooks: 2.",
                          low=1, high=MAX_LAYERS),
        "hidden_size": Param("int", 1024, "Width of the first hidden block. Seed notebooks: 1024 (later forks 1500).",
                             low=MIN_WIDTH, high=MAX_WIDTH),
        "width_factor": Param("float", 1.0, "Each next hidden block's width is the previous one's times this "
                              f"(rounded, at least {MIN_WIDTH}); 1 keeps all blocks equally wide.",
                              low=0.0, high=1.0, low_open=True),
        "input_dropout": Param("float", 0.2, "Dropout on the inputs (first block). Seed notebooks: 0.2.",
                               low=0.0, high=1.0, high_open=True),
        "dropout": Param("float", 0.5, "Dropout before every later Linear, the output layer included. "
                         "Seed notebooks: 0.5 (later forks ~0.26).", low=0.0, high=1.0, high_open=True),
        "activation": Param("str", "relu", "Activation of the hidden blocks. Seed notebooks: relu "
                            "(later forks leaky_relu).", choices=tuple(ACTIVATIONS)),
        "weight_norm": Param("bool", True, "Weight-normalise every Linear (w = g * v / ||v||)."),
        "batch_norm": Param("bool", True, "BatchNorm1d before every Linear."),
    }

    def build(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
              groups: Mapping[str, np.ndarray]) -> MLPNet:
        return MLPNet(n_inputs, n_outputs, params)
