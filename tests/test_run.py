"""`moa-tune run`: the whole job (sweep, collect, blend, export, predict, report) in one command."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import moa_tune_command, subprocess_env
from moa_tune import Ensemble
from moa_tune.stages import Predictions
from moa_tune.synth import generate

pytestmark = pytest.mark.slow

SWEEP = {
    "name": "job", "data": {"synth": "tiny", "seed": 2}, "folds": {"n_splits": 3}, "seeds": [0, 1],
    "fixed": {"train.epochs": 2, "train.early_stopping": 0, "train.batch_size": 64, "mlp": {"model.hidden_size": 32}},
    "stages": [{"stage": "stage1", "families": ["linear"], "trials": 2},
               {"stage": "stage2", "families": ["mlp", "linear"], "trials": 2}],
    "collect": {"top_k": 1},
}


def test_run_does_the_whole_job(tmp_path: Path) -> None:
    sweep_file = tmp_path / "job.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP))
    command = moa_tune_command()
    env = subprocess_env(tmp_path / "home")
    args = [*command, "run", "--config", str(sweep_file), "--results", str(tmp_path / "results"), "--num-cpus", "2"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run_dir = tmp_path / "results" / "job"
    for n in range(1, 6):
        assert f"[{n}/5]" in done.stdout
    for line in ("ensemble:   " + str(run_dir / "ensemble"), "submission: " + str(run_dir / "submission.csv"),
                 "report:     " + str(run_dir / "report.html")):
        assert line in done.stdout
    data = generate("tiny", seed=2)
    submission = pd.read_csv(run_dir / "submission.csv")
    assert list(submission.columns) == ["sig_id", *data.scored_columns]
    assert submission.sig_id.tolist() == data.test.sig_id.tolist()
    np.testing.assert_allclose(submission.iloc[:, 1:].to_numpy(), Predictions.load(run_dir / "collect").test,
                               atol=1e-6, rtol=0)
    assert (submission.iloc[:, 1:].to_numpy()[data.test.is_control] == 0).all()
    assert "Blend weights" in (run_dir / "report.html").read_text()
    assert Ensemble.load(run_dir / "ensemble").components == ["stage1-linear-r1", "stage2-mlp-r1", "stage2-linear-r1"]
    # a second run of the same name does not overwrite the first without --force
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1


BUDGETED = {
    "name": "budgeted", "data": {"synth": "tiny", "seed": 1}, "folds": {"n_splits": 3}, "seeds": [0, 1],
    "budget": "100s",
    "fixed": {"train.epochs": 3, "train.early_stopping": 0, "train.batch_size": 64,
              "mlp": {"model.hidden_size": 64, "model.n_layers": 1}},
    "stages": [{"stage": "direct", "families": ["mlp", "linear"]},
               {"stage": "stage1", "families": ["linear"]},
               {"stage": "stage2", "families": ["mlp"]},
               {"stage": "stage3", "families": ["linear"]}],
    "collect": {"top_k": 1},
}


def test_a_budgeted_run_spends_its_budget_on_direct_and_every_stage(tmp_path: Path) -> None:
    """Stages without trial counts run trials until their share of the budget is spent; the collector
    gets what is left; the run prints how the budget was split and `status` shows it. (Wall time
    against the budget is measured by bench/main_job.py, not asserted here.)"""
    import pickle

    sweep_file = tmp_path / "budgeted.yaml"
    sweep_file.write_text(yaml.safe_dump(BUDGETED))
    env = subprocess_env(tmp_path / "home")
    storage = tmp_path / "ray"
    done = subprocess.run([*moa_tune_command(), "run", "--config", str(sweep_file), "--results", str(tmp_path / "r"),
                           "--num-cpus", "2", "--storage", str(storage)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "of the budget" in done.stdout and "budget 100 s: used" in done.stdout, done.stdout[-3000:]
    run_dir = tmp_path / "r" / "budgeted"
    trials = pd.read_csv(run_dir / "trials.csv")
    per_experiment = trials.groupby(["stage", "family"]).size()
    assert set(per_experiment.index) == {("direct", "mlp"), ("direct", "linear"), ("stage1", "linear"),
                                         ("stage2", "mlp"), ("stage3", "linear")}
    # no trial count was given: every experiment ran for a slice of the budget, not a count, and filled
    # its 2 slots; how many trials a slice affords depends on the machine (a loaded CI runner was
    # measured 10x slower than an idle one), so only the first, whose slice nothing before it could
    # eat into, is held to more than one round of trials
    for stage, family in per_experiment.index:
        assert f"[{stage}/{family}] trials for " in done.stdout, done.stdout[-3000:]
    assert (per_experiment >= 2).all() and per_experiment[("direct", "mlp")] >= 3, per_experiment
    components = pd.read_csv(run_dir / "collect" / "components.csv")
    assert {"direct", "stage2", "stage3"} <= set(components.stage)  # the blend chooses among both schemes
    # the study of a budgeted experiment: COMPLETE only for trials that trained every fold
    for path in (storage / "budgeted" / "direct" / "mlp").glob("searcher-state-*.pkl"):
        with open(path, "rb") as handle:
            study = pickle.load(handle)["_ot_study"]
        for t in study.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE":
                assert sorted(t.intermediate_values) == [1, 2, 3], t.intermediate_values
    status = subprocess.run([*moa_tune_command(), "status", str(run_dir)], capture_output=True, text=True, env=env)
    assert status.returncode == 0 and "budget 1.7 min (sweep, collect, export, predict and report): took" in status.stdout
    _collect_gives_direct_the_seeds_the_chain_cannot_afford(run_dir)


def _collect_gives_direct_the_seeds_the_chain_cannot_afford(run_dir: Path) -> None:
    """Under a plan, the chain (stage 1 -> 2 -> 3) takes one number of seeds; direct takes what the
    chain leaves. The sweep's recorded trial times are set so the arithmetic has wide margins: a
    direct trial 100 s, a chain trial 1000 s, and 1000 s left: a 2nd seed fits direct (100 s), not
    the chain (3000 s more)."""
    import json
    import sys
    import textwrap

    for done in run_dir.glob("*/*/done.json"):
        record = json.loads(done.read_text())
        for row in record["trials"]:
            row["time_s"] = 100.0 if done.parent.parent.name == "direct" else 1000.0
        done.write_text(json.dumps(record))
    # in a fresh process: a Ray started in this one keeps its token-auth state for the later tests' Rays
    code = textwrap.dedent(f"""
        import json, time
        from moa_tune.budget import Budget, JobPlan
        from moa_tune.collect import collect
        plan = JobPlan(Budget(10_000.0), [], n_seeds=2, slots=2)
        plan.budget.started = time.time() + 1000.0 + plan.tail_s - 10_000.0  # collect deadline: 1000 s from now
        lines = []
        result = collect({str(run_dir)!r}, plan=plan, num_cpus=2, emit=lines.append)
        print(json.dumps({{"lines": lines, "seeds": dict(zip(result.components.id, map(int, result.components.n_seeds)))}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env=subprocess_env(run_dir.parent.parent / "home-collect"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    lines, seeds = out["lines"], out["seeds"]
    assert any("seeds that fit of 2: direct 2, stage1 1, stage2 1, stage3 1" in line for line in lines), lines
    assert {cid: n for cid, n in seeds.items() if cid.startswith("direct")} == {"direct-mlp-r1": 2, "direct-linear-r1": 2}
    assert all(n == 1 for cid, n in seeds.items() if not cid.startswith("direct")), seeds
    manifest = json.loads((run_dir / "ensemble" / "manifest.json").read_text())
    assert [stage["seeds"] for stage in manifest["stages"]] == [[0, 1], [0], [0], [0]]
    ensemble = Ensemble.load(run_dir / "ensemble")
    data = generate("tiny", seed=1)
    np.testing.assert_allclose(ensemble.predict(data.test).iloc[:, 1:].to_numpy(),
                               Predictions.load(run_dir / "collect").test, atol=1e-5)


LEFT_OVER = {
    "name": "leftover", "data": {"synth": "tiny", "seed": 3}, "folds": {"n_splits": 3}, "budget": "60s",
    "fixed": {"train.epochs": 3, "train.early_stopping": 0, "train.batch_size": 64},
    "stages": [{"stage": "direct", "families": ["linear"]}, {"stage": "stage1", "families": ["linear"], "trials": 1}],
}


def test_budget_a_capped_experiment_leaves_goes_to_more_trials_of_the_best_one(tmp_path: Path) -> None:
    """direct/linear gets half the sweep's time; stage 1, capped at one trial, leaves most of its half.
    That goes to a second round of direct/linear (the best experiment that predicts scored targets),
    whose TPE starts from the first round's trials; both rounds are one experiment to the collector:
    its rows in one done.json, the best of either as its best, a second-round trial reusable."""
    import json
    import pickle

    from moa_tune.collect import reuse_trial, top_configs
    from moa_tune.folds import Folds
    from moa_tune.sweep import resume_spec

    sweep_file = tmp_path / "leftover.yaml"
    sweep_file.write_text(yaml.safe_dump(LEFT_OVER))
    storage = tmp_path / "ray"
    done = subprocess.run([*moa_tune_command(), "sweep", "--config", str(sweep_file), "--results", str(tmp_path / "r"),
                           "--num-cpus", "2", "--storage", str(storage)],
                          capture_output=True, text=True, env=subprocess_env(tmp_path / "home"), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[direct/linear] more trials for the " in done.stdout, done.stdout[-3000:]
    warm = int(done.stdout.split("TPE starts from its ")[1].split(" trials")[0])
    sweep_dir = tmp_path / "r" / "leftover"
    record = json.loads((sweep_dir / "direct" / "linear" / "done.json").read_text())
    first = [r for r in record["trials"] if not r["trial_dir"].startswith("more/")]
    more = [r for r in record["trials"] if r["trial_dir"].startswith("more/")]
    reported = [r for r in first if r["state"] != "errored" and r["folds_done"] >= 1]
    assert len(reported) == warm and more and record["continued"]["trials"] == len(more)
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials[(trials.stage == "direct") & (trials.family == "linear")]) == len(first) + len(more)
    assert len(trials[trials.stage == "stage1"]) == 1
    # one row per trial, named for its own folder (a trial cut before its first report, with reused
    # actors, had come back from Tune with another trial's result, id and all)
    assert trials.trial_id.is_unique and (("trial_" + trials.trial_id.astype(str)) == trials.trial_dir.str.split("/").str[-1]).all()
    # the second round's study began with the first round's finished trials
    states = sorted((storage / "leftover" / "direct" / "linear" / "more").glob("searcher-state-*.pkl"))
    with open(states[-1], "rb") as handle:
        study = pickle.load(handle)["_ot_study"]
    assert len(study.trials) >= warm + len(more)
    for state, told in (("completed", "COMPLETE"), ("pruned", "PRUNED")):
        assert sorted(round(t.value, 9) for t in study.trials[:warm] if t.state.name == told) == \
            sorted(round(float(r["loss"]), 9) for r in reported if r["state"] == state)
    # the experiment's best is the best of both rounds
    completed = [r for r in record["trials"] if r["state"] == "completed"]
    best = json.loads((sweep_dir / "direct" / "linear" / "best" / "best.json").read_text())
    assert best["trial_id"] == min(completed, key=lambda r: r["loss"])["trial_id"]
    # a second-round trial the sweep kept fitted is found by the collector, folder and all
    spec = resume_spec(sweep_dir)
    best_more = min((r for r in more if r["state"] == "completed"), key=lambda r: r["loss"])
    candidate = next(c for c in top_configs(sweep_dir, spec, "direct", "linear", len(completed))
                     if c.trial_id == best_more["trial_id"])
    reused = reuse_trial(candidate, str(storage / "leftover"), generate("tiny", seed=3),
                         Folds.load(sweep_dir / "folds.npz"), None)
    assert reused is not None and reused["reused"] and reused["loss"] == pytest.approx(best_more["loss"], rel=0.05)
