"""GPU packing: trials per hour with 1, 0.5 and 0.25 GPU per trial.

Small MLP trials leave most of a GPU idle; fractional GPUs (``resources: {gpu: 0.25}`` in the
sweep file) let Ray Tune pack several on one device. The same eight fixed MLP configurations on
the ``small`` preset (FIFO, so every trial trains every fold) run through ``moa-tune sweep`` with
1, 0.5 and 0.25 GPU per trial (at most 1, 2 and 4 trials at once on one GPU); trials per hour and
the speed-up over one trial per GPU.

Runs where a CUDA GPU is present; elsewhere the script says it skipped (and writes that).

Usage: python bench/gpu_packing.py [--quick] [--epochs N] [--trials N]
Writes results/bench/gpu_packing.json and .md (gpu_packing-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import bench_parser, lr_ladder, markdown_table, narrow_mlp_space, run_sweep_cli, save, scale  # noqa: E402

FRACTIONS = (1.0, 0.5, 0.25)


def main() -> None:
    parser = bench_parser(__doc__, epochs=10)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    preset, n_splits, epochs = scale(args)
    if not torch.cuda.is_available():
        reason = f"no CUDA GPU here (torch {torch.__version__}, cuda available: False)"
        save("gpu_packing", args.quick, {"skipped": reason}, [f"GPU packing: skipped, {reason}."], out=args.out)
        return
    gpu = torch.cuda.get_device_name(0)
    lrs = lr_ladder(args.trials)
    arms: dict[float, dict] = {}
    with tempfile.TemporaryDirectory(prefix="moa-gpu-packing-") as tmp:
        work = Path(tmp)
        space = narrow_mlp_space(work)
        for fraction in FRACTIONS:
            print(f"{fraction:g} GPU per trial ...", flush=True)
            at_once = int(round(1 / fraction))
            sweep = {"name": f"gpu{fraction:g}".replace(".", "_"), "data": {"synth": preset, "seed": 0},
                     "folds": {"n_splits": n_splits}, "scheduler": "fifo", "seeds": [0], "max_concurrent": at_once,
                     "resources": {"cpu": 1, "gpu": fraction},
                     "fixed": {"train.epochs": epochs, "train.early_stopping": 0, "train.batch_size": 128,
                               "train.device": "cuda", "model.n_layers": 2},
                     "search_spaces": {"mlp": space},
                     "points_to_evaluate": {"mlp": [{"train.lr": lr, "model.hidden_size": 512} for lr in lrs]},
                     "stages": [{"stage": "direct", "families": ["mlp"], "trials": args.trials}]}
            seconds, out = run_sweep_cli(sweep, work / sweep["name"], "--num-cpus", str(max(4, at_once)))
            trials = pd.read_csv(out / "trials.csv")
            completed = int((trials.state == "completed").sum())
            arms[fraction] = {"at_once": at_once, "seconds": seconds, "completed": completed,
                              "trial_s": float(trials.time_s.mean()), "trials_per_hour": completed / seconds * 3600,
                              "gpus_seen": sorted(set(str(g) for g in trials.gpus))}
    base = arms[1.0]["trials_per_hour"]
    rows = [[f"{f:g}", a["at_once"], a["completed"], f"{a['seconds']:.1f}", f"{a['trial_s']:.1f}",
             f"{a['trials_per_hour']:.0f}", f"{a['trials_per_hour'] / base:.2f}x"] for f, a in arms.items()]
    lines = [f"{args.trials} fixed MLP trials, `{preset}` preset, {n_splits} folds, {epochs} epochs, FIFO, on {gpu}.", "",
             *markdown_table(["GPU per trial", "at once", "trials", "sweep s", "mean trial s", "trials / hour",
                              "vs 1 GPU"], rows)]
    report = {"gpu": gpu, "preset": preset, "folds": n_splits, "epochs": epochs, "trials": args.trials,
              "arms": {f"{f:g}": a for f, a in arms.items()}}
    save("gpu_packing", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
