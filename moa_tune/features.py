"""The per-fold feature pipeline, configured by the ``features`` section of a config.

Fitted on the training rows of one fold only, then applied to that fold's validation rows and
to the test rows: fitting a scaler or PCA on validation or test rows leaks their distribution
into training (the most common mistake of competition code). Steps, in order:

1. row statistics (mean, std, skew, kurtosis) of the raw genes and of the raw cells;
2. scaling of genes and cells: RankGauss (``QuantileTransformer`` to a normal output),
   standard scaling, or none;
3. PCA components of the scaled genes and of the scaled cells, appended (0 turns it off);
4. Factor Analysis components of the scaled genes and of the scaled cells (``gene_fa``,
   ``cell_fa``; off by default): like PCA, but each column keeps its own noise variance, so a
   few very noisy genes do not take over components;
5. UMAP embeddings of the scaled genes and of the scaled cells (``gene_umap``, ``cell_umap``;
   off by default: a UMAP fit per fold is slow on real data, and single-threaded because it is
   seeded): non-linear neighbourhood structure that PCA and FA cannot express;
6. products of the ``pair_products`` most correlated pairs of scaled gene/cell columns,
   standardised (off by default): interactions a network would otherwise have to learn;
7. previous-stage predictions (``inputs``), optionally logit- or RankGauss-transformed;
8. ``VarianceThreshold`` over the numeric columns;
9. encoding of cp_time (one-hot) and cp_dose (0/1).

The fitted state is plain arrays plus JSON (:meth:`FeaturePipeline.state`), no pickle, and
:meth:`FeaturePipeline.from_state` rebuilds a pipeline whose outputs are identical.

UMAP has no format of its own but pickle, so its state is the least that ``UMAP.transform``
needs: the training rows it was fitted on (new rows are placed by their neighbours among them),
their embedding and UMAP's two curve parameters. That costs ``4 * rows * (columns + components)``
bytes per fitted UMAP: about 59 MB for the genes of a real fold (19,000 rows x 772 genes) and
8 MB for its cells, in every pipeline of an export (fold x seed x component). The fuzzy graph,
neighbour lists and pynndescent index of the fitted object are not kept. New rows find their
neighbours exactly (scikit-learn's euclidean distances to the stored rows: a new rows x training
rows matrix) rather than through the pynndescent index UMAP builds from 4096 training rows on:
that index cannot be saved without pickle, and rebuilding it would cost a pynndescent build per
pipeline at every load. The pipeline uses this saved form from the moment it is fitted, so a
restored pipeline's UMAP columns are bit-identical to the original's. Below 4096 rows UMAP
searches exactly too, but its numba distances may differ in the last bit, and as UMAP seeds each
new row's optimisation from where the row starts, a few rows then land elsewhere than with
umap-learn's own ``transform``. That ``transform`` optimises a batch of new rows together (edges
are cut and sampled relative to the batch's strongest edge), so a row's columns depend on the
rows transformed with it; the same rows give the same columns.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from scipy import stats as sps
from sklearn.decomposition import PCA, FactorAnalysis
from sklearn.feature_selection import VarianceThreshold
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from .data import CP_DOSES, CP_TIMES, Features
from .errors import ConfigError
from .params import Param, resolve

if TYPE_CHECKING:
    from umap import UMAP

__all__ = ["GROUPS", "PARAMS", "FeaturePipeline"]

#: Names of the column groups of the feature matrix, in order (``meta`` always last).
GROUPS: tuple[str, ...] = ("genes", "cells", "gene_pca", "cell_pca", "gene_fa", "cell_fa", "gene_umap", "cell_umap",
                           "pairs", "stats", "inputs", "meta")
#: Probability clip before the logit of previous-stage predictions.
LOGIT_EPS = 1e-4
#: Seed of the randomized parts of the transformers (PCA and FA solvers, UMAP); folds and models have their own.
TRANSFORM_SEED = 0

PARAMS: dict[str, Param] = {
    "scaler": Param("str", "rankgauss", "Scaling of genes and cells.", choices=("rankgauss", "standard", "none")),
    "n_quantiles": Param("int", 100, "Quantiles of the RankGauss transform.", low=10, high=10_000),
    "gene_pca": Param("int", 50, "PCA components of the genes appended (0: none; capped by rows and genes).",
                      low=0, high=5000),
    "cell_pca": Param("int", 15, "PCA components of the cells appended (0: none; capped by rows and cells).",
                      low=0, high=1000),
    "gene_fa": Param("int", 0, "Factor Analysis components of the genes appended (0: none; capped by rows and "
                     "genes).", low=0, high=5000),
    "cell_fa": Param("int", 0, "Factor Analysis components of the cells appended (0: none; capped by rows and "
                     "cells).", low=0, high=1000),
    "gene_umap": Param("int", 0, "UMAP components of the genes appended (0: none; slow, and each fitted pipeline "
                       "then holds its training genes; capped by genes).", low=0, high=100),
    "cell_umap": Param("int", 0, "UMAP components of the cells appended (0: none; slow, and each fitted pipeline "
                       "then holds its training cells; capped by cells).", low=0, high=100),
    "umap_neighbors": Param("int", 15, "UMAP's n_neighbors for gene_umap and cell_umap: small values keep local "
                            "structure, large ones global structure.", low=2, high=1000),
    "pair_products": Param("int", 0, "Append the products of this many most correlated (on the training rows) pairs "
                           "of scaled gene/cell columns, standardised (0: none).", low=0, high=100_000),
    "variance_threshold": Param("float", 0.0, "Drop feature columns whose training variance is at most this "
                                "(after scaling); 0 drops constant columns only. Previous-stage inputs lose "
                                "only constant columns.", low=0.0, high=100.0),
    "row_stats": Param("bool", True, "Append mean, std, skew and kurtosis of each row's genes and cells."),
    "raw": Param("bool", True, "Keep the scaled gene and cell columns themselves (off: PCA/stats/inputs only)."),
    "meta": Param("bool", True, "Append cp_time one-hot and cp_dose 0/1."),
    "inputs_transform": Param("str", "none", "Transform of previous-stage predictions used as inputs.",
                              choices=("none", "logit", "rankgauss")),
}

_STATE_ATTRS = {
    QuantileTransformer: ("quantiles_", "references_", "n_quantiles_", "n_features_in_"),
    StandardScaler: ("mean_", "scale_", "var_", "n_features_in_", "n_samples_seen_"),
    PCA: ("components_", "mean_", "explained_variance_", "explained_variance_ratio_", "singular_values_",
          "n_components_", "n_features_in_", "noise_variance_", "n_samples_"),
    FactorAnalysis: ("components_", "mean_", "noise_variance_", "n_features_in_", "n_iter_"),
}
#: Prefixes (attribute names less the ``_``) of the scikit-learn transformers in a pipeline's state.
_ESTIMATORS = ("gene_scaler", "cell_scaler", "gene_pca", "cell_pca", "gene_fa", "cell_fa", "pair_scaler",
               "stats_scaler", "inputs_scaler")
#: Decompositions of the scaled genes or cells, in output order: (attribute less ``_``, which block).
_DECOMPOSITIONS = (("gene_pca", "genes"), ("cell_pca", "cells"), ("gene_fa", "genes"), ("cell_fa", "cells"),
                   ("gene_umap", "genes"), ("cell_umap", "cells"))
#: The UMAP constructor arguments a pipeline sets (the rest are UMAP's defaults).
_UMAP_ARGS = ("n_components", "n_neighbors", "random_state", "transform_seed", "n_jobs")


def _row_stats(block: np.ndarray) -> np.ndarray:
    """Mean, std, skew and kurtosis of each row (per-row, so nothing is fitted)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant rows: scipy warns, the moment is 0
        skew = np.nan_to_num(sps.skew(block, axis=1))
        kurt = np.nan_to_num(sps.kurtosis(block, axis=1))
    return np.column_stack([block.mean(axis=1), block.std(axis=1), skew, kurt])


