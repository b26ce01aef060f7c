"""Dead-lettering, done by the orchestrator itself (the queues carry no broker policy).

A message that can never be processed is copied, body, headers and properties
unchanged, to the error queue with two headers saying why and when; the copy is
published with a confirm, and only then is the original acked. A message is therefore
never lost between the two queues: at worst (a crash between the confirm and the ack)
it is in both, and the duplicate handling of a replay absorbs that.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import Celery

from .errors import PublishError
from .queues import error_queue
from .timefmt import to_iso

logger = logging.getLogger("workflow_orchestrator.dead_letters")

REASON_HEADER = "x-orchestrator-dead-letter-reason"
AT_HEADER = "x-orchestrator-dead-lettered-at"
#: Longest reason kept in the header (AMQP headers are small; the log has the rest).
REASON_MAX = 1000
#: Properties of the original that the copy keeps (user_id would be checked against
#: our own login by RabbitMQ; an expiration would let the copy vanish).
KEPT_PROPERTIES = ("correlation_id", "reply_to", "priority", "message_id", "timestamp", "type")
#: A dead letter blocks the consumer for its confirm: a few quick tries, then give the
#: original back to the queue.
RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}


def dead_letter_headers(headers: Any, reason: str, now: datetime) -> dict[str, Any]:
    """The original headers plus the reason and the time."""
    out = dict(headers) if isinstance(headers, dict) else {}
    out[REASON_HEADER] = reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 3] + "..."
    out[AT_HEADER] = to_iso(now)
    return out


def publish_dead_letter(
    app: Celery, message: Any, reason: str, queue_name: str, now: datetime
) -> None:
    """Copy `message` (a kombu Message) to `queue_name` with a confirm; PublishError if not."""
    properties = message.properties or {}
    kept = {name: properties[name] for name in KEPT_PROPERTIES if properties.get(name) is not None}
    queue = error_queue(queue_name)
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue_name,
                headers=dead_letter_headers(message.headers, reason, now),
                content_type=message.content_type or "application/octet-stream",
                content_encoding=message.content_encoding or "binary",
                delivery_mode=2,
                declare=[queue],
                retry=True,
                retry_policy=RETRY_POLICY,
                **kept,
            )
    except Exception as exc:  # noqa: BLE001 - any broker failure means "not kept"
        raise PublishError(
            f"could not dead-letter a message to {queue_name}: {type(exc).__name__}"
        ) from exc
