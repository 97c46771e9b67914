"""Does each technique of the MoA study lower the MLP's CV loss? The same cross-validation with and without it.

Arms (``--arms``): ``off`` (the default features), ``fa`` (Factor Analysis components of genes
and cells), ``umap`` (UMAP embeddings of genes and cells), ``pairs`` (products of the most
correlated feature pairs) and ``mlsmote`` (MLSMOTE oversampling of rare labels, one arm per
``--amounts`` value: synthetic rows as a fraction of each fold's training rows); see
:data:`ARMS` for the values. For each dataset -- the synthetic ``small`` preset, and semi-real
data (the real lish-moa labels and drugs from ../shared/data/lish-moa-labels with synthetic
features; skipped with a message when that folder is absent; ``--semi-real-rows`` takes a
drug-wise sample) -- the MLP (default architecture, ``--epochs`` epochs at most, default early
stopping) is cross-validated through the public API (``moa_tune.train.run_training``, no output
folder) on the same drug-aware folds in every arm, for several training seeds: the same seeds in
every arm, so each arm is compared with "off" seed by seed.

Per arm it prints and saves: the mean CV loss over seeds, its mean paired change against off,
the seeds on which it beat off, the loss over the rare labels only (IRLbl above
``--threshold`` x the mean, on the rows the folds use: the labels MLSMOTE oversamples) and the
seconds per cross-validation (MLSMOTE's rows make every epoch longer).

Read MLSMOTE with care: the arms train for the same number of *epochs*, so its extra rows also mean
more optimisation steps. With enough epochs and early stopping (the full run) both arms reach
their best epoch and the comparison is between converged models; in the ``--quick`` smoke run
(2 epochs) the difference mostly measures the extra steps, not MLSMOTE.

The amount means different things on different label sets: one pass of the paper (a synthetic
row per positive of each rare label) is about ``mlsmote`` 0.14 on ``small`` and 0.02 on the real
labels (44 rare labels with at most 17 positives each); the report gives it for each dataset.

Usage: python bench/techniques.py [--datasets small,semi-real] [--arms off fa umap pairs mlsmote]
                                  [--amounts 0.03 0.1 0.3] [--seeds 0 1 2] [--epochs 15] [--hidden-size N]
                                  [--threads N] [--neighbors 5] [--threshold 1] [--semi-real-rows N] [--quick]
Writes results/bench/techniques.json and .md (techniques-quick.* with --quick: the tiny preset,
3 folds, 2 epochs, 2 seeds, one amount, a 128-wide MLP on 1 thread, and a drug-wise sample of
about 1,000 semi-real rows).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import ROOT, bench_parser, markdown_table, save, scale  # noqa: E402

from moa_tune.data import MoaData  # noqa: E402
from moa_tune.folds import make_folds  # noqa: E402
from moa_tune.metric import log_loss  # noqa: E402
from moa_tune.mlsmote import rare_labels  # noqa: E402
from moa_tune.synth import PRESETS, generate  # noqa: E402
from moa_tune.train import run_training  # noqa: E402

REAL_LABELS = ROOT.parent / "shared" / "data" / "lish-moa-labels"
# only the CV loss is measured: no test rows
SEMI_REAL_PRESET = dataclasses.replace(PRESETS["full"], name="semi-real", n_genes=200, n_cells=40, n_test=0)
#: Rows of the drug-wise semi-real sample of a --quick run (the whole label set takes minutes per fold).
QUICK_SEMI_REAL_ROWS = 1000
#: MLP width of a --quick run (the family's default, 1024, is for the full run).
QUICK_HIDDEN_SIZE = 128
#: Arm name -> the config values it sets on top of the MLP's defaults (``mlsmote``: per --amounts).
ARMS: dict[str, dict[str, dict[str, float]]] = {
    "off": {},
    "fa": {"features": {"gene_fa": 16, "cell_fa": 4}},
    "umap": {"features": {"gene_umap": 4, "cell_umap": 2}},
    "pairs": {"features": {"pair_products": 64}},
    "mlsmote": {},
}


def drug_sample(data: MoaData, n_rows: int, seed: int = 0) -> MoaData:
    """Whole drugs drawn at random until about ``n_rows`` rows: drug-aware folds stay meaningful."""
    rng = np.random.default_rng(seed)
    drugs, sizes = np.unique(data.drug_id, return_counts=True)
    chosen, total = [], 0
    for i in rng.permutation(len(drugs)):
        if total + sizes[i] <= n_rows:
            chosen.append(drugs[i])
            total += sizes[i]
    rows = np.flatnonzero(np.isin(data.drug_id, chosen))
    return dataclasses.replace(data, train=data.train.take(rows), scored=data.scored[rows],
                               nonscored=None if data.nonscored is None else data.nonscored[rows],
                               drug_id=data.drug_id[rows], test=None)


def one_pass_amount(y: np.ndarray, threshold: float) -> float:
    """The ``train.mlsmote`` of one pass of the paper (a row per positive of each rare label) on these rows."""
    counts = (y > 0).sum(axis=0)[rare_labels(y, threshold)]
    return float(counts[counts >= 2].sum() / len(y))


def evaluate(name: str, data: MoaData, arms: dict[str, dict], seeds: list[int], n_splits: int, epochs: int,
             model: dict, threads: int | None, neighbors: int, threshold: float) -> dict:
    folds = make_folds(data, n_splits=n_splits, scheme="drug", seed=0)
    used = folds.used
    truth = data.scored[used]
    rare = rare_labels(truth, threshold)
    result = {"rows": int(used.sum()), "targets": data.n_scored, "rare_labels": int(len(rare)),
              "n_genes": data.train.n_genes, "n_cells": data.train.n_cells,
              "one_pass_amount": float(np.mean([one_pass_amount(data.scored[rows], threshold)
                                                for rows, _ in folds.split()])), "arms": {}}
    for arm, values in arms.items():
        losses, rare_losses, seconds = [], [], []
        for seed in seeds:
            train = {"epochs": epochs, "seed": seed, "num_threads": threads, "mlsmote_neighbors": neighbors,
                     "mlsmote_threshold": threshold, **values.get("train", {})}
            config = {"family": "mlp", "model": model, "train": train, "features": values.get("features", {})}
            start = time.perf_counter()
            cv = run_training(config, data, folds)
            seconds.append(time.perf_counter() - start)
            losses.append(cv.loss)
            rare_losses.append(log_loss(truth[:, rare], cv.oof[used][:, rare]) if len(rare) else None)
            print(f"{name}: {arm} seed {seed}: CV {cv.loss:.6f} ({seconds[-1]:.0f} s)", flush=True)
        result["arms"][arm] = {"values": values, "losses": losses, "rare_losses": rare_losses, "seconds": seconds}
    return result


def summarise(d: dict) -> tuple[list[list], dict[str, bool]]:
    """Table rows and claims of one dataset: every arm against 'off', seed by seed."""
    off = np.array(d["arms"]["off"]["losses"])
    rows, claims = [], {}
    for arm, a in d["arms"].items():
        losses = np.array(a["losses"])
        change = float(np.mean((losses - off) / off) * 100)
        better = int((losses < off).sum())
        rare = [r for r in a["rare_losses"] if r is not None]
        rows.append([arm, f"{losses.mean():.6f} ± {losses.std():.6f}", "" if arm == "off" else f"{change:+.2f}%",
                     "" if arm == "off" else f"{better}/{len(losses)}", f"{np.mean(rare):.6f}" if rare else "n/a",
                     f"{np.mean(a['seconds']):.0f}"])
        if arm != "off":
            a["change_percent"], a["seeds_better"] = change, better
            claims[f"{arm} lowers the mean CV loss"] = change < 0
    return rows, claims


def main() -> None:
    parser = bench_parser(__doc__, epochs=15)
    parser.add_argument("--datasets", default="small,semi-real", help="comma-separated: small, semi-real")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms to run [all]")
    parser.add_argument("--semi-real-rows", type=int, default=None,
                        help=f"a drug-wise sample of about N semi-real rows [all; quick: {QUICK_SEMI_REAL_ROWS}]")
    parser.add_argument("--amounts", type=float, nargs="+", default=None,
                        help="train.mlsmote values, one arm each [0.03 0.1 0.3; quick: 0.3]")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds [0 1 2; quick: 0 1]")
    parser.add_argument("--hidden-size", type=int, default=None,
                        help=f"model.hidden_size of the MLP [the family's default; quick: {QUICK_HIDDEN_SIZE}]")
    parser.add_argument("--threads", type=int, default=None,
                        help="train.num_threads [as set; quick: 1, the smoke run shares a small CI machine]")
    parser.add_argument("--neighbors", type=int, default=5, help="train.mlsmote_neighbors [5]")
    parser.add_argument("--threshold", type=float, default=1.0, help="train.mlsmote_threshold [1]")
    args = parser.parse_args()
    preset, n_splits, epochs = scale(args)
    amounts = args.amounts or ([0.3] if args.quick else [0.03, 0.1, 0.3])
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else [0, 1, 2])
    hidden = args.hidden_size or (QUICK_HIDDEN_SIZE if args.quick else None)
    model = {} if hidden is None else {"hidden_size": hidden}
    threads = args.threads or (1 if args.quick else None)
    arms: dict[str, dict] = {}
    for arm in dict.fromkeys(["off", *args.arms]):  # "off" is the reference of every other arm
        if arm == "mlsmote":
            arms.update({f"mlsmote {a:g}": {"train": {"mlsmote": a}} for a in amounts})
        else:
            arms[arm] = ARMS[arm]
    report: dict = {"preset": preset, "folds": n_splits, "epochs": epochs, "model": model, "threads": threads,
                    "seeds": seeds,
                    "amounts": amounts, "semi_real_rows": args.semi_real_rows,
                    "neighbors": args.neighbors, "threshold": args.threshold, "datasets": {}, "skipped": {}}
    for name in args.datasets.split(","):
        start = time.perf_counter()
        if name == "small":
            data = dataclasses.replace(generate(preset, seed=0), test=None)
        elif name == "semi-real":
            if not (REAL_LABELS / "train_targets_scored.csv.zip").is_file():
                message = f"semi-real: skipped, no real labels at {REAL_LABELS}"
                print(message, flush=True)
                report["skipped"][name] = message
                continue
            data = generate(SEMI_REAL_PRESET, seed=0, labels=REAL_LABELS)
            rows = args.semi_real_rows or (QUICK_SEMI_REAL_ROWS if args.quick else None)
            if rows:
                data = drug_sample(data, rows)
        else:
            raise SystemExit(f"unknown dataset {name!r} (small, semi-real)")
        result = evaluate(name, data, arms, seeds, n_splits, epochs, model, threads, args.neighbors, args.threshold)
        result["minutes"] = (time.perf_counter() - start) / 60
        report["datasets"][name] = result

    width = f"{hidden}-wide " if hidden else ""
    described = "; ".join(f"{arm}: {values}" for arm, values in arms.items() if values)
    lines = [f"MLP ({width}default otherwise), drug-aware {n_splits}-fold CV, {epochs} epochs at most, training seeds {seeds}. "
             f"Arms ({described}); MLSMOTE on each fold's training rows ({args.neighbors} neighbours, rare: IRLbl > "
             f"{args.threshold:g} x mean IRLbl). Log loss of the out-of-fold predictions.", ""]
    for name, d in report["datasets"].items():
        rows, d["claims"] = summarise(d)
        lines += [f"**{name}** ({d['rows']:,} rows, {d['n_genes']} genes, {d['n_cells']} cells, {d['targets']} "
                  f"scored targets, {d['rare_labels']} of them rare; one pass of the paper (a synthetic row per "
                  f"positive of each rare label) is mlsmote {d['one_pass_amount']:.3f} (fold mean); "
                  f"{d['minutes']:.1f} min)", "",
                  *markdown_table(["arm", "CV loss (mean ± std over seeds)", "change vs off (paired)",
                                   "seeds better than off", "rare-label loss", "s per CV"], rows), ""]
        lines += [f"- {claim}: {'yes' if ok else '**no**'}" for claim, ok in d["claims"].items()] + [""]
    lines += [f"- {message}" for message in report["skipped"].values()]
    save("techniques", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
