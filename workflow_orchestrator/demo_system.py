"""The demo's system: its emulated Manager, settings, demo workers and the orchestrator
(in this process on `memory://`, or as its own worker process on a real broker)."""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection

from .emulator import ManagerEmulator
from .factory import create_app
from .queues import (
    orchestration_queue,
    plain_queue,
    wait_lengths,
    wait_queue,
    wait_queue_names,
)
from .settings import Settings, redact_url
from .worker_api import step_completed, step_failed, worker_app

#: Seconds a demo builder or deployer spends on one step.
STEP_SECONDS = (0.3, 1.5)
#: Deadline of the default run; every extra workflow adds a little.
DEADLINE_SECONDS = 30.0
#: The demo's step deadline of `build` (STEP_TIMEOUTS): well over a demo step's time,
#: so only the builder that goes silent meets it.
BUILD_DEADLINE_SECONDS = 4.0
EXCHANGE_ID = "1"
BUILD_CLUSTER = "demo-build-cluster"
DEPLOY_CLUSTER = "demo-deploy-cluster"
#: What the demo builder "reads from the deployment repo": one team gets the e-mails.
NOTIFICATIONS_CONFIG = {
    "hipchat": {"room_names": ["Deploys"]},
    "email": {
        "groups": {"team": ["dev@example.com", "ops@example.com"]},
        "events": {"on_workflow_completed": ["team"]},
    },
}
_WORKFLOW_ID = re.compile(r"\[OA\]\[([^\]]*)\]")


class DemoError(Exception):
    """The demo could not run (broker unreachable, a worker did not start)."""


@dataclass(frozen=True)
class Scenario:
    """One kind of demo workflow and how it must end."""

    title: str
    milestones: tuple[str, ...]
    repo: str
    expected: str  # "succeeded", "failed", "timed out" (status_view.outcome_text)
    retry: bool = False  # the demo retries it, as an operator would, once it failed
    #: Completion e-mails it gets: one per run; none when the builder, which reads the
    #: repository's notification settings into the request, never answered.
    emails: int = 1


SCENARIOS = (
    Scenario("build + deploy", ("build", "deploy"), "demo-org/web_docker", "succeeded"),
    Scenario("config + deploy_oa", ("config", "deploy_oa"), "demo-org/api_docker", "succeeded"),
    Scenario("builder fails", ("build", "deploy"), "demo-org/broken_docker", "failed"),
    Scenario(
        "builder goes silent", ("build", "deploy"), "demo-org/silent_docker", "timed out", emails=0
    ),
    Scenario(
        "fails, then retried",
        ("build", "deploy"),
        "demo-org/flaky_docker",
        "succeeded",
        retry=True,
        emails=2,
    ),
)


@dataclass
class Inbox:
    """What the demo notification workers received, per workflow id (thread-safe)."""

    emails: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    chats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_email(self, payload: dict[str, Any]) -> None:
        with self.lock:
            self.emails[_workflow_of(payload.get("prefix"))].append(payload)

    def add_chat(self, payload: dict[str, Any]) -> None:
        with self.lock:
            self.chats[_workflow_of(payload.get("prefix"))] += 1

    def emails_for(self, workflow_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.emails.get(workflow_id, ()))

    def chats_for(self, workflow_id: str) -> int:
        with self.lock:
            return self.chats.get(workflow_id, 0)


def _workflow_of(prefix: Any) -> str:
    found = _WORKFLOW_ID.search(str(prefix))
    return found.group(1) if found else "?"


def peer_queues(settings: Settings) -> list[str]:
    """The queues the demo workers consume: builder, deployers, notifications."""
    return [
        settings.builder_queue,
        settings.deployer_queue,
        settings.deploy_oa_queue,
        settings.hipchat_queue,
        settings.email_queue,
    ]