def _new_scaler(kind: str, n_quantiles: int, n_rows: int):
    if kind == "rankgauss":
        return QuantileTransformer(n_quantiles=min(n_quantiles, n_rows), output_distribution="normal",
                                   subsample=None, random_state=TRANSFORM_SEED)
    if kind == "standard":
        return StandardScaler()
    return None


def _fitted(kind: type, n_components: int, x: np.ndarray) -> PCA | FactorAnalysis | None:
    """A seeded PCA or FactorAnalysis of ``x``, or None for 0 components (the option is off)."""
    return kind(n_components, random_state=TRANSFORM_SEED).fit(x) if n_components > 0 else None


def _top_pairs(x: np.ndarray, k: int) -> np.ndarray | None:
    """(k, 2) column indices of the ``k`` pairs of ``x`` with the highest absolute Pearson correlation.

    Strongly correlated genes/cells measure one mechanism twice; their product is an interaction
    a linear layer cannot form. Constant columns correlate with nothing (numpy gives NaN there).
    Ties keep the order of ``np.triu_indices`` (stable sort), so the choice is reproducible.
    """
    first, second = np.triu_indices(x.shape[1], k=1)
    k = min(k, len(first))
    if k == 0:
        return None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        strength = np.nan_to_num(np.abs(np.corrcoef(x, rowvar=False)[first, second]))
    order = np.argsort(-strength, kind="stable")[:k]
    return np.column_stack([first[order], second[order]])


