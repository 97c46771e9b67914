"""Quality of the core library: does what should win, win?

On the synthetic ``small`` preset and on semi-real data (the real lish-moa labels and drugs from
../shared/data/lish-moa-labels with synthetic features conditioned on them), with drug-aware
folds, through the public API (``moa_tune.train.run_training``), this prints and saves:

- every family (linear, mlp, resnet2head, tabnet; default parameters) against the constant prior;
- the MLP against the linear model;
- stage 2 (features + stage-1 out-of-fold predictions of the nonscored targets) against direct;
- the average of 3 seeds of the MLP against one seed.

Losses are the competition metric on the treated rows' out-of-fold predictions.

Usage: python bench/quality.py [--quick] [--no-semi-real] [--epochs N] [--workers N] [--threads N]
Writes results/bench/quality.json and results/bench/quality.md (quality-quick.* with --quick).
"""
from __future__ import annotations

import argparse
import multiprocessing
import dataclasses
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_tune.folds import make_folds  # noqa: E402
from moa_tune.io import write_json, write_text  # noqa: E402
from moa_tune.metric import log_loss, prior_predictions  # noqa: E402
from moa_tune.synth import PRESETS, generate  # noqa: E402
from moa_tune.train import run_training  # noqa: E402

RESULTS = ROOT / "results" / "bench"
REAL_LABELS = ROOT.parent / "shared" / "data" / "lish-moa-labels"
#: Semi-real data keeps the real 23,814 rows and 206 + 402 targets; fewer genes and cells keep the
#: run affordable on 2 CPUs (the real data has 772 and 100).
SEMI_REAL_PRESET = dataclasses.replace(PRESETS["full"], name="semi-real", n_genes=200, n_cells=40)
FAMILIES = ("linear", "mlp", "resnet2head", "tabnet")
SEEDS = (0, 1, 2)


_DATA_CACHE: dict[str, object] = {}


def dataset(name: str):
    """The dataset ``name`` (generated once per process; generation is deterministic)."""
    if name not in _DATA_CACHE:
        _DATA_CACHE[name] = (generate("small", seed=0) if name == "small"
                             else generate(SEMI_REAL_PRESET, seed=0, labels=REAL_LABELS))
    return _DATA_CACHE[name]


def run_one(name: str, label: str, config: dict, n_splits: int, threads: int, inputs=()) -> tuple:
    """One cross-validation through the public API, in a worker process; returns (label, result, seconds)."""
    torch.set_num_threads(threads)
    data = dataset(name)
    folds = make_folds(data, n_splits, "drug", seed=0)
    start = time.perf_counter()
    result = run_training(config, data, folds, list(inputs))
    return label, result, time.perf_counter() - start


def tasks(train: dict) -> list[tuple[str, dict]]:
    """Every independent run of one dataset: each family, two more MLP seeds, stage 1."""
    runs = [(family, {"family": family, "train": {**train, "seed": SEEDS[0]}}) for family in FAMILIES]
    runs += [(f"mlp seed {seed}", {"family": "mlp", "train": {**train, "seed": seed}}) for seed in SEEDS[1:]]
    runs.append(("mlp stage1 (nonscored)", {"family": "mlp", "stage": "stage1", "train": {**train, "seed": SEEDS[0]}}))
    return runs


def evaluate_all(names: list[str], n_splits: int, train: dict, workers: int, threads: int, log) -> dict:
    """Run every dataset's runs on ``workers`` processes (stage 2 once its stage 1 is done); gather figures."""
    done: dict[str, dict[str, tuple]] = {name: {} for name in names}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(run_one, name, label, config, n_splits, threads): name
                   for name in names for label, config in tasks(train)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                name = pending.pop(future)
                label, result, seconds = future.result()
                done[name][label] = (result, seconds)
                log(f"[{name}] {label:28s} {result.loss:.6f}  ({seconds:.0f} s)")
                if label == "mlp stage1 (nonscored)":
                    config = {"family": "mlp", "stage": "stage2", "train": {**train, "seed": SEEDS[0]}}
                    pending[pool.submit(run_one, name, "mlp stage2", config, n_splits, threads,
                                        [result.predictions])] = name
    return {name: figures(name, done[name], n_splits, log) for name in names}