def register_demo_workers(
    app: Celery,
    settings: Settings,
    inbox: Inbox,
    step_seconds: tuple[float, float] = STEP_SECONDS,
) -> None:
    """The demo builder, deployer and notification tasks, on `app` (never shared).

    The builder fails a `broken` repository, never answers for a `silent` one (its
    step deadline fails the workflow) and fails a `flaky` one the first time only."""
    callback = {
        "orchestrate_task": settings.orchestrate_task,
        "orchestration_queue": settings.queue_name,
    }
    flaky_failed: set[str] = set()
    flaky_lock = threading.Lock()

    def fails(repo: str, workflow_id: str) -> bool:
        if "broken" in repo:
            return True
        if "flaky" not in repo:
            return False
        with flaky_lock:
            first = workflow_id not in flaky_failed
            flaky_failed.add(workflow_id)
        return first

    def work(role: str, request: dict[str, Any]) -> None:
        step = request.get("current_step")
        repo = request.get("deployment_repo") or "?"
        if role == "builder" and "silent" in repo:
            return  # a builder that died mid-build: only the deadline notices
        time.sleep(random.uniform(*step_seconds))
        reply = dict(request)
        if role == "builder":
            # What a real builder reads from the deployment repo's configuration.
            reply["etcd_token"] = reply.get("etcd_token") or DEPLOY_CLUSTER
            reply["notifications_config"] = (
                reply.get("notifications_config") or NOTIFICATIONS_CONFIG
            )
            if fails(repo, str(request.get("id"))):
                step_failed(
                    app,
                    reply,
                    f"The {step} of {repo} failed on the demo builder",
                    "docker build exited with status 1",
                    hipchat_task=settings.hipchat_task,
                    hipchat_queue=settings.hipchat_queue,
                    **callback,
                )
                return
        step_completed(app, reply, f"Demo {role} finished the {step} of {repo}", **callback)

    @app.task(name=settings.builder_task, shared=False)
    def build(request: dict[str, Any]) -> None:
        work("builder", request)

    @app.task(name=settings.deployer_task, shared=False)
    def deploy(request: dict[str, Any]) -> None:
        work("deployer", request)

    @app.task(name=settings.deploy_oa_task, shared=False)
    def deploy_oa(request: dict[str, Any]) -> None:
        work("deployer", request)

    @app.task(name=settings.hipchat_task, shared=False)
    def hipchat(payload: dict[str, Any]) -> None:
        inbox.add_chat(payload)

    @app.task(name=settings.email_task, shared=False)
    def email(payload: dict[str, Any]) -> None:
        inbox.add_email(payload)


def seeded_emulator(client_secret: str) -> ManagerEmulator:
    """A started Manager emulator with one exchange, its builder and deployer, two clusters."""
    emulator = ManagerEmulator(client_id="orchestrator", client_secret=client_secret).start()
    emulator.add_exchange(EXCHANGE_ID, name="demo")
    emulator.add_module(EXCHANGE_ID, "builder", hostname="demo-builder")
    emulator.add_module(EXCHANGE_ID, "deployer", hostname="demo-deployer")
    emulator.add_cluster(BUILD_CLUSTER, EXCHANGE_ID, allow_docker_builds=True)
    emulator.add_cluster(DEPLOY_CLUSTER, EXCHANGE_ID)
    return emulator


def demo_settings(
    emulator: ManagerEmulator, client_secret: str, broker_url: str, prefix: str, lock_dir: str
) -> Settings:
    """The orchestrator's settings for the demo; `prefix` makes every queue name unique."""
    return Settings(
        exchange_id=EXCHANGE_ID,
        broker_id="1",
        manager_url=emulator.url,
        oauth_login_url=emulator.token_url,
        oauth_client_id="orchestrator",
        oauth_client_secret=client_secret,
        celery_broker_url=broker_url,
        queue_name=f"{prefix}workflow_orchestration",
        builder_queue=f"{prefix}builder",
        deployer_queue=f"{prefix}deployer",
        deploy_oa_queue=f"{prefix}deploy_oa",
        hipchat_queue=f"{prefix}notifications_hipchat",
        email_queue=f"{prefix}notifications_email",
        hostname=f"demo-orchestrator-{uuid.uuid4().hex[:6]}",
        lock_dir=lock_dir,
        manager_read_timeout=5.0,
        out_of_order_retry_seconds=0.1,
        retry_backoff_seconds=0.2,
        retry_backoff_max=2.0,
        step_timeouts=(("build", BUILD_DEADLINE_SECONDS),),
    )


