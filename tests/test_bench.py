"""The design benchmarks (bench/*.py of issue 7) run end to end on the tiny preset.

Each script runs as a user runs it (``python bench/X.py --quick``), into a temporary folder; the
figures themselves are the benchmarks' business, these tests check that every arm ran and that
what each script claims to compare is really comparable.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(out), *args],
                          capture_output=True, text=True, env=subprocess_env(tmp_path / "home"), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (out / f"{name}-quick.md").read_text().strip() in done.stdout  # the table is printed too
    return json.loads((out / f"{name}-quick.json").read_text())


def test_overhead_runs_the_same_networks_in_both_arms(tmp_path: Path) -> None:
    report = run_bench("overhead", tmp_path, "--configs", "2")
    assert report["configs"] == 2 and report["loop_wall_s"] > 0 and report["sweep_wall_s"] > 0
    # the sweep trained exactly the loop's configurations: same mean fold losses, one for one
    assert report["same_losses"], (report["loop_losses"], report["sweep_losses"])


def test_asha_value_counts_fold_trainings_of_both_schedulers(tmp_path: Path) -> None:
    report = run_bench("asha_value", tmp_path, "--seeds", "0", "--trials", "6", "--reduction-factors", "4")
    (seed,) = report["per_seed"]
    fifo, asha = seed["arms"]["fifo"], seed["arms"]["asha rf4"]
    assert fifo["folds_total"] == 6 * report["folds"] and fifo["stopped_early"] == 0  # FIFO trains every fold
    assert fifo["folds_to_target"] is not None and fifo["best"] == pytest.approx(seed["fifo_best"])
    # the rung at fold 1 keeps the top quarter so far: six trials all passing it is well under 1 in 100
    assert asha["stopped_early"] >= 1 and asha["folds_total"] <= fifo["folds_total"] - asha["stopped_early"]
    assert seed["bound"] >= 1 and report["ratios"].keys() == {"asha rf4"}


def test_vs_optuna_runs_three_arms_and_reads_each_study(tmp_path: Path) -> None:
    report = run_bench("vs_optuna", tmp_path, "--seeds", "0", "--budget-s", "15")
    arms = report["results"]["0"]
    assert set(arms) == {"optuna + SuccessiveHalving", "optuna + Hyperband", "moa-tune"}
    # a short budget on a loaded machine may end before moa-tune's first fold: trials started is enough there
    assert all(arm["trials"] >= 1 for arm in arms.values()) and arms["optuna + Hyperband"]["folds_trained"] >= 1
    for name in ("optuna + SuccessiveHalving", "optuna + Hyperband"):  # every trial trains what TPE proposed
        assert arms[name]["distinct_configs"] == arms[name]["trials"], arms[name]
    # moa-tune tells Optuna a trial that did not train every fold (stopped by ASHA, or cut by the budget) as
    # PRUNED, as plain Optuna does: only trials that trained every fold are COMPLETE
    moa = arms["moa-tune"]
    assert moa["states"].get("COMPLETE", 0) <= moa["full_trials"], moa
    assert moa["states"].get("PRUNED", 0) >= moa["stopped_early"] >= 0, moa
    assert all(arm["cut_by_budget"] <= 2 for arm in arms.values())  # at most the trials running at the end


def test_scaling_uses_one_then_two_worker_nodes(tmp_path: Path) -> None:
    report = run_bench("scaling", tmp_path, "--trials", "2")
    assert report["arms"]["1"]["nodes"] == 1 and report["arms"]["2"]["nodes"] == 2
    assert report["arms"]["1"]["completed"] == report["arms"]["2"]["completed"] == 2
    assert report["speedup"] > 0


def test_memory_sees_both_trials_and_the_object_store(tmp_path: Path) -> None:
    report = run_bench("memory", tmp_path)
    assert report["completed"] == 2 and len(report["trials"]) == 2  # this sweep's trial processes only
    assert all(t["rss"] > t["uss"] > 0 for t in report["trials"])
    assert report["object_store_samples"] >= 1, report["object_store_errors"]
    assert report["object_store_objects_peak"] >= 1


def test_gpu_packing_skips_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real benchmark runs instead (bench/gpu_packing.py)")
    report = run_bench("gpu_packing", tmp_path)
    assert "no CUDA GPU" in report["skipped"]


def test_techniques_compares_the_same_seeds_with_and_without_each_option(tmp_path: Path) -> None:
    # umap is left out here only for time (its numba code compiles for a minute); test_collect runs it in a sweep
    report = run_bench("techniques", tmp_path, "--datasets", "small", "--seeds", "0", "--arms", "fa", "mlsmote")
    d = report["datasets"]["small"]
    assert set(d["arms"]) == {"off", "fa", "mlsmote 0.3"} and d["rare_labels"] >= 1 and d["one_pass_amount"] > 0
    off = d["arms"]["off"]
    for arm in ("fa", "mlsmote 0.3"):  # the same seed, other features or rows: other losses, compared pairwise
        on = d["arms"][arm]
        assert len(off["losses"]) == len(on["losses"]) == 1 and off["losses"] != on["losses"]
        assert on["seeds_better"] in (0, 1) and f"{arm} lowers the mean CV loss" in d["claims"]


def test_main_job_scores_both_arms_on_held_out_drugs(tmp_path: Path) -> None:
    """bench/main_job.py: moa-tune's main job and the independent plain-Optuna script, same budget,
    both scored on drugs held out with their labels (figures: the README; here, that it all runs)."""
    report = run_bench("main_job", tmp_path, "--seeds", "0")
    arms = report["results"]["0"]
    assert set(arms) == {"moa-tune", "plain-optuna"}
    for arm in arms.values():
        assert 0 < arm["held_out"] < 1 and arm["wall_s"] > 0
    assert arms["moa-tune"]["split"].startswith("budget 90 s: used"), arms["moa-tune"]["split"]
    log = (tmp_path / "out" / "main_job-quick-seed0.log").read_text()  # the run's own output, kept
    assert arms["moa-tune"]["split"] in log and "[collect]" in log
    table = (tmp_path / "out" / "main_job-quick.md").read_text()
    assert "| 0 | moa-tune |" in table and "| 0 | plain-optuna |" in table, table  # a row per arm
    low, high = report["verdict"]["0"]["ratio_90"]
    assert report["verdict"]["0"]["ratio"] > 0 and 0 < low <= high


def test_the_held_out_ratio_interval_resamples_drugs() -> None:
    """bench/main_job.py's bootstrap of moa-tune / plain Optuna over the held-out drugs."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from main_job import ratio_interval

    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < 0.2).astype(float)
    labels = pd.DataFrame(y, columns=list("abcd"))
    labels.insert(0, "sig_id", [f"id{i}" for i in range(60)])
    groups = np.repeat(np.arange(20), 3).astype(str)
    good = np.where(y == 1, 0.6, 0.1)
    poor = np.where(y == 1, 0.3, 0.2)
    assert ratio_interval(labels, good, good, groups, seed=0) == (1.0, 1.0)
    low, high = ratio_interval(labels, good, poor, groups, seed=0)
    assert 0 < low < high < 1  # better on every drug: the whole interval below 1
    # better on half the drugs, worse on the rest: the interval straddles 1
    half = np.isin(groups, [str(g) for g in range(10)])[:, None]
    low, high = ratio_interval(labels, np.where(half, good, poor), np.where(half, poor, good), groups, seed=0)
    assert low < 1 < high
