"""Does the synthetic data carry the structure of the real MoA problem?

Run: ``.venv/bin/python bench/synth_structure.py [--quick]``

On treated rows of two datasets,

* ``small``: the fully synthetic ``small`` preset of :mod:`moa_tune.synth`;
* ``semi-real``: the real lish-moa labels, sig_ids and drug ids (read from
  ``../shared/data/lish-moa-labels``; skipped with a message when absent) with synthesized features,
  here with 200 genes / 40 cells instead of 772 / 100 so that the run stays affordable on 2 CPUs,

it cross-validates four models with drug-aware folds and scores the out-of-fold predictions with
the competition metric (:func:`moa_tune.metric.log_loss`). The folds are the lish-moa winners'
scheme: drugs with at most 18 rows are kept whole on one side (MultilabelStratifiedKFold over
drugs on their label vectors, so replicates of such a drug never sit on both sides); the rows of
the few frequent reference compounds (hundreds of rows, in train and test alike) are stratified by
row. The models:

(a) ``prior``: each target's positive rate on the training part;
(b) ``logistic``: one L2 logistic regression per target on standardized features (targets without
    a positive in the training part predict the prior);
(c) ``mlp``: one sklearn ``MLPClassifier`` (512 ReLU units) for all targets, trained epoch by epoch
    with ``partial_fit`` and early-stopped on the log loss of a held-out 10 % of the training drugs
    (sklearn's own early stopping watches accuracy, which is meaningless for sparse multi-label);
(d) ``oracle``: the same network with the TRUE nonscored labels appended to its inputs.

The structure is there when ``prior > logistic > mlp > oracle`` (losses). Inputs are the gene and
cell columns plus one-hot cp_time and cp_dose; the scaler and every model are fitted on the training
part of each fold only. All predictions, the prior included, are clipped to [0.0005, 0.9995], as
Kaggle solutions did (a target whose positives all sit in the held-out fold would otherwise score
the 1e-15 clip of the metric). The logistic C (0.003) was the best of 0.001-0.03 on both datasets.
Work runs in ``--jobs`` single-threaded processes (2 by default): multi-threaded BLAS on 2
shared cores is several times slower than one thread per process. Results go to
results/bench/synth_structure.{json,md} (written atomically); exit status 1 if an ordering fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_tune import synth  # noqa: E402
from moa_tune.data import CP_DOSES, CP_TIMES, MoaData, find_file  # noqa: E402
from moa_tune.metric import log_loss  # noqa: E402

REAL_LABELS = ROOT.parent / "shared" / "data" / "lish-moa-labels"
RESULTS = ROOT / "results" / "bench"
CLIP = (0.0005, 0.9995)
SEED = 0
FOLDS = 5
QUICK_FOLDS = 2                     # --quick: the first 2 of the 5 folds only
LOGISTIC_C = 0.003                  # inverse L2 strength on standardized inputs (best of 0.001..0.03)
LOGISTIC_MAX_ITER = 300
MLP_HIDDEN = (512,)
MLP_ALPHA = 1e-3
MLP_BATCH = 128
MLP_LEARNING_RATE = 1e-3
MLP_MAX_EPOCHS = 60
MLP_PATIENCE = 5
MLP_VALIDATION_DRUGS = 0.1
#: semi-real mode with fewer features than the real 772 genes / 100 cells, for 2 CPUs
SEMI_REAL_PRESET = synth.Preset("semi-real-bench", n_train=23814, n_test=0, n_genes=200, n_cells=40,
                                n_scored=206, n_nonscored=402, n_families=120, n_pathways=24, n_frequent_drugs=9)
FREQUENT_DRUG_ROWS = 18              # drugs with more rows are split by row, not grouped
MODELS = ("prior", "logistic", "mlp", "oracle")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def inputs(data: MoaData, rows: np.ndarray) -> np.ndarray:
    """Genes, cells, one-hot cp_time and a D2 indicator of the given rows (float64)."""
    train = data.train
    time_onehot = (train.cp_time[rows, None] == np.asarray(CP_TIMES)[None, :]).astype(np.float64)
    dose = (train.cp_dose[rows] == CP_DOSES[1]).astype(np.float64)[:, None]
    return np.hstack([train.genes[rows], train.cells[rows], time_onehot, dose]).astype(np.float64)


def drug_folds(drug_id: np.ndarray, labels: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Drug-aware folds (the lish-moa winners' scheme): row-index (fit, valid) pairs.

    Drugs with at most ``FREQUENT_DRUG_ROWS`` rows are kept whole on one side, folds stratified on
    the drugs' label vectors; the rows of the few frequent reference compounds, which were profiled
    on every plate and sit in train and test alike, are stratified by row instead.
    """
    drugs, row_drug, rows_per_drug = np.unique(drug_id, return_inverse=True, return_counts=True)
    frequent_row = rows_per_drug[row_drug] > FREQUENT_DRUG_ROWS
    drug_labels = np.zeros((len(drugs), labels.shape[1]), dtype=np.uint8)
    np.maximum.at(drug_labels, row_drug, labels)
    fold_of_row = np.full(len(drug_id), -1)
    regular = np.flatnonzero(rows_per_drug <= FREQUENT_DRUG_ROWS)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(regular)), drug_labels[regular])):
        fold_of_row[np.isin(row_drug, regular[valid])] = k
    frequent = np.flatnonzero(frequent_row)
    if len(frequent):
        for k, (_, valid) in enumerate(splitter.split(np.zeros(len(frequent)), labels[frequent])):
            fold_of_row[frequent[valid]] = k
    return [(np.flatnonzero(fold_of_row != k), np.flatnonzero(fold_of_row == k)) for k in range(n_folds)]