# -- workers ----------------------------------------------------------------------------


@contextmanager
def embedded_worker(
    app: Celery, *, hostname: str, concurrency: int, heartbeat: bool
) -> Iterator[Any]:
    """One Celery worker (threads pool) in a thread of this process; warm stop on exit.

    Only one may run per process: kombu's event-loop hub is a process global.
    `heartbeat` (AMQP only) wakes the event loop twice a second so a stop is noticed.
    """
    from celery.worker import state as worker_state

    # The pool's threads look tasks up on the default app, as `celery worker` arranges.
    app.set_current()
    app.set_default()
    started = threading.Event()
    worker = app.WorkController(
        hostname=hostname,
        pool="threads",
        concurrency=concurrency,
        loglevel="INFO",
        ready_callback=lambda *_: started.set(),
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=not heartbeat,
        heartbeat_interval=0.5,
    )
    thread = threading.Thread(target=worker.start, name=f"worker-{hostname}", daemon=True)
    thread.start()
    while not started.wait(0.1):
        if not thread.is_alive():
            raise DemoError("the demo worker stopped while starting (see the log)")
    try:
        yield worker
    finally:
        worker_state.should_stop = 0  # a warm shutdown, noticed by the consumer loop...
        if not heartbeat:
            # ...at its next wake-up: without heartbeats, a synchronous loop only wakes
            # on a message (or every 2 s), so send it the shutdown command.
            app.control.shutdown(destination=[worker.hostname])
        thread.join(15)
        worker_state.should_stop = None


