"""One self-contained HTML page that summarises a finished (or running) sweep folder.

``write_report(sweep_dir)`` reads what a sweep and ``moa-tune collect`` leave on disk
(``trials.csv``, ``sweep.yaml``, ``collect/components.csv``, ``collect/blend.json``,
``collect/per_target.csv``) and writes ``<sweep_dir>/report.html``. When the data the sweep ran on
(named in ``sweep.yaml``, or passed in) has a test set, a last section shows the adversarial
validation of train against test (:mod:`moa_tune.adversarial`): whether the CV losses above can be
expected to carry over to the test rows.

Why it looks the way it does:

* The page must open offline, be mailed around and be archived next to the results, so it
  references nothing outside itself: no JavaScript, no web fonts, no URLs. Plots are matplotlib
  figures rendered with the Agg canvas and embedded as base64 PNG, and the CSS sits in a
  ``<style>`` block.
* It reads files only, so it imports neither Ray nor torch: a report of a sweep on a GPU cluster
  can be written on a laptop, and writing one never starts a Ray runtime. Optuna is used only to
  compute parameter importances from the table of trials (an in-memory study).
* Every section but the trials table is optional: a section whose input file is missing says
  how to produce it, so the report is useful while a sweep is still running.
* The file is written atomically (temporary file, then rename), like every other output.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, DataWarning, MoaTuneError
from .io import write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .adversarial import AdversarialResult, FeatureShift
    from .data import MoaData

__all__ = ["write_report"]

STAGE_ORDER = ("stage1", "stage2", "stage3", "direct", "transfer")
STATE_COLOURS = {"completed": "#1f77b4", "pruned": "#ff7f0e", "errored": "#d62728"}
REQUIRED_COLUMNS = ("stage", "family", "trial_id", "state")
MIN_TRIALS_FOR_IMPORTANCE = 4
WORST_TARGETS = 15
SHIFTED_FEATURES = 15
FOLD_COLUMN = re.compile(r"^fold_(\d+)_loss$")
PARAM_PREFIX = "param."

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1360px;
 padding:0 16px;color:#222;font-size:14px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:#666}.summary{font-size:15px;background:#f3f7fb;border-left:4px solid #1f77b4;padding:8px 12px}
.na{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:6px 10px;display:inline-block}
nav a{margin-right:14px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.err{max-width:320px;overflow:hidden;text-overflow:ellipsis;color:#a33}
.scroll{max-height:520px;overflow:auto;border:1px solid #eee;display:inline-block;max-width:100%}
.state-completed{background:#e6f4ea}.state-pruned{background:#fff4e0}.state-errored{background:#fde8e8}
tr.best td{font-weight:bold}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;font-size:12px;margin-right:6px}
.b-completed{background:#2e7d32}.b-pruned{background:#ef6c00}.b-errored{background:#c62828}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid figure{margin:0}figcaption{color:#555;font-size:12px;max-width:520px}
img{max-width:100%;height:auto}
"""

NOT_YET = "not available yet: run <code>moa-tune collect {dir}</code>"


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def write_report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 data: "MoaData | None" = None) -> Path:
    """Write ``report.html`` for ``sweep_dir`` (default ``<sweep_dir>/report.html``); return its path.

    ``data``: the sweep's data when the caller has it in memory (``moa-tune run``); otherwise the
    data ``sweep.yaml`` names is read (or regenerated, for a synthetic preset) for the adversarial
    validation section. Raises :class:`ConfigError` when ``sweep_dir`` holds no ``trials.csv``
    (not a sweep folder).
    """
    folder = Path(sweep_dir)
    trials = _load_trials(folder)
    collect = folder / "collect"
    components, components_error = _read_csv(collect / "components.csv")
    blend, blend_error = _read_json(collect / "blend.json")
    per_target, per_target_error = _read_csv(collect / "per_target.csv")
    na = NOT_YET.format(dir=html.escape(str(sweep_dir)))

    body = [
        _header_section(folder, trials, components, blend),
        _trials_section(trials),
        _fold_curves_section(trials),
        _best_so_far_section(trials),
        _importance_section(trials),
        _components_section(components, blend, components_error or na),
        _weights_section(blend, blend_error or na),
        _per_target_section(per_target, per_target_error or na),
        _adversarial_section(folder, data),
    ]
    title = f"moa-tune report: {_sweep_name(folder)}"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    target = Path(out) if out is not None else folder / "report.html"
    return write_text(target, page)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _load_trials(folder: Path) -> pd.DataFrame:
    """``trials.csv`` with numeric loss columns and a 1-based ``_number`` per stage x family."""
    path = folder / "trials.csv"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a sweep folder (no such folder)")
    if not path.is_file():
        raise ConfigError(f"{folder}: not a sweep folder (no trials.csv; run `moa-tune sweep` first)")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{folder}: trials.csv is empty; not a sweep folder") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ConfigError(f"{folder}: trials.csv cannot be read ({_one_line(error)})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{folder}: trials.csv lacks column(s) {', '.join(missing)}; not a moa-tune sweep folder")
    frame = _with_finished_experiments(folder, frame)
    for column in ("stage", "family", "trial_id", "state"):
        frame[column] = frame[column].astype(str)
    for column in ["loss", "folds_done", "time_s", *_fold_columns(frame)]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    frame["_number"] = frame.groupby(["stage", "family"], sort=False).cumcount() + 1
    return frame


