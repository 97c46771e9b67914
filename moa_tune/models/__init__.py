"""The registry of model families.

Adding a family is one module in this package (a :class:`~moa_tune.models._base.Family`
subclass), one search-space YAML in ``search_spaces/``, and one line in :data:`FAMILIES` below.
Modules are imported lazily, so listing families costs nothing.
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError
from ..params import suggest_name
from ._base import Family, MoaModel

__all__ = ["FAMILIES", "Family", "MoaModel", "get_family"]

#: family name -> "module:class" (the registry entry).
FAMILIES: dict[str, str] = {
    "catboost": "moa_tune.models.catboost:CatBoostFamily",
    "linear": "moa_tune.models.linear:Linear",
    "mlp": "moa_tune.models.mlp:MLP",
    "resnet2head": "moa_tune.models.resnet2head:ResNet2Head",
    "resnet3head": "moa_tune.models.resnet3head:ResNet3Head",
    "tabnet": "moa_tune.models.tabnet:TabNet",
}


def get_family(name: str) -> Family:
    """The family registered as ``name``; a ConfigError with "did you mean" for unknown names."""
    if name not in FAMILIES:
        raise ConfigError(f"Unknown model family '{name}'.{suggest_name(str(name), list(FAMILIES))}")
    module_name, class_name = FAMILIES[name].split(":")
    family = getattr(importlib.import_module(module_name), class_name)()
    if family.name != name:
        raise RuntimeError(f"registry entry '{name}' points at family '{family.name}'")
    return family
