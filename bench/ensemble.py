"""What the collector adds: does the blend beat its best component, and 5 seeds beat one?

For each dataset (the synthetic ``small`` preset; semi-real data: the real lish-moa labels and
drugs from ../shared/data/lish-moa-labels with synthetic features), through the public API:

1. a sweep (``moa_tune.sweep.run_sweep``) of the 3-stage scheme on a local Ray: stage 1 MLP,
   stage 2 with every family (MLP, 2-head ResNet, TabNet, linear), stage 3 linear stacker;
2. the collector (``moa_tune.collect.collect``): the top configurations retrained with 5 seeds,
   blended (Caruana and SLSQP, each cross-fitted across folds).

It prints and saves each scored component's 5-seed CV loss and single-seed losses, the best
single component, the blend's CV in-sample and cross-fitted, and the claims:
- the blend's cross-fitted CV beats the best single component by at least 1%;
- the 5-seed average beats a single seed for every scored component: against the mean of its
  single-seed losses (the expected single seed), and against seed 0 (one draw).

Usage: python bench/ensemble.py [--datasets small,semi-real] [--trials 3] [--epochs 12] [--folds 5]
                                [--seeds 5] [--top-k 1] [--quick] [--render-only]
Writes results/bench/ensemble.json and results/bench/ensemble.md (ensemble-quick.* with --quick). A
run of some datasets keeps the saved figures of the others; each dataset records its own settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moa_tune.io import write_json, write_text  # noqa: E402
from moa_tune.metric import log_loss, prior_predictions  # noqa: E402
from moa_tune.synth import PRESETS, generate  # noqa: E402

RESULTS = ROOT / "results" / "bench"
REAL_LABELS = ROOT.parent / "shared" / "data" / "lish-moa-labels"
SEMI_REAL_PRESET = dataclasses.replace(PRESETS["full"], name="semi-real", n_genes=200, n_cells=40)


def sweep_raw(name: str, args: argparse.Namespace) -> dict:
    families = ["mlp", "resnet2head", "tabnet", "linear"]
    return {
        "name": name, "folds": {"n_splits": args.folds, "scheme": "drug"}, "seed": 0,
        "seeds": list(range(args.seeds)), "asha": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1}, "max_failures": 0,
        "fixed": {"train.epochs": args.epochs, "train.early_stopping": 4},
        "stages": [{"stage": "stage1", "families": ["mlp"], "trials": args.trials},
                   {"stage": "stage2", "families": families, "trials": args.trials, "inputs": "best"},
                   {"stage": "stage3", "families": ["linear"], "trials": args.trials, "inputs": "per_family"}],
        "collect": {"top_k": args.top_k},
    }


def claims_of(components: list[dict], gain: float, seeds: int) -> dict[str, bool]:
    """The script's claims, from a dataset's saved figures (so older saved runs get them too)."""
    return {
        "blend (cross-fitted) beats the best component by >= 1%": gain >= 1.0,
        f"{seeds}-seed average beats a single seed (the mean single-seed loss; every scored component)":
            all(c["cv_loss"] < sum(c["seed_losses"]) / len(c["seed_losses"]) for c in components),
        f"{seeds}-seed average beats seed 0 (every scored component)":
            all(c["cv_loss"] < c["seed_losses"][0] for c in components),
    }


def evaluate(name: str, data, args: argparse.Namespace, workdir: Path, log) -> dict:
    from moa_tune.collect import collect
    from moa_tune.folds import Folds
    from moa_tune.sweep import run_sweep
    from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep

    spec = parse_sweep(sweep_raw(name, args), f"<bench {name}>", SEARCH_SPACES / "sweeps")
    out = workdir / name
    start = time.perf_counter()
    run_sweep(spec, data, out, emit=lambda line: log(f"[{name}] {line}") if " best " in line else None)
    sweep_s = time.perf_counter() - start
    result = collect(out, data=data, emit=lambda line: log(f"[{name}] {line}") if "average" in line
                     or "blend" in line else None)
    collect_s = time.perf_counter() - start - sweep_s
    used = Folds.load(out / "folds.npz").used
    y = data.scored[used]
    prior = log_loss(y, prior_predictions(y, len(y)))
    table = result.components
    scored = table[table.stage != "stage1"]
    components = [{"id": r.id, "cv_loss": float(r.cv_loss), "seed_losses": [float(x) for x in r.seed_losses.split(";")],
                   "weight": float(r.weight)} for r in scored.itertuples()]
    fitted = result.blend
    best_id, best_loss = fitted.best_component
    gain = (best_loss - fitted.cross_fitted_loss) / best_loss * 100
    claims = claims_of(components, gain, args.seeds)
    return {"rows": int(used.sum()), "targets": data.n_scored, "prior": prior, "components": components,
            "best_component": {"id": best_id, "loss": best_loss},
            "blend": {m: {"loss": r.loss, "cross_fitted_loss": r.cross_fitted_loss}
                      for m, r in fitted.methods.items()},
            "chosen": fitted.chosen, "blend_loss": fitted.loss, "blend_cross_fitted_loss": fitted.cross_fitted_loss,
            "gain_percent": gain, "claims": claims, "seconds": {"sweep": sweep_s, "collect": collect_s}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="small,semi-real")
    parser.add_argument("--trials", type=int, default=3, help="trials per family x stage")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing: rewrite the .md (and claims) from the saved .json")
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 trials, 2 epochs, 3 folds, 2 seeds")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.folds, args.seeds = 2, 2, 3, 2

    def log(line: str) -> None:
        print(line, flush=True)

    import ray

    from moa_tune.ray_session import start_or_join

    settings = {k: getattr(args, k) for k in ("trials", "epochs", "folds", "seeds", "top_k")}
    report: dict = {"cpus": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
                    "datasets": {}}
    names_to_run = [] if args.render_only else args.datasets.split(",")
    if names_to_run:
        start_or_join(None, None)
    try:
        with tempfile.TemporaryDirectory(prefix="moa-ensemble-bench-") as tmp:
            for name in names_to_run:
                if name == "small":
                    data = generate("tiny" if args.quick else "small", seed=0)
                elif name == "semi-real":
                    if not (REAL_LABELS / "train_targets_scored.csv.zip").is_file():
                        log(f"semi-real: skipped, no real labels at {REAL_LABELS}")
                        continue
                    data = generate(SEMI_REAL_PRESET, seed=0, labels=REAL_LABELS)
                else:
                    raise SystemExit(f"unknown dataset {name!r} (small, semi-real)")
                dataset_start = time.perf_counter()
                result = evaluate(name, data, args, Path(tmp), log)
                result["settings"] = dict(settings)
                result["minutes"] = (time.perf_counter() - dataset_start) / 60
                result["date"] = report["date"]
                report["datasets"][name] = result
    finally:
        if names_to_run:
            ray.shutdown()

    suffix = "-quick" if args.quick else ""
    # a run of some datasets keeps the saved figures of the others (each records its own settings)
    saved = RESULTS / f"ensemble{suffix}.json"
    if saved.is_file():
        saved_report = json.loads(saved.read_text())
        previous = saved_report.get("datasets", {})
        report["datasets"] = {**{k: v for k, v in previous.items() if k not in report["datasets"]},
                              **report["datasets"]}
        if args.render_only:
            report = {**saved_report, "datasets": report["datasets"]}
    report.pop("settings", None)  # each dataset records its own settings and minutes
    report.pop("seconds", None)
    names = [n for n in ("small", "semi-real") if n in report["datasets"]]
    lines = ["Sweep of the 3-stage scheme (drug-aware CV), then the collector: the top configurations per "
             "family x stage retrained with several seeds and blended. Treated rows' out-of-fold log loss.", ""]
    for name in names:
        d = report["datasets"][name]
        st = d["settings"]
        minutes = f", {d['minutes']:.0f} min on {report['cpus']} CPUs" if "minutes" in d else ""
        lines += [f"**{name}** ({d['rows']:,} rows, {d['targets']} targets; prior {d['prior']:.6f}; "
                  f"{st['trials']} trials per family x stage, {st['epochs']} epochs max, {st['folds']} folds, "
                  f"top {st['top_k']} x {st['seeds']} seeds{minutes})", "",
                  f"| component | {st['seeds']}-seed CV | seed 0 | single-seed mean | blend weight |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for c in d["components"]:
            seeds = c["seed_losses"]
            lines.append(f"| {c['id']} | {c['cv_loss']:.6f} | {seeds[0]:.6f} | {sum(seeds) / len(seeds):.6f} | "
                         f"{c['weight']:.3f} |")
        for m, r in d["blend"].items():
            lines.append(f"| blend {m}{' (chosen)' if m == d['chosen'] else ''} | {r['loss']:.6f} | "
                         f"cross-fitted {r['cross_fitted_loss']:.6f} | | |")
        lines += ["", f"Best component {d['best_component']['id']} {d['best_component']['loss']:.6f}; blend "
                  f"cross-fitted {d['blend_cross_fitted_loss']:.6f}: **{d['gain_percent']:+.2f}%**.", ""]
        d["claims"] = claims_of(d["components"], d["gain_percent"], st["seeds"])
        for claim, ok in d["claims"].items():
            lines.append(f"- {claim}: {'yes' if ok else '**no**'}")
        lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"ensemble{suffix}.json", report)
    write_text(RESULTS / f"ensemble{suffix}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