def _with_finished_experiments(folder: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The trials of every finished experiment from its ``done.json``, the rest from ``trials.csv``.

    ``done.json`` is each finished experiment's own record (written before ``trials.csv``), and it
    is what ``moa-tune status`` reads: a ``trials.csv`` cut short (a full disk, a copy in
    progress) must not make the report show fewer trials than ``status`` does.
    """
    parts, replaced = [], set()
    for done in sorted(folder.glob("*/*/done.json")):
        try:
            rows = json.loads(done.read_text()).get("trials") or []
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        replaced.add((done.parent.parent.name, done.parent.name))
        if rows:
            parts.append(pd.DataFrame(rows))
    if not replaced:
        return frame
    keep = ~pd.Series([(st, fa) in replaced for st, fa in zip(frame["stage"].astype(str), frame["family"].astype(str))],
                      index=frame.index, dtype=bool)
    merged = pd.concat([*parts, frame[keep]], ignore_index=True, sort=False) if parts else frame[keep]
    # experiments in the order the sweep runs them (sweep.yaml's stages, then trials.csv's), any other after them
    planned: list[tuple[str, str]] = []
    try:
        import yaml

        for entry in (yaml.safe_load((folder / "sweep.yaml").read_text()) or {}).get("stages") or []:
            planned.extend((str(entry["stage"]), str(f)) for f in entry.get("families") or [])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
        planned = []
    seen = zip(frame["stage"].astype(str), frame["family"].astype(str))
    order = {key: i for i, key in enumerate(dict.fromkeys([*planned, *seen]))}
    position = [order.get(key, len(order)) for key in zip(merged["stage"].astype(str), merged["family"].astype(str))]
    return merged.assign(_order=position).sort_values("_order", kind="stable").drop(columns="_order") \
        .reset_index(drop=True)


def _read_csv(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        return pd.read_csv(path), None
    except Exception as error:  # a damaged optional file must not stop the report
        return None, f"could not read {_e(path.name)}: {_e(_one_line(error))}"


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        value = json.loads(path.read_text())
    except Exception as error:
        return None, f"could not read {_e(path.name)}: {_e(_one_line(error))}"
    if not isinstance(value, dict):
        return None, f"could not read {_e(path.name)}: not a JSON object"
    return value, None


def _sweep_name(folder: Path) -> str:
    """``name`` from ``sweep.yaml`` when it is readable, else the folder's name."""
    path = folder / "sweep.yaml"
    if path.is_file():
        try:
            import yaml

            spec = yaml.safe_load(path.read_text())
            if isinstance(spec, dict) and spec.get("name"):
                return str(spec["name"])
        except Exception:
            pass
    return folder.resolve().name


def _fold_columns(frame: pd.DataFrame) -> list[str]:
    found = [(int(m.group(1)), c) for c in frame.columns if (m := FOLD_COLUMN.match(str(c)))]
    return [c for _, c in sorted(found)]


def _param_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).startswith(PARAM_PREFIX)]


