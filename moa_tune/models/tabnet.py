"""The ``tabnet`` family: pytorch-tabnet's TabNet network, trained by our trainer.

Why it is here. TabNet (Arik & Pfister, 2019) picks, at each of ``n_steps`` decision steps, a
sparse soft subset of the features with an attentive mask (sparsemax or entmax) and processes it
with shared and step-specific GLU layers. On lish-moa it scored close to the MLPs while making
quite different errors, so most top blends had one. The defaults are the widely forked public
"MoA: TabNet" notebook's: ``n_d = n_a = 32``, one step, ``gamma = 1.3``, entmax masks, no
sparsity loss (``lambda_sparse = 0``), ghost batches of 32 inside batches of 1024.

Only pytorch-tabnet's *network* (:class:`pytorch_tabnet.tab_network.TabNet`) is used -- not its
sklearn-style ``TabNetClassifier`` -- so folds, loss, optimiser, early stopping and checkpoints
are the same as for every other family. Its forward returns ``(logits, M_loss)``, where
``M_loss`` is the mean over the batch of ``sum(M * log M)`` averaged over the steps, i.e. *minus*
the masks' entropy (<= 0). pytorch-tabnet trains on ``loss - lambda_sparse * M_loss``; so
:meth:`TabNetNet.penalty` returns ``-lambda_sparse * M_loss`` (>= 0, smaller for sparser masks),
which the trainer adds to the BCE loss.

Three adjustments to the upstream network, made after building it:

* Ghost batch norm. Upstream ``GBN`` splits a training batch with ``x.chunk(ceil(n / vbs))``,
  which can leave a last chunk of one row (n = 5, vbs = 2 gives 2, 2, 1) and then BatchNorm
  raises in train mode. Each ``GBN`` is replaced by :class:`GhostBatchNorm`, which keeps the same
  ``BatchNorm1d`` (same state-dict names) but splits into as-equal-as-possible chunks of at least
  two rows, so any training batch of >= 2 rows works; in eval mode it normalises the whole batch
  at once with the running statistics (the same result as upstream's per-chunk loop), so any
  batch of >= 1 row works.
* Device. The (identity) feature-group matrix is a plain tensor attribute upstream, created on
  the CPU, so ``model.to("cuda")`` would leave it behind; the encoder's copy (the one forward
  uses) is re-registered as a non-persistent buffer so it moves with the module and stays out of
  the state dict, and the embedder's copy (read only while constructing) is dropped.
* Shared layers. The ``n_shared`` GLU layers are the same modules in every step, so the state
  dict holds one tensor under several names and ``safetensors.torch.save_file`` refuses it. A
  state-dict hook gives every name after the first its own copy; loading writes the same values
  into the shared parameter once per name, so the round trip is exact.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..params import Param
from ._base import Family, MoaModel

__all__ = ["GhostBatchNorm", "TabNet", "TabNetNet"]

MASK_TYPES: tuple[str, ...] = ("sparsemax", "entmax")
#: BatchNorm needs at least this many rows per (ghost) batch in train mode.
MIN_GHOST_ROWS = 2
INSTALL_HINT = "The 'tabnet' model family needs pytorch-tabnet: pip install 'pytorch-tabnet>=4.1,<5'."


class GhostBatchNorm(nn.Module):
    """Ghost batch normalisation that works for every batch size (see the module docstring)."""

    def __init__(self, bn: nn.BatchNorm1d, virtual_batch_size: int) -> None:
        super().__init__()
        self.bn = bn
        self.virtual_batch_size = virtual_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or n <= self.virtual_batch_size:
            return self.bn(x)
        n_chunks = min(math.ceil(n / self.virtual_batch_size), n // MIN_GHOST_ROWS)
        return torch.cat([self.bn(chunk) for chunk in torch.tensor_split(x, n_chunks, dim=0)], dim=0)


def _replace_ghost_batch_norms(module: nn.Module, gbn_class: type) -> None:
    for name, child in module.named_children():
        if isinstance(child, gbn_class):
            setattr(module, name, GhostBatchNorm(child.bn, child.virtual_batch_size))
        else:
            _replace_ghost_batch_norms(child, gbn_class)


def _copy_aliased_tensors(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                          local_metadata: dict[str, Any]) -> None:
    """State-dict post-hook: a tensor stored under several names gets its own copy under each but the first."""
    seen: set[tuple[torch.device, int]] = set()
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or isinstance(value, nn.Parameter):  # keep_vars=True: leave as is
            continue
        storage = (value.device, value.untyped_storage().data_ptr())
        if storage in seen:
            state_dict[key] = value.clone()
        else:
            seen.add(storage)


class TabNetNet(MoaModel):
    """A pytorch-tabnet ``TabNet`` network (attribute ``network``); ``forward`` returns its logits."""

    def __init__(self, network: nn.Module, lambda_sparse: float) -> None:
        super().__init__()
        self.network = network
        self.lambda_sparse = lambda_sparse
        self._penalty: torch.Tensor | float = 0.0
        self.register_state_dict_post_hook(_copy_aliased_tensors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, m_loss = self.network(x)
        self._penalty = -self.lambda_sparse * m_loss
        return logits

    def penalty(self) -> torch.Tensor | float:
        """``-lambda_sparse * M_loss`` of the last forward: lambda_sparse times the masks' mean entropy."""
        return self._penalty

    def __getstate__(self) -> dict[str, Any]:
        # The last penalty is part of an autograd graph, which copy.deepcopy refuses; it is transient.
        state = self.__dict__.copy()
        state["_penalty"] = 0.0
        return state