def _fit_umap(x: np.ndarray, n_components: int, n_neighbors: int) -> UMAP:
    """A seeded UMAP of ``x`` (training rows), already in the form it is saved in.

    Turning the fitted object into its saved form straight away means the pipeline in memory
    and one restored from disk run the very same ``transform`` (see the module docstring).
    """
    from umap import UMAP  # imported here: importing umap compiles numba code, and most configs never use it

    fitted = UMAP(n_components=n_components, n_neighbors=n_neighbors, random_state=TRANSFORM_SEED,
                  transform_seed=TRANSFORM_SEED, n_jobs=1).fit(x)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    _dump_umap(fitted, "umap", arrays, meta)
    return _restore_umap("umap", arrays, meta)


def _dump_umap(model: UMAP | None, prefix: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """What ``UMAP.transform`` needs: training rows, their embedding, the curve's a and b, the neighbours."""
    if model is None:
        return
    params = model.get_params()
    meta[prefix] = {"class": "UMAP", "params": {k: params[k] for k in _UMAP_ARGS},
                    "a": float(model._a), "b": float(model._b), "n_neighbors": int(model._n_neighbors)}
    arrays[f"{prefix}.raw_data"] = np.asarray(model._raw_data, dtype=np.float32)
    arrays[f"{prefix}.embedding_"] = np.asarray(model.embedding_, dtype=np.float32)


def _restore_umap(prefix: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> UMAP | None:
    """A UMAP whose ``transform`` places new rows exactly as the saved one did.

    umap-learn has no public way to rebuild a fitted model, so this sets the attributes its
    ``fit`` would have set, and lets UMAP's own ``_validate_parameters`` derive the rest (metric
    functions, disconnection distance) from the constructor arguments, as ``fit`` does.
    ``_small_data`` selects UMAP's exact-neighbour search over the stored rows, and the
    "euclidean" name makes it scikit-learn's vectorised distances: UMAP's numba function would
    be called once per pair of rows by ``pairwise_distances``, minutes for a real fold.
    """
    if prefix not in meta:
        return None
    import joblib
    from umap import UMAP

    saved = meta[prefix]
    model = UMAP(**saved["params"])
    model._raw_data = np.ascontiguousarray(arrays[f"{prefix}.raw_data"], dtype=np.float32)
    model.embedding_ = np.ascontiguousarray(arrays[f"{prefix}.embedding_"], dtype=np.float32)
    model._initial_alpha = model.learning_rate
    model._validate_parameters()
    model._a, model._b = float(saved["a"]), float(saved["b"])
    model._n_neighbors = int(saved["n_neighbors"])
    model._small_data = True
    model._input_distance_func = "euclidean"
    model._input_hash = joblib.hash(model._raw_data)  # the training rows themselves get their fitted embedding
    model._n_features_out = model.embedding_.shape[1]
    return model


def _dump(estimator, prefix: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    if estimator is None:
        return
    kind = type(estimator)
    meta[prefix] = {"class": kind.__name__, "params": estimator.get_params()}
    for attr in _STATE_ATTRS[kind]:
        arrays[f"{prefix}.{attr}"] = np.asarray(getattr(estimator, attr))


def _restore(prefix: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
    if prefix not in meta:
        return None
    kind = {k.__name__: k for k in _STATE_ATTRS}[meta[prefix]["class"]]
    estimator = kind(**meta[prefix]["params"])
    for attr in _STATE_ATTRS[kind]:
        value = arrays[f"{prefix}.{attr}"]
        setattr(estimator, attr, value.item() if value.ndim == 0 else value)
    return estimator


class FeaturePipeline:
    """Feature engineering fitted on one fold's training rows (scikit-learn style: ``fit``/``transform``).

    Parameters are the ``features`` section of a config (see :data:`PARAMS`); they are checked
    here, in the constructor, so a bad value fails before any work. What ``fit`` learns ends in
    ``_``: the fitted transformers, the kept-column mask and :attr:`groups_` (group name -> column
    indices of the output matrix, used by families such as ``resnet2head``).
    """

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = resolve("features", PARAMS, params)

    # ---- fitting and transforming

    def _numeric(self, features: Features, inputs: np.ndarray | None, fit: bool) -> tuple[list, list]:
        p = self.params
        blocks: list[np.ndarray] = []
        names: list[str] = []
        genes = features.genes.astype(np.float64)
        cells = features.cells.astype(np.float64)
        if fit:
            n = len(features)
            self.gene_scaler_ = _new_scaler(p["scaler"], p["n_quantiles"], n)
            self.cell_scaler_ = _new_scaler(p["scaler"], p["n_quantiles"], n)
            if self.gene_scaler_ is not None:
                genes_s = self.gene_scaler_.fit_transform(genes)
                cells_s = self.cell_scaler_.fit_transform(cells)
            else:
                genes_s, cells_s = genes, cells
            self.gene_pca_ = _fitted(PCA, min(p["gene_pca"], n, features.n_genes), genes_s)
            self.cell_pca_ = _fitted(PCA, min(p["cell_pca"], n, features.n_cells), cells_s)
            self.gene_fa_ = _fitted(FactorAnalysis, min(p["gene_fa"], n, features.n_genes), genes_s)
            self.cell_fa_ = _fitted(FactorAnalysis, min(p["cell_fa"], n, features.n_cells), cells_s)
            k_g = min(p["gene_umap"], features.n_genes)
            k_c = min(p["cell_umap"], features.n_cells)
            self.gene_umap_ = _fit_umap(genes_s, k_g, p["umap_neighbors"]) if k_g > 0 else None
            self.cell_umap_ = _fit_umap(cells_s, k_c, p["umap_neighbors"]) if k_c > 0 else None
            self.pairs_ = _top_pairs(np.hstack([genes_s, cells_s]), p["pair_products"])
        else:
            if features.gene_columns != tuple(self.gene_columns_) or features.cell_columns != tuple(self.cell_columns_):
                raise ConfigError("the features to transform have other gene/cell columns than the pipeline was fitted on")
            genes_s = self.gene_scaler_.transform(genes) if self.gene_scaler_ is not None else genes
            cells_s = self.cell_scaler_.transform(cells) if self.cell_scaler_ is not None else cells
        if p["raw"]:
            blocks += [genes_s, cells_s]
            names += ["genes", "cells"]
        scaled = {"genes": genes_s, "cells": cells_s}
        for name, source in _DECOMPOSITIONS:
            decomposition = getattr(self, name + "_")
            if decomposition is not None:
                blocks.append(decomposition.transform(scaled[source]))
                names.append(name)
        if self.pairs_ is not None:
            both = np.hstack([genes_s, cells_s])
            products = both[:, self.pairs_[:, 0]] * both[:, self.pairs_[:, 1]]
            if fit:
                self.pair_scaler_ = StandardScaler().fit(products)
            blocks.append(self.pair_scaler_.transform(products))
            names.append("pairs")
        if p["row_stats"]:
            stats = np.hstack([_row_stats(genes), _row_stats(cells)])
            if fit:
                self.stats_scaler_ = StandardScaler().fit(stats)
            blocks.append(self.stats_scaler_.transform(stats))
            names.append("stats")
        if fit:
            self.n_inputs_ = 0 if inputs is None else inputs.shape[1]
        n_inputs = 0 if inputs is None else inputs.shape[1]
        if n_inputs != self.n_inputs_:
            raise ConfigError(f"the pipeline was fitted with {self.n_inputs_} previous-stage input columns, got {n_inputs}")
        if inputs is not None and n_inputs:
            x = inputs.astype(np.float64)
            if p["inputs_transform"] == "logit":
                x = np.clip(x, LOGIT_EPS, 1 - LOGIT_EPS)
                x = np.log(x / (1 - x))
            elif p["inputs_transform"] == "rankgauss":
                if fit:
                    self.inputs_scaler_ = _new_scaler("rankgauss", p["n_quantiles"], len(x)).fit(x)
                x = self.inputs_scaler_.transform(x)
            blocks.append(x)
            names.append("inputs")
        return blocks, names

    def fit(self, features: Features, inputs: np.ndarray | None = None) -> "FeaturePipeline":
        """Learn every transform from ``features`` (the training rows of one fold) and ``inputs``."""
        self.gene_columns_ = list(features.gene_columns)
        self.cell_columns_ = list(features.cell_columns)
        self.inputs_scaler_ = None
        self.stats_scaler_ = None
        self.pair_scaler_ = None
        blocks, names = self._numeric(features, inputs, fit=True)
        if not blocks and not self.params["meta"]:
            raise ConfigError("the 'features' section leaves no column: enable raw, PCA, FA, UMAP, pair_products, "
                              "row_stats, meta or inputs")
        self.block_names_ = names
        self.block_widths_ = [b.shape[1] for b in blocks]
        # The threshold is for scaled features (the seed notebooks' VarianceThreshold after RankGauss);
        # previous-stage predictions are probabilities with tiny variances, so they only lose
        # constant columns (stage-1 targets restored as zeros) -- a threshold must not erase stage 2.
        self.keep_ = np.concatenate([self._kept(b, 0.0 if n == "inputs" else self.params["variance_threshold"])
                                     for b, n in zip(blocks, names)]) if blocks else np.zeros(0, dtype=bool)
        if not self.keep_.any() and not self.params["meta"]:
            raise ConfigError(f"features.variance_threshold={self.params['variance_threshold']} removes every column")
        self._set_groups()
        return self

    @staticmethod
    def _kept(block: np.ndarray, threshold: float) -> np.ndarray:
        """Columns of ``block`` whose variance is above ``threshold`` (scikit-learn's VarianceThreshold)."""
        try:
            return VarianceThreshold(threshold).fit(block).get_support()
        except ValueError:  # every column at or below the threshold
            return np.zeros(block.shape[1], dtype=bool)

    def _set_groups(self) -> None:
        groups: dict[str, np.ndarray] = {}
        start = 0
        out = 0
        for name, width in zip(self.block_names_, self.block_widths_):
            kept = int(self.keep_[start:start + width].sum())
            groups[name] = np.arange(out, out + kept)
            start += width
            out += kept
        if self.params["meta"]:
            groups["meta"] = np.arange(out, out + len(CP_TIMES) + 1)
            out += len(CP_TIMES) + 1
        self.groups_ = groups
        self.n_features_out_ = out

    def transform(self, features: Features, inputs: np.ndarray | None = None) -> np.ndarray:
        """The float32 feature matrix of ``features`` (any rows), using what ``fit`` learned."""
        if not hasattr(self, "keep_"):
            raise RuntimeError("FeaturePipeline.transform before fit")
        blocks, _ = self._numeric(features, inputs, fit=False)
        parts = [np.hstack(blocks)[:, self.keep_]] if blocks else []
        if self.params["meta"]:
            time = (features.cp_time[:, None] == np.asarray(CP_TIMES)[None, :]).astype(np.float64)
            dose = (features.cp_dose == CP_DOSES[1]).astype(np.float64)[:, None]
            parts += [time, dose]
        return np.hstack(parts).astype(np.float32)

    def fit_transform(self, features: Features, inputs: np.ndarray | None = None) -> np.ndarray:
        return self.fit(features, inputs).transform(features, inputs)

    # ---- state without pickle

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON-able settings) that :meth:`from_state` turns back into this pipeline."""
        arrays: dict[str, np.ndarray] = {"keep": self.keep_}
        meta: dict[str, Any] = {
            "params": self.params, "gene_columns": self.gene_columns_, "cell_columns": self.cell_columns_,
            "block_names": self.block_names_, "block_widths": self.block_widths_, "n_inputs": self.n_inputs_,
        }
        for prefix in _ESTIMATORS:
            _dump(getattr(self, prefix + "_"), prefix, arrays, meta)
        for prefix in ("gene_umap", "cell_umap"):
            _dump_umap(getattr(self, prefix + "_"), prefix, arrays, meta)
        if self.pairs_ is not None:
            arrays["pairs"] = self.pairs_
        return arrays, json.loads(json.dumps(meta, default=_json_default))

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> "FeaturePipeline":
        pipeline = cls(meta["params"])
        pipeline.gene_columns_ = list(meta["gene_columns"])
        pipeline.cell_columns_ = list(meta["cell_columns"])
        pipeline.block_names_ = list(meta["block_names"])
        pipeline.block_widths_ = [int(w) for w in meta["block_widths"]]
        pipeline.n_inputs_ = int(meta["n_inputs"])
        pipeline.keep_ = np.asarray(arrays["keep"], dtype=bool)
        for prefix in _ESTIMATORS:
            setattr(pipeline, prefix + "_", _restore(prefix, arrays, meta))
        for prefix in ("gene_umap", "cell_umap"):
            setattr(pipeline, prefix + "_", _restore_umap(prefix, arrays, meta))
        pipeline.pairs_ = np.asarray(arrays["pairs"], dtype=np.int64) if "pairs" in arrays else None
        pipeline._set_groups()
        return pipeline

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.npz`` and ``<path>.json`` (atomically each)."""
        from .io import write_json, write_npz

        arrays, meta = self.state()
        path = Path(path)
        write_npz(path.with_suffix(".npz"), arrays)
        write_json(path.with_suffix(".json"), meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeaturePipeline":
        path = Path(path)
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        return cls.from_state(arrays, json.loads(path.with_suffix(".json").read_text()))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
