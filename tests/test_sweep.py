"""The sweep engine on a real local Ray: fold-level ASHA, stage chaining, several nodes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from moa_tune.folds import Folds
from moa_tune.stages import Predictions
from moa_tune.sweep import run_sweep, trial_config
from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep
from moa_tune.train import run_training

pytestmark = pytest.mark.slow

FIXED = {"train.epochs": 2, "train.early_stopping": 0, "train.batch_size": 64, "mlp": {"model.hidden_size": 32}}


def spec_for(stages: list[dict], **extra) -> object:
    raw = {"name": "t", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3}, "fixed": FIXED,
           "resources": {"cpu": 1}, "stages": stages, **extra}
    return parse_sweep(raw, "<test sweep>", SEARCH_SPACES / "sweeps")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray (2 CPUs, token auth as Ray sets it up) for the tests of this module."""
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_MODE")}
    os.environ["HOME"] = str(tmp_path_factory.mktemp("ray-home"))
    # an earlier in-process Ray of this pytest process left RAY_AUTH_MODE=token, whose token lives in the
    # old HOME: without this, the new Ray's GCS never starts (a timeout waiting for its port file)
    os.environ.pop("RAY_AUTH_MODE", None)
    # as moa_tune.ray_session.start_or_join does: a loaded 2-core machine can take more than Ray's 30 s to start its GCS
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for key, value in saved.items():  # ray.init sets RAY_AUTH_MODE=token in the driver's environment
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_asha_prunes_after_the_first_fold_and_lets_others_finish(local_ray, tiny, tmp_path: Path) -> None:
    data, _ = tiny
    spec = spec_for([{"stage": "direct", "families": ["linear"], "trials": 10}],
                    asha={"grace_period": 1, "reduction_factor": 3}, seed=1)
    lines: list[str] = []
    result = run_sweep(spec, data, tmp_path / "t", emit=lines.append)
    trials = pd.read_csv(tmp_path / "t" / "trials.csv")
    assert len(trials) == 10 and trials.trial_id.is_unique
    completed = trials[trials.state == "completed"]
    pruned = trials[trials.state == "pruned"]
    assert len(completed) >= 1 and len(pruned) >= 1, trials[["state", "folds_done", "loss"]]
    assert (completed.folds_done == 3).all() and (pruned.folds_done < 3).all()
    assert completed[["fold_0_loss", "fold_1_loss", "fold_2_loss"]].notna().all().all()
    assert pruned.fold_2_loss.isna().all()
    assert any("pruned" in line for line in lines) and any("completed" in line for line in lines)
    best_dir = tmp_path / "t" / "direct" / "linear" / "best"
    best = Predictions.load(best_dir)
    assert best.oof.shape == data.scored.shape
    assert result.best[("direct", "linear")]["loss"] == pytest.approx(completed.loss.min())
    assert {c for c in trials.columns if c.startswith("param.")} >= {"param.train.lr", "param.model.input_dropout"}


def test_stage2_receives_the_stage1_predictions(local_ray, tiny, tmp_path: Path) -> None:
    data, _ = tiny
    spec = spec_for([{"stage": "stage1", "families": ["linear"], "trials": 2},
                     {"stage": "stage2", "families": ["linear"], "trials": 2}],
                    asha={"grace_period": 3, "reduction_factor": 2})
    run_sweep(spec, data, tmp_path / "s", emit=lambda line: None)
    out = tmp_path / "s"
    stage1 = Predictions.load(out / "stage1" / "linear" / "best")
    assert stage1.columns == data.nonscored_columns and stage1.stage == "stage1"
    stage2 = Predictions.load(out / "stage2" / "linear" / "best")
    folds = Folds.load(out / "folds.npz")
    best = __import__("json").loads((out / "stage2" / "linear" / "best" / "best.json").read_text())
    config = trial_config(best["config"], spec.fixed_for("linear"), "stage2", 1)
    # retraining the best stage-2 config here with the stage-1 predictions reproduces the sweep's result ...
    again = run_training(config, data, folds, [stage1])
    np.testing.assert_allclose(again.oof, stage2.oof, atol=1e-5)
    # ... and with other inputs it does not, so the sweep really fed stage 1 into stage 2
    shuffled = Predictions(stage1.oof[::-1].copy(), stage1.test, stage1.columns, stage1.folds)
    other = run_training(config, data, folds, [shuffled])
    assert np.abs(other.oof - stage2.oof).max() > 1e-3


