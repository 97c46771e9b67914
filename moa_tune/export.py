"""Writing an ensemble export: ``manifest.json`` + each fold's safetensors, npz and JSON; no pickle.

Layout of ``results/<sweep>/ensemble/``::

    manifest.json                         schema, versions, columns, stages, components, blend, sha256s
    <component>/seed<s>/fold_<k>/         model.safetensors (model.cbm: catboost's trees), model.json,
                                          features.npz, features.json

A component is one configuration (``<stage>-<family>-r<rank>``) retrained with several seeds on
every fold. The manifest says how the stages chain (which components feed the next stage, and
how) and how the scored components are blended; :class:`moa_tune.predict.Ensemble` follows it.
The collector builds the folder under a temporary name (fold files land there as Ray tasks
finish, so no driver holds the whole ensemble in memory) and renames it into place only after
:func:`write_manifest`, so a reader never sees half an export; every file's sha256 is recorded so
a changed or missing file is caught at load time.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping

from .io import write_json
from .predict import MANIFEST, SCHEMA, sha256

__all__ = ["member_dir", "write_manifest"]


def member_dir(component: str, seed: int) -> str:
    """The folder of one seed of a component, relative to the export."""
    return f"{component}/seed{seed}"


def write_manifest(staging: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Complete ``manifest`` with versions and the sha256 of every file in ``staging``; write it there.

    ``staging`` is the export being built (the temporary folder of :func:`moa_tune.io.atomic_dir`,
    renamed into place by the caller once this returns); ``manifest`` holds everything but
    ``schema``, versions and ``files``.
    """
    from importlib.metadata import version

    import numpy as np
    import torch

    from . import __version__

    staging = Path(staging)
    names = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
    # the fitted transforms (FA, UMAP) and trees are restored by these libraries: their versions matter too
    libraries = {name: version(name) for name in ("scikit-learn", "umap-learn", "catboost")}
    full = {"schema": SCHEMA, "moa_tune": __version__, "torch": torch.__version__, "numpy": np.__version__,
            **libraries, "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **dict(manifest), "files": {name: sha256(staging / name) for name in names}}
    return write_json(staging / MANIFEST, full)
