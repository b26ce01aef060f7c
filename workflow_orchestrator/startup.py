"""What the worker does around consuming: checks before it starts, the error queue on
every connection, the module heartbeat (docs/behaviour.md §6), and the sweep of the lock
directory.

A configuration mistake (credentials the token endpoint refuses, an orchestration
queue declared with other arguments by an earlier version) stops the worker at start
with one line naming what to fix, before any message is taken; once running, the same
problems only delay messages, never lose them.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state as worker_state

from .errors import CredentialsRejected, ManagerError
from .metrics import prepare_multiprocess, start_metrics_server
from .queue_migration import declares_plain, queue_migration_hint
from .queues import error_queue

logger = logging.getLogger("workflow_orchestrator.startup")


def refuse_to_start(problem: str) -> None:
    """One line on stderr, then the worker exits with status 2."""
    print(f"workflow-orchestrator: cannot start: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def check_orchestration_queue(app: Celery) -> str | None:
    """None when the orchestration queue can be declared the plain Celery way."""
    name = app.settings.queue_name
    with app.connection_for_write() as conn:
        return None if declares_plain(conn, name) else queue_migration_hint(name)


def check_credentials(app: Celery) -> str | None:
    """None unless the token endpoint refuses the client credentials themselves."""
    tokens = app.runtime.manager.tokens
    if tokens is None:
        return None
    try:
        tokens.token()
    except CredentialsRejected as exc:
        return str(exc)
    except ManagerError as exc:  # unreachable for now: messages will wait and retry
        logger.warning("could not check the Manager credentials at start: %s", exc)
    return None


class CheckAtStart(bootsteps.StartStopStep):
    """Refuse to start on credentials the Manager refuses or an old queue declaration."""

    def start(self, worker: Any) -> None:
        for check in (check_credentials, check_orchestration_queue):
            problem = check(worker.app)
            if problem:
                refuse_to_start(problem)


class DeclareErrorQueue(bootsteps.StartStopStep):
    """Declare the dead-letter queue on every (re)connect, before tasks are consumed."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, consumer: Any) -> None:
        with consumer.app.connection_for_write() as conn:
            error_queue(consumer.app.settings.error_queue_name)(conn.default_channel).declare()


def workload() -> list[str]:
    """The workflow ids this worker node is processing now (every pool process's)."""
    ids = []
    for request in list(worker_state.active_requests):
        args = getattr(request, "args", None) or ()
        payload = args[0] if args else None
        if isinstance(payload, dict) and isinstance(payload.get("id"), str):
            ids.append(payload["id"])
    return sorted(set(ids))


class _InTheBackground(bootsteps.StartStopStep):
    """A worker step whose work runs in a daemon thread of the worker's main process,
    from start until stop (`_run` watches `_stop`)."""

    requires = (f"{__name__}:CheckAtStart",)
    thread_name = "background"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._app: Any = None

    def start(self, worker: Any) -> None:
        self._app = worker.app
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def stop(self, worker: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None


class Heartbeat(_InTheBackground):
    """Register with the Manager at start and every MODULE_HEARTBEAT_SECONDS after
    (the Overseer deletes modules whose record is ten minutes old); `inactive` on a
    warm shutdown. Once per worker node: the step runs in the main process only."""

    thread_name = "module-heartbeat"

    def _run(self) -> None:
        interval = self._app.settings.module_heartbeat_seconds
        failures = 0
        while not self._stop.is_set():
            try:
                self._app.runtime.register("active", workload())
                if failures:
                    logger.info("registered with the Manager again")
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a refused heartbeat costs a line
                failures += 1
                logger.warning("could not register with the Manager (heartbeat): %s", exc)
            wait = interval if not failures else min(interval, 2.0**failures)
            self._stop.wait(wait)

    def stop(self, worker: Any) -> None:
        if self._thread is None:
            return
        super().stop(worker)
        try:
            self._app.runtime.register("inactive", [])
            logger.info("registered with the Manager as inactive")
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            logger.warning("could not register as inactive with the Manager: %s", exc)


#: Seconds between two sweeps of the lock directory (the first runs at start).
LOCK_SWEEP_SECONDS = 3600.0


class LockSweeper(_InTheBackground):
    """Remove, at start and every hour, the lock files no workflow needs any more
    (unwritten for a week: `FileLocks.sweep`); with Redis locks there is nothing to do.
    In its own thread, so a large backlog never delays the worker's start."""

    thread_name = "lock-sweeper"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._app.runtime.locks.sweep()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                logger.warning("could not sweep the lock directory: %s", exc)
            self._stop.wait(LOCK_SWEEP_SECONDS)


class MetricsEndpoint(bootsteps.StartStopStep):
    """The Prometheus endpoint when METRICS_PORT is set, in the worker's main process.

    Under prefork every pool process writes its own metric files (prometheus_client's
    multiprocess mode, switched on here, before the pool forks) and the scrape merges
    them; under threads the one process's registry is served.
    """

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = worker.app.settings
        self._server: Any = None
        self._files: Any = None
        self.enabled = settings.metrics_port is not None
        pool = getattr(worker, "pool_cls", None)
        if self.enabled and "prefork" in str(getattr(pool, "__module__", pool)):
            self._files = prepare_multiprocess(settings.metrics_multiproc_dir or None)

    def start(self, worker: Any) -> None:
        if not self.enabled:
            return
        settings = worker.app.settings
        if self._files is not None:
            source: dict[str, Any] = {"multiprocess_dir": self._files.path}
        else:
            source = {"registry": worker.app.runtime.metrics.registry}
        self._server = start_metrics_server(
            settings.metrics_port, address=settings.metrics_address, **source
        )
        logger.info("metrics at %s", self._server.url)

    def stop(self, worker: Any) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._files is not None:
            self._files.close()
            self._files = None


def install_startup_steps(app: Celery) -> None:
    app.steps["worker"].add(CheckAtStart)
    app.steps["worker"].add(MetricsEndpoint)
    app.steps["worker"].add(Heartbeat)
    app.steps["worker"].add(LockSweeper)
    app.steps["consumer"].add(DeclareErrorQueue)
