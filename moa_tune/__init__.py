"""moa-tune: distributed hyperparameter search for Mechanism-of-Action (lish-moa) prediction.

The core (data, folds, metric, features, models, training) imports neither Ray nor Optuna.
"""
from __future__ import annotations

from .data import Features, MoaData, describe, load, save
from .errors import ConfigError, DataError, DataWarning, ExportError, MoaTuneError, TrainingError
from .metric import log_loss
from .predict import Ensemble

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DataWarning",
    "Ensemble",
    "ExportError",
    "Features",
    "MoaData",
    "MoaTuneError",
    "TrainingError",
    "__version__",
    "describe",
    "load",
    "log_loss",
    "save",
]
