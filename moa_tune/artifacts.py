"""A fitted fold on disk: feature pipeline (npz + JSON) and network (safetensors + JSON), no pickle.

skorch's rule: save parameters (state dicts) and JSON settings, never pickled objects. A fold is
rebuilt by resolving its family from the registry, building the network from the saved settings
and loading the weights, so an export stays loadable across library versions and is safe to open.
A family whose models come from another library (an :class:`~moa_tune.models._base.ExternalFamily`,
such as CatBoost's trees) writes them in that library's own format instead of safetensors, and
its settings go under ``fitted`` in ``model.json``; every file is in the fold folder, so an
export's manifest covers it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import ExportError
from .features import FeaturePipeline
from .io import atomic_file, write_json
from .models import MoaModel, get_family
from .models._base import ExternalFamily

__all__ = ["load_fitted", "save_fitted"]


def save_fitted(directory: str | os.PathLike, *, family: str, model_params: Mapping[str, Any], n_outputs: int,
                model: MoaModel, pipeline: FeaturePipeline, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors``, ``model.json``, ``features.npz`` and ``features.json`` in ``directory``.

    An external family writes its own model file(s) instead of ``model.safetensors``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    owner = get_family(family)
    fitted: dict[str, Any] = {}
    if isinstance(owner, ExternalFamily):
        fitted["fitted"] = owner.save(model, directory)
    else:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        with atomic_file(directory / "model.safetensors") as tmp:
            save_file(state, str(tmp))
    write_json(directory / "model.json", {
        "family": family, "model_params": dict(model_params), "n_inputs": int(pipeline.n_features_out_),
        "n_outputs": int(n_outputs), **fitted, **(dict(extra) if extra else {}),
    })
    pipeline.save(directory / "features")
    return directory


def load_fitted(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[FeaturePipeline, MoaModel, dict]:
    """(pipeline, network in eval mode, settings) of a fold saved by :func:`save_fitted`."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "model.json").read_text())
        pipeline = FeaturePipeline.load(directory / "features")
        family = get_family(meta["family"])
        if isinstance(family, ExternalFamily):
            model = family.load(directory, meta["fitted"])
        else:
            model = family.build(meta["n_inputs"], meta["n_outputs"], family.resolve(meta["model_params"]),
                                 {k: np.asarray(v) for k, v in pipeline.groups_.items()})
            model.load_state_dict(load_file(str(directory / "model.safetensors"), device="cpu"))
    except FileNotFoundError as exc:
        raise ExportError(f"{directory}: missing {Path(exc.filename).name if exc.filename else 'file'}") from None
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{directory}: cannot load the fitted fold ({str(exc).splitlines()[0]})") from None
    return pipeline, model.to(device).eval(), meta