def _experiments(trials: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(stage, family, rows in trial order) in stage order, then family name."""
    groups = [(str(s), str(f), g) for (s, f), g in trials.groupby(["stage", "family"], sort=False)]
    return sorted(groups, key=lambda item: (_stage_rank(item[0]), item[0], item[1]))


def _stage_rank(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


# --------------------------------------------------------------------------------------------
# small HTML and number helpers
# --------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:300]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _num(value: Any, digits: int = 6) -> str:
    if _is_missing(value):
        return ""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _param_text(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{float(value):.4g}"
    return str(value)


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{content}\n</section>'


def _note(text_html: str) -> str:
    return f'<p class="na">{text_html}</p>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]], row_classes: Sequence[str] = ()) -> str:
    """An HTML table; each cell is (already escaped html, css class)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if i < len(row_classes) and row_classes[i] else ""
        cells = "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for v, c in row)
        lines.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _figure(width: float = 5.2, height: float = 3.3, fixed: bool = False) -> "Figure":
    """A matplotlib figure on the Agg canvas (no GUI backend, no global pyplot state).

    ``fixed``: fixed margins instead of constrained layout (half the drawing time; for plots whose
    tick labels are short numbers).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=None if fixed else "constrained")
    if fixed:
        fig.subplots_adjust(left=0.2, right=0.97, bottom=0.15, top=0.91)
    FigureCanvasAgg(fig)
    return fig


def _img(fig: "Figure", alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _figure_block(image: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{image}{cap}</figure>"


def _robust_top(values: Sequence[float]) -> float | None:
    """An upper y limit that keeps diverged trials from squashing the interesting range, or None."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if finite.size < 4:
        return None
    low, q75, high = finite.min(), np.percentile(finite, 75), finite.max()
    top = low + 4 * (q75 - low)
    return float(top) if q75 > low and high > top else None


# --------------------------------------------------------------------------------------------
# 1. header
# --------------------------------------------------------------------------------------------


def _header_section(folder: Path, trials: pd.DataFrame, components: pd.DataFrame | None,
                    blend: Mapping[str, Any] | None) -> str:
    name = _sweep_name(folder)
    written = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    counts = trials["state"].value_counts()
    badges = "".join(
        f'<span class="badge b-{_e(s)}">{int(counts.get(s, 0))} {_e(s)}</span>'
        for s in ("completed", "pruned", "errored")
    )
    others = [s for s in counts.index if s not in STATE_COLOURS]
    badges += "".join(f'<span class="badge" style="background:#777">{int(counts[s])} {_e(s)}</span>' for s in others)
    n_exp = len(_experiments(trials))
    links = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in _toc())
    return (
        f"<header><h1>{_e('moa-tune report: ' + name)}</h1>"
        f'<p class="meta">folder {_e(folder.resolve())} &middot; written {_e(written)}</p>'
        f"<p>{len(trials)} trials in {n_exp} stage &times; family experiment(s): {badges}</p>"
        f"{_summary_line(blend)}<nav>{links}</nav></header>"
    )


def _toc() -> list[tuple[str, str]]:
    return [("trials", "Trials"), ("fold-curves", "Fold-loss curves"), ("best-so-far", "Best loss so far"),
            ("importances", "Parameter importances"), ("components", "Components vs blend"),
            ("weights", "Blend weights"), ("per-target", "Per-target loss"),
            ("adversarial", "Adversarial validation")]


def _summary_line(blend: Mapping[str, Any] | None) -> str:
    if not blend or not _finite(blend.get("loss")):
        return ""
    chosen = blend.get("chosen", "?")
    text = f"Blend ({_e(chosen)}): loss {_num(blend['loss'])}"
    if _finite(blend.get("cross_fitted_loss")):
        text += f", cross-fitted {_num(blend['cross_fitted_loss'])}"
    best = blend.get("best_component") or {}
    if isinstance(best, Mapping) and _finite(best.get("loss")):
        gain = 100 * (float(best["loss"]) - float(blend["loss"])) / float(best["loss"])
        text += (f" &mdash; best single component {_e(best.get('id', '?'))}: {_num(best['loss'])} "
                 f"(blend {abs(gain):.2f}% {'lower' if gain >= 0 else 'higher'})")
    return f'<p class="summary">{text}</p>'


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# 2. trials table
# --------------------------------------------------------------------------------------------


def _trials_section(trials: pd.DataFrame) -> str:
    parts = ["<p>One table per stage &times; family, sorted by loss (the running mean CV loss when the trial "
             "stopped: pruned trials' losses cover fewer folds). <b>Bold</b>: best completed trial; "
             "#: trial order.</p>"]
    for stage, family, rows in _experiments(trials):
        parts.append(f"<h3>{_e(stage)} / {_e(family)} &mdash; {_state_summary(rows)}</h3>")
        parts.append(f'<div class="scroll">{_trials_table(rows)}</div>')
    return _section("trials", "Trials", "\n".join(parts))


def _state_summary(rows: pd.DataFrame) -> str:
    counts = rows["state"].value_counts()
    return f"{len(rows)} trials (" + ", ".join(f"{int(n)} {_e(s)}" for s, n in counts.items()) + ")"