def test_umap_features_are_fitted_per_fold_inside_a_sweep(local_ray, tiny, tmp_path: Path) -> None:
    """UMAP (issue 8) inside a trial: fitted on each fold's training rows, the trial's predictions kept."""
    data, _ = tiny
    spec = spec_for([{"stage": "direct", "families": ["mlp"], "trials": 1}], asha={"grace_period": 3},
                    fixed={**FIXED, "mlp": {"model.hidden_size": 32, "features.gene_umap": 2, "features.cell_umap": 2}})
    run_sweep(spec, data, tmp_path / "u", emit=lambda line: None)
    trials = pd.read_csv(tmp_path / "u" / "trials.csv")
    assert trials.state.tolist() == ["completed"] and trials["param.features.gene_umap"].tolist() == [2]
    best = Predictions.load(tmp_path / "u" / "direct" / "mlp" / "best")
    assert best.oof.shape == data.scored.shape and np.isfinite(best.test).all()


NODES_SCRIPT = """
import sys
from ray.cluster_utils import Cluster
from moa_tune.sweep import run_sweep
from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep
from moa_tune.synth import generate

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
try:
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    raw = {"name": "n", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3},
           "fixed": {"train.epochs": 2, "train.early_stopping": 0, "train.batch_size": 64},
           "asha": {"grace_period": 3}, "stages": [{"stage": "direct", "families": ["linear"], "trials": 3}]}
    spec = parse_sweep(raw, "<nodes>", SEARCH_SPACES / "sweeps")
    run_sweep(spec, generate("tiny", seed=0), sys.argv[1], address=cluster.address, emit=print)
    from moa_tune.collect import collect
    collect(sys.argv[1], top_k=3, seeds=[0, 1], address=cluster.address, emit=print)
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def test_trials_spread_over_several_nodes(tmp_path: Path, monkeypatch) -> None:
    """A head and two workers of one CPU each (ray.cluster_utils.Cluster), in a fresh process; sweep then collect."""
    import subprocess
    import sys

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Cluster's nodes run without a token ...
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ... so no token of the developer's may reach the driver
    done = subprocess.run([sys.executable, "-c", NODES_SCRIPT, str(tmp_path / "n")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "n" / "trials.csv")
    assert len(trials) == 3 and (trials.state == "completed").all(), trials[["state", "error"]]
    assert trials.node.nunique() > 1, trials.node  # three one-CPU nodes, three trials at once
    # the collector's retraining tasks spread over the nodes too
    components = pd.read_csv(tmp_path / "n" / "collect" / "components.csv")
    assert len(components) == 3 and (components.n_seeds == 2).all()
    nodes = {n for cell in components.nodes for n in cell.split(";")}
    assert len(nodes) > 1 and nodes <= set(trials.node), components.nodes


KILL_NODE_SCRIPT = """
import os
import sys
import threading
import time
from pathlib import Path

from ray.cluster_utils import Cluster

from moa_tune.sweep import run_sweep
from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep
from moa_tune.synth import generate

