"""Fixtures for tests and benches: small fake results that need no training, Ray or data.

Public so that the tests, the benches (bench/report_screenshot.py) and out-of-tree code use them
without reaching into another module's private names.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["demo_sweep", "demo_trial"]


def demo_sweep(directory: str | os.PathLike, n_folds: int = 5) -> Path:
    """Write a small fake sweep folder (trials.csv, sweep.yaml, collect/*) under ``directory``.

    Three experiments (stage1/mlp: 3 completed; stage2/mlp: 5 completed, 2 pruned, 1 errored;
    direct/resnet2head: 6 completed, 2 pruned), mixed param types and a conditional param.
    """
    folder = Path(directory)
    (folder / "collect").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    plans = [("stage1", "mlp", "ccpc"), ("stage2", "mlp", "cpccepcc"),
             ("direct", "resnet2head", "ccppcccc")]
    rows: list[dict[str, Any]] = []
    for e, (stage, family, states) in enumerate(plans):
        for i, code in enumerate(states):
            rows.append(demo_trial(rng, e, i, stage, family, code, n_folds))
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    (folder / "sweep.yaml").write_text(
        "name: demo-sweep\nstages:\n  - {stage: stage1, families: [mlp]}\n  - {stage: stage2, families: [mlp]}\n"
        "  - {stage: direct, families: [resnet2head]}\n")
    pd.DataFrame([
        ("stage1-mlp-1", "stage1", "mlp", 1, "t0_00000", 0.00512, 0.00508, "0.00511;0.00506", 2),
        ("stage2-mlp-1", "stage2", "mlp", 1, "t1_00003", 0.01641, 0.01632, "0.01635;0.01629;0.01633", 3),
        ("stage2-mlp-2", "stage2", "mlp", 2, "t1_00007", 0.01652, 0.01647, "0.01650;0.01644", 2),
        ("direct-resnet2head-1", "direct", "resnet2head", 1, "t2_00005", 0.01660, 0.01655, "0.01657;0.01653", 2),
    ], columns=["id", "stage", "family", "rank", "trial_id", "sweep_loss", "cv_loss", "seed_losses", "n_seeds"]
    ).to_csv(folder / "collect" / "components.csv", index=False)
    scored = ["stage2-mlp-1", "stage2-mlp-2", "direct-resnet2head-1"]
    blend = {
        "components": scored,
        "methods": {
            "caruana": {"weights": dict(zip(scored, [0.5, 0.1667, 0.3333])), "loss": 0.016141,
                        "cross_fitted_loss": 0.016204},
            "slsqp": {"weights": dict(zip(scored, [0.4712, 0.0931, 0.4357])), "loss": 0.016118,
                      "cross_fitted_loss": 0.016187},
        },
        "chosen": "slsqp", "loss": 0.016118, "cross_fitted_loss": 0.016187,
        "best_component": {"id": "stage2-mlp-1", "loss": 0.01632},
    }
    (folder / "collect" / "blend.json").write_text(json.dumps(blend, indent=2) + "\n")
    positives = rng.integers(1, 400, size=60)
    losses = 0.0002 + 0.012 * positives / 400 * rng.uniform(0.6, 1.4, size=60)
    pd.DataFrame({"target": [f"target_{i:03d}_inhibitor" for i in range(60)], "loss": losses.round(6),
                  "positives": positives}).to_csv(folder / "collect" / "per_target.csv", index=False)
    return folder


def demo_trial(rng: np.random.Generator, e: int, i: int, stage: str, family: str, code: str,
                n_folds: int) -> dict[str, Any]:
    state = {"c": "completed", "p": "pruned", "e": "errored"}[code]
    done = n_folds if code == "c" else (1 + i % 2 if code == "p" else 1)
    base = (0.0052 if stage == "stage1" else 0.0163) * (1 + rng.uniform(0, 0.08))
    folds = [round(base * (1 + rng.normal(0, 0.02)), 6) if k < done else None for k in range(n_folds)]
    row: dict[str, Any] = {
        "stage": stage, "family": family, "trial_id": f"t{e}_{i:05d}", "state": state,
        "loss": None if code == "e" else round(float(np.mean([f for f in folds if f is not None])), 6),
        "folds_done": 0 if code == "e" else done, "time_s": round(float(rng.uniform(20, 90)) * done, 1),
        "node": f"10.0.0.{1 + i % 2}", "gpus": 1,
        "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" if code == "e" else None,
        "path": f"/results/demo/{stage}-{family}/trial_{i:05d}",
    }
    row.update({f"fold_{k}_loss": (None if code == "e" else folds[k]) for k in range(n_folds)})
    row["param.model.hidden_size"] = [256, 512, 1024][i % 3]
    row["param.train.lr"] = float(10 ** rng.uniform(-4, -2))
    if family == "mlp":
        scaler = ["quantile", "standard", "none"][(i + e) % 3]
        row["param.model.dropout"] = round(float(rng.uniform(0.1, 0.5)), 3)
        row["param.features.scaler"] = scaler
        row["param.features.pca_components"] = None if scaler == "none" else int(rng.integers(20, 200))
        row["param.model.use_bn"] = bool(i % 2)
        row["param.train.epochs"] = 20
    else:
        row["param.model.n_blocks"] = 1 + i % 3
        row["param.train.weight_decay"] = float(10 ** rng.uniform(-6, -4))
    return row
