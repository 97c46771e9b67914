"""Value of fold-level ASHA: fold-trainings needed to come within 1% of FIFO's best CV loss.

The same sweep (MLP on the ``small`` preset, Optuna TPE with the same seed, the same number of
trials, two at once) runs through ``moa-tune sweep`` twice: with FIFO (every trial trains every
fold) and with ASHA at fold granularity (a trial reports its running CV loss after each fold;
rungs at 1, 2, 4 folds with reduction factor 2). Every fold-training of every trial is put in the
order it finished (Tune's per-report timestamps); for each scheduler we count the fold-trainings
done when the first trial finished all its folds within 1% of FIFO's best CV loss. Target: ASHA
needs at least 3x fewer. Several searcher seeds (``--seeds``); totals over them, and each.

Usage: python bench/asha_value.py [--quick] [--seeds 0 1] [--trials N] [--epochs N]
Writes results/bench/asha_value.json and .md (asha_value-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import bench_parser, markdown_table, run_sweep_cli, save, scale, trial_reports  # noqa: E402

WITHIN = 0.01


def folds_to_reach(order: pd.DataFrame, target: float, n_splits: int) -> int | None:
    """Fold-trainings done when the first trial finished every fold with a CV loss <= target."""
    hit = order.index[(order.folds_done == n_splits) & (order.loss <= target)]
    return int(hit[0]) + 1 if len(hit) else None


def main() -> None:
    parser = bench_parser(__doc__, epochs=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Optuna sampler seeds")
    parser.add_argument("--trials", type=int, default=None, help="trials per sweep [16; quick: 4]")
    args = parser.parse_args()
    preset, n_splits, epochs = scale(args)
    n_trials = args.trials or (4 if args.quick else 16)
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="moa-asha-value-") as tmp:
        for seed in args.seeds:
            arms = {}
            for scheduler in ("fifo", "asha"):
                print(f"seed {seed}: {scheduler} ...", flush=True)
                sweep = {"name": f"{scheduler}{seed}", "data": {"synth": preset, "seed": 0},
                         "folds": {"n_splits": n_splits}, "seed": seed, "seeds": [0], "scheduler": scheduler,
                         "asha": {"grace_period": 1, "reduction_factor": 2}, "max_concurrent": 2,
                         "fixed": {"train.epochs": epochs, "train.early_stopping": 0},
                         "stages": [{"stage": "direct", "families": ["mlp"], "trials": n_trials}]}
                work = Path(tmp) / sweep["name"]
                seconds, out = run_sweep_cli(sweep, work, "--num-cpus", "2", "--storage", str(work / "ray"))
                trials = pd.read_csv(out / "trials.csv")
                arms[scheduler] = {"seconds": seconds, "trials": trials, "order": trial_reports(trials)}
            fifo = arms["fifo"]["trials"]
            best = float(fifo.loc[fifo.folds_done == n_splits, "loss"].min())
            target = best * (1 + WITHIN)
            row = {"seed": seed, "fifo_best": best, "target": target}
            for scheduler, arm in arms.items():
                order, trials = arm["order"], arm["trials"]
                row[scheduler] = {"folds_to_target": folds_to_reach(order, target, n_splits),
                                  "folds_total": int(len(order)), "seconds": arm["seconds"],
                                  "best": float(trials.loc[trials.folds_done == n_splits, "loss"].min()),
                                  "stopped_early": int((trials.folds_done < n_splits).sum())}
            per_seed.append(row)

    def total(scheduler: str) -> int | None:
        counts = [r[scheduler]["folds_to_target"] for r in per_seed]
        return None if any(c is None for c in counts) else sum(counts)

    fifo_total, asha_total = total("fifo"), total("asha")
    ratio = fifo_total / asha_total if fifo_total and asha_total else None
    rows = []
    for r in per_seed:
        for scheduler in ("fifo", "asha"):
            a = r[scheduler]
            rows.append([r["seed"], scheduler.upper(), f"{a['best']:.6f}", a["folds_to_target"] or "not reached",
                         a["folds_total"], a["stopped_early"], f"{a['seconds']:.0f}"])
    verdict = (f"ASHA needs **{ratio:.2f}x** fewer fold-trainings (target >= 3x)" if ratio
               else "ASHA did not come within 1% of FIFO's best on every seed")
    lines = [f"MLP, `{preset}` preset, {n_splits} folds, {epochs} epochs, {n_trials} trials per sweep, 2 at once; "
             f"target: a trial with all folds within {100 * WITHIN:.0f}% of FIFO's best CV loss.", "",
             *markdown_table(["searcher seed", "scheduler", "best CV loss", "fold-trainings to target",
                              "fold-trainings in all", "trials stopped early", "sweep s"], rows), "",
             f"Over {len(per_seed)} seed(s): FIFO {fifo_total} fold-trainings, ASHA {asha_total}: {verdict}."]
    report = {"preset": preset, "folds": n_splits, "epochs": epochs, "trials": n_trials, "within": WITHIN,
              "per_seed": per_seed, "fifo_folds_to_target": fifo_total, "asha_folds_to_target": asha_total,
              "ratio": ratio, "target_ratio": 3.0, "meets_target": bool(ratio and ratio >= 3.0)}
    save("asha_value", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
