"""The Ray session of a moa-tune command: start a local Ray or join a cluster, token auth, the
dashboard, quiet output, shutdown. Every command that needs Ray goes through here.

- :func:`start_or_join`: ``--address`` (or ``RAY_ADDRESS``) joins that cluster; otherwise moa-tune
  always starts its own local Ray (``address="local"``), never silently joining another one on the
  machine. A local Ray's dashboard stays on 127.0.0.1 unless the user asks otherwise.
- Token authentication is made explicit (:func:`prepare_token_auth`): a local cluster gets a token
  before it starts, a client gets ``RAY_AUTH_MODE=token`` when one is available.
- Ctrl-C and SIGTERM are held while ``ray.init`` runs and delivered after it (Ray shut down
  first), and what ``ray.init`` changes in the process is put back: the CLI's SIGTERM handler
  (Ctrl-C semantics). The processes of a local Ray are recorded while it runs (:mod:`moa_tune.ray_leftovers`)
  so that those of a killed driver are stopped by the next start.
- :func:`quiet`: Tune's and Optuna's console output off; moa-tune prints its own progress lines.

Ray and Optuna are imported inside the functions, so the CLI reads :data:`DASHBOARD_HOST` from
here without importing Ray for every command.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .ray_leftovers import start_recording, stop_leftovers, stop_recording

__all__ = ["DASHBOARD_HOST", "prepare_token_auth", "quiet", "shutdown", "start_or_join"]


def quiet() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AIR_TUNE_OUTPUT", "1")
    # each fold checkpoints (that is what lets a trial resume at its next fold); Tune warns about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a trial cut by a budget before its first report has no result file; Tune warns about each one
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    for name in _SYNC_LOGGERS:
        sync_logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineFailures) for f in sync_logger.filters):
            sync_logger.addFilter(OneLineFailures())
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


#: Ray's loggers that report a failed copy of the experiment state with a whole traceback. Tune copies
#: its state from a staging folder to the storage path in a background thread while the next save may
#: already be renaming files there (a Ctrl-C right after an experiment starts does it); the copy fails
#: with FileNotFoundError and the next, waited-for copy carries the state.
_SYNC_LOGGERS = ("ray.tune.execution.experiment_state", "ray.train._internal.syncer")


class OneLineFailures(logging.Filter):
    """Ray's failure records on one line: the message's first line and the exception's last.

    A traceback from inside Ray says nothing to a moa-tune user and reads as moa-tune crashing; the
    one line keeps what failed and why.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cause = ""
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            cause = f"{type(error).__name__}: {error}"
        elif "Traceback (most recent call last)" in message:
            cause = message.strip().splitlines()[-1]
        if cause:
            first = message.split("Traceback (most recent call last)")[0].strip().splitlines()[0].rstrip(": ")
            record.msg, record.args = f"{first}: {cause.splitlines()[0]}", ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def prepare_token_auth(starting_local: bool) -> None:
    """Make token authentication explicit, so Ray neither warns nor leaves clients without the token.

    A new local cluster turns token auth on by itself (and warns); here a token is created first when
    none exists (``~/.ray/auth_token``, as ``ray get-auth-token --generate`` does) and
    ``RAY_AUTH_MODE=token`` is set. A client of an existing cluster gets ``RAY_AUTH_MODE=token`` when a
    token is available, since ``ray.init("host:port")`` ignores the token otherwise. An explicit
    ``RAY_AUTH_MODE`` (``disabled`` included) is always respected.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if not _token_available() and not starting_local:
        return
    # Ray's own helpers (what ray.init does for a new cluster, minus the warning); the RayConfig that
    # `import ray` cached must be refreshed after RAY_AUTH_MODE changes, which _enable_token_auth does.
    from ray._private.authentication import authentication_token_setup as setup

    if not _token_available():
        setup.generate_and_save_token()
    setup._enable_token_auth()


#: Where a local Ray started by moa-tune serves its dashboard (loopback: this machine only).
DASHBOARD_HOST = "127.0.0.1"


def _token_source() -> str:
    """Where the dashboard's token is, in words (the page asks for it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    return str(Path.home() / ".ray" / "auth_token")


