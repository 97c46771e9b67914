"""Declared parameters: one place that says what each setting may be, and checks it.

Every configurable part (the feature pipeline, each model family, the trainer, each stage)
declares its parameters as a ``{name: Param}`` mapping. :func:`resolve` fills defaults, rejects
unknown names with "did you mean" help, and checks types and ranges with messages in
scikit-learn's style: "The 'train.lr' parameter must be a float in (0, 1]. Got 5 instead.".
The same declarations let the search-space layer check a YAML space before any trial runs.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import ConfigError

__all__ = ["Param", "resolve", "suggest_name"]

_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "int_list": list, "float_list": list,
          "str_list": list}


@dataclass(frozen=True)
class Param:
    """One parameter: its kind, default, allowed range or choices, and what it is for.

    ``kind`` is one of int, float, bool, str, int_list, float_list, str_list. ``low``/``high``
    bound numbers (and each element of a list), inclusive unless ``low_open``/``high_open``.
    ``choices`` restricts str values (and elements of str_list). ``min_len``/``max_len`` bound lists.
    ``nullable`` allows None.
    """

    kind: str
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    min_len: int = 1
    max_len: int | None = None
    nullable: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown Param kind {self.kind!r}")

    def describe(self) -> str:
        """The allowed values in words, e.g. "an int in [1, 10]" or "one of 'adam', 'adamw'"."""
        base = self.kind.split("_")[0]
        if self.choices is not None:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
            return what if self.kind == "str" else f"a list of {what}"
        article = "an" if base == "int" else "a"
        noun = {"int": "int", "float": "float", "bool": "bool", "str": "string"}[base]
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            left = "(" if self.low_open or self.low is None else "["
            right = ")" if self.high_open or self.high is None else "]"
            noun += f" in {left}{lo}, {hi}{right}"
        if self.kind.endswith("_list"):
            return f"a list of {noun}s" + (f" ({self.min_len} to {self.max_len} long)" if self.max_len else "")
        return f"{article} {noun}"

    def _scalar(self, value: Any) -> Any:
        base = self.kind.split("_")[0]
        if base == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if base == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise TypeError
        elif base == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            value = float(value)
            if not math.isfinite(value):
                raise TypeError
        elif base == "str":
            if not isinstance(value, str):
                raise TypeError
            if self.choices is not None and value not in self.choices:
                raise TypeError
            return value
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise TypeError
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise TypeError
        return value

    def check(self, name: str, value: Any) -> Any:
        """``value`` coerced to this parameter's kind, or a ConfigError naming ``name``."""
        if value is None and self.nullable:
            return None
        try:
            if self.kind.endswith("_list"):
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    raise TypeError
                if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
                    raise TypeError
                return [self._scalar(v) for v in value]
            return self._scalar(value)
        except TypeError:
            nullable = " or null" if self.nullable else ""
            raise ConfigError(f"The '{name}' parameter must be {self.describe()}{nullable}. Got {value!r} instead.") from None


def suggest_name(name: str, known: Sequence[str], prefix: str = "") -> str:
    """" Did you mean 'x'?" for a close match among ``known``, else a list of the known names.

    ``prefix`` (such as ``train.``) is put back on the suggestion, so it can be pasted as it is.
    """
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return f" Did you mean '{prefix}{close[0]}'?"
    return f" Known: {', '.join(sorted(known))}." if known else ""


def resolve(section: str, specs: Mapping[str, Param], values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked values of one config section: defaults filled in, unknown names rejected."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"The '{section}' section must be a mapping of parameters. Got {values!r} instead.")
    for name in values:
        if name not in specs:
            raise ConfigError(f"Unknown parameter '{section}.{name}'."
                              f"{suggest_name(str(name), list(specs), prefix=f'{section}.')}")
    return {name: spec.check(f"{section}.{name}", values.get(name, spec.default)) for name, spec in specs.items()}
