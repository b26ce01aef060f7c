"""Running the orchestrator the way operators do: `celery -A workflow_orchestrator worker`
in its own process, configured only through the environment.

(Two Celery workers must never share a process: kombu's event-loop hub is a process
global, and two consumers polling it corrupt each other's AMQP frames.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class WorkerProcess:
    """One `celery -A <app> worker` process; `env` holds its settings."""

    app_module = "tests.peers"

    def __init__(
        self,
        env: dict[str, str],
        *,
        pool: str = "threads",
        concurrency: int = 4,
        name: str = "worker",
        log_level: str = "INFO",
        queues: list[str] | None = None,
        cwd: Path = REPO,
        unset: tuple[str, ...] = (),
    ) -> None:
        self.env = env
        self.cwd = cwd
        self.unset = unset
        self.pool = pool
        self.concurrency = concurrency
        self.name = name
        self.log_level = log_level
        self.queues = queues
        self.log_path = Path(tempfile.mkstemp(prefix=f"wo-{name}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app_module,
            "worker",
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "-n",
            f"{self.name}-{os.getpid()}-{id(self)}@test",
            "--without-mingle",
            "--without-gossip",
            "-l",
            self.log_level,
        ]
        if self.queues:
            command += ["-Q", ",".join(self.queues)]
        return command

    def start(self) -> WorkerProcess:
        self.starts += 1
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
        for name in self.unset:  # settings the worker must find elsewhere (a .env)
            env.pop(name, None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill -9 reaches the children
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and every child (prefork), as a crash would."""
        if self.process is not None and self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class OrchestratorProcess(WorkerProcess):
    """The orchestrator as the Procfile runs it, consuming its own queue only."""

    app_module = "workflow_orchestrator"

    def __init__(self, env: dict[str, str], *, name: str = "orchestrator", **options: Any) -> None:
        options.setdefault("queues", [env.get("QUEUE_NAME", "workflow_orchestration")])
        super().__init__(env, name=name, **options)


def test_queue_names(settings: Any) -> list[str]:
    """Every queue (and same-named exchange) a system under test declares."""
    from workflow_orchestrator.queues import wait_queue_names

    return [
        *wait_queue_names(settings.queue_name, settings.schedule_poll_seconds),
        settings.queue_name,
        settings.error_queue_name,
        settings.builder_queue,
        settings.deployer_queue,
        settings.deploy_oa_queue,
        settings.hipchat_queue,
        settings.email_queue,
    ]


def delete_test_queues(broker_url: str, settings: Any) -> None:
    """Best-effort removal of a test's queues and exchanges, so runs leave nothing behind."""
    from kombu import Connection

    with Connection(broker_url) as conn:
        channel = conn.channel()
        for name in test_queue_names(settings):
            for method in ("queue_delete", "exchange_delete"):
                try:
                    getattr(channel, method)(name)
                except Exception:  # noqa: BLE001 - a missing one closes the channel
                    channel = conn.channel()


def wait_registered(emulator: Any, process: WorkerProcess, hostname: str) -> None:
    """Wait until the orchestrator process registered itself with the Manager."""
    wait_for(
        lambda: (
            any(m["hostname"] == hostname for m in emulator.modules("1")) or not process.alive()
        ),
        30,
        "the orchestrator worker to start and register",
    )
    assert process.alive(), process.log()


def in_process_worker(app: Any, hostname: str, concurrency: int = 4) -> Any:
    """One in-process worker (threads pool) that stops within a second when left.

    The heartbeat timer wakes the event loop; without it a stop is noticed only after
    up to 10 s. A unique hostname keeps its pidbox queue apart from other workers'.
    Never start two in one process (kombu's event-loop hub is a process global).
    """
    from celery.contrib.testing.worker import start_worker

    return start_worker(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        hostname=hostname,
        without_heartbeat=False,
        heartbeat_interval=0.5,
        shutdown_timeout=15,
    )


def build_registry(emulator: Any) -> None:
    """What one `build` needs in the Manager: exchange 1 with a builder module and a
    docker-build cluster."""
    emulator.add_exchange("1", name="local")
    emulator.add_module("1", "builder", hostname="builder-1")
    emulator.add_cluster("build-cluster-1", 1, allow_docker_builds=True)


def system_settings(
    emulator: Any, *, secret: str, prefix: str, broker_url: str, **changes: Any
) -> Any:
    """Settings of an orchestrator under test: the emulator's URLs, queues named
    `{prefix}_{name}` so runs never share one, its own lock directory and fast retries;
    `changes` override any of it."""
    from workflow_orchestrator.settings import Settings

    def q(name: str) -> str:
        return f"{prefix}_{name}"

    options: dict[str, Any] = {
        "exchange_id": "1",
        "broker_id": "1",
        "manager_url": emulator.url,
        "oauth_login_url": emulator.token_url,
        "oauth_client_id": "orchestrator",
        "oauth_client_secret": secret,
        "celery_broker_url": broker_url,
        "queue_name": q("orchestration"),
        "builder_queue": q("builder"),
        "deployer_queue": q("deployer"),
        "deploy_oa_queue": q("deploy_oa"),
        "hipchat_queue": q("hipchat"),
        "email_queue": q("email"),
        "lock_dir": tempfile.mkdtemp(prefix="wo-locks-"),
        "out_of_order_retry_seconds": 0.2,
        "retry_backoff_seconds": 0.2,
        "retry_backoff_max": 2.0,
        **changes,
    }
    return Settings(**options)


class WorkflowsView:
    """What every whole-system fixture offers on top of its `emulator`: workflows to
    start and their stored state (a mixin for the systems' dataclasses)."""

    emulator: Any

    def new_workflow(self, milestones: list[str], **fields: Any) -> str:
        return self.emulator.add_workflow(
            {
                "deployment_repo": "Test-Org/app_docker",
                "deployment_repo_git_ref": "master",
                "source_repo": "Test-Org/app",
                "source_repo_git_ref": "abc123",
                "milestones": milestones,
                **fields,
            }
        )

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        stored = self.emulator.get_workflow(workflow_id)
        assert stored is not None
        return stored

    def wait_completed(self, workflow_id: str, timeout: float = 30.0) -> dict[str, Any]:
        wait_for(
            lambda: self.workflow(workflow_id).get("workflow_completed"),
            timeout,
            f"workflow {workflow_id} to complete",
        )
        return self.workflow(workflow_id)


def age_lock_file(path: str, seconds: float) -> None:
    """Make a lock file look last written `seconds` ago: its memories' times (when it
    holds memories) and its modification time, as a file unused that long is."""
    then = time.time() - seconds
    content = Path(path).read_text()
    if content.startswith("{"):
        memories = json.JSONDecoder().raw_decode(content)[0]
        Path(path).write_text(json.dumps({k: [v[0], then] for k, v in memories.items()}))
    os.utime(path, (then, then))
