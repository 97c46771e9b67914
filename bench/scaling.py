"""Scaling across nodes: trials per hour with 1 and with 2 worker nodes of 1 CPU each.

A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head node with no CPU
for trials, plus worker nodes with one CPU each, every node its own raylet and object store), and
the same sweep through moa-tune's public API (:func:`moa_tune.sweep.run_sweep` with the
cluster's address): eight fixed MLP configurations on the ``small`` preset, FIFO, one CPU per
trial. Trials per hour while trials run (from the first trial's start to the last one's end, by
Tune's per-report timestamps), with 2 worker nodes against 1. Target: >= 1.8x. The end-to-end
figure, with each sweep's fixed cost, is shown too.

Each arm runs in a fresh process (a Ray driver connects to one cluster per process) with an empty
HOME: the Cluster's nodes run without token authentication.

Usage: python bench/scaling.py [--quick] [--epochs N] [--trials N]
Writes results/bench/scaling.json and .md (scaling-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import bench_parser, lr_ladder, markdown_table, narrow_mlp_space, save, scale  # noqa: E402

ARM = """
import json, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster
from moa_tune.sweep import run_sweep
from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep
from moa_tune.synth import generate
sys.path.insert(0, sys.argv[4])
from benchkit import trial_reports, trials_span

n_workers, raw, out = int(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
# the head holds no trial; without its dashboard, fewer daemons compete with the trials for this
# machine's cores (on a real cluster the head is a machine of its own)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
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
    span = trials_span(trial_reports(trials))
    print("RESULT " + json.dumps({"seconds": seconds, "span": span, "trials": int(len(trials)),
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
    done = subprocess.run([sys.executable, "-c", ARM, str(n_workers), json.dumps(raw), str(work / f"w{n_workers}"),
                           str(Path(__file__).resolve().parent)],
                          capture_output=True, text=True, env=env, timeout=3600)
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not found:
        raise SystemExit(f"the {n_workers}-node arm failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(found[-1][len("RESULT "):])


def main() -> None:
    parser = bench_parser(__doc__, epochs=12)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    preset, n_splits, epochs = scale(args)
    lrs = lr_ladder(args.trials)
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
            arm["trials_per_hour"] = arm["completed"] / arm["span"] * 3600
            arm["trials_per_hour_end_to_end"] = arm["completed"] / arm["seconds"] * 3600
            arms[n_workers] = arm
    speedup = arms[2]["trials_per_hour"] / arms[1]["trials_per_hour"]
    end_to_end = arms[2]["trials_per_hour_end_to_end"] / arms[1]["trials_per_hour_end_to_end"]
    rows = [[f"{n} x 1 CPU", a["completed"], a["nodes"], f"{a['seconds']:.1f}", f"{a['span']:.0f}",
             f"{a['trial_s']:.1f}", f"{a['trials_per_hour']:.0f}", f"{a['trials_per_hour_end_to_end']:.0f}"]
            for n, a in arms.items()]
    lines = [f"{args.trials} fixed MLP trials, `{preset}` preset, {n_splits} folds, {epochs} epochs, FIFO, 1 CPU per "
             "trial; a head node without CPUs plus worker nodes (`ray.cluster_utils.Cluster`).", "",
             *markdown_table(["worker nodes", "trials", "nodes used", "sweep s", "trials s", "mean trial s",
                              "trials / hour", "end to end"], rows), "",
             f"Speed-up with 2 worker nodes: **{speedup:.2f}x** in trials per hour while trials run (target >= 1.8x); "
             f"{end_to_end:.2f}x end to end, with each sweep's fixed cost (connecting, starting the first actor on "
             "each node, writing results) in this short sweep."]
    report = {"preset": preset, "folds": n_splits, "epochs": epochs, "trials": args.trials,
              "arms": {str(n): a for n, a in arms.items()}, "speedup": speedup, "end_to_end_speedup": end_to_end, "target": 1.8,
              "meets_target": speedup >= 1.8}
    save("scaling", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
