"""The small interface every model family implements.

A family is a recipe: its declared parameters (``params``) and ``build``, which makes a torch
module for a given input width, output width and the named column groups of the feature matrix.
Training, devices, losses, checkpoints and stages live in :mod:`moa_tune.train` and
:mod:`moa_tune.stages`, so a family module contains only its network.

A family whose models come from another library (gradient-boosted trees) cannot be trained by the
torch loop nor saved as a state dict. It subclasses :class:`ExternalFamily` instead and owns
exactly those two things: fitting one fold (``fit_fold``, to which :func:`moa_tune.train.fit_fold`
dispatches) and saving/loading a fitted model in the library's own non-pickle format (to which
:mod:`moa_tune.artifacts` dispatches). Its fitted model is wrapped in an :class:`ExternalModel`,
a :class:`MoaModel` whose ``forward`` returns logits, so everything that predicts (the trainer's
``predict``, :class:`moa_tune.predict.Ensemble`) works unchanged. Adding such a family stays one
module, one search-space YAML and one registry line.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..params import Param, resolve

if TYPE_CHECKING:
    from ..train import FoldFit

__all__ = ["ExternalFamily", "ExternalModel", "Family", "MoaModel"]


class MoaModel(nn.Module):
    """A network for MoA: ``forward(x)`` returns logits of shape (batch, n_outputs).

    A family whose training objective has an extra term (TabNet's sparsity loss) returns it from
    :meth:`penalty` after each forward; the trainer adds it to the BCE loss.
    """

    def penalty(self) -> torch.Tensor | float:
        return 0.0


class ExternalModel(MoaModel):
    """A fitted model of another library behind :class:`MoaModel`'s interface.

    ``forward`` hands the batch to :meth:`logits` as a float32 numpy array on the CPU (where such
    libraries predict) and returns the logits on the batch's device, so prediction code written
    for networks needs no second path. It has no parameters: it is fitted, not trained by torch.
    """

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(rows, n_outputs) logits of the fitted model for the feature rows ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x.detach().float().cpu().numpy())
        return torch.as_tensor(np.asarray(out, dtype=np.float32)).to(x.device)


class Family(ABC):
    """A model family: declared parameters plus a builder of :class:`MoaModel` networks."""

    #: The registry name, used in configs and search spaces (``family: mlp``).
    name: ClassVar[str]
    #: What the ``model`` section of a config may contain for this family.
    params: ClassVar[dict[str, Param]]
    #: True when ``build`` makes a torch network that moa-tune's loop trains and saves as
    #: safetensors; False for an :class:`ExternalFamily` (checks of networks skip those).
    torch_network: ClassVar[bool] = True
    #: Stages this family cannot run, each with the reason a user is told (checked when a sweep
    #: file or a config is read, before anything starts).
    cannot_run: ClassVar[Mapping[str, str]] = {}

    def check_stage(self, stage: str) -> None:
        """A ConfigError (one line, with the reason) when this family cannot run ``stage``."""
        if stage in self.cannot_run:
            raise ConfigError(f"family '{self.name}' cannot run stage '{stage}': {self.cannot_run[stage]}")

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


class ExternalFamily(Family):
    """A family whose models another library fits: it owns fitting a fold, saving and loading.

    The contract mirrors the torch path so that callers cannot tell the difference:
    :meth:`fit_fold` takes :func:`moa_tune.train.fit_fold`'s arguments and returns its
    :class:`~moa_tune.train.FoldFit` (the fitted :class:`ExternalModel`, its validation and test
    probabilities, the best validation loss and iteration); :meth:`save` writes the fitted model
    into a fold folder in the library's own format (never pickle) and returns the JSON settings
    :meth:`load` needs to rebuild it.
    """

    torch_network = False

    def build(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
              groups: Mapping[str, np.ndarray]) -> MoaModel:
        raise TypeError(f"family '{self.name}' is not a torch network: its models come from fit_fold")

    @abstractmethod
    def fit_fold(self, model_params: Mapping[str, Any], train_params: Mapping[str, Any],
                 x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                 x_test: np.ndarray | None = None, *, groups: Mapping[str, np.ndarray] | None = None,
                 seed: int = 0, epochs: int | None = None,
                 init_state: Mapping[str, torch.Tensor] | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> FoldFit:
        """One fold fitted with early stopping on the validation rows (see :func:`moa_tune.train.fit_fold`)."""

    @abstractmethod
    def save(self, model: ExternalModel, directory: str | os.PathLike) -> dict[str, Any]:
        """Write ``model``'s files into ``directory`` atomically; the JSON settings :meth:`load` needs."""

    @abstractmethod
    def load(self, directory: str | os.PathLike, settings: Mapping[str, Any]) -> ExternalModel:
        """The model :meth:`save` wrote into ``directory`` (``settings``: what :meth:`save` returned)."""