def _trials_table(rows: pd.DataFrame) -> str:
    params = [c for c in _param_columns(rows) if rows[c].notna().any()]
    extra = [c for c in ("node", "gpus") if c in rows and rows[c].notna().any()]
    has_error = "error" in rows and rows["error"].notna().any()
    ordered = rows.assign(_state_rank=rows["state"].map({"completed": 0, "pruned": 1}).fillna(2))
    ordered = ordered.sort_values(["loss", "_state_rank", "_number"], na_position="last", kind="stable")
    best = _best_completed(rows)
    headers = ["#", "trial", "state", "loss", "folds", "time (s)", *extra,
               *[c[len(PARAM_PREFIX):] for c in params], *(["error"] if has_error else [])]
    body, classes = [], []
    for _, row in ordered.iterrows():
        cells = [(str(row["_number"]), "num"), (_e(row["trial_id"]), ""), (_e(row["state"]), ""),
                 (_num(row["loss"]), "num"), (_param_text(row["folds_done"]), "num"),
                 (_num(row["time_s"], 1), "num")]
        cells += [(_e(_param_text(row[c])), "") for c in extra]
        cells += [(_e(_param_text(row[c])), "") for c in params]
        if has_error:
            text = "" if _is_missing(row["error"]) else str(row["error"])
            cells.append((f'<span title="{_e(text)}">{_e(text[:80])}</span>', "err"))
        body.append(cells)
        state_class = f"state-{row['state']}" if row["state"] in STATE_COLOURS else ""
        classes.append((state_class + (" best" if row["trial_id"] == best else "")).strip())
    return _table(headers, body, classes)


def _best_completed(rows: pd.DataFrame) -> str | None:
    done = rows[(rows["state"] == "completed") & rows["loss"].notna()]
    return None if done.empty else str(done.loc[done["loss"].idxmin(), "trial_id"])


# --------------------------------------------------------------------------------------------
# 3. fold-loss curves
# --------------------------------------------------------------------------------------------


def _fold_curves_section(trials: pd.DataFrame) -> str:
    folds = _fold_columns(trials)
    intro = ("<p>Running mean CV loss after each fold, one line per trial. Pruned trials end early at an "
             "<b>&times;</b> (where ASHA stopped them), errored trials at a red <b>*</b>; the thick line is the "
             "best completed trial.</p>")
    if not folds:
        return _section("fold-curves", "Fold-loss curves", _note("trials.csv has no fold_k_loss columns"))
    blocks = []
    for stage, family, rows in _experiments(trials):
        curves = {str(r["trial_id"]): (str(r["state"]), _running_mean(r[folds])) for _, r in rows.iterrows()}
        curves = {k: v for k, v in curves.items() if len(v[1])}
        if not curves:
            blocks.append(f"<p>{_e(stage)} / {_e(family)}: no fold finished yet.</p>")
            continue
        image = _img(_plot_fold_curves(stage, family, curves, len(folds), _best_completed(rows)),
                     f"fold-loss curves {stage} / {family}")
        blocks.append(_figure_block(image))
    return _section("fold-curves", "Fold-loss curves", intro + f'<div class="grid">{"".join(blocks)}</div>')


def _running_mean(fold_losses: pd.Series) -> np.ndarray:
    """Cumulative mean of the leading finished folds (a pruned trial's later folds are empty)."""
    values = fold_losses.to_numpy(dtype=float)
    missing = np.flatnonzero(~np.isfinite(values))
    values = values[: missing[0]] if missing.size else values
    return np.cumsum(values) / np.arange(1, values.size + 1)


def _plot_fold_curves(stage: str, family: str, curves: Mapping[str, tuple[str, np.ndarray]], n_folds: int,
                      best: str | None) -> "Figure":
    fig = _figure(4.3, 3.1, fixed=True)
    ax = fig.add_subplot()
    for trial_id, (state, curve) in curves.items():
        x = np.arange(1, curve.size + 1)
        colour = STATE_COLOURS.get(state, "#777777")
        is_best = trial_id == best
        ax.plot(x, curve, color="#111111" if is_best else colour, lw=2.4 if is_best else 1.0,
                alpha=1.0 if is_best else 0.55, marker="o" if curve.size == 1 else None, ms=3, zorder=3 if is_best else 2)
        if state == "pruned":
            ax.plot(x[-1], curve[-1], "x", color=colour, ms=7, mew=1.8)
        elif state == "errored":
            ax.plot(x[-1], curve[-1], "*", color=colour, ms=9)
    _clip_y(ax, [v for _, c in curves.values() for v in c])
    ax.set_xticks(range(1, n_folds + 1))
    ax.set_xlim(0.8, n_folds + 0.2)
    ax.set_xlabel("folds done")
    ax.set_ylabel("running mean loss")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(f"{stage} / {family}", fontsize=11)
    _state_legend(ax, sorted({s for s, _ in curves.values()}), best is not None)
    ax.grid(alpha=0.3)
    return fig


def _clip_y(ax: Any, values: Sequence[float]) -> None:
    top = _robust_top(values)
    if top is not None:
        low = min(v for v in values if np.isfinite(v))
        ax.set_ylim(low - 0.05 * (top - low), top)
        ax.text(0.99, 0.99, "y clipped", transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#777")


def _state_legend(ax: Any, states: Sequence[str], with_best: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=STATE_COLOURS.get(s, "#777777"), label=s) for s in states]
    if with_best:
        handles.append(Line2D([], [], color="#111111", lw=2.4, label="best completed"))
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.7)


