"""Moving an orchestration queue declared by an earlier version (with x-dead-letter
arguments) to the plain declaration every Celery caller uses, losing no message.

RabbitMQ cannot change a queue's arguments: the queue must be deleted and declared
again. Its messages wait in a temporary queue meanwhile, each copied with a confirm
before its original is acked, so a crash at any point leaves every message in one of
the queues (at worst in two), and running the migration again finishes it. Stop the
orchestrator workers first; callers' publishes meanwhile fail loudly and are retried
by them, they are not lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import NotFound, PreconditionFailed
from kombu import Connection, Producer, Queue

from .queues import orchestration_queue, plain_queue


@dataclass(frozen=True)
class Migration:
    queue: str
    moved: int
    already_plain: bool


def queue_migration_hint(queue: str) -> str:
    """What an operator reads when the queue still has an earlier version's arguments."""
    return (
        f"queue {queue!r} exists on the broker with arguments of an earlier version "
        "(x-dead-letter-*), so plain Celery callers cannot publish to it; move its messages "
        f"to a plain queue with `workflow-orchestrator migrate-queue` (it loses none), then "
        "start the worker again"
    )


def _exists(conn: Connection, name: str) -> bool:
    channel = conn.channel()
    try:
        channel.queue_declare(name, passive=True)
        return True
    except NotFound:
        return False
    finally:
        try:
            channel.close()
        except Exception:  # noqa: BLE001 - a NOT_FOUND already closed it
            pass


def move_messages(
    conn: Connection,
    source: str,
    target: Queue,
    *,
    select: Callable[[Any], bool] | None = None,
    drop_headers: tuple[str, ...] = (),
    rewrite: Callable[[bytes, str | None], bytes] | None = None,
    before_copy: Callable[[Any], None] | None = None,
) -> int:
    """Copy the messages of `source` that `select` takes (all by default) to `target`,
    each confirmed before its original is acked; returns how many moved. Messages not
    taken go back to `source` when the channel closes. Body and properties are kept;
    `drop_headers` are left out of the copy, `rewrite(body, content_type)` gives the
    copy's body when set, and `before_copy(message)` runs before each copy is sent."""
    channel = conn.channel()
    producer = Producer(channel)
    moved = 0
    try:
        while (message := channel.basic_get(source, no_ack=False)) is not None:
            if select is not None and not select(message):
                continue
            properties = dict(message.properties)
            headers = properties.pop("application_headers", None) or {}
            headers = {k: v for k, v in headers.items() if k not in drop_headers}
            content_type = properties.pop("content_type", None) or "application/octet-stream"
            encoding = properties.pop("content_encoding", None) or "binary"
            properties.pop("delivery_mode", None)
            body = message.body if rewrite is None else rewrite(message.body, content_type)
            if before_copy is not None:
                before_copy(message)
            producer.publish(
                body,
                exchange=target.exchange,
                routing_key=target.routing_key,
                headers=headers,
                content_type=content_type,
                content_encoding=encoding,
                delivery_mode=2,
                declare=[target],
                **properties,
            )
            channel.basic_ack(message.delivery_tag)
            moved += 1
    finally:
        channel.close()
    return moved


def declares_plain(conn: Connection, name: str) -> bool:
    """Whether queue `name` accepts the plain Celery declaration (it is created if absent)."""
    channel = conn.channel()
    try:
        orchestration_queue(name)(channel).declare()
        return True
    except PreconditionFailed:  # declared with other arguments
        return False
    finally:
        try:
            channel.close()
        except Exception:  # noqa: BLE001 - the refusal closed it
            pass


def migrate_orchestration_queue(broker_url: str, name: str) -> Migration:
    """Re-declare queue `name` the plain way, its messages kept (resumes a broken run)."""
    holding = plain_queue(f"{name}.migrating")
    with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
        conn.ensure_connection(max_retries=3)
        waiting = _exists(conn, holding.name)
        plain = declares_plain(conn, name)
        if plain and not waiting:
            return Migration(name, 0, already_plain=True)
        moved = 0
        if not plain:
            for _ in range(100):  # a caller may still publish to it: drain until empty
                moved += move_messages(conn, name, holding)
                channel = conn.channel()
                try:
                    channel.queue_delete(name, if_empty=True)
                    break
                except PreconditionFailed:
                    continue
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001 - the refusal closed it
                        pass
            else:
                raise RuntimeError(f"queue {name!r} kept receiving messages; stop its callers")
            if not declares_plain(conn, name):
                raise RuntimeError(f"queue {name!r} could not be declared again")
        move_messages(conn, holding.name, orchestration_queue(name))
        channel = conn.channel()
        channel.queue_delete(holding.name, if_empty=True)
        channel.close()
        return Migration(name, moved, already_plain=False)
