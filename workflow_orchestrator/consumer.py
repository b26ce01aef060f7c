"""Where messages enter the worker: nothing Celery cannot run may stop it or vanish.

Stock Celery acks and drops a body it cannot decode, rejects unknown or invalid task
messages (which, on a queue without a broker dead-letter policy, drops them too), and
dies on a known task name whose body is not `[args, kwargs, embed]`. The consumer here
checks every message's envelope before Celery parses it, and dead-letters what cannot
run; the request class dead-letters what the task itself refuses (`Reject`) or what
escapes it. Dead-lettering is `dead_letters.publish_dead_letter`: copy, confirm, ack.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery import Celery
from celery.exceptions import Reject
from celery.worker.consumer import Consumer
from celery.worker.request import Request

from .dead_letters import publish_dead_letter
from .envelope import envelope_problem, message_identity, workflow_id_of
from .errors import PublishError

logger = logging.getLogger("workflow_orchestrator.consumer")


def _report_later(app: Any, kind: str, text: str, workflow_id: Any, message_id: str) -> None:
    """Post a system event off the consumer's thread (never blocks message flow)."""

    def post() -> None:
        try:
            app.runtime.report_problem(kind, text, workflow_id=workflow_id, message_id=message_id)
        except Exception:  # noqa: BLE001 - a report must never hurt the worker
            logger.exception("could not post a system event")

    threading.Thread(target=post, name="system-event", daemon=True).start()


def _safe_body(message: Any) -> Any:
    try:
        return message.decode()
    except Exception:  # noqa: BLE001 - undecodable: nothing to read an id from
        return None


def dead_letter_message(
    app: Any,
    message: Any,
    reason: str,
    *,
    on_ack: Any,
    on_requeue: Any,
    kind: str | None = "invalid_message",
) -> bool:
    """Copy `message` to the error queue with `reason`, then ack it (True).

    When the copy is not confirmed the message goes back to its queue (False): it is
    never acked without its copy. `kind` names the system event to post; None when
    the task already posted its own, with a more precise kind, before it rejected.
    """
    settings = app.settings
    try:
        publish_dead_letter(app, message, reason, settings.error_queue_name, app.runtime.clock())
    except PublishError as exc:
        logger.error("%s; the message goes back to its queue", exc)
        on_requeue()
        return False
    on_ack()
    if kind is not None:
        queue = (message.delivery_info or {}).get("routing_key") or settings.queue_name
        text = f"Dead-lettered a message from queue {queue}: {reason}"
        logger.error(text)
        identity = message_identity(message.headers, message.body)
        _report_later(app, kind, text, workflow_id_of(_safe_body(message)), identity)
    return True


class DeadLetteringConsumer(Consumer):
    """Celery's consumer with every "cannot run this" path ending in a dead letter."""

    def connection_for_write(self, url: Any = None, heartbeat: Any = None) -> Any:
        """The connection of the worker's event dispatcher (its only user in the consumer).

        Task and worker events are transient monitoring data for Flower: they need no
        publisher confirm. With `confirm_publish` inherited from broker_transport_options,
        each of the 3 events per task waited for a broker round trip under the
        dispatcher's mutex, on the consumer's event loop.
        """
        return self.ensure_connected(
            self.app.connection_for_write(
                url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
            )
        )

    def _dead_letter(self, message: Any, reason: str) -> None:
        errors = self.connection_errors
        dead_letter_message(
            self.app,
            message,
            reason,
            on_ack=lambda: message.ack_log_error(logger, errors),
            on_requeue=lambda: message.reject_log_error(logger, errors, requeue=True),
        )

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        # Celery's own tasks (celery.chord_unlock, ...) are never run from this queue.
        accepted = frozenset(name for name in self.app.tasks if not name.startswith("celery."))

        def on_task_received(message: Any) -> None:
            problem = envelope_problem(message.headers, message.decode, accepted)
            if problem is not None:
                return self._dead_letter(message, problem)
            try:
                return handle(message)
            except Exception as exc:  # noqa: BLE001 - whatever Celery could not parse
                logger.exception("Celery could not read a message")
                return self._dead_letter(
                    message, f"Celery could not read the message: {type(exc).__name__}: {exc}"
                )

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(
            message,
            f"the body cannot be decoded (content type {message.content_type!r}, "
            f"encoding {message.content_encoding!r}): {type(exc).__name__}: {str(exc)[:200]}",
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "the message is not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        task = (message.headers or {}).get("task") if isinstance(message.headers, dict) else None
        self._dead_letter(message, f"no task {str(task)[:120]!r} is registered here")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, f"Celery rejected the task message: {str(exc)[:300]}")


class OrchestrationRequest(Request):
    """A request whose message, when rejected for good, is dead-lettered, not dropped."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("decoded") and kwargs.get("body") is message.body:
            # The consumer decoded the body already, to check its envelope (kombu keeps
            # it). Stock Celery hands the raw body to the pool, whose thread decodes it
            # a second time (22 us a report, one JSON object hook call per object).
            try:
                body = message.decode()
            except Exception:  # noqa: BLE001 - Celery's own path says what is wrong
                body = None
            if isinstance(body, list) and len(body) == 3:
                kwargs["body"], kwargs["decoded"] = body, True
        super().__init__(message, *args, **kwargs)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        self._dead_letter_kind = None if isinstance(exc, Reject) else "unexpected_error"
        if isinstance(exc, Reject):
            self._dead_letter_reason = str(exc.reason)
        else:
            self._dead_letter_reason = (
                f"the orchestration task failed: {type(exc).__name__}: {str(exc)[:300]}"
            )
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    def reject(self, requeue: bool = False) -> None:
        if requeue or self.acknowledged:
            return super().reject(requeue=requeue)
        reason = getattr(self, "_dead_letter_reason", None) or "rejected by the orchestration task"
        dead_letter_message(
            self._app,
            self.message,
            reason,
            on_ack=self.acknowledge,
            on_requeue=lambda: super(OrchestrationRequest, self).reject(requeue=True),
            kind=getattr(self, "_dead_letter_kind", None),
        )
        return None


def install_consumer(app: Celery) -> None:
    """Make `app`'s workers consume through `DeadLetteringConsumer`."""
    app.conf.worker_consumer = f"{__name__}:DeadLetteringConsumer"
