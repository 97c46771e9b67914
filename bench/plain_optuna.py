"""Plain-Optuna baseline for Kaggle lish-moa (Mechanisms of Action), written as a
standalone outsider script: TPE + successive halving over fold-by-fold CV of a
torch MLP, then a 3-seed refit of the best configuration, all inside --budget-s.

    python plain_optuna.py --data DIR --budget-s 600 --seed 0 --out sub.csv --json summary.json
"""
import argparse
import json
import math
import os
import time

T0 = time.time()  # the budget counts from here (imports included)

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--data", required=True)
ap.add_argument("--budget-s", type=float, required=True)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--folds", type=int, default=5)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--out", default=None)
ap.add_argument("--json", default=None)
ARGS = ap.parse_args()
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before numpy loads BLAS
    os.environ[_v] = str(ARGS.threads)

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.feature_selection import VarianceThreshold  # noqa: E402
from sklearn.preprocessing import QuantileTransformer  # noqa: E402

torch.set_num_threads(ARGS.threads)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REFIT_SEEDS = 3
SAFETY = 1.10                                   # slack on measured-time estimates
MARGIN = 1.0 + 0.01 * ARGS.budget_s             # seconds kept for predicting/writing
EPS = 1e-15


class OutOfTime(Exception):
    """A trial (or refit seed) that would overrun the budget is abandoned."""


def elapsed():
    return time.time() - T0


def read(name, required=True):
    for ext in (".csv", ".csv.zip", ".csv.gz"):
        path = os.path.join(ARGS.data, name + ext)
        if os.path.exists(path):
            return pd.read_csv(path)
    if required:
        raise FileNotFoundError(f"{name}.csv[.zip|.gz] not found in {ARGS.data}")
    return None


# ---------------------------------------------------------------- data
train = read("train_features")
targets = read("train_targets_scored").set_index("sig_id").loc[train.sig_id]
test = read("test_features")
drug = read("train_drug", required=False)
TARGETS = list(targets.columns)
GENES = [c for c in train.columns if c.startswith("g-")]
CELLS = [c for c in train.columns if c.startswith("c-")]

trt = (train.cp_type != "ctl_vehicle").values   # controls: all-zero targets, predicted 0
X_all = train[trt].reset_index(drop=True)
Y = targets.values[trt].astype(np.float32)
DRUGS = None
if drug is not None:  # a row missing from the drug file counts as its own drug
    DRUGS = drug.set_index("sig_id")["drug_id"].reindex(X_all.sig_id).to_numpy(dtype=object)
    DRUGS = np.where(pd.isna(DRUGS), X_all.sig_id.to_numpy(dtype=object), DRUGS)
test_trt = (test.cp_type != "ctl_vehicle").values
X_test = test[test_trt].reset_index(drop=True)


def metric(y_true, p):
    """Mean column-wise binary log loss (= mean over all cells), predictions clipped."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))


def full_cv(oof_trt):
    """Competition-style CV: computed on ALL train rows, control rows included and
    predicted 0 (their targets are all 0), i.e. diluted exactly like the leaderboard."""
    p = np.zeros(targets.shape, dtype=np.float64)
    p[trt] = oof_trt
    return metric(targets.values.astype(np.float64), p)


def make_folds(seed, k=ARGS.folds):
    fold = np.full(len(Y), -1)
    mskf = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    if DRUGS is None:
        for f, (_, va) in enumerate(mskf.split(Y, Y)):
            fold[va] = f
    else:
        # Drug-aware (Deotte-style): drugs with <=18 rows are stratified as whole
        # drugs on their (binarised) label profile, so replicates never straddle
        # train/valid; rows of very frequent drugs are stratified row by row.
        vc = pd.Series(DRUGS).value_counts()
        small = vc.index[vc <= 18]
        dfy = pd.DataFrame(Y).assign(drug=DRUGS)
        dm = (dfy[dfy.drug.isin(small)].groupby("drug").mean() > 0).astype(int)
        if len(dm) >= k:
            d2f = {}
            for f, (_, va) in enumerate(mskf.split(dm, dm.values)):
                d2f.update({d: f for d in dm.index[va]})
            small_rows = np.isin(DRUGS, small)
            fold[small_rows] = [d2f[d] for d in DRUGS[small_rows]]
        big = np.where(fold < 0)[0]
        if len(big) >= k:
            for f, (_, va) in enumerate(mskf.split(big, Y[big])):
                fold[big[va]] = f
        fold[fold < 0] = np.arange((fold < 0).sum()) % k
    return [(np.where(fold != f)[0], np.where(fold == f)[0]) for f in range(k)]


def preprocess(p, tr, others, seed):
    """Fit all transforms on the fold's training rows only; apply to the others."""
    def cat(df):
        return np.stack([df.cp_time.values == 24, df.cp_time.values == 48,
                         df.cp_dose.values == "D1"], 1).astype(np.float32)
    qt = QuantileTransformer(n_quantiles=min(p["n_quantiles"], len(tr)),
                             output_distribution="normal", random_state=seed)
    qt.fit(tr[GENES + CELLS].values)
    blocks = [[] for _ in range(1 + len(others))]
    dfs = [tr] + others
    q = [qt.transform(d[GENES + CELLS].values) for d in dfs]
    ng = len(GENES)
    for b, qi in zip(blocks, q):
        b.append(qi)
    for name, sl in (("pca_g", slice(0, ng)), ("pca_c", slice(ng, None))):
        n = min(p[name], q[0][:, sl].shape[1], len(tr) - 1)
        if n > 0:
            pca = PCA(n_components=n, random_state=seed).fit(q[0][:, sl])
            for b, qi in zip(blocks, q):
                b.append(pca.transform(qi[:, sl]))
    num = [np.hstack(b) for b in blocks]
    if p["var_thresh"]:
        try:
            vt = VarianceThreshold(0.8).fit(num[0])
            num = [vt.transform(x) for x in num]
        except ValueError:  # nothing passes: keep all
            pass
    return [np.hstack([cat(d), x]).astype(np.float32) for d, x in zip(dfs, num)]


