"""Writing an ensemble export: ``manifest.json`` + each fold's safetensors, npz and JSON; no pickle.

Layout of ``results/<sweep>/ensemble/``::

    manifest.json                         schema, versions, columns, stages, components, blend, sha256s
    <component>/seed<s>/fold_<k>/         model.safetensors, model.json, features.npz, features.json

A component is one configuration (``<stage>-<family>-r<rank>``) retrained with several seeds on
every fold. The manifest says how the stages chain (which components feed the next stage, and
how) and how the scored components are blended; :class:`moa_tune.predict.Ensemble` follows it.
The folder is written under a temporary name and renamed into place, so a reader never sees half
an export; every file's sha256 is recorded so a changed or missing file is caught at load time.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping

from .io import atomic_dir, write_json
from .predict import MANIFEST, SCHEMA, sha256

__all__ = ["member_dir", "write_export"]


def member_dir(component: str, seed: int) -> str:
    """The folder of one seed of a component, relative to the export."""
    return f"{component}/seed{seed}"


def write_export(target: str | os.PathLike, manifest: Mapping[str, Any],
                 files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (relative path -> bytes) and ``manifest`` (completed with versions and sha256s).

    ``manifest`` holds everything but ``schema``, versions and ``files``, which are added here.
    Replaces ``target`` atomically.
    """
    import numpy as np
    import torch

    from . import __version__

    target = Path(target)
    with atomic_dir(target, overwrite=True) as staging:
        for name, content in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        full = {"schema": SCHEMA, "moa_tune": __version__, "torch": torch.__version__, "numpy": np.__version__,
                "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **dict(manifest),
                "files": {name: sha256(staging / name) for name in sorted(files)}}
        write_json(staging / MANIFEST, full)
    return target
