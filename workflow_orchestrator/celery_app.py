"""The Celery app `celery -A workflow_orchestrator worker` finds, and its start-up hooks.

At start the worker validates every setting (one line naming a bad one, then exit),
declares the dead-letter queue before it consumes anything, and registers itself with
the Manager.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from celery import Celery, bootsteps, signals

from .errors import SettingsError
from .logs import DropRejectTraces, configure_logging
from .queues import error_queue

logger = logging.getLogger("workflow_orchestrator")

app = Celery("workflow_orchestrator", include=["workflow_orchestrator.tasks"])
app.config_from_object("celeryconfig")


class DeclareErrorQueue(bootsteps.StartStopStep):
    """Declare the dead-letter queue on every (re)connect, before tasks are consumed."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        names = {
            (q.queue_arguments or {}).get("x-dead-letter-routing-key")
            for q in c.app.conf.task_queues or ()
        }
        with c.app.connection_for_write() as conn:
            for name in filter(None, names):
                error_queue(name)(conn.default_channel).declare()


app.steps["consumer"].add(DeclareErrorQueue)
logging.getLogger("celery.app.trace").addFilter(DropRejectTraces())


def _ours(sender: Any) -> bool:
    """Signals are global; other Celery apps in the process (tests, demo) are not ours."""
    return getattr(sender, "app", None) is app


@signals.worker_init.connect
def check_settings(sender: Any = None, **_: Any) -> None:
    """Refuse to start on a missing or malformed setting, naming it (never its value)."""
    from .runtime import current_runtime
    from .settings import load_settings

    if not _ours(sender):
        return
    if current_runtime() is not None:  # provided by the embedding program
        return
    try:
        load_settings()
    except SettingsError as exc:
        print(f"workflow-orchestrator: cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def format_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """Every line carries workflow, step and task ids; JSON lines when LOG_FORMAT=json."""
    from decouple import config

    configure_logging(str(config("LOG_FORMAT", default="text")).lower(), logger)


@signals.worker_process_init.connect
def fresh_runtime_after_fork(**_: Any) -> None:  # only prefork children of our worker
    """A prefork child must not reuse its parent's sockets."""
    from .runtime import set_runtime

    set_runtime(None)


def _register_in_background() -> None:
    """Tell the Manager this orchestrator is up; keep trying without holding up work."""

    def attempt() -> None:
        from .runtime import get_runtime

        delay = 1.0
        for _try in range(10):
            try:
                get_runtime().register()
                logger.info("registered with the Manager as a workflow_orchestrator module")
                return
            except Exception as exc:  # noqa: BLE001 - retried, then given up loudly
                logger.warning("could not register with the Manager yet: %s", exc)
                time.sleep(delay)
                delay = min(delay * 2, 60.0)
        logger.error("gave up registering with the Manager")

    threading.Thread(target=attempt, name="register-module", daemon=True).start()


class RegisterWithManager(bootsteps.StartStopStep):
    """Register on every (re)connect of the consumer, in the CLI worker and embedded ones."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        if c.app is app:
            _register_in_background()


app.steps["consumer"].add(RegisterWithManager)
