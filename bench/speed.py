"""Speed and memory of the fold trainer.

1. Throughput: ``moa_tune.train.fit_fold`` against a bare torch loop over the same model, data,
   batch size and thread count (samples per second of training). The trainer also scores the
   validation rows after every epoch (that is what early stopping and fold-level pruning need);
   both figures are printed, and the ratio counts the trainer's whole wall time.
2. Peak memory: one fold of ``cross_validate`` at the ``full`` preset (23,814 x 872), measured
   in a fresh process (ru_maxrss), and whether two such trials fit in 24 GiB.

Usage: python bench/speed.py [--epochs 3] [--threads 1] [--quick]
Writes results/bench/speed.json and results/bench/speed.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_tune.config import resolve_config  # noqa: E402
from moa_tune.features import FeaturePipeline  # noqa: E402
from moa_tune.folds import make_folds  # noqa: E402
from moa_tune.io import write_json, write_text  # noqa: E402
from moa_tune.models import get_family  # noqa: E402
from moa_tune.synth import generate  # noqa: E402
from moa_tune.train import fit_fold  # noqa: E402

RESULTS = ROOT / "results" / "bench"
MACHINE_MEMORY_GIB = 24


def bare_loop(family: str, model_params: dict, x: np.ndarray, y: np.ndarray, batch: int, epochs: int,
              lr: float, weight_decay: float, seed: int, groups: dict) -> float:
    """The plainest correct torch loop: same network, optimizer, batches; returns seconds."""
    torch.manual_seed(seed)
    net = get_family(family).build(x.shape[1], y.shape[1], model_params, groups)
    xt = torch.as_tensor(x)
    yt = torch.as_tensor(y)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    criterion = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    steps = len(xt) // batch
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(xt), generator=generator)
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            loss = criterion(net(xt[idx]), yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def throughput(preset: str, epochs: int, threads: int, batch: int) -> dict:
    torch.set_num_threads(threads)
    data = generate(preset, seed=0)
    folds = make_folds(data, 5, "drug", seed=0)
    train_rows, valid_rows = next(folds.split())
    pipe = FeaturePipeline({"gene_pca": 50, "cell_pca": 15}).fit(data.train.take(train_rows))
    x_train = pipe.transform(data.train.take(train_rows))
    x_valid = pipe.transform(data.train.take(valid_rows))
    y_train = data.scored[train_rows].astype(np.float32)
    y_valid = data.scored[valid_rows].astype(np.float32)
    cfg = resolve_config({"family": "mlp", "train": {"epochs": epochs, "batch_size": batch, "early_stopping": 0,
                                                     "scheduler": "none", "grad_clip": 0.0, "label_smoothing": 0.0,
                                                     "device": "cpu", "num_threads": threads}})
    samples = (len(x_train) // batch) * batch * epochs
    rows = []
    for trial in range(3):  # alternate, keep the best of each (first runs pay one-time warm-up)
        t_bare = bare_loop("mlp", cfg["model"], x_train, y_train, batch, epochs, cfg["train"]["lr"],
                           cfg["train"]["weight_decay"], 0, pipe.groups_)
        start = time.perf_counter()
        fit = fit_fold("mlp", cfg["model"], cfg["train"], x_train, y_train, x_valid, y_valid, groups=pipe.groups_, seed=0)
        t_trainer = time.perf_counter() - start
        rows.append((t_bare, t_trainer))
        print(f"  run {trial + 1}: bare {samples / t_bare:,.0f} samples/s, trainer {samples / t_trainer:,.0f} samples/s",
              flush=True)
    t_bare = min(r[0] for r in rows)
    t_trainer = min(r[1] for r in rows)
    return {"preset": preset, "train_rows": len(x_train), "valid_rows": len(x_valid), "features": x_train.shape[1],
            "targets": y_train.shape[1], "batch_size": batch, "epochs": epochs, "threads": threads,
            "model": "mlp (defaults)", "bare_samples_per_s": samples / t_bare,
            "trainer_samples_per_s": samples / t_trainer, "ratio": t_bare / t_trainer,
            "trainer_best_epoch": fit.best_epoch}


PEAK_SCRIPT = """
import resource, sys, json, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from moa_tune.synth import generate
from moa_tune.folds import make_folds
from moa_tune.train import cross_validate
t = time.perf_counter()
data = generate("full", seed=0)
folds = make_folds(data, 5, "drug", seed=0)
after_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
events = cross_validate({{"family": "mlp", "train": {{"epochs": {epochs}, "early_stopping": 0}}}}, data, folds)
next(events)  # one fold: every fold of a trial has the same footprint
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_rss_mib": peak / 1024, "data_rss_mib": after_data / 1024, "seconds": time.perf_counter() - t}}))
"""


def peak_memory(epochs: int, threads: int) -> dict:
    script = PEAK_SCRIPT.format(root=str(ROOT), threads=threads, epochs=epochs)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["two_trials_gib"] = 2 * result["peak_rss_mib"] / 1024
    result["fits_two_trials_in_24_gib"] = result["two_trials_gib"] < MACHINE_MEMORY_GIB * 0.75
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    # 1 thread: on this workplace's 2-vCPU machines torch's 2-thread kernels run several times slower
    # than 1 thread (OpenMP barriers on shared vCPUs); sweeps run one thread per trial anyway.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="small preset, no full-size memory run")
    args = parser.parse_args()
    preset = "small" if args.quick else "full"
    print(f"throughput on '{preset}' ({args.epochs} epochs, batch {args.batch}, {args.threads} threads)", flush=True)
    speed = throughput(preset, args.epochs, args.threads, args.batch)
    print(f"trainer / bare torch loop = {speed['ratio']:.3f}", flush=True)
    memory = None
    if not args.quick:
        print("peak memory of one trial at the 'full' preset (fresh process) ...", flush=True)
        memory = peak_memory(1, args.threads)
        print(f"peak RSS {memory['peak_rss_mib']:,.0f} MiB; two trials {memory['two_trials_gib']:.2f} GiB "
              f"(machine {MACHINE_MEMORY_GIB} GiB)", flush=True)
    report = {"throughput": speed, "memory": memory, "torch": torch.__version__, "python": platform.python_version(),
              "cpu_count": __import__("os").cpu_count(), "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / ("speed-quick.json" if args.quick else "speed.json"), report)
    lines = [
        "| figure | value |", "| --- | --- |",
        f"| data | `{preset}`: {speed['train_rows']:,} train rows x {speed['features']} features -> {speed['targets']} targets |",
        f"| bare torch loop | {speed['bare_samples_per_s']:,.0f} samples/s |",
        f"| moa-tune fit_fold (with per-epoch validation) | {speed['trainer_samples_per_s']:,.0f} samples/s |",
        f"| ratio trainer / bare | **{speed['ratio']:.3f}** (goal >= 0.9) |",
    ]
    if memory:
        lines += [f"| peak RSS, one trial at `full` | {memory['peak_rss_mib']:,.0f} MiB |",
                  f"| two trials at once | {memory['two_trials_gib']:.2f} GiB of {MACHINE_MEMORY_GIB} GiB |"]
    write_text(RESULTS / ("speed-quick.md" if args.quick else "speed.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
