"""Settings are read once, from the environment and the working directory's `.env`:
what a `.env` says is what the worker consumes, registers, connects to and tells
workers (a worker started the documented way, in that directory)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from tests.services import Vhost
from tests.support import OrchestratorProcess, build_registry, wait_for
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.queues import plain_queue
from workflow_orchestrator.settings import SETTINGS_DOC

SECRET = f"secret-{uuid.uuid4().hex}"


@pytest.fixture
def vhost_url(extra_vhost: Callable[..., Vhost]) -> str:
    """A broker of the test's own: a virtual host with a user and password of its own
    (removed after the test)."""
    return extra_vhost("dotenv").url


def test_a_dotenv_decides_queue_task_and_broker(tmp_path: Path, vhost_url: str) -> None:
    queue, task = f"team_a_{uuid.uuid4().hex[:6]}", "team_a.orchestrate"
    builder = f"{queue}_builder"
    with ManagerEmulator(client_id="orchestrator", client_secret=SECRET) as emulator:
        build_registry(emulator)
        workflow = emulator.add_workflow({"deployment_repo": "Org/app", "milestones": ["build"]})
        dotenv = {
            "EXCHANGE_ID": "1",
            "BROKER_ID": "1",
            "MANAGER_URL": emulator.url,
            "OAUTH_LOGIN_URL": emulator.token_url,
            "OAUTH_CLIENT_ID": "orchestrator",
            "OAUTH_CLIENT_SECRET": SECRET,
            "QUEUE_NAME": queue,
            "ORCHESTRATE_TASK": task,
            "CELERY_BROKER_URL": vhost_url,
            "BUILDER_QUEUE": builder,
            "LOCK_DIR": str(tmp_path / "locks"),
            "HOSTNAME": f"dotenv-{uuid.uuid4().hex[:6]}",
        }
        (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
        process = OrchestratorProcess(
            {}, queues=[queue], cwd=tmp_path, unset=tuple(SETTINGS_DOC)
        ).start()
        try:
            wait_for(
                lambda: emulator.modules("1") or not process.alive(), 60, "the worker to start"
            )
            assert process.alive(), process.log()
            # a vanilla caller on the .env's broker, by the .env's task name and queue
            caller = Celery("dotenv-caller", broker=vhost_url, set_as_current=False)
            caller.send_task(task, args=[{"id": workflow}], queue=queue)
            with Connection(vhost_url) as conn:
                inbox = plain_queue(builder)(conn.default_channel)
                inbox.declare()
                message = wait_for(lambda: inbox.get(no_ack=True), 60, "the builder request")
            (request,), _, _ = message.decode()
            assert request["orchestration_queue_name"] == queue
            assert request["current_step"] == "build"
            assert message.headers["task"] == "builder.build"
        finally:
            process.stop()
