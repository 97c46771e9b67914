"""moa-tune against plain Optuna, what a user would pick instead, at equal wall-clock budget.

On 2 cores, for each sampler seed, three arms tune the MLP on the ``small`` preset with the same
search space (``search_spaces/mlp.yaml``), the same fixed values and the same folds, each for the
same wall-clock budget:

- ``optuna + SuccessiveHalving``: one process, ``study.optimize`` with Optuna's TPE and its
  SuccessiveHalvingPruner (min_resource 1, reduction factor 2), the trial reporting its running CV
  loss after each fold (``trial.report`` / ``trial.should_prune``); torch uses both cores;
- ``optuna + Hyperband``: the same with HyperbandPruner (1 to n_splits folds, reduction factor 2);
- ``moa-tune``: ``moa-tune sweep`` with ``time_budget_s``: Ray Tune runs two trials at once (one
  thread each), OptunaSearch with the same TPE seed, ASHA at fold granularity (grace 1, factor 2).

The figure is the best CV loss among trials that trained every fold before the budget ran out
(lower is better). Target: moa-tune equal or better. The table also shows how each treats pruned
trials in TPE's history, read from the Optuna study itself: plain Optuna records them as PRUNED
(TPE ranks them below every complete trial, earlier-pruned ones lower). Ray Tune's OptunaSearch alone
would tell Optuna an ASHA-stopped trial as COMPLETE with the running loss of the folds it trained;
moa-tune's searcher (``moa_tune.sweep.FoldSearch``) tells it as PRUNED, as plain Optuna does.

Usage: python bench/vs_optuna.py [--quick] [--seeds 0 1] [--budget-s S] [--epochs N]
Writes results/bench/vs_optuna.json and .md (vs_optuna-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import bench_parser, markdown_table, run_sweep_cli, save, scale  # noqa: E402

ARMS = ("optuna + SuccessiveHalving", "optuna + Hyperband", "moa-tune")


class BudgetSpent(Exception):
    """The wall-clock budget ran out in the middle of a plain-Optuna trial."""


def optuna_arm(pruner: str, seed: int, budget: float, preset: str, n_splits: int, fixed: dict) -> dict:
    """Plain Optuna in this (worker) process for ``budget`` seconds; best complete CV loss and the study's states."""
    import optuna
    import torch

    from moa_tune.folds import make_folds
    from moa_tune.search_space import load_search_space
    from moa_tune.sweep import trial_config
    from moa_tune.sweep_spec import SEARCH_SPACES
    from moa_tune.synth import generate
    from moa_tune.train import FoldReport, cross_validate

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a trial cut by the budget is logged as failed: expected
    torch.set_num_threads(2)
    data = generate(preset, seed=0)
    folds = make_folds(data, n_splits, "drug", seed=0)
    space = load_search_space(SEARCH_SPACES / "mlp.yaml")
    pruners = {"sha": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
               "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_splits, reduction_factor=2)}
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=pruners[pruner])
    start = time.perf_counter()
    folds_trained = 0
    trained: set[str] = set()  # the configurations trials trained (each trial should bring its own)

    def objective(trial) -> float:
        nonlocal folds_trained
        constants = space(trial)  # define-by-run: the sampled values land in trial.params
        config = trial_config({**trial.params, **constants}, fixed, "direct", 2)
        trained.add(json.dumps(config, sort_keys=True, default=str))
        loss = float("nan")
        for event in cross_validate(config, data, folds):
            if not isinstance(event, FoldReport):
                continue
            folds_trained += 1
            loss = event.running_loss
            if time.perf_counter() - start > budget:  # out of time: this trial does not count
                study.stop()
                raise BudgetSpent()  # recorded as FAIL, not as a pruned trial
            trial.report(loss, event.folds_done)
            if event.folds_done < n_splits and trial.should_prune():
                raise optuna.TrialPruned()
        return loss

    study.optimize(objective, timeout=budget, catch=(BudgetSpent,))
    states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    complete = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    return {"best": min(complete) if complete else None, "trials": len(study.trials), "states": states,
            "stopped_early": int(states.get("PRUNED", 0)), "cut_by_budget": int(states.get("FAIL", 0)),
            "folds_trained": folds_trained,
            "distinct_configs": len(trained),
            "told_as": "PRUNED (ranked below every complete trial)"}


