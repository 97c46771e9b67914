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
    # one seed is the sweep's own trials, reused: nothing to train
    assert collect_seconds(per_stage, 1, 2) == 0 and seeds_that_fit(per_stage, 5, 2, 0.0) == 1
    # direct (no inputs) trains its 2nd seed only: 40 s of work on 2 slots, at least its 30 s task; stage3's
    # inputs then come from 2-seed components, so it trains both seeds: 2 x 4 s on 2 slots, at least 4 s
    assert collect_seconds(per_stage, 2, 2) == pytest.approx(30 + 4)
    assert collect_seconds(per_stage, 3, 1) == pytest.approx(80 + 12)  # one slot: the work one after another
    assert seeds_that_fit(per_stage, 5, 2, 70.0) == 4 and seeds_that_fit(per_stage, 5, 2, 1000.0) == 5


def test_seeds_go_to_the_chain_evenly_then_to_direct_where_the_chain_cannot_afford_more() -> None:
    from moa_tune.budget import seed_plan

    per_stage = {"direct": [60.0, 100.0], "stage1": [50.0], "stage2": [50.0], "stage3": [10.0]}
    # 3 seeds everywhere: direct 2 x (60 + 100) / 2 slots = 160, stage1 2 x 50 = 100 (one task at a time:
    # at least 50 each, 100 of work on 2 slots -> 50), stage2 3 x 50 / 2 = 75, stage3 15
    assert collect_seconds(per_stage, 3, 2) == pytest.approx(160 + 50 + 75 + 15)
    assert seed_plan(per_stage, 3, 2, 1000.0) == {"direct": 3, "stage1": 3, "stage2": 3, "stage3": 3}
    # 3 seeds everywhere cost 300; 2 cost 100 + 50 + 50 + 10 = 210, and with 280 s a 3rd seed fits direct
    # (its 4 tasks on 2 slots: 160 s), which takes nothing from the chain: 270 s
    two = {"direct": 2, "stage1": 2, "stage2": 2, "stage3": 2}
    assert collect_seconds(per_stage, two, 2) == pytest.approx(210)
    assert seed_plan(per_stage, 3, 2, 280.0) == {**two, "direct": 3}
    assert collect_seconds(per_stage, {**two, "direct": 3}, 2) == pytest.approx(160 + 50 + 50 + 10)
    # too little for a 2nd seed in the chain: the sweep's own trials there, and direct still gets seeds
    assert seed_plan(per_stage, 3, 2, 120.0) == {"direct": 2, "stage1": 1, "stage2": 1, "stage3": 1}
    assert seed_plan(per_stage, 3, 2, 10.0) == {"direct": 1, "stage1": 1, "stage2": 1, "stage3": 1}
    # a chain alone gets no more than its even share
    chain = {"stage1": [50.0], "stage2": [50.0]}
    assert seed_plan(chain, 3, 2, 120.0) == {"stage1": 2, "stage2": 2}


