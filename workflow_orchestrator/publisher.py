"""Where tasks leave the orchestrator: every publish, confirmed by the broker it goes to.

Worker requests go to the broker of their target exchange (docs/behaviour.md §5.1, resolved by
`brokers.BrokerResolver`, published by `broker_pool.BrokerPublisher` with failover);
chats, e-mails and the orchestrator's own re-evaluations go to its own broker. Each
carries the id the transition derived and a short `argsrepr`, so Flower never shows a
whole payload (which may carry credentials in `aws_config` or `fleet_config`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kombu import Queue

from .broker_pool import NO_KWARGS_REPR, BrokerPublisher
from .brokers import BrokerResolver
from .choice import run_key
from .errors import PublishError
from .queues import wait_queue
from .transition import CONTROL_KEY, ChatNotification, EmailNotification, WorkerRequest

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
    def __init__(
        self,
        resolver: BrokerResolver,
        brokers: BrokerPublisher,
        *,
        own_queue: str,
        hipchat: tuple[str, str],
        email: tuple[str, str],
    ) -> None:
        self.resolver = resolver
        self.brokers = brokers
        self.own_queue = own_queue
        self.hipchat_task, self.hipchat_queue = hipchat
        self.email_task, self.email_queue = email
        #: The wait queue of each deadline length, built once (as `BrokerPublisher.queue`).
        self._wait_queues: dict[int, Queue] = {}

    def wait_queue(self, seconds: int) -> Queue:
        """Where a deadline of `seconds` waits (`queues.wait_queue`), cached."""
        queue = self._wait_queues.get(seconds)
        if queue is None:
            queue = self._wait_queues.setdefault(seconds, wait_queue(self.own_queue, seconds))
        return queue

    def worker_request(self, request: WorkerRequest) -> str:
        """Publish a worker request (or a deadline); return where it went, for the
        transition's one log line."""
        payload = request.payload
        if CONTROL_KEY in payload and request.countdown:
            return self.deadline(request)
        if request.queue == self.own_queue:  # `scheduled` re-evaluates on our own broker
            route, event, mode = self.resolver.own_route(), "reevaluate", "none"
        else:
            key = run_key(payload.get("id"), payload.get("workflow_start_time"))
            route, event, mode = self.resolver.resolve(request.exchange_id, key), "request", None
        endpoint = self.brokers.publish(
            route,
            request.task,
            request.queue,
            payload,
            task_id=request.task_id,
            argsrepr=describe(payload, event),
            countdown=request.countdown,
            queue_arguments=mode,
        )
        logger.debug(
            "dispatched %s to %s@%s on %s (task id %s)",
            request.step,
            request.task,
            request.queue,
            endpoint.display,
            request.task_id,
        )
        return f"on {endpoint.display}, task id {request.task_id}"

    def deadline(self, request: WorkerRequest) -> str:
        """Kept by the broker, not by a worker (a held ETA task would cost a prefetch slot
        and, after a reconnect, could stall the queue): the message waits in a TTL queue
        that dead-letters it back to the orchestration queue."""
        assert request.countdown is not None
        try:
            self.brokers.app.send_task(
                request.task,
                args=[request.payload],
                queue=self.wait_queue(request.countdown),
                task_id=request.task_id,
                argsrepr=describe(request.payload, "deadline"),
                kwargsrepr=NO_KWARGS_REPR,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:  # noqa: BLE001 - any broker failure means "not kept"
            raise PublishError(
                f"publishing the deadline of {request.step} (task id {request.task_id}) "
                f"failed: {type(exc).__name__}"
            ) from None
        logger.debug(
            "deadline of %s waits %s s (task id %s)",
            request.step,
            request.countdown,
            request.task_id,
        )
        return f"its deadline waits {request.countdown} s, task id {request.task_id}"

    def email(self, email: EmailNotification, workflow_id: str) -> None:
        self.brokers.publish(
            self.resolver.own_route(),
            self.email_task,
            self.email_queue,
            email.payload,
            task_id=email.task_id,
            argsrepr=f"workflow={workflow_id} notification=email",
        )

    def chat(self, note: ChatNotification, workflow_id: str) -> None:
        self.brokers.publish(
            self.resolver.own_route(),
            self.hipchat_task,
            self.hipchat_queue,
            note.payload,
            task_id=str(uuid.uuid4()),
            argsrepr=f"workflow={workflow_id} notification=chat",
        )