def build_model(p, n_in, n_out):
    act = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}[p["activation"]]

    def lin(a, b):
        layer = nn.Linear(a, b)
        return nn.utils.parametrizations.weight_norm(layer) if p["weight_norm"] else layer
    layers, d = [], n_in
    for _ in range(p["depth"]):
        layers += [nn.BatchNorm1d(d), nn.Dropout(p["dropout"]), lin(d, p["hidden"]), act()]
        d = p["hidden"]
    layers += [nn.BatchNorm1d(d), nn.Dropout(p["dropout"]), lin(d, n_out)]
    return nn.Sequential(*layers).to(DEVICE)


def predict(model, x):
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x).to(DEVICE))).cpu().numpy()


def fit_fold(p, xtr, ytr, xva, yva, seed, on_epoch=None):
    torch.manual_seed(seed)
    model = build_model(p, xtr.shape[1], ytr.shape[1])
    opt_cls = torch.optim.AdamW if p["optimizer"] == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    bs, epochs = p["batch_size"], p["epochs"]
    steps = math.ceil(len(xtr) / bs)
    # a warm-up of at least 2 steps: OneCycleLR divides by its length - 1 (one batch per epoch, 10 epochs: 0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["lr"], epochs=epochs, steps_per_epoch=steps,
                                                pct_start=max(0.1, 2.0 / (epochs * steps)), div_factor=1e3)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(xtr).to(DEVICE), torch.from_numpy(ytr).to(DEVICE)
    yt = yt * (1 - p["label_smoothing"]) + 0.5 * p["label_smoothing"]
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_ep, patience = np.inf, None, 0, max(5, epochs // 4)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen).to(DEVICE)
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            if len(idx) > 1:  # BatchNorm needs >1 row
                opt.zero_grad()
                loss_fn(model(xt[idx]), yt[idx]).backward()
                opt.step()
            sched.step()
        val = metric(yva, predict(model, xva))   # fold valid loss (treated rows only)
        if val < best:
            best, best_ep = val, ep
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(ep + 1, epochs)
        if ep - best_ep >= patience:
            break
    model.load_state_dict(best_state)
    return model


def run_cv(p, folds, seed, trial=None, with_test=False, guard=None):
    """Fold-by-fold CV. Returns (oof on treated rows, test preds or None, fold seconds)."""
    oof, te, losses, times = np.zeros_like(Y), np.zeros((len(X_test), Y.shape[1])), [], []
    for k, (tr, va) in enumerate(folds):
        t = time.time()
        others = [X_all.iloc[va]] + ([X_test] if with_test else [])
        xs = preprocess(p, X_all.iloc[tr], others, seed + k)
        t_fit = time.time()  # projected fold time = preprocessing + per-epoch time x epochs
        cb = None if guard is None else (
            lambda e, n, k=k, t=t, t_fit=t_fit: guard(times, k, (t_fit - t) + (time.time() - t_fit) * n / e))
        model = fit_fold(p, xs[0], Y[tr], xs[1], Y[va], seed * 100 + k, cb)
        oof[va] = predict(model, xs[1])
        if with_test:
            te += predict(model, xs[2]) / len(folds)
        losses.append(metric(Y[va], oof[va]))
        times.append(time.time() - t)
        if trial is not None:
            trial.set_user_attr("cv_s_est", float(np.mean(times)) * len(folds))
            # resource = number of folds done; value = running mean of fold valid losses
            trial.report(float(np.mean(losses)), k + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return oof, (te if with_test else None), times


# ---------------------------------------------------------------- search
def best_cv_seconds(study):
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return min(done, key=lambda t: t.value).user_attrs["cv_s_est"] if done else 0.0


def cheapest_cv_seconds(study):
    """Smallest full-CV time (from measured fold times) of any trial so far; 0 if none."""
    return min([t.user_attrs["cv_s_est"] for t in study.trials if "cv_s_est" in t.user_attrs], default=0.0)


def refit_reserve(study):
    """Seconds to keep for the refit: REFIT_SEEDS x full-CV time of the best config
    (of the cheapest seen while nothing has completed)."""
    cv_s = best_cv_seconds(study) if any_complete(study) else cheapest_cv_seconds(study)
    return REFIT_SEEDS * SAFETY * cv_s


def objective(trial):
    p = {
        "n_quantiles": trial.suggest_categorical("n_quantiles", [50, 100, 200, 500, 1000]),
        "pca_g": trial.suggest_int("pca_g", 0, max(1, int(0.8 * len(GENES)))),
        "pca_c": trial.suggest_int("pca_c", 0, max(1, int(0.6 * len(CELLS)))),
        "var_thresh": trial.suggest_categorical("var_thresh", [False, True]),
        "hidden": trial.suggest_int("hidden", 256, 2048, log=True),
        "depth": trial.suggest_int("depth", 1, 4),
        "dropout": trial.suggest_float("dropout", 0.1, 0.6),
        "activation": trial.suggest_categorical("activation", ["relu", "leaky_relu", "silu"]),
        "weight_norm": trial.suggest_categorical("weight_norm", [False, True]),
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "adamw"]),
        "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256, 512]),
        "epochs": trial.suggest_int("epochs", 10, 40),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.01),
    }
    t_start, best_s = time.time(), best_cv_seconds(trial.study)

    def guard(times, k, fold_est):
        # Called after every epoch. Project this trial's full-CV time; should it
        # become the best, the refit costs REFIT_SEEDS x that, so reserve the larger.
        total = sum(times) + fold_est * (ARGS.folds - k)
        remaining = max(0.0, total - (time.time() - t_start))
        refit = REFIT_SEEDS * SAFETY * max(best_s, total)
        if elapsed() + remaining + refit + MARGIN > ARGS.budget_s:
            trial.set_user_attr("cv_s_projected", total)  # informative only
            raise OutOfTime()

    oof, _, _ = run_cv(p, FOLDS, ARGS.seed, trial=trial, guard=guard)
    return full_cv(oof)


