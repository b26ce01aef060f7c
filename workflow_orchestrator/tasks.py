"""The `workflow_orchestrator.orchestrate` task: the thin shell around `transition`.

One message is one transition: lock the workflow, load it, decide, publish what must
not be lost, save once, publish notifications, ack. Every failure maps onto one of
three answers: retry later with backoff (transient), dead-letter with a system event
(invalid or inconsistent), or record a failed workflow (a milestone precondition).
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from .crashpoints import crash_point
from .errors import (
    CredentialsRejected,
    InvalidRequest,
    ManagerError,
    ManagerNotFound,
    ManagerTransientError,
    OrchestratorError,
    PublishError,
)
from .locking import LockTimeout, LockUnavailable
from .logs import begin_task_context, end_task_context
from .publisher import describe, message_event
from .request import describe_payload, parse_request
from .runtime import Runtime
from .timefmt import parse_instant, to_iso
from .transition import (
    CARRIED_FIELDS,
    CONTROL_KEY,
    EmailNotification,
    Outcome,
    WorkerRequest,
    classify,
    needs_last_dispatch,
    state_fingerprint,
    transition,
)

logger = logging.getLogger("workflow_orchestrator.tasks")

#: Failures worth another try: the Manager or broker or lock will come back.
TRANSIENT = (ManagerTransientError, PublishError, LockTimeout, LockUnavailable)


class RetryLater(Exception):
    def __init__(self, countdown: float, reason: str, **carry: Any) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.carry = carry


class DeadLetter(Exception):
    """The message can never be processed; an operator has been told."""


def _retry_later(rt: Runtime, workflow_id: str, attempt: int, exc: Exception, **carry: Any) -> None:
    delay = backoff_delay(
        attempt, rt.settings.retry_backoff_seconds, rt.settings.retry_backoff_max, random.random()
    )
    logger.warning(
        "workflow %s: transient failure (attempt %d), retrying in %.2f s: %s",
        workflow_id,
        attempt,
        delay,
        exc,
    )
    raise RetryLater(delay, str(exc), **carry) from exc


def backoff_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff, capped, with `jitter` in [0, 1) spreading it over [d/2, d)."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * (0.5 + jitter / 2)


def process(
    rt: Runtime,
    payload: Any,
    *,
    message_key: str,
    extra_args: tuple[Any, ...] = (),
    ahead_since: str | None = None,
    attempts: int = 0,
    credential_retries: int = 0,
    redelivered: bool = False,
) -> str:
    """Process one orchestration message; raise RetryLater or DeadLetter, else return the
    line that says what it did (Celery logs it as the task's result)."""
    try:
        if extra_args:
            raise InvalidRequest(
                None, f"must be the task's single argument; got {1 + len(extra_args)} arguments"
            )
        request = parse_request(payload)
    except InvalidRequest as exc:
        # The event names the workflow when a field other than the id is wrong: the id
        # was checked first, so it is usable then.
        named = payload["id"] if exc.field not in (None, "id") else None
        _dead_letter(
            rt, "invalid_message", f"{exc} ({describe_payload(payload)})", named, message_key
        )
    workflow_id = request["id"]

    def dead(kind: str, reason: str) -> None:
        _dead_letter(rt, kind, reason, workflow_id, message_key)

    try:
        if redelivered:
            _bound_redeliveries(rt, workflow_id, message_key)
        with rt.metrics.in_flight(), rt.locks.hold(workflow_id):
            return _transition(rt, request, message_key, ahead_since)
    except CredentialsRejected as exc:
        # A configuration error, not this message's: keep it, however long it takes.
        rt.metrics.retry("credentials")
        _retry_later(
            rt,
            workflow_id,
            credential_retries + 1,
            exc,
            attempts=attempts,
            credential_retries=credential_retries + 1,
            ahead_since=ahead_since,
        )
    except TRANSIENT as exc:
        attempts += 1  # this try failed: MAX_RETRIES counts tries (CONTRACT §9)
        if attempts >= rt.settings.max_retries:
            dead(
                "gave_up",
                f"Gave up on a message for workflow {workflow_id} after {attempts} tries: {exc}",
            )
        rt.metrics.retry("transient")
        _retry_later(rt, workflow_id, attempts, exc, attempts=attempts, ahead_since=ahead_since)
    except ManagerNotFound as exc:
        dead(
            "unknown_workflow", f"Workflow {workflow_id} does not exist in the Manager ({exc.call})"
        )
    except ManagerError as exc:
        dead("manager_refused", f"The Manager refused a call for workflow {workflow_id}: {exc}")
    except (RetryLater, DeadLetter):
        raise
    except Exception as exc:
        logger.exception("workflow %s: unexpected error", workflow_id)
        dead(
            "unexpected_error",
            f"Unexpected error processing workflow {workflow_id}: {type(exc).__name__}: {exc}",
        )
    raise AssertionError("unreachable")  # every branch above returns or raises


def _bound_redeliveries(rt: Runtime, workflow_id: str, message_key: str) -> None:
    """A message whose worker died every time it ran it must not loop forever."""
    count = rt.locks.count_delivery(message_key)
    if count > rt.settings.max_redeliveries:
        _dead_letter(
            rt,
            "gave_up",
            f"A message for workflow {workflow_id} was redelivered {count} times (never "
            "finished: its worker died, or lost its broker, each time); it is set aside",
            workflow_id,
            message_key,
        )


def _transition(
    rt: Runtime, request: dict[str, Any], message_key: str, ahead_since: str | None
) -> str:
    workflow_id = request["id"]
    started = time.perf_counter()
    stored = rt.manager.get_workflow(workflow_id)
    crash_point("after_load", workflow_id)
    now = rt.clock()
    state = state_fingerprint(stored)
    control = request.get(CONTROL_KEY)
    # Only a control, or a report for a workflow an operator retried, needs what the
    # Manager does not store: no read on the hot path.
    wanted = isinstance(control, dict) or needs_last_dispatch(stored)
    last_dispatch = _last_dispatch(rt, workflow_id) if wanted else None
    # A deadline is asked again and again from one stored state until it is due: it
    # must see the clock move, so it never reuses a remembered reading.
    deadline = isinstance(control, dict) and control.get("kind") == "deadline"
    applies = isinstance(control, dict) or classify(stored, request, last_dispatch)[0] is None
    if applies and not deadline:  # it may be applied: maybe a redo
        first = rt.locks.transition_time(workflow_id, state, to_iso(now))
        now = parse_instant(first) or now
    decision = transition(
        stored,
        request,
        now=now,
        topology=rt.topology,
        config=rt.config,
        message_key=message_key,
        ahead_since=parse_instant(ahead_since),
        last_dispatch=last_dispatch,
    )
    if decision.outcome is not Outcome.APPLIED:
        rt.metrics.transition(decision.outcome.value)
    if decision.outcome is Outcome.NOTHING:
        return _line(workflow_id, decision.summary)
    if decision.outcome is Outcome.REQUEUE:
        # A deadline not yet due matched the remembered dispatch, which is forgotten a
        # week after it was written (`locking.MEMORY_SECONDS`): each poll writes it
        # again, or a deadline further away would find it gone, take the step for one
        # started again, and never fire. Before the publish: a failed write sends nothing.
        if last_dispatch is not None:
            rt.locks.remember(workflow_id, {"dispatch": json.dumps(last_dispatch)})
        published = [rt.publisher.worker_request(effect) for effect in decision.before_save]
        return _line(workflow_id, decision.summary, published)
    if decision.outcome is Outcome.DUPLICATE:
        return _line(workflow_id, f"ignored a stale or duplicate message: {decision.summary}")
    if decision.outcome is Outcome.AHEAD:
        logger.info("workflow %s: %s; retrying shortly", workflow_id, decision.summary)
        rt.metrics.retry("ahead")
        raise RetryLater(
            rt.settings.out_of_order_retry_seconds,
            decision.summary,
            ahead_since=ahead_since or to_iso(now),
        )
    if decision.outcome is Outcome.INCONSISTENT:
        _dead_letter(rt, "inconsistent_message", decision.summary, workflow_id, message_key)
    assert decision.workflow is not None
    published = _publish_before_save(rt, workflow_id, state, decision.before_save)
    crash_point("after_publish", workflow_id)
    rt.manager.save_workflow(workflow_id, decision.workflow)
    crash_point("after_save", workflow_id)
    for note in decision.after_save:
        try:
            rt.publisher.chat(note, workflow_id)
        except PublishError as exc:
            logger.warning("workflow %s: a chat notification was not sent: %s", workflow_id, exc)
    for event in decision.system_events:
        rt.report_problem(
            "manager_refused", event.message, workflow_id=workflow_id, message_id=message_key
        )
    rt.metrics.transition(Outcome.APPLIED.value, time.perf_counter() - started)
    _count_applied(rt, stored, request, decision.workflow, now)
    return _line(workflow_id, decision.summary, published)


def _line(workflow_id: str, summary: str, published: list[str] | None = None) -> str:
    """What the transition did and where its requests went: the task's result, so
    Celery's own `succeeded` line of the task says it (and Flower shows it). A line of
    the orchestrator's own repeated what that line says and cost 33 us a transition; a
    line per publish as well had cost a fifth of the worker's logging."""
    where = f" ({'; '.join(published)})" if published else ""
    return f"workflow {workflow_id}: {summary}{where}"


def _count_applied(
    rt: Runtime,
    stored: dict[str, Any],
    request: dict[str, Any],
    workflow: dict[str, Any],
    now: Any,
) -> None:
    """Step durations and finished workflows, for the metrics."""
    step = request.get("current_step")
    started = parse_instant(request.get("step_time"))
    if step and started is not None:
        rt.metrics.step_finished(str(step), (now - started).total_seconds())
    if workflow.get("workflow_completed") and not stored.get("workflow_completed"):
        rt.metrics.finished("failed" if workflow.get("workflow_error") else "succeeded")


def _last_dispatch(rt: Runtime, workflow_id: str) -> dict[str, Any] | None:
    """The last step dispatched for this workflow, as remembered beside its lock."""
    raw = rt.locks.recall(workflow_id, "dispatch")
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _dispatch_record(request: WorkerRequest) -> str:
    """What a deadline, cancel or retry needs that the Manager does not store."""
    payload = request.payload
    return json.dumps({"step": request.step, **{k: payload.get(k) for k in CARRIED_FIELDS}})


def _publish_before_save(
    rt: Runtime, workflow_id: str, state: str, effects: tuple[Any, ...]
) -> list[str]:
    """Publish what must not be lost, once per stored state: when the save that follows
    fails and the transition is redone from the same state, what was published then is
    not sent again (workers do not de-duplicate by task id). Returns where the worker
    requests went."""
    remembered = (rt.locks.recall(workflow_id, "published") or "").split()
    done = set(remembered[1:]) if remembered[:1] == [state] else set()
    published: list[str] = []
    for effect in effects:
        if effect.task_id in done:
            logger.info(
                "workflow %s: task %s was published before a failed save; not sent again",
                workflow_id,
                effect.task_id,
            )
            continue
        memories: dict[str, str] = {}
        if isinstance(effect, WorkerRequest):
            published.append(rt.publisher.worker_request(effect))
            if effect.queue != rt.settings.queue_name:  # a worker's step: remember its start
                memories["dispatch"] = _dispatch_record(effect)
        elif isinstance(effect, EmailNotification):
            rt.publisher.email(effect, workflow_id)
        done.add(effect.task_id)
        memories["published"] = " ".join([state, *sorted(done)])
        rt.locks.remember(workflow_id, memories)
    return published


def _dead_letter(
    rt: Runtime, kind: str, reason: str, workflow_id: str | None, message_key: str
) -> None:
    logger.error("%s; the message goes to the dead-letter queue", reason)
    rt.metrics.dead_letter(kind)
    rt.report_problem(kind, reason, workflow_id=workflow_id, message_id=message_key)
    raise DeadLetter(reason)


class OrchestrateTask(Task):
    """The orchestration task's class: its requests dead-letter what they reject."""

    Request = "workflow_orchestrator.consumer:OrchestrationRequest"

    def after_return(self, *args: Any, **kwargs: Any) -> None:
        """After Celery has logged how the task ended (not called for a retry or a
        reject: the thread's next task replaces the ids)."""
        end_task_context()


def orchestrate(
    self: Task,
    payload: Any = None,
    *extra_args: Any,
    ahead_since: str | None = None,
    attempts: int = 0,
    credential_retries: int = 0,
    **_: Any,
) -> str:
    """Take one orchestration message (a workflow start or a worker's report)."""
    step = payload.get("current_step") if isinstance(payload, dict) else None
    workflow_id = payload.get("id") if isinstance(payload, dict) else None
    # Kept after the body returns, for Celery's own line saying how the task ended (its
    # result is what the transition did); OrchestrateTask.after_return clears it.
    begin_task_context(workflow_id=workflow_id, step=step, task_id=self.request.id)
    try:
        runtime = self.app.runtime
        with runtime.tracing.span("orchestrate", workflow_id=workflow_id, workflow_step=step):
            return process(
                runtime,
                payload,
                message_key=self.request.id,
                extra_args=extra_args,
                ahead_since=ahead_since if isinstance(ahead_since, str) else None,
                attempts=attempts if isinstance(attempts, int) else 0,
                credential_retries=credential_retries if isinstance(credential_retries, int) else 0,
                redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
            )
    except RetryLater as later:
        kwargs = {k: v for k, v in later.carry.items() if v}
        try:
            raise self.retry(
                args=(payload,),
                kwargs=kwargs,
                countdown=later.countdown,
                argsrepr=describe(payload, message_event(payload)),
            ) from None
        except Reject as unsent:
            # Celery could not publish the retry (its broker failed, as it often has
            # when a retry is due) and rejects the message for good: keep it instead.
            raise _requeue(workflow_id, unsent) from None
    except DeadLetter as dead:
        raise Reject(str(dead), requeue=False) from None
    except OrchestratorError as exc:  # a setting or something equally fatal
        raise Reject(str(exc), requeue=False) from None


def _requeue(workflow_id: Any, unsent: Reject) -> Reject:
    """The message back to its queue: a transient failure is never a dead letter."""
    logger.warning(
        "workflow %s: the retry could not be published (%s); the message goes back to its queue",
        workflow_id,
        unsent.reason,
    )
    return Reject(f"the retry could not be published: {unsent.reason}", requeue=True)


def register_tasks(app: Celery) -> Task:
    """Register the orchestration task on `app` under its configured name."""
    return app.task(
        bind=True,
        base=OrchestrateTask,
        name=app.settings.orchestrate_task,
        shared=False,  # other Celery apps in the process (peers, tests) must not get it
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=None,
    )(orchestrate)
