"""Quality of the core library: does what should win, win?

On the synthetic ``small`` preset and on semi-real data (the real lish-moa labels and drugs from
../shared/data/lish-moa-labels with synthetic features conditioned on them), with drug-aware
folds, through the public API (``moa_tune.train.run_training``), this prints and saves:

- every family (linear, mlp, resnet2head, tabnet; default parameters) against the constant prior;
- the MLP against the linear model;
- stage 2 (features + stage-1 out-of-fold predictions of the nonscored targets) against direct;
- the average of 3 seeds of the MLP against one seed.

Losses are the competition metric on the treated rows' out-of-fold predictions.

Usage: python bench/quality.py [--quick] [--no-semi-real] [--epochs N]
Writes bench/results/quality.json and bench/results/quality.md (quality-quick.* with --quick).
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
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

RESULTS = ROOT / "bench" / "results"
REAL_LABELS = ROOT.parent / "shared" / "data" / "lish-moa-labels"
#: Semi-real data keeps the real 23,814 rows and 206 + 402 targets; fewer genes and cells keep the
#: run affordable on 2 CPUs (the real data has 772 and 100).
SEMI_REAL_PRESET = dataclasses.replace(PRESETS["full"], name="semi-real", n_genes=200, n_cells=40)
FAMILIES = ("linear", "mlp", "resnet2head", "tabnet")
SEEDS = (0, 1, 2)


def evaluate(name: str, data, n_splits: int, train: dict, log) -> dict:
    folds = make_folds(data, n_splits, "drug", seed=0)
    used = folds.used
    y = data.scored[used]
    figures: dict[str, float] = {"prior": log_loss(y, prior_predictions(y, len(y)))}
    seconds: dict[str, float] = {}
    log(f"[{name}] {int(used.sum()):,} treated rows, {data.n_scored} scored targets, {n_splits} drug-aware folds; "
        f"prior {figures['prior']:.6f}")

    def run(label: str, config: dict, inputs=()):
        start = time.perf_counter()
        result = run_training(config, data, folds, list(inputs))
        seconds[label] = time.perf_counter() - start
        log(f"[{name}] {label:28s} {result.loss:.6f}  ({seconds[label]:.0f} s)")
        return result

    mlp_runs = []
    for family in FAMILIES:
        result = run(f"{family}", {"family": family, "train": {**train, "seed": SEEDS[0]}})
        figures[family] = result.loss
        if family == "mlp":
            mlp_runs.append(result)
    for seed in SEEDS[1:]:
        mlp_runs.append(run(f"mlp seed {seed}", {"family": "mlp", "train": {**train, "seed": seed}}))
    average = np.mean([r.oof for r in mlp_runs], axis=0)
    figures["mlp 3-seed average"] = log_loss(data.scored[used], average[used])
    log(f"[{name}] {'mlp 3-seed average':28s} {figures['mlp 3-seed average']:.6f}")
    stage1 = run("mlp stage1 (nonscored)", {"family": "mlp", "stage": "stage1", "train": {**train, "seed": 0}})
    figures["mlp stage1 (nonscored targets)"] = stage1.loss
    stage2 = run("mlp stage2", {"family": "mlp", "stage": "stage2", "train": {**train, "seed": 0}},
                 [stage1.predictions])
    figures["mlp stage2"] = stage2.loss
    claims = {f"{family} beats the prior": figures[family] < figures["prior"] for family in FAMILIES}
    claims["mlp beats linear"] = figures["mlp"] < figures["linear"]
    claims["stage2 beats direct (mlp)"] = figures["mlp stage2"] < figures["mlp"]
    claims["3-seed average beats one seed (mlp)"] = figures["mlp 3-seed average"] < figures["mlp"]
    return {"rows": int(used.sum()), "targets": data.n_scored, "genes": data.train.n_genes,
            "cells": data.train.n_cells, "folds": n_splits, "losses": figures, "seconds": seconds, "claims": claims}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 folds, 8 epochs: a smoke run")
    parser.add_argument("--no-semi-real", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 vCPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_splits = 3 if args.quick else 5
    train = {"epochs": args.epochs or (8 if args.quick else 20), "early_stopping": 5, "num_threads": args.threads}

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    report: dict = {"settings": {"train": train, "folds": n_splits, "threads": args.threads, "torch": torch.__version__,
                                 "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
                    "datasets": {}}
    report["datasets"]["small"] = evaluate("small", generate("small", seed=0), n_splits, train, log)
    if args.no_semi_real:
        log("semi-real: skipped (--no-semi-real)")
    elif not (REAL_LABELS / "train_targets_scored.csv.zip").is_file():
        log(f"semi-real: skipped, no real labels at {REAL_LABELS}")
    else:
        data = generate(SEMI_REAL_PRESET, seed=0, labels=REAL_LABELS)
        report["datasets"]["semi-real"] = evaluate("semi-real", data, n_splits, train, log)
    report["seconds"] = time.perf_counter() - started

    names = list(report["datasets"])
    rows = list(next(iter(report["datasets"].values()))["losses"])
    lines = [f"Drug-aware {n_splits}-fold CV, treated rows, mean column-wise log loss (lower is better); "
             f"default parameters, {train['epochs']} epochs max, early stopping 5; {report['seconds'] / 60:.0f} min "
             f"on {args.threads} threads. Semi-real: the real labels and drugs, synthetic features with "
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