def test_the_plan_gives_the_collector_what_its_seeds_need_and_the_sweep_the_rest() -> None:
    budget = Budget(600.0, started=1000.0)
    plan = JobPlan(budget, [("direct", "mlp"), ("stage1", "mlp"), ("stage2", "mlp")], top_k=1, n_seeds=3, slots=2)
    assert plan.tail_s == pytest.approx(48.0)  # 8% of 10 min
    # nothing measured: no seed is reserved, the search comes first
    assert plan.collect_reserve_s(now=1000.0) == 0
    assert plan.experiment_slice(3, now=1000.0) == pytest.approx((600 - 48) / 3)
    plan.record("direct", "mlp", [40.0, 20.0, 30.0])  # best first: the best trial took 40 s
    # direct's component is its best trial (40 s); the experiments not run yet cost the median full trial,
    # 30 s. 3 seeds: direct trains 2 (80 s on 2 slots), stage1 2 (30 s on 2 slots), stage2 all 3 (45 s)
    assert plan.collect_reserve_s(now=1000.0) == pytest.approx(40 + 30 + 45)
    assert plan.sweep_deadline(now=1000.0) == pytest.approx(1000 + 600 - 48 - 115)
    assert plan.experiment_slice(2, now=1000.0) == pytest.approx((600 - 48 - 115) / 2)
    # the 2 experiments still to run must afford 3 full trials each (2 rounds of 30 s on 2 slots): 120 s.
    # With 234 s of sweep time left, 3 seeds would leave 119: 2 seeds (direct 40, stage1 30, stage2 2 x 30 / 2)
    assert plan.collect_reserve_s(now=1000 + 552 - 234) == pytest.approx(40 + 30 + 30)
    # with 200 s left, 80 s are spare: no 2nd seed of the chain (stage2 would retrain both), but direct, which
    # feeds nothing, takes its further seeds (2 tasks of 40 s on 2 slots)
    assert plan.collect_reserve_s(now=1000 + 552 - 200) == pytest.approx(40)
    # with 150 s left, 30 s are spare: no seed fits; none reserved (time left unspent still goes to seeds)
    assert plan.collect_reserve_s(now=1000 + 552 - 150) == 0
    # an experiment the sweep skips, or one that ends without a trial of every fold, gives no component;
    # with nothing left to search, the seeds take what they need
    plan.drop("stage2", "mlp")
    assert plan.collect_reserve_s(now=1000.0) == pytest.approx(40 + 30)
    plan.record("stage1", "mlp", [])
    assert plan.collect_reserve_s(now=1352.0) == pytest.approx(40)
    # trials too slow for more seeds within the cap: one seed, the sweep's own, costing nothing
    plan.record("direct", "mlp", [500.0])
    assert plan.collect_reserve_s(now=1000.0) == 0 and plan.sweep_deadline(now=1000.0) == pytest.approx(1000 + 600 - 48)
    sweep_only = JobPlan(budget, [("direct", "mlp")], collect=False)
    assert sweep_only.sweep_deadline() == budget.deadline and sweep_only.tail_s == 0


def test_a_budget_too_small_for_one_trial_per_stage_is_refused_with_what_it_would_need() -> None:
    from moa_tune.budget import BudgetError

    plan = JobPlan(Budget(300.0, started=1000.0), [("stage1", "mlp"), ("stage2", "mlp"), ("stage3", "linear")],
                   n_seeds=1, slots=2)
    plan.record("stage1", "mlp", [30.0])
    # kept: the 24 s tail (one seed is the sweep's own trials); the sweep must end by 1276
    assert plan.sweep_deadline() == pytest.approx(1276.0)
    plan.check_feasible(2, now=1200.0)  # 76 s left: two stages of one 30 s trial fit
    with pytest.raises(BudgetError, match=r"too small.*took 30 s.*2 more are needed.*give at least --budget 9m"):
        plan.check_feasible(2, now=1240.0)  # 45 s left