out, storage = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, sys.argv[3])  # the tests folder, for conftest's FrozenRayWorkers
from conftest import FrozenRayWorkers
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
try:
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    raw = {"name": "k", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 5}, "max_failures": 2,
           "fixed": {"train.epochs": 40, "train.early_stopping": 0, "train.batch_size": 64},
           "asha": {"grace_period": 5}, "stages": [{"stage": "direct", "families": ["linear"], "trials": 4}]}
    spec = parse_sweep(raw, "<kill a node>", SEARCH_SPACES / "sweeps")
    experiment = storage / "k" / "direct" / "linear"

    def running() -> int:
        # trials that have checkpointed a fold but not all five (each holds one node's only CPU)
        counts = [len(list(t.glob("checkpoint_*"))) for t in experiment.glob("trial_*")]
        return sum(1 <= c < 5 for c in counts)

    def kill():
        # Remove a worker node while it runs an unfinished trial. Not a race with the clock: Ray's workers
        # are stopped (SIGSTOP) first, so no trial can finish while the test looks; three unfinished
        # trials then mean every one-CPU node holds one, worker 0 included.
        deadline = time.time() + 300
        while time.time() < deadline:
            if running() == 3:
                with FrozenRayWorkers(os.getpid()):
                    if running() == 3:
                        cluster.remove_node(workers[0])
                        print("REMOVED", workers[0].node_id, flush=True)
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    run_sweep(spec, generate("tiny", seed=0), out, storage=str(storage), emit=print, address=cluster.address)
    killer.join(timeout=5)
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def test_a_worker_node_killed_mid_sweep_loses_no_trial(tmp_path: Path, monkeypatch) -> None:
    """Three one-CPU nodes, one trial each; a worker node is removed mid-trial (its raylet killed): its
    trial restarts on a surviving node from its last fold checkpoint, and every trial completes."""
    import subprocess
    import sys

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", KILL_NODE_SCRIPT, str(tmp_path / "k"), str(tmp_path / "storage"),
                           str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    removed = done.stdout.split("REMOVED ")[1].split()[0]
    trials = pd.read_csv(tmp_path / "k" / "trials.csv")
    assert len(trials) == 4 and (trials.state == "completed").all() and (trials.folds_done == 5).all(), trials
    assert removed not in set(trials.node)  # every trial finished on a surviving node
    retried = [row for row in trials.itertuples() if (Path(row.path) / "error.txt").exists()]
    assert retried, "the removed node's trial should have failed once and been restarted"
    for row in retried:
        text = (Path(row.path) / "error.txt").read_text()
        assert "Failure # 1" in text and "Failure # 2" not in text and "node" in text, text[:500]
        assert np.isfinite([getattr(row, f"fold_{k}_loss") for k in range(5)]).all()