# --------------------------------------------------------------------------------------------
# 4. best loss so far
# --------------------------------------------------------------------------------------------


def _best_so_far_section(trials: pd.DataFrame) -> str:
    intro = ("<p>Best loss of the completed trials so far against trial number (dots: completed trials; "
             "&times;: pruned trials at their last running mean, not comparable with full CV).</p>")
    blocks = []
    for stage, family, rows in _experiments(trials):
        if rows["loss"].notna().any():
            blocks.append(_figure_block(_img(_plot_best_so_far(stage, family, rows), f"best so far {stage} / {family}")))
        else:
            blocks.append(f"<p>{_e(stage)} / {_e(family)}: no trial has a loss yet.</p>")
    return _section("best-so-far", "Best loss so far", intro + f'<div class="grid">{"".join(blocks)}</div>')


def _plot_best_so_far(stage: str, family: str, rows: pd.DataFrame) -> "Figure":
    fig = _figure(4.3, 3.1, fixed=True)
    ax = fig.add_subplot()
    x = rows["_number"].to_numpy()
    loss = rows["loss"].to_numpy(dtype=float)
    completed = (rows["state"] == "completed").to_numpy() & np.isfinite(loss)
    pruned = (rows["state"] == "pruned").to_numpy() & np.isfinite(loss)
    ax.scatter(x[pruned], loss[pruned], marker="x", color=STATE_COLOURS["pruned"], s=22, label="pruned", zorder=2)
    ax.scatter(x[completed], loss[completed], color=STATE_COLOURS["completed"], s=18, label="completed", zorder=3)
    if completed.any():
        best = np.minimum.accumulate(np.where(completed, loss, np.inf))
        best[~np.isfinite(best)] = np.nan
        ax.step(x, best, where="post", color="#111111", lw=1.8, label="best so far", zorder=4)
    _clip_y(ax, list(loss[np.isfinite(loss)]))
    ax.set_xlabel("trial number")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("loss")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(f"{stage} / {family}", fontsize=11)
    ax.legend(fontsize=7, loc="best", framealpha=0.7)
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# 5. parameter importances
# --------------------------------------------------------------------------------------------


def _importance_section(trials: pd.DataFrame) -> str:
    intro = (f"<p>Optuna parameter importances (fANOVA) over the completed trials of each stage &times; family "
             f"with at least {MIN_TRIALS_FOR_IMPORTANCE} of them; parameters with a single value or left empty in "
             "some completed trial (conditional ones) are left out.</p>")
    blocks, notes = [], []
    for stage, family, rows in _experiments(trials):
        done = rows[(rows["state"] == "completed") & rows["loss"].notna()]
        label = f"{_e(stage)} / {_e(family)}"
        if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
            notes.append(f"<li>{label}: {len(done)} completed trial(s), needs {MIN_TRIALS_FOR_IMPORTANCE}</li>")
            continue
        importances, method, problem = _importances(done)
        if importances is None:
            notes.append(f"<li>{label}: {_e(problem)}</li>")
            continue
        caption = f"evaluator: {_e(method)}" + (f" (fANOVA failed: {_e(problem)})" if problem else "")
        image = _img(_plot_importances(stage, family, importances, len(done)), f"importances {stage} / {family}")
        blocks.append(_figure_block(image, caption))
    content = intro + f'<div class="grid">{"".join(blocks)}</div>'
    if notes:
        content += "<ul>" + "".join(notes) + "</ul>"
    return _section("importances", "Parameter importances", content)


def _importances(done: pd.DataFrame) -> tuple[dict[str, float] | None, str, str]:
    """(importances, evaluator name, problem text); importances None when nothing could be computed."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = _study(done)
            if study is None:
                return None, "", "no parameter took two values in every completed trial"
            return _evaluate(study)
    finally:
        optuna.logging.set_verbosity(previous)


def _study(done: pd.DataFrame) -> Any:
    """An in-memory study holding the completed trials, or None when no parameter varies."""
    import optuna

    distributions: dict[str, Any] = {}
    values: dict[str, list[Any]] = {}
    for column in _param_columns(done):
        inferred = _distribution(done[column])
        if inferred is not None:
            name = column[len(PARAM_PREFIX):]
            distributions[name], values[name] = inferred
    if not distributions:
        return None
    study = optuna.create_study(direction="minimize")
    for i, loss in enumerate(done["loss"].to_numpy(dtype=float)):
        params = {name: values[name][i] for name in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(loss)))
    return study


def _distribution(column: pd.Series) -> tuple[Any, list[Any]] | None:
    """(optuna distribution, values in row order) inferred from one param column, or None to skip it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if column.isna().any():
        return None
    raw = list(column)
    if all(isinstance(v, (bool, np.bool_)) for v in raw):
        return _categorical([bool(v) for v in raw], CategoricalDistribution)
    numbers = pd.to_numeric(column, errors="coerce")
    if pd.api.types.is_bool_dtype(column) or numbers.isna().any():
        return _categorical([str(v) for v in raw], CategoricalDistribution)
    array = numbers.to_numpy(dtype=float)
    low, high = float(array.min()), float(array.max())
    if not np.isfinite(array).all() or low == high:
        return None
    log = low > 0 and high / low >= 100
    if np.all(array == np.round(array)):
        return IntDistribution(int(low), int(high), log=log), [int(v) for v in array]
    return FloatDistribution(low, high, log=log), [float(v) for v in array]


