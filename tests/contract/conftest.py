"""Black-box contract scenarios (CONTRACT.md): the real orchestrator worker in its own
process, the Manager emulator over HTTP, and peers written with PLAIN Celery only.

The peers import nothing of this project: each is a vanilla `Celery(...)` app whose
tasks (`builder.build`, `deployer.deploy`, `deployer.deploy_oa`, `notifications.hipchat`,
`notifications.email`) record what they receive and report back exactly as CONTRACT.md
§1 says a worker does: `send_task("workflow_orchestrator.orchestrate",
args=[updated_request], queue=request["orchestration_queue_name"])`. What a peer does is
steered by a `test_instructions` key in the request (unknown keys pass through, §2).
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.support import (
    OrchestratorProcess,
    WorkflowsView,
    delete_test_queues,
    in_process_worker,
    system_settings,
    wait_registered,
)
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.settings import Settings

SUFFIX = uuid.uuid4().hex[:8]
CLIENT_SECRET = f"ct-secret-{uuid.uuid4().hex}"
ORCHESTRATE = "workflow_orchestrator.orchestrate"


def celery_queue(name: str) -> Queue:
    """What a plain `celery worker -Q name` declares (Celery's automatic queue)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


@dataclass
class Received:
    task: str
    task_id: str
    routing_key: str | None
    payload: dict[str, Any]


@dataclass
class Recorder:
    requests: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    chats: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    emails: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)


def _workflow_of_prefix(prefix: str) -> str:
    return prefix.split("[OA][", 1)[1].split("]", 1)[0]


def plain_peers(broker_url: str, settings: Settings, recorder: Recorder) -> Celery:
    """Builder, deployer and notifications as any Celery programmer would write them."""
    app = Celery("plain-contract-peers", broker=broker_url, set_as_current=False)
    app.conf.broker_url = broker_url
    app.conf.broker_write_url = broker_url
    app.conf.broker_read_url = broker_url
    app.conf.task_queues = [
        celery_queue(q)
        for q in (
            settings.builder_queue,
            settings.deployer_queue,
            settings.deploy_oa_queue,
            settings.hipchat_queue,
            settings.email_queue,
        )
    ]

    def report(request: dict[str, Any]) -> None:
        app.send_task(ORCHESTRATE, args=[request], queue=request["orchestration_queue_name"])

    def behave(task: Any, name: str, request: dict[str, Any]) -> None:
        info = task.request.delivery_info or {}
        with recorder.lock:
            recorder.requests[request.get("id")].append(
                Received(name, task.request.id, info.get("routing_key"), request)
            )
        step = request.get("current_step")
        todo = request.get("test_instructions") or {}
        prefix = f"[OA][{request['id']}]"
        reply = dict(request)
        if todo.get("silent_step") == step:
            return
        if todo.get("fail_step") == step:
            reply["workflow_error"] = True
            reply["workflow_completed"] = True
            reply["event_log"] = [
                *request.get("event_log", []),
                f"{prefix} docker build exited with status 1",
                f"{prefix} {step} failed on a plain peer",
            ]
            app.send_task(
                settings.hipchat_task,
                args=[
                    {
                        "is_success": False,
                        "prefix": prefix,
                        "message": f"{step} failed on a plain peer",
                        "room_names": None,
                    }
                ],
                queue=settings.hipchat_queue,
            )
            report(reply)
            return
        if name == settings.builder_task and not reply.get("etcd_token"):
            reply["etcd_token"] = todo.get("etcd_token", "deploy-cluster-1")
        reply["event_log"] = [
            *request.get("event_log", []),
            f"{prefix} {step} done by a plain peer",
        ]
        report(reply)

    @app.task(name=settings.builder_task, bind=True, shared=False)
    def build(self: Any, request: dict[str, Any]) -> None:
        behave(self, settings.builder_task, request)

    @app.task(name=settings.deployer_task, bind=True, shared=False)
    def deploy(self: Any, request: dict[str, Any]) -> None:
        behave(self, settings.deployer_task, request)

    @app.task(name=settings.deploy_oa_task, bind=True, shared=False)
    def deploy_oa(self: Any, request: dict[str, Any]) -> None:
        behave(self, settings.deploy_oa_task, request)

    @app.task(name=settings.hipchat_task, bind=True, shared=False)
    def hipchat(self: Any, note: dict[str, Any]) -> None:
        info = self.request.delivery_info or {}
        with recorder.lock:
            recorder.chats[_workflow_of_prefix(note["prefix"])].append(
                Received(settings.hipchat_task, self.request.id, info.get("routing_key"), note)
            )

    @app.task(name=settings.email_task, bind=True, shared=False)
    def email(self: Any, mail: dict[str, Any]) -> None:
        info = self.request.delivery_info or {}
        with recorder.lock:
            recorder.emails[_workflow_of_prefix(mail["prefix"])].append(
                Received(settings.email_task, self.request.id, info.get("routing_key"), mail)
            )

    return app