def _logistic_columns(x: np.ndarray, y: np.ndarray, x_valid: np.ndarray) -> np.ndarray:
    out = np.empty((len(x_valid), y.shape[1]))
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    with threadpool_limits(1):
        for j in range(y.shape[1]):
            model = LogisticRegression(C=LOGISTIC_C, max_iter=LOGISTIC_MAX_ITER)
            out[:, j] = model.fit(x, y[:, j]).predict_proba(x_valid)[:, 1]
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, x_valid: np.ndarray, jobs: int = 1) -> np.ndarray:
    """One logistic regression per target; the prior where the training part has no positive."""
    out = np.tile(y.mean(axis=0), (len(x_valid), 1))
    fit = np.flatnonzero(y.sum(axis=0) > 0)
    chunks = [c for c in np.array_split(fit, max(1, jobs)) if len(c)]
    parts = Parallel(n_jobs=len(chunks))(delayed(_logistic_columns)(x, y[:, c], x_valid) for c in chunks)
    for c, part in zip(chunks, parts):
        out[:, c] = part
    return out


def fit_mlp(x: np.ndarray, y: np.ndarray, groups: np.ndarray, x_valid: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """An MLP early-stopped on the log loss of held-out training drugs; (predictions, best epoch)."""
    rng = np.random.default_rng(seed)
    drugs = np.unique(groups)
    held = np.isin(groups, rng.choice(drugs, max(1, int(MLP_VALIDATION_DRUGS * len(drugs))), replace=False))
    model = MLPClassifier(hidden_layer_sizes=MLP_HIDDEN, alpha=MLP_ALPHA, batch_size=MLP_BATCH,
                          learning_rate_init=MLP_LEARNING_RATE, random_state=seed)
    classes = np.arange(y.shape[1])
    best, best_state, best_epoch, waited = np.inf, None, 0, 0
    for epoch in range(1, MLP_MAX_EPOCHS + 1):
        model.partial_fit(x[~held], y[~held], classes=classes)
        loss = log_loss(y[held], np.clip(model.predict_proba(x[held]), *CLIP))
        if loss < best:
            best, best_epoch, waited = loss, epoch, 0
            best_state = ([w.copy() for w in model.coefs_], [b.copy() for b in model.intercepts_])
        else:
            waited += 1
            if waited >= MLP_PATIENCE:
                break
    model.coefs_, model.intercepts_ = best_state
    return model.predict_proba(x_valid), best_epoch


def _fit_mlp_single_thread(*args) -> tuple[np.ndarray, int]:
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    with threadpool_limits(1):
        return fit_mlp(*args)


def evaluate(name: str, data: MoaData, n_folds: int, seed: int, jobs: int) -> dict:
    """Out-of-fold losses of the four models on the treated rows of ``data``."""
    treated = np.flatnonzero(~data.train.is_control)
    x_all = inputs(data, treated)
    y_all = data.scored[treated].astype(np.float64)
    n_all = data.nonscored[treated].astype(np.float64)
    groups = data.drug_id[treated]
    folds = drug_folds(groups, data.scored[treated], FOLDS, seed)[:n_folds]
    log(f"{name}: {len(treated)} treated rows, {len(np.unique(groups))} drugs, {x_all.shape[1]} inputs, "
        f"{y_all.shape[1]} scored / {n_all.shape[1]} nonscored targets, {n_folds} of {FOLDS} drug-grouped folds")
    scored_rows = np.concatenate([valid for _, valid in folds])
    oof = {model: np.zeros((len(treated), y_all.shape[1])) for model in MODELS}
    seconds = {"prior": 0.0, "logistic": 0.0}
    epochs: dict[str, list[int]] = {"mlp": [], "oracle": []}
    per_fold: list[dict[str, float]] = []
    for k, (fit_rows, valid_rows) in enumerate(folds, start=1):
        scaler = StandardScaler().fit(x_all[fit_rows])
        x, x_valid = scaler.transform(x_all[fit_rows]), scaler.transform(x_all[valid_rows])
        y = y_all[fit_rows]

        start = time.perf_counter()
        oof["prior"][valid_rows] = y.mean(axis=0)
        seconds["prior"] += time.perf_counter() - start

        start = time.perf_counter()
        oof["logistic"][valid_rows] = fit_logistic(x, y, x_valid, jobs)
        seconds["logistic"] += time.perf_counter() - start
        log(f"{name} fold {k}/{n_folds}: logistic done ({time.perf_counter() - start:.0f} s)")

        # the network and its oracle twin (same seed, same inner split) run side by side
        start = time.perf_counter()
        x_oracle = np.hstack([x, n_all[fit_rows]])
        x_oracle_valid = np.hstack([x_valid, n_all[valid_rows]])
        runs = Parallel(n_jobs=min(jobs, 2))(delayed(_fit_mlp_single_thread)(a, y, groups[fit_rows], b, seed + k)
                                             for a, b in ((x, x_valid), (x_oracle, x_oracle_valid)))
        for model, (prediction, epoch) in zip(("mlp", "oracle"), runs):
            oof[model][valid_rows] = prediction
            epochs[model].append(epoch)
        seconds["mlp+oracle"] = seconds.get("mlp+oracle", 0.0) + time.perf_counter() - start
        fold_loss = {m: log_loss(y_all[valid_rows], np.clip(oof[m][valid_rows], *CLIP)) for m in MODELS}
        per_fold.append(fold_loss)
        log(f"{name} fold {k}/{n_folds}: mlp and oracle done ({time.perf_counter() - start:.0f} s, "
            f"best epochs {epochs['mlp'][-1]} / {epochs['oracle'][-1]}); fold losses "
            + ", ".join(f"{m} {fold_loss[m]:.5f}" for m in MODELS))

    losses = {model: log_loss(y_all[scored_rows], np.clip(oof[model][scored_rows], *CLIP)) for model in MODELS}
    ordered = losses["prior"] > losses["logistic"] > losses["mlp"] > losses["oracle"]
    result = {
        "dataset": name,
        "rows": int(len(treated)),
        "scored_rows": int(len(scored_rows)),
        "drugs": int(len(np.unique(groups))),
        "inputs": int(x_all.shape[1]),
        "scored_targets": int(y_all.shape[1]),
        "nonscored_targets": int(n_all.shape[1]),
        "folds": f"{n_folds} of {FOLDS}",
        "log_loss": losses,
        "log_loss_per_fold": per_fold,
        "folds_in_order": sum(f["prior"] > f["logistic"] > f["mlp"] > f["oracle"] for f in per_fold),
        "seconds": seconds,
        "best_epochs": epochs,
        "ordering_holds": bool(ordered),
    }
    log(f"{name}: " + ", ".join(f"{m} {losses[m]:.5f}" for m in MODELS) + f"  ordering holds: {ordered}")
    return result


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def markdown(results: list[dict], skipped: list[str], meta: dict) -> str:
    lines = [
        "# Synthetic data structure check",
        "",
        f"`bench/synth_structure.py{' --quick' if meta['quick'] else ''}`, seed {meta['seed']}, "
        f"{meta['elapsed_s']:.0f} s on {meta['cpus']} CPU(s). Treated rows, drug-aware folds (drugs with "
        f"<= {FREQUENT_DRUG_ROWS} rows kept whole, MultilabelStratifiedKFold over drugs; rows of frequent "
        "drugs stratified by row), mean column-wise log loss of the out-of-fold predictions, clipped to "
        f"[{CLIP[0]}, {CLIP[1]}]. Expected: prior > logistic > mlp > oracle.",
        "",
        "| dataset | rows | drugs | inputs | folds | prior | logistic | mlp | oracle (mlp + true nonscored) "
        "| ordering | folds in order |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        l = r["log_loss"]
        lines.append(f"| {r['dataset']} | {r['rows']} | {r['drugs']} | {r['inputs']} | {r['folds']} | "
                     f"{l['prior']:.5f} | {l['logistic']:.5f} | {l['mlp']:.5f} | {l['oracle']:.5f} | "
                     f"{'holds' if r['ordering_holds'] else 'BROKEN'} | "
                     f"{r['folds_in_order']}/{len(r['log_loss_per_fold'])} |")
    lines += ["", "Each step's improvement (lower loss) over the previous model:", ""]
    for r in results:
        l = r["log_loss"]
        lines.append(f"- {r['dataset']}: logistic {1 - l['logistic'] / l['prior']:.1%} below prior, "
                     f"mlp {1 - l['mlp'] / l['logistic']:.1%} below logistic, "
                     f"oracle {1 - l['oracle'] / l['mlp']:.1%} below mlp "
                     f"(mlp {1 - l['mlp'] / l['prior']:.1%} below prior)")
    lines += ["", f"semi-real: real labels of {REAL_LABELS.name}, synthetic features with "
              f"{SEMI_REAL_PRESET.n_genes} genes / {SEMI_REAL_PRESET.n_cells} cells (real: 772 / 100) to fit 2 CPUs."]
    for s in skipped:
        lines.append(f"\nSkipped: {s}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_FOLDS} of the {FOLDS} folds")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-semi-real", action="store_true", help="only the synthetic small preset")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (each single-threaded)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    n_folds = QUICK_FOLDS if args.quick else FOLDS
    began = time.perf_counter()
    results, skipped = [], []

    log("generating synthetic preset 'small'")
    results.append(evaluate("small", synth.generate("small", seed=args.seed), n_folds, args.seed, args.jobs))
    if args.no_semi_real:
        skipped.append("semi-real (--no-semi-real)")
    elif find_file(REAL_LABELS, "train_targets_scored") is None:
        message = f"semi-real: no real labels at {REAL_LABELS}"
        log(f"skipped {message}")
        skipped.append(message)
    else:
        log(f"generating semi-real data from {REAL_LABELS}")
        data = synth.generate(SEMI_REAL_PRESET, seed=args.seed, labels=REAL_LABELS)
        results.append(evaluate("semi-real", data, n_folds, args.seed, args.jobs))

    elapsed = time.perf_counter() - began
    meta = {"quick": args.quick, "seed": args.seed, "elapsed_s": elapsed, "cpus": os.cpu_count(),
            "python": platform.python_version(), "clip": CLIP, "logistic_C": LOGISTIC_C,
            "mlp": {"hidden": MLP_HIDDEN, "alpha": MLP_ALPHA, "batch": MLP_BATCH, "lr": MLP_LEARNING_RATE,
                    "max_epochs": MLP_MAX_EPOCHS, "patience": MLP_PATIENCE}}
    payload = {"meta": meta, "results": results, "skipped": skipped}
    atomic_write(RESULTS / "synth_structure.json", json.dumps(payload, indent=2) + "\n")
    table = markdown(results, skipped, meta)
    atomic_write(RESULTS / "synth_structure.md", table)
    print()
    print(table)
    log(f"done in {elapsed:.0f} s; wrote {RESULTS / 'synth_structure.json'} and .md")
    return 0 if all(r["ordering_holds"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
