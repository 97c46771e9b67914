"""The ``resnet3head`` family: the two-head ResNet of ``resnet2head`` with a third head.

Why a third head. The two-head network earned its place in the 1st-place blend by giving head B
a *different view* (a feature subset plus head A's summary) from a plain MLP. Its default view is
the raw gene and cell columns, so the engineered columns -- the PCA components, the row
statistics and, at stage 2, the previous stage's predictions -- reach the network only through
head A, where a few dozen of them sit among hundreds of raw columns. Head C gives those columns a
head of their own:

* head A on *all* features, as in ``resnet2head``;
* head B on ``subset_b`` (default: the raw genes and cells) concatenated with head A's output,
  as in ``resnet2head``;
* head C on ``subset_c`` (default ``engineered``: gene/cell PCA, Factor Analysis and UMAP
  columns, correlated-pair products, row statistics and previous-stage inputs) *concatenated with head B's output*: the same residual shortcut by concatenation one
  step further, so head C reads the engineered columns next to the deepest representation (A then
  B) and learns what they add to it, rather than re-learning what B already found;
* the three heads' ``bottleneck_size``-wide outputs *averaged* (every head keeps a short path to
  the output, as the averaging of ``resnet2head`` does around head B) or concatenated, then the
  same final block and output layer as ``resnet2head``.

The chain A -> B -> C rather than three parallel heads: each later head sees a narrow, disjoint
slice of the columns plus everything the earlier heads made of the rest, which is what makes the
heads differ from each other and from a plain MLP on all features. Head C is one block by default
(``n_blocks_c = 1``, ``bottleneck_size`` wide): its own columns are few, and the chain makes the
path through A, B and C the longest, so every extra block of C costs trainability. With two
blocks the network settled visibly slower (BatchNorm running statistics lag further behind the
weights in a deeper chain) and cross-validated worse on the synthetic ``tiny`` preset (two data
seeds, lr 3e-3) than with one, which was on par with ``resnet2head``. Blocks, widths
(``head_widths``: the first ``n_blocks // 2`` blocks ``hidden_size`` wide, the rest
``bottleneck_size``), the head builder and the column selection are ``resnet2head``'s own.

Which columns heads B and C get. ``subset_b`` and ``subset_c`` name groups of the feature matrix
from :data:`SUBSETS` (``resnet2head``'s subsets plus ``stats``, ``pca_stats`` and
``engineered``). Each head gets the union of those of its groups that are present and non-empty;
when none is (for example ``engineered`` with PCA and row statistics switched off at stage 1),
that head gets *all* features and a ``UserWarning`` names the head. The chosen indices are
buffers of the state dict (``subset_b_index``, ``subset_c_index``), so a saved network carries
the columns it was trained on.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..params import Param
from ._base import Family
from .resnet2head import (BLOCK_PARAMS, COMBINES, HEAD_PARAMS, MAX_BLOCKS, JoinedHeads, dense_head, head_widths,
                          subset_columns)
from .resnet2head import SUBSETS as TWO_HEAD_SUBSETS

__all__ = ["SUBSETS", "ResNet3Head", "ResNet3HeadNet"]

#: ``subset_b`` / ``subset_c`` value -> the feature groups whose columns that head gets.
SUBSETS: dict[str, tuple[str, ...]] = {
    **TWO_HEAD_SUBSETS,
    "stats": ("stats",),
    "pca_stats": ("gene_pca", "cell_pca", "stats"),
    "engineered": ("gene_pca", "cell_pca", "gene_fa", "cell_fa", "gene_umap", "cell_umap", "pairs", "stats", "inputs"),
}


def _subset_doc(head: str, reads: str) -> str:
    """The doc of ``subset_b``/``subset_c``, listing :data:`SUBSETS` so the CLI's help stays in step with it."""
    return (f"Feature groups head {head} gets next to {reads}: "
            + "; ".join(f"{k} = {'+'.join(v)}" for k, v in SUBSETS.items())
            + f". Missing groups are skipped; if none is present head {head} gets all features.")


class ResNet3HeadNet(JoinedHeads):
    """Head A on all features, B on ``[x[:, subset_b], A]``, C on ``[x[:, subset_c], B]``, joined, final block."""

    subset_b_index: torch.Tensor
    subset_c_index: torch.Tensor

    def __init__(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
                 subset_b_index: np.ndarray, subset_c_index: np.ndarray) -> None:
        super().__init__()
        hidden, bottleneck = params["hidden_size"], params["bottleneck_size"]
        self.register_buffer("subset_b_index", torch.tensor(subset_b_index, dtype=torch.long))
        self.register_buffer("subset_c_index", torch.tensor(subset_c_index, dtype=torch.long))
        self.head_a = dense_head(n_inputs, head_widths(params["n_blocks_a"], hidden, bottleneck),
                            params["input_dropout"], params)
        self.head_b = dense_head(len(subset_b_index) + bottleneck, head_widths(params["n_blocks_b"], hidden, bottleneck),
                            params["subset_b_dropout"], params)
        self.head_c = dense_head(len(subset_c_index) + bottleneck, head_widths(params["n_blocks_c"], hidden, bottleneck),
                            params["subset_c_dropout"], params)
        self._build_tail(3, n_outputs, params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.head_a(x)
        b = self.head_b(torch.cat([x.index_select(1, self.subset_b_index), a], dim=1))
        c = self.head_c(torch.cat([x.index_select(1, self.subset_c_index), b], dim=1))
        return self._join(a, b, c)


class ResNet3Head(Family):
    """``resnet2head`` plus a head C on the engineered columns next to head B's output."""

    name = "resnet3head"
    params = {
        "subset_b": Param("str", "genes_cells", _subset_doc("B", "head A's output"), choices=tuple(SUBSETS)),
        "subset_c": Param("str", "engineered", _subset_doc("C", "head B's output"), choices=tuple(SUBSETS)),
        **HEAD_PARAMS,
        "n_blocks_c": Param("int", 1, "Blocks in head C (no 1st-place counterpart). 1: one bottleneck-wide "
                            "block mixing its few columns into head B's output.", low=1, high=MAX_BLOCKS),
        "subset_b_dropout": Param("float", 0.3, "Dropout on head B's input (subset_b + head A's output). "
                                  "1st place: 0.3.", low=0.0, high=1.0, high_open=True),
        "subset_c_dropout": Param("float", 0.3, "Dropout on head C's input (subset_c + head B's output); "
                                  "head B's value by default.", low=0.0, high=1.0, high_open=True),
        "combine": Param("str", "average", "How the three heads' outputs are joined: 'average' (a residual "
                         "path around heads B and C) or 'concat'.", choices=COMBINES),
        **BLOCK_PARAMS,
    }

    def build(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
              groups: Mapping[str, np.ndarray]) -> ResNet3HeadNet:
        b_index = subset_columns(params["subset_b"], n_inputs, groups, subsets=SUBSETS, family=self.name, head="B")
        c_index = subset_columns(params["subset_c"], n_inputs, groups, subsets=SUBSETS, family=self.name, head="C")
        return ResNet3HeadNet(n_inputs, n_outputs, params, b_index, c_index)
