"""Log lines an operator can follow: each line of a transition names its workflow, step
and task id (text or JSON, LOG_FORMAT).

The ids live in a context variable the task sets when it starts and clears once Celery
has logged how it ended (its result is what the transition did), and a filter copies
them onto every record, so modules log normally and still carry them.
"""

from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

from celery.app.log import Logging

_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "workflow_orchestrator_log_context", default=None
)
CONTEXT_FIELDS = ("workflow_id", "step", "task_id")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

TEXT_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] "
    "[workflow=%(workflow_id)s step=%(step)s task=%(task_id)s] %(name)s: %(message)s"
)


def begin_task_context(**fields: Any) -> None:
    """Tag this thread's log lines with a task's ids until `end_task_context`: after the
    task body returns, Celery logs its `succeeded` (or retry, or failure) line, which
    says what the transition did and must carry the same ids. Nothing of an earlier
    task's ids is kept."""
    _CONTEXT.set({k: str(v) for k, v in fields.items() if v is not None})


def end_task_context() -> None:
    """This thread's lines carry no task's ids any more."""
    _CONTEXT.set(None)


class ContextFilter(logging.Filter):
    """Copies the transition's ids onto the record ('-' outside a transition)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _CONTEXT.get() or {}
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, context.get(name, "-"))
        return True


class DropRejectTraces(logging.Filter):
    """Celery logs a WARNING with a traceback for every rejected task; the orchestrator
    has already said why in one line, so a poison message costs one line, not twenty."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery.exceptions import Reject

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, Reject)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the context ids and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(log_format: str, logger: logging.Logger | None = None) -> None:
    """Put the context filter and the chosen format on the handlers of `logger` (root)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter(TEXT_FORMAT))


class OrchestratorLogging(Logging):
    """Celery's worker logging with the orchestrator's format, for its own app only.

    A subclass of the app's log class rather than a global signal handler, so other
    Celery apps in the process (a builder importing `worker_api`) keep their logging.
    """

    def setup_logging_subsystem(self, *args: Any, **kwargs: Any) -> Any:
        handled = super().setup_logging_subsystem(*args, **kwargs)
        log_format = getattr(getattr(self.app, "settings", None), "log_format", "text")
        configure_logging(log_format)
        configure_logging(log_format, logging.getLogger("celery.task"))
        trace = logging.getLogger("celery.app.trace")
        if not any(isinstance(f, DropRejectTraces) for f in trace.filters):
            trace.addFilter(DropRejectTraces())
        return handled
