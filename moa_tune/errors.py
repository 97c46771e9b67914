"""Errors whose text is already the user's message.

The CLI prints ``str(error)`` on one line and exits with code 2, so every message is written where
the problem is found and names the file, the column and the first bad row where they apply.
"""
from __future__ import annotations


class MoaTuneError(Exception):
    """Base class of every error moa-tune raises on purpose (bad input, bad config, bad export)."""


class DataError(MoaTuneError):
    """A data file is missing, empty, malformed or inconsistent with another one."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        sig_id: str | None = None,
    ) -> None:
        self.file, self.column, self.row, self.sig_id = file, column, row, sig_id
        where = []
        if file is not None:
            where.append(file)
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}" + (f" (sig_id {sig_id})" if sig_id is not None else ""))
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(MoaTuneError):
    """A configuration, sweep file or search space is invalid."""


class TrainingError(MoaTuneError):
    """Training went wrong in a way a configuration causes (for example the loss became NaN)."""


class ExportError(MoaTuneError):
    """An exported ensemble is missing files or does not match what it is asked to predict."""


class DataWarning(UserWarning):
    """Suspicious but usable data (for example positive targets on control rows)."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM stopped the work; the text says what was kept and how to go on.

    A BaseException like KeyboardInterrupt, so that no ``except Exception`` on the way takes it for
    a failure, and ``finally`` blocks still shut the local Ray down. Not a KeyboardInterrupt: the
    CLI framework turns those into a silent exit; :func:`moa_tune.cli.main` prints this text on one
    line and exits with code 130.
    """