def stop_when_out_of_time(study, t):
    # Stop once even the cheapest configuration measured so far could not run and
    # still leave the refit time. (Trials that are too slow are abandoned by their
    # own guard, so unmeasured ones cost at most about one epoch each.) Safety net
    # for budgets too small for the data: if nothing has completed by half the
    # budget, stop and refit a default configuration instead.
    if elapsed() + cheapest_cv_seconds(study) + refit_reserve(study) + MARGIN > ARGS.budget_s:
        study.stop()
    elif not any_complete(study) and elapsed() > 0.5 * ARGS.budget_s:
        study.stop()


def log_trial(study, t):
    val = "" if t.value is None else f"{t.value:.6f}"
    state = "ABANDONED" if t.state == optuna.trial.TrialState.FAIL else t.state.name
    last = max(t.intermediate_values.items(), default=(0, float("nan")))
    print(f"trial {t.number:3d} {state:9s} cv={val:9s} folds={last[0]} "
          f"fold_mean={last[1]:.6f} best={study.best_value if any_complete(study) else float('nan'):.6f} "
          f"elapsed={elapsed():.1f}s", flush=True)


def any_complete(study):
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


optuna.logging.set_verbosity(optuna.logging.ERROR)
FOLDS = make_folds(ARGS.seed)
print(f"data: {len(train)} train rows ({trt.sum()} treated), {len(GENES)} genes, {len(CELLS)} cells, "
      f"{len(TARGETS)} targets, {len(test)} test rows, drug file: {DRUGS is not None}, "
      f"device={DEVICE}, threads={ARGS.threads}, budget={ARGS.budget_s:.0f}s", flush=True)
