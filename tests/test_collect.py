"""The collector, the export and prediction without Ray, through the CLI and the Python API.

One tiny 3-stage sweep and its collection run once (in a subprocess, as a user runs them); the
tests then check what was written and predict from the export in this process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import moa_tune_command as moa_tune, run_cli, subprocess_env
from moa_tune import ExportError, load
from moa_tune.folds import Folds
from moa_tune.metric import log_loss
from moa_tune import Ensemble
from moa_tune.stages import Predictions

pytestmark = pytest.mark.slow

TECHNIQUES = {"features.gene_fa": 3, "features.cell_fa": 2, "features.pair_products": 4, "train.mlsmote": 0.2}
SWEEP = {
    "name": "c",
    "folds": {"n_splits": 3},
    "seeds": [0, 1],
    "asha": {"grace_period": 3},  # no pruning: every family has two completed trials to collect
    # issue 8's techniques ride along: the resnet3head and catboost families, and (on the MLP) Factor
    # Analysis and pair-product features with MLSMOTE, fitted per fold and exported without pickle (UMAP,
    # whose numba code compiles in every new process, has its own one-trial sweep in test_sweep.py)
    "fixed": {"train.epochs": 2, "train.early_stopping": 0, "train.batch_size": 64,
              "mlp": {"model.hidden_size": 32, **TECHNIQUES},
              "resnet3head": {"model.hidden_size": 32, "model.bottleneck_size": 16},
              "catboost": {"model.iterations": 15, "model.depth": 3}},
    "stages": [{"stage": "stage1", "families": ["linear"], "trials": 3},  # one trial outside the top 2
               {"stage": "stage2", "families": ["linear", "mlp", "resnet3head", "catboost"], "trials": 2},
               {"stage": "stage3", "families": ["linear"], "trials": 2}],
    "collect": {"top_k": 2},
}


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> dict:
    from moa_tune.data import save
    from moa_tune.synth import generate

    root = tmp_path_factory.mktemp("collect")
    data_dir = save(generate("tiny", seed=0), root / "data")
    sweep_file = root / "c.yaml"
    sweep_file.write_text(yaml.safe_dump({**SWEEP, "data": str(data_dir)}))
    env = subprocess_env(root / "home")
    results = root / "results"
    sweep = subprocess.run(moa_tune("sweep", "--config", str(sweep_file), "--results", str(results), "--num-cpus", "2"),
                           capture_output=True, text=True, env=env, timeout=900)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    done = subprocess.run(moa_tune("collect", str(results / "c"), "--num-cpus", "2"), capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return {"root": root, "data_dir": data_dir, "out": results / "c", "stdout": done.stdout, "env": env}


STAGE2 = [f"stage2-{family}-r{rank}" for family in ("linear", "mlp", "resnet3head", "catboost") for rank in (1, 2)]


def test_collect_retrains_top_k_with_every_seed(collected) -> None:
    out = collected["out"]
    table = pd.read_csv(out / "collect" / "components.csv", dtype={"reused_seeds": str})
    assert sorted(table.id) == sorted(["stage1-linear-r1", "stage1-linear-r2", *STAGE2, "stage3-linear-r1",
                                       "stage3-linear-r2"])
    assert (table.n_seeds == 2).all()
    trials = pd.read_csv(out / "trials.csv")
    data = load(collected["data_dir"])
    folds = Folds.load(out / "folds.npz")
    used = folds.used
    for row in table.itertuples():
        # rank r is the r-th best completed trial of its stage x family
        mine = trials[(trials.stage == row.stage) & (trials.family == row.family) & (trials.state == "completed")]
        assert row.trial_id == mine.sort_values("loss").trial_id.iloc[row.rank - 1]
        # the component's loss is that of its seed-averaged out-of-fold predictions
        pred = Predictions.load(out / "collect" / "components" / row.id)
        truth = data.nonscored if row.stage == "stage1" else data.scored
        keep = truth[used].sum(axis=0) > 0 if row.stage == "stage1" else np.ones(truth.shape[1], bool)
        assert row.cv_loss == pytest.approx(log_loss(truth[used][:, keep], pred.oof[used][:, keep]), abs=1e-6)
        if row.stage == "stage1":  # no inputs: the sweep's seed (0) would repeat the trial exactly ...
            assert str(row.reused_seeds) == "0" and f"{row.id} seed 0: the sweep's trial" in collected["stdout"]
            seed0 = float(row.seed_losses.split(";")[0])
            if row.rank == 1:  # ... so the trial itself is the component's seed 0, predictions and all
                best = Predictions.load(out / "stage1" / "linear" / "best")
                assert seed0 == pytest.approx(log_loss(truth[used][:, keep], best.oof[used][:, keep]), abs=1e-7)
        else:  # stage 2 learns from the 2-seed stage-1 blend, not the sweep's inputs: trained with both seeds
            assert pd.isna(row.reused_seeds)
    assert json.loads((out / "collect" / "blend.json").read_text())["seeds"] == [0, 1]
    assert collected["stdout"].count(" reused, CV ") == 2
    assert "blend (" in collected["stdout"] and "cross-fitted" in collected["stdout"]


def test_only_the_top_k_trials_keep_their_fitted_folds(collected) -> None:
    """The sweep's checkpoints keep each fold's pipeline and network for the trials the collector may reuse."""
    trials = pd.read_csv(collected["out"] / "trials.csv")
    for (stage, family), mine in trials.groupby(["stage", "family"]):
        top = set(mine[mine.state == "completed"].sort_values("loss").trial_id.iloc[:2])
        for row in mine.itertuples():
            fitted = sorted(Path(row.path).glob("checkpoint_*/fitted/model.json"))
            assert len(fitted) == (3 if row.trial_id in top else 0), (stage, family, row.trial_id)
            assert len(list(Path(row.path).glob("checkpoint_*/folds_done.npz"))) == row.folds_done  # resume needs these


def test_stages_chain_on_the_collected_predictions(collected) -> None:
    blend = json.loads((collected["out"] / "collect" / "blend.json").read_text())
    stages = {s["stage"]: s for s in blend["stages"]}
    assert stages["stage1"]["inputs"] is None
    assert stages["stage2"]["inputs"]["mode"] == "blend"  # inputs: best -> the stage-1 blend
    assert set(stages["stage2"]["inputs"]["weights"]) == {"stage1-linear-r1", "stage1-linear-r2"}
    # stage 3 (inputs: per_family by default) learns from each stage-2 family's seed-averaged mean
    assert stages["stage3"]["inputs"] == {"mode": "per_family", "families": {
        family: [f"stage2-{family}-r1", f"stage2-{family}-r2"] for family in ("linear", "mlp", "resnet3head", "catboost")}}


def test_blend_figures_are_consistent(collected) -> None:
    out = collected["out"]
    blend = json.loads((out / "collect" / "blend.json").read_text())
    assert set(blend["components"]) == {*STAGE2, "stage3-linear-r1", "stage3-linear-r2"}
    # the two weighting methods, and the pruned refit of either where pruning removed a component
    assert {"caruana", "slsqp"} <= set(blend["methods"]) <= {"caruana", "slsqp", "caruana-pruned", "slsqp-pruned"}
    assert blend["chosen"] in blend["methods"]
    weights = blend["methods"][blend["chosen"]]["weights"]
    assert sum(weights.values()) == pytest.approx(1.0) and min(weights.values()) >= 0
    # both methods include the best single component's weights as a candidate: never worse in-sample
    assert blend["loss"] <= blend["best_component"]["loss"] + 1e-9
    data = load(collected["data_dir"])
    used = Folds.load(out / "folds.npz").used
    oof = Predictions.load(out / "collect")
    assert log_loss(data.scored[used], oof.oof[used]) == pytest.approx(blend["loss"], abs=1e-6)
    per_target = pd.read_csv(out / "collect" / "per_target.csv")
    assert list(per_target.target) == list(data.scored_columns)
    assert per_target.loss.mean() == pytest.approx(blend["loss"], abs=1e-6)


def test_export_predicts_what_the_collector_predicted(collected) -> None:
    out = collected["out"]
    manifest = json.loads((out / "ensemble" / "manifest.json").read_text())
    assert manifest["schema"] == 1 and manifest["moa_tune"] and manifest["torch"]
    assert manifest["targets"]["scored"] and manifest["features"]["gene_columns"]
    assert all(name.endswith((".safetensors", ".json", ".npz", ".cbm")) for name in manifest["files"])
    assert any(name.endswith(".cbm") for name in manifest["files"])  # catboost's trees in CatBoost's format
    assert not list((out / "ensemble").rglob("*.pt")) and not list((out / "ensemble").rglob("*.pkl"))
    data = load(collected["data_dir"])
    frame = pd.read_csv(collected["data_dir"] / "test_features.csv")
    ensemble = Ensemble.load(out / "ensemble")
    predicted = ensemble.predict(frame)
    assert list(predicted.columns) == ["sig_id", *data.scored_columns]
    assert predicted.sig_id.tolist() == data.test.sig_id.tolist()
    expected = Predictions.load(out / "collect").test
    np.testing.assert_allclose(predicted.iloc[:, 1:].to_numpy(), expected, atol=1e-6, rtol=0)
    assert (predicted.iloc[:, 1:].to_numpy()[data.test.is_control] == 0).all()
    # each stage-3 component's test predictions are reproduced too (the chain runs in order)
    parts = ensemble.component_predictions(data.test)
    for cid in ("stage1-linear-r1", "stage2-mlp-r2", "stage2-resnet3head-r1", "stage2-catboost-r1", "stage3-linear-r1"):
        np.testing.assert_allclose(parts[cid], Predictions.load(out / "collect" / "components" / cid).test, atol=1e-6)


def test_predict_cli_writes_a_checked_submission_without_ray_or_optuna(collected, tmp_path: Path) -> None:
    out, data_dir = collected["out"], collected["data_dir"]
    submission = tmp_path / "submission.csv"
    code = ("import sys\nfrom moa_tune.cli import main\nsys.argv = ['moa-tune'] + sys.argv[1:]\n"
            "try:\n    main()\nfinally:\n    print('IMPORTED', 'ray' in sys.modules, 'optuna' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(out / "ensemble"), "--data",
                           str(data_dir), "--out", str(submission)], capture_output=True, text=True,
                          env=collected["env"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED False False" in done.stdout
    assert "checked against sample_submission.csv" in done.stdout
    sample = pd.read_csv(data_dir / "sample_submission.csv")
    written = pd.read_csv(submission)
    assert list(written.columns) == list(sample.columns) and written.sig_id.tolist() == sample.sig_id.tolist()
    data = load(data_dir)
    expected = pd.DataFrame(Predictions.load(out / "collect").test, columns=data.scored_columns)
    expected.insert(0, "sig_id", data.test.sig_id)
    expected = expected.set_index("sig_id").loc[written.sig_id, list(sample.columns[1:])]
    np.testing.assert_allclose(written.iloc[:, 1:].to_numpy(), expected.to_numpy(), atol=1e-6, rtol=0)
    # a bare test_features.csv works as well
    code_, text, _ = run_predict(["--model", str(out / "ensemble"), "--data", str(data_dir / "test_features.csv"),
                                  "--out", str(tmp_path / "bare.csv")])
    assert code_ == 0 and "checked against" not in text
    assert pd.read_csv(tmp_path / "bare.csv").shape == written.shape


def run_predict(args: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(moa_tune("predict", *args), capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_export_refuses_changed_missing_and_incompatible_files(collected, tmp_path: Path, capsys) -> None:
    source = collected["out"] / "ensemble"
    manifest = json.loads((source / "manifest.json").read_text())
    weights = sorted(n for n in manifest["files"] if n.endswith(".safetensors"))[0]

    changed = shutil.copytree(source, tmp_path / "changed")
    blob = bytearray((changed / weights).read_bytes())
    blob[-1] ^= 0xFF
    (changed / weights).write_bytes(bytes(blob))
    with pytest.raises(ExportError, match="has changed since the export"):
        Ensemble.load(changed)

    missing = shutil.copytree(source, tmp_path / "missing")
    (missing / weights).unlink()
    with pytest.raises(ExportError, match=f"missing file {weights}"):
        Ensemble.load(missing)

    old = shutil.copytree(source, tmp_path / "old")
    (old / "manifest.json").write_text(json.dumps({**manifest, "schema": 99}))
    with pytest.raises(ExportError, match="schema 99"):
        Ensemble.load(old)

    submission = tmp_path / "s.csv"
    code, text, err = run_cli(["predict", "--model", str(changed), "--data", str(collected["data_dir"]),
                               "--out", str(submission)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and weights in err
    assert not submission.exists()


def _edited(source: Path, target: Path, edit) -> Path:
    """A copy of the export whose manifest ``edit`` rewrote (as someone with write access could)."""
    copy = shutil.copytree(source, target)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(edit(manifest)))
    return copy


def test_the_export_checks_what_it_reads_not_what_the_manifest_lists(collected, tmp_path: Path, capsys) -> None:
    """Every file read must be listed with its sha256; names stay inside the export; the manifest's
    structure and blend weights are checked; predictions must be finite; --expect-sha256 pins the manifest."""
    from safetensors.torch import load_file, save_file

    from moa_tune.predict import sha256

    source = collected["out"] / "ensemble"
    manifest = json.loads((source / "manifest.json").read_text())
    weights = sorted(n for n in manifest["files"] if n.endswith(".safetensors"))[0]
    first = next(iter(manifest["components"]))

    # an emptied 'files' no longer skips the checks: a flipped byte is caught as an unlisted file
    unlisted = _edited(source, tmp_path / "unlisted", lambda m: {**m, "files": {}})
    blob = bytearray((unlisted / weights).read_bytes())
    blob[-1] ^= 0xFF
    (unlisted / weights).write_bytes(bytes(blob))
    with pytest.raises(ExportError, match="is not listed in manifest.json"):
        Ensemble.load(unlisted)

    def fold_outside(m: dict, where: str) -> dict:
        m["components"][first]["members"][0]["folds"][0] = where
        return m

    outside = tmp_path / "outside"
    shutil.copytree(source / manifest["components"][first]["members"][0]["folds"][0], outside)
    for i, where in enumerate(["../outside", str(outside)]):
        with pytest.raises(ExportError, match="not a name inside the export"):
            Ensemble.load(_edited(source, tmp_path / f"escape{i}", lambda m, w=where: fold_outside(m, w)))
    link = shutil.copytree(source, tmp_path / "link")
    (link / "elsewhere").symlink_to(outside)
    manifest_link = fold_outside(json.loads((link / "manifest.json").read_text()), "elsewhere")
    (link / "manifest.json").write_text(json.dumps(manifest_link))
    with pytest.raises(ExportError, match="leads outside the export"):
        Ensemble.load(link)

    def reweighted(m: dict) -> dict:
        m["blend"]["weights"] = {k: 5.0 for k in m["blend"]["weights"]}
        return m

    for i, (edit, message) in enumerate([
            (reweighted, "'blend.weights' sum to"),
            (lambda m: {k: v for k, v in m.items() if k != "blend"}, "'blend' is missing"),
            (lambda m: {k: v for k, v in m.items() if k != "components"}, "'components' is missing"),
            (lambda m: [m], "not a JSON object")]):
        edited = _edited(source, tmp_path / f"edit{i}", edit)
        with pytest.raises(ExportError, match=message):
            Ensemble.load(edited)
        code, _, err = run_cli(["predict", "--model", str(edited), "--data", str(collected["data_dir"]),
                                "--out", str(tmp_path / "s.csv")], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err

    # a truncated network whose hash was updated: one line naming the fold, no traceback
    truncated = shutil.copytree(source, tmp_path / "truncated")
    (truncated / weights).write_bytes((truncated / weights).read_bytes()[:100])
    manifest_t = json.loads((truncated / "manifest.json").read_text())
    manifest_t["files"][weights] = sha256(truncated / weights)
    (truncated / "manifest.json").write_text(json.dumps(manifest_t))
    code, _, err = run_cli(["predict", "--model", str(truncated), "--data", str(collected["data_dir"]),
                            "--out", str(tmp_path / "t.csv")], capsys)
    assert code == 2 and "cannot be loaded" in err and len(err.strip().splitlines()) == 1, err

    # a network whose weights are NaN, its hash updated: the prediction is refused, never written
    poisoned = shutil.copytree(source, tmp_path / "poisoned")
    tensors = load_file(poisoned / weights)
    name = next(n for n in sorted(tensors) if tensors[n].is_floating_point() and tensors[n].ndim == 2)
    tensors[name] = tensors[name] * float("nan")
    save_file(tensors, poisoned / weights)
    manifest_p = json.loads((poisoned / "manifest.json").read_text())
    manifest_p["files"][weights] = sha256(poisoned / weights)
    (poisoned / "manifest.json").write_text(json.dumps(manifest_p))
    submission = tmp_path / "poisoned.csv"
    code, _, err = run_cli(["predict", "--model", str(poisoned), "--data", str(collected["data_dir"]),
                            "--out", str(submission)], capsys)
    assert code == 2 and "cannot be trusted" in err and len(err.strip().splitlines()) == 1, err
    assert not submission.exists()
    # ...and pinning the manifest's digest catches the edit itself
    pinned = sha256(source / "manifest.json")
    code, _, err = run_cli(["predict", "--model", str(poisoned), "--data", str(collected["data_dir"]),
                            "--out", str(submission), "--expect-sha256", pinned], capsys)
    assert code == 2 and "is not the expected" in err and not submission.exists()
    code, _, err = run_cli(["predict", "--model", str(source), "--data", str(collected["data_dir"]),
                            "--out", str(submission), "--expect-sha256", pinned], capsys)
    assert code == 0 and submission.exists(), err
    code, _, err = run_cli(["predict", "--model", str(source), "--data", str(collected["data_dir"]),
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err and len(err.strip().splitlines()) == 1


def test_predict_bad_input_exit_2(collected, tmp_path: Path, capsys) -> None:
    out, data_dir = collected["out"], collected["data_dir"]
    frame = pd.read_csv(data_dir / "test_features.csv")
    gene = [c for c in frame.columns if c.startswith("g-")][1]
    frame.drop(columns=[gene]).to_csv(tmp_path / "test_features.csv", index=False)
    target = tmp_path / "s.csv"
    code, _, err = run_cli(["predict", "--model", str(out / "ensemble"), "--data", str(tmp_path / "test_features.csv"),
                            "--out", str(target)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and gene in err and "test_features.csv" in err
    bad = frame.copy()
    bad.loc[3, gene] = np.nan
    bad.to_csv(tmp_path / "test_features.csv", index=False)
    code, _, err = run_cli(["predict", "--model", str(out / "ensemble"), "--data", str(tmp_path / "test_features.csv"),
                            "--out", str(target)], capsys)
    assert code == 2 and "row 4" in err and gene in err
    # a sample submission for other ids
    mismatch = shutil.copytree(data_dir, tmp_path / "mismatch")
    sample = pd.read_csv(mismatch / "sample_submission.csv")
    sample.loc[0, "sig_id"] = "id_not_in_test"
    sample.to_csv(mismatch / "sample_submission.csv", index=False)
    code, _, err = run_cli(["predict", "--model", str(out / "ensemble"), "--data", str(mismatch),
                            "--out", str(target)], capsys)
    assert code == 2 and "id_not_in_test" in err
    code, _, err = run_cli(["predict", "--model", str(tmp_path / "nothing"), "--data", str(data_dir),
                            "--out", str(target)], capsys)
    assert code == 2 and "nothing" in err
    assert not target.exists()
    code, _, err = run_cli(["collect", str(tmp_path)], capsys)
    assert code == 2 and "no sweep.yaml" in err


def test_report_cli_covers_the_sweep_and_its_collection(collected, tmp_path: Path, capsys) -> None:
    out = collected["out"]
    target = tmp_path / "r.html"
    code, text, err = run_cli(["report", str(out), "--out", str(target)], capsys)
    assert code == 0, err
    page = target.read_text()
    assert "not available yet" not in page  # trials, components, blend and per-target figures all present
    blend = json.loads((out / "collect" / "blend.json").read_text())
    assert blend["chosen"] in page and "stage3-linear-r1" in page
    assert page.count("data:image/png;base64") >= 6


#: What a sweep, its collection, report and submission may write under results/, each read back
#: here by a loader that cannot execute code.
SAFE_SUFFIXES = {".json", ".csv", ".yaml", ".npy", ".npz", ".safetensors", ".cbm", ".html", ".png",
                 ".lock"}  # results/.NAME.lock: one line of text naming the holder (moa_tune.lock)


def test_nothing_under_results_is_a_pickle_or_executable(collected, capsys) -> None:
    """Everything under results/ loads without pickle and nothing is executable; Tune's pickles live apart."""
    import stat

    from catboost import CatBoost
    from safetensors.numpy import load_file

    out = collected["out"]
    code, _, err = run_cli(["report", str(out)], capsys)
    assert code == 0, err
    code, _, err = run_cli(["predict", "--model", str(out / "ensemble"), "--data", str(collected["data_dir"]),
                            "--out", str(out / "submission.csv")], capsys)
    assert code == 0, err
    files = [p for p in (collected["root"] / "results").rglob("*") if p.is_file()]
    suffixes = {p.suffix for p in files}
    assert {".npy", ".npz", ".safetensors", ".html", ".json", ".csv", ".yaml"} <= suffixes, suffixes
    for path in files:
        assert path.suffix in SAFE_SUFFIXES, path
        assert stat.S_IMODE(path.stat().st_mode) & 0o111 == 0, f"{path} is executable"
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                for key in archive.files:
                    archive[key]
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".cbm":  # CatBoost's own model format: its loader parses, never unpickles
            CatBoost().load_model(str(path), format="cbm")
        elif path.suffix == ".html":
            assert "<script" not in path.read_text().lower(), path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".lock":
            assert path.name.startswith(".") and len(path.read_text().splitlines()) <= 1, path
    # Ray Tune's resume state is pickled: it went to the experiments root the sweep recorded, outside results/
    root = Path(yaml.safe_load((out / "sweep.yaml").read_text())["_storage"])
    assert not root.is_relative_to(collected["root"] / "results")
    assert list(root.rglob("*.pkl")), "Tune's experiments should be in the recorded root"


