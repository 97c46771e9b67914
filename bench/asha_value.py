"""Value of fold-level ASHA: fold-trainings needed to come within 1% of FIFO's best CV loss.

The same sweep (MLP on the ``small`` preset, Optuna TPE with the same seed, the same number of
trials, two at once) runs through ``moa-tune sweep`` twice: with FIFO (every trial trains every
fold) and with ASHA at fold granularity (a trial reports its running CV loss after each fold;
grace period 1 fold), once per reduction factor (``--reduction-factors``; 2 puts rungs at folds
1, 2 and 4, 3 at 1 and 3, 4 and 5 at fold 1 only). Every fold-training of every trial is put in
the order it finished (Tune's per-report timestamps); for each scheduler we count the
fold-trainings done when the first trial finished all its folds within 1% of FIFO's best CV loss.
Target: ASHA with the engine's default reduction factor needs at least 3x fewer. Several searcher
seeds (``--seeds``); totals over them, and each.

The bound: a trial FIFO reaches the target with as its k-th trial costs FIFO k x folds; ASHA, if
it proposed the same trials and stopped every earlier one after its first fold, would need
(k - 1) + folds. With 5 folds the ratio can exceed 3x only when k >= 7, and even then only
when ASHA stops nearly every trial after one fold. The report gives this bound for each seed.

Usage: python bench/asha_value.py [--quick] [--seeds 0 1] [--reduction-factors 2 3 4] [--trials N]
Writes results/bench/asha_value.json and .md (asha_value-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import bench_parser, markdown_table, run_sweep_cli, save, scale, trial_reports  # noqa: E402

from moa_tune.sweep_spec import ASHA_PARAMS  # noqa: E402

WITHIN = 0.01


def folds_to_reach(order: pd.DataFrame, target: float, n_splits: int) -> int | None:
    """Fold-trainings done when the first trial finished every fold with a CV loss <= target."""
    hit = order.index[(order.folds_done == n_splits) & (order.loss <= target)]
    return int(hit[0]) + 1 if len(hit) else None


def trials_before(fifo_folds: int, n_splits: int) -> int:
    """About how many trials FIFO finished or started before its target trial (two run at once)."""
    return -(-fifo_folds // n_splits) - 1


def best_ratio(fifo_folds: int | None, n_splits: int) -> float | None:
    """The most ASHA can save on one seed: every trial before FIFO's k-th stopped after one fold."""
    if fifo_folds is None:
        return None
    return fifo_folds / (trials_before(fifo_folds, n_splits) + n_splits)


