"""Fault-injection harness: many workflows through real worker processes, the real
broker and the Manager emulator, with faults injected; then every workflow is checked.

Per workflow: completed as expected; every event line the contract promises present
exactly once; the saved event log never shrank from one PUT to the next; one worker
request id per step; one e-mail task id.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from tests.services import PrivateRabbitNode, ServiceError
from tests.support import (
    OrchestratorProcess,
    WorkerProcess,
    delete_test_queues,
    system_settings,
    wait_for,
)
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.queues import error_queue
from workflow_orchestrator.settings import Settings
from workflow_orchestrator.transition import email_task_id
from workflow_orchestrator.worker_api import worker_app

SECRET = f"secret-{uuid.uuid4().hex}"
EMAIL_CONFIG = {"email": {"events": {"on_workflow_completed": ["ops@example.com"]}}}

#: The lines a successful [build, deploy] workflow must log, each exactly once.
EXPECTED_LINES = (
    "Starting workflow...",
    "Starting Workflow Milestone: build",
    "Dispatching a build request to exchange 1, docker build cluster build-cluster-1...",
    "Completed Workflow Milestone: build, in ",
    "Starting Workflow Milestone: deploy",
    "Dispatching a deploy request to exchange 1, deployment cluster deploy-cluster-1...",
    "Completed Workflow Milestone: deploy, in ",
    "Workflow completed in ",
    "Sending on_workflow_completed email notification to the following recipient(s): "
    "ops@example.com",
)


@dataclass
class FaultSystem:
    emulator: ManagerEmulator
    settings: Settings
    orchestrators: list[OrchestratorProcess]
    peers: WorkerProcess
    record_path: Path
    supervise: bool = True
    restarts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _caller: Any = None

    # -- processes -----------------------------------------------------------------
    def start(self) -> FaultSystem:
        self.peers.start()
        for orchestrator in self.orchestrators:
            orchestrator.start()
        wait_for(self._all_registered, 40, "the orchestrator workers to register")
        # Registration is a worker step; the error queue is declared by a consumer step,
        # which has run once Celery says "ready.".
        for orchestrator in self.orchestrators:
            wait_for(lambda o=orchestrator: "ready." in o.log(), 40, "an orchestrator to consume")
        wait_for(lambda: "ready." in self.peers.log(), 40, "the peer worker to start")
        threading.Thread(target=self._supervisor, daemon=True).start()
        return self

    def _all_registered(self) -> bool:
        hosts = {m["hostname"] for m in self.emulator.modules("1")}
        return all(o.env["HOSTNAME"] in hosts for o in self.orchestrators)

    def _supervisor(self) -> None:
        """Restart a worker that died, as systemd or Kubernetes would."""
        while not self._stop.wait(0.2):
            if not self.supervise:
                continue
            for process in [*self.orchestrators, self.peers]:
                if process.process is not None and not process.alive():
                    self.restarts += 1
                    process.start()

    def stop(self) -> None:
        self._stop.set()
        for process in [*self.orchestrators, self.peers]:
            process.stop()

    def logs(self) -> str:
        return "\n".join(o.log() for o in self.orchestrators)

    # -- workflows -------------------------------------------------------------------
    def caller(self) -> Any:
        if self._caller is None:
            self._caller = worker_app(
                "fault-caller",
                self.settings.celery_broker_url,
                orchestration_queue=self.settings.queue_name,
            )
        return self._caller

    def start_workflows(self, count: int, **message: Any) -> list[str]:
        """Create `count` [build, deploy] workflows and start each (message fields as given)."""
        ids = []
        for _ in range(count):
            wid = self.emulator.add_workflow(
                {
                    "deployment_repo": "Test-Org/app_docker",
                    "source_repo": "Test-Org/app",
                    "source_repo_git_ref": "abc123",
                    "milestones": ["build", "deploy"],
                }
            )
            ids.append(wid)
            self.send_start(wid, **message)
        return ids

    def send_start(self, workflow_id: str, **fields: Any) -> None:
        caller = self.caller()
        caller.send_task(
            self.settings.orchestrate_task,
            args=[{"id": workflow_id, **fields}],
            queue=self.settings.queue_name,
        )

    def wait_all_completed(self, ids: list[str], timeout: float) -> None:
        def done() -> bool:
            return all((self.emulator.get_workflow(w) or {}).get("workflow_completed") for w in ids)

        try:
            wait_for(done, timeout, f"{len(ids)} workflows to complete")
        except AssertionError:
            pending = [
                w for w in ids if not self.emulator.get_workflow(w).get("workflow_completed")
            ]
            # What a flake needs to be explained: what the peers received for the first
            # stuck workflow, every log line naming it, and what was set aside.
            first = pending[0]
            received = [r for r in self.records() if r.get("workflow") == first]
            logs = self.logs() + "\n" + self.peers.log()
            lines = [line for line in logs.splitlines() if first in line]
            try:
                dead: Any = len(self.dead_letters())
            except Exception as exc:  # noqa: BLE001 - the broker may be what failed
                dead = f"unknown ({type(exc).__name__})"
            raise AssertionError(
                f"{len(pending)} of {len(ids)} workflows did not complete, e.g. {first}: "
                f"{self.emulator.get_workflow(first)['event_log']}\n--- the peers received "
                f"---\n{received}\n--- its log lines (orchestrators, then peers) ---\n"
                + "\n".join(lines[-60:])
                + f"\n--- dead letters: {dead} ---\n--- logs ---\n"
                + self.logs()[-4000:]
            ) from None

    def records(self) -> list[dict[str, Any]]:
        if not self.record_path.exists():
            return []
        return [json.loads(line) for line in self.record_path.read_text().splitlines() if line]

    def dead_letters(self) -> list[Any]:
        out = []
        with Connection(self.settings.celery_broker_url) as conn:
            queue = error_queue(self.settings.error_queue_name)(conn.default_channel)
            queue.declare()  # idempotent, same arguments as the worker's declaration
            while (message := queue.get(no_ack=True)) is not None:
                out.append(message)
        return out

    def orchestration_backlog(self) -> int:
        """Messages waiting in the orchestration queue (callbacks, duplicates, retries)."""
        with Connection(self.settings.celery_broker_url) as conn:
            channel = conn.channel()
            _, waiting, _ = channel.queue_declare(self.settings.queue_name, passive=True)
            return waiting

    def wait_settled(self, ids: list[str]) -> None:
        """Late duplicates and e-mails have landed: every workflow's e-mail is recorded
        and nothing waits in the orchestration queue, twice in a row."""

        def settled() -> bool:
            mailed = {r["workflow"] for r in self.records() if r["kind"] == "email"}
            return set(ids) <= mailed and self.orchestration_backlog() == 0

        wait_for(lambda: settled() and settled(), 60, "late duplicates and e-mails to land")

    # -- the checks every scenario makes -------------------------------------------------
    def check(self, ids: list[str]) -> dict[str, int]:
        """Assert the per-workflow promises; return figures for the README, counted from
        the run (a lost step is a workflow not completed or a step never requested)."""
        lost = sum(
            1
            for wid in ids
            if not (self.emulator.get_workflow(wid) or {}).get("workflow_completed")
        )
        self.wait_settled(ids)
        records = self.records()
        requests: dict[tuple[str, str], set[str]] = defaultdict(set)
        emails: dict[str, set[str]] = defaultdict(set)
        for r in records:
            if r["kind"] == "request":
                requests[(r["workflow"], r["step"])].add(r["task_id"])
            elif r["kind"] == "email":
                emails[r["workflow"]].add(r["task_id"])
        for wid in ids:
            wf = self.emulator.get_workflow(wid)
            assert wf["workflow_completed"] is True and wf["workflow_error"] is False, wf
            lines = [line.split("] ", 1)[1] for line in wf["event_log"] if line.startswith("[OA]")]
            for expected in EXPECTED_LINES:
                found = [line for line in lines if line.startswith(expected)]
                assert len(found) == 1, (wid, expected, wf["event_log"])
            assert len(wf["event_log"]) == len(set(wf["event_log"])), wf["event_log"]
            puts = self.emulator.workflow_puts(wid)
            for before, after in zip(puts, puts[1:], strict=False):
                old, new = before.get("event_log") or [], after.get("event_log") or []
                assert new[: len(old)] == old, f"the event log of {wid} shrank or changed"
            for step in ("build", "deploy"):
                assert len(requests[(wid, step)]) == 1, (wid, step, requests[(wid, step)])
            assert emails[wid] == {email_task_id(wid)}, (wid, emails[wid])
        lost += sum(1 for wid in ids for step in ("build", "deploy") if not requests[(wid, step)])
        return {
            "workflows": len(ids),
            "requests": sum(len(v) for v in requests.values()),
            "restarts": self.restarts,
            "lost": lost,
        }


def make_system(
    emulator: ManagerEmulator,
    *,
    broker_url: str,
    orchestrators: int = 1,
    pool: str = "threads",
    concurrency: int = 4,
    duplicate: bool = False,
    extra_env: dict[str, str] | None = None,
    **settings_changes: Any,
) -> FaultSystem:
    tag = uuid.uuid4().hex[:8]

    options: dict[str, Any] = {
        "ui_url": "http://ui.example",
        "manager_connect_timeout": 1.0,
        "manager_read_timeout": 2.0,
        "retry_backoff_seconds": 0.25,
        "retry_backoff_max": 4.0,
        "max_retries": 60,
        **settings_changes,  # a scenario's own values win
    }
    settings = system_settings(
        emulator, secret=SECRET, prefix=f"wo_fault_{tag}", broker_url=broker_url, **options
    )
    record = Path(tempfile.mkstemp(prefix="wo-peers-", suffix=".jsonl")[1])
    peers_env = {
        "CELERY_BROKER_URL": broker_url,
        "PEERS_RECORD": str(record),
        "PEERS_DUPLICATE": "1" if duplicate else "0",
        "PEERS_BUILDER_QUEUE": settings.builder_queue,
        "PEERS_DEPLOYER_QUEUE": settings.deployer_queue,
        "PEERS_DEPLOY_OA_QUEUE": settings.deploy_oa_queue,
        "PEERS_HIPCHAT_QUEUE": settings.hipchat_queue,
        "PEERS_EMAIL_QUEUE": settings.email_queue,
        "PEERS_ORCHESTRATION_QUEUE": settings.queue_name,
    }
    processes = []
    for n in range(orchestrators):
        env = {**settings.to_env(), "HOSTNAME": f"orchestrator-{tag}-{n}", **(extra_env or {})}
        processes.append(
            OrchestratorProcess(env, pool=pool, concurrency=concurrency, name=f"orch{n}")
        )
    peers = WorkerProcess(peers_env, concurrency=8, name="peers")
    return FaultSystem(emulator, settings, processes, peers, record)


@contextmanager
def seeded_emulator(broker_url: str) -> Iterator[ManagerEmulator]:
    """The Manager emulator of a fault system on `broker_url`: one exchange with a
    builder and a deployer, one build and one deploy cluster."""
    manager = ManagerEmulator(
        client_id="orchestrator", client_secret=SECRET, broker_url=broker_url
    ).start()
    try:
        manager.add_exchange("1", name="local")
        manager.add_module("1", "builder", hostname="builder-1")
        manager.add_module("1", "deployer", hostname="deployer-1")
        manager.add_cluster("build-cluster-1", 1, allow_docker_builds=True)
        manager.add_cluster("deploy-cluster-1", 1)
        yield manager
    finally:
        manager.stop()


@contextmanager
def system_builder(emulator: ManagerEmulator, broker_url: str) -> Iterator[Any]:
    """`build(**options)` starts a fault system on `broker_url`; every one is stopped and
    its queues deleted when the block ends."""
    made: list[FaultSystem] = []

    def build(**options: Any) -> FaultSystem:
        system = make_system(emulator, broker_url=broker_url, **options)
        made.append(system)
        return system.start()

    try:
        yield build
    finally:
        for system in made:
            system.stop()
            delete_test_queues(broker_url, system.settings)
            emulator.reset_faults()


@pytest.fixture(scope="module")
def emulator(broker_url: str) -> Iterator[ManagerEmulator]:
    with seeded_emulator(broker_url) as manager:
        yield manager


@pytest.fixture
def build_system(emulator: ManagerEmulator, broker_url: str) -> Iterator[Any]:
    """Fault systems on the session's own virtual host of the machine's broker."""
    with system_builder(emulator, broker_url) as build:
        yield build


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbitNode]:
    """A RabbitMQ node of this test's own, which it may stop and start: the machine's
    broker and its other clients are never disturbed. Stopped and removed afterwards."""
    node = PrivateRabbitNode()
    try:
        node.start()
    except ServiceError as exc:
        pytest.fail(f"could not start a private RabbitMQ node for the test: {exc}")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def build_private_system(private_rabbit: PrivateRabbitNode) -> Iterator[Any]:
    """Like `build_system`, but the whole system (emulator, orchestrators, peers) uses
    the test's private RabbitMQ node; it is stopped before the node is."""
    with seeded_emulator(private_rabbit.url) as manager:
        with system_builder(manager, private_rabbit.url) as build:
            yield build


def report(name: str, figures: dict[str, Any]) -> None:
    """Figures of the last run, for the README's reliability table."""
    path = Path(tempfile.gettempdir()) / "wo-fault-figures.jsonl"
    with open(path, "a") as handle:
        handle.write(json.dumps({"scenario": name, **figures}) + "\n")
    print(f"\n[fault figures] {name}: {figures}")
