"""The floor the orchestrator is measured against: a minimal orchestrator as plain Celery.

Each hop does only what no orchestrator can avoid, on the same broker, emulator and
peers as the real one:

1. one `GET /workflows/{id}` and one `PUT /workflows/{id}` to the Manager emulator,
   with the bearer token (fetched once per process) over one keep-alive session;
2. one confirmed `send_task` to the next hop: the builder for a start, the deployer for
   the build callback, `bench.done` (the peers) for the deploy callback.

So a workflow is the same three hops (start, build-callback, deploy-callback) through
the same peer workers, minus what the orchestrator adds: the lock, the transition, the
chat notifications, task events, its own log lines.

With `"chats": true` in its configuration it is the *contract floor* instead: each hop
does the I/O the contract requires of a transition, the cheapest way, and nothing else:

* the chat notifications of docs/behaviour.md §7.1: one confirmed `notifications.hipchat`
  task per event line, after the save (3, 3 and 3 per workflow, the same lines the
  orchestrator writes); the last hop's completion line replaces `bench.done`;
* with each worker dispatch, the deadline message of §11.1: one confirmed publish of a
  small orchestration message to the TTL wait queue `{queue}.wait.{n}s` (declared as the
  orchestrator declares it, `queues.wait_queue`), `n` the same power of two;
* on completion, when the request asks for it (`notifications_config.email`), the
  completion e-mail of §7.4: one confirmed `notifications.email` task;
* what it saves and sends has the contract's size: the stored log merged with the
  report's (§3.2, the worker's own line), and the elapsed times and durations of §7.3
  (constants: the bench's steps take no time). Without them the floor's last PUT of a
  workflow was 10 % smaller than the orchestrator's (1613 against 1800 bytes), and so
  were what the emulator stored and served and what the peers were sent.

The gap between the two floors is what the contract's chat fan-out costs
on this machine; the gap between the contract floor and the orchestrator is the
orchestrator's own overhead. The task takes the orchestrator's
name on its own queue (declared like the orchestration queue), so the peers' unchanged
`worker_api.step_completed` calls back to it.

Run by bench/harness.py exactly like the orchestrator (same pool, concurrency, log level)::

    BENCH_BASELINE=baseline.json celery -A bench.baseline worker -Q <queue> -P threads -c 8 ...
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from workflow_orchestrator.broker_pool import NO_KWARGS_REPR
from workflow_orchestrator.manager import new_session
from workflow_orchestrator.queues import orchestration_queue, wait_queue
from workflow_orchestrator.transition import EngineConfig, wait_seconds
from workflow_orchestrator.workflow import REQUEST_FIELDS, WORKFLOW_FIELDS, union_log

CONF: dict[str, Any] = json.loads(Path(os.environ["BENCH_BASELINE"]).read_text())
QUEUE = CONF["queue"]
CHATS = bool(CONF.get("chats"))
EVENT_LINES = {
    None: [
        "Starting workflow...",
        "Starting Workflow Milestone: build",
        "Dispatching a build request to exchange 1, docker build cluster build-cluster-1...",
    ],
    "build": [
        "Completed Workflow Milestone: build, in 0 second(s)",
        "Starting Workflow Milestone: deploy",
        "Dispatching a deploy request to exchange 1, deployment cluster deploy-cluster-1...",
    ],
    "deploy": [
        "Completed Workflow Milestone: deploy, in 0 second(s)",
        "Workflow completed in 1 second(s)",
    ],
}
NO_TIME = "0 second(s)"
EMAIL_LINE = "Sending on_workflow_completed email notification to the following recipient(s): "
PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
NEXT = {None: "build", "build": "deploy", "deploy": None}
REQUEST_DEFAULTS: dict[str, Any] = dict.fromkeys(REQUEST_FIELDS)
#: What every request carries so a worker can call back (§5): exchange 1, broker 1.
ROUTING_FIELDS = EngineConfig(exchange_id="1", broker_id="1", queue_name=QUEUE).routing_fields()
BUILD_CLUSTER = "build-cluster-1"  # the registry's one docker-build cluster (harness)
STEP_TIMEOUT = float(CONF.get("step_timeout_seconds") or 0)
#: The deadline's wait queue, as the orchestrator computes it (a power of two of seconds).
DEADLINE_QUEUE = (
    wait_queue(QUEUE, wait_seconds(min(STEP_TIMEOUT, CONF.get("schedule_poll_seconds", 600))))
    if STEP_TIMEOUT > 0
    else None
)

app = Celery("bench-baseline", set_as_current=False)
app.conf.update(
    broker_url=CONF["broker_url"],
    task_queues=(orchestration_queue(QUEUE),),
    task_default_queue=QUEUE,
    task_create_missing_queues=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    event_serializer="json",
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    broker_heartbeat=30,
    task_ignore_result=True,
    result_backend=None,
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
)


def _plain(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


class _Manager:
    """A keep-alive session and one bearer token per process (built after a fork)."""

    def __init__(self) -> None:
        # The orchestrator's session: the same pool, the environment read once per host.
        self.session = new_session()
        answer = self.session.post(
            CONF["token_url"],
            json={
                "grant_type": "client_credentials",
                "client_id": CONF["client_id"],
                "client_secret": CONF["client_secret"],
            },
            timeout=(3.05, 15),
        )
        answer.raise_for_status()
        self.headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Authorization": f"Bearer {answer.json()['access_token']}",
        }


_manager: _Manager | None = None
_lock = threading.Lock()


def manager() -> _Manager:
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                _manager = _Manager()
    return _manager


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    global _manager
    _manager = None


def _send(task: str, queue: str | Queue, payload: dict[str, Any]) -> None:
    app.send_task(
        task,
        args=[payload],
        # Identifiers only, as the orchestrator shows in Flower (no secrets there), so
        # neither side pays for Celery's default: a saferepr of the whole payload.
        argsrepr=f"workflow={payload.get('id')} step={payload.get('current_step')}",
        kwargsrepr=NO_KWARGS_REPR,  # and no saferepr of no keyword arguments either
        queue=_plain(queue) if isinstance(queue, str) else queue,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


def _recipients(config: Any) -> list[Any]:
    """`notifications_config.email.events.on_workflow_completed`, groups expanded."""
    email = config.get("email") if isinstance(config, dict) else None
    wanted = (email or {}).get("events", {}).get("on_workflow_completed")
    if not isinstance(wanted, list):
        return []
    groups = (email or {}).get("groups") or {}
    out: list[Any] = []
    for entry in wanted:
        members = groups.get(entry) if isinstance(entry, str) else None
        out.extend(members if isinstance(members, list) else [entry])
    return out


@app.task(name=CONF["orchestrate_task"], shared=False, acks_late=True, ignore_result=True)
def hop(payload: dict[str, Any]) -> str:
    m = manager()
    workflow_id = payload["id"]
    url = f"{CONF['manager_url']}/workflows/{workflow_id}"
    got = m.session.get(url, headers=m.headers, timeout=(3.05, 15))
    got.raise_for_status()
    workflow = got.json()
    step = payload.get("current_step")
    nxt = NEXT[step]
    now = datetime.now(timezone.utc).isoformat()
    log = workflow.get("event_log") or []
    if CHATS:
        # §3.2: the stored log and the message's (the worker's line), once each.
        log = union_log(log, payload.get("event_log"))
    prefix = f"[OA][{workflow_id}][{workflow.get('deployment_repo') or 'Unknown'}]"
    lines = EVENT_LINES[step] if CHATS else [f"hop after {step or 'start'} at {now}"]
    recipients = _recipients(payload.get("notifications_config")) if CHATS and not nxt else []
    if recipients:
        lines = [*lines, EMAIL_LINE + ", ".join(str(r) for r in recipients)]
    log.extend(f"{prefix} {line}" for line in lines)
    workflow.update(
        event_log=log,
        current_step=nxt or "workflow_completed",
        workflow_completed=nxt is None,
        workflow_error=False,
    )
    if CHATS:
        # §7.3: every save writes the elapsed times, a finished step its duration, the
        # last save the workflow's (the run's steps take no time: the lines say 0 s).
        durations = dict(workflow.get("workflow_step_durations") or {})
        if step:
            durations[step] = NO_TIME
        workflow.update(
            elapsed_step_time=NO_TIME,
            elapsed_workflow_time=NO_TIME,
            workflow_step_durations=durations,
            workflow_duration=NO_TIME if nxt is None else None,
        )
    body = {name: workflow.get(name) for name in WORKFLOW_FIELDS if name != "id"}
    put = m.session.put(url, data=json.dumps(body), headers=m.headers, timeout=(3.05, 15))
    put.raise_for_status()
    if nxt is None:
        if not CHATS:  # with chats, the "Workflow completed" line tells the peers
            _send(CONF["done"]["task"], CONF["done"]["queue"], {"id": workflow_id})
    else:
        peer = CONF["builder"] if nxt == "build" else CONF["deployer"]
        target, queue = peer["task"], peer["queue"]
        # The contract's request (§5): the whole workflow and every request field of §2,
        # nulls included, then the fields a worker calls back and notifies with.
        message = {
            **REQUEST_DEFAULTS,
            **workflow,
            **{k: v for k, v in payload.items() if v is not None and k != "event_log"},
            "workflow_id": workflow_id,
            "current_step": nxt,
            "step_time": now,
            "workflow_start_time": payload.get("workflow_start_time") or now,
            **ROUTING_FIELDS,
        }
        if nxt == "build":
            message["docker_build_etcd_token"] = BUILD_CLUSTER
        _send(target, queue, message)
        if CHATS and DEADLINE_QUEUE is not None:
            deadline = {
                "id": workflow_id,
                "workflow_start_time": payload.get("workflow_start_time") or now,
                "step_time": now,
                "notifications_config": payload.get("notifications_config"),
                "orchestrator_control": {
                    "kind": "deadline",
                    "step": nxt,
                    "step_time": now,
                    "due": now,
                    "timeout": STEP_TIMEOUT,
                },
            }
            _send(CONF["orchestrate_task"], DEADLINE_QUEUE, deadline)
    if recipients:
        mail = {
            "prefix": f"SUCCEEDED {prefix}",
            "message": f"Source Commit:\n{workflow.get('source_repo')}/commit/"
            f"{workflow.get('source_repo_git_ref')}\n\nFor more information, please see:\n"
            f"{CONF.get('ui_url', '')}/index.html#/oa/workflows/workflows/{workflow_id}",
            "notifications": {"email_addresses": recipients},
        }
        _send(CONF["email"]["task"], CONF["email"]["queue"], mail)
    if CHATS:
        for line in lines:
            chat = {"is_success": True, "prefix": prefix, "message": line, "room_names": None}
            _send(CONF["hipchat"]["task"], CONF["hipchat"]["queue"], chat)
    return f"{workflow_id}: {step or 'start'} -> {nxt or 'done'} at {time.time():.3f}"