@contextmanager
def _signals_held_while_ray_starts() -> Iterator[list[int]]:
    """Hold Ctrl-C and SIGTERM while ``ray.init`` runs; yields the signals that came meanwhile.

    A signal in the middle of ``ray.init`` had no good outcome: Ray replaces Python's SIGTERM
    handler with one that calls ``sys.exit(15)`` (no state saved, no message, no shutdown; once seen
    lost, the SystemExit raised inside a logging lock's release, where Python ignores it), its core
    worker then puts a C-level SIGTERM handler in front of Python's that ends the process at once
    (the Ray processes it started left running), and a Ctrl-C raised somewhere inside Ray's start-up
    was seen lost. So while Ray starts, the handlers set in Python (the CLI's: SIGTERM handled as
    Ctrl-C) are replaced by one that only notes the signal; Ray's registration of its own is a
    no-op; the core worker is created with both signals blocked and Python's C-level handler is put
    back before they are unblocked. Afterwards the handlers from before are restored and the caller
    delivers what was noted (:func:`start_or_join`: Ray shut down, then the handler called). A
    second signal stops the wait at once (KeyboardInterrupt inside ``ray.init``).
    Only signals with a Python handler are held; others keep Ray's behaviour.
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held = [s for s, handler in before.items() if callable(handler)]
    received: list[int] = []
    if not held:
        yield received
        return
    import ray._private.utils as ray_utils
    import ray._raylet as raylet

    def note(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) > 1:  # pressed again: stop waiting for Ray (it can wait a minute for a dead dashboard)
            raise KeyboardInterrupt

    def after_a_signal_quiet(record: logging.LogRecord) -> bool:
        return not received  # then Ray's complaints are about its processes dying of the user's Ctrl-C

    registers, core_worker = ray_utils.set_sigterm_handler, raylet.CoreWorker

    def core_worker_then_python_handlers(*args: Any, **kwargs: Any) -> Any:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            return core_worker(*args, **kwargs)
        finally:
            for signum in held:  # Python's C-level handler in front again, before anything is delivered
                signal.signal(signum, note)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    if signal.SIGTERM in held:
        ray_utils.set_sigterm_handler = lambda handler: None
    raylet.CoreWorker = core_worker_then_python_handlers
    services = logging.getLogger("ray._private.services")
    services.addFilter(after_a_signal_quiet)
    for signum in held:
        signal.signal(signum, note)
    try:
        yield received
    finally:
        services.removeFilter(after_a_signal_quiet)
        ray_utils.set_sigterm_handler, raylet.CoreWorker = registers, core_worker
        for signum in held:
            signal.signal(signum, before[signum])


def _init_holding_signals(**kwargs: Any) -> Any:
    """``ray.init(**kwargs)`` with Ctrl-C and SIGTERM held until it returns, then delivered.

    A signal that came while Ray started shuts that Ray down, then reaches the handler from before
    (the CLI's raises KeyboardInterrupt: one ``interrupted:`` line, exit code 130, no Ray left),
    also when ``ray.init`` failed meanwhile (of the same Ctrl-C, which reached Ray's processes too).
    """
    import ray

    failed: BaseException | None = None
    with _signals_held_while_ray_starts() as received:
        try:
            context = ray.init(**kwargs)
        except BaseException as exc:
            shutdown()
            if not received:
                raise
            # a Ctrl-C reaches the whole process group: Ray's processes that were starting (its
            # dashboard) die of it and ray.init fails; the signal is what the user meant
            failed = exc
    for signum in dict.fromkeys(received):
        handler = signal.getsignal(signum)
        if callable(handler):
            try:
                handler(signum, None)
            except BaseException:
                shutdown()
                raise
    if failed is not None:
        raise failed
    return context


def start_or_join(address: str | None, num_cpus: int | None, dashboard_host: str = DASHBOARD_HOST,
              emit: Callable[[str], None] | None = None) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a new local Ray; True when we started it.

    Without an address this always starts moa-tune's own Ray (``address="local"``): plain
    ``ray.init()`` would silently join any cluster already running on the machine (another user's
    sweep, a test's ``ray.cluster_utils.Cluster``) and then refuse ``num_cpus``. A local Ray serves
    the dashboard on ``dashboard_host`` (loopback by default; port 8265, or the next free one),
    behind the same token as the cluster; its URL goes to ``emit``.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    prepare_token_auth(starting_local=not address)
    if address:
        _init_holding_signals(address=address, **kwargs)
        return True
    # Ray waits 30 s for a new GCS to publish its port; a loaded 2-core machine can take longer (seen in
    # CI with a benchmark running). Give it 2 minutes unless the user set Ray's own knob.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    stop_leftovers(emit)  # what the local Ray of an earlier, killed moa-tune left running
    start_recording()  # from the start: a SIGKILL while Ray starts leaves what it had started recorded
    context = _init_holding_signals(address="local", num_cpus=num_cpus, include_dashboard=True,
                                    dashboard_host=dashboard_host, **kwargs)
    url = getattr(context, "dashboard_url", None)
    if emit is not None and url:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            note = f"token in {_token_source()}"
        else:
            note = "no token authentication: anyone who can reach it controls this Ray"
        emit(f"Ray dashboard: http://{url} ({note})")
    return True


def shutdown() -> None:
    """Shut down the Ray this process started (:func:`start_or_join` returned True): its processes end with it."""
    import ray

    ray.shutdown()
    stop_recording()
