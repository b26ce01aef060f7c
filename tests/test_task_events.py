"""Task events leave in batches on a timer, and none is lost when the worker stops.

A real in-process worker (threads pool, event loop) on the test broker; the events are
read as they arrive on the `celeryev` exchange, raw, from a queue of the test's own.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.support import in_process_worker, wait_for
from workflow_orchestrator.task_events import BatchedTaskEvents, install_batched_task_events

TASK_EVENTS = {"task-received", "task-started", "task-succeeded"}


class EventTap:
    """Every task event message on the broker, as (routing key, [events])."""

    def __init__(self, broker_url: str) -> None:
        self.messages: list[tuple[str, list[dict[str, Any]]]] = []
        self._conn = Connection(broker_url)
        queue = Queue(
            f"test-events-{uuid.uuid4()}",
            Exchange("celeryev", type="topic"),
            routing_key="task.#",
            auto_delete=True,
            exclusive=True,
        )
        self._consumer = self._conn.Consumer(queue, callbacks=[self._on], accept=["json"])
        self._consumer.consume()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _on(self, body: Any, message: Any) -> None:
        events = body if isinstance(body, list) else [body]
        self.messages.append((message.delivery_info["routing_key"], events))
        message.ack()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self._conn.drain_events(timeout=0.1)
            except TimeoutError:
                pass

    def events_of(self, task_ids: set[str]) -> list[tuple[str, dict[str, Any]]]:
        return [
            (key, event)
            for key, events in list(self.messages)
            for event in events
            if event.get("uuid") in task_ids
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.release()


@pytest.fixture
def tap(broker_url: str) -> Iterator[EventTap]:
    tap = EventTap(broker_url)
    yield tap
    tap.close()


def events_app(broker_url: str) -> tuple[Celery, Any, set[str]]:
    app = Celery(f"events-{uuid.uuid4().hex[:8]}", broker=broker_url, set_as_current=False)
    queue = f"test-events-tasks-{uuid.uuid4()}"
    app.conf.update(
        worker_send_task_events=True,
        task_default_queue=queue,
        task_queues=[Queue(queue, auto_delete=True)],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    install_batched_task_events(app)
    ran: set[str] = set()

    @app.task(name="tests.events.noop", bind=True, shared=False)
    def noop(self: Any) -> None:
        ran.add(self.request.id)

    return app, noop, ran


def test_task_events_wait_for_the_timer_and_leave_when_the_worker_stops(
    broker_url: str, tap: EventTap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BatchedTaskEvents, "INTERVAL", 3600.0)  # no tick during the test
    app, noop, ran = events_app(broker_url)
    with in_process_worker(app, f"events-{uuid.uuid4()}@test") as worker:
        dispatcher = worker.consumer.event_dispatcher
        assert dispatcher.on_send_buffered is None  # no wake-up of the loop per event
        assert dispatcher.buffer_limit == BatchedTaskEvents.BUFFER_LIMIT
        ids = {noop.delay().id for _ in range(3)}
        wait_for(lambda: ran >= ids, 30, "the tasks to run")

        def buffered() -> set[tuple[str, str]]:
            return {(e["type"], e["uuid"]) for e in list(dispatcher._group_buffer["task"])}

        want = {(kind, task_id) for kind in TASK_EVENTS for task_id in ids}
        wait_for(lambda: buffered() >= want, 30, "every event of the tasks to be buffered")
        assert tap.events_of(ids) == []  # none left before the timer or the stop
    # Stopping the worker flushed the buffer: every event arrives, in task-multi messages.
    wait_for(lambda: len(tap.events_of(ids)) == len(want), 30, "the events after the stop")
    got = tap.events_of(ids)
    assert {(e["type"], e["uuid"]) for _, e in got} == want
    assert {key for key, _ in got} == {"task.multi"}


def test_task_events_leave_on_the_timer_while_the_worker_runs(
    broker_url: str, tap: EventTap
) -> None:
    app, noop, ran = events_app(broker_url)
    with in_process_worker(app, f"events-{uuid.uuid4()}@test"):
        ids = {noop.delay().id for _ in range(20)}
        want = {(kind, task_id) for kind in TASK_EVENTS for task_id in ids}
        wait_for(
            lambda: {(e["type"], e["uuid"]) for _, e in tap.events_of(ids)} >= want,
            30,
            "every event of the tasks, with the worker running",
        )
