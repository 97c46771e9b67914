"""The ``moa-tune`` command line: a thin typer shell over the library.

The library raises :class:`~moa_tune.errors.MoaTuneError` subclasses whose text is already the
user's message; :func:`main` prints it on one line (``error: ...``) and exits with code 2, with no
traceback. Warnings are printed on one line too (``warning: ...``).
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import Interrupted, MoaTuneError
from .ray_session import DASHBOARD_HOST

app = typer.Typer(
    name="moa-tune",
    help="Distributed hyperparameter search for Mechanism-of-Action (lish-moa) prediction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; rich markup would eat the brackets
)
data_app = typer.Typer(help="Read, check, describe, synthesize and compare (train vs test) lish-moa data directories.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

#: When this process started its work (the CLI module is imported first): a job's budget counts from here.
PROCESS_START = time.time()

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

DEFAULT_RESULTS = Path("results")


def _dashboard_host_option():  # noqa: ANN202 (a typer OptionInfo)
    return typer.Option(DASHBOARD_HOST, "--dashboard-host", metavar="HOST",
                        help="Where a local Ray serves its dashboard (token-protected): 127.0.0.1 for this machine "
                        "only, 0.0.0.0 for every interface; ignored with --address.")


@contextmanager
def _working(message: str) -> Iterator[None]:
    """A spinner on stderr while a long step runs (silent when stderr is not a terminal)."""
    if err.is_terminal:
        with err.status(message):
            yield
    else:
        yield


def _version(value: bool) -> None:
    if value:
        out.print(f"moa-tune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """moa-tune: tune MoA models on Ray Tune + Optuna, blend the best, export an ensemble."""


# --------------------------------------------------------------------------------------------
# data


def _load(directory: Path):
    from .data import load

    with _working(f"reading {directory}"):
        return load(directory)


@data_app.command("validate")
def data_validate(directory: Path = typer.Argument(..., help="A lish-moa directory (Kaggle's layout).")) -> None:
    """Check every file of DIR; print a short summary, or the first problem (exit code 2)."""
    data = _load(directory)
    parts = [f"{len(data.train)} train rows", f"{data.train.n_genes} genes", f"{data.train.n_cells} cells",
             f"{data.n_scored} scored targets"]
    if data.nonscored is not None:
        parts.append(f"{data.n_nonscored} nonscored targets")
    if data.drug_id is not None:
        parts.append(f"{len(set(data.drug_id.tolist()))} drugs")
    if data.test is not None:
        parts.append(f"{len(data.test)} test rows")
    out.print(f"ok: {directory}: " + ", ".join(parts))


@data_app.command("describe")
def data_describe(
    directory: Path = typer.Argument(..., help="A lish-moa directory (Kaggle's layout)."),
    top: int = typer.Option(5, min=1, help="How many most and least frequent targets to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Print rows, drugs, controls, gene and cell counts, label sparsity and target frequencies."""
    from .data import describe

    summary = describe(_load(directory), top=top)
    if as_json:
        out.print_json(json.dumps(summary))
        return

    def pct(x: float) -> str:
        return f"{100 * x:.2f}%"

    table = Table(title=f"lish-moa data: {directory}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = [
        ("train rows", f"{summary['train_rows']:,}"),
        ("test rows", f"{summary['test_rows']:,}"),
        ("drugs", "-" if summary["drugs"] is None else f"{summary['drugs']:,}"),
        ("control rows", f"{summary['control_rows']:,} ({pct(summary['control_fraction'])})"),
        ("genes (g-*)", str(summary["genes"])),
        ("cells (c-*)", str(summary["cells"])),
        ("cp_time 24/48/72", " / ".join(f"{v:,}" for v in summary["cp_time"].values())),
        ("cp_dose D1/D2", " / ".join(f"{v:,}" for v in summary["cp_dose"].values())),
        ("scored targets", str(summary["scored_targets"])),
        ("nonscored targets", "-" if not summary["nonscored_targets"] else
         f"{summary['nonscored_targets']} ({summary['nonscored_all_zero']} all zero)"),
        ("scored positives", f"{summary['scored_positives']:,} ({pct(summary['scored_positive_fraction'])} of cells)"),
        ("rows with no label", f"{summary['rows_without_label']:,} ({pct(summary['rows_without_label_fraction'])})"),
        ("treated rows with no label", f"{summary['treated_rows_without_label']:,}"),
        ("labels per row", ", ".join(f"{k}: {v:,}" for k, v in summary["labels_per_row"].items())),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    freq = Table(title="scored targets by positives")
    freq.add_column("most frequent")
    freq.add_column("n", justify="right")
    freq.add_column("least frequent")
    freq.add_column("n", justify="right")
    for (a, na), (b, nb) in zip(summary["most_frequent"], summary["least_frequent"]):
        freq.add_row(a, str(na), b, str(nb))
    out.print(freq)


@data_app.command("synth")
def data_synth(
    preset: Optional[str] = typer.Option(None, help="tiny (tests), small (demo) or full (the real size) "
                                         "[default: small; full with --labels]."),
    seed: int = typer.Option(0, help="Random seed; the output is identical for the same seed."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output directory [default: results/data/<preset>-seed<seed>]."),
    labels: Optional[Path] = typer.Option(None, help="Semi-real mode: a folder of real label files "
                                          "(train_targets_scored, optional nonscored and train_drug)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Write a synthetic lish-moa directory with the structure of the real problem."""
    from .synth import write

    name = preset or ("semi-real" if labels is not None else "small")
    target = out_dir or DEFAULT_RESULTS / "data" / f"{name}-seed{seed}"
    with _working(f"synthesizing '{name}' (seed {seed})"):
        path = write(preset, seed, target, labels=labels, overwrite=force)
    out.print(f"wrote {path}")


@data_app.command("adversarial")
def data_adversarial(
    directory: Path = typer.Argument(..., help="A lish-moa directory with test features (Kaggle's layout)."),
    top: int = typer.Option(20, min=1, help="How many of the most shifted columns to list."),
    folds: Optional[int] = typer.Option(None, help="Cross-validation folds of the classifier [default: 5]."),
    seed: Optional[int] = typer.Option(None, help="Seed of the row sample, blocks, folds and classifier [default: 0]."),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="Rows sampled from each of train and test; "
                                           "0: every row [default: 2000]."),
    blocks: Optional[int] = typer.Option(None, help="Blocks of feature space the folds hold out whole, so that a "
                                         "drug's replicates are not recognised across folds [default: 50]."),
    threads: Optional[int] = typer.Option(None, help="Threads of the k-means and the classifier; 0: every core "
                                          "[default: 1]."),
    json_file: Optional[Path] = typer.Option(None, "--json", metavar="PATH",
                                             help="Also write the result (every column ranked) to PATH as JSON."),
) -> None:
    """Can a classifier tell DIR's test rows from its train rows? Print its ROC AUC and the most shifted columns."""
    from .adversarial import adversarial_validation
    from .io import write_json

    given = {"folds": folds, "seed": seed, "max_rows": max_rows, "blocks": blocks, "threads": threads}
    params = {k: v for k, v in given.items() if v is not None}
    data = _load(directory)
    result = adversarial_validation(data, params, progress=_fold_progress("train vs test classifier"))
    used = (f"{result.train_rows_used:,} of {result.train_rows:,} train and {result.test_rows_used:,} of "
            f"{result.test_rows:,} test rows")
    if result.subsampled:
        used += f" (sampled: at most {result.params['max_rows']:,} per side; --max-rows 0 uses every row)"
    span = result.fold_auc_range
    spread = f" (folds {span[0]:.3f} to {span[1]:.3f})" if span else ""
    out.print(f"adversarial validation of {directory}: {used}", markup=False)
    out.print(f"control rows: {100 * result.control_fraction['train']:.1f}% of train, "
              f"{100 * result.control_fraction['test']:.1f}% of test", markup=False)
    out.print(f"ROC AUC {result.auc:.3f}{spread}: {result.meaning} (0.5: indistinguishable, 1.0: fully separable; "
              f"{result.params['folds']} folds holding out {result.blocks_used} blocks of feature space)", markup=False)
    table = Table(title=f"{min(top, len(result.shifts))} most shifted columns (Kolmogorov-Smirnov, train vs test)")
    for name in ("rank", "column", "KS", "mean shift (train SD)", "SD ratio (test/train)"):
        table.add_column(name, justify="left" if name == "column" else "right")
    for rank, shift in enumerate(result.top(top), start=1):
        table.add_row(str(rank), shift.feature, f"{shift.ks:.3f}", _maybe(shift.mean_shift, "+.2f"),
                      _maybe(shift.sd_ratio, ".2f"))
    out.print(table)
    if json_file is not None:
        write_json(json_file, result.to_dict())
        out.print(f"wrote {json_file}", markup=False)


def _maybe(value: float, spec: str) -> str:
    """``value`` formatted, or "-" for NaN (a column constant in train has no SD ratio)."""
    return "-" if value != value else format(value, spec)


def _fold_progress(description: str):
    """A progress callback over folds: a rich bar on a terminal, one line per fold on stderr otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not err.is_terminal:
        def plain(event: dict) -> None:
            if event["event"] == "fold_end":
                err.print(f"fold {event['fold'] + 1}/{event['n_folds']}: AUC {event['auc']:.3f}", markup=False)
        return plain
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err, transient=True)
    task = bar.add_task(description, total=None, status="")

    def rich_progress(event: dict) -> None:
        if event["event"] == "start":
            bar.update(task, total=event["n_folds"], status=f"{event['rows']:,} rows")
            bar.start()
        elif event["event"] == "fold_end":
            bar.update(task, completed=event["fold"] + 1, status=f"fold AUC {event['auc']:.3f}")
            if event["fold"] + 1 == event["n_folds"]:
                bar.stop()
    return rich_progress


@data_app.command("folds")
def data_folds(
    directory: Path = typer.Argument(..., help="A lish-moa directory (Kaggle's layout)."),
    n_splits: int = typer.Option(5, "--n-splits", min=2, help="Number of folds."),
    scheme: str = typer.Option("drug", "--folds", help="drug (needs train_drug.csv), multilabel, or auto."),
    seed: int = typer.Option(0, help="Random seed of the stratifier."),
    threshold: int = typer.Option(18, min=1, help="Drugs with at most this many rows stay whole."),
    keep_controls: bool = typer.Option(False, "--keep-controls", help="Train and score on control rows too."),
    out_file: Path = typer.Option(DEFAULT_RESULTS / "folds.npz", "--out", help="Where to save the folds."),
) -> None:
    """Make cross-validation folds, save them, and print each fold's size and label prevalence."""
    from .folds import make_folds

    data = _load(directory)
    folds = make_folds(data, n_splits, scheme, seed, threshold, keep_controls)  # type: ignore[arg-type]
    folds.save(out_file)
    table = Table(title=f"{folds.scheme} folds (seed {seed}) -> {out_file}")
    for name in ("fold", "rows", "drugs", "positive cells", "rows with no label"):
        table.add_column(name, justify="right")
    for k, (_, valid) in enumerate(folds.split()):
        y = data.scored[valid]
        drugs = "-" if data.drug_id is None else f"{len(set(data.drug_id[valid].tolist())):,}"
        table.add_row(str(k), f"{len(valid):,}", drugs, f"{100 * y.mean():.3f}%",
                      f"{100 * (y.sum(axis=1) == 0).mean():.1f}%")
    table.add_row("left out", f"{int((folds.fold < 0).sum()):,}", "", "", "")
    out.print(table)


# --------------------------------------------------------------------------------------------
# train


def _parse_set(pairs: list[str]) -> list[tuple[str, object]]:
    """``section.name=value`` overrides; the value is parsed as YAML (so 1e-3, true, [1, 2] work)."""
    import yaml

    from .errors import ConfigError

    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects section.name=value, got '{pair}'")
        try:
            parsed.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse the value '{value}'") from None
    return parsed


def _get_folds(data, folds_file: Optional[Path], n_splits: int, scheme: str, fold_seed: int):
    from .folds import Folds, make_folds

    if folds_file is not None:
        folds = Folds.load(folds_file)
        folds.check(data)
        return folds
    return make_folds(data, n_splits, scheme, fold_seed)  # type: ignore[arg-type]


@app.command("train")
def train(
    config_file: Optional[Path] = typer.Option(None, "--config", help="A YAML config (family, stage, features, model, "
                                               "train); without it, the defaults of the family given by --set family=NAME."),
    data_dir: Path = typer.Option(..., "--data", help="A lish-moa directory (Kaggle's layout)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a value: section.name=value (repeatable)."),
    inputs: list[Path] = typer.Option([], "--inputs", help="Previous stage's output folder (stage2, stage3; repeatable)."),
    folds_file: Optional[Path] = typer.Option(None, "--folds", help="folds.npz to reuse (every stage of a run must share folds)."),
    n_splits: int = typer.Option(5, "--n-splits", min=2, help="Folds to make when --folds is not given."),
    scheme: str = typer.Option("drug", "--fold-scheme", help="drug, multilabel or auto (when --folds is not given)."),
    fold_seed: int = typer.Option(0, "--fold-seed", help="Seed of the folds (when --folds is not given)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: results/train/<config name>]."),
    save_models: bool = typer.Option(True, "--save-models/--no-save-models", help="Save each fold's pipeline and network."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Cross-validate one configuration with progress; write predictions, metrics and models."""
    from .config import load_config
    from .errors import ConfigError
    from .stages import Predictions
    from .train import run_training

    config = load_config(config_file, dict(_parse_set(overrides)))
    name = config_file.stem if config_file is not None else f"{config['family']}-{config['stage']}"
    target = out_dir or DEFAULT_RESULTS / "train" / name
    if target.exists() and any(target.iterdir()) and not force:
        raise ConfigError(f"{target}: already exists (use --force to replace it, or --out elsewhere)")
    data = _load(data_dir)
    folds = _get_folds(data, folds_file, n_splits, scheme, fold_seed)
    previous = [Predictions.load(p) for p in inputs]
    result = run_training(config, data, folds, previous, target, save_models=save_models,
                          progress=_progress_printer(config, folds.n_splits))
    out.print(f"CV log loss {result.loss:.6f} over {int(folds.used.sum()):,} rows "
              f"(folds: {', '.join(f'{x:.5f}' for x in result.fold_losses)})"
              + (f"; {result.loss_all_rows:.6f} on all rows with controls predicted 0" if result.loss_all_rows else ""))
    out.print(f"wrote {target}")


def _check_replace(folder: Path, results: Path, force: bool, what: str, hint: str) -> bool:
    """Whether ``folder`` (a run or sweep of that name) must be removed before the new one starts.

    An existing folder is refused without ``--force``. With it, only a folder that moa-tune made
    (it holds the ``folds.npz`` and ``sweep.yaml`` a sweep writes first) and that sits directly in ``--results`` may
    go, and it goes only once every input has been checked (:func:`_remove_run`), so a typo in
    ``--data`` does not cost a finished run.
    """
    from .errors import ConfigError

    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return False
    if not force:
        raise ConfigError(f"{folder}: a {what} named '{folder.name}' is already here; {hint}")
    if folder.resolve().parent != results.resolve() or not folder.is_dir() or folder.is_symlink():
        raise ConfigError(f"{folder}: --force replaces only a run folder directly inside {results}")
    if not any((folder / made).is_file() for made in ("sweep.yaml", "folds.npz")):
        raise ConfigError(f"{folder}: not a moa-tune run (no sweep.yaml); --force removes only folders moa-tune made, "
                          f"so move or delete it yourself, or choose another --name")
    return True


def _remove_run(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)


@app.command("sweep")
def sweep(
    config_file: Optional[Path] = typer.Option(None, "--config", help="A sweep file [default: search_spaces/sweeps/default.yaml]."),
    data_dir: Optional[Path] = typer.Option(None, "--data", help="A lish-moa directory [default: what the sweep file names]."),
    name: Optional[str] = typer.Option(None, "--name", help="Sweep name, the folder under results/ [default: the file's name]."),
    address: Optional[str] = typer.Option(None, "--address", help="An existing Ray cluster (auto, host:port, ray://...); "
                                          "default: RAY_ADDRESS, else a local Ray."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Where Tune keeps experiments: any URI Ray Tune "
                                          "accepts (s3://, gs://, a shared path) [default: ~/ray_results/moa-tune/<name>-<hash>]."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Resume the interrupted sweep in this folder."),
    results: Path = typer.Option(DEFAULT_RESULTS, "--results", help="Parent folder of sweep folders."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of a local Ray [default: all]."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Wall-clock budget of the sweep: 30s, 10m, 2h "
                                         "[default: the sweep file's budget, else its trial counts]."),
    dashboard_host: str = _dashboard_host_option(),
    force: bool = typer.Option(False, "--force", help="Delete an earlier sweep of the same name first."),
) -> None:
    """Tune every family x stage of a sweep file on Ray Tune (OptunaSearch + fold-level ASHA)."""
    from dataclasses import replace

    from .budget import Budget, JobPlan, format_seconds, parse_budget
    from .errors import ConfigError
    from .sweep_spec import check_run_name, load_sweep

    wall_start = PROCESS_START
    budget_s = parse_budget(budget) if budget is not None else None
    replace_run = False

    if resume is not None:
        if config_file is not None or name is not None:
            raise ConfigError("--resume takes the sweep as it was recorded; leave out --config and --name")
        from .sweep import resume_spec

        spec = resume_spec(resume)
        out_path = resume
    else:
        spec = load_sweep(config_file)
        if name is not None:
            spec = replace(spec, name=check_run_name(name, "--name"))
        out_path = results / spec.name
        replace_run = _check_replace(out_path, results, force, "sweep",
                                     f"resume it with --resume {out_path}, replace it with --force, or choose another --name")
    from .sweep import check_local_resources, load_sweep_data, run_sweep

    def sweep_says() -> str:
        if not (Path(out_path) / "sweep.yaml").is_file():
            return _not_started_says("sweep")
        return f"the sweep was interrupted; what it finished is kept; go on with: moa-tune sweep --resume {out_path}"

    with _interrupted_says(sweep_says, keep=True):
        data = _load(data_dir) if data_dir is not None else load_sweep_data(spec, None)
        left = None
        if resume is not None and budget_s is None:  # a budgeted sweep goes on with what its budget had left
            from .sweep import resumed_budget

            left = resumed_budget(resume)
        budget_s = budget_s if budget_s is not None else spec.budget_s
        plan = None
        if left is not None:
            if left.left() <= 0:
                raise ConfigError(f"{resume}: this sweep spent its {format_seconds(left.total_s)} budget; give it more "
                                  f"time with --budget (counted from now)")
            plan = JobPlan(left, spec.experiments(), collect=False)
            _emit(f"resuming with {format_seconds(left.left())} of the {format_seconds(left.total_s)} budget left")
        elif budget_s is not None:
            plan = JobPlan(Budget(budget_s, wall_start), spec.experiments(), collect=False)
        if plan is not None:
            plan.check_feasible(1)
        check_local_resources(spec, address, num_cpus)
        _hold(Path(out_path), "sweep")
        if resume is None and replace_run:  # every input checked: only now is the earlier sweep removed
            _remove_run(out_path)
        result = run_sweep(spec, data, out_path, address=address, storage=storage, resume=resume is not None,
                           num_cpus=num_cpus, emit=_emit, dashboard_host=dashboard_host, plan=plan)
    counts = result.trials["state"].value_counts().to_dict() if len(result.trials) else {}
    out.print(f"{len(result.trials)} trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for (stage, family), meta in result.best.items():
        out.print(f"best {stage}/{family}: {meta['loss']:.6f} (trial {meta['trial_id']})")
    out.print(f"wrote {result.path} (trials.csv, best predictions per stage and family)")


@app.command("collect")
def collect_cmd(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder (results/<sweep-name>)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Configurations per family x stage "
                                        "[default: the sweep file's collect.top_k, else 2]."),
    n_seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Seeds per configuration, 0..N-1, the "
                                          "sweep's own training seed swapped for N (it would repeat the sweep's trials) "
                                          "[default: the sweep file's seeds, else 5]."),
    data_dir: Optional[Path] = typer.Option(None, "--data", help="A lish-moa directory [default: the sweep's data]."),
    address: Optional[str] = typer.Option(None, "--address", help="An existing Ray cluster [default: RAY_ADDRESS, "
                                          "else a local Ray]."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of a local Ray [default: all]."),
    dashboard_host: str = _dashboard_host_option(),
) -> None:
    """Retrain the best configurations with several seeds (Ray tasks), blend them, export the ensemble."""
    from .collect import collect

    if (sweep_dir / "sweep.yaml").is_file():  # else collect says what is wrong with the folder
        _hold(sweep_dir, "collect")
    with _interrupted_says(f"collect was interrupted; nothing was exported and the sweep is untouched; collect "
                           f"again with: moa-tune collect {sweep_dir}"):
        result = collect(sweep_dir, top_k=top_k, seeds=None if n_seeds is None else list(range(n_seeds)),
                         data_dir=data_dir, address=address, num_cpus=num_cpus, emit=_emit,
                         dashboard_host=dashboard_host)
    _print_blend(result.blend)
    out.print(f"wrote {result.path / 'collect'} and {result.export}")
    out.print(f"export manifest sha256 {manifest_digest(result.export)} (pin it: moa-tune predict --expect-sha256)")


def _print_blend(fitted) -> None:
    table = Table(title="ensemble (out-of-fold log loss, treated rows)")
    for column in ("component", "CV loss", "weight"):
        table.add_column(column, justify="left" if column == "component" else "right")
    weights = fitted.weights
    for name, loss in sorted(fitted.component_losses.items(), key=lambda kv: kv[1]):
        table.add_row(name, f"{loss:.6f}", f"{weights.get(name, 0.0):.3f}")
    table.add_row(f"blend ({fitted.chosen})", f"{fitted.loss:.6f}", "1.000")
    table.add_row("blend, cross-fitted", f"{fitted.cross_fitted_loss:.6f}", "")
    out.print(table)


def manifest_digest(export: Path) -> str:
    """The sha256 of an export's manifest: what ``predict --expect-sha256`` pins."""
    from .predict import MANIFEST, sha256

    return sha256(export / MANIFEST)


@app.command("predict")
def predict_cmd(
    model: Path = typer.Option(..., "--model", help="An exported ensemble (results/<sweep-name>/ensemble)."),
    data: Path = typer.Option(..., "--data", help="A lish-moa directory (its test_features and sample_submission) "
                              "or a test_features.csv file."),
    out_file: Path = typer.Option(Path("submission.csv"), "--out", help="Where to write the submission."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    expect_sha256: Optional[str] = typer.Option(None, "--expect-sha256", metavar="HEX",
                                                help="Refuse an export whose manifest.json has another sha256 (the "
                                                     "digest `collect` and `run` print)."),
) -> None:
    """Write a Kaggle submission from an exported ensemble; needs no Ray and no cluster."""
    from .data import find_file, read_features
    from .errors import DataError
    from .predict import Ensemble, submission_frame

    if out_file.is_dir():
        raise DataError(f"{out_file}: is a folder; --out names the submission file to write")
    sample, sample_name = None, "sample_submission.csv"
    if data.is_dir():
        features_file = find_file(data, "test_features")
        if features_file is None:
            raise DataError(f"{data}: missing file test_features.csv (also looked for .csv.zip and .csv.gz)")
        sample, sample_name = _read_sample(data)
    elif data.is_file():
        features_file = data
    else:
        raise DataError(f"{data}: no such file or directory")
    with _working(f"loading {model}"):
        ensemble = Ensemble.load(model, device=device, expect_sha256=expect_sha256)
    features = read_features(features_file)
    with _working(f"predicting {len(features):,} rows"):
        frame = submission_frame(ensemble.predict(features, features_file.name), sample, sample_name)
    _write_submission(frame, out_file)
    n_control = int((features.is_control).sum())
    out.print(f"wrote {out_file}: {len(frame):,} rows x {len(frame.columns) - 1} targets "
              f"({n_control:,} control rows set to 0)" + (f"; checked against {sample_name}" if sample is not None else ""))


@app.command("report")
def report_cmd(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder (results/<sweep-name>)."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Where to write it [default: SWEEP_DIR/report.html]."),
) -> None:
    """Write a self-contained HTML report of a sweep (and of its collection, once collected)."""
    from .report import write_report

    with _working("writing the report"):
        path = write_report(sweep_dir, out_file)
    out.print(f"wrote {path}")


@app.command("run")
def run_cmd(
    data_dir: Optional[Path] = typer.Option(None, "--data", help="A lish-moa directory [default: the sweep file's "
                                            "data; the embedded default synthesizes the small preset]."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A sweep file [default: search_spaces/sweeps/default.yaml]."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name, the folder under results/ [default: the file's name]."),
    results: Path = typer.Option(DEFAULT_RESULTS, "--results", help="Parent folder of run folders."),
    address: Optional[str] = typer.Option(None, "--address", help="An existing Ray cluster [default: RAY_ADDRESS, "
                                          "else a local Ray]."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Where Tune keeps experiments (s3://, gs://, a "
                                          "shared path; needed on clusters of several machines) [default: ~/ray_results/moa-tune/<name>-<hash>]."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of a local Ray [default: all]."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Configurations per family x stage to blend."),
    n_seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Seeds per configuration (0..N-1, "
                                          "the sweep's own training seed swapped for N)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Wall-clock budget of the whole job: 30s, 10m, "
                                         "2h [default: the sweep file's budget; the embedded default's is 10m]."),
    dashboard_host: str = _dashboard_host_option(),
    force: bool = typer.Option(False, "--force", help="Replace an earlier run of the same name."),
) -> None:
    """The whole job: sweep every family x stage, collect, blend, export, predict the test set, report."""
    from dataclasses import replace

    from .budget import Budget, JobPlan, format_seconds, parse_budget
    from .collect import collect
    from .errors import ConfigError
    from .predict import Ensemble, submission_frame
    from .report import write_report
    from .ray_session import shutdown, start_or_join
    from .sweep import check_local_resources, load_sweep_data
    from .sweep_spec import check_run_name, load_sweep

    started = time.perf_counter() - (time.time() - PROCESS_START)  # the job's clock starts with the process
    wall_start = PROCESS_START
    budget_s = parse_budget(budget) if budget is not None else None
    spec = load_sweep(config_file)
    if name is not None:
        spec = replace(spec, name=check_run_name(name, "--name"))
    budget_s = budget_s if budget_s is not None else spec.budget_s
    plan = None
    if budget_s is not None:
        plan = JobPlan(Budget(budget_s, wall_start), spec.experiments(),
                       top_k=int(top_k if top_k is not None else spec.collect["top_k"]),
                       n_seeds=int(n_seeds if n_seeds is not None else len(spec.seeds)),
                       collect_share=float(spec.collect["budget_share"]))
        plan.check_feasible(1)  # a budget spent before the sweep could start
    run_dir = results / spec.name
    replace_run = _check_replace(run_dir, results, force, "run", "replace it with --force or choose another --name")

    def step(number: int, text: str) -> None:
        out.print(f"[{number}/5] {text}  ({time.perf_counter() - started:.0f} s)", markup=False)

    step(1, "data: " + (str(data_dir) if data_dir is not None else
                        str(spec.data) if isinstance(spec.data, str) else
                        f"synthetic '{spec.data['synth']}' preset (seed {spec.data['seed']})"))
    with _interrupted_says(_not_started_says("run")):
        data = _load(data_dir) if data_dir is not None else load_sweep_data(spec, None)
        if data.test is None:
            raise ConfigError(f"{data.source or 'the data'}: no test_features.csv; the run predicts the test set")
        check_local_resources(spec, address, num_cpus)
        _hold(run_dir, "run")
        if replace_run:  # every input checked: only now is the earlier run removed
            _remove_run(run_dir)
        ours = start_or_join(address, num_cpus, dashboard_host, _emit)  # Ray shut down again if interrupted

    def sweep_says() -> str:
        if not (run_dir / "sweep.yaml").is_file():
            return _not_started_says("run")
        return (f"the run was interrupted in its sweep; the experiments and trials it finished are kept; go on "
                f"with: moa-tune sweep --resume {run_dir} && moa-tune collect {run_dir}")

    try:
        step(2, f"sweep: {len(spec.experiments())} family x stage experiments on Ray Tune")
        with _interrupted_says(sweep_says):
            result = _budgeted_sweep(spec, data, run_dir, address, storage, plan)
        sweep_done = time.perf_counter()
        step(3, "collect: retrain the best configurations with several seeds, blend, export")
        with _interrupted_says(f"the run was interrupted while collecting; its sweep is complete and kept; go on "
                               f"with: moa-tune collect {run_dir}"):
            collected = collect(run_dir, top_k=top_k, seeds=None if n_seeds is None else list(range(n_seeds)),
                                data=data, address=address, emit=_emit, plan=plan)
        collect_done = time.perf_counter()
    finally:
        if ours:
            shutdown()
    _print_blend(collected.blend)
    step(4, "predict the test set from the export (no Ray)")
    ensemble = Ensemble.load(collected.export)
    sample, sample_name = _read_sample(data_dir) if data_dir is not None else (None, "")
    _write_submission(submission_frame(ensemble.predict(data.test, "test_features"), sample, sample_name),
                      run_dir / "submission.csv")
    step(5, "report")
    report = write_report(run_dir, data=data)
    n_trials = len(result.trials)
    out.print(f"done in {(time.perf_counter() - started) / 60:.1f} min: {n_trials} trials, blend CV "
              f"{collected.blend.loss:.6f} (cross-fitted {collected.blend.cross_fitted_loss:.6f}); "
              f"best single component {collected.blend.best_component[1]:.6f}")
    finished = time.perf_counter()
    table = collected.components
    reused = sum(len(x.split(";")) for x in table.reused_seeds if x)
    split = (f"sweep {format_seconds(sweep_done - started)} (with data and Ray start), collect "
             f"{format_seconds(collect_done - sweep_done)} ({reused} of {int(table.n_seeds.sum())} component "
             f"seeds reused from the sweep), predict and report {format_seconds(finished - collect_done)}")
    if plan is not None:
        out.print(f"  budget {format_seconds(plan.budget.total_s)}: used {format_seconds(finished - started)}; {split}",
                  markup=False)
    else:
        out.print(f"  time: {split}", markup=False)
    out.print(f"  ensemble:   {collected.export} (manifest sha256 {manifest_digest(collected.export)})")
    out.print(f"  submission: {run_dir / 'submission.csv'}")
    out.print(f"  report:     {report}")


def _budgeted_sweep(spec, data, run_dir: Path, address: Optional[str], storage: Optional[str], plan):  # noqa: ANN001, ANN202
    """The run's sweep; a budget found too small for it leaves nothing behind (the run folder is removed)."""
    import shutil

    from .budget import BudgetError
    from .sweep import run_sweep

    try:
        return run_sweep(spec, data, run_dir, address=address, storage=storage, emit=_emit, plan=plan)
    except BudgetError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


@app.command("status")
def status_cmd(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder (results/<sweep-name>), running or finished."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Where a sweep stands, from its files (no Ray): trials per family x stage, best so far, what remains."""
    from .ray_leftovers import leftovers
    from .status import status_lines, status_table, sweep_status

    summary = sweep_status(sweep_dir)
    left = leftovers()
    summary["ray_leftovers"] = [{"driver": x.driver, "pids": [p.pid for p in x.processes]} for x in left]
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(status_table(summary))
    for line in status_lines(summary):
        out.print(line, markup=False)
    for leftover in left:
        out.print(f"still running: {leftover.describe()}; the next moa-tune sweep, collect or run on this machine "
                  f"stops them", markup=False)


def _read_sample(directory: Path):
    """(sample_submission as a DataFrame or None, its file name) of a lish-moa directory."""
    from .data import find_file

    import pandas as pd

    found = find_file(directory, "sample_submission")
    if found is None:
        return None, "sample_submission.csv"
    return pd.read_csv(found, dtype={"sig_id": str}), found.name


def _write_submission(frame, path: Path) -> None:
    """The submission CSV, written atomically (8 significant digits)."""
    from .io import atomic_file

    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8g")


def _emit(line: str) -> None:
    out.print(line, markup=False)


def _progress_printer(config: dict, n_folds: int):
    """A rich progress bar over folds x epochs on a terminal; one line per fold otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    epochs = config["train"]["epochs"]
    if not err.is_terminal:
        def plain(event: dict) -> None:
            if event["event"] == "fold_end":
                err.print(f"fold {event['fold'] + 1}/{event['n_folds']}: loss {event['loss']:.6f} "
                          f"(running {event['running_loss']:.6f})", markup=False)
        return plain
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                   TimeElapsedColumn(), console=err, transient=False)
    task = bar.add_task(f"{config['family']}/{config['stage']}", total=n_folds * epochs, status="")
    state = {"fold": 0}

    def rich_progress(event: dict) -> None:
        if event["event"] == "fold_start":
            if state["fold"] == 0:
                bar.start()
            state["fold"] = event["fold"]
            bar.update(task, completed=event["fold"] * epochs, status=f"fold {event['fold'] + 1}/{n_folds}")
        elif event["event"] == "epoch":
            bar.update(task, completed=state["fold"] * epochs + event["epoch"],
                       status=f"fold {state['fold'] + 1}/{n_folds} epoch {event['epoch']} valid {event['valid_loss']:.5f}")
        elif event["event"] == "fold_end":
            bar.update(task, completed=(event["fold"] + 1) * epochs, status=f"running CV {event['running_loss']:.5f}")
            if event["fold"] + 1 == n_folds:
                bar.stop()
    return rich_progress


# --------------------------------------------------------------------------------------------


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err.print(f"warning: {message}", soft_wrap=True, markup=False)


@contextmanager
def _interrupted_says(message: str | Callable[[], str], keep: bool = False) -> Iterator[None]:
    """A Ctrl-C or SIGTERM inside the block ends the command saying ``message``: what was kept, how to go on.

    ``message`` may be a function, asked when the signal came (what can be resumed depends on what
    had been written by then). ``keep``: an :class:`Interrupted` raised inside (the sweep names the
    experiment it stopped) keeps its own text.
    """
    def says() -> str:
        return message() if callable(message) else message

    try:
        yield
    except Interrupted:
        if keep:
            raise
        raise Interrupted(says()) from None
    except KeyboardInterrupt:
        raise Interrupted(says()) from None


def _not_started_says(what: str) -> str:
    return f"the {what} was interrupted before its sweep had written anything; start it again with the same command"


@contextmanager
def _sigterm_handled_as_ctrl_c() -> Iterator[None]:
    """:func:`_sigterm_as_ctrl_c` while a command runs (the handler from before is put back after it)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    before = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _sigterm_as_ctrl_c(signum: int, frame) -> None:  # noqa: ANN001 (a frame)
    """SIGTERM (``kill``, a job scheduler, ``docker stop``) is handled as Ctrl-C.

    By whatever handles SIGINT at that moment: Ray Tune's during a sweep's ``fit()`` (it ends the
    experiment and saves its state, :func:`moa_tune.sweep.fit_or_interrupted`), Python's
    KeyboardInterrupt elsewhere, even where the shell started moa-tune with SIGINT ignored.
    """
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


#: Context managers a command enters for its whole life (``_hold``); closed by :func:`main` however it ends.
_HELD: ExitStack | None = None


def _hold(run_dir: Path, command: str) -> None:
    """Take ``run_dir``'s lock (:mod:`moa_tune.lock`) until the command ends."""
    from .lock import run_lock

    if _HELD is None:  # called outside main (a test calling the command function): nothing to release it
        raise RuntimeError("moa-tune commands take their lock through main()")
    _HELD.enter_context(run_lock(run_dir, command))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning MoaTuneError into one line and exit code 2.

    Click handles usage errors itself (one message, exit code 2); everything the library rejects
    arrives here as a MoaTuneError whose text is the user's message. An OSError (no space left,
    permission denied, a path that is a file) is the machine's answer, not a bug: one line naming
    the path, exit code 2; the atomic writers leave nothing half-written under a final name.
    """
    global _HELD
    warnings.showwarning = _show_warning
    try:
        with ExitStack() as _HELD:  # what a command holds until it ends (its run folder's lock)
            _HELD.enter_context(_sigterm_handled_as_ctrl_c())
            app(args=argv, prog_name="moa-tune")
    except MoaTuneError as exc:
        err.print(f"error: {exc}", soft_wrap=True, markup=False)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as exc:  # Ctrl-C or SIGTERM: what was kept and how to go on, exit code 130
        err.print(f"interrupted: {exc}" if str(exc) else "interrupted", soft_wrap=True, markup=False)
        sys.exit(130)
    except OSError as exc:  # a full disk, a denied or missing path: the environment, told in one line
        where = exc.filename if exc.filename is not None else None
        text = exc.strerror or str(exc) or type(exc).__name__
        err.print(f"error: {where}: {text}" if where else f"error: {text}", soft_wrap=True, markup=False)
        sys.exit(2)


if __name__ == "__main__":
    # `python -m moa_tune.cli`: run the importable module's main, not this __main__ copy's. Ray Tune
    # pickles what a sweep hands it (the progress printer); from __main__ it would be pickled by
    # value, with the console and its lock, and fail; from moa_tune.cli it is pickled by name.
    from moa_tune.cli import main as _main

    _main()