class TabNet(Family):
    """pytorch-tabnet's TabNet network with its sparsity loss as :meth:`MoaModel.penalty`."""

    name = "tabnet"
    params = {
        "n_d": Param("int", 32, "Width of each step's decision output. MoA notebooks: 32 (library default 8).",
                     low=1, high=256),
        "n_a": Param("int", 32, "Width of each step's attention embedding. MoA notebooks: 32 (usually n_a = n_d).",
                     low=1, high=256),
        "n_steps": Param("int", 1, "Number of decision steps (masks). MoA notebooks: 1 (library default 3).",
                         low=1, high=10),
        "gamma": Param("float", 1.3, "Mask reuse relaxation: 1 forces each feature to be used by one step only; "
                       "larger lets steps reuse features. Default 1.3.", low=1.0, high=3.0),
        "lambda_sparse": Param("float", 0.0, "Weight of the mask-entropy (sparsity) penalty added to the loss. "
                               "MoA notebooks: 0 (library default 1e-3).", low=0.0, high=1.0),
        "n_independent": Param("int", 2, "Step-specific GLU layers per feature transformer. Default 2.",
                               low=0, high=8),
        "n_shared": Param("int", 2, "GLU layers shared by all steps' feature transformers. Default 2 "
                          "(n_independent and n_shared may not both be 0).", low=0, high=8),
        "virtual_batch_size": Param("int", 32, "Rows per ghost batch of the ghost batch norms. MoA notebooks: 32 "
                                    "(with batches of 1024).", low=MIN_GHOST_ROWS, high=65536),
        "momentum": Param("float", 0.02, "Momentum of the (ghost) batch norms' running statistics. Default 0.02.",
                          low=0.0, high=1.0, low_open=True),
        "mask_type": Param("str", "entmax", "Mask function: 'sparsemax' (sparser) or 'entmax' (1.5-entmax). "
                           "MoA notebooks: entmax.", choices=MASK_TYPES),
    }

    def resolve(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        resolved = super().resolve(values)
        _check_glu_layers(resolved)
        return resolved

    def build(self, n_inputs: int, n_outputs: int, params: Mapping[str, Any],
              groups: Mapping[str, np.ndarray]) -> TabNetNet:
        _check_glu_layers(params)
        try:
            from pytorch_tabnet import tab_network
        except ImportError as error:
            raise ConfigError(f"{INSTALL_HINT} ({error})") from None
        network = tab_network.TabNet(
            input_dim=n_inputs, output_dim=n_outputs, n_d=params["n_d"], n_a=params["n_a"],
            n_steps=params["n_steps"], gamma=params["gamma"], n_independent=params["n_independent"],
            n_shared=params["n_shared"], virtual_batch_size=params["virtual_batch_size"],
            momentum=params["momentum"], mask_type=params["mask_type"],
            group_attention_matrix=torch.eye(n_inputs),  # one group per feature (upstream's default needs a tensor)
        )
        encoder = network.tabnet.encoder
        group_matrix = encoder.group_attention_matrix
        del encoder.group_attention_matrix
        encoder.register_buffer("group_attention_matrix", group_matrix, persistent=False)
        del network.embedder.embedding_group_matrix  # a second CPU copy, only read while constructing
        _replace_ghost_batch_norms(network, tab_network.GBN)
        return TabNetNet(network, params["lambda_sparse"])


def _check_glu_layers(params: Mapping[str, Any]) -> None:
    if params["n_independent"] == 0 and params["n_shared"] == 0:
        raise ConfigError("The 'model.n_independent' and 'model.n_shared' parameters may not both be 0 "
                          "(TabNet needs at least one GLU layer per step).")
