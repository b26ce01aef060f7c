"""Dead-lettering, done by the orchestrator itself (the queues carry no broker policy).

A message that can never be processed is copied, body, headers and properties
unchanged, to the error queue with two headers saying why and when; the copy is
published with a confirm, and only then is the original acked. A message is therefore
never lost between the two queues: at worst (a crash between the confirm and the ack)
it is in both, and the duplicate handling of a replay absorbs that.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from kombu import Connection

from .envelope import with_fresh_retry_budget, workflow_id_of
from .errors import PublishError
from .queue_migration import move_messages
from .queues import error_queue, orchestration_queue
from .timefmt import to_iso

logger = logging.getLogger("workflow_orchestrator.dead_letters")

REASON_HEADER = "x-orchestrator-dead-letter-reason"
AT_HEADER = "x-orchestrator-dead-lettered-at"
#: Longest reason kept in the header (AMQP headers are small; the log has the rest).
REASON_MAX = 1000
#: Properties of the original that the copy keeps: all of AMQP's but `user_id` (RabbitMQ
#: checks it against our own login and would refuse the copy) and `expiration` (the copy
#: would vanish from the error queue); content type, encoding, headers and delivery mode
#: are passed on their own.
KEPT_PROPERTIES = (
    "correlation_id",
    "reply_to",
    "priority",
    "message_id",
    "timestamp",
    "type",
    "app_id",
    "cluster_id",
)
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
                delivery_mode=properties.get("delivery_mode") or 2,
                declare=[queue],
                retry=True,
                retry_policy=RETRY_POLICY,
                **kept,
            )
    except Exception as exc:  # noqa: BLE001 - any broker failure means "not kept"
        raise PublishError(
            f"could not dead-letter a message to {queue_name}: {type(exc).__name__}"
        ) from exc


@dataclass(frozen=True)
class DeadLetterView:
    """One dead-lettered message as an operator reads it."""

    workflow_id: str | None
    reason: str
    dead_lettered_at: str
    task: str | None
    task_id: str | None


def _view(message: Any) -> DeadLetterView:
    headers = message.headers if isinstance(message.headers, dict) else {}
    try:
        body = json.loads(message.body)
    except (TypeError, ValueError):
        body = None
    task, task_id = headers.get("task"), headers.get("id")
    return DeadLetterView(
        workflow_id=workflow_id_of(body),
        reason=str(headers.get(REASON_HEADER, "(no reason recorded)")),
        dead_lettered_at=str(headers.get(AT_HEADER, "")),
        task=task if isinstance(task, str) else None,
        task_id=task_id if isinstance(task_id, str) else None,
    )


def list_dead_letters(broker_url: str, queue_name: str) -> list[DeadLetterView]:
    """What the error queue holds, oldest first, without taking anything from it: every
    message is read unacknowledged and goes back when the channel closes."""
    out: list[DeadLetterView] = []
    with Connection(broker_url) as conn:
        channel = conn.channel()
        error_queue(queue_name)(channel).declare()
        try:
            while (message := channel.basic_get(queue_name, no_ack=False)) is not None:
                out.append(_view(_Raw(message)))
        finally:
            channel.close()  # the unacknowledged messages return to the queue
    return out


@dataclass
class _Raw:
    """A py-amqp message seen through the attributes `_view` reads."""

    message: Any

    @property
    def headers(self) -> Any:
        return self.message.properties.get("application_headers") or {}

    @property
    def body(self) -> Any:
        return self.message.body


def replay_dead_letters(
    broker_url: str,
    error_name: str,
    queue_name: str,
    workflow_id: str | None,
    forget_deliveries: Callable[[str], None] | None = None,
) -> int:
    """Move dead letters back to the orchestration queue (those of `workflow_id`, or all
    when None), without the dead-letter headers and with a fresh retry budget
    (`with_fresh_retry_budget`; `forget_deliveries(task_id)`, the lock store's, drops the
    redeliveries counted for it, or a message that gave up on MAX_REDELIVERIES would give
    up at its next one). Each copy is confirmed before its dead letter is acked: a crash
    mid-replay leaves a message in both queues at worst, which the orchestrator's
    duplicate handling absorbs. Returns how many were moved."""

    def wanted(message: Any) -> bool:
        return workflow_id is None or _view(_Raw(message)).workflow_id == workflow_id

    def forget(message: Any) -> None:
        task_id = _view(_Raw(message)).task_id
        if forget_deliveries is not None and task_id:
            forget_deliveries(task_id)

    with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
        error_queue(error_name)(conn.default_channel).declare()
        return move_messages(
            conn,
            error_name,
            orchestration_queue(queue_name),
            select=wanted,
            drop_headers=(REASON_HEADER, AT_HEADER),
            rewrite=with_fresh_retry_budget,
            before_copy=forget,
        )
