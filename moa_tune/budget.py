"""The job's time budget: parsing it, and planning how to spend it from measured trial times.

Users think in wall-clock time ("I have 10 minutes"), not in trial counts, and a trial count
that fits one dataset and cluster is wrong for the next. So ``moa-tune run --budget 10m`` covers
the whole job (sweep, collect, export, predict, report) and the job plans as it goes:

- the *tail* (export, prediction, report, and the collector's own overhead of starting tasks and
  blending) gets a small reserve: 8% of the budget, at least 15 s (blending on full-size data
  takes seconds per component, and a run's last minute must not overrun);
- the *collector* gets what training the best configurations with its further seeds will take,
  estimated from the times of the sweep's own best trials (a retraining is one trial's work),
  capped at ``collect_share`` of the budget. A component's first seed is its sweep trial, reused,
  so one seed costs nothing and always fits: a run never lacks an ensemble for want of collect
  time. Seeds are planned per stage (:func:`seed_plan`): the stages of a chain take one number,
  and ``direct``, which feeds nothing, takes the further seeds the chain cannot afford. Further
  seeds are reserved only while every experiment still to run affords a few full trials
  (``JobPlan.min_search_trials``): the search comes first;
- the *sweep* gets the rest. Its experiments (family x stage) run one after the other; each gets
  an equal share of the sweep time left when it starts, so time an early experiment does not use
  (it ran out of trials) goes to the later ones, and the estimate of the collector's reserve is
  refreshed from every experiment's measured trial times.

Everything here is arithmetic on measured seconds: no Ray, no torch. The sweep layer turns a
slice into a Ray Tune stopper; the collector turns its share into seeds per stage.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .errors import ConfigError
from .stages import NEEDS_INPUTS

__all__ = ["BUDGET_KEY", "Budget", "BudgetError", "JobPlan", "collect_seconds", "format_seconds", "parse_budget",
           "seed_plan", "seeds_that_fit"]


class BudgetError(ConfigError):
    """The budget cannot pay for one trial of every stage (the job stops and removes what it began)."""

#: The key under which a budgeted job's ``sweep.yaml`` records its budget and start (sweep.py writes
#: it, ``moa-tune status`` reads it; both without sharing anything else).
BUDGET_KEY = "_budget"

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|hr|h|min|m|sec|s)", re.IGNORECASE)


def parse_budget(value: object, where: str = "--budget") -> float:
    """Seconds from ``10m``, ``30s``, ``2h``, ``1h30m``, ``90`` (seconds) or a number; ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: a budget is a duration such as 30s, 10m or 2h. Got {value!r}.")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"[+-]?\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-").replace(" ", "")
            parts = _PART.findall(body)
            if not parts or "".join(f"{n}{u}" for n, u in parts) != body:
                raise ConfigError(f"{where}: a budget is a duration such as 30s, 10m, 2h or 1h30m. Got {value!r}.")
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ConfigError(f"{where}: a budget is a duration such as 30s, 10m or 2h. Got {value!r}.")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{where}: the budget must be a positive duration (30s, 10m, 2h). Got {value!r}.")
    return seconds


