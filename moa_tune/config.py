"""A trial's configuration: one plain dict, checked in one place.

A config is exactly what a search space produces and what ``moa-tune train --config`` reads::

    family: mlp            # a registered model family (moa_tune.models.FAMILIES)
    stage: direct          # direct | stage1 | stage2 | stage3 | transfer
    stage_options: {}      # options of that stage (moa_tune.stages.STAGE_PARAMS)
    features: {...}        # moa_tune.features.PARAMS
    model: {...}           # the family's params
    train: {...}           # moa_tune.train.PARAMS

:func:`resolve_config` fills every default and raises :class:`~moa_tune.errors.ConfigError`
for an unknown family, section or parameter (with "did you mean") and for values out of range.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .params import suggest_name

__all__ = ["SECTIONS", "load_config", "read_yaml", "resolve_config", "set_path"]

SECTIONS: tuple[str, ...] = ("family", "stage", "stage_options", "features", "model", "train")


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, checked config: every section present, every default filled in."""
    from .features import PARAMS as FEATURE_PARAMS
    from .models import get_family
    from .params import resolve
    from .stages import STAGE_PARAMS
    from .train import PARAMS as TRAIN_PARAMS

    if not isinstance(config, Mapping):
        raise ConfigError(f"A config must be a mapping of sections. Got {type(config).__name__} instead.")
    for key in config:
        if key not in SECTIONS:
            raise ConfigError(f"Unknown config section '{key}'.{suggest_name(str(key), SECTIONS)}")
    if "family" not in config:
        from .models import FAMILIES

        raise ConfigError(f"The config has no 'family'; choose one of {', '.join(FAMILIES)} "
                          "(in the YAML, or --set family=NAME).")
    family = get_family(config["family"])
    stage = config.get("stage", "direct")
    if stage not in STAGE_PARAMS:
        raise ConfigError(f"Unknown stage '{stage}'.{suggest_name(str(stage), list(STAGE_PARAMS))}")
    family.check_stage(stage)
    return {
        "family": family.name,
        "stage": stage,
        "stage_options": resolve("stage_options", STAGE_PARAMS[stage], config.get("stage_options")),
        "features": resolve("features", FEATURE_PARAMS, config.get("features")),
        "model": family.resolve(config.get("model")),
        "train": resolve("train", TRAIN_PARAMS, config.get("train")),
    }


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError naming the file, line and column otherwise."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(f"{path}: expected a mapping of settings, got {got}")
    return raw


def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config file (none: the defaults), apply ``section.name`` overrides, and resolve it.

    Errors name the file, or ``--set`` when there is no file, so a CLI user knows what to fix.
    """
    raw = read_yaml(path) if path is not None else {}
    try:
        for key, value in (overrides or {}).items():
            set_path(raw, key, value)
        return resolve_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path if path is not None else '--set'}: {exc}") from None


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``section.name`` (or a top-level key) in a nested config dict, in place."""
    head, _, rest = dotted.partition(".")
    if not rest:
        config[head] = value
        return
    section = config.setdefault(head, {})
    if not isinstance(section, dict):
        raise ConfigError(f"'{head}' is not a section; cannot set '{dotted}'")
    set_path(section, rest, value)