def moa_tune_arm(seed: int, budget: float, preset: str, n_splits: int, fixed: dict, work: Path) -> dict:
    from ray.tune.search.optuna import OptunaSearch

    sweep = {"name": f"moa{seed}", "data": {"synth": preset, "seed": 0}, "folds": {"n_splits": n_splits},
             "seed": seed, "seeds": [0], "time_budget_s": budget, "max_concurrent": 2,
             "asha": {"grace_period": 1, "reduction_factor": 2}, "fixed": fixed,
             "stages": [{"stage": "direct", "families": ["mlp"], "trials": 1000}]}
    seconds, out = run_sweep_cli(sweep, work, "--num-cpus", "2", "--storage", str(work / "ray"))
    trials = pd.read_csv(out / "trials.csv")
    full = trials[trials.folds_done == n_splits]
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(work / "ray" / sweep["name"] / "direct" / "mlp"))
    study_trials = searcher._ot_study.trials  # the Optuna study Ray Tune's searcher kept
    states = pd.Series([t.state.name for t in study_trials]).value_counts().to_dict()
    # trials still running at the budget are cut by Tune (they stay RUNNING in the study); the rest of
    # the unfinished ones were stopped by ASHA
    cut = int(states.get("RUNNING", 0))
    stopped = int(((trials.folds_done < n_splits) & (trials.state == "pruned")).sum()) - cut
    return {"best": float(full.loss.min()) if len(full) else None, "trials": len(trials), "states": states,
            "stopped_early": stopped, "cut_by_budget": cut, "folds_trained": int(trials.folds_done.sum()),
            "full_trials": int(len(full)),
            "wall_s": seconds,
            "told_as": "PRUNED (ranked below every complete trial)"}


def main() -> None:
    parser = bench_parser(__doc__, epochs=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget per arm [240; quick: 30]")
    args = parser.parse_args()
    preset, n_splits, epochs = scale(args)
    budget = args.budget_s or (30.0 if args.quick else 240.0)
    fixed = {"train.epochs": epochs, "train.early_stopping": 0, "train.seed": 0}
    results: dict[int, dict[str, dict]] = {}
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="moa-vs-optuna-") as tmp:
        for seed in args.seeds:
            results[seed] = {}
            for arm, pruner in zip(ARMS[:2], ("sha", "hyperband")):
                print(f"seed {seed}: {arm} ({budget:.0f} s) ...", flush=True)
                with ProcessPoolExecutor(1, mp_context=context) as pool:  # a fresh process, as a user's script
                    results[seed][arm] = pool.submit(optuna_arm, pruner, seed, budget, preset, n_splits, fixed).result()
            print(f"seed {seed}: moa-tune ({budget:.0f} s) ...", flush=True)
            results[seed]["moa-tune"] = moa_tune_arm(seed, budget, preset, n_splits, fixed, Path(tmp) / f"s{seed}")

    rows = []
    for seed, arms in results.items():
        for arm, r in arms.items():
            states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(r["states"].items()))
            rows.append([seed, arm, "-" if r["best"] is None else f"{r['best']:.6f}", r["trials"], r["folds_trained"],
                         r["stopped_early"], r["cut_by_budget"], states, r["told_as"]])
    wins = []
    for seed, arms in results.items():
        ours, theirs = arms["moa-tune"]["best"], [arms[a]["best"] for a in ARMS[:2] if arms[a]["best"] is not None]
        wins.append(ours is not None and all(ours <= t for t in theirs))
    mean = {arm: (sum(results[s][arm]["best"] for s in results) / len(results)
                  if all(results[s][arm]["best"] is not None for s in results) else None) for arm in ARMS}
    summary = ", ".join(f"{arm} {'-' if v is None else f'{v:.6f}'}" for arm, v in mean.items())
    lines = [f"MLP (`search_spaces/mlp.yaml`), `{preset}` preset, {n_splits} folds, {fixed['train.epochs']} epochs; "
             f"{budget:.0f} s of wall clock per arm on 2 cores; best CV loss of the trials that trained every fold.", "",
             *markdown_table(["sampler seed", "arm", "best CV loss", "trials", "fold-trainings", "stopped by the pruner",
                              "cut by the budget",
                              "states in the Optuna study", "a stopped trial is told to TPE as"], rows), "",
             f"Mean best CV loss over {len(results)} seed(s): {summary}. moa-tune equal or better on "
             f"**{sum(wins)} of {len(wins)}** seeds (target: all)."]
    report = {"preset": preset, "folds": n_splits, "budget_s": budget, "fixed": fixed,
              "results": {str(s): a for s, a in results.items()}, "mean_best": mean, "moa_tune_wins": wins,
              "meets_target": all(wins)}
    save("vs_optuna", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
