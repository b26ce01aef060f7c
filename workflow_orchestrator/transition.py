"""The transition: stored workflow + message + now -> new workflow + effects (pure).

This is where the next milestone is decided (docs/behaviour.md §3, §4, §7). It does no I/O of
its own: the clock reading, the Manager lookups (`Topology`) and the identity of the
message being processed are arguments, and the result is plain data that the shell
(`tasks.py`) saves and publishes. Redelivering the same message against the same stored
workflow therefore yields the same decisions and the same task ids.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .choice import run_key
from .durations import describe_seconds, elapsed
from .milestones import (
    Dispatched,
    Failed,
    Milestone,
    Passed,
    StepContext,
    Target,
    Topology,
    Waiting,
    build_registry,
    check_milestones,
)
from .notifications import (
    chat_note,
    completion_email,
    completion_recipients,
    event_prefix,
    room_names,
)
from .timefmt import parse_instant, to_iso
from .workflow import REQUEST_FIELDS, WORKFLOW_FIELDS, merge

#: Namespace of every deterministic task id the orchestrator derives.
TASK_ID_NAMESPACE = uuid.UUID("6f1c1f57-5b0e-4a59-9d2b-8f6e1c0a7d31")
_NAMESPACE_BYTES = TASK_ID_NAMESPACE.bytes

COMPLETED_STEP = "workflow_completed"
WORKER_FAILURE = "Milestone worker has reported a failure"

#: Request fields a start message may leave to the stored `execute_options`.
EXECUTE_OPTION_FIELDS = (
    "force_build",
    "build_messaging_exchange_id",
    "deploy_messaging_exchange_id",
)


class Outcome(enum.Enum):
    APPLIED = "applied"  # save the workflow, publish the effects
    DUPLICATE = "duplicate"  # stale or repeated message: change nothing, ack
    AHEAD = "ahead"  # reports a step the store has not reached yet: retry shortly
    INCONSISTENT = "inconsistent"  # can never apply: system event, dead-letter
    NOTHING = "nothing"  # an operator control with nothing to do: change nothing, ack
    REQUEUE = "requeue"  # a deadline not yet due: publish it again, save nothing


@dataclass(frozen=True)
class WorkerRequest:
    """A task sent by name: a milestone's worker, or the orchestrator itself (`scheduled`)."""

    task: str
    queue: str
    payload: dict[str, Any]
    task_id: str
    step: str
    exchange_id: Any = None
    countdown: int | None = None


@dataclass(frozen=True)
class ChatNotification:
    payload: dict[str, Any]


@dataclass(frozen=True)
class EmailNotification:
    payload: dict[str, Any]
    task_id: str


@dataclass(frozen=True)
class SystemEvent:
    message: str


Effect = WorkerRequest | ChatNotification | EmailNotification | SystemEvent


@dataclass(frozen=True)
class EngineConfig:
    """Everything about this orchestrator the transition needs to know."""

    exchange_id: str = "1"
    broker_id: str = "1"
    queue_name: str = "workflow_orchestration"
    orchestrate_task: str = "workflow_orchestrator.orchestrate"
    ui_url: str = "http://localhost"
    schedule_poll_seconds: int = 600
    out_of_order_timeout: float = 300.0
    registry: Mapping[str, Milestone] = field(default_factory=build_registry)
    #: Step deadlines in seconds (docs/behaviour.md §11.1); 0 means none.
    step_timeouts: Mapping[str, float] = field(default_factory=dict)
    step_timeout_default: float = 0.0

    def step_timeout(self, step: str) -> float:
        return float(self.step_timeouts.get(step, self.step_timeout_default))

    def routing_fields(self) -> dict[str, Any]:
        """Fields every outgoing request carries so workers can call back (docs/behaviour.md §5)."""
        ex, br = str(self.exchange_id), str(self.broker_id)
        return {
            "notifications_exchange_id": ex,
            "notifications_broker_id": br,
            "orchestration_exchange_id": ex,
            "orchestration_broker_id": br,
            "workflow_orchestration_exchange_id": ex,
            "workflow_orchestration_broker_id": br,
            "orchestration_queue_name": self.queue_name,
        }


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    summary: str
    workflow: dict[str, Any] | None = None
    effects: tuple[Effect, ...] = ()

    @property
    def before_save(self) -> tuple[Effect, ...]:
        """Effects that must not be lost: published before the save, with stable ids."""
        return tuple(e for e in self.effects if isinstance(e, (WorkerRequest, EmailNotification)))

    @property
    def after_save(self) -> tuple[Effect, ...]:
        return tuple(e for e in self.effects if isinstance(e, ChatNotification))

    @property
    def system_events(self) -> tuple[SystemEvent, ...]:
        return tuple(e for e in self.effects if isinstance(e, SystemEvent))