study = optuna.create_study(direction="minimize",
                            sampler=optuna.samplers.TPESampler(seed=ARGS.seed),
                            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
t_search = time.time()
# an abandoned (OutOfTime) trial is recorded as FAIL and the search goes on with cheaper ones
study.optimize(objective, catch=(OutOfTime,), callbacks=[log_trial, stop_when_out_of_time])
search_s = time.time() - t_search

DEFAULT = {"n_quantiles": 100, "pca_g": int(0.6 * len(GENES)), "pca_c": int(0.5 * len(CELLS)),
           "var_thresh": False, "hidden": 512, "depth": 2, "dropout": 0.25, "activation": "relu",
           "weight_norm": True, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-5,
           "batch_size": 128, "epochs": 15, "label_smoothing": 0.001}
if any_complete(study):
    best_params, best_value, seed_est = study.best_params, study.best_value, best_cv_seconds(study)
else:  # nothing finished in time: fall back to a common public-notebook configuration
    print("no trial completed; refitting a default configuration", flush=True)
    best_params, best_value, seed_est = DEFAULT, None, 0.0

# ---------------------------------------------------------------- refit
t_refit = time.time()
oofs, tests, seed_cv, seed_times = [], [], [], []
for s in range(REFIT_SEEDS):
    seed = ARGS.seed + s
    t_seed = time.time()

    def refit_guard(times, k, fold_est):
        remaining = sum(times) + fold_est * (ARGS.folds - k) - (time.time() - t_seed)
        if elapsed() + remaining + MARGIN > ARGS.budget_s:
            raise OutOfTime()
    if s > 0:  # the first seed always runs; later ones only if they fit
        est = SAFETY * max([seed_est] + seed_times)
        if elapsed() + est + MARGIN > ARGS.budget_s:
            print(f"refit seed {seed}: skipped (needs ~{est:.1f}s) elapsed={elapsed():.1f}s", flush=True)
            break
    try:
        oof, te, _ = run_cv(best_params, make_folds(seed), seed, with_test=True,
                            guard=refit_guard if s > 0 else None)
    except OutOfTime:
        print(f"refit seed {seed}: abandoned (would overrun) elapsed={elapsed():.1f}s", flush=True)
        break
    seed_times.append(time.time() - t_seed)
    oofs.append(oof)
    tests.append(te)
    seed_cv.append(full_cv(oof))
    print(f"refit seed {seed}: cv={seed_cv[-1]:.6f} seed_s={seed_times[-1]:.1f} "
          f"elapsed={elapsed():.1f}s", flush=True)
refit_s = time.time() - t_refit
refit_cv = full_cv(np.mean(oofs, axis=0))   # OOF of the seed-averaged refit, all train rows

# ---------------------------------------------------------------- outputs
pred = np.zeros((len(test), len(TARGETS)))
pred[test_trt] = np.mean(tests, axis=0)      # mean over seeds (each already mean over folds)
if ARGS.out:
    sub = pd.DataFrame(pred, columns=TARGETS)
    sub.insert(0, "sig_id", test.sig_id.values)
    sub.to_csv(ARGS.out, index=False)
states = [t.state for t in study.trials]
summary = {
    "best_params": best_params,
    "best_cv": best_value,
    "n_trials_complete": states.count(optuna.trial.TrialState.COMPLETE),
    "n_trials_pruned": states.count(optuna.trial.TrialState.PRUNED),
    "n_trials_abandoned": states.count(optuna.trial.TrialState.FAIL),
    "search_s": round(search_s, 2),
    "refit_s": round(refit_s, 2),
    "refit_seeds": len(seed_cv),
    "refit_seed_cv": seed_cv,
    "refit_cv": refit_cv,
    "cv_rows": "all train rows, controls included and predicted 0",
    "folds": ARGS.folds,
    "drug_aware_folds": DRUGS is not None,
    "budget_s": ARGS.budget_s,
    "total_s": round(elapsed(), 2),
}
if ARGS.json:
    with open(ARGS.json, "w") as f:
        json.dump(summary, f, indent=2)
print(f"done: best_cv={best_value} refit_cv={refit_cv:.6f} seeds={len(seed_cv)} "
      f"trials complete={summary['n_trials_complete']} pruned={summary['n_trials_pruned']} "
      f"total={summary['total_s']:.1f}s", flush=True)
