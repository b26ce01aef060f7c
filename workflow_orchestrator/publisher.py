"""Where tasks leave the orchestrator: every `send_task`, confirmed by the broker.

Requests and notifications go out by task name to their queues, with the ids the
transition derived and a short `argsrepr` so Flower never shows a whole payload
(which may carry credentials in `aws_config` or `fleet_config`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from .errors import PublishError
from .transition import ChatNotification, EmailNotification, WorkerRequest

logger = logging.getLogger("workflow_orchestrator.publisher")

#: kombu retries a failed publish itself this often before we give the message back.
PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}


def describe(payload: dict[str, Any], event: str) -> str:
    """The `argsrepr` shown in Flower: identifiers only."""
    return f"workflow={payload.get('id')} step={payload.get('current_step')} event={event}"


def message_event(payload: Any) -> str:
    """What an orchestration message reports: start, completed or failed."""
    if not isinstance(payload, dict):
        return "invalid"
    if payload.get("workflow_error"):
        return "failed"
    if payload.get("current_step") in (None, ""):
        return "start"
    return "completed"


class Publisher:
    def __init__(self, app: Celery, hipchat: tuple[str, str], email: tuple[str, str]) -> None:
        self.app = app
        self.hipchat_task, self.hipchat_queue = hipchat
        self.email_task, self.email_queue = email

    def _send(self, name: str, queue: str, payload: dict[str, Any], **options: Any) -> None:
        try:
            self.app.send_task(
                name,
                args=[payload],
                queue=queue,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                **options,
            )
        except Exception as exc:  # noqa: BLE001 - any broker failure means "not sent"
            raise PublishError(f"publishing {name} to queue {queue} failed: {exc}") from exc

    def worker_request(self, request: WorkerRequest) -> None:
        event = "reevaluate" if request.countdown is not None else "request"
        self._send(
            request.task,
            request.queue,
            request.payload,
            task_id=request.task_id,
            countdown=request.countdown,
            argsrepr=describe(request.payload, event),
        )
        logger.info(
            "dispatched %s to %s@%s (task id %s)",
            request.step,
            request.task,
            request.queue,
            request.task_id,
        )

    def email(self, email: EmailNotification, workflow_id: str) -> None:
        self._send(
            self.email_task,
            self.email_queue,
            email.payload,
            task_id=email.task_id,
            argsrepr=f"workflow={workflow_id} notification=email",
        )

    def chat(self, note: ChatNotification, workflow_id: str) -> None:
        self._send(
            self.hipchat_task,
            self.hipchat_queue,
            note.payload,
            argsrepr=f"workflow={workflow_id} notification=chat",
        )
