"""Memory of a sweep at the ``full`` preset: peak per trial, and the object store's share of it.

A local Ray (2 CPUs) runs a sweep through moa-tune's public API (:func:`moa_tune.sweep.run_sweep`)
on the ``full`` preset (23,814 train rows, 772 genes, 100 cells: the real data's size), two trials
at once. While it runs, every half second this samples:

- each trial process (Ray's ``ImplicitFunc`` workers): resident memory (RSS), the part no other
  process shares (USS), and the shared rest (RSS - USS, which includes the object-store pages a
  trial maps rather than copies);
- the object store: bytes and objects in use (``ray memory --stats-only``).

The dataset is put in the object store once (``tune.with_parameters``) and every trial maps it
read-only: object-store use stays about one dataset, not one per trial. The peak USS per trial
is what each extra concurrent trial costs.

Usage: python bench/memory.py [--quick] [--epochs N]
Writes results/bench/memory.json and .md (memory-quick.* with --quick: tiny preset).
"""
from __future__ import annotations

import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import bench_parser, markdown_table, save  # noqa: E402

MIB = 2 ** 20


def data_bytes(data) -> int:
    """Bytes of every array of a MoaData (features, metadata, targets)."""
    seen: set[int] = set()
    total = 0

    def walk(value, depth: int = 0) -> None:
        nonlocal total
        if depth > 3 or id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name), depth + 1)

    walk(data)
    return total


class Sampler(threading.Thread):
    """Peak memory of Ray's trial processes and of the object store, sampled until stopped."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.trials: dict[int, dict[str, float]] = {}
        self.store_peak = 0
        self.store_objects_peak = 0
        self.store_samples = 0
        self.store_errors: list[str] = []
        self.samples = 0

    def _store(self) -> tuple[int, int]:
        import ray
        from ray._private.internal_api import memory_summary

        # this sweep's Ray by its address (other Rays may run on the machine)
        text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
        found = re.search(r"Plasma memory usage (\d+) MiB, (\d+) objects", text)
        if not found:
            raise ValueError(f"unexpected `ray memory` summary: {text[:200]!r}")
        return int(found.group(1)) * MIB, int(found.group(2))

    def run(self) -> None:
        import ray

        me = psutil.Process()
        while not self.stop.is_set():
            # this sweep's Ray runs under this process (raylet -> workers): other Rays on the machine do not count
            for proc in me.children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                    if "ImplicitFunc" not in title and proc.pid not in self.trials:
                        continue
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                peak = self.trials.setdefault(proc.pid, {"rss": 0, "uss": 0, "shared": 0})
                peak["rss"] = max(peak["rss"], info.rss)
                peak["uss"] = max(peak["uss"], info.uss)
                peak["shared"] = max(peak["shared"], info.rss - info.uss)
            if ray.is_initialized():  # the sweep starts (and at its end stops) Ray in this process
                try:
                    used, objects = self._store()
                    self.store_peak = max(self.store_peak, used)
                    self.store_objects_peak = max(self.store_objects_peak, objects)
                    self.store_samples += 1
                except Exception as exc:  # noqa: BLE001 - Ray between states; the next sample counts
                    self.store_errors.append(f"{type(exc).__name__}: {exc}"[:300])
            self.samples += 1
            self.stop.wait(self.interval)


def main() -> None:
    parser = bench_parser(__doc__, epochs=1, quick_epochs=1)  # memory does not grow with epochs
    args = parser.parse_args()
    preset, epochs = "tiny" if args.quick else "full", args.epochs or 1

    from moa_tune.sweep import run_sweep
    from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep
    from moa_tune.synth import generate

    data = generate(preset, seed=0)
    size = data_bytes(data)
    raw = {"name": "memory", "data": {"synth": preset, "seed": 0}, "folds": {"n_splits": 3}, "scheduler": "fifo",
           "seeds": [0], "max_concurrent": 2, "fixed": {"train.epochs": epochs, "train.early_stopping": 0},
           "points_to_evaluate": {"mlp": [{"model.hidden_size": 1024, "model.n_layers": 2, "features.scaler": "rankgauss",
                                           "search.pca": True, "features.gene_pca": 100, "features.cell_pca": 20}] * 2},
           "stages": [{"stage": "direct", "families": ["mlp"], "trials": 2}]}
    spec = parse_sweep(raw, "<memory>", SEARCH_SPACES / "sweeps")
    print(f"{preset}: {len(data.train):,} train rows, {data.train.n_genes} genes, {data.train.n_cells} cells; "
          f"{size / MIB:.0f} MiB of arrays. Sweep: 2 MLP trials at once ...", flush=True)
    sampler = Sampler()
    sampler.start()
    try:
        with tempfile.TemporaryDirectory(prefix="moa-memory-") as tmp:
            start = time.perf_counter()
            result = run_sweep(spec, data, Path(tmp) / "results", storage=str(Path(tmp) / "ray"), num_cpus=2,
                               emit=lambda line: None)
            seconds = time.perf_counter() - start
    finally:
        sampler.stop.set()
        sampler.join(timeout=10)
    if not sampler.trials:
        raise SystemExit("no trial process was seen (Ray's ImplicitFunc workers)")
    trials = sorted(sampler.trials.values(), key=lambda p: -p["rss"])
    rows = [[f"trial process {i + 1}", f"{p['rss'] / MIB:.0f}", f"{p['uss'] / MIB:.0f}", f"{p['shared'] / MIB:.0f}"]
            for i, p in enumerate(trials)]
    ratio = sampler.store_peak / size
    lines = [f"`{preset}` preset ({len(data.train):,} train rows, {data.train.n_genes} genes, {data.train.n_cells} cells; "
             f"{size / MIB:.0f} MiB of arrays), 2 MLP trials at once (hidden 1024, PCA 100 + 20), 3 folds, "
             f"{epochs} epoch(s); {sampler.samples} samples over {seconds:.0f} s.", "",
             *markdown_table(["process", "peak RSS MiB", "peak USS MiB", "peak shared MiB"], rows), "",
             f"Object store at its peak: **{sampler.store_peak / MIB:.0f} MiB** in {sampler.store_objects_peak} objects, "
             f"{ratio:.2f}x the dataset with {len(trials)} trial processes (one copy, mapped by every trial)."]
    report = {"preset": preset, "rows": len(data.train), "genes": data.train.n_genes, "cells": data.train.n_cells,
              "data_mib": size / MIB, "seconds": seconds, "samples": sampler.samples,
              "trials": [{k: v / MIB for k, v in p.items()} for p in trials],
              "object_store_peak_mib": sampler.store_peak / MIB, "object_store_objects_peak": sampler.store_objects_peak,
              "object_store_samples": sampler.store_samples, "object_store_errors": sampler.store_errors[-5:],
              "object_store_over_data": ratio, "completed": int((result.trials.state == "completed").sum())}
    save("memory", args.quick, report, lines, out=args.out)


if __name__ == "__main__":
    main()
