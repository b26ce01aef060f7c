"""How the emulator's ``execute`` enqueues a start message: as any Celery caller would.

The orchestration queue is declared with ``workflow_orchestrator.queues.orchestration_queue``
(the one definition every party shares, or RabbitMQ refuses the second declaration), and
publishes wait for the broker's confirm. The Celery app is built on first use, so an
emulator that only serves HTTP never imports Celery.
"""

from __future__ import annotations

import threading
from typing import Any

from ..publisher import describe
from ..queues import orchestration_queue


class StartPublisher:
    """A lazily built Celery app publishing ``orchestrate_task`` to ``queue_name``."""

    def __init__(self, broker_url: str | None, orchestrate_task: str, queue_name: str) -> None:
        self.broker_url = broker_url
        self.orchestrate_task = orchestrate_task
        self.queue_name = queue_name
        self._lock = threading.Lock()
        self._app: Any = None

    def publish(self, payload: dict[str, Any]) -> str:
        """Send the start message with a publisher confirm; returns the Celery task id.

        Raises when no broker is configured or the broker does not take the message.
        """
        if not self.broker_url:
            raise RuntimeError("no broker configured")
        result = self._celery().send_task(
            self.orchestrate_task,
            args=[payload],
            queue=self.queue_name,
            argsrepr=describe(payload, "start"),
            kwargsrepr="{}",
        )
        return str(result.id)

    def close(self) -> None:
        """Close the broker connections (a later publish builds a new app)."""
        with self._lock:
            app, self._app = self._app, None
        if app is not None:
            app.close()

    def _celery(self) -> Any:
        with self._lock:
            if self._app is None:
                from celery import Celery  # imported lazily: seeding-only users skip its cost

                app = Celery(
                    "workflow_orchestrator_manager_emulator",
                    broker=self.broker_url,
                    set_as_current=False,
                )
                app.conf.update(
                    task_serializer="json",
                    accept_content=["json"],
                    result_serializer="json",
                    result_backend=None,
                    task_queues=[orchestration_queue(self.queue_name)],
                    task_default_queue=self.queue_name,
                    broker_transport_options={"confirm_publish": True},
                    broker_connection_timeout=4.0,
                    broker_connection_retry_on_startup=True,
                    task_publish_retry_policy={
                        "max_retries": 2,
                        "interval_start": 0,
                        "interval_step": 0.5,
                        "interval_max": 1,
                    },
                )
                self._app = app
            return self._app