def _categorical(values: list[Any], kind: type) -> tuple[Any, list[Any]] | None:
    choices = sorted(set(values), key=str)
    return (kind(choices), values) if len(choices) > 1 else None


def _evaluate(study: Any) -> tuple[dict[str, float] | None, str, str]:
    import optuna

    try:
        result = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        return dict(result), "fANOVA", ""
    except Exception as fanova_error:
        problem = _one_line(fanova_error)
    try:
        result = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0))
        return dict(result), "mean decrease impurity", problem
    except Exception as mdi_error:
        return None, "", f"fANOVA failed ({problem}); mean decrease impurity failed ({_one_line(mdi_error)})"


def _plot_importances(stage: str, family: str, importances: Mapping[str, float], n_trials: int) -> "Figure":
    names = list(importances)[::-1]
    fig = _figure(5.2, max(1.6, 0.6 + 0.32 * len(names)))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance")
    ax.set_xlim(0, max(1e-9, max(importances.values())) * 1.1)
    ax.set_title(f"{stage} / {family} ({n_trials} completed trials)", fontsize=11)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# 6. components vs blend
# --------------------------------------------------------------------------------------------


def _components_section(components: pd.DataFrame | None, blend: Mapping[str, Any] | None, na: str) -> str:
    title = "Components vs blend"
    if components is None:
        return _section("components", title, _note(na))
    if "id" not in components or components.empty:
        return _section("components", title, _note("collect/components.csv has no components"))
    components = components.assign(id=components["id"].astype(str))
    in_blend = {str(c) for c in (blend or {}).get("components", [])}
    scored = components[components.get("stage", pd.Series("", index=components.index)).astype(str) != "stage1"]
    parts = []
    if not scored.empty and "cv_loss" in scored:
        image = _img(_plot_components(scored, blend, in_blend), "component losses against the blend")
        parts.append(_figure_block(image, "Bars: CV loss of each scored component (dark: in the blend). Lines: "
                                          "the blend's loss and its cross-fitted loss (weights fitted on other folds)."))
    parts.append(_components_table(components, in_blend))
    return _section("components", title, "\n".join(parts))


