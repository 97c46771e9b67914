"""The ``resnet2head`` family: the two-head "ResNet" of the lish-moa 1st-place solution.

Why this shape. The winning team's blend included a small two-input network (published as the
"Keras Multi-Input ResNet" notebook) that was one of its least correlated members. It has

* head A on *all* features (raw genes/cells plus the engineered PCA/statistics columns):
  BatchNorm -> Dropout(0.2) -> Dense(512) -> BatchNorm -> Dense(256), ELU;
* head B on a *subset* of the inputs (the raw gene and cell columns) *concatenated with head A's
  output* -- a residual shortcut by concatenation, so head B sees the untransformed signal again
  next to what head A made of it: BatchNorm -> Dropout(0.3) -> Dense(512) -> Dense(512) ->
  Dense(256) -> Dense(256), each with BatchNorm, ReLU/ELU;
* the two heads' 256-wide outputs *averaged* (a second residual path around head B) and fed to
  a last small block to the logits.

Giving the second head a different view of the data (the subset plus head A's summary) is what
decorrelates it from a plain MLP. Here the subset is a parameter naming feature groups, and the
averaging can be swapped for concatenation. The widths follow one rule for both heads: the first
``n_blocks // 2`` blocks are ``hidden_size`` wide and the rest ``bottleneck_size`` wide, which
gives the original 512/256 and 512/512/256/256 with the defaults. Simplifications against the
original: one activation for all blocks (ELU by default, the original mixes ELU and ReLU), and the
final head is one ``bottleneck_size`` block then the output layer (the original adds a SELU
layer as wide as the targets in between).

Which columns head B gets. ``subset`` names groups of the feature matrix (see :data:`SUBSETS`);
the indices come from the ``groups`` passed to ``build``. Head B gets the union of those of the
named groups that are present and non-empty (so ``genes_cells`` without cell columns is the gene
columns). When none of them is present, head B gets *all* features and a ``UserWarning`` says
so: the network then still has its two-head shape, with head B seeing everything head A sees.
The chosen indices are stored in the state dict (buffer ``subset_index``), so a saved network
carries the columns it was trained on.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..params import Param
from ._base import Family, MoaModel
from .mlp import ACTIVATIONS, MAX_WIDTH, MIN_WIDTH, Block

__all__ = ["SUBSETS", "JoinedHeads", "ResNet2Head", "ResNet2HeadNet", "dense_head", "head_widths", "subset_columns"]

#: ``subset`` parameter value -> the feature groups whose columns head B gets.
SUBSETS: dict[str, tuple[str, ...]] = {
    "genes_cells": ("genes", "cells"),
    "genes": ("genes",),
    "cells": ("cells",),
    "pca": ("gene_pca", "cell_pca"),
    "inputs": ("inputs",),
}
#: How the two heads' outputs are joined before the final block.
COMBINES: tuple[str, ...] = ("average", "concat")
#: Upper bound of the declared block counts.
MAX_BLOCKS = 8


def head_widths(n_blocks: int, hidden_size: int, bottleneck_size: int) -> list[int]:
    """Block widths of one head: the first ``n_blocks // 2`` are ``hidden_size``, the rest ``bottleneck_size``."""
    n_wide = n_blocks // 2
    return [hidden_size] * n_wide + [bottleneck_size] * (n_blocks - n_wide)


def subset_columns(subset: str, n_inputs: int, groups: Mapping[str, np.ndarray], *,
                   subsets: Mapping[str, tuple[str, ...]] = SUBSETS, family: str = "resnet2head",
                   head: str = "B") -> np.ndarray:
    """Sorted column indices of head B's input (see the module docstring for the fallback).

    ``subsets``, ``family`` and ``head`` let ``resnet3head`` pick its heads' columns with the same
    checks and fallback, from its own table of subsets and naming its own head in the warning.
    """
    groups = groups or {}
    parts = []
    for name in subsets[subset]:
        index = np.asarray(groups.get(name, ()))
        if index.size == 0:
            continue
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"feature group '{name}' must hold integer column indices, got dtype {index.dtype}")
        if index.min() < 0 or index.max() >= n_inputs:
            raise ValueError(f"feature group '{name}' has column indices outside [0, {n_inputs})")
        parts.append(index.ravel())
    if not parts:
        warnings.warn(f"{family}: none of the feature groups {list(subsets[subset])} of subset '{subset}' "
                      f"is present; head {head} uses all {n_inputs} features.", UserWarning, stacklevel=3)
        return np.arange(n_inputs, dtype=np.int64)
    return np.unique(np.concatenate(parts)).astype(np.int64)


def dense_head(n_in: int, widths: list[int], first_dropout: float, params: Mapping[str, Any]) -> nn.Sequential:
    blocks = []
    for i, width in enumerate(widths):
        blocks.append(Block(n_in, width, batch_norm=True, dropout=first_dropout if i == 0 else params["dropout"],
                            weight_norm=params["weight_norm"], activation=params["activation"]))
        n_in = width
    return nn.Sequential(*blocks)


