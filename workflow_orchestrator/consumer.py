"""The worker's message consumer, changed in one place: undecodable bodies.

Celery acks and drops a body it cannot decode; on this bus that would silently lose a
workflow step. We reject it without requeue instead, so RabbitMQ dead-letters it to the
error queue, and tell an operator. Unknown task names and malformed task messages are
already rejected (dead-lettered) by Celery; `report_rejected` adds the system event.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer

logger = logging.getLogger("workflow_orchestrator.consumer")


def _report(message: str) -> None:
    """Post a system event off the consumer's thread (never blocks message flow)."""

    def post() -> None:
        from .runtime import get_runtime

        try:
            get_runtime().report_problem(message)
        except Exception:  # noqa: BLE001 - a report must never hurt the worker
            logger.exception("could not post a system event")

    threading.Thread(target=post, name="system-event", daemon=True).start()


class DeadLetteringConsumer(Consumer):
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

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        queue = (message.delivery_info or {}).get("routing_key")
        text = (
            f"Dead-lettered an undecodable message from queue {queue} "
            f"(content type {message.content_type!r}, encoding {message.content_encoding!r}): "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        )
        logger.error(text)
        message.reject(requeue=False)
        _report(text)


@signals.task_rejected.connect
def report_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    task = headers.get("task", "<no task header>")
    text = f"Dead-lettered a message Celery could not run (task {str(task)[:120]})"
    if exc is not None:
        text += f": {type(exc).__name__}: {str(exc)[:200]}"
    logger.error(text)
    _report(text)
