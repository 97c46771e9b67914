"""The sweep file: which families and stages to tune, how many trials, folds, ASHA, resources.

A sweep file (``search_spaces/sweeps/default.yaml`` is the embedded default) is checked here,
without Ray, so a typo fails with the file and key before a cluster is touched::

    name: default
    data: {synth: small, seed: 0}          # or a path to a lish-moa directory
    folds: {n_splits: 5, scheme: drug, seed: 0, threshold: 18}
    seed: 0                                # Optuna's TPE sampler
    seeds: [0, 1, 2]                       # training seeds (the first for trials; all for the collector;
                                           # default 0-4)
    budget: 10m                            # wall-clock budget of the whole job (sweep, collect, export,
                                           # predict, report): 30s, 10m, 2h; stages without `trials`
                                           # then run trials until their share of it is spent
    time_budget_s: null                    # per family x stage experiment
    scheduler: asha                        # asha (fold-level early stopping) or fifo (every trial
                                           # trains every fold)
    asha: {grace_period: 1, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}            # per trial; gpu may be fractional (0.25 packs four on one GPU)
    max_concurrent: null                   # default: what the cluster's resources allow
    max_failures: 1                        # retries of a failed trial (Tune's FailureConfig)
    fixed: {train.epochs: 15, mlp: {model.hidden_size: 512}}   # values trials get after sampling;
                                           # a family name holds values for that family only
    stages:
      - {stage: direct, families: [mlp, linear]}   # no trials: as many as the budget affords
      - {stage: stage1, families: [mlp], trials: 8}
      - {stage: stage2, families: [mlp, resnet2head], trials: 8, inputs: best}
      - {stage: stage3, families: [linear], trials: 4, inputs: per_family}
    search_spaces: {}                      # family -> YAML path (default: search_spaces/<family>.yaml)
    points_to_evaluate: {mlp: [{model.hidden_size: 1024, ...}]}   # known-good starting points
    collect: {top_k: 2, budget_share: 0.35}  # configurations per family x stage the collector keeps;
                                           # the most of a budget its retraining may take
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .config import read_yaml
from .errors import ConfigError
from .params import Param, resolve, suggest_name
from .search_space import SearchSpace, load_search_space

if TYPE_CHECKING:
    from .data import MoaData

__all__ = ["DEFAULT_SWEEP", "DEFAULT_TRIALS", "SEARCH_SPACES", "StageSpec", "SweepSpec", "check_run_name", "load_data_source",
           "load_sweep", "parse_sweep"]

#: The repository's search_spaces/ folder (the default place of family spaces and sweep files).
def _search_spaces() -> Path:
    """The search spaces: the checkout's top-level ``search_spaces/`` (a source or editable install),
    else the copy an installed wheel carries as ``moa_tune/search_spaces/`` (pyproject's package-dir)."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "search_spaces"
    return checkout if (checkout / "sweeps" / "default.yaml").is_file() else here / "search_spaces"


SEARCH_SPACES = _search_spaces()
DEFAULT_SWEEP = SEARCH_SPACES / "sweeps" / "default.yaml"

TOP_KEYS = ("name", "data", "folds", "seed", "seeds", "budget", "time_budget_s", "scheduler", "asha", "resources", "max_concurrent",
            "max_failures", "fixed", "stages", "search_spaces", "points_to_evaluate", "collect")
FOLD_PARAMS = {
    "n_splits": Param("int", 5, "Number of folds (ASHA's max_t).", low=2, high=50),
    "scheme": Param("str", "drug", "drug, multilabel or auto.", choices=("drug", "multilabel", "auto")),
    "seed": Param("int", 0, "Seed of the folds.", low=0),
    "threshold": Param("int", 18, "Drugs with at most this many rows stay whole.", low=1),
    "keep_controls": Param("bool", False, "Train and score on control rows too."),
}
SCHEDULER = Param("str", "asha", "Trial scheduler: asha stops poor trials after their first folds; fifo "
                  "lets every trial train every fold (the baseline ASHA is measured against).",
                  choices=("asha", "fifo"))
ASHA_PARAMS = {
    "grace_period": Param("int", 1, "Folds every trial trains before it can be stopped.", low=1),
    "reduction_factor": Param("float", 2.0, "ASHA keeps 1 / reduction_factor of the trials at each rung.",
                              low=1.0, low_open=True),
}
RESOURCE_PARAMS = {
    "cpu": Param("float", 1.0, "CPUs per trial.", low=0.0, low_open=True),
    "gpu": Param("float", 0.0, "GPUs per trial (fractions pack several trials on one GPU).", low=0.0),
}
COLLECT_PARAMS = {
    "top_k": Param("int", 2, "Configurations per family x stage the collector retrains and blends.", low=1),
    "budget_share": Param("float", 0.35, "With a budget: the most of it the collector's retraining may take "
                          "(fewer seeds when they do not fit).", low=0.0, high=1.0, low_open=True, high_open=True),
}
#: Trials per stage entry without a budget, when the entry names none.
DEFAULT_TRIALS = 8
#: Training seeds when the sweep file names none: the collector's 5-seed average.
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
STAGE_ENTRY_KEYS = ("stage", "families", "trials", "inputs")


@dataclass(frozen=True)
class StageSpec:
    stage: str
    families: tuple[str, ...]
    trials: int | None  # None: as many as the budget affords (DEFAULT_TRIALS without a budget)
    inputs: str  # "best" (the single best config of the previous stage) | "per_family" (best of each family)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    data: dict[str, Any] | str
    folds: dict[str, Any]
    seed: int
    seeds: tuple[int, ...]
    budget_s: float | None
    time_budget_s: float | None
    scheduler: str
    asha: dict[str, Any]
    resources: dict[str, float]
    max_concurrent: int | None
    max_failures: int
    fixed: dict[str, Any]
    stages: tuple[StageSpec, ...]
    spaces: dict[str, SearchSpace] = field(repr=False)
    points_to_evaluate: dict[str, list[dict[str, Any]]]
    collect: dict[str, Any]
    source: str
    raw: dict[str, Any] = field(repr=False)

    def fixed_for(self, family: str) -> dict[str, Any]:
        """The fixed values of ``family``'s trials: the common ones, then the family's own."""
        from .models import FAMILIES

        return {"train.seed": self.seeds[0], **_fixed_of(self.fixed, family, FAMILIES)}

    def trials_of(self, stage: StageSpec, budgeted: bool) -> int | None:
        """Trials of a stage entry: its own count, else unlimited under a budget, else DEFAULT_TRIALS."""
        if stage.trials is not None:
            return stage.trials
        return None if budgeted else DEFAULT_TRIALS

    def experiments(self) -> list[tuple[str, str]]:
        """(stage, family) of every experiment, in the order they run."""
        return [(s.stage, f) for s in self.stages for f in s.families]


def _int(source: str, key: str, value: Any, low: int, nullable: bool = False) -> int | None:
    try:
        return Param("int", None, low=low, nullable=nullable).check(key, value)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def check_run_name(name: object, where: str) -> str:
    """``name`` if it is a plain folder name (the run's folder under ``--results``); ConfigError otherwise.

    The name becomes a path that ``--force`` deletes, so '', '.', '..', an absolute path or one with
    a separator would point outside the run's own folder (at ``--results`` itself, its parent, or
    anywhere): they are refused wherever a name comes from, the sweep file or ``--name``.
    """
    if (not isinstance(name, str) or not name.strip() or name.startswith(".") or "/" in name or "\\" in name
            or "\0" in name or Path(name).is_absolute() or Path(name).name != name):
        raise ConfigError(f"{where} must be a plain folder name (not empty, no '/' or '\\', not starting with '.'). "
                          f"Got {name!r}.")
    return name


def parse_sweep(raw: Mapping[str, Any], source: str = "<sweep>", base_dir: Path | None = None) -> SweepSpec:
    """A checked :class:`SweepSpec`; every error names ``source`` and the key."""
    from .config import resolve_config, set_path
    from .models import FAMILIES, get_family
    from .stages import NEEDS_INPUTS, STAGES

    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{source}: unknown key '{key}'.{suggest_name(str(key), TOP_KEYS)}")
    name = check_run_name(raw.get("name", Path(source).stem), f"{source}: 'name'")
    data = raw.get("data", {"synth": "small", "seed": 0})
    if isinstance(data, Mapping):
        unknown = set(data) - {"synth", "seed"}
        if unknown or "synth" not in data:
            raise ConfigError(f"{source}: 'data' is a path or {{synth: PRESET, seed: N}}. Got {dict(data)!r}.")
        from .synth import PRESETS

        if data["synth"] not in PRESETS:
            raise ConfigError(f"{source}: 'data.synth': unknown preset {data['synth']!r}; one of {', '.join(PRESETS)}")
        data = {"synth": data["synth"], "seed": _int(source, "data.seed", data.get("seed", 0), 0)}
    elif not isinstance(data, str):
        raise ConfigError(f"{source}: 'data' is a path or {{synth: PRESET, seed: N}}. Got {data!r}.")

    def section(key: str, specs: Mapping[str, Param]) -> dict[str, Any]:
        try:
            return resolve(key, specs, raw.get(key))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    folds = section("folds", FOLD_PARAMS)
    try:
        scheduler = SCHEDULER.check("scheduler", raw.get("scheduler", SCHEDULER.default))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    asha = section("asha", ASHA_PARAMS)
    resources = section("resources", RESOURCE_PARAMS)
    collect = section("collect", COLLECT_PARAMS)
    seed = _int(source, "seed", raw.get("seed", 0), 0)
    seeds_raw = raw.get("seeds", list(DEFAULT_SEEDS))
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise ConfigError(f"{source}: 'seeds' must be a non-empty list of ints. Got {seeds_raw!r}.")
    seeds = tuple(_int(source, "seeds", s, 0) for s in seeds_raw)
    job_budget = None
    if raw.get("budget") is not None:
        from .budget import parse_budget

        job_budget = parse_budget(raw["budget"], f"{source}: 'budget'")
    budget = raw.get("time_budget_s")
    if budget is not None:
        try:
            budget = Param("float", None, low=0.0, low_open=True).check("time_budget_s", budget)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    max_concurrent = _int(source, "max_concurrent", raw.get("max_concurrent"), 1, nullable=True)
    max_failures = _int(source, "max_failures", raw.get("max_failures", 1), 0)
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"{source}: 'fixed' must map dotted parameter names to values")

    entries = raw.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list of {{stage, families, trials}}")
    stages: list[StageSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"stages[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: '{where}' must be a mapping with stage, families, trials")
        for key in entry:
            if key not in STAGE_ENTRY_KEYS:
                raise ConfigError(f"{source}: '{where}': unknown key '{key}'.{suggest_name(str(key), STAGE_ENTRY_KEYS)}")
        stage = entry.get("stage")
        if stage not in STAGES:
            raise ConfigError(f"{source}: '{where}.stage': unknown stage {stage!r}.{suggest_name(str(stage), STAGES)}")
        if stage in seen:
            raise ConfigError(f"{source}: '{where}.stage': stage '{stage}' appears twice")
        needed = NEEDS_INPUTS.get(stage)
        if needed and needed not in seen:
            raise ConfigError(f"{source}: '{where}': stage '{stage}' needs a '{needed}' entry before it")
        seen.add(stage)
        families = entry.get("families")
        if isinstance(families, str):
            families = [families]
        if not isinstance(families, list) or not families:
            raise ConfigError(f"{source}: '{where}.families' must be a non-empty list of model families")
        for family in families:
            if family not in FAMILIES:
                raise ConfigError(f"{source}: '{where}.families': unknown model family {family!r}."
                                  f"{suggest_name(str(family), list(FAMILIES))}")
            try:
                get_family(family).check_stage(stage)
            except ConfigError as exc:
                raise ConfigError(f"{source}: '{where}': {exc}") from None
        trials = _int(source, f"{where}.trials", entry.get("trials"), 1, nullable=True)
        inputs = entry.get("inputs", "per_family" if stage == "stage3" else "best")
        if inputs not in ("best", "per_family"):
            raise ConfigError(f"{source}: '{where}.inputs' must be 'best' or 'per_family'. Got {inputs!r}.")
        stages.append(StageSpec(stage, tuple(dict.fromkeys(families)), trials, inputs))

    base_dir = base_dir or Path(source).resolve().parent
    custom = raw.get("search_spaces") or {}
    if not isinstance(custom, Mapping):
        raise ConfigError(f"{source}: 'search_spaces' must map family names to YAML paths")
    spaces: dict[str, SearchSpace] = {}
    for family in dict.fromkeys(f for s in stages for f in s.families):
        if family in custom:
            path = Path(custom[family])
            path = path if path.is_absolute() else base_dir / path
        else:
            path = base_dir.parent / f"{family}.yaml"
            if not path.is_file():
                path = SEARCH_SPACES / f"{family}.yaml"
        space = load_search_space(path)
        if space.family != family:
            raise ConfigError(f"{path}: 'family' is '{space.family}' but the sweep uses it for '{family}'")
        spaces[family] = space.fixing(_fixed_of(fixed, family, FAMILIES))

    # fixed values must be valid for every family they reach (resolved on the family's defaults)
    for key, value in fixed.items():
        if key in FAMILIES and not isinstance(value, Mapping):
            raise ConfigError(f"{source}: 'fixed.{key}' must map dotted parameter names to values for family '{key}'")
    for family in spaces:
        probe: dict[str, Any] = {"family": family}
        values = _fixed_of(fixed, family, FAMILIES)
        try:
            for key, value in values.items():
                set_path(probe, str(key), value)
            resolve_config(probe)
        except ConfigError as exc:
            raise ConfigError(f"{source}: 'fixed' ({family}): {exc}") from None

    points = raw.get("points_to_evaluate") or {}
    if not isinstance(points, Mapping):
        raise ConfigError(f"{source}: 'points_to_evaluate' must map families to lists of parameter values")
    checked_points: dict[str, list[dict[str, Any]]] = {}
    for family, plist in points.items():
        if family not in spaces:
            raise ConfigError(f"{source}: 'points_to_evaluate.{family}': the sweep does not tune family '{family}'")
        if not isinstance(plist, list):
            raise ConfigError(f"{source}: 'points_to_evaluate.{family}' must be a list of mappings")
        searched = set(spaces[family].searched())
        fixed_here = _fixed_of(fixed, family, FAMILIES)
        plist = [{k: v for k, v in p.items() if k not in fixed_here} if isinstance(p, Mapping) else p for p in plist]
        for j, point in enumerate(plist):
            if not isinstance(point, Mapping):
                raise ConfigError(f"{source}: 'points_to_evaluate.{family}[{j}]' must be a mapping")
            for key in point:
                if key not in searched:
                    raise ConfigError(f"{source}: 'points_to_evaluate.{family}[{j}]': '{key}' is not searched in "
                                      f"{spaces[family].source}.{suggest_name(str(key), sorted(searched))}")
                problem = spaces[family].value_problem(str(key), point[key])
                if problem:
                    raise ConfigError(f"{source}: 'points_to_evaluate.{family}[{j}].{key}': {problem} "
                                      f"(as {spaces[family].source} searches it)")
        checked_points[family] = [dict(p) for p in plist]

    return SweepSpec(name, data, folds, seed, seeds, job_budget, budget, scheduler, asha, resources, max_concurrent, max_failures,
                     dict(fixed), tuple(stages), spaces, checked_points, collect, source, dict(raw))


def _fixed_of(fixed: Mapping[str, Any], family: str, families: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's fixed values that reach ``family``: the common ones, then the family's own."""
    values = {str(k): v for k, v in fixed.items() if k not in families}
    values.update(fixed.get(family) or {})
    return values


def load_sweep(path: str | os.PathLike | None = None) -> SweepSpec:
    """Read and check a sweep file (default: the embedded ``search_spaces/sweeps/default.yaml``)."""
    path = Path(path) if path is not None else DEFAULT_SWEEP
    return parse_sweep(read_yaml(path), str(path), path.resolve().parent)


def load_data_source(source: str | Mapping[str, Any], base: Path) -> MoaData:
    """The data a sweep file's ``data`` names: a directory (relative to ``base``, the sweep file's
    folder) or ``{synth: PRESET, seed: N}``, regenerated. Shared by the sweep, the collector and the
    report, which reads a sweep folder's ``sweep.yaml`` without Ray.
    """
    from .data import load
    from .synth import generate

    if isinstance(source, Mapping):
        return generate(str(source["synth"]), seed=int(source.get("seed", 0)))
    path = Path(str(source))
    return load(path if path.is_absolute() else base / path)
