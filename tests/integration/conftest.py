"""A whole system on this machine: RabbitMQ, the Manager emulator over HTTP, the real
orchestrator worker (threads pool) and peer builder/deployer/notification workers that
call back the way OpenAperture's workers do.

Queue names are unique per test session, so leftovers of an earlier run never leak in.
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
from kombu import Connection

from tests.support import (
    OrchestratorProcess,
    WorkflowsView,
    delete_test_queues,
    in_process_worker,
    system_settings,
    wait_registered,
)
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.queues import error_queue
from workflow_orchestrator.settings import Settings
from workflow_orchestrator.worker_api import step_completed, step_failed, worker_app

SUFFIX = uuid.uuid4().hex[:8]
CLIENT_SECRET = f"secret-{uuid.uuid4().hex}"


def unique(name: str) -> str:
    return f"wo_it_{SUFFIX}_{name}"


@dataclass
class Recorder:
    """What the peer workers received, per workflow id."""

    requests: dict[str, list[tuple[str, str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    chats: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    emails: dict[str, list[tuple[str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_request(self, task: str, task_id: str, request: dict[str, Any]) -> None:
        with self.lock:
            self.requests[request.get("id")].append((task, task_id, request))


def build_peers(settings: Settings, recorder: Recorder) -> Celery:
    peers = worker_app(
        "test-peers",
        settings.celery_broker_url,
        queues=[
            settings.builder_queue,
            settings.deployer_queue,
            settings.deploy_oa_queue,
            settings.hipchat_queue,
            settings.email_queue,
        ],
        orchestration_queue=settings.queue_name,
    )

    def behave(task: Any, name: str, request: dict[str, Any]) -> None:
        """Peers act on test instructions carried in the request (unknown keys pass through)."""
        recorder.add_request(name, task.request.id, request)
        step = request.get("current_step")
        instructions = request.get("test_instructions") or {}
        if instructions.get("fail_step") == step:
            step_failed(
                peers, request, f"{step} failed on a test peer", "docker build exited with status 1"
            )
            return
        if instructions.get("silent_step") == step:
            return
        reply = dict(request)
        if name == settings.builder_task and not reply.get("etcd_token"):
            reply["etcd_token"] = instructions.get("etcd_token", "deploy-cluster-1")
        copies = 2 if instructions.get("duplicate_callbacks") else 1
        for _ in range(copies):
            step_completed(peers, reply, f"{step} done by test peer")

    @peers.task(name=settings.builder_task, bind=True, shared=False)
    def build(self: Any, request: dict[str, Any]) -> None:
        behave(self, settings.builder_task, request)

    @peers.task(name=settings.deployer_task, bind=True, shared=False)
    def deploy(self: Any, request: dict[str, Any]) -> None:
        behave(self, settings.deployer_task, request)

    @peers.task(name=settings.deploy_oa_task, bind=True, shared=False)
    def deploy_oa(self: Any, request: dict[str, Any]) -> None:
        behave(self, settings.deploy_oa_task, request)

    @peers.task(name=settings.hipchat_task, shared=False)
    def hipchat(note: dict[str, Any]) -> None:
        workflow_id = note["prefix"].removeprefix("[OA][").split("]", 1)[0]
        with recorder.lock:
            recorder.chats[workflow_id].append(note)

    @peers.task(name=settings.email_task, bind=True, shared=False)
    def email(self: Any, mail: dict[str, Any]) -> None:
        workflow_id = mail["prefix"].split("[OA][", 1)[1].split("]", 1)[0]
        with recorder.lock:
            recorder.emails[workflow_id].append((self.request.id, mail))

    return peers


@dataclass
class System(WorkflowsView):
    emulator: ManagerEmulator
    settings: Settings
    recorder: Recorder
    caller: Celery
    orchestrator: OrchestratorProcess

    def send(self, payload: Any, **options: Any) -> str:
        result = self.caller.send_task(
            self.settings.orchestrate_task,
            args=[payload],
            queue=self.settings.queue_name,
            **options,
        )
        return result.id

    def start(self, workflow_id: str, **fields: Any) -> str:
        return self.send({"id": workflow_id, **fields})

    def events(self, workflow_id: str) -> list[str]:
        prefix = "] "
        log = self.workflow(workflow_id)["event_log"] or []  # null until the first save
        return [line.split(prefix, 1)[1] for line in log]

    def dead_letters(self) -> list[Any]:
        """Drain the dead-letter queue; returns the raw kombu messages' bodies."""
        out = []
        with Connection(self.settings.celery_broker_url) as conn:
            queue = error_queue(self.settings.error_queue_name)(conn.default_channel)
            while True:
                message = queue.get(no_ack=True)
                if message is None:
                    return out
                out.append(message)


@pytest.fixture(scope="package")  # its in-process peer worker must be gone before others start
def system(broker_url: str) -> Iterator[System]:
    emulator = ManagerEmulator(
        client_id="orchestrator",
        client_secret=CLIENT_SECRET,
        broker_url=broker_url,
        queue_name=unique("orchestration"),
    ).start()
    emulator.add_exchange("1", name="local")
    emulator.add_exchange("2", name="remote")
    emulator.add_module("1", "builder", hostname="builder-1")
    emulator.add_module("1", "deployer", hostname="deployer-1")
    emulator.add_module("2", "builder", hostname="builder-2")
    emulator.add_module("2", "deployer", hostname="deployer-2")
    emulator.add_exchange("3", name="empty")
    emulator.add_cluster("build-cluster-1", 1, allow_docker_builds=True)
    emulator.add_cluster("deploy-cluster-1", 1)
    emulator.add_cluster("deploy-cluster-2", 2)
    emulator.add_cluster("orphan-cluster", None)

    settings = system_settings(
        emulator,
        secret=CLIENT_SECRET,
        prefix=f"wo_it_{SUFFIX}",
        broker_url=broker_url,
        ui_url="http://ui.example",
        hostname=f"orchestrator-{SUFFIX}",
        manager_read_timeout=5.0,
        max_retries=8,
        step_timeouts=(("build", 3.0),),  # a silent builder fails its workflow quickly
    )
    orchestrator = OrchestratorProcess(settings.to_env()).start()
    recorder = Recorder()
    peers = build_peers(settings, recorder)
    caller = worker_app(
        "test-caller", broker_url, queues=[], orchestration_queue=settings.queue_name
    )
    try:
        wait_registered(emulator, orchestrator, settings.hostname)
        with in_process_worker(peers, f"peers-{SUFFIX}@test"):
            yield System(emulator, settings, recorder, caller, orchestrator)
    finally:
        orchestrator.stop()
    emulator.stop()
    delete_test_queues(broker_url, settings)
