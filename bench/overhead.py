"""Overhead of the sweep engine: the same fixed configurations in a plain loop and through moa-tune.

Eight fixed MLP configurations (learning rate x width) on the ``small`` preset run twice with the
same concurrency (2 at once, one torch thread each):

(a) a plain Python loop over :func:`moa_tune.train.cross_validate`, two worker processes;
(b) ``moa-tune sweep`` with the FIFO scheduler and ``max_concurrent: 2``; Optuna proposes exactly
    the eight configurations (``points_to_evaluate`` over a search space of just those two
    parameters), so both arms train the same networks on the same folds.

Overhead per trial, as a share of trial time, is (sweep wall - loop wall) / loop wall: at equal
concurrency the extra wall time is what each trial costs on top of its training (Ray start,
actors, reporting and checkpointing every fold, the sweep's own bookkeeping). Target: <= 5 %.

Usage: python bench/overhead.py [--quick] [--epochs N]
Writes results/bench/overhead.json and .md (overhead-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import RESULTS, markdown_table, narrow_mlp_space, run_sweep_cli, save  # noqa: E402

N_CONFIGS = 8
CONCURRENCY = 2
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
WIDTHS = (256, 512)


def points() -> list[dict]:
    return [{"train.lr": lr, "model.hidden_size": width} for width in WIDTHS for lr in LRS][:N_CONFIGS]


def loop_one(preset: str, n_splits: int, config: dict) -> tuple[float, float]:
    """One configuration's cross-validation in a worker process: (mean fold loss, seconds)."""
    import torch

    from moa_tune.folds import make_folds
    from moa_tune.synth import generate
    from moa_tune.train import FoldReport, cross_validate

    torch.set_num_threads(1)
    data = generate(preset, seed=0)
    folds = make_folds(data, n_splits, "drug", seed=0)
    start = time.perf_counter()
    reports = [e for e in cross_validate(config, data, folds) if isinstance(e, FoldReport)]
    return reports[-1].running_loss, time.perf_counter() - start  # what a trial reports: the mean fold loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 3 folds, 2 epochs: checks the script")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fold [8; quick: 2]")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and markdown [results/bench]")
    args = parser.parse_args()
    preset, n_splits = ("tiny", 3) if args.quick else ("small", 5)
    epochs = args.epochs or (2 if args.quick else 8)
    fixed = {"train.epochs": epochs, "train.early_stopping": 0, "train.batch_size": 128, "model.n_layers": 2}

    from moa_tune.sweep import trial_config

    configs = [{**trial_config(p, fixed, "direct", 1), "family": "mlp"}
               for p in points()]
    print(f"(a) plain loop: {len(configs)} configurations, {CONCURRENCY} at once ...", flush=True)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(CONCURRENCY, mp_context=context) as pool:
        loop = list(pool.map(loop_one, [preset] * len(configs), [n_splits] * len(configs), configs))
    loop_wall = time.perf_counter() - started

    print("(b) moa-tune sweep, FIFO ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="moa-overhead-") as tmp:
        work = Path(tmp)
        sweep = {"name": "overhead", "data": {"synth": preset, "seed": 0}, "folds": {"n_splits": n_splits},
                 "scheduler": "fifo", "max_concurrent": CONCURRENCY, "seeds": [0], "fixed": fixed,
                 "search_spaces": {"mlp": narrow_mlp_space(work)}, "points_to_evaluate": {"mlp": points()},
                 "stages": [{"stage": "direct", "families": ["mlp"], "trials": N_CONFIGS}]}
        sweep_wall, out = run_sweep_cli(sweep, work, "--num-cpus", str(CONCURRENCY))
        trials = pd.read_csv(out / "trials.csv")
    if len(trials) != N_CONFIGS or (trials["folds_done"] != n_splits).any():
        raise SystemExit(f"the sweep did not train every fold of the {N_CONFIGS} configurations:\n{trials}")

    loop_losses = sorted(round(loss, 6) for loss, _ in loop)
    sweep_losses = sorted(round(loss, 6) for loss in trials["loss"])
    share = (sweep_wall - loop_wall) / loop_wall
    loop_trial = sum(s for _, s in loop) / len(loop)
    sweep_trial = float(trials["time_s"].mean())
    rows = [["(a) plain loop over cross_validate", f"{loop_wall:.1f}", f"{loop_trial:.1f}"],
            ["(b) moa-tune sweep, FIFO", f"{sweep_wall:.1f}", f"{sweep_trial:.1f}"]]
    lines = [f"{N_CONFIGS} fixed MLP configurations, `{preset}` preset, {n_splits} drug-aware folds, {epochs} epochs, "
             f"{CONCURRENCY} at once (1 torch thread each).", "",
             *markdown_table(["arm", "wall s", "mean trial s"], rows), "",
             f"Overhead per trial: **{100 * share:+.1f}%** of trial time (target <= 5%). "
             f"Same CV losses in both arms: {loop_losses == sweep_losses}."]
    report = {"preset": preset, "folds": n_splits, "epochs": epochs, "configs": N_CONFIGS, "concurrency": CONCURRENCY,
              "loop_wall_s": loop_wall, "sweep_wall_s": sweep_wall, "loop_trial_s": loop_trial,
              "sweep_trial_s": sweep_trial, "overhead_share": share, "target_share": 0.05,
              "meets_target": share <= 0.05, "loop_losses": loop_losses, "sweep_losses": sweep_losses,
              "same_losses": loop_losses == sweep_losses}
    save("overhead", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