@dataclass
class Contract(WorkflowsView):
    emulator: ManagerEmulator
    settings: Settings
    recorder: Recorder
    caller: Celery
    orchestrator: OrchestratorProcess

    def send(self, payload: Any, **options: Any) -> str:
        """A plain client: Celery's defaults, nothing of ours (CONTRACT.md §1)."""
        return self.caller.send_task(
            ORCHESTRATE, args=[payload], queue=self.settings.queue_name, **options
        ).id

    def lines(self, workflow_id: str) -> list[str]:
        return list(self.workflow(workflow_id)["event_log"])

    def events(self, workflow_id: str) -> list[str]:
        """The orchestrator's own lines, without their `[OA][id][repo] ` prefix."""
        prefix = f"[OA][{workflow_id}]["
        return [
            line.split("] ", 1)[1] for line in self.lines(workflow_id) if line.startswith(prefix)
        ]

    def drain(self, queue_name: str) -> list[Any]:
        """Take every message off a queue (declared the plain Celery way)."""
        out = []
        with Connection(self.settings.celery_broker_url) as conn:
            queue = celery_queue(queue_name)(conn.default_channel)
            queue.declare()
            while True:
                message = queue.get(no_ack=True)
                if message is None:
                    return out
                out.append(message)

    def dead_letters(self) -> list[Any]:
        return self.drain(self.settings.error_queue_name)


@pytest.fixture(scope="package")
def contract(broker_url: str) -> Iterator[Contract]:
    emulator = ManagerEmulator(client_id="orchestrator", client_secret=CLIENT_SECRET).start()
    emulator.add_exchange("1", name="local")
    emulator.add_exchange("3", name="empty")
    emulator.add_module("1", "builder", hostname="builder-1")
    emulator.add_module("1", "deployer", hostname="deployer-1")
    emulator.add_cluster("build-cluster-1", 1, allow_docker_builds=True)
    emulator.add_cluster("deploy-cluster-1", 1)
    settings = system_settings(
        emulator,
        secret=CLIENT_SECRET,
        prefix=f"wo_ct_{SUFFIX}",
        broker_url=broker_url,
        ui_url="http://ui.example",
        hostname=f"orchestrator-ct-{SUFFIX}",
        manager_read_timeout=5.0,
        max_retries=6,
        out_of_order_timeout=1.0,
    )
    orchestrator = OrchestratorProcess(settings.to_env()).start()
    recorder = Recorder()
    peers = plain_peers(broker_url, settings, recorder)
    caller = Celery("plain-contract-caller", broker=broker_url, set_as_current=False)
    caller.conf.broker_url = caller.conf.broker_write_url = broker_url
    try:
        wait_registered(emulator, orchestrator, settings.hostname)
        with in_process_worker(peers, f"ct-peers-{SUFFIX}@test"):
            yield Contract(emulator, settings, recorder, caller, orchestrator)
    finally:
        orchestrator.stop()
        emulator.stop()
        delete_test_queues(broker_url, settings)
