"""Scaling across nodes: trials per hour with 1 and with 2 worker nodes of 1 CPU each.

A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head node with no CPU
for trials, plus worker nodes with one CPU each, every node its own raylet and object store), and
the same sweep through moa-tune's public API (:func:`moa_tune.sweep.run_sweep` with the
cluster's address): eight fixed MLP configurations on the ``small`` preset, FIFO, one CPU per
trial. Trials per hour with 2 worker nodes against 1. Target: >= 1.8x.

Each arm runs in a fresh process (a Ray driver connects to one cluster per process) with an empty
HOME: the Cluster's nodes run without token authentication.

Usage: python bench/scaling.py [--quick] [--epochs N] [--trials N]
Writes results/bench/scaling.json and .md (scaling-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import RESULTS, markdown_table, narrow_mlp_space, save  # noqa: E402

ARM = """
import json, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster
from moa_tune.sweep import run_sweep
from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep
from moa_tune.synth import generate

n_workers, raw, out = int(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
try:
    for _ in range(n_workers):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    spec = parse_sweep(raw, "<scaling>", SEARCH_SPACES / "sweeps")
    data = generate(raw["data"]["synth"], seed=0)
    start = time.perf_counter()
    result = run_sweep(spec, data, out / "results", storage=str(out / "ray"), emit=lambda line: None,
                       address=cluster.address)
    seconds = time.perf_counter() - start
    trials = result.trials
    print("RESULT " + json.dumps({"seconds": seconds, "trials": int(len(trials)),
                                  "completed": int((trials.state == "completed").sum()),
                                  "nodes": int(trials.node.nunique()), "trial_s": float(trials.time_s.mean())}))
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def run_arm(n_workers: int, raw: dict, work: Path) -> dict:
    env = {**os.environ, "HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_AUTH_MODE", None)
    done = subprocess.run([sys.executable, "-c", ARM, str(n_workers), json.dumps(raw), str(work / f"w{n_workers}")],
                          capture_output=True, text=True, env=env, timeout=3600)
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not found:
        raise SystemExit(f"the {n_workers}-node arm failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(found[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 3 folds: checks the script")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fold [6; quick: 2]")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and markdown [results/bench]")
    args = parser.parse_args()
    preset, n_splits = ("tiny", 3) if args.quick else ("small", 5)
    epochs = args.epochs or (2 if args.quick else 6)
    lrs = [round(1e-3 * (30 ** (i / max(1, args.trials - 1))), 6) for i in range(args.trials)]
    raw = {"name": "scaling", "data": {"synth": preset, "seed": 0}, "folds": {"n_splits": n_splits},
           "scheduler": "fifo", "seeds": [0], "max_failures": 0,
           "fixed": {"train.epochs": epochs, "train.early_stopping": 0, "train.batch_size": 128,
                     "model.n_layers": 2},
           "points_to_evaluate": {"mlp": [{"train.lr": lr, "model.hidden_size": 256} for lr in lrs]},
           "stages": [{"stage": "direct", "families": ["mlp"], "trials": args.trials}]}
    arms = {}
    with tempfile.TemporaryDirectory(prefix="moa-scaling-") as tmp:
        raw["search_spaces"] = {"mlp": narrow_mlp_space(Path(tmp))}
        for n_workers in (1, 2):
            print(f"{n_workers} worker node(s) of 1 CPU ...", flush=True)
            arm = run_arm(n_workers, raw, Path(tmp))
            arm["trials_per_hour"] = arm["completed"] / arm["seconds"] * 3600
            arms[n_workers] = arm
    speedup = arms[2]["trials_per_hour"] / arms[1]["trials_per_hour"]
    rows = [[f"{n} x 1 CPU", a["completed"], a["nodes"], f"{a['seconds']:.1f}", f"{a['trial_s']:.1f}",
             f"{a['trials_per_hour']:.0f}"] for n, a in arms.items()]
    lines = [f"{args.trials} fixed MLP trials, `{preset}` preset, {n_splits} folds, {epochs} epochs, FIFO, 1 CPU per "
             "trial; a head node without CPUs plus worker nodes (`ray.cluster_utils.Cluster`).", "",
             *markdown_table(["worker nodes", "trials", "nodes used", "sweep s", "mean trial s", "trials / hour"], rows),
             "", f"Speed-up with 2 worker nodes: **{speedup:.2f}x** (target >= 1.8x)."]
    report = {"preset": preset, "folds": n_splits, "epochs": epochs, "trials": args.trials,
              "arms": {str(n): a for n, a in arms.items()}, "speedup": speedup, "target": 1.8,
              "meets_target": speedup >= 1.8}
    save("scaling", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
