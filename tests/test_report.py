"""Tests of moa_tune.report: a self-contained HTML page summarising a sweep folder, without Ray or torch.

The full report of the demo folder is written once, in a fresh Python process, so the same run also
checks that writing a report imports neither Ray nor torch (this process has torch loaded by conftest).
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from moa_tune.errors import ConfigError
from moa_tune.report import _distribution, _evaluate, _study, write_report
from moa_tune.testing import demo_sweep

ROOT = Path(__file__).resolve().parents[1]
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
SECTIONS = ("Trials", "Fold-loss curves", "Best loss so far", "Parameter importances", "Components vs blend",
            "Blend weights", "Per-target loss")
HTML_ERROR = "ValueError: bad <b>value</b> & more"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo sweep folder and its report, written by a fresh interpreter that reports its modules."""
    folder = demo_sweep(tmp_path_factory.mktemp("report") / "sweep")
    trials = pd.read_csv(folder / "trials.csv")
    trials.loc[trials["state"] == "errored", "error"] = HTML_ERROR  # checks escaping
    trials.to_csv(folder / "trials.csv", index=False)
    code = textwrap.dedent(f"""
        import json, sys
        from moa_tune.report import write_report
        path = write_report({str(folder)!r})
        print(json.dumps({{"path": str(path), "modules": [m for m in ("ray", "torch") if m in sys.modules]}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"folder": folder, "trials": trials, "path": Path(result["path"]), "modules": result["modules"],
            "html": Path(result["path"]).read_text()}


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(data) for data in IMAGE.findall(text)]


def _expected_images(trials: pd.DataFrame, collect: bool) -> int:
    experiments = trials.groupby(["stage", "family"])
    n_importance = sum(int((g["state"] == "completed").sum() >= 4) for _, g in experiments)
    return 2 * experiments.ngroups + n_importance + (3 if collect else 0)


def test_report_imports_neither_ray_nor_torch(demo: dict) -> None:
    assert demo["modules"] == []


def test_report_is_written_where_expected_without_temp_files(demo: dict) -> None:
    folder: Path = demo["folder"]
    assert demo["path"] == folder / "report.html"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["collect", "report.html", "sweep.yaml", "trials.csv"]
    assert not [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_report_is_self_contained(demo: dict) -> None:
    text = demo["html"].lower()
    for needle in ("http://", "https://", "<script", "<link", "url(", "@import", "file://"):
        assert needle not in text, needle
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")


def test_report_has_every_section_and_plot(demo: dict) -> None:
    text = demo["html"]
    for title in SECTIONS:
        assert f">{title}</h2>" in text, title
    assert "demo-sweep" in text  # the name in sweep.yaml
    assert "not available yet" not in text
    images = _images(text)
    assert len(images) == _expected_images(demo["trials"], collect=True) == 11
    assert all(image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 3000 for image in images)


def test_report_lists_trials_states_and_escapes_text(demo: dict) -> None:
    text, trials = demo["html"], demo["trials"]
    for trial_id in trials["trial_id"]:
        assert f">{trial_id}<" in text, trial_id
    counts = trials["state"].value_counts()
    for state in ("completed", "pruned", "errored"):
        assert f"{counts[state]} {state}</span>" in text
    assert "model.hidden_size" in text and "features.pca_components" in text
    assert "bad &lt;b&gt;value&lt;/b&gt; &amp; more" in text
    assert "<b>value</b>" not in text


def test_report_shows_blend_components_and_targets(demo: dict) -> None:
    text, folder = demo["html"], demo["folder"]
    blend = json.loads((folder / "collect" / "blend.json").read_text())
    chosen = blend["chosen"]
    assert f"{chosen} (chosen)" in text
    for component, weight in blend["methods"][chosen]["weights"].items():
        assert re.search(rf">{re.escape(component)}</td><td class=\"num\">{weight:.4f}<", text), component
    for method in blend["methods"].values():
        assert f"{method['cross_fitted_loss']:.6f}" in text
    assert "stage-1 (nonscored, feeds stage 2)" in text
    assert f"best single component {blend['best_component']['id']}" in text
    per_target = pd.read_csv(folder / "collect" / "per_target.csv")
    worst = per_target.sort_values("loss", ascending=False)
    assert worst["target"].iloc[0] in text and worst["target"].iloc[14] in text
    assert worst["target"].iloc[-1] not in text


def test_report_of_a_folder_with_only_trials(demo: dict, tmp_path: Path) -> None:
    folder = tmp_path / "running"
    folder.mkdir()
    shutil.copy(demo["folder"] / "trials.csv", folder / "trials.csv")
    out = tmp_path / "elsewhere" / "page.html"
    assert write_report(folder, out=out) == out
    assert sorted(p.name for p in folder.iterdir()) == ["trials.csv"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["page.html"]
    text = out.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in text, title
    assert text.count("not available yet: run <code>moa-tune collect") == 3
    assert len(_images(text)) == _expected_images(demo["trials"], collect=False)
    assert "running" in text  # the folder name stands in for the sweep name


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_a_folder_without_trials_is_not_a_sweep_folder(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "not-a-sweep"
    if make == "empty":
        folder.mkdir()
    with pytest.raises(ConfigError) as caught:
        write_report(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder}: ") and "not a sweep folder" in message
    assert "\n" not in message
    assert not (folder / "report.html").exists()


def test_parameter_distributions_are_inferred_from_the_columns() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    lr, values = _distribution(pd.Series([1e-4, 3e-3, 1e-2]))
    assert isinstance(lr, FloatDistribution) and lr.log and values == [1e-4, 3e-3, 1e-2]
    dropout, _ = _distribution(pd.Series([0.1, 0.3, 0.2]))
    assert isinstance(dropout, FloatDistribution) and not dropout.log
    hidden, values = _distribution(pd.Series([256.0, 1024.0, 512.0]))
    assert isinstance(hidden, IntDistribution) and (hidden.low, hidden.high) == (256, 1024) and values[1] == 1024
    scaler, _ = _distribution(pd.Series(["quantile", "none", "quantile"]))
    assert isinstance(scaler, CategoricalDistribution) and set(scaler.choices) == {"quantile", "none"}
    flag, values = _distribution(pd.Series([True, False, True]))
    assert isinstance(flag, CategoricalDistribution) and values == [True, False, True]
    assert _distribution(pd.Series([20, 20, 20])) is None  # a single value
    assert _distribution(pd.Series([50.0, None, 80.0])) is None  # conditional, empty in one trial


def test_importances_fall_back_when_fanova_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    done = pd.DataFrame({"loss": [0.0170, 0.0165, 0.0180, 0.0168, 0.0172],
                         "param.train.lr": [1e-4, 1e-3, 1e-2, 5e-4, 3e-3],
                         "param.model.use_bn": [True, False, True, False, True]})

    class Broken:
        def __init__(self, **kwargs: object) -> None:
            raise RuntimeError("no fanova today")

    monkeypatch.setattr(optuna.importance, "FanovaImportanceEvaluator", Broken)
    importances, method, problem = _evaluate(_study(done))
    assert method == "mean decrease impurity" and "no fanova today" in problem
    assert set(importances) == {"train.lr", "model.use_bn"}

    monkeypatch.setattr(optuna.importance, "MeanDecreaseImpurityImportanceEvaluator", Broken)
    importances, _, problem = _evaluate(_study(done))
    assert importances is None and problem.count("no fanova today") == 2


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_renders_in_headless_chromium(demo: dict, tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium, chromium-browser or google-chrome binary on PATH")
    png = tmp_path / "report.png"
    command = [binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1400,3000",
               demo["path"].resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert png.is_file(), f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_a_trials_csv_cut_short_does_not_hide_finished_experiments(demo: dict, tmp_path: Path) -> None:
    """Finished experiments are read from their done.json, as `moa-tune status` reads them."""
    from moa_tune.report import _load_trials

    folder = shutil.copytree(demo["folder"], tmp_path / "cut")
    full = pd.read_csv(folder / "trials.csv")
    for (stage, family), rows in full.groupby(["stage", "family"], sort=False):
        (folder / stage / family).mkdir(parents=True)
        records = json.loads(rows.to_json(orient="records"))
        (folder / stage / family / "done.json").write_text(json.dumps({"trials": records, "finished": 1.0}))
    text = (folder / "trials.csv").read_text().splitlines()
    (folder / "trials.csv").write_text("\n".join(text[:2]) + "\n")  # the header and one trial left
    loaded = _load_trials(folder)
    assert len(loaded) == len(full)
    assert loaded[["stage", "family", "trial_id"]].astype(str).values.tolist() == \
        full[["stage", "family", "trial_id"]].astype(str).values.tolist()
