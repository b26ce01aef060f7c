"""Flower's task events, sent in batches: one `task-multi` message per interval.

With an event loop Celery already buffers task events (`buffer_group=['task']`), but it
flushes the buffer on the loop's next turn after every single event, and an event sent
from a pool thread (`task-started`, `task-succeeded`) first wakes the loop through its
pipe: two wake-ups and up to three event messages per task, each a hand-over of the GIL
between the pool's threads and the loop. Here the loop flushes on a timer instead; the
buffer still flushes at once when it holds `BUFFER_LIMIT` events. Each event keeps the
time it was sent, so Flower's times do not move; it only shows a task up to `INTERVAL`
later. Without an event loop (no hub) Celery publishes each event itself, untouched.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps


class BatchedTaskEvents(bootsteps.StartStopStep):
    """Flush the consumer's buffered task events every `INTERVAL` seconds."""

    requires = ("celery.worker.consumer.events:Events",)

    #: Seconds between flushes: how much later than now Flower may show an event.
    INTERVAL = 0.2
    #: Events buffered before a flush that does not wait for the timer (Celery's is 24).
    BUFFER_LIMIT = 512

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._timer: Any = None

    def start(self, consumer: Any) -> None:
        dispatcher = consumer.event_dispatcher
        if dispatcher is None or consumer.hub is None or "task" not in dispatcher.buffer_group:
            return
        dispatcher.on_send_buffered = None  # no wake-up of the loop per event
        dispatcher.buffer_limit = self.BUFFER_LIMIT
        self._timer = consumer.timer.call_repeatedly(self.INTERVAL, dispatcher.flush)

    def stop(self, consumer: Any) -> None:
        """Before the dispatcher closes (on a reconnect, at shutdown): what is buffered
        leaves now, or, with the connection gone, moves to the dispatcher's outbound
        buffer, which the next dispatcher sends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            if consumer.event_dispatcher is not None:
                consumer.event_dispatcher.flush()

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)


def install_batched_task_events(app: Celery) -> None:
    """Make `app`'s workers send their task events in batches."""
    app.steps["consumer"].add(BatchedTaskEvents)
