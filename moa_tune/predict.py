"""An exported ensemble, loaded back and predicting: no Ray, no Optuna, no pickle.

``Ensemble.load(path)`` reads ``manifest.json`` (written by :mod:`moa_tune.export`), checks the
schema version and the sha256 of every file it lists, and rebuilds each fold's feature pipeline
and network from arrays and JSON. ``predict(features)`` runs the stages in order exactly as the
collector combined them, so its output equals the collector's own test predictions:

- a component's prediction is the mean over its seeds of the mean over its folds (the same
  fold-average the cross-validation gives test rows), with control rows set to 0;
- a stage's inputs are the previous stage's components combined as the manifest says
  (``blend``: weighted average; ``per_family``: each family's mean, side by side);
- the final prediction is the blend of the scored components.

The functions that combine predictions live here and the collector calls them too, so the
export cannot drift from what was measured.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .data import Features, parse_features
from .errors import DataError, ExportError

__all__ = ["SCHEMA", "Ensemble", "check_manifest", "combine_inputs", "mean_of", "sha256", "submission_frame"]

#: Version of the export layout; bumped when a reader of an older version could misread it.
SCHEMA = 1
MANIFEST = "manifest.json"


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mean_of(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The float32 mean of equally shaped arrays (folds of a seed, seeds of a component)."""
    return np.mean(np.stack(arrays), axis=0, dtype=np.float64).astype(np.float32)


