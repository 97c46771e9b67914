"""Why stage 2 does not beat direct on the synthetic data: what the nonscored targets carry.

The quality bench (bench/quality.py) finds that stage 2 (features + stage-1 out-of-fold
predictions of the nonscored targets) loses to the direct model. This script separates the
possible reasons, on the ``small`` preset with the quality bench's settings (drug-aware 5-fold CV,
default MLP, 20 epochs max, seed 0), through the public API:

- ``direct``: features -> scored (the reference);
- ``stage2``: features + stage-1 out-of-fold predictions -> scored (the scheme under test);
- ``stage2, shuffled inputs``: the same stage-1 predictions with their rows permuted: extra
  columns that carry nothing. If ``stage2`` is no better than this, the predictions add nothing
  the features did not already give;
- ``stage2, true nonscored labels``: the nonscored *labels* as inputs (an oracle, not a model):
  whether the nonscored targets hold information about the scored ones at all;
- ``direct, multi-task``: scored and nonscored targets learned together;
- ``transfer``: pretrain on the nonscored targets, fine-tune on the scored ones.

Usage: python bench/stage2_diagnosis.py [--epochs N] [--workers N]
Writes results/bench/stage2_diagnosis.json and .md.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import dataset, run_one  # noqa: E402
from moa_tune.folds import make_folds  # noqa: E402
from moa_tune.io import write_json, write_text  # noqa: E402
from moa_tune.stages import Predictions, fold_fingerprint  # noqa: E402

RESULTS = ROOT / "results" / "bench"
N_SPLITS = 5


def oracle_inputs() -> Predictions:
    """The true nonscored labels in the place of stage-1 predictions (test rows: zeros, unused)."""
    data = dataset("small")
    folds = make_folds(data, N_SPLITS, "drug", seed=0)
    oof = data.nonscored.astype(np.float32) * folds.used[:, None]
    test = np.zeros((len(data.test), oof.shape[1]), dtype=np.float32)
    return Predictions(oof, test, data.nonscored_columns, fold_fingerprint(folds), "stage1", "true labels")


def shuffled(predictions: Predictions) -> Predictions:
    """The same predictions with the used train rows permuted (a fixed permutation)."""
    folds = make_folds(dataset("small"), N_SPLITS, "drug", seed=0)
    rows = np.flatnonzero(folds.used)
    oof = predictions.oof.copy()
    oof[rows] = predictions.oof[np.random.default_rng(0).permutation(rows)]
    return Predictions(oof, predictions.test, predictions.columns, predictions.folds, "stage1", "shuffled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    train = {"epochs": args.epochs, "early_stopping": 5, "num_threads": 1, "seed": 0}
    mlp = {"family": "mlp", "train": train}
    first = [("direct", mlp, ()), ("stage1", {**mlp, "stage": "stage1"}, ()),
             ("stage2, true nonscored labels", {**mlp, "stage": "stage2"}, (oracle_inputs(),)),
             ("direct, multi-task", {**mlp, "stage_options": {"also_nonscored": True}}, ()),
             ("transfer", {**mlp, "stage": "transfer"}, ())]
    losses: dict[str, float] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(run_one, "small", label, config, N_SPLITS, 1, inputs) for label, config, inputs in first}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                label, result, took = future.result()
                losses[label], seconds[label] = result.loss, took
                print(f"{label:32s} {result.loss:.6f}  ({took:.0f} s)", flush=True)
                if label == "stage1":
                    stage2 = {**mlp, "stage": "stage2"}
                    pending.add(pool.submit(run_one, "small", "stage2", stage2, N_SPLITS, 1, (result.predictions,)))
                    pending.add(pool.submit(run_one, "small", "stage2, shuffled inputs", stage2, N_SPLITS, 1,
                                            (shuffled(result.predictions),)))
    order = ["direct", "stage2", "stage2, shuffled inputs", "stage2, true nonscored labels", "direct, multi-task",
             "transfer"]
    rows = {label: losses[label] for label in order}
    report = {"settings": {"dataset": "small", "folds": N_SPLITS, "train": train, "date": time.strftime("%Y-%m-%d")},
              "losses": rows, "stage1 loss (nonscored)": losses["stage1"], "seconds": seconds,
              "wall_seconds": time.perf_counter() - started}
    direct = rows["direct"]
    lines = [f"`small` preset, drug-aware {N_SPLITS}-fold CV, default MLP, {args.epochs} epochs max, seed 0; "
             "scored log loss of the treated rows' out-of-fold predictions.", "",
             "| run | log loss | vs direct |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {loss:.6f} | {100 * (loss / direct - 1):+.2f}% |" for label, loss in rows.items()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "stage2_diagnosis.json", report)
    write_text(RESULTS / "stage2_diagnosis.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
