"""The small interface every model family implements.

A family is a recipe: its declared parameters (``params``) and ``build``, which makes a torch
module for a given input width, output width and the named column groups of the feature matrix.
Training, devices, losses, checkpoints and stages live in :mod:`moa_tune.train` and
:mod:`moa_tune.stages`, so a family module contains only its network.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from ..params import Param, resolve

__all__ = ["Family", "MoaModel"]


class MoaModel(nn.Module):
    """A network for MoA: ``forward(x)`` returns logits of shape (batch, n_outputs).

    A family whose training objective has an extra term (TabNet's sparsity loss) returns it from
    :meth:`penalty` after each forward; the trainer adds it to the BCE loss.
    """

    def penalty(self) -> torch.Tensor | float:
        return 0.0


class Family(ABC):
    """A model family: declared parameters plus a builder of :class:`MoaModel` networks."""

    #: The registry name, used in configs and search spaces (``family: mlp``).
    name: ClassVar[str]
    #: What the ``model`` section of a config may contain for this family.
    params: ClassVar[dict[str, Param]]

    def resolve(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """The ``model`` section checked against :attr:`params`, defaults filled in."""
        return resolve("model", self.params, values)

    @abstractmethod
    def build(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
              groups: Mapping[str, np.ndarray]) -> MoaModel:
        """A freshly initialised network.

        ``params`` is already resolved. ``groups`` maps names of feature groups (``genes``,
        ``cells``, ``gene_pca``, ``cell_pca``, ``stats``, ``meta``, ``inputs``) to the column
        indices they occupy in the feature matrix, for families that treat groups differently.
        """
