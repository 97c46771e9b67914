"""What moa_tune.ray_session changes in Ray's output, checked on Ray's own loggers (no cluster needed)."""
from __future__ import annotations

import io
import logging

from moa_tune.ray_session import quiet


def _formatted(logger_name: str, log) -> str:
    """What a handler of ``logger_name`` prints for the record ``log(logger)`` makes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        log(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_failed_copy_of_tunes_experiment_state_is_one_line_not_a_traceback() -> None:
    quiet()
    quiet()  # a second command in one process adds no second filter

    def as_tune_logs_it(logger: logging.Logger) -> None:  # ray/tune/execution/experiment_state.py
        try:
            open("/nonexistent/driver_artifacts/.tmp-searcher-state.pkl")
        except OSError:
            logger.error("Saving experiment state to storage at '/x/stage2/linear' failed with exception: ",
                         exc_info=True)

    text = _formatted("ray.tune.execution.experiment_state", as_tune_logs_it)
    assert "Traceback" not in text and text.count("\n") == 1, text
    assert "Saving experiment state to storage at '/x/stage2/linear' failed" in text
    assert "FileNotFoundError" in text and ".tmp-searcher-state.pkl" in text

    def as_the_syncer_logs_it(logger: logging.Logger) -> None:  # ray/train/_internal/syncer.py
        logger.warning("Last sync command failed with the following error:\nTraceback (most recent call last):\n"
                       '  File "x.py", line 1, in f\nFileNotFoundError: [Errno 2] gone')

    text = _formatted("ray.train._internal.syncer", as_the_syncer_logs_it)
    assert text == "WARNING Last sync command failed with the following error: FileNotFoundError: [Errno 2] gone\n"
    assert len(logging.getLogger("ray.train._internal.syncer").filters) == 1

    plain = _formatted("ray.tune.execution.experiment_state", lambda lg: lg.warning("took %d s", 3))
    assert plain == "WARNING took 3 s\n"
