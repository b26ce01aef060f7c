"""An app built for a broker uses that broker, whatever CELERY_BROKER_URL says: Celery
itself prefers that variable over an app's own configuration, and a user exports it for
the worker. Here it points at a decoy virtual host, which must stay untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection

from tests.services import Vhost, rabbitmqctl
from tests.support import wait_for
from workflow_orchestrator.factory import create_app
from workflow_orchestrator.queues import plain_queue
from workflow_orchestrator.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def queues_on(vhost: Vhost) -> list[str]:
    out = rabbitmqctl("list_queues", "-q", "-p", vhost.name, "name")
    return [line.strip() for line in out.splitlines() if line.strip() and line.strip() != "name"]


def test_the_demo_never_reaches_an_exported_broker(
    extra_vhost: Callable[..., Vhost], tmp_path: Path
) -> None:
    decoy = extra_vhost("decoy")
    env = {**os.environ, "CELERY_BROKER_URL": decoy.url, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "workflow_orchestrator.cli", "demo", "--log", "demo.log"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "All 5 workflows ended as expected" in result.stdout
    assert queues_on(decoy) == []
    assert decoy.name not in (tmp_path / "demo.log").read_text(errors="replace")


def test_an_orchestrator_app_publishes_on_its_own_broker(
    broker_url: str, extra_vhost: Callable[..., Vhost], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy = extra_vhost("decoy")
    monkeypatch.setenv("CELERY_BROKER_URL", decoy.url)
    queue = f"wo_choice_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        exchange_id="1",
        broker_id="1",
        manager_url="http://127.0.0.1:9",
        oauth_login_url="http://127.0.0.1:9/oauth/token",
        oauth_client_id="orchestrator",
        oauth_client_secret="unused",
        celery_broker_url=broker_url,
        queue_name=queue,
    )
    app = create_app(settings)
    app.send_task(settings.orchestrate_task, args=[{"id": "x"}], queue=queue)
    with Connection(broker_url) as conn:
        bound = plain_queue(queue)(conn.default_channel)
        message = wait_for(lambda: bound.get(no_ack=True), 20, "the message on the app's broker")
        assert message.headers["task"] == settings.orchestrate_task
        bound.delete()
    assert queues_on(decoy) == []
