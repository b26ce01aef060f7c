"""The benchmark's peer workers: builder, deployer and notification tasks in one process.

Run by bench/harness.py as its own subprocess (never next to another worker in one
process: kombu's event-loop hub is a process global)::

    BENCH_PLAN=plan.json celery -A bench.peers worker -P threads -c 16 -Q ... -l WARNING

The plan (JSON, written by the harness) names the queues and tasks, and the benchmark's
phases: for each phase the workflow ids, the queue their start messages go to and how
many workflows are kept in flight. The harness sends the first `window` start messages;
from then on every completed workflow makes this process send the next start message
(a closed loop), so the system under test always has `window` workflows to work on.

What the peers do, per message:

* `builder.build` / `deployer.deploy`: call back at once with
  `worker_api.step_completed` (the builder also names the deployment cluster, as a real
  builder does), after recording the latency of the transition that produced the request.
* `notifications.hipchat`: count; "Workflow completed in ..." (or "... has failed ...")
  marks the workflow done. `notifications.email`: count.
* `bench.done`: the baseline's last hop: marks the workflow done.

Latency of a transition = (this peer received the next message) - (the message that
triggered the transition was published). Every message to the orchestrator carries
`bench_sent_at` (an unknown key: the orchestrator passes it through into the request it
dispatches); the last transition's trigger time is kept here, per workflow.

Progress goes to `status_path` (JSON, rewritten every 0.2 s); when a phase is complete
its latency samples go to `{latency_dir}/latency-{phase}.json`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from celery import signals

from workflow_orchestrator.queues import orchestration_queue
from workflow_orchestrator.worker_api import step_completed, worker_app

PLAN: dict[str, Any] = json.loads(Path(os.environ["BENCH_PLAN"]).read_text())

BUILDER = PLAN["builder"]
DEPLOYER = PLAN["deployer"]
HIPCHAT = PLAN["hipchat"]
EMAIL = PLAN["email"]
DONE = PLAN["done"]
ORCHESTRATE_TASK = PLAN["orchestrate_task"]
DEPLOY_CLUSTER = PLAN.get("deploy_cluster", "deploy-cluster-1")

app = worker_app(
    "bench-peers",
    PLAN["broker_url"],
    queues=[BUILDER["queue"], DEPLOYER["queue"], HIPCHAT["queue"], EMAIL["queue"], DONE["queue"]],
    orchestration_queue=PLAN["orchestration_queue"],
)
# Peers must never be the bottleneck: let them hold a few messages per thread.
app.conf.worker_prefetch_multiplier = 4
START_FIELDS: dict[str, Any] = PLAN.get("start_fields") or {}
#: A peer on another broker (bench/run.py --second-broker's builder of exchange 2)
#: reports back to the orchestrator's own broker, as a worker in another region does.
if PLAN.get("callback_broker_url"):
    reply_app = worker_app(
        "bench-peers-reply",
        PLAN["callback_broker_url"],
        queues=[],
        orchestration_queue=PLAN["orchestration_queue"],
    )
else:
    reply_app = app


class Phase:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.queue = spec["queue"]
        self.start_fields = spec.get("start_fields") or START_FIELDS
        self.total = len(spec["ids"])
        self.pending = deque(spec["ids"][spec["window"] :])
        self.done: set[str] = set()
        self.failed = 0
        self.duplicates = 0
        self.requests = 0
        self.chats = 0
        self.emails = 0
        self.done_messages = 0
        self.first_done_at: float | None = None
        self.last_done_at: float | None = None
        self.latency: dict[str, list[float]] = {
            "start": [],
            "build-callback": [],
            "deploy-callback": [],
        }
        self.dumped = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": len(self.done),
            "failed": self.failed,
            "duplicates": self.duplicates,
            "requests": self.requests,
            "chats": self.chats,
            "emails": self.emails,
            "done_messages": self.done_messages,
            "first_done_at": self.first_done_at,
            "last_done_at": self.last_done_at,
        }


PHASES = {name: Phase(name, spec) for name, spec in PLAN["phases"].items()}
PHASE_OF = {wid: PHASES[name] for name, spec in PLAN["phases"].items() for wid in spec["ids"]}
_lock = threading.Lock()
_last_sent: dict[str, float] = {}  # workflow id -> when its last callback was published
_ready = threading.Event()


def _phase(workflow_id: Any) -> Phase | None:
    return PHASE_OF.get(workflow_id)


def _start(phase: Phase, workflow_id: str) -> None:
    app.send_task(
        ORCHESTRATE_TASK,
        args=[{"id": workflow_id, **phase.start_fields, "bench_sent_at": time.time()}],
        queue=orchestration_queue(phase.queue),
        retry=True,
    )


def _completed(workflow_id: str, failed: bool) -> None:
    now = time.time()
    phase = _phase(workflow_id)
    if phase is None:
        return
    nxt = None
    with _lock:
        if workflow_id in phase.done:
            phase.duplicates += 1
            return
        phase.done.add(workflow_id)
        phase.failed += int(failed)
        sent = _last_sent.pop(workflow_id, None)
        if sent is not None:
            phase.latency["deploy-callback"].append(now - sent)
        phase.first_done_at = phase.first_done_at or now
        phase.last_done_at = now
        if phase.pending:
            nxt = phase.pending.popleft()
        complete = len(phase.done) == phase.total and not phase.dumped
        if complete:
            phase.dumped = True
    if nxt is not None:
        _start(phase, nxt)
    if complete:
        _write(Path(PLAN["latency_dir"]) / f"latency-{phase.name}.json", phase.latency)


def _call_back(request: dict[str, Any], kind: str, builder: bool) -> None:
    now = time.time()
    workflow_id = request.get("id")
    phase = _phase(workflow_id)
    sent = request.get("bench_sent_at")
    if phase is not None:
        with _lock:
            phase.requests += 1
            if isinstance(sent, (int, float)):
                phase.latency[kind].append(now - sent)
    reply = dict(request)
    if builder and not reply.get("etcd_token"):
        reply["etcd_token"] = DEPLOY_CLUSTER
    reply["bench_sent_at"] = time.time()
    if workflow_id is not None and request.get("current_step") == "deploy":
        with _lock:
            _last_sent[workflow_id] = reply["bench_sent_at"]
    step_completed(
        reply_app,
        reply,
        f"{request.get('current_step')} done by bench peer",
        orchestrate_task=ORCHESTRATE_TASK,
    )


@app.task(name=BUILDER["task"], shared=False)
def build(request: dict[str, Any]) -> None:
    _call_back(request, "start", builder=True)


@app.task(name=DEPLOYER["task"], shared=False)
def deploy(request: dict[str, Any]) -> None:
    _call_back(request, "build-callback", builder=False)


@app.task(name=HIPCHAT["task"], shared=False)
def hipchat(note: dict[str, Any]) -> None:
    prefix = str(note.get("prefix", ""))
    workflow_id = prefix.removeprefix("[OA][").split("]", 1)[0]
    phase = _phase(workflow_id)
    if phase is None:
        return
    with _lock:
        phase.chats += 1
    for line in str(note.get("message", "")).splitlines():  # one line, or several
        if line.startswith("Workflow completed in"):
            _completed(workflow_id, failed=False)
        elif line.startswith("Workflow has failed in"):
            _completed(workflow_id, failed=True)


@app.task(name=EMAIL["task"], shared=False)
def email(mail: dict[str, Any]) -> None:
    prefix = str(mail.get("prefix", ""))
    workflow_id = prefix.split("[OA][", 1)[-1].split("]", 1)[0]
    phase = _phase(workflow_id)
    if phase is not None:
        with _lock:
            phase.emails += 1


@app.task(name=DONE["task"], shared=False)
def done(report: dict[str, Any]) -> None:
    phase = _phase(report.get("id"))
    if phase is not None:
        with _lock:
            phase.done_messages += 1
    _completed(str(report.get("id")), failed=bool(report.get("failed")))


def _write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _report_forever() -> None:
    path = Path(PLAN["status_path"])
    while True:
        with _lock:
            status = {
                "ready": True,
                "pid": os.getpid(),
                "at": time.time(),
                "phases": {name: p.snapshot() for name, p in PHASES.items()},
            }
        _write(path, status)
        time.sleep(0.2)


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    if _ready.is_set():
        return
    _ready.set()
    threading.Thread(target=_report_forever, name="bench-status", daemon=True).start()