def combine_inputs(recipe: Mapping[str, Any], outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """A stage's inputs from the previous stage's component outputs, as ``recipe`` says.

    ``{"mode": "blend", "weights": {id: w}}``: the weighted average of those components;
    ``{"mode": "per_family", "families": {family: [ids]}}``: each family's mean, side by side
    (families in sorted order).
    """
    if recipe["mode"] == "blend":
        weights = recipe["weights"]
        out = np.zeros(outputs[next(iter(weights))].shape, dtype=np.float64)
        for cid, w in weights.items():
            if w:
                out += float(w) * outputs[cid]
        return out.astype(np.float32)
    families = recipe["families"]
    return np.hstack([mean_of([outputs[c] for c in families[f]]) for f in sorted(families)])


def _expand(raw: np.ndarray, component: Mapping[str, Any]) -> np.ndarray:
    """The network's outputs on the component's output columns (dropped all-zero columns as 0)."""
    picked = raw[:, component["output"]]
    if len(component["restore"]) == len(component["columns"]):
        return picked
    full = np.zeros((len(raw), len(component["columns"])), dtype=np.float32)
    full[:, component["restore"]] = picked
    return full


@dataclass
class _Fold:
    pipeline: Any
    model: Any


def check_manifest(manifest: Any, where: Path) -> None:
    """The manifest's structure, checked before anything it names is opened; ExportError in one line."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ExportError(f"{where}: {what} (not a manifest this moa-tune wrote; export again with moa-tune collect)")

    need(isinstance(manifest, dict), "the manifest is not a JSON object")
    for key, kind in (("files", dict), ("components", dict), ("stages", list), ("blend", dict), ("targets", dict),
                      ("features", dict), ("folds", dict)):
        need(isinstance(manifest.get(key), kind), f"'{key}' is missing or not a {'list' if kind is list else 'mapping'}")
    files = manifest["files"]
    need(all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()),
         "'files' must map file names to sha256 digests")
    components = manifest["components"]
    need(bool(components), "'components' is empty")
    for cid, component in components.items():
        need(isinstance(component, dict) and isinstance(component.get("members"), list) and component["members"],
             f"component '{cid}' has no members")
        for key in ("columns", "output", "restore"):
            need(isinstance(component.get(key), list), f"component '{cid}': '{key}' is missing or not a list")
        for member in component["members"]:
            need(isinstance(member, dict) and isinstance(member.get("folds"), list) and member["folds"]
                 and all(isinstance(f, str) for f in member["folds"]), f"component '{cid}': a member without folds")
    for stage in manifest["stages"]:
        need(isinstance(stage, dict) and isinstance(stage.get("components"), list), "a stage without 'components'")
        unknown = [c for c in stage["components"] if c not in components]
        need(not unknown, f"stage '{stage.get('stage')}' names an unknown component {unknown[:1]}")
    weights = manifest["blend"].get("weights")
    need(isinstance(weights, dict) and bool(weights), "'blend.weights' is missing or empty")
    need(all(c in components for c in weights), f"'blend.weights' names an unknown component "
                                                f"{[c for c in weights if c not in components][:1]}")
    need(all(isinstance(w, (int, float)) and not isinstance(w, bool) and np.isfinite(w) and w >= 0
             for w in weights.values()), "'blend.weights' must be finite, non-negative numbers")
    need(abs(sum(weights.values()) - 1.0) < 1e-3, f"'blend.weights' sum to {sum(weights.values()):.6g}, not 1")
    need(isinstance(manifest["targets"].get("scored"), list), "'targets.scored' is missing")
    need(all(isinstance(manifest["features"].get(k), list) for k in ("gene_columns", "cell_columns")),
         "'features' must list gene_columns and cell_columns")


def _inside(root: Path, name: str, where: Path) -> Path:
    """``root / name`` if ``name`` is relative and stays inside ``root`` (no '..', no absolute path, no link out)."""
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts or not name:
        raise ExportError(f"{where}: '{name}' is not a name inside the export")
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise ExportError(f"{where}: '{name}' leads outside the export")
    return resolved


def _verify_folder(root: Path, folder: Path, listed: Mapping[str, str], where: Path) -> None:
    """Every file of a fold folder is listed in the manifest and matches its sha256, before it is read."""
    if not folder.is_dir():
        raise ExportError(f"{root}: missing folder {folder.relative_to(root).as_posix()} (named in {MANIFEST})")
    for file in sorted(folder.rglob("*")):
        if file.is_dir():
            continue
        name = file.relative_to(root).as_posix()
        if file.is_symlink() or not file.is_file():
            raise ExportError(f"{root}: {name} is not a plain file")
        if name not in listed:
            raise ExportError(f"{root}: {name} is not listed in {MANIFEST} (added after the export?)")
        if sha256(file) != listed[name]:
            raise ExportError(f"{root}: {name} has changed since the export (sha256 differs from {MANIFEST})")
    prefix = folder.relative_to(root).as_posix() + "/"
    for name in listed:
        if name.startswith(prefix) and not (root / name).is_file():
            raise ExportError(f"{root}: missing file {name} (listed in {MANIFEST})")


class Ensemble:
    """A loaded export: ``Ensemble.load(path).predict(features_df)`` -> DataFrame of scored targets."""

    def __init__(self, path: Path, manifest: dict[str, Any], folds: dict[str, list[list[_Fold]]],
                 device: Any) -> None:
        self.path = path
        self.manifest = manifest
        self._folds = folds          # component id -> seeds -> folds
        self.device = device

    # ---- loading

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", verify: bool = True,
             expect_sha256: str | None = None) -> "Ensemble":
        """Read and check an export folder; errors name the folder and the file at fault.

        What is protected: every file the loader reads (each fold folder's files) must be listed in
        the manifest with its sha256 and match it before it is opened, and every name stays inside
        the export. A changed, missing, unlisted or outside file is refused. What is not: the
        manifest itself, which anyone who can write the folder can rewrite together with its
        hashes; ``expect_sha256`` (the digest the collector printed) pins it. ``verify=False``
        skips the hashes (not the containment or structure checks).
        """
        import torch

        from .artifacts import load_fitted
        from .train import choose_device

        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise ExportError(f"{path}: no such export folder (give results/<sweep>/ensemble)")
        if not manifest_path.is_file():
            raise ExportError(f"{path}: missing {MANIFEST} (not a moa-tune export)")
        digest = sha256(manifest_path) if expect_sha256 is not None else None
        if digest is not None and digest != expect_sha256.strip().lower():
            raise ExportError(f"{manifest_path}: sha256 {digest} is not the expected {expect_sha256} "
                              f"(the export was changed or is another one)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExportError(f"{manifest_path}: not valid JSON ({exc})") from None
        schema = manifest.get("schema") if isinstance(manifest, dict) else None
        if isinstance(manifest, dict) and schema != SCHEMA:
            raise ExportError(f"{manifest_path}: export schema {schema!r} but this moa-tune reads schema {SCHEMA}; "
                              f"export again with this version (moa-tune collect) or install the moa-tune that "
                              f"wrote it ({manifest.get('moa_tune', 'unknown')})")
        check_manifest(manifest, manifest_path)
        listed: dict[str, str] = manifest["files"]
        root = path.resolve()
        device = choose_device(device) if device in ("auto", "cpu", "cuda") else torch.device(device)
        folds: dict[str, list[list[_Fold]]] = {}
        for cid, component in manifest["components"].items():
            folds[cid] = []
            for member in component["members"]:
                loaded = []
                for fold_dir in member["folds"]:
                    folder = _inside(root, fold_dir, manifest_path)
                    if verify:
                        _verify_folder(root, folder, listed, manifest_path)
                    try:
                        pipeline, model, _ = load_fitted(folder, device=device)
                    except ExportError:
                        raise
                    except Exception as exc:  # a truncated or rewritten file: whatever its reader raises
                        cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                        raise ExportError(f"{path}: {fold_dir} cannot be loaded ({cause})") from None
                    loaded.append(_Fold(pipeline, model))
                folds[cid].append(loaded)
        return cls(path, manifest, folds, device)

    # ---- what it predicts

    @property
    def scored_columns(self) -> list[str]:
        return list(self.manifest["targets"]["scored"])

    @property
    def components(self) -> list[str]:
        return list(self.manifest["components"])

    def _features(self, features: Features | pd.DataFrame, name: str) -> Features:
        if isinstance(features, pd.DataFrame):
            features = parse_features(features, name)
        expected = self.manifest["features"]
        for kind, got, want in (("gene", features.gene_columns, expected["gene_columns"]),
                                ("cell", features.cell_columns, expected["cell_columns"])):
            if list(got) != list(want):
                lacking = [c for c in want if c not in got]
                extra = [c for c in got if c not in want]
                if lacking:
                    raise DataError("missing column (the ensemble was trained with it)", file=name, column=lacking[0])
                if extra:
                    raise DataError(f"{kind} column the ensemble was not trained with", file=name, column=extra[0])
                raise DataError(f"{kind} columns are in another order than in training", file=name)
        return features

    def component_predictions(self, features: Features | pd.DataFrame,
                              name: str = "features") -> dict[str, np.ndarray]:
        """Every component's prediction (its own output columns), stages run in order."""
        from .train import predict

        features = self._features(features, name)
        control = features.is_control
        zero_controls = not self.manifest["folds"]["keep_controls"]
        outputs: dict[str, np.ndarray] = {}
        for stage in self.manifest["stages"]:
            inputs = combine_inputs(stage["inputs"], outputs) if stage.get("inputs") else None
            for cid in stage["components"]:
                component = self.manifest["components"][cid]
                seeds = []
                for member in self._folds[cid]:
                    per_fold = [_expand(predict(f.model, f.pipeline.transform(features, inputs), self.device),
                                        component) for f in member]
                    seeds.append(mean_of(per_fold))
                out = mean_of(seeds)
                if zero_controls:
                    out[control] = 0.0
                outputs[cid] = self._probabilities(cid, out, name)
        return outputs

    def _probabilities(self, cid: str, values: np.ndarray, name: str) -> np.ndarray:
        """``values`` if every cell is a finite probability; an ExportError naming the component otherwise.

        A damaged network (or one edited with its hash) predicts NaN; it must stop the prediction at
        the component that made it, before a later stage or the submission takes it in silently.
        """
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            raise ExportError(f"{self.path}: component {cid} predicted {values[row, column]!r} for row {row + 1} of "
                              f"{name}, column {column + 1} ({int(bad.sum())} such cells); the export cannot be trusted")
        return values

    def predict_array(self, features: Features | pd.DataFrame, name: str = "features") -> np.ndarray:
        """(rows, scored targets) float32 probabilities: the blend of the scored components."""
        outputs = self.component_predictions(features, name)
        blend = self.manifest["blend"]
        return combine_inputs({"mode": "blend", "weights": blend["weights"]}, outputs)

    def predict(self, features: Features | pd.DataFrame, name: str = "features") -> pd.DataFrame:
        """A DataFrame: ``sig_id`` then the scored targets (control rows 0), in the input's row order."""
        parsed = self._features(features, name)
        frame = pd.DataFrame(self.predict_array(parsed, name), columns=self.scored_columns)
        frame.insert(0, "sig_id", parsed.sig_id.astype(object))
        return frame


def submission_frame(predictions: pd.DataFrame, sample: pd.DataFrame | None, sample_name: str = "sample_submission.csv"
                     ) -> pd.DataFrame:
    """Predictions in the sample submission's row and column order, checked against it.

    Without a sample, the predictions as they are (sig_id, scored targets in training order).
    """
    if sample is None:
        return predictions
    if "sig_id" not in sample.columns:
        raise DataError("missing column", file=sample_name, column="sig_id")
    columns = [c for c in sample.columns if c != "sig_id"]
    lacking = [c for c in columns if c not in predictions.columns]
    if lacking:
        raise DataError("target column the ensemble does not predict", file=sample_name, column=lacking[0])
    extra = [c for c in predictions.columns if c != "sig_id" and c not in columns]
    if extra:
        raise DataError(f"has no column for the scored target '{extra[0]}' the ensemble predicts", file=sample_name)
    ids = sample["sig_id"].astype(str)
    index = pd.Index(predictions["sig_id"].astype(str))
    position = index.get_indexer(ids)
    if (position < 0).any():
        r = int(np.flatnonzero(position < 0)[0])
        raise DataError("sig_id not in the test features", file=sample_name, row=r + 1, sig_id=str(ids.iloc[r]))
    if len(ids) != len(index):
        missing = sorted(set(index) - set(ids))[:1]
        raise DataError(f"{len(index) - len(ids)} test sig_id(s) have no row, e.g. {missing[0]}", file=sample_name)
    out = predictions.iloc[position][["sig_id", *columns]].reset_index(drop=True)
    return out