def test_a_killed_collector_leaves_the_previous_export_whole(collected) -> None:
    """SIGKILL mid-collection: ensemble/ is still the previous, loadable export; the next run cleans up.

    Last in this module: it replaces the shared export with a smaller one.
    """
    import signal
    import time

    out = collected["out"]
    before = (out / "ensemble" / "manifest.json").read_bytes()
    process = subprocess.Popen(moa_tune("collect", str(out), "--num-cpus", "2"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=collected["env"], start_new_session=True)
    assert process.stdout is not None
    deadline = time.time() + 300
    for line in process.stdout:  # kill as soon as the first retrained model has been written to staging
        if "[collect] stage1-linear-r1 seed" in line or time.time() > deadline:
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert list(out.glob(".ensemble.tmp-*")), "the kill should have interrupted a collection in progress"
    assert (out / "ensemble" / "manifest.json").read_bytes() == before
    Ensemble.load(out / "ensemble")  # every file still matches its sha256
    # the next collection removes the stale staging folder and writes a whole new export
    again = subprocess.run(moa_tune("collect", str(out), "--num-cpus", "2", "--top-k", "1", "--seeds", "1"),
                           capture_output=True, text=True, env=collected["env"], timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "left by an interrupted collection" in again.stdout
    assert not list(out.glob(".ensemble.tmp-*")) and not list(out.glob(".collect.tmp-*"))
    assert Ensemble.load(out / "ensemble").manifest["blend"]["weights"]