def _plot_components(scored: pd.DataFrame, blend: Mapping[str, Any] | None, in_blend: set[str]) -> "Figure":
    ids = list(scored["id"])
    losses = pd.to_numeric(scored["cv_loss"], errors="coerce").to_numpy(dtype=float)
    fig = _figure(max(5.2, 1.2 + 0.45 * len(ids)), 3.6)
    ax = fig.add_subplot()
    colours = ["#1f4e79" if i in in_blend or not in_blend else "#9fb8d0" for i in ids]
    ax.bar(range(len(ids)), np.nan_to_num(losses, nan=0.0), color=colours)
    lines = list(losses[np.isfinite(losses)])
    for key, style, label in (("loss", "-", "blend"), ("cross_fitted_loss", "--", "blend, cross-fitted")):
        value = (blend or {}).get(key)
        if _finite(value):
            ax.axhline(float(value), color="#c0392b", ls=style, lw=1.5, label=f"{label} {float(value):.6f}")
            lines.append(float(value))
    if lines:
        low, high = min(lines), max(lines)
        pad = max(0.15 * (high - low), 0.002 * abs(high))
        ax.set_ylim(low - pad, high + pad)
    ax.set_xticks(range(len(ids)), ids, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("CV loss")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title("scored components vs blend", fontsize=11)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best", framealpha=0.8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _components_table(components: pd.DataFrame, in_blend: set[str]) -> str:
    headers = ["id", "stage", "family", "rank", "trial", "sweep loss", "cv loss", "seed losses", "seeds", "role"]
    body = []
    for _, row in components.iterrows():
        stage = str(row.get("stage", ""))
        if stage == "stage1":
            role = "stage-1 (nonscored, feeds stage 2)"
        else:
            role = "in blend" if row["id"] in in_blend else ("scored" if not in_blend else "scored, not in blend")
        seeds = str(row.get("seed_losses", "")) if not _is_missing(row.get("seed_losses")) else ""
        seed_text = ", ".join(_num(s) for s in seeds.split(";") if s.strip())
        body.append([(_e(row["id"]), ""), (_e(stage), ""), (_e(_param_text(row.get("family"))), ""),
                     (_e(_param_text(row.get("rank"))), "num"), (_e(_param_text(row.get("trial_id"))), ""),
                     (_num(row.get("sweep_loss")), "num"), (_num(row.get("cv_loss")), "num"),
                     (_e(seed_text), ""), (_e(_param_text(row.get("n_seeds"))), "num"), (_e(role), "")])
    return _table(headers, body)


# --------------------------------------------------------------------------------------------
# 7. blend weights
# --------------------------------------------------------------------------------------------


def _weights_section(blend: Mapping[str, Any] | None, na: str) -> str:
    title = "Blend weights"
    if blend is None:
        return _section("weights", title, _note(na))
    methods = blend.get("methods") if isinstance(blend.get("methods"), Mapping) else {}
    chosen = str(blend.get("chosen", ""))
    weights = _weights(methods.get(chosen))
    parts = []
    if weights:
        image = _img(_plot_weights(chosen, weights), f"blend weights ({chosen})")
        parts.append(_figure_block(image, f"Weights of the chosen method ({_e(chosen)})."))
    else:
        parts.append(_note(f"blend.json has no weights for the chosen method '{_e(chosen)}'"))
    if methods:
        parts.append(_weights_table(methods, chosen, [str(c) for c in blend.get("components", [])]))
    return _section("weights", title, "\n".join(parts))


def _weights(method: Any) -> dict[str, float]:
    if not isinstance(method, Mapping) or not isinstance(method.get("weights"), Mapping):
        return {}
    return {str(k): float(v) for k, v in method["weights"].items() if _finite(v)}


def _plot_weights(chosen: str, weights: Mapping[str, float]) -> "Figure":
    ids = sorted(weights, key=lambda k: -weights[k])
    fig = _figure(max(5.2, 1.2 + 0.45 * len(ids)), 3.4)
    ax = fig.add_subplot()
    ax.bar(range(len(ids)), [weights[i] for i in ids], color="#2e7d32")
    ax.set_xticks(range(len(ids)), ids, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("weight")
    ax.set_title(f"blend weights ({chosen})", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _weights_table(methods: Mapping[str, Any], chosen: str, order: Sequence[str]) -> str:
    names = sorted(methods, key=lambda m: (m != chosen, m))
    per_method = {m: _weights(methods[m]) for m in names}
    ids = list(dict.fromkeys([*order, *(i for m in names for i in per_method[m])]))
    headers = ["component", *[f"{m} (chosen)" if m == chosen else m for m in names]]
    body = [[(_e(i), "")] + [(_num(per_method[m].get(i), 4), "num") for m in names] for i in ids]
    for key, label in (("loss", "loss"), ("cross_fitted_loss", "cross-fitted loss")):
        body.append([(f"<b>{label}</b>", "")] + [
            (_num(methods[m].get(key)) if isinstance(methods[m], Mapping) else "", "num") for m in names])
    return _table(headers, body)


# --------------------------------------------------------------------------------------------
# 8. per-target loss
# --------------------------------------------------------------------------------------------


def _per_target_section(per_target: pd.DataFrame | None, na: str) -> str:
    title = "Per-target loss"
    if per_target is None:
        return _section("per-target", title, _note(na))
    if not {"target", "loss"} <= set(per_target.columns) or per_target.empty:
        return _section("per-target", title, _note("collect/per_target.csv has no target/loss rows"))
    frame = per_target.assign(loss=pd.to_numeric(per_target["loss"], errors="coerce")).dropna(subset=["loss"])
    image = _img(_plot_per_target(frame["loss"].to_numpy(dtype=float)), "histogram of per-target losses")
    worst = frame.sort_values("loss", ascending=False, kind="stable").head(WORST_TARGETS)
    body = [[(_e(r["target"]), ""), (_num(r["loss"]), "num"), (_e(_param_text(r.get("positives"))), "num")]
            for _, r in worst.iterrows()]
    table = f"<h3>{min(WORST_TARGETS, len(frame))} worst targets</h3>" + _table(["target", "loss", "positives"], body)
    caption = f"Out-of-fold log loss of the ensemble per scored target ({len(frame)} targets)."
    return _section("per-target", title, f'<div class="grid">{_figure_block(image, caption)}<div>{table}</div></div>')


def _plot_per_target(losses: np.ndarray) -> "Figure":
    fig = _figure(5.6, 3.4, fixed=True)
    ax = fig.add_subplot()
    ax.hist(losses, bins=int(min(40, max(5, np.sqrt(losses.size) * 2))), color="#6a5acd", alpha=0.85)
    mean = float(np.mean(losses)) if losses.size else float("nan")
    if np.isfinite(mean):
        ax.axvline(mean, color="#c0392b", ls="--", lw=1.4, label=f"mean {mean:.6f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("per-target log loss")
    ax.set_ylabel("targets")
    ax.set_title("per-target loss of the ensemble", fontsize=11)
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# 9. adversarial validation (train vs test)
# --------------------------------------------------------------------------------------------


def _adversarial_section(folder: Path, data: "MoaData | None") -> str:
    """The train-vs-test classifier's AUC and the most shifted columns, when the data has a test set.

    Computed here rather than read from a file, because the data is the one input every sweep
    folder names; default settings keep it to seconds (rows subsampled, a small classifier).
    """
    title = "Adversarial validation"
    if data is None:
        data, problem = _sweep_data(folder)
        if data is None:
            return _section("adversarial", title, _note(problem))
    if data.test is None:
        return _section("adversarial", title, _note(
            f"the data ({_e(data.source or 'in memory')}) has no test set (test_features.csv): there is nothing "
            "to compare the train rows with"))
    from .adversarial import adversarial_validation

    try:
        result = adversarial_validation(data)
    except MoaTuneError as error:
        return _section("adversarial", title, _note(f"adversarial validation failed: {_e(error)}"))
    top = result.top(SHIFTED_FEATURES)
    image = _img(_plot_shifts(top, result.auc), "most shifted columns between train and test")
    caption = ("Kolmogorov-Smirnov statistic of each column between the sampled train and test rows "
               "(0: same distribution, 1: disjoint).")
    body = [[(_e(s.feature), ""), (_num(s.ks, 3), "num"), (_num(s.mean_shift, 2), "num"), (_num(s.sd_ratio, 2), "num")]
            for s in top]
    table = (f"<h3>{len(top)} most shifted columns</h3>"
             + _table(["column", "KS", "mean shift (train SD)", "SD ratio (test/train)"], body))
    return _section("adversarial", title, _adversarial_summary(result)
                    + f'<div class="grid">{_figure_block(image, caption)}<div>{table}</div></div>')


def _sweep_data(folder: Path) -> "tuple[MoaData | None, str]":
    """(the data ``sweep.yaml`` names, or None and why not): a directory, or a synthetic preset and seed."""
    import yaml

    from .sweep_spec import load_data_source

    path = folder / "sweep.yaml"
    try:
        spec = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError) as error:
        return None, f"could not read sweep.yaml: {_e(_one_line(error))}"
    source = spec.get("data") if isinstance(spec, dict) else None
    if source is None:
        return None, "sweep.yaml names no data: give the data with <code>moa-tune data adversarial DIR</code>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # the sweep has shown them already
            return load_data_source(source, folder), ""
    except (MoaTuneError, OSError, KeyError, ValueError, TypeError) as error:
        return None, f"could not read the sweep's data {_e(source)}: {_e(_one_line(error))}"


def _adversarial_summary(result: "AdversarialResult") -> str:
    span = result.fold_auc_range
    spread = f" (folds {span[0]:.3f} to {span[1]:.3f})" if span else ""
    rows = (f"{result.train_rows_used:,} of {result.train_rows:,} train rows and {result.test_rows_used:,} of "
            f"{result.test_rows:,} test rows" + (" (sampled)" if result.subsampled else ""))
    controls = result.control_fraction
    return (
        f'<p class="summary">ROC AUC of a classifier telling test rows from train rows: '
        f"<b>{result.auc:.3f}</b>{spread} &mdash; {_e(result.meaning)}.</p>"
        f"<p>0.5: the two sets look alike (CV losses should carry over to the test set); 1.0: fully separable. "
        f"Gradient boosting on the gene and cell columns, cp_time and cp_dose; {result.params['folds']} folds that "
        f"hold out whole blocks of feature space ({result.blocks_used} k-means blocks), so that a drug's replicates "
        f"are not recognised across folds. {rows}; control rows {100 * controls['train']:.1f}% of train, "
        f"{100 * controls['test']:.1f}% of test. Computed in {result.seconds:.1f} s; "
        f"<code>moa-tune data adversarial DIR</code> gives every column.</p>"
    )


def _plot_shifts(top: Sequence["FeatureShift"], auc: float) -> "Figure":
    names = [s.feature for s in top][::-1]
    fig = _figure(5.2, max(1.6, 0.6 + 0.32 * len(names)))
    ax = fig.add_subplot()
    ax.barh(names, [s.ks for s in top][::-1], color="#4c72b0")
    ax.set_xlabel("Kolmogorov-Smirnov statistic (train vs test)")
    ax.set_xlim(0, max(1e-9, max(s.ks for s in top)) * 1.1)
    ax.set_title(f"most shifted columns (adversarial AUC {auc:.3f})", fontsize=11)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# demo folder (tests and bench/report_screenshot.py)
# --------------------------------------------------------------------------------------------
