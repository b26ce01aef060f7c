"""A Python worker on another region's broker reports back and notifies on the broker
the request's routing fields name, found through the Manager as the orchestrator finds
brokers (local RabbitMQ virtual hosts stand in for the two brokers)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection

from tests.conftest import CLIENT_ID, CLIENT_SECRET
from tests.services import Vhost
from tests.support import wait_for
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.manager import ManagerClient, TokenSource
from workflow_orchestrator.queues import plain_queue
from workflow_orchestrator.worker_api import (
    publish_success_notification,
    step_completed,
    worker_app,
)

WID = "5b1d7f1e-8a4e-4c1e-9a55-0c1b2c3d4e5f"


def take(url: str, queue: str) -> Any:
    with Connection(url) as conn:
        bound = plain_queue(queue)(conn.default_channel)
        bound.declare()
        return wait_for(lambda: bound.get(no_ack=True), 20, f"a message on {queue}")


def empty(url: str, queue: str) -> bool:
    with Connection(url) as conn:
        bound = plain_queue(queue)(conn.default_channel)
        bound.declare()
        return bound.get(no_ack=True) is None


def test_reports_and_chats_go_to_the_broker_the_request_names(
    extra_vhost: Callable[..., Vhost], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    home, region = extra_vhost("orchestrator"), extra_vhost("region2")
    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        emulator.add_broker(1, name="orchestrator's broker")
        emulator.add_broker_connection(1, home.host, home.port, home.user, home.password, home.name)
        tokens = TokenSource(emulator.token_url, CLIENT_ID, CLIENT_SECRET)
        with ManagerClient(emulator.url, tokens) as manager:
            app = worker_app("region2-builder", region.url, broker_id="2", manager=manager)
            request = {
                "id": WID,
                "current_step": "build",
                "event_log": [],
                "orchestration_queue_name": "wo_routing_orchestration",
                "workflow_orchestration_broker_id": "1",
                "notifications_broker_id": "1",
            }
            updated = publish_success_notification(
                app, request, "Build started", hipchat_queue="wo_routing_hipchat"
            )
            step_completed(app, updated, "Build finished")

            report = take(home.url, "wo_routing_orchestration")
            (payload,), _, _ = json.loads(report.body)
            assert report.headers["task"] == "workflow_orchestrator.orchestrate"
            assert payload["event_log"][-2:] == [
                f"[OA][{WID}] Build started",
                f"[OA][{WID}] Build finished",
            ]
            chat = take(home.url, "wo_routing_hipchat")
            assert json.loads(chat.body)[0][0]["message"] == "Build started"
            assert empty(region.url, "wo_routing_orchestration")  # not on the worker's own

            # a request naming the worker's own broker stays on it
            step_completed(app, {**request, "workflow_orchestration_broker_id": "2"})
            assert take(region.url, "wo_routing_orchestration").headers["task"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert home.password not in logged and region.password not in logged


def test_a_plain_celery_worker_routes_by_the_environment(
    extra_vhost: Callable[..., Vhost], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`step_completed(request)` inside a worker of any Celery app: BROKER_ID and the
    Manager settings in its environment (as the orchestrator reads them) route it."""
    from celery import Celery, current_app

    home, region = extra_vhost("orchestrator"), extra_vhost("region2")
    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        emulator.add_broker(1, name="orchestrator's broker")
        emulator.add_broker_connection(1, home.host, home.port, home.user, home.password, home.name)
        for name, value in {
            "BROKER_ID": "2",
            "MANAGER_URL": emulator.url,
            "OAUTH_LOGIN_URL": emulator.token_url,
            "OAUTH_CLIENT_ID": CLIENT_ID,
            "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
        }.items():
            monkeypatch.setenv(name, value)
        app = Celery("a-plain-builder", broker=region.url, set_as_current=False)
        app.conf.broker_url = app.conf.broker_write_url = region.url
        previous = current_app._get_current_object()
        app.set_current()
        try:
            request = {
                "id": WID,
                "current_step": "build",
                "orchestration_queue_name": "wo_env_routing_orchestration",
                "workflow_orchestration_broker_id": "1",
            }
            step_completed(request, "Build finished")
            report = take(home.url, "wo_env_routing_orchestration")
            assert json.loads(report.body)[0][0]["event_log"] == [f"[OA][{WID}] Build finished"]
            assert empty(region.url, "wo_env_routing_orchestration")
        finally:
            previous.set_current()