def derived_task_id(*parts: Any) -> str:
    """A task id that is the same whenever its parts are (redelivery gives the same id).

    `str(uuid.uuid5(TASK_ID_NAMESPACE, name))`, written out: the digest's bytes with the
    version and variant bits set, without building a `UUID` (2.5 ids per transition)."""
    name = "\x1f".join(str(p) for p in parts).encode("utf-8")
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def state_fingerprint(stored: dict[str, Any]) -> str:
    """Identifies a stored version of a workflow: every applied transition changes it.

    A transition redone from the same stored version (its save was lost to a crash or
    failed) must reuse the first attempt's clock reading, so it writes the very same
    event lines, durations and requests the first attempt may already have published.
    """
    log = stored.get("event_log") or []
    basis = [stored.get("current_step"), bool(stored.get("workflow_completed")), len(log)]
    basis.append(log[-1] if log else None)
    digest = hashlib.sha256(json.dumps(basis, default=str).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def email_task_id(workflow_id: str, retries: int = 0) -> str:
    """One completion e-mail id per workflow run, whatever message completes it; a run
    retried by an operator has its own (its retry number)."""
    if retries:
        return derived_task_id(workflow_id, "on_workflow_completed", retries)
    return derived_task_id(workflow_id, "on_workflow_completed")


def wait_seconds(seconds: float) -> int:
    """The broker-side wait of a deadline message: the largest power of two not over
    `seconds` (at least 1), so a few wait queues serve every deadline; the message
    comes back that much sooner than due at most, and is enqueued again."""
    wait = 1
    while wait * 2 <= seconds:
        wait *= 2
    return wait


#: The key of an operator control or deadline message (docs/behaviour.md §11).
CONTROL_KEY = "orchestrator_control"
RETRY_LINE = "Retrying Workflow Milestone: "
#: The failure reasons of an operator's cancel (`: {reason}` follows when one is given)
#: and of a step deadline (its duration follows), as CONTRACT §11 words them.
CANCELLED_REASON = "Cancelled by an operator"
DEADLINE_REASON = "Milestone worker did not report back within "


def retries_of(workflow: dict[str, Any]) -> int:
    """How often an operator retried this workflow: its log says so, and the Manager
    stores the log, so every worker derives the same number."""
    log = workflow.get("event_log") or []
    return sum(1 for line in log if isinstance(line, str) and RETRY_LINE in line)


def run_key_of(workflow: dict[str, Any], message_key: str) -> str:
    """What identifies this run of the workflow in the ids the transition derives."""
    started = workflow.get("workflow_start_time") or message_key
    retries = retries_of(workflow)
    return f"{started}#retry{retries}" if retries else str(started)


def _position(milestones: list[str], step: Any) -> int | None:
    if step is None:
        return -1
    if step == COMPLETED_STEP:
        return len(milestones)
    try:
        return milestones.index(step)
    except ValueError:
        return None


def _milestone_list(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(m, str) for m in value):
        return value
    return []


def classify(
    stored: dict[str, Any],
    message: dict[str, Any],
    last_dispatch: Mapping[str, Any] | None = None,
) -> tuple[Outcome | None, str]:
    """Where the message stands against the store; None means "apply it".

    `last_dispatch` (the step start remembered beside the lock) is needed only once an
    operator retried the workflow (`needs_last_dispatch`): it tells a late report of
    the failed run that echoes no log from one of the retried run."""
    if stored.get("workflow_completed"):
        return Outcome.DUPLICATE, "the workflow is already completed"
    milestones = _milestone_list(message.get("milestones")) or _milestone_list(
        stored.get("milestones")
    )
    stored_step, message_step = stored.get("current_step"), message.get("current_step")
    stored_at = _position(milestones, stored_step)
    message_at = _position(milestones, message_step)
    if stored_at is None:
        return Outcome.INCONSISTENT, (
            f"the stored current_step {stored_step!r} is not one of the milestones {milestones}"
        )
    if message_at is None:
        return Outcome.INCONSISTENT, (
            f"the message's current_step {message_step!r} is not one of the milestones {milestones}"
        )
    if message_at < stored_at:
        return Outcome.DUPLICATE, (
            f"the message reports step {message_step or 'none'} but the workflow is at {stored_step}"
        )
    if message_at > stored_at:
        return Outcome.AHEAD, (
            f"the message reports step {message_step} but the stored workflow is still at "
            f"{stored_step or 'none'}"
        )
    if message_step is not None and _of_a_retried_run(stored, message, last_dispatch):
        return Outcome.DUPLICATE, (
            f"the message reports step {message_step} of a run an operator retried since"
        )
    return None, ""


def needs_last_dispatch(stored: dict[str, Any]) -> bool:
    """Whether `classify` needs the remembered last dispatch for a report: only for a
    workflow an operator retried (the hot path reads nothing more)."""
    return retries_of(stored) > 0


def _of_a_retried_run(
    stored: dict[str, Any], message: dict[str, Any], last_dispatch: Mapping[str, Any] | None
) -> bool:
    """A report of the run an operator retried since, not of the retried run."""
    retried = retries_of(stored)
    if not retried:
        return False
    if isinstance(message.get("event_log"), list):
        # A report echoes the log of the request it answers: one from before an
        # operator's retry lacks the retry's line and belongs to the failed run.
        return retries_of(message) < retried
    # No log echoed: its step start against the one the retried run was dispatched with.
    last = last_dispatch or {}
    if last.get("step") != message.get("current_step"):
        return False
    reported, dispatched = (
        parse_instant(message.get("step_time")),
        parse_instant(last.get("step_time")),
    )
    return reported is not None and dispatched is not None and reported < dispatched


def _no_empty_step(fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAperture's own saves write `current_step: ""` for "no step yet"."""
    if fields.get("current_step") == "":
        return {**fields, "current_step": None}
    return fields


def transition(
    stored: dict[str, Any],
    message: dict[str, Any],
    *,
    now: datetime,
    topology: Topology,
    config: EngineConfig,
    message_key: str,
    ahead_since: datetime | None = None,
    last_dispatch: Mapping[str, Any] | None = None,
) -> Decision:
    """Decide what one message does to its workflow.

    `message_key` identifies the message being processed (its Celery task id, which a
    redelivery or retry keeps); with the run's start time it makes the dispatched task
    ids deterministic: the same workflow run and step always get the same id.
    `ahead_since` is when this message was first found ahead of the store.
    """
    stored, message = _no_empty_step(stored), _no_empty_step(message)
    control = message.get(CONTROL_KEY)
    if isinstance(control, dict):
        return _control(stored, message, control, now, topology, config, last_dispatch)
    outcome, why = classify(stored, message, last_dispatch)
    if outcome is Outcome.AHEAD:
        waited = (now - ahead_since).total_seconds() if ahead_since else 0.0
        if waited > config.out_of_order_timeout:
            return Decision(
                Outcome.INCONSISTENT,
                f"Inconsistent message for workflow {message.get('id')}: {why}, "
                f"for more than {config.out_of_order_timeout:g} seconds",
            )
        return Decision(Outcome.AHEAD, why)
    if outcome is Outcome.INCONSISTENT:
        return Decision(outcome, f"Inconsistent message for workflow {message.get('id')}: {why}")
    if outcome is Outcome.DUPLICATE:
        return Decision(outcome, why)
    workflow = _prepare(stored, message)
    # The run's start time travels in every request and callback, so any copy of a
    # message for this run derives the same ids; a start message has none yet, and
    # its own identity (kept by redelivery) stands in.
    run = _Run(workflow, now, topology, config, run_key_of(workflow, message_key))
    run.stored = stored
    run.apply(message)
    return Decision(Outcome.APPLIED, run.summary, run.workflow, tuple(run.effects))


#: What a control needs that the Manager does not store, from the last dispatch.
CARRIED_FIELDS = ("workflow_start_time", "step_time", "notifications_config")


def _control(
    stored: dict[str, Any],
    message: dict[str, Any],
    control: dict[str, Any],
    now: datetime,
    topology: Topology,
    config: EngineConfig,
    last_dispatch: Mapping[str, Any] | None,
) -> Decision:
    """A deadline, `cancel` or `retry` (docs/behaviour.md §11): each acts once."""
    kind = control.get("kind")
    wid = stored.get("id") or message.get("id")
    step = stored.get("current_step")
    last = dict(last_dispatch or {})
    carried = {k: last.get(k) for k in CARRIED_FIELDS if last.get(k) is not None}
    if kind == "deadline":
        return _deadline(stored, message, control, now, topology, config, last)
    if kind == "cancel":
        if stored.get("workflow_completed"):
            return Decision(
                Outcome.NOTHING, f"workflow {wid} is already completed: nothing to cancel"
            )
        reason = control.get("reason")
        text = f"{CANCELLED_REASON}: {reason}" if reason else CANCELLED_REASON
        workflow = _prepare(stored, {"id": wid, **carried})
        run = _Run(workflow, now, topology, config, run_key_of(workflow, str(wid)))
        run.fail(text)
        run._stamp()
        return Decision(Outcome.APPLIED, run.summary, run.workflow, tuple(run.effects))
    if kind == "retry":
        if not (stored.get("workflow_completed") and stored.get("workflow_error")):
            return Decision(Outcome.NOTHING, f"workflow {wid} did not fail: nothing to retry")
        milestone = config.registry.get(step) if isinstance(step, str) else None
        if milestone is None or step == COMPLETED_STEP:
            return Decision(
                Outcome.NOTHING, f"workflow {wid} failed before any step: nothing to retry"
            )
        workflow = _prepare(stored, {"id": wid, **carried})
        workflow["workflow_completed"] = workflow["workflow_error"] = False
        workflow["workflow_duration"] = None
        run = _Run(workflow, now, topology, config, "")
        run.log(f"{RETRY_LINE}{step} (requested by an operator)")
        run.run_key = run_key_of(workflow, str(wid))
        workflow["step_time"] = to_iso(now)
        run.log(f"Starting Workflow Milestone: {step}")
        if run.run_step(milestone, starting=True):
            run.advance()
        run._stamp()
        return Decision(
            Outcome.APPLIED, f"retried {step}: {run.summary}", run.workflow, tuple(run.effects)
        )
    return Decision(Outcome.INCONSISTENT, f"unknown {CONTROL_KEY} kind {kind!r} for workflow {wid}")


def _deadline(
    stored: dict[str, Any],
    message: dict[str, Any],
    control: dict[str, Any],
    now: datetime,
    topology: Topology,
    config: EngineConfig,
    last: dict[str, Any],
) -> Decision:
    wid = stored.get("id") or message.get("id")
    step, step_time = control.get("step"), control.get("step_time")
    due = parse_instant(control.get("due"))
    timeout = control.get("timeout")
    if due is None or not isinstance(timeout, (int, float)):
        return Decision(Outcome.INCONSISTENT, f"a deadline for workflow {wid} without a due time")
    if stored.get("workflow_completed") or stored.get("current_step") != step:
        return Decision(Outcome.DUPLICATE, f"stale deadline of {step}: the workflow moved on")
    if last.get("step") != step or last.get("step_time") != step_time:
        return Decision(Outcome.DUPLICATE, f"stale deadline of {step}: the step started again")
    remaining = (due - now).total_seconds()
    if remaining > 0:
        countdown = wait_seconds(min(remaining, config.schedule_poll_seconds))
        again = WorkerRequest(
            config.orchestrate_task,
            config.queue_name,
            message,
            derived_task_id(wid, step, "deadline", step_time),
            str(step),
            None,
            countdown,
        )
        return Decision(Outcome.REQUEUE, f"deadline of {step} in {countdown} s", None, (again,))
    carried = {k: message.get(k) for k in CARRIED_FIELDS if message.get(k) is not None}
    workflow = _prepare(stored, {"id": wid, **carried})
    run = _Run(workflow, now, topology, config, run_key_of(workflow, str(wid)))
    run.fail(f"{DEADLINE_REASON}{describe_seconds(timeout)}")
    run._stamp()
    return Decision(Outcome.APPLIED, run.summary, run.workflow, tuple(run.effects))


def _prepare(stored: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    wf = merge(stored, message)
    wf["workflow_id"] = wf["id"]
    options = wf.get("execute_options")
    if isinstance(options, dict):
        for name in EXECUTE_OPTION_FIELDS:
            if wf.get(name) is None and options.get(name) is not None:
                wf[name] = options[name]
    if not isinstance(wf.get("workflow_step_durations"), dict):
        wf["workflow_step_durations"] = {}
    else:
        wf["workflow_step_durations"] = dict(wf["workflow_step_durations"])
    for name in ("workflow_start_time", "step_time"):
        moment = parse_instant(wf.get(name))
        wf[name] = to_iso(moment) if moment else None
    wf.setdefault("workflow_error", False)
    wf.setdefault("workflow_completed", False)
    return wf


class _Run:
    """The mutable scratch state of one transition; never escapes `transition`."""

    def __init__(
        self,
        workflow: dict[str, Any],
        now: datetime,
        topology: Topology,
        config: EngineConfig,
        run_key: str,
    ) -> None:
        self.workflow = workflow
        self.now = now
        self.topology = topology
        self.config = config
        self.run_key = run_key
        self.effects: list[Effect] = []
        self.summary = ""
        #: The workflow as the Manager stored it, for the values a failure must not
        #: overwrite (Failed.keep_stored).
        self.stored: Mapping[str, Any] = {}
        #: What the last `_stamp` read and wrote: the same again needs no new stamp.
        self._stamped: tuple[Any, ...] | None = None

    # -- the event log -------------------------------------------------------------
    def log(self, message: str, success: bool = True) -> None:
        """Append a line and chat it. Always appended, even when the same text is in the
        log already (two milestones overridden to one exchange, a retried step failing
        again for the same reason): only a message's log is merged in as a union."""
        prefix = event_prefix(self.workflow)
        self.workflow["event_log"].append(f"{prefix} {message}")
        note = chat_note(prefix, message, success, room_names(self.workflow))
        self.effects.append(ChatNotification(note))

    def _stamp(self) -> None:
        wf = self.workflow
        seen = (
            wf.get("step_time"),
            wf.get("workflow_start_time"),
            wf.get("elapsed_step_time"),
            wf.get("elapsed_workflow_time"),
        )
        if seen == self._stamped:  # a dispatch stamped it already, and nothing moved since
            return
        wf["elapsed_step_time"] = elapsed(seen[0], self.now)
        wf["elapsed_workflow_time"] = elapsed(seen[1], self.now)
        self._stamped = (*seen[:2], wf["elapsed_step_time"], wf["elapsed_workflow_time"])

    # -- the cases of docs/behaviour.md §3.4 -----------------------------------------
    def apply(self, message: dict[str, Any]) -> None:
        wf = self.workflow
        if message.get("workflow_completed") is True:
            if wf.get("workflow_error"):
                self.fail(WORKER_FAILURE)
            else:
                self.complete(reported=True)
        else:
            step = wf.get("current_step")
            if step is None:
                self.start()
            else:
                milestone = self.config.registry.get(step)
                if milestone is not None and milestone.internal:
                    if not self.run_step(milestone, starting=False):
                        self._stamp()
                        return
                else:
                    self.complete_step(step)
                self.advance()
        self._stamp()

    def start(self) -> None:
        wf = self.workflow
        self.log("Starting workflow...")
        if wf.get("workflow_start_time") is None:
            wf["workflow_start_time"] = to_iso(self.now)
        problem = check_milestones(wf.get("milestones"), self.config.registry)
        if problem:
            self.fail(problem)
            return
        self.advance()

    def advance(self) -> None:
        """Move to the next milestone and run it; internal steps may chain on."""
        wf = self.workflow
        while not wf["workflow_completed"]:
            milestones = _milestone_list(wf.get("milestones"))
            current = wf.get("current_step")
            at = _position(milestones, current)
            following = milestones[(at if at is not None else len(milestones)) + 1 :]
            if not following:
                self.complete()
                return
            step = following[0]
            wf["current_step"] = step
            wf["step_time"] = to_iso(self.now)
            self.log(f"Starting Workflow Milestone: {step}")
            milestone = self.config.registry.get(step)
            if milestone is None:
                self.fail(f"Unknown milestone: {step}")
                return
            if not self.run_step(milestone, starting=True):
                return

    def run_step(self, milestone: Milestone, *, starting: bool) -> bool:
        """Run a milestone's handler; True when it completed here and the run goes on."""
        wf = self.workflow
        step = milestone.name
        ctx = StepContext(
            step=step,
            workflow=wf,
            topology=self.topology,
            now=self.now,
            exchange_id=self.config.exchange_id,
            schedule_poll_seconds=self.config.schedule_poll_seconds,
            log=self.log,
            run_key=run_key(wf["id"], self.run_key),
        )
        result = milestone.handler(ctx, milestone)
        if isinstance(result, Passed):
            self.complete_step(step)
            return True
        if isinstance(result, Failed):
            for name in result.keep_stored:
                self.workflow[name] = self.stored.get(name)
            self.fail(result.reason, unexpected=result.unexpected)
            return False
        if isinstance(result, Waiting):
            target = Target(self.config.orchestrate_task, self.config.queue_name)
            self._dispatch(step, target, None, {}, countdown=result.countdown, kind="reevaluate")
            self.summary = f"{step}: next evaluation in {result.countdown} s"
            return False
        assert isinstance(result, Dispatched)
        self._dispatch(step, result.target, result.exchange_id, result.extra)
        self.summary = f"dispatched {step} to {result.target.task}@{result.target.queue}"
        return False

    def _dispatch(
        self,
        step: str,
        target: Target,
        exchange_id: Any,
        extra: dict[str, Any],
        *,
        countdown: int | None = None,
        kind: str = "request",
    ) -> None:
        self._stamp()
        payload = {name: None for name in (*WORKFLOW_FIELDS, *REQUEST_FIELDS)}
        payload.update(self.workflow)
        payload.update(self.config.routing_fields())
        payload.update(extra)
        task_id = derived_task_id(self.workflow["id"], step, kind, self.run_key)
        self.effects.append(
            WorkerRequest(target.task, target.queue, payload, task_id, step, exchange_id, countdown)
        )
        timeout = self.config.step_timeout(step)
        if kind == "request" and timeout > 0:
            self.effects.append(self._deadline_message(step, timeout))

    def _deadline_message(self, step: str, timeout: float) -> WorkerRequest:
        """The broker keeps the deadline: a message to ourselves, re-enqueued until due."""
        wf = self.workflow
        due = to_iso(self.now + timedelta(seconds=timeout))
        payload = {
            "id": wf["id"],
            **{name: wf.get(name) for name in CARRIED_FIELDS},
            CONTROL_KEY: {
                "kind": "deadline",
                "step": step,
                "step_time": wf.get("step_time"),
                "due": due,
                "timeout": timeout,
            },
        }
        return WorkerRequest(
            self.config.orchestrate_task,
            self.config.queue_name,
            payload,
            derived_task_id(wf["id"], step, "deadline", wf.get("step_time")),
            step,
            None,
            wait_seconds(min(timeout, self.config.schedule_poll_seconds)),
        )

    def complete_step(self, step: str) -> None:
        duration = elapsed(self.workflow.get("step_time"), self.now)
        self.workflow["workflow_step_durations"][step] = duration
        self.log(f"Completed Workflow Milestone: {step}, in {duration}")

    def complete(self, *, reported: bool = False) -> None:
        wf = self.workflow
        wf["workflow_completed"] = True
        wf["workflow_error"] = False
        duration = elapsed(wf.get("workflow_start_time"), self.now)
        wf["workflow_duration"] = duration
        self.log(f"Workflow completed in {duration}")
        if not reported:
            wf["current_step"] = COMPLETED_STEP
        self.summary = "workflow completed"
        self.finish()

    def fail(self, reason: str, *, unexpected: bool = False) -> None:
        wf = self.workflow
        step = wf.get("current_step")
        self.log(f"Workflow Milestone Failed: {step or 'none'}.  Reason: {reason}", False)
        wf["workflow_completed"] = True
        wf["workflow_error"] = True
        duration = elapsed(wf.get("workflow_start_time"), self.now)
        wf["workflow_duration"] = duration
        self.log(f"Workflow has failed in {duration}", False)
        if step is not None and step != COMPLETED_STEP:
            self.complete_step(step)
        if unexpected:
            self.effects.append(SystemEvent(f"Workflow {wf['id']} failed: {reason}"))
        self.summary = f"workflow failed: {reason}"
        self.finish()

    def finish(self) -> None:
        recipients = completion_recipients(self.workflow)
        if recipients is None:  # an empty list is a list: sent, as the original does
            return
        self.log(
            "Sending on_workflow_completed email notification to the following recipient(s): "
            + ", ".join(str(r) for r in recipients)
        )
        self._stamp()
        payload = completion_email(self.workflow, recipients, self.config.ui_url)
        task_id = email_task_id(self.workflow["id"], retries_of(self.workflow))
        self.effects.append(EmailNotification(payload, task_id))
