"""moa_tune.budget: durations as users write them, and the plan that splits a job's budget."""
from __future__ import annotations

import pytest

from conftest import run_cli
from moa_tune import ConfigError
from moa_tune.budget import Budget, JobPlan, collect_seconds, parse_budget, seeds_that_fit


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("90", 90),
                                           ("1.5m", 90), (" 10 min ", 600), ("2H", 7200), (45, 45), (0.5, 0.5)])
def test_durations(text, seconds) -> None:
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "0s", "-5m", "soon", "", "10 minutes please", "m", "5x", True, None, "nan",
                                  "inf", "1e999"])
def test_bad_durations(text) -> None:
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


@pytest.mark.parametrize("value", ["0", "-5m", "soon"])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_bad_budget_on_the_command_line_is_one_line_and_exit_2(value, command, tmp_path, capsys) -> None:
    code, out, err = run_cli([command, f"--budget={value}", "--results", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--budget" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written


def test_bad_budget_in_a_sweep_file(tmp_path, capsys) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("budget: soon\nstages: [{stage: direct, families: [linear]}]\n")
    code, _, err = run_cli(["sweep", "--config", str(path), "--results", str(tmp_path / "r")], capsys)
    assert code == 2 and str(path) in err and "'budget'" in err and len(err.strip().splitlines()) == 1


def test_collect_time_and_seeds_follow_the_measured_trial_times() -> None:
    per_stage = {"direct": [10.0, 30.0], "stage3": [4.0]}
    # direct: 2 components x 2 seeds = 80 s of work on 2 slots -> 40 s; stage3: 2 x 4 s on 2 slots, at least 4 s
    assert collect_seconds(per_stage, 2, 2) == pytest.approx(40 + 4)
    assert collect_seconds(per_stage, 1, 1) == pytest.approx(40 + 4)  # one slot: the work one after another
    assert seeds_that_fit(per_stage, 5, 2, 70.0) == 3 and seeds_that_fit(per_stage, 5, 2, 1000.0) == 5
    assert seeds_that_fit(per_stage, 5, 2, 1.0) == 1  # never fewer than one: a run needs its ensemble


def test_the_plan_gives_the_collector_what_its_seeds_need_and_the_sweep_the_rest() -> None:
    budget = Budget(600.0, started=1000.0)
    plan = JobPlan(budget, [("direct", "mlp"), ("stage1", "mlp"), ("stage2", "mlp")], top_k=1, n_seeds=3, slots=2)
    assert plan.tail_s == pytest.approx(30.0)  # 5% of 10 min
    assert plan.collect_reserve_s() == pytest.approx(0.35 * 600)  # nothing measured: the whole cap
    plan.record("direct", "mlp", [20.0, 30.0, 40.0])
    # every experiment costed at the median full trial, 30 s: 3 stages x (3 seeds x 30 s / 2 slots, >= 30 s)
    assert plan.collect_reserve_s() == pytest.approx(3 * 45.0)
    assert plan.sweep_deadline() == pytest.approx(1000 + 600 - 30 - 135)
    assert plan.experiment_slice(3, now=1000.0) == pytest.approx((600 - 30 - 135) / 3)
    # trials too slow for three seeds within the cap: fewer seeds, never a starved sweep
    plan.record("direct", "mlp", [200.0])
    assert plan.collect_reserve_s() == pytest.approx(3 * 200.0)  # one seed each (the minimum), over the cap
    sweep_only = JobPlan(budget, [("direct", "mlp")], collect=False)
    assert sweep_only.sweep_deadline() == budget.deadline and sweep_only.tail_s == 0


def test_the_collector_never_repeats_the_sweep_trials_seed() -> None:
    from moa_tune.collect import fresh_seeds

    assert fresh_seeds((0, 1, 2), trained=0) == (3, 1, 2)
    assert fresh_seeds((1, 2), trained=0) == (1, 2)
    assert fresh_seeds((5,), trained=5) == (6,)


def test_a_budget_too_small_for_one_trial_per_stage_is_refused_with_what_it_would_need() -> None:
    from moa_tune.budget import BudgetError

    plan = JobPlan(Budget(300.0, started=1000.0), [("stage1", "mlp"), ("stage2", "mlp"), ("stage3", "linear")],
                   n_seeds=1, slots=2)
    plan.record("stage1", "mlp", [30.0])
    # kept: 15 s tail + 3 stages x one 30 s retraining = 105 s; the sweep must end by 1195
    assert plan.sweep_deadline() == pytest.approx(1195.0)
    plan.check_feasible(2, now=1100.0)  # 95 s left: two stages of one 30 s trial fit
    with pytest.raises(BudgetError, match=r"too small.*took 30 s.*2 stage.*give at least --budget 8m"):
        plan.check_feasible(2, now=1150.0)  # 45 s left
