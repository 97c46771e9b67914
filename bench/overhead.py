"""Overhead of the sweep engine: the same fixed configurations in a plain loop and through moa-tune.

Eight fixed MLP configurations (learning rate x width) on the ``small`` preset run twice with the
same concurrency (2 at once, one torch thread each):

(a) a plain Python loop over :func:`moa_tune.train.cross_validate`, two worker processes;
(b) ``moa-tune sweep`` with the FIFO scheduler and ``max_concurrent: 2``; Optuna proposes exactly
    the eight configurations (``points_to_evaluate`` over a search space of just those two
    parameters), so both arms train the same networks on the same folds.

Overhead per trial, as a share of trial time: (sweep's trial span - loop's trial span) / loop's
trial span, where a span runs from the first trial's start to the last trial's end. At equal
concurrency the extra time is what the engine adds to every trial (actors, reporting and
checkpointing every fold, scheduling). Target: <= 5 %. The fixed cost of a sweep (starting Ray,
making the data, writing its results) is paid once per sweep, not per trial; the table shows it
and the end-to-end difference too.

Usage: python bench/overhead.py [--quick] [--epochs N] [--configs N]
Writes results/bench/overhead.json and .md (overhead-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import bench_parser, markdown_table, narrow_mlp_space, run_sweep_cli, save, scale, trial_reports, trials_span  # noqa: E402

N_CONFIGS = 8
CONCURRENCY = 2
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
WIDTHS = (256, 512)


def points(n: int = N_CONFIGS) -> list[dict]:
    return [{"train.lr": lr, "model.hidden_size": width} for width in WIDTHS for lr in LRS][:n]


_DATA: dict = {}


def warm_up(preset: str, n_splits: int) -> None:
    """Import torch and make the data and folds once per worker, before any trial is timed.

    (The configurations' ``train.num_threads: 1`` gives torch and numpy's BLAS one thread each,
    as in the sweep's trials.)
    """
    import torch

    from moa_tune.folds import make_folds
    from moa_tune.synth import generate

    torch.set_num_threads(1)
    data = generate(preset, seed=0)
    _DATA["data"], _DATA["folds"] = data, make_folds(data, n_splits, "drug", seed=0)


def loop_one(config: dict) -> tuple[float, float, float]:
    """One configuration's cross-validation in a worker: (mean fold loss, start and end wall-clock times)."""
    from moa_tune.train import FoldReport, cross_validate

    start = time.time()
    reports = [e for e in cross_validate(config, _DATA["data"], _DATA["folds"]) if isinstance(e, FoldReport)]
    return reports[-1].running_loss, start, time.time()  # what a trial reports: the mean fold loss


def main() -> None:
    parser = bench_parser(__doc__, epochs=8)
    parser.add_argument("--configs", type=int, default=N_CONFIGS, choices=range(1, N_CONFIGS + 1), metavar="N",
                        help=f"how many of the {N_CONFIGS} configurations [all]")
    args = parser.parse_args()
    preset, n_splits, epochs = scale(args)
    fixed = {"train.epochs": epochs, "train.early_stopping": 0, "train.batch_size": 128, "model.n_layers": 2}

    from moa_tune.sweep import trial_config

    configs = [{**trial_config(p, fixed, "direct", 1), "family": "mlp"}
               for p in points(args.configs)]
    print(f"(a) plain loop: {len(configs)} configurations, {CONCURRENCY} at once ...", flush=True)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(CONCURRENCY, mp_context=context, initializer=warm_up,
                             initargs=(preset, n_splits)) as pool:
        loop = list(pool.map(loop_one, configs))
    loop_wall = time.perf_counter() - started
    loop_span = max(end for _, _, end in loop) - min(start for _, start, _ in loop)

    print("(b) moa-tune sweep, FIFO ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="moa-overhead-") as tmp:
        work = Path(tmp)
        sweep = {"name": "overhead", "data": {"synth": preset, "seed": 0}, "folds": {"n_splits": n_splits},
                 "scheduler": "fifo", "max_concurrent": CONCURRENCY, "seeds": [0], "fixed": fixed,
                 "search_spaces": {"mlp": narrow_mlp_space(work)}, "points_to_evaluate": {"mlp": points(args.configs)},
                 "stages": [{"stage": "direct", "families": ["mlp"], "trials": args.configs}]}
        sweep_wall, out = run_sweep_cli(sweep, work, "--num-cpus", str(CONCURRENCY), "--storage", str(work / "ray"))
        trials = pd.read_csv(out / "trials.csv")
        reports = trial_reports(trials)
    if len(trials) != args.configs or (trials["folds_done"] != n_splits).any():
        raise SystemExit(f"the sweep did not train every fold of the {args.configs} configurations:\n{trials}")
    sweep_span = trials_span(reports)

    loop_losses = sorted(round(loss, 6) for loss, _, _ in loop)
    sweep_losses = sorted(round(loss, 6) for loss in trials["loss"])
    share = (sweep_span - loop_span) / loop_span
    end_to_end = (sweep_wall - loop_wall) / loop_wall
    rows = [["(a) plain loop over cross_validate", f"{loop_wall:.1f}", f"{loop_span:.1f}", f"{loop_wall - loop_span:.1f}"],
            ["(b) moa-tune sweep, FIFO", f"{sweep_wall:.1f}", f"{sweep_span:.1f}", f"{sweep_wall - sweep_span:.1f}"]]
    lines = [f"{args.configs} fixed MLP configurations, `{preset}` preset, {n_splits} drug-aware folds, {epochs} epochs, "
             f"{CONCURRENCY} at once (1 torch thread each). Trials: from the first trial's start to the last one's end "
             "(the sweep's from Tune's per-report timestamps, whole seconds); fixed: the rest (processes, Ray, data, "
             "bookkeeping).", "",
             *markdown_table(["arm", "wall s", "trials s", "fixed s"], rows), "",
             f"Overhead per trial: **{100 * share:+.1f}%** of trial time (target <= 5%). End to end, with the fixed "
             f"cost of starting Ray and the sweep once: {100 * end_to_end:+.1f}% on this {args.configs}-trial sweep. "
             f"Same CV losses in both arms: {loop_losses == sweep_losses}."]
    report = {"preset": preset, "folds": n_splits, "epochs": epochs, "configs": args.configs, "concurrency": CONCURRENCY,
              "loop_wall_s": loop_wall, "loop_trials_s": loop_span, "sweep_wall_s": sweep_wall,
              "sweep_trials_s": float(sweep_span), "overhead_share": float(share), "end_to_end_share": end_to_end,
              "target_share": 0.05, "meets_target": bool(share <= 0.05), "loop_losses": loop_losses,
              "sweep_losses": sweep_losses, "same_losses": loop_losses == sweep_losses}
    save("overhead", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
