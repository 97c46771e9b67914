"""YAML search spaces -> Optuna define-by-run functions, checked before any trial runs.

A search space (``search_spaces/<family>.yaml``) names a family and, for each parameter it
searches, a distribution keyed by the parameter's dotted config path::

    family: mlp
    params:
      features.scaler: {type: categorical, choices: [rankgauss, standard]}
      features.n_quantiles: {type: int, low: 50, high: 1000, log: true, when: {features.scaler: rankgauss}}
      search.pca: {type: categorical, choices: [true, false]}
      features.gene_pca: {type: int, low: 10, high: 600, log: true, when: {search.pca: true}, else: 0}
      model.hidden_size: {type: int, low: 256, high: 2048, step: 128}
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      train.epochs: 25                       # a fixed value

Types: ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (same), ``categorical``
(``choices``), or a plain value (fixed). ``when`` makes a parameter conditional: it is suggested
only when every named, earlier parameter has the given value (or one of a list); otherwise it takes
``else`` (default: the parameter's default). Names under ``search.`` are switches that exist only
in the search (they steer ``when`` and are not passed to the trial). Conditionals are why the
space is define-by-run: Optuna sees a parameter only when it is sampled.

Every key is checked against the parameters the config declares (features, the family's model
parameters, train, stage_options), every bound against the declared range, and every categorical
choice against the declared type, so a typo or an impossible range fails with the file and key
before Ray starts. Only this module and :mod:`moa_tune.sweep` import Optuna.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import read_yaml
from .errors import ConfigError
from .params import Param, suggest_name

__all__ = ["Dimension", "SearchSpace", "declared_params", "load_search_space", "parse_search_space"]

SEARCH_PREFIX = "search."
_DIM_KEYS = {"type", "low", "high", "log", "step", "choices", "when", "else"}


def declared_params(family: str, stage: str | None = None) -> dict[str, Param]:
    """Every searchable parameter of ``family`` as ``section.name -> Param``."""
    from .features import PARAMS as FEATURES
    from .models import get_family
    from .stages import STAGE_PARAMS
    from .train import PARAMS as TRAIN

    declared: dict[str, Param] = {}
    declared.update({f"features.{k}": v for k, v in FEATURES.items()})
    declared.update({f"model.{k}": v for k, v in get_family(family).params.items()})
    declared.update({f"train.{k}": v for k, v in TRAIN.items()})
    stages = [stage] if stage else list(STAGE_PARAMS)
    for s in stages:
        declared.update({f"stage_options.{k}": v for k, v in STAGE_PARAMS[s].items()})
    return declared


@dataclass(frozen=True)
class Dimension:
    """One searched (or fixed) parameter."""

    name: str
    type: str                       # float | int | categorical | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None               # fixed value
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    otherwise: Any = None           # value when the condition does not hold
    has_otherwise: bool = False


def _value_problem(dim: Dimension, value: Any) -> str | None:
    """Why ``value`` can never be a value of ``dim`` (None when it can)."""
    if dim.type == "categorical":
        if not any(value == c and type(value) is type(c) for c in dim.choices):
            return f"{value!r} is not one of {list(dim.choices)}"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (dim.type == "int" and not isinstance(value, int)):
        return f"must be {'an int' if dim.type == 'int' else 'a number'}, got {value!r}"
    if not dim.low <= value <= dim.high:
        return f"{value!r} is outside the searched range [{dim.low:g}, {dim.high:g}]"
    return None


@dataclass(frozen=True)
class SearchSpace:
    """A checked search space; calling it with an Optuna trial samples one configuration.

    The call returns the fixed values (Optuna's define-by-run protocol in Ray Tune: the returned
    dict of constants is merged into the trial's config). Sampled values are recorded by Optuna
    under their dotted names, so a Tune config is flat: ``{"train.lr": 0.003, ...}``.
    """

    family: str
    dimensions: tuple[Dimension, ...]
    source: str = "<search space>"

    def __call__(self, trial: Any) -> dict[str, Any]:
        constants: dict[str, Any] = {"family": self.family}
        chosen: dict[str, Any] = {}
        for dim in self.dimensions:
            if dim.when and not all(chosen.get(k) in allowed for k, allowed in dim.when.items()):
                if dim.has_otherwise:
                    chosen[dim.name] = dim.otherwise
                    if not dim.name.startswith(SEARCH_PREFIX):
                        constants[dim.name] = dim.otherwise
                continue
            if dim.type == "fixed":
                value = dim.value
                if not dim.name.startswith(SEARCH_PREFIX):
                    constants[dim.name] = value
            elif dim.type == "float":
                value = trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log, step=dim.step)
            elif dim.type == "int":
                value = trial.suggest_int(dim.name, int(dim.low), int(dim.high), log=dim.log,
                                          step=int(dim.step or 1))
            else:
                value = trial.suggest_categorical(dim.name, list(dim.choices))
            chosen[dim.name] = value
        return constants

    def to_config(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        """A nested config dict from a flat Tune config (search switches dropped)."""
        from .config import set_path

        config: dict[str, Any] = {}
        for key, value in flat.items():
            if key.startswith(SEARCH_PREFIX):
                continue
            set_path(config, key, value)
        return config

    def searched(self) -> list[str]:
        return [d.name for d in self.dimensions if d.type != "fixed"]

    def value_problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` cannot be a value of searched dimension ``name`` (None when it can).

        A point to evaluate is told to Optuna as it is: outside its distribution it makes an errored
        trial or an Optuna traceback once Ray has started, so the sweep file is checked first.
        """
        return _value_problem(next(d for d in self.dimensions if d.name == name), value)

    def fixing(self, values: Mapping[str, Any]) -> "SearchSpace":
        """This space with the parameters in ``values`` turned into constants.

        A sweep's fixed value overrides whatever the trial samples, so a searched dimension that the
        sweep fixes has no effect on the loss: left in the space, TPE would model (and spend its
        start-up trials on) a dimension that does nothing. Fixed here, Optuna never sees it, the
        trial's config carries the fixed value, and ``when`` conditions on it still work.
        """
        dims = tuple(Dimension(d.name, "fixed", value=values[d.name]) if d.name in values else d
                     for d in self.dimensions)
        return SearchSpace(self.family, dims, self.source)


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: '{key}': {message}")


def _parse_dimension(source: str, name: str, spec: Any, declared: Mapping[str, Param],
                     earlier: Mapping[str, Dimension]) -> Dimension:
    param = declared.get(name)
    if not isinstance(spec, Mapping):
        if param is not None:
            try:
                param.check(name, spec)
            except ConfigError as exc:
                raise _fail(source, name, str(exc)) from None
        return Dimension(name, "fixed", value=spec)
    unknown = set(spec) - _DIM_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(source, name, f"unknown key '{key}'.{suggest_name(key, sorted(_DIM_KEYS))}")
    kind = spec.get("type")
    if kind not in ("float", "int", "categorical"):
        raise _fail(source, name, f"'type' must be float, int or categorical (or give a plain fixed value). Got {kind!r}.")
    when: dict[str, tuple[Any, ...]] = {}
    for key, allowed in (spec.get("when") or {}).items():
        if key not in earlier:
            raise _fail(source, name, f"'when' refers to '{key}', which is not a parameter defined above it")
        when[key] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        # a value a searched parameter never takes makes a condition that never holds (a typo); a
        # fixed switch (search.umap: false) legitimately keeps its conditional parameters dormant
        for value in when[key] if earlier[key].type != "fixed" else ():
            problem = _value_problem(earlier[key], value)
            if problem:
                raise _fail(source, name, f"'when' on '{key}': {problem}, so the condition can never hold")
    if "else" in spec and not when:
        raise _fail(source, name, "'else' needs a 'when' condition")
    otherwise = spec.get("else")
    if "else" in spec and param is not None:
        try:
            param.check(name, otherwise)
        except ConfigError as exc:
            raise _fail(source, name + ".else", str(exc)) from None

    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(source, name, "a categorical parameter needs a non-empty list 'choices'")
        for extra in ("low", "high", "log", "step"):
            if extra in spec:
                raise _fail(source, name, f"'{extra}' does not apply to a categorical parameter")
        if param is not None:
            for choice in choices:
                try:
                    param.check(name, choice)
                except ConfigError as exc:
                    raise _fail(source, name, str(exc)) from None
        for choice in choices:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise _fail(source, name, f"choices must be plain values (Optuna stores them); got {choice!r}")
        return Dimension(name, "categorical", choices=tuple(choices), when=when, otherwise=otherwise,
                         has_otherwise="else" in spec)

    for key in ("low", "high"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(source, name, f"'{key}' must be a number. Got {value!r}.")
    low, high = spec["low"], spec["high"]
    log = bool(spec.get("log", False))
    step = spec.get("step")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise _fail(source, name, f"an int range needs whole bounds. Got [{low}, {high}].")
    if low > high:
        raise _fail(source, name, f"impossible range: low ({low}) is above high ({high})")
    if log and low <= 0:
        raise _fail(source, name, f"a log range needs low > 0. Got {low}.")
    if log and step is not None and kind == "float":
        raise _fail(source, name, "Optuna cannot combine 'log' and 'step' for floats")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise _fail(source, name, f"'step' must be a positive number. Got {step!r}.")
    if param is not None:
        base = param.kind.split("_")[0]
        if base not in ("int", "float") or (base == "int" and kind == "float"):
            raise _fail(source, name, f"is declared as {param.describe()}; it cannot be searched as a {kind}")
        for bound in (low, high):
            try:
                param.check(name, int(bound) if kind == "int" else float(bound))
            except ConfigError as exc:
                raise _fail(source, name, f"the range [{low}, {high}] leaves the allowed values: {exc}") from None
    return Dimension(name, kind, low=low, high=high, log=log, step=step, when=when, otherwise=otherwise,
                     has_otherwise="else" in spec)


def parse_search_space(raw: Mapping[str, Any], source: str = "<search space>", stage: str | None = None) -> SearchSpace:
    """A :class:`SearchSpace` from a loaded YAML mapping; ConfigError naming ``source`` and the key."""
    for key in raw:
        if key not in ("family", "params"):
            raise ConfigError(f"{source}: unknown top-level key '{key}'.{suggest_name(str(key), ['family', 'params'])}")
    family = raw.get("family")
    if not isinstance(family, str):
        raise ConfigError(f"{source}: 'family' must name a model family")
    try:
        declared = declared_params(family, stage)
    except ConfigError as exc:
        raise ConfigError(f"{source}: 'family': {exc}") from None
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: 'params' must be a mapping of dotted parameter names to distributions")
    dims: dict[str, Dimension] = {}
    for name, spec in params.items():
        name = str(name)
        if not name.startswith(SEARCH_PREFIX) and name not in declared:
            section = name.split(".")[0]
            hint = suggest_name(name, list(declared))
            if section not in ("features", "model", "train", "stage_options"):
                hint = " Names are section.parameter with section one of features, model, train, stage_options, " \
                       "or search.<switch>." + hint
            raise ConfigError(f"{source}: unknown parameter '{name}' for family '{family}'.{hint}")
        dims[name] = _parse_dimension(source, name, spec, declared, dims)
    return SearchSpace(family, tuple(dims.values()), source)


def load_search_space(path: str | os.PathLike, stage: str | None = None) -> SearchSpace:
    """Read and check ``search_spaces/<family>.yaml``."""
    path = Path(path)
    return parse_search_space(read_yaml(path), str(path), stage)
