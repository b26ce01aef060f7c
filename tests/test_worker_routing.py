"""A Python worker on another region's broker reports back and notifies on the broker
the request's routing fields name, found through the Manager as the orchestrator finds
brokers (local RabbitMQ virtual hosts stand in for the two brokers)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
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
    ReportNotSent,
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


def test_a_report_no_broker_took_sends_the_request_back_to_its_queue(
    extra_vhost: Callable[..., Vhost],
) -> None:
    """Celery acks a failed task's message (acks late or not): a worker whose report
    could not be sent would lose the step's outcome for good. The report's broker
    refuses the worker for a while; the request comes back and its report gets through
    once the broker lets the worker in again."""
    from tests.services import rabbitmqctl, token
    from tests.support import in_process_worker

    logged: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("workflow_orchestrator").addHandler(handler)
    try:
        home, region = extra_vhost("orchestrator"), extra_vhost("region2")
        queue, orchestration = f"wo_report_builder_{token()}", f"wo_report_orch_{token()}"
        attempts: list[str] = []
        with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
            emulator.add_broker(1, name="orchestrator's broker")
            emulator.add_broker_connection(
                1, home.host, home.port, home.user, home.password, home.name
            )
            tokens = TokenSource(emulator.token_url, CLIENT_ID, CLIENT_SECRET)
            with ManagerClient(emulator.url, tokens) as manager:
                app = worker_app(
                    "region2-builder",
                    region.url,
                    queues=[queue],
                    broker_id="2",
                    manager=manager,
                    report_patience=1.0,  # tried at 0 and 0.5 s, then the request goes back
                )

                @app.task(name="builder.build", bind=True, shared=False)
                def build(self: Any, request: dict[str, Any]) -> None:
                    attempts.append(self.request.id)
                    step_completed(app, request, "Build finished")

                rabbitmqctl("clear_permissions", "-p", home.name, home.user)  # refused
                request = {
                    "id": WID,
                    "current_step": "build",
                    "orchestration_queue_name": orchestration,
                    "workflow_orchestration_broker_id": "1",
                }
                with in_process_worker(app, f"report-{token()}@test", concurrency=1):
                    app.send_task("builder.build", args=[request], queue=queue)
                    wait_for(lambda: len(attempts) >= 2, 60, "the request to come back")
                    rabbitmqctl("set_permissions", "-p", home.name, home.user, ".*", ".*", ".*")
                    report = take(home.url, orchestration)
        (payload,), _, _ = json.loads(report.body)
        assert payload["event_log"] == [f"[OA][{WID}] Build finished"]
        assert len(set(attempts)) == 1  # the same message each time, not a copy
    finally:
        logging.getLogger("workflow_orchestrator").removeHandler(handler)
    text = "\n".join(logged)
    assert f"the completed report of workflow {WID} step build was not sent, trying " in text
    assert f"the completed report of workflow {WID} step build was not sent: " in text
    assert home.password not in text and region.password not in text


def test_a_report_the_own_broker_cannot_take_raises_report_not_sent() -> None:
    """Outside a task the same failure is an exception naming what was not sent."""
    from tests.services import free_port

    password = "never-shown-1234"
    url = f"amqp://builder:{password}@127.0.0.1:{free_port()}//"
    app = worker_app("no-broker", url, report_patience=0)
    with pytest.raises(ReportNotSent) as raised:
        step_completed(app, {"id": WID, "current_step": "deploy"})
    assert raised.value.requeue
    text = str(raised.value)
    assert f"the completed report of workflow {WID} step deploy was not sent" in text
    assert "this worker's broker failed: " in text
    assert password not in text


PREFORK_BUILDER = """
import os
import pathlib

from workflow_orchestrator.worker_api import step_completed, worker_app

app = worker_app(
    "prefork-builder", os.environ["T_BROKER_URL"], queues=[os.environ["T_QUEUE"]],
    report_patience=0.5,
)


@app.task(name="builder.build", bind=True, shared=False)
def build(self, request):
    with open(os.environ["T_ATTEMPTS"], "a") as attempts:
        attempts.write(self.request.id + "\\n")
    step_completed(request, "Build finished")
"""


def test_a_prefork_worker_gets_its_request_back_too(
    extra_vhost: Callable[..., Vhost], tmp_path: Path
) -> None:
    """A prefork child hands the task's exception to its parent by pickle: the
    parent must still see a requeue, not an error (Celery would ack)."""
    from celery import Celery

    from tests.services import rabbitmqctl, token
    from tests.support import WorkerProcess

    home, region = extra_vhost("orchestrator"), extra_vhost("region2")
    queue, orchestration = f"wo_report_builder_{token()}", f"wo_report_orch_{token()}"
    attempts = tmp_path / "attempts"
    (tmp_path / "preforkbuilder.py").write_text(PREFORK_BUILDER)

    class Builder(WorkerProcess):
        app_module = "preforkbuilder"

    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        emulator.add_broker(1, name="orchestrator's broker")
        emulator.add_broker_connection(1, home.host, home.port, home.user, home.password, home.name)
        env = {
            "T_BROKER_URL": region.url,
            "T_QUEUE": queue,
            "T_ATTEMPTS": str(attempts),
            "BROKER_ID": "2",  # routing from the environment, as a plain worker gets it
            "MANAGER_URL": emulator.url,
            "OAUTH_LOGIN_URL": emulator.token_url,
            "OAUTH_CLIENT_ID": CLIENT_ID,
            "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
        }
        worker = Builder(env, pool="prefork", concurrency=1, name="prefork-builder", cwd=tmp_path)
        rabbitmqctl("clear_permissions", "-p", home.name, home.user)  # refused
        worker.start()
        try:
            client = Celery("prefork-client", broker=region.url, set_as_current=False)
            request = {
                "id": WID,
                "current_step": "build",
                "orchestration_queue_name": orchestration,
                "workflow_orchestration_broker_id": "1",
            }
            client.send_task("builder.build", args=[request], queue=queue)

            def tries() -> list[str]:
                return attempts.read_text().split() if attempts.exists() else []

            wait_for(lambda: len(tries()) >= 2 or not worker.alive(), 60, "the request back")
            assert worker.alive(), worker.log()
            rabbitmqctl("set_permissions", "-p", home.name, home.user, ".*", ".*", ".*")
            report = take(home.url, orchestration)
        finally:
            worker.stop()
    assert json.loads(report.body)[0][0]["event_log"] == [f"[OA][{WID}] Build finished"]
    assert len(set(tries())) == 1  # the same message each time
    log = worker.log()
    assert "was not sent" in log and "reject requeue=True" in log
    assert home.password not in log and region.password not in log