def figures(name: str, done: dict[str, tuple], n_splits: int, log) -> dict:
    data = dataset(name)
    used = make_folds(data, n_splits, "drug", seed=0).used
    y = data.scored[used]
    losses: dict[str, float] = {"prior": log_loss(y, prior_predictions(y, len(y)))}
    for family in FAMILIES:
        losses[family] = done[family][0].loss
    mlp_runs = [done["mlp"][0]] + [done[f"mlp seed {seed}"][0] for seed in SEEDS[1:]]
    losses["mlp 3-seed average"] = log_loss(y, np.mean([r.oof for r in mlp_runs], axis=0)[used])
    losses["mlp stage1 (nonscored targets)"] = done["mlp stage1 (nonscored)"][0].loss
    losses["mlp stage2"] = done["mlp stage2"][0].loss
    log(f"[{name}] {int(used.sum()):,} treated rows, {data.n_scored} scored targets, {n_splits} drug-aware folds; "
        f"prior {losses['prior']:.6f}, mlp 3-seed average {losses['mlp 3-seed average']:.6f}")
    claims = {f"{family} beats the prior": losses[family] < losses["prior"] for family in FAMILIES}
    claims["mlp beats linear"] = losses["mlp"] < losses["linear"]
    claims["stage2 beats direct (mlp)"] = losses["mlp stage2"] < losses["mlp"]
    claims["3-seed average beats one seed (mlp)"] = losses["mlp 3-seed average"] < losses["mlp"]
    return {"rows": int(used.sum()), "targets": data.n_scored, "genes": data.train.n_genes,
            "cells": data.train.n_cells, "folds": n_splits, "losses": losses,
            "seconds": {label: seconds for label, (_, seconds) in done.items()}, "claims": claims}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 folds, 8 epochs: a smoke run")
    parser.add_argument("--no-semi-real", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on 2 vCPUs)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one process each")
    args = parser.parse_args()
    n_splits = 3 if args.quick else 5
    train = {"epochs": args.epochs or (8 if args.quick else 20), "early_stopping": 5, "num_threads": args.threads}

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    report: dict = {"settings": {"train": train, "folds": n_splits, "threads": args.threads, "workers": args.workers,
                                 "torch": torch.__version__,
                                 "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
                    "datasets": {}}
    names = ["small"]
    if args.no_semi_real:
        log("semi-real: skipped (--no-semi-real)")
    elif not (REAL_LABELS / "train_targets_scored.csv.zip").is_file():
        log(f"semi-real: skipped, no real labels at {REAL_LABELS}")
    else:
        names.append("semi-real")
    report["datasets"] = evaluate_all(names, n_splits, train, args.workers, args.threads, log)
    report["seconds"] = time.perf_counter() - started

    names = list(report["datasets"])
    rows = list(next(iter(report["datasets"].values()))["losses"])
    lines = [f"Drug-aware {n_splits}-fold CV, treated rows, mean column-wise log loss (lower is better); "
             f"default parameters, {train['epochs']} epochs max, early stopping 5; {report['seconds'] / 60:.0f} min "
             f"on {args.workers} processes of {args.threads} thread(s). Semi-real: the real labels and drugs, synthetic features with "
             f"{SEMI_REAL_PRESET.n_genes} genes / {SEMI_REAL_PRESET.n_cells} cells.", "",
             "| model | " + " | ".join(names) + " |", "| --- | " + " | ".join("---:" for _ in names) + " |"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{report['datasets'][n]['losses'][row]:.6f}" for n in names) + " |")
    lines += ["", "| claim | " + " | ".join(names) + " |", "| --- | " + " | ".join("---" for _ in names) + " |"]
    for claim in next(iter(report["datasets"].values()))["claims"]:
        lines.append(f"| {claim} | " + " | ".join("yes" if report["datasets"][n]["claims"][claim] else "**no**"
                                                    for n in names) + " |")
    suffix = "-quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"quality{suffix}.json", report)
    write_text(RESULTS / f"quality{suffix}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