def format_seconds(seconds: float) -> str:
    """``42 s``, ``6.5 min`` or ``2.1 h``: how a person reads a duration."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Budget:
    """A wall-clock budget that started at ``started`` (``time.time()``: it is recorded and resumed)."""

    total_s: float
    started: float = field(default_factory=time.time)

    def elapsed(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.started

    def left(self, now: float | None = None) -> float:
        return self.total_s - self.elapsed(now)

    @property
    def deadline(self) -> float:
        return self.started + self.total_s


def seeds_that_fit(trial_seconds: Mapping[str, Sequence[float]], n_seeds: int, slots: int, available_s: float) -> int:
    """How many seeds (1..n_seeds), the same for every stage, the collector can train in ``available_s``.

    ``trial_seconds``: per collector stage, the measured full-CV time of each component (its sweep
    trial's time). One seed always fits: it is the sweep's own trial, reused (:func:`collect_seconds`).
    """
    for k in range(n_seeds, 0, -1):
        if collect_seconds(trial_seconds, k, slots) <= available_s:
            return k
    return 1


def seed_plan(trial_seconds: Mapping[str, Sequence[float]], n_seeds: int, slots: int,
              available_s: float) -> dict[str, int]:
    """Seeds per collector stage that fit ``available_s``: every stage the same, then more where they are cheap.

    The stages of a chain (stage 1 -> 2 -> 3) take the same number of seeds: a stage whose inputs
    were collected with several seeds retrains all of its own, so one more seed in a chain costs a
    retraining of every stage of it. A stage outside any chain (``direct``: no inputs, and nothing
    takes its predictions) costs only its own retraining, so when the chain cannot afford every
    seed the time it leaves still buys seeds there, rather than ending the job early.
    """
    k = seeds_that_fit(trial_seconds, n_seeds, slots, available_s)
    plan = {stage: k for stage in trial_seconds}
    fed = {NEEDS_INPUTS[stage] for stage in trial_seconds if stage in NEEDS_INPUTS}
    free = [stage for stage in trial_seconds if stage not in NEEDS_INPUTS and stage not in fed]
    for more in range(k + 1, n_seeds + 1):
        trial = {**plan, **{stage: more for stage in free}}
        if not free or collect_seconds(trial_seconds, trial, slots) > available_s:
            break
        plan = trial
    return plan


def collect_seconds(trial_seconds: Mapping[str, Sequence[float]], n_seeds: int | Mapping[str, int],
                    slots: int) -> float:
    """Estimated wall time of the collector's training with ``n_seeds`` seeds per component.

    ``n_seeds``: one number for every stage, or one per stage (:func:`seed_plan`). A component's
    first seed is its sweep trial, reused without training, in a stage without inputs (direct,
    stage 1) and in a stage whose inputs were collected with one seed (they are then the sweep's
    own); a stage-2/3 component whose inputs were collected with several seeds is trained with all
    of them. Stages run one after the other; within a stage the (component, seed) trainings share
    ``slots`` at once, so a stage takes about its total work / slots, and at least its longest task.
    """
    seeds_of = n_seeds if isinstance(n_seeds, Mapping) else {stage: n_seeds for stage in trial_seconds}
    total = 0.0
    for stage, times in trial_seconds.items():
        k = int(seeds_of.get(stage, 1))
        upstream = NEEDS_INPUTS.get(stage)
        inputs_changed = upstream is not None and int(seeds_of.get(upstream, k)) > 1
        trained = k if inputs_changed else k - 1
        tasks = [t for t in times for _ in range(trained)]
        if tasks:
            total += max(sum(tasks) / max(1, slots), max(tasks))
    return total


@dataclass
class JobPlan:
    """How a budgeted job spends its time, refreshed from measured trial times as the sweep runs.

    ``experiments``: (stage, family) in the order they run (the collector retrains ``top_k``
    components of each, stage by stage); ``n_seeds`` seeds wanted; ``slots`` trials (or collector
    tasks) at once.
    ``collect_share``: the most of the budget the collector may take; ``tail_share``: the reserve of
    the export, prediction and report (both fractions of the budget). With ``collect=False`` (a
    sweep run on its own) the sweep gets everything.
    ``min_search_trials``: the full trials each experiment still to run must be able to afford
    before the collector's seeds beyond the first are given any of the sweep's time. A seed
    average narrows a model's variance by a few percent; a search that affords only its known-good
    first point finds nothing, and on a budget where one full trial is a fifth of the job (measured:
    bench/main_job.py, semi-real data) reserving three seeds left every experiment less than one.
    """

    budget: Budget
    experiments: Sequence[tuple[str, str]]
    top_k: int = 1
    n_seeds: int = 3
    slots: int = 1
    collect: bool = True
    collect_share: float = 0.35
    tail_share: float = 0.08
    tail_min_s: float = 15.0
    min_search_trials: int = 3
    #: (stage, family) -> full-CV seconds of its completed trials, as measured
    measured: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    #: experiments that will not run (the sweep skipped them): they give the collector nothing to train
    dropped: set[tuple[str, str]] = field(default_factory=set)

    def drop(self, stage: str, family: str) -> None:
        self.dropped.add((stage, family))

    def record(self, stage: str, family: str, full_trial_seconds: Sequence[float]) -> None:
        """The times of an experiment's trials that trained every fold, best (lowest loss) first.

        The collector retrains the best ``top_k`` of them, and a good configuration is often a slow
        one (wider, longer): the reserve is costed at their own times, not at a typical trial's.
        """
        self.measured[(stage, family)] = [float(t) for t in full_trial_seconds if t and t > 0]

    @property
    def tail_s(self) -> float:
        if not self.collect:
            return 0.0
        return max(self.tail_min_s, self.tail_share * self.budget.total_s)

    def _component_seconds(self) -> dict[str, list[float]]:
        """Per stage: the estimated full-CV time of each component the collector will retrain.

        Stage-1 components count too (they are trained with the collector's seeds to feed stage 2).
        A measured experiment's components are its ``top_k`` best full trials, at their own times; an
        experiment not run yet counts ``top_k`` components at the median of every measured time so
        far. One that ran without a trial that trained every fold, or that the sweep skipped, has no
        component and costs nothing.
        """
        fallback = self._median_full_trial()
        per_stage: dict[str, list[float]] = {}
        for stage, family in self.experiments:
            if (stage, family) in self.dropped:
                continue
            times = self.measured.get((stage, family))
            if times is not None:
                per_stage.setdefault(stage, []).extend(times[:self.top_k])
            elif fallback is not None:
                per_stage.setdefault(stage, []).extend([fallback] * self.top_k)
        return {stage: times for stage, times in per_stage.items() if times}

    def collect_cap_s(self) -> float:
        return self.collect_share * self.budget.total_s if self.collect else 0.0

    def _median_full_trial(self) -> float | None:
        """The median time of every full trial measured so far: the cost of an experiment not run yet."""
        every = sorted(t for times in self.measured.values() for t in times)
        return every[len(every) // 2] if every else None

    def _remaining(self) -> list[tuple[str, str]]:
        """Experiments still to run: neither measured (finished) nor dropped."""
        return [e for e in self.experiments if e not in self.measured and e not in self.dropped]

    def _search_needs_s(self) -> float:
        """Sweep seconds that let every experiment still to run afford ``min_search_trials`` full trials.

        An experiment not run yet is costed at the median full trial measured so far; ``slots`` trials
        run at once, and a trial is not split across slots (3 trials on 2 slots take 2 trial times).
        """
        median = self._median_full_trial()
        if median is None:
            return 0.0
        rounds = math.ceil(self.min_search_trials / max(1, self.slots))
        return len(self._remaining()) * rounds * median

    def collect_reserve_s(self, now: float | None = None) -> float:
        """Seconds kept for the collector's seeds beyond the first (the first is the sweep's own trial).

        The seeds (:func:`seed_plan`: the chain evenly, then ``direct``) that fit what the sweep
        time left beyond every remaining experiment's ``min_search_trials`` affords, within the
        collector's cap; none while nothing is measured (the search comes first, and whatever the
        sweep leaves unspent still goes to seeds: the collector fits its seeds to the time actually
        left).
        """
        if not self.collect:
            return 0.0
        per_stage = self._component_seconds()
        if not per_stage:
            return 0.0
        now = time.time() if now is None else now
        spare = self.budget.deadline - self.tail_s - now - self._search_needs_s()
        seeds = seed_plan(per_stage, self.n_seeds, self.slots, max(0.0, min(self.collect_cap_s(), spare)))
        return collect_seconds(per_stage, seeds, self.slots)

    def sweep_deadline(self, now: float | None = None) -> float:
        """Wall-clock time (``time.time()``) by which the sweep must end."""
        return self.budget.deadline - self.tail_s - self.collect_reserve_s(now)

    def experiment_slice(self, remaining_experiments: int, now: float | None = None) -> float:
        """Seconds the next experiment may run: an equal share of the sweep time left."""
        now = time.time() if now is None else now
        return max(0.0, (self.sweep_deadline(now) - now) / max(1, remaining_experiments))

    def collect_deadline(self) -> float:
        return self.budget.deadline - self.tail_s

    def fastest_full_trial(self) -> float | None:
        every = [t for times in self.measured.values() for t in times]
        return min(every) if every else None

    def check_feasible(self, trials_needed: int, now: float | None = None) -> None:
        """Refuse, in one line, a sweep time left that cannot pay for ``trials_needed`` full trials.

        The sweep asks before each experiment, with the trials it needs to be of use: one, or two
        for stage 1 (its predictions are only worth something once stage 2 has learnt from them).
        Judged on what is measured: the sweep's time left against the fastest full trial so far
        (before any is measured, only a sweep time already spent is refused). An experiment without
        a trial that trained every fold gives the blend no component, so starting one that cannot
        finish would only spend the budget on work that cannot end well; the sweep skips it, or
        stops the job when it has nothing to blend yet.
        """
        now = time.time() if now is None else now
        left = self.sweep_deadline(now) - now
        fastest = self.fastest_full_trial()
        need = trials_needed * fastest if fastest is not None else 0.0
        if left > need and left > 0:
            return
        reserve = self.tail_s + self.collect_reserve_s(now)
        spent = now - self.budget.started
        floor = spent + max(need, 0.0) + reserve
        if fastest is None:  # nothing measured: starting Ray and one trial per stage take a minute or more
            floor = max(floor, 60.0)
        why = (f"a trial that trains every fold took {fastest:.0f} s here and {trials_needed} more are needed"
               if fastest is not None else "the sweep's share is spent before its first trial")
        raise BudgetError(f"--budget {format_seconds(self.budget.total_s)} is too small for this sweep: {why} "
                          f"({format_seconds(spent)} spent, {format_seconds(reserve)} kept for collecting and the "
                          f"report); give at least --budget {_round_up(floor * 1.5)}")


def _round_up(seconds: float) -> str:
    """A budget to suggest, in the unit a person would type."""
    if seconds <= 120:
        return f"{math.ceil(seconds / 10) * 10:.0f}s"
    if seconds <= 7200:
        return f"{math.ceil(seconds / 60):.0f}m"
    return f"{math.ceil(seconds / 3600):.0f}h"