class JoinedHeads(MoaModel):
    """The tail the ResNet families share: heads' outputs averaged or concatenated, a final block, the logits."""

    def _build_tail(self, n_heads: int, n_outputs: int, params: Mapping[str, Any]) -> None:
        bottleneck = params["bottleneck_size"]
        self.combine = params["combine"]
        n_joined = bottleneck if self.combine == "average" else n_heads * bottleneck
        self.final = Block(n_joined, bottleneck, batch_norm=True, dropout=params["dropout"],
                           weight_norm=params["weight_norm"], activation=params["activation"])
        self.out = Block(bottleneck, n_outputs, batch_norm=True, dropout=params["dropout"],
                         weight_norm=params["weight_norm"], activation=None)

    def _join(self, *heads: torch.Tensor) -> torch.Tensor:
        joined = sum(heads) / len(heads) if self.combine == "average" else torch.cat(heads, dim=1)
        return self.out(self.final(joined))


class ResNet2HeadNet(JoinedHeads):
    """Head A on all features, head B on ``[x[:, subset_index], head_a(x)]``, heads joined, final block."""

    subset_index: torch.Tensor

    def __init__(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any], subset_index: np.ndarray) -> None:
        super().__init__()
        hidden, bottleneck = params["hidden_size"], params["bottleneck_size"]
        self.register_buffer("subset_index", torch.tensor(subset_index, dtype=torch.long))
        self.head_a = dense_head(n_inputs, head_widths(params["n_blocks_a"], hidden, bottleneck),
                            params["input_dropout"], params)
        self.head_b = dense_head(len(subset_index) + bottleneck, head_widths(params["n_blocks_b"], hidden, bottleneck),
                            params["subset_dropout"], params)
        self._build_tail(2, n_outputs, params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.head_a(x)
        b = self.head_b(torch.cat([x.index_select(1, self.subset_index), a], dim=1))
        return self._join(a, b)


# The parameters resnet2head shares with its three-head extension (``resnet3head``): one
# declaration, so a changed range or default reaches both families.
HEAD_PARAMS: dict[str, Param] = {
    "hidden_size": Param("int", 512, "Width of the wide (first half) blocks of each head. 1st place: 512.",
                         low=MIN_WIDTH, high=MAX_WIDTH),
    "bottleneck_size": Param("int", 256, "Width of the narrow (second half) blocks of each head, of the "
                             "heads' outputs and of the final block. 1st place: 256.",
                             low=MIN_WIDTH, high=MAX_WIDTH),
    "n_blocks_a": Param("int", 2, "Blocks in head A. 1st place: 2 (512, 256).", low=1, high=MAX_BLOCKS),
    "n_blocks_b": Param("int", 4, "Blocks in head B. 1st place: 4 (512, 512, 256, 256).",
                        low=1, high=MAX_BLOCKS),
    "input_dropout": Param("float", 0.2, "Dropout on head A's input (all features). 1st place: 0.2.",
                           low=0.0, high=1.0, high_open=True),
}
BLOCK_PARAMS: dict[str, Param] = {
    "dropout": Param("float", 0.0, "Dropout before every other Linear (deeper blocks, final block, output). "
                     "1st place: none.", low=0.0, high=1.0, high_open=True),
    "activation": Param("str", "elu", "Activation of every hidden block. 1st place: elu (mixed with relu).",
                        choices=tuple(ACTIVATIONS)),
    "weight_norm": Param("bool", False, "Weight-normalise every Linear (the 1st-place Keras model had none)."),
}


class ResNet2Head(Family):
    """The 1st-place two-head network: head B sees a feature subset next to head A's output."""

    name = "resnet2head"
    params = {
        "subset": Param("str", "genes_cells", "Feature groups head B gets next to head A's output: "
                        + "; ".join(f"{k} = {'+'.join(v)}" for k, v in SUBSETS.items())
                        + ". Missing groups are skipped; if none is present head B gets all features.",
                        choices=tuple(SUBSETS)),
        **HEAD_PARAMS,
        "subset_dropout": Param("float", 0.3, "Dropout on head B's input (subset + head A's output). 1st place: 0.3.",
                                low=0.0, high=1.0, high_open=True),
        "combine": Param("str", "average", "How the two heads' outputs are joined: 'average' (1st place, a "
                         "residual path around head B) or 'concat'.", choices=COMBINES),
        **BLOCK_PARAMS,
    }

    def build(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
              groups: Mapping[str, np.ndarray]) -> ResNet2HeadNet:
        return ResNet2HeadNet(n_inputs, n_outputs, params, subset_columns(params["subset"], n_inputs, groups))