def test_failing_trials_are_retried_then_recorded_and_the_sweep_goes_on(local_ray, tiny, tmp_path: Path) -> None:
    import torch
    import yaml as _yaml

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA: train.device=cuda is the failure used here")
    data, _ = tiny
    space = tmp_path / "linear.yaml"
    space.write_text(_yaml.safe_dump({"family": "linear", "params": {
        "train.device": {"type": "categorical", "choices": ["cpu", "cuda"]},
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}))
    spec = spec_for([{"stage": "direct", "families": ["linear"], "trials": 4}], search_spaces={"linear": str(space)},
                    max_failures=1, asha={"grace_period": 3}, seed=3)
    storage = tmp_path / "shared-storage"
    run_sweep(spec, data, tmp_path / "f", storage=str(storage), emit=lambda line: None)
    trials = pd.read_csv(tmp_path / "f" / "trials.csv")
    errored = trials[trials.state == "errored"]
    assert len(trials) == 4 and len(errored) >= 1 and (trials.state == "completed").any()
    assert errored.error.str.contains("no CUDA device").all()
    for path in errored.path:  # FailureConfig(max_failures=1): each failing trial ran twice before giving up
        assert (Path(path) / "error.txt").read_text().count("Failure #") == 2
    assert (errored["param.train.device"] == "cuda").all()
    # the experiments live in --storage; the summary and best predictions stay under results/<name>
    assert (storage / "t" / "direct" / "linear").is_dir()
    assert (tmp_path / "f" / "direct" / "linear" / "best" / "oof.npy").exists()


def test_a_trial_whose_loss_becomes_nan_is_recorded_as_errored(local_ray, tiny, tmp_path: Path) -> None:
    """Unscaled extreme (finite) values make some configurations' loss NaN: those trials error, others go on."""
    import copy

    import yaml as _yaml

    data = copy.deepcopy(tiny[0])
    data.train.genes[::7, 0] = 3e38  # passes the data checks (finite), overflows an unscaled network
    space = tmp_path / "linear.yaml"
    space.write_text(_yaml.safe_dump({"family": "linear", "params": {
        "features.scaler": {"type": "categorical", "choices": ["none", "standard"]},
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}))
    spec = spec_for([{"stage": "direct", "families": ["linear"], "trials": 3}], search_spaces={"linear": str(space)},
                    max_failures=0, asha={"grace_period": 3}, seed=0,
                    points_to_evaluate={"linear": [{"features.scaler": "none"}, {"features.scaler": "standard"}]})
    run_sweep(spec, data, tmp_path / "nan", emit=lambda line: None)
    trials = pd.read_csv(tmp_path / "nan" / "trials.csv")
    assert len(trials) == 3
    errored = trials[trials.state == "errored"]
    assert len(errored) >= 1 and (errored["param.features.scaler"] == "none").all()
    assert errored.error.str.contains("training diverged at epoch 1: the training loss is not finite").all()
    scaled = trials[trials["param.features.scaler"] == "standard"]
    assert len(scaled) >= 1 and (scaled.state == "completed").all() and np.isfinite(scaled.loss).all()


def test_checkpoints_of_finished_folds_chain_back(tiny, tmp_path: Path) -> None:
    """One checkpoint per fold; the latest one Tune knows leads back to every earlier fold, and
    checkpoints written after it (by a run killed before its snapshot) are ignored."""
    from ray import tune

    from moa_tune.sweep import _load_reports, _save_fold
    from moa_tune.train import FoldReport, cross_validate

    data, folds = tiny
    reports = [e for e in cross_validate({"family": "linear", "train": {"epochs": 2}}, data, folds)
               if isinstance(e, FoldReport)]
    trial = tmp_path / "trial_x"
    for i, report in enumerate(reports):
        (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
        _save_fold(str(trial / f"checkpoint_{i:06d}"), report, "linear", {})
    (trial / "checkpoint_tmp_junk").mkdir()
    back = _load_reports(tune.Checkpoint(str(trial / "checkpoint_000001")), folds)
    assert [r.fold for r in back] == [0, 1] and [r.folds_done for r in back] == [1, 2]
    for a, b in zip(reports, back):
        np.testing.assert_array_equal(a.valid_pred, b.valid_pred)
        np.testing.assert_array_equal(a.valid_rows, b.valid_rows)
        assert a.loss == b.loss and a.running_loss == pytest.approx(b.running_loss)
    # a trial restarted from that checkpoint trains only the fold that is left
    rest = [e for e in cross_validate({"family": "linear", "train": {"epochs": 2}}, data, folds, resume=back)
            if isinstance(e, FoldReport)]
    assert [r.fold for r in rest] == [2] and rest[0].folds_done == 3
    np.testing.assert_allclose(rest[0].valid_pred, reports[2].valid_pred, atol=1e-6)


GPU_SCRIPT = """
import sys
import pandas as pd
import ray
from moa_tune import ConfigError
from moa_tune.sweep import _concurrency, run_sweep
from moa_tune.sweep_spec import SEARCH_SPACES, parse_sweep
from moa_tune.synth import generate

def spec(resources, trials):
    raw = {"name": "g", "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": 3}, "asha": {"grace_period": 3},
           "fixed": {"train.epochs": 2, "train.early_stopping": 0, "train.batch_size": 64}, "resources": resources,
           "stages": [{"stage": "direct", "families": ["linear"], "trials": trials}]}
    return parse_sweep(raw, "<gpu sweep>", SEARCH_SPACES / "sweeps")

ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
try:
    packed = spec({"cpu": 0.5, "gpu": 0.25}, 4)
    assert _concurrency(packed) == 4, _concurrency(packed)
    run_sweep(packed, generate("tiny", seed=0), sys.argv[1] + "/g", emit=print)
    try:
        run_sweep(spec({"gpu": 2}, 1), generate("tiny", seed=0), sys.argv[1] + "/h", emit=print)
    except ConfigError as exc:
        print("REFUSED:", exc)
finally:
    ray.shutdown()
"""


def test_fractional_gpus_pack_trials_and_missing_gpus_fail_early(tmp_path: Path) -> None:
    """0.25 GPU per trial: four trials share one GPU (a logical one here: no CUDA on CI). Fresh process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", GPU_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "g" / "trials.csv", dtype={"gpus": str})
    assert len(trials) == 4 and (trials.state == "completed").all() and (trials.gpus == "0").all()
    assert "REFUSED: <gpu sweep>: 'resources.gpu' asks for 2 GPU per trial but the Ray cluster has 1" in done.stdout
    assert not (tmp_path / "h").exists()  # refused before anything was written