class OrchestratorProcess:
    """`celery -A workflow_orchestrator worker` as a child process, configured by env."""

    def __init__(self, settings: Settings, log_path: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OrchestratorProcess:
        env = {**os.environ, **self.settings.to_env()}
        spec = importlib.util.find_spec("celeryconfig")
        if spec is None or not spec.origin:
            raise DemoError("cannot find the celeryconfig module the worker loads")
        root = str(Path(spec.origin).resolve().parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workflow_orchestrator",
            "worker",
            "-P",
            "threads",
            "-c",
            "4",
            "-Q",
            self.settings.queue_name,
            "-n",
            f"{self.settings.hostname}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


class MemoryBrokerTTL:
    """RabbitMQ's per-queue TTL and dead-lettering for `memory://`, which ignores both:
    a message in a deadline's wait queue goes back to the orchestration queue when its
    time is up, as RabbitMQ does it, so the demo's step deadlines fire on memory:// too.
    Demo only: it reads kombu's in-process queues (`_get`/`_put`) directly."""

    def __init__(self, settings: Settings) -> None:
        self.target = settings.queue_name
        self.waits = {
            wait_queue(settings.queue_name, seconds).name: seconds
            for seconds in wait_lengths(settings.schedule_poll_seconds)
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-ttl", daemon=True)

    def start(self) -> MemoryBrokerTTL:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        from queue import Empty

        held: list[tuple[float, Any]] = []
        with Connection("memory://localhost//") as conn:
            channel = conn.default_channel
            while not self._stop.wait(0.05):
                now = time.monotonic()
                for name, seconds in self.waits.items():
                    while True:
                        try:
                            held.append((now + seconds, channel._get(name)))
                        except Empty:
                            break
                for _, payload in [h for h in held if h[0] <= now]:
                    channel._put(self.target, payload)
                held = [h for h in held if h[0] > now]


def _memory_app(settings: Settings) -> Celery:
    """An orchestrator app on the in-process broker that consumes every demo queue too."""
    app = create_app(settings)
    app.conf.update(
        broker_transport_options={"polling_interval": 0.01},
        task_queues=[
            orchestration_queue(settings.queue_name),
            *(plain_queue(q) for q in peer_queues(settings)),
        ],
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def _reachable(broker_url: str) -> None:
    try:
        with Connection(broker_url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot use it"
        raise DemoError(
            f"cannot reach the broker at {redact_url(broker_url)}: {exc or type(exc).__name__}; "
            "is it running? (without --broker the demo needs no broker at all)"
        ) from None


def _delete_queues(broker_url: str, settings: Settings) -> None:
    """Remove the demo's uniquely named queues and exchanges from a shared broker."""
    names = [
        settings.queue_name,
        settings.error_queue_name,
        *peer_queues(settings),
        *wait_queue_names(settings.queue_name, settings.schedule_poll_seconds),
    ]
    try:
        with Connection(broker_url, connect_timeout=3) as conn:
            channel = conn.channel()
            for name in names:
                for method in ("queue_delete", "exchange_delete"):
                    try:
                        getattr(channel, method)(name)
                    except Exception:  # noqa: BLE001 - best effort; an error closes the channel
                        channel = conn.channel()
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).warning("could not delete the demo queues", exc_info=True)


def _wait_registered(
    emulator: ManagerEmulator, process: OrchestratorProcess, hostname: str, log: str
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(m.get("hostname") == hostname for m in emulator.modules(EXCHANGE_ID)):
            return
        if not process.alive():
            tail = Path(log).read_text(errors="replace").strip().splitlines()[-3:]
            raise DemoError("the orchestrator process exited: " + " | ".join(tail))
        time.sleep(0.1)
    raise DemoError(f"the orchestrator process did not start within 30 s (log: {log})")


@dataclass
class DemoSystem:
    """What `run_demo` runs the workflows on, and how it describes it."""

    app: Celery
    settings: Settings
    broker: str
    orchestrator: str
    heartbeat: bool
    ready: Any = None  # called once the header is shown: waits for the orchestrator


def in_process_system(
    stack: ExitStack, emulator: ManagerEmulator, secret: str, locks: str
) -> DemoSystem:
    """memory://: the orchestrator's own app runs the demo workers too, in one worker."""
    settings = demo_settings(emulator, secret, "memory://localhost//", "", locks)
    app = _memory_app(settings)
    stack.callback(MemoryBrokerTTL(settings).start().stop)
    return DemoSystem(
        app,
        settings,
        "memory:// (in this process)",
        "one threads-pool worker in this process, consuming every queue",
        heartbeat=False,
    )


def broker_system(
    stack: ExitStack, emulator: ManagerEmulator, secret: str, locks: str, broker: str, log: str
) -> DemoSystem:
    """A real broker: the orchestrator as its own worker process, demo workers here."""
    _reachable(broker)
    prefix = f"wo_demo_{uuid.uuid4().hex[:8]}_"
    settings = demo_settings(emulator, secret, broker, prefix, locks)
    stack.callback(_delete_queues, broker, settings)
    orchestrator = OrchestratorProcess(settings, log).start()
    stack.callback(orchestrator.stop)
    app = worker_app(
        "workflow-orchestrator-demo",
        broker,
        queues=peer_queues(settings),
        orchestration_queue=settings.queue_name,
        orchestrate_task=settings.orchestrate_task,
    )
    pid = orchestrator.process.pid if orchestrator.process else "?"
    return DemoSystem(
        app,
        settings,
        redact_url(broker),
        f"`celery -A workflow_orchestrator worker` process {pid}, queues prefixed {prefix}",
        heartbeat=True,
        ready=lambda: _wait_registered(emulator, orchestrator, settings.hostname, log),
    )
