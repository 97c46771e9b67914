"""moa-tune status: a sweep's progress from its results folder, without Ray.

The sweep folders here are written by hand in the layout ``moa_tune.sweep`` leaves behind
(sweep.yaml, trials.csv, <stage>/<family>/done.json, Tune trial folders with result.json lines).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from moa_tune.errors import ConfigError
from moa_tune.status import sweep_status

N_FOLDS = 3
STAGES = [
    {"stage": "stage1", "families": ["mlp"], "trials": 4},
    {"stage": "stage2", "families": ["mlp", "resnet2head"], "trials": 5, "inputs": "best"},
    {"stage": "stage3", "families": ["linear"], "trials": 3, "inputs": "per_family"},
]


def _row(stage: str, family: str, trial_id: str, state: str, loss: float | None, folds_done: int,
         time_s: float) -> dict:
    row = {"stage": stage, "family": family, "trial_id": trial_id, "state": state, "loss": loss,
           "folds_done": folds_done, "time_s": time_s, "node": "n1", "gpus": "", "path": f"/x/{trial_id}",
           "error": "ValueError: boom" if state == "errored" else None}
    for k in range(N_FOLDS):
        row[f"fold_{k}_loss"] = loss if k < folds_done else None
    row["param.train.lr"] = 0.001
    return row


STAGE1_ROWS = [
    _row("stage1", "mlp", "a1", "completed", 0.0201, 3, 30.0),
    _row("stage1", "mlp", "a2", "completed", 0.0195, 3, 32.0),
    _row("stage1", "mlp", "a3", "pruned", 0.0300, 1, 10.0),
    _row("stage1", "mlp", "a4", "errored", None, 0, 2.0),
]
STAGE2_MLP_ROWS = [
    _row("stage2", "mlp", "b1", "completed", 0.0170, 3, 40.0),
    _row("stage2", "mlp", "b2", "pruned", 0.0190, 2, 20.0),
    _row("stage2", "mlp", "b3", "completed", 0.0165, 3, 41.0),
    _row("stage2", "mlp", "b4", "pruned", 0.0250, 1, 9.0),
    _row("stage2", "mlp", "b5", "completed", 0.0180, 3, 39.0),
]


def _sweep_base(path: Path, name: str = "demo") -> Path:
    path.mkdir(parents=True)
    (path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": name, "data": {"synth": "tiny", "seed": 0}, "folds": {"n_splits": N_FOLDS, "scheme": "drug"},
        "stages": STAGES, "_versions": {"moa_tune": "0.1.0"}}, sort_keys=False))
    (path / "folds.npz").write_bytes(b"")
    return path


def _write_trials_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _finish(path: Path, stage: str, family: str, rows: list[dict], finished: float) -> None:
    folder = path / stage / family
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done.json").write_text(json.dumps({"trials": rows, "finished": finished}))


def _trial_folder(experiment: Path, trial_id: str, losses: list[float], *, start: float, done: bool = False,
                  error: bool = False, n_folds: int = N_FOLDS, per_fold_s: float = 10.0) -> None:
    folder = experiment / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    lines = []
    for k, loss in enumerate(losses):
        running = sum(losses[: k + 1]) / (k + 1)
        last = k == len(losses) - 1
        lines.append(json.dumps({"loss": running, "fold_loss": loss, "folds_done": k + 1, "n_folds": n_folds,
                                 "time_total_s": per_fold_s * (k + 1), "timestamp": start + per_fold_s * (k + 1),
                                 "trial_id": trial_id, "training_iteration": k + 1, "done": bool(done and last)}))
    (folder / "result.json").write_text("".join(line + "\n" for line in lines))
    (folder / "params.json").write_text(json.dumps({"train.lr": 0.001}))
    if error:
        (folder / "error.txt").write_text("Failure # 1\nTraceback ...\nValueError: boom\n")
        (folder / "error.pkl").write_bytes(b"\x80\x04not-to-be-read")


@pytest.fixture
def finished_sweep(tmp_path: Path) -> Path:
    path = _sweep_base(tmp_path / "results" / "done-sweep")
    stage2_resnet = [_row("stage2", "resnet2head", f"c{i}", "completed", 0.0160 + i / 1000, 3, 50.0)
                     for i in range(5)]
    stage3 = [_row("stage3", "linear", f"d{i}", "completed", 0.0158 + i / 1000, 3, 5.0) for i in range(3)]
    now = time.time()
    for (stage, family, rows) in (("stage1", "mlp", STAGE1_ROWS), ("stage2", "mlp", STAGE2_MLP_ROWS),
                                  ("stage2", "resnet2head", stage2_resnet), ("stage3", "linear", stage3)):
        _finish(path, stage, family, rows, now - 100)
    _write_trials_csv(path, STAGE1_ROWS + STAGE2_MLP_ROWS + stage2_resnet + stage3)
    (path / "collect").mkdir()
    (path / "collect" / "blend.json").write_text(json.dumps({
        "chosen": "slsqp", "loss": 0.01512, "cross_fitted_loss": 0.01531,
        "best_component": {"id": "stage3-linear-1", "loss": 0.01580}}))
    (path / "ensemble").mkdir()
    (path / "ensemble" / "manifest.json").write_text(json.dumps({
        "components": {"stage3-linear-1": {}, "stage3-linear-2": {}}, "blend": {"method": "slsqp", "loss": 0.01512}}))
    return path


def experiments_root(sweep: Path) -> Path:
    """Where the Tune experiments of a sweep built here are: the recorded _storage, else the sweep folder."""
    recorded = yaml.safe_load((sweep / "sweep.yaml").read_text()).get("_storage")
    return Path(recorded) if recorded and "://" not in recorded else sweep


@pytest.fixture(params=["storage", "synced"])
def running_sweep(tmp_path: Path, request) -> Path:
    """stage1 done (done.json + trials.csv), stage2/mlp in progress, stage2/resnet2head and stage3 not started.

    ``storage``: the Tune experiments live apart, where sweep.yaml records (``_storage``), as a sweep
    writes them; ``synced``: a bucket's experiment folder copied into the sweep folder.
    """
    path = _sweep_base(tmp_path / "results" / "live")
    if request.param == "storage":
        raw = yaml.safe_load((path / "sweep.yaml").read_text())
        raw["_storage"] = str(tmp_path / "ray_results" / "moa-tune" / "live-0123abcd")
        (path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    else:
        raw = yaml.safe_load((path / "sweep.yaml").read_text())
        raw["_storage"] = "s3://bucket/moa-tune/live"
        (path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    now = time.time()
    _finish(path, "stage1", "mlp", STAGE1_ROWS, now - 600)
    _write_trials_csv(path, STAGE1_ROWS)
    experiment = experiments_root(path) / "stage2" / "mlp"
    experiment.mkdir(parents=True)
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    start = now - 300
    _trial_folder(experiment, "e1", [0.018, 0.017, 0.016], start=start)                 # completed: 0.017
    _trial_folder(experiment, "e2", [0.016, 0.0155, 0.0155], start=start + 5, done=True)  # completed: 0.015666
    _trial_folder(experiment, "e3", [0.030], start=start + 40, done=True)               # pruned by ASHA
    _trial_folder(experiment, "e4", [0.019, 0.018], start=now - 60)                     # running
    _trial_folder(experiment, "e5", [], start=now - 30, error=True)                     # errored
    # a line being written when the folder was read: skipped, not fatal
    with open(experiment / "trial_e4" / "result.json", "a") as handle:
        handle.write('{"loss": 0.0')
    return path


def test_finished_sweep(finished_sweep: Path) -> None:
    summary = sweep_status(finished_sweep)
    assert summary["state"] == "finished"
    assert summary["sweep"] == "demo" and summary["n_folds"] == N_FOLDS
    assert [(e["stage"], e["family"], e["state"]) for e in summary["experiments"]] == [
        ("stage1", "mlp", "done"), ("stage2", "mlp", "done"), ("stage2", "resnet2head", "done"),
        ("stage3", "linear", "done")]
    stage1 = summary["experiments"][0]
    assert stage1["trials"] == {"completed": 2, "pruned": 1, "errored": 1, "running": 0}
    assert stage1["best_loss"] == pytest.approx(0.0195) and stage1["best_trial"] == "a2"
    assert stage1["trial_time_s"] == pytest.approx(74.0)
    assert stage1["remaining"] == 0 and stage1["requested"] == 4
    stage2_mlp = summary["experiments"][1]
    assert stage2_mlp["best_loss"] == pytest.approx(0.0165) and stage2_mlp["best_trial"] == "b3"
    totals = summary["totals"]
    assert totals["experiments"] == 4 and totals["experiments_done"] == 4
    assert totals["trials"] == {"completed": 13, "pruned": 3, "errored": 1, "running": 0}
    assert totals["trials_requested"] == 4 + 5 + 5 + 3 and totals["trials_remaining"] == 0
    assert summary["best_by_stage"]["stage2"] == {"family": "resnet2head", "loss": pytest.approx(0.0160),
                                                  "trial_id": "c0"}
    collect = summary["collect"]
    assert collect["collected"] and collect["exported"]
    assert collect["blend_loss"] == pytest.approx(0.01512) and collect["blend_method"] == "slsqp"
    assert collect["ensemble_components"] == 2
    json.dumps(summary)  # JSON-ready


def test_trials_csv_stands_in_for_a_missing_done_json(finished_sweep: Path) -> None:
    (finished_sweep / "stage1" / "mlp" / "done.json").unlink()
    stage1 = sweep_status(finished_sweep)["experiments"][0]
    assert stage1["state"] == "done"
    assert stage1["trials"] == {"completed": 2, "pruned": 1, "errored": 1, "running": 0}
    assert stage1["best_loss"] == pytest.approx(0.0195) and stage1["trial_time_s"] == pytest.approx(74.0)


def test_running_sweep(running_sweep: Path) -> None:
    summary = sweep_status(running_sweep)
    assert summary["state"] == "running"
    states = {(e["stage"], e["family"]): e for e in summary["experiments"]}
    assert [e["state"] for e in summary["experiments"]] == ["done", "running", "not started", "not started"]
    live = states[("stage2", "mlp")]
    assert live["trials"] == {"completed": 2, "pruned": 1, "errored": 1, "running": 1}
    assert live["started"] == 5 and live["remaining"] == 0 and live["requested"] == 5
    assert live["best_trial"] == "e2" and live["best_loss"] == pytest.approx((0.016 + 0.0155 + 0.0155) / 3)
    # summed trial time: 30 + 30 + 10 + 20 (+ nothing for the errored trial without a result line)
    assert live["trial_time_s"] == pytest.approx(90.0)
    assert 280 <= live["wall_s"] <= 320
    assert live["last_update_s_ago"] is not None and live["last_update_s_ago"] < 120
    untouched = states[("stage2", "resnet2head")]
    assert untouched["trials"] == {"completed": 0, "pruned": 0, "errored": 0, "running": 0}
    assert untouched["remaining"] == 5 and untouched["best_loss"] is None
    totals = summary["totals"]
    assert (totals["experiments_done"], totals["experiments_running"], totals["experiments_not_started"]) == (1, 1, 2)
    assert totals["trials"] == {"completed": 4, "pruned": 2, "errored": 2, "running": 1}
    assert totals["trials_remaining"] == 5 + 3
    assert totals["trials_requested"] == 17
    assert summary["collect"]["collected"] is False and summary["collect"]["exported"] is False


def test_trials_left_to_start_in_a_running_experiment(running_sweep: Path) -> None:
    import shutil

    shutil.rmtree(experiments_root(running_sweep) / "stage2" / "mlp" / "trial_e5")
    shutil.rmtree(experiments_root(running_sweep) / "stage2" / "mlp" / "trial_e4")
    live = sweep_status(running_sweep)["experiments"][1]
    assert live["started"] == 3 and live["remaining"] == 2
    assert live["trials"]["running"] == 0


def test_interrupted_sweep_is_incomplete(finished_sweep: Path) -> None:
    import shutil

    shutil.rmtree(finished_sweep / "stage3")
    shutil.rmtree(finished_sweep / "collect")
    shutil.rmtree(finished_sweep / "ensemble")
    rows = [r for r in csv.DictReader(open(finished_sweep / "trials.csv")) if r["stage"] != "stage3"]
    _write_trials_csv(finished_sweep, rows)
    summary = sweep_status(finished_sweep)
    assert summary["state"] == "incomplete"
    assert summary["experiments"][-1]["state"] == "not started"


def test_not_a_sweep_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a sweep folder"):
        sweep_status(tmp_path)
    with pytest.raises(ConfigError, match="no such folder"):
        sweep_status(tmp_path / "missing")
    (tmp_path / "sweep.yaml").write_text("just: text\n")
    with pytest.raises(ConfigError, match="stages"):
        sweep_status(tmp_path)


def test_cli_table(running_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["status", str(running_sweep)], capsys)
    assert code == 0, err
    assert "sweep demo (running)" in out
    for text in ("stage1", "stage2", "stage3", "resnet2head", "not started", "0.019500", "0.015667"):
        assert text in out, text
    assert "running: 1 of 4 experiments done, 1 running, 2 not started" in out
    assert "best stage1: mlp 0.019500 (trial a2)" in out
    root = yaml.safe_load((running_sweep / "sweep.yaml").read_text())["_storage"]
    assert f"Tune experiments: {root} (tensorboard --logdir {root})" in out


def test_cli_table_finished(finished_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["status", str(finished_sweep)], capsys)
    assert code == 0, err
    assert "finished: 4 of 4 experiments done" in out
    assert "blend (slsqp) CV 0.015120" in out and "ensemble exported (2 components)" in out


def test_cli_json(running_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["status", str(running_sweep), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["state"] == "running"
    assert summary["totals"]["trials"]["running"] == 1
    assert summary["experiments"][1]["best_trial"] == "e2"


def test_cli_not_a_sweep_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["status", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("error: ") and str(tmp_path) in err and "not a sweep folder" in err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_status_does_not_import_ray(running_sweep: Path) -> None:
    code = ("import sys\nfrom moa_tune.status import sweep_status, status_table, status_lines\n"
            f"s = sweep_status({str(running_sweep)!r})\nstatus_table(s); status_lines(s)\n"
            "bad = [m for m in ('ray', 'optuna', 'torch') if m in sys.modules]\n"
            "assert 'ray' not in sys.modules, bad\nprint('ok', bad)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