def main() -> None:
    parser = bench_parser(__doc__, epochs=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Optuna sampler seeds")
    parser.add_argument("--reduction-factors", type=float, nargs="+", default=[2.0, 3.0, 4.0],
                        help="ASHA arms, one per reduction factor [2 3 4]")
    parser.add_argument("--trials", type=int, default=None, help="trials per sweep [16; quick: 4]")
    args = parser.parse_args()
    preset, n_splits, epochs = scale(args)
    n_trials = args.trials or (4 if args.quick else 16)
    default_rf = float(ASHA_PARAMS["reduction_factor"].default)
    arms_run = [("fifo", None)] + [(f"asha rf{rf:g}", rf) for rf in args.reduction_factors]
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="moa-asha-value-") as tmp:
        for seed in args.seeds:
            arms = {}
            for arm, rf in arms_run:
                print(f"seed {seed}: {arm} ...", flush=True)
                sweep = {"name": f"{arm.replace(' ', '-')}-{seed}", "data": {"synth": preset, "seed": 0},
                         "folds": {"n_splits": n_splits}, "seed": seed, "seeds": [0],
                         "scheduler": "fifo" if rf is None else "asha", "max_concurrent": 2,
                         "fixed": {"train.epochs": epochs, "train.early_stopping": 0},
                         "stages": [{"stage": "direct", "families": ["mlp"], "trials": n_trials}]}
                if rf is not None:
                    sweep["asha"] = {"grace_period": 1, "reduction_factor": rf}
                work = Path(tmp) / sweep["name"]
                seconds, out = run_sweep_cli(sweep, work, "--num-cpus", "2", "--storage", str(work / "ray"))
                trials = pd.read_csv(out / "trials.csv")
                arms[arm] = {"seconds": seconds, "trials": trials, "order": trial_reports(trials)}
            fifo = arms["fifo"]["trials"]
            best = float(fifo.loc[fifo.folds_done == n_splits, "loss"].min())
            target = best * (1 + WITHIN)
            row = {"seed": seed, "fifo_best": best, "target": target, "arms": {}}
            for arm, result in arms.items():
                order, trials = result["order"], result["trials"]
                row["arms"][arm] = {"folds_to_target": folds_to_reach(order, target, n_splits),
                                    "folds_total": int(len(order)), "seconds": result["seconds"],
                                    "best": float(trials.loc[trials.folds_done == n_splits, "loss"].min()),
                                    "stopped_early": int((trials.folds_done < n_splits).sum()),
                                    "folds_per_trial": round(len(order) / len(trials), 2)}
            row["bound"] = best_ratio(row["arms"]["fifo"]["folds_to_target"], n_splits)
            per_seed.append(row)

    def total(arm: str) -> int | None:
        counts = [r["arms"][arm]["folds_to_target"] for r in per_seed]
        return None if any(c is None for c in counts) else sum(counts)

    fifo_total = total("fifo")
    ratios = {arm: (fifo_total / total(arm) if fifo_total and total(arm) else None) for arm, _ in arms_run[1:]}
    bound = (fifo_total / sum(trials_before(r["arms"]["fifo"]["folds_to_target"], n_splits) + n_splits
                              for r in per_seed) if fifo_total else None)
    rows = []
    for r in per_seed:
        for arm, _ in arms_run:
            a = r["arms"][arm]
            rows.append([r["seed"], arm.upper() if arm == "fifo" else f"ASHA, reduction factor {arm.removeprefix('asha rf')}",
                         f"{a['best']:.6f}", a["folds_to_target"] or "not reached", a["folds_total"],
                         a["folds_per_trial"], a["stopped_early"], f"{a['seconds']:.0f}"])
    default_arm = f"asha rf{default_rf:g}"
    summary = [f"- ASHA with reduction factor {arm.removeprefix('asha rf')}: "
               + (f"**{ratio:.2f}x** fewer fold-trainings than FIFO" if ratio else "did not reach the target on every seed")
               + (" (the engine's default)" if arm == default_arm else "") for arm, ratio in ratios.items()]
    lines = [f"MLP, `{preset}` preset, {n_splits} folds, {epochs} epochs, {n_trials} trials per sweep, 2 at once, "
             f"ASHA grace period 1 fold; target: a trial with all folds within {100 * WITHIN:.0f}% of FIFO's best "
             "CV loss.", "",
             *markdown_table(["searcher seed", "scheduler", "best CV loss", "fold-trainings to target",
                              "fold-trainings in all", "folds per trial", "trials stopped early", "sweep s"], rows), "",
             f"Over {len(per_seed)} seed(s), FIFO needed {fifo_total} fold-trainings (target: ASHA >= 3x fewer):", "",
             *summary, "",
             (f"The most any ASHA could save on these seeds (every trial before FIFO's first target trial stopped "
              f"after one fold, same proposals): {bound:.2f}x." if bound else "")]
    ratio = ratios.get(default_arm)
    report = {"preset": preset, "folds": n_splits, "epochs": epochs, "trials": n_trials, "within": WITHIN,
              "reduction_factors": args.reduction_factors, "default_reduction_factor": default_rf,
              "per_seed": per_seed, "fifo_folds_to_target": fifo_total,
              "folds_to_target": {arm: total(arm) for arm, _ in arms_run}, "ratios": ratios, "bound": bound,
              "ratio": ratio, "target_ratio": 3.0, "meets_target": bool(ratio and ratio >= 3.0)}
    save("asha_value", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