class Clock:
    """A clock the test moves by hand (the stopper counts its slice down between checks)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_slice_stopper_lets_a_better_slower_trial_finish_after_a_poor_fast_one() -> None:
    from moa_tune.sweep import SliceStopper

    clock = Clock()
    stopper = SliceStopper(slice_s=100.0, hard_s=1000.0, n_folds=5, clock=clock)
    clock.now = 40.0
    assert not stopper("good", {"loss": 0.009, "folds_done": 1, "time_total_s": 40.0})  # 160 s to go: fine
    clock.now = 60.0
    assert not stopper("cheap", {"loss": 0.012, "folds_done": 5, "time_total_s": 60.0})  # a poor, fast trial ends
    clock.now = 80.0
    # a better trial is not cut for needing more than the slice's 20 s left: it beats the finished one
    assert not stopper("good", {"loss": 0.0092, "folds_done": 2, "time_total_s": 80.0})
    assert stopper("slow", {"loss": 0.013, "folds_done": 1, "time_total_s": 70.0})  # 280 s to go, and no better: cut
    clock.now = 130.0  # past the slice: the experiment goes on while the better trial trains
    assert not stopper.stop_all()
    assert not stopper("good", {"loss": 0.0091, "folds_done": 3, "time_total_s": 120.0})
    clock.now = 135.0
    assert stopper("worse", {"loss": 0.02, "folds_done": 1, "time_total_s": 30.0})  # past the slice, no better: cut
    assert not stopper.stop_all()
    clock.now = 200.0
    assert not stopper("good", {"loss": 0.0090, "folds_done": 5, "time_total_s": 200.0})
    assert stopper.best == 0.0090 and stopper.stop_all()  # the better trial finished: the experiment ends


def test_the_slice_stopper_ends_once_a_better_trial_stops_reporting_and_at_the_deadline() -> None:
    from moa_tune.sweep import SliceStopper

    clock = Clock()
    stopper = SliceStopper(slice_s=50.0, hard_s=300.0, n_folds=5, clock=clock)
    clock.now = 30.0
    stopper("a", {"loss": 0.01, "folds_done": 5, "time_total_s": 30.0})
    clock.now = 45.0
    stopper("b", {"loss": 0.008, "folds_done": 1, "time_total_s": 20.0})
    clock.now = 60.0
    assert not stopper.stop_all()  # past the slice, b beats a and reported recently
    clock.now = 120.0
    assert stopper.stop_all()  # b stopped reporting (ASHA stopped it): nothing better is training
    # a trial that cannot finish before the sweep's deadline is cut, however good
    late = SliceStopper(slice_s=50.0, hard_s=100.0, n_folds=5, clock=Clock())
    assert late("c", {"loss": 0.001, "folds_done": 1, "time_total_s": 40.0})


def test_past_the_slice_a_trial_begun_late_is_cut_and_does_not_hold_the_experiment_open() -> None:
    """While the experiment waits past its slice for a better trial to finish, Tune starts new
    trials; their first fold's loss is often below a full CV mean, and counted as 'better' they kept
    a fast family's experiment open to the sweep's deadline (seen: 61 of a 60 s budget)."""
    from moa_tune.sweep import SliceStopper

    clock = Clock()
    stopper = SliceStopper(slice_s=10.0, hard_s=100.0, n_folds=3, clock=clock)
    clock.now = 4.0
    assert not stopper("a", {"loss": 0.11, "folds_done": 3, "time_total_s": 4.0})
    assert not stopper("b", {"loss": 0.10, "folds_done": 1, "time_total_s": 3.0})  # begun in time, better
    clock.now = 12.0
    assert not stopper.stop_all()  # b may still beat a
    assert stopper("c", {"loss": 0.09, "folds_done": 1, "time_total_s": 1.0})  # begun late: cut, however low
    assert not stopper("b", {"loss": 0.105, "folds_done": 2, "time_total_s": 6.0})
    clock.now = 15.0
    assert not stopper("b", {"loss": 0.108, "folds_done": 3, "time_total_s": 9.0})
    assert stopper.stop_all()  # b finished; c does not count


def test_a_resumed_budgeted_sweep_goes_on_with_what_its_budget_had_left(tmp_path, capsys) -> None:
    import os
    import time

    import yaml

    from moa_tune.sweep import resumed_budget

    started = time.time() - 1000.0  # interrupted 200 s in, resumed 800 s later
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "b", "data": {"synth": "tiny"}, "stages": [{"stage": "direct", "families": ["linear"]}],
        "_budget": {"total_s": 600.0, "started": started}}))
    os.utime(tmp_path / "sweep.yaml", (started + 1, started + 1))
    (tmp_path / "direct").mkdir()
    (tmp_path / "direct" / "trials.csv").write_text("x\n")
    os.utime(tmp_path / "direct" / "trials.csv", (started + 200, started + 200))
    budget = resumed_budget(tmp_path)
    assert budget is not None and budget.total_s == 600 and budget.left() == pytest.approx(400, abs=2)
    assert resumed_budget(tmp_path / "nothing") is None
    # a sweep that spent its whole budget is refused in one line, with what to do
    os.utime(tmp_path / "direct" / "trials.csv", (started + 900, started + 900))
    code, _, err = run_cli(["sweep", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "spent its 10.0 min budget" in err and "--budget" in err and len(err.strip().splitlines()) == 1


def _spec(stages: list[dict]):  # noqa: ANN202
    from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep

    return parse_sweep({"name": "s", "data": {"synth": "tiny"}, "stages": stages}, "<test>", SEARCH_SPACES / "sweeps")


def test_time_left_goes_to_the_best_experiment_that_predicts_scored_targets_and_feeds_nothing() -> None:
    """direct and the chain's last stage can go on; stage 1 (nonscored) and a fed stage cannot, nor one
    whose stage entry gives a trial count (the user's)."""
    from moa_tune.sweep import best_to_go_on_with

    chain = [{"stage": "direct", "families": ["mlp", "linear"]}, {"stage": "stage1", "families": ["linear"]},
             {"stage": "stage2", "families": ["mlp"]}, {"stage": "stage3", "families": ["linear"]}]
    best = {("direct", "mlp"): {"loss": 0.020}, ("direct", "linear"): {"loss": 0.022},
            ("stage1", "linear"): {"loss": 0.001}, ("stage2", "mlp"): {"loss": 0.010},
            ("stage3", "linear"): {"loss": 0.019}}
    assert best_to_go_on_with(_spec(chain), best) == ("stage3", "linear")  # stage 2 feeds stage 3
    assert best_to_go_on_with(_spec(chain[:3]), best) == ("stage2", "mlp")  # the chain ends at stage 2
    capped = [*chain[:3], {"stage": "stage3", "families": ["linear"], "trials": 4}]
    assert best_to_go_on_with(_spec(capped), best) == ("direct", "mlp")
    assert best_to_go_on_with(_spec(chain), {("stage1", "linear"): {"loss": 0.001}}) is None


def test_a_second_round_searcher_starts_from_the_first_rounds_finished_trials(tmp_path) -> None:
    """The first round, its parameters read back from Tune's saved searcher state and its outcomes
    from the experiment's trial rows, warm-starts the second round's TPE: every trial that reported
    a fold is in the new study before the first proposal, as complete or pruned, even one the study
    itself still held as running (cut as the slice ended, just after its last fold)."""
    import optuna

    from moa_tune.search_space import load_search_space
    from moa_tune.sweep import FoldSearch, _study_trials
    from moa_tune.sweep_spec import SEARCH_SPACES

    space = load_search_space(SEARCH_SPACES / "linear.yaml")
    first = FoldSearch(space=space, metric="loss", mode="min",
                       sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    rows = []
    for i, folds in enumerate((3, 3, 1, 3, 0)):
        first.suggest(f"t{i}")
        losses = [0.02 + 0.001 * i + 0.0001 * k for k in range(folds)]
        result = {"loss": sum(losses) / max(1, folds), "folds_done": folds, "n_folds": 3,
                  "fold_losses": ",".join(map(str, losses))}
        if i < 3:
            first.on_trial_complete(f"t{i}", result)
        elif i == 3:
            first.on_trial_result(f"t{i}", {"loss": losses[0], "training_iteration": 1})  # then cut: RUNNING
        rows.append({"trial_id": f"t{i}", "state": "completed" if folds == 3 else "pruned", "folds_done": folds,
                     "loss": result["loss"] if folds else None,
                     **{f"fold_{k}_loss": losses[k] if k < folds else None for k in range(3)}})
    assert first._ot_study.trials[3].state.name == "RUNNING"
    (tmp_path / "exp").mkdir()
    first.save(str(tmp_path / "exp" / "searcher-state-2026-12-02.pkl"))
    warm = _study_trials(str(tmp_path / "exp"), rows)
    assert [t.state.name for t in warm] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert warm[3].value == pytest.approx(rows[3]["loss"]) and sorted(warm[3].intermediate_values) == [1, 2, 3]
    assert warm[2].intermediate_values == {1: pytest.approx(0.022)}
    assert [t.params for t in warm] == [t.params for t in first._ot_study.trials[:4]]
    second = FoldSearch(space=space, metric="loss", mode="min", warm_trials=warm,
                        sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=2))
    assert [t.state.name for t in second._ot_study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    config = second.suggest("u0")
    assert config and len(second._ot_study.trials) == 5
    assert _study_trials(str(tmp_path / "nothing"), rows) == []
