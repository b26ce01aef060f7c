"""The worker-side callbacks against a real RabbitMQ, read back as raw AMQP messages.

Every test uses its own uniquely named queues (passed through the request's
`orchestration_queue_name` and the keyword parameters), declares the orchestration
queue exactly as the orchestrator does, and deletes queues and exchanges afterwards,
so it never touches a real orchestrator's traffic. The last tests run the example
builder worker in-process and watch its callbacks arrive.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery, current_app
from celery.contrib.testing.worker import start_worker
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from tests.support import wait_for
from workflow_orchestrator.queues import orchestration_queue
from workflow_orchestrator.worker_api import (
    HIPCHAT_TASK,
    ORCHESTRATE_TASK,
    execute_workflow,
    publish_failure_notification,
    publish_success_notification,
    register,
    save,
    step_completed,
    step_failed,
    worker_app,
)

#: The contract's example payloads, copied into the repo.
EXAMPLE_DIRS = [Path(__file__).resolve().parents[1] / "docs" / "examples"]

WID = "5b1d7f1e-8a4e-4c1e-9a55-0c1b2c3d4e5f"
PREFIX = f"[OA][{WID}]"


def load_example(name: str) -> dict[str, Any]:
    for folder in EXAMPLE_DIRS:
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    pytest.fail(f"example payload {name} not found in any of {EXAMPLE_DIRS}")


def unique(kind: str) -> str:
    return f"wo_test_{kind}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(broker_url: str) -> Iterator[Connection]:
    with Connection(broker_url, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1)
        yield connection


@pytest.fixture
def declare(conn: Connection) -> Iterator[Callable[[Queue], Queue]]:
    """Declare test queues (bound to `conn`); delete them and their exchanges afterwards."""
    declared: list[Queue] = []

    def _declare(queue: Queue) -> Queue:
        bound = queue(conn.default_channel)
        bound.declare()
        declared.append(bound)
        return bound

    yield _declare
    channel = conn.default_channel
    for queue in declared:
        queue(channel).delete()
        queue.exchange(channel).delete()


@pytest.fixture
def orch_queue(declare: Callable[[Queue], Queue]) -> Queue:
    """A unique orchestration queue, declared with the orchestrator's own arguments."""
    return declare(orchestration_queue(unique("orch")))


@pytest.fixture
def chat_queue(declare: Callable[[Queue], Queue]) -> Queue:
    name = unique("chat")
    return declare(Queue(name, Exchange(name, type="direct"), routing_key=name))


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    """A peer-worker app that does not know the test queues (the usual case)."""
    previous = current_app._get_current_object()
    peer = worker_app("wo-test-peer", broker_url)
    yield peer
    peer.close()
    previous.set_current()


@pytest.fixture
def request_(orch_queue: Queue) -> dict[str, Any]:
    """The builder request of the examples, answering to this test's orchestration queue."""
    req = load_example("builder-request.json")
    req["orchestration_queue_name"] = orch_queue.name
    return req


def receive(queue: Queue, timeout: float = 10.0) -> Message:
    """The next message on `queue`, waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        message = queue.get(no_ack=True)
        if message is not None:
            return message
        if time.monotonic() > deadline:
            pytest.fail(f"no message arrived on {queue.name} within {timeout} s")
        time.sleep(0.05)


def task_argument(message: Message, task: str, task_id: str) -> dict[str, Any]:
    """Check the Celery protocol-2 envelope and return the single positional argument."""
    headers = message.headers
    assert headers["lang"] == "py"
    assert headers["task"] == task
    assert headers["id"] == task_id
    assert message.properties["correlation_id"] == task_id
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2
    args, kwargs, _embed = message.decode()
    assert kwargs == {}
    assert len(args) == 1
    return args[0]


# --- step_completed -------------------------------------------------------------------


def test_step_completed_sends_request_back_with_event_line(
    app: Celery, request_: dict[str, Any], orch_queue: Queue
) -> None:
    original = copy.deepcopy(request_)

    task_id = step_completed(app, request_, "Build/Config request completed by builder-1")

    message = receive(orch_queue)
    payload = task_argument(message, ORCHESTRATE_TASK, task_id)
    assert request_ == original, "the caller's dict must not change"
    assert payload["event_log"] == [
        *original["event_log"],
        f"{PREFIX} Build/Config request completed by builder-1",
    ]
    assert payload["current_step"] == "build"
    assert payload["step_time"] == original["step_time"]
    assert payload["workflow_error"] is False
    assert payload["workflow_completed"] is False
    assert {k: v for k, v in payload.items() if k != "event_log"} == {
        k: v for k, v in original.items() if k != "event_log"
    }
    assert message.headers["argsrepr"] == f"workflow={WID} step=build event=completed"
    assert orch_queue.get(no_ack=True) is None, "exactly one message"


def test_step_completed_without_message_sends_request_unchanged(
    app: Celery, request_: dict[str, Any], orch_queue: Queue
) -> None:
    task_id = step_completed(app, request_)

    assert task_argument(receive(orch_queue), ORCHESTRATE_TASK, task_id) == request_


def test_step_completed_falls_back_to_configured_queue_and_custom_task(
    broker_url: str, declare: Callable[[Queue], Queue]
) -> None:
    """No `orchestration_queue_name` in the request: the keyword's queue is used."""
    queue = declare(orchestration_queue(unique("orch")))
    peer = worker_app("wo-test-peer", broker_url, orchestration_queue=queue.name)
    try:
        request = {"id": WID, "current_step": "deploy", "event_log": None}
        task_id = step_completed(
            peer,
            request,
            "deployed",
            orchestrate_task="custom.orchestrate",
            orchestration_queue=queue.name,
        )
    finally:
        peer.close()

    payload = task_argument(receive(queue), "custom.orchestrate", task_id)
    assert payload == {"id": WID, "current_step": "deploy", "event_log": [f"{PREFIX} deployed"]}
    assert request["event_log"] is None


# --- step_failed ----------------------------------------------------------------------


def test_step_failed_marks_failure_notifies_and_reports_back(
    app: Celery, request_: dict[str, Any], orch_queue: Queue, chat_queue: Queue
) -> None:
    rooms = ["OpenAperture-Workflow Events"]
    request_["notifications_config"] = {"hipchat": {"room_names": rooms}}
    original = copy.deepcopy(request_)

    task_id = step_failed(
        app,
        request_,
        "Build of Test-Org/app_docker failed",
        "docker build exited with status 1",
        hipchat_queue=chat_queue.name,
    )

    payload = task_argument(receive(orch_queue), ORCHESTRATE_TASK, task_id)
    assert request_ == original, "the caller's dict must not change"
    assert payload["workflow_error"] is True
    assert payload["workflow_completed"] is True
    assert payload["current_step"] == "build"
    assert payload["step_time"] == original["step_time"]
    assert payload["event_log"] == [  # the original's order: the reason, then the message
        *original["event_log"],
        f"{PREFIX} docker build exited with status 1",
        f"{PREFIX} Build of Test-Org/app_docker failed",
    ]

    chat = receive(chat_queue)
    note = task_argument(chat, HIPCHAT_TASK, chat.headers["id"])
    assert note == {
        "is_success": False,
        "prefix": PREFIX,
        "message": "Build of Test-Org/app_docker failed",
        "room_names": rooms,
        "notifications": {"hipchat_rooms": rooms},
    }
    assert chat.headers["argsrepr"] == f"workflow={WID} step=build event=notification"
    assert len(chat.headers["argsrepr"]) < 120


# --- notifications --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("publish", "is_success"),
    [(publish_success_notification, True), (publish_failure_notification, False)],
)
def test_chat_notifications(
    app: Celery,
    request_: dict[str, Any],
    chat_queue: Queue,
    publish: Callable[..., dict[str, Any]],
    is_success: bool,
) -> None:
    original = copy.deepcopy(request_)
    updated = publish(app, request_, "Build started", hipchat_queue=chat_queue.name)

    chat = receive(chat_queue)
    note = task_argument(chat, HIPCHAT_TASK, chat.headers["id"])
    assert note == {
        "is_success": is_success,
        "prefix": PREFIX,
        "message": "Build started",
        "room_names": None,
    }
    assert request_ == original, "the caller's dict must not change"
    assert updated["event_log"] == [*original["event_log"], f"{PREFIX} Build started"]
    assert {k: v for k, v in updated.items() if k != "event_log"} == {
        k: v for k, v in original.items() if k != "event_log"
    }

    updated["notifications_config"] = load_example("callback-step-completed.json")[
        "notifications_config"
    ]
    again = publish(app, updated, "again", hipchat_task="chat.post", hipchat_queue=chat_queue.name)
    chat = receive(chat_queue)
    note = task_argument(chat, "chat.post", chat.headers["id"])
    assert note["room_names"] == ["OpenAperture-Workflow Events"]
    assert note["notifications"] == {"hipchat_rooms": ["OpenAperture-Workflow Events"]}
    assert again["event_log"][-2:] == [f"{PREFIX} Build started", f"{PREFIX} again"]


# --- save and register ----------------------------------------------------------------


def test_save_puts_the_requests_workflow_fields(request_: dict[str, Any]) -> None:
    from tests.conftest import CLIENT_ID, CLIENT_SECRET
    from workflow_orchestrator.emulator import ManagerEmulator
    from workflow_orchestrator.manager import ManagerClient, TokenSource

    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        workflow_id = emulator.add_workflow({"milestones": ["build", "deploy"]})
        tokens = TokenSource(emulator.token_url, CLIENT_ID, CLIENT_SECRET)
        with ManagerClient(emulator.url, tokens) as manager:
            request = {**request_, "id": workflow_id, "workflow_id": workflow_id}
            request["event_log"] = ["[OA][x] Builder received the request"]
            save(manager, request)
        stored = emulator.get_workflow(workflow_id)
        assert stored["event_log"] == ["[OA][x] Builder received the request"]
        assert stored["current_step"] == request_["current_step"]
        (put,) = emulator.workflow_puts(workflow_id)
        assert "docker_build_etcd_token" not in put  # request fields are not persisted


def test_register_keeps_a_heartbeat_and_says_inactive_at_stop() -> None:
    from tests.conftest import CLIENT_ID, CLIENT_SECRET
    from workflow_orchestrator.emulator import ManagerEmulator
    from workflow_orchestrator.manager import ManagerClient, TokenSource

    key = "POST /messaging/exchanges/{id}/modules"
    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        emulator.add_exchange("2", name="remote")
        tokens = TokenSource(emulator.token_url, CLIENT_ID, CLIENT_SECRET)
        with ManagerClient(emulator.url, tokens) as manager:
            registration = register(
                manager,
                "2",
                "builder",
                hostname="py-builder",
                interval=0.2,
                workload=lambda: ["w-1"],
            )
            wait_for(lambda: emulator.counters().get(key, 0) >= 3, 20, "three heartbeats")
            (record,) = emulator.modules("2")
            assert (record["hostname"], record["type"], record["status"]) == (
                "py-builder",
                "builder",
                "active",
            )
            assert record["workload"] == ["w-1"]
            registration.stop()
        (record,) = emulator.modules("2")
        assert record["status"] == "inactive"


# --- execute_workflow -----------------------------------------------------------------


def test_execute_workflow_sends_start_message(app: Celery, orch_queue: Queue) -> None:
    task_id = execute_workflow(app, WID, queue=orch_queue.name)
    message = receive(orch_queue)
    assert task_argument(message, ORCHESTRATE_TASK, task_id) == {
        "id": WID,
        "workflow_id": WID,
        "force_build": False,
    }
    assert message.headers["argsrepr"] == f"workflow={WID} step=None event=start"

    task_id = execute_workflow(
        app,
        WID,
        force_build=True,
        build_messaging_exchange_id=3,
        deploy_messaging_exchange_id="7",
        queue=orch_queue.name,
    )
    assert task_argument(receive(orch_queue), ORCHESTRATE_TASK, task_id) == {
        "id": WID,
        "workflow_id": WID,
        "force_build": True,
        "build_messaging_exchange_id": 3,
        "deploy_messaging_exchange_id": "7",
    }


def test_execute_workflow_rejects_empty_id(app: Celery) -> None:
    with pytest.raises(ValueError):
        execute_workflow(app, "")


# --- worker_app -----------------------------------------------------------------------


def test_worker_app_settings(broker_url: str) -> None:
    peer = worker_app("wo-test-peer", broker_url, queues=["builder", "config"])
    conf = peer.conf
    assert conf.broker_url == broker_url
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.task_default_queue == "builder"

    queues = {q.name: q for q in conf.task_queues}
    assert list(queues) == ["builder", "config", "workflow_orchestration"]
    for name in ("builder", "config"):
        assert queues[name].durable
        assert queues[name].exchange.name == name
        assert queues[name].exchange.type == "direct"
        assert queues[name].routing_key == name
        assert not queues[name].queue_arguments
    # declared as a vanilla Celery caller declares it: no x-arguments
    assert not queues["workflow_orchestration"].queue_arguments
    assert queues["workflow_orchestration"].durable

    route = peer.amqp.router.route({}, ORCHESTRATE_TASK)
    assert route["queue"].name == "workflow_orchestration"

    custom = worker_app("p", broker_url, orchestration_queue="wo")
    (queue,) = custom.conf.task_queues
    assert (queue.name, queue.routing_key, queue.queue_arguments) == ("wo", "wo", None)


def test_worker_app_uses_its_broker_whatever_the_environment_says(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://elsewhere:5672//other")
    peer = worker_app("wo-test-peer", broker_url)
    with peer.connection_for_write() as write, peer.connection_for_read() as read:
        assert write.as_uri(include_password=True) == read.as_uri(include_password=True)
        assert "elsewhere" not in write.as_uri()
        assert write.hostname == urlsplit(broker_url).hostname


@pytest.fixture
def no_orchestrator_worker_hooks() -> Iterator[None]:
    """Give the process its current Celery app back after a peer worker ran."""
    previous = current_app._get_current_object()
    yield
    previous.set_current()
    previous.set_default()


@contextlib.contextmanager
def run_worker(app: Celery, **options: Any) -> Iterator[Any]:
    """An in-process worker (threads pool) that stops within a second when left.

    The heartbeat timer wakes the event loop twice a second; without it the loop only
    notices the stop request after up to 10 s. A unique node name keeps its exclusive
    pidbox queue apart from any other in-process worker's (`gen{pid}@host` otherwise).
    """
    with start_worker(
        app,
        pool="threads",
        perform_ping_check=False,
        shutdown_timeout=10,
        without_heartbeat=False,
        heartbeat_interval=0.5,
        hostname=f"{unique('worker')}@localhost",
        **options,
    ) as worker:
        yield worker


def test_worker_app_never_consumes_the_orchestration_queue(
    broker_url: str, no_orchestrator_worker_hooks: None, declare: Callable[[Queue], Queue]
) -> None:
    """A worker started without `-Q` consumes its own queues, not the orchestrator's."""
    orch = declare(orchestration_queue(unique("orch")))
    own = unique("own")
    peer = worker_app("wo-test-peer", broker_url, queues=[own], orchestration_queue=orch.name)
    declare(peer.amqp.queues[own])
    execute_workflow(peer, WID, queue=orch.name)
    try:
        with run_worker(peer):
            assert list(peer.amqp.queues.consume_from) == [own]  # what it consumes
    finally:
        peer.close()
    assert receive(orch, timeout=1).headers["task"] == ORCHESTRATE_TASK


# --- the example builder worker, for real --------------------------------------------


@pytest.fixture
def builder(
    broker_url: str,
    no_orchestrator_worker_hooks: None,
    declare: Callable[[Queue], Queue],
    chat_queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Celery, str]]:
    """The example builder consuming a unique queue; its chat lines go to `chat_queue`."""
    # The example takes its broker from CELERY_BROKER_URL when imported (default: vhost /
    # of localhost): import it, or import it again, with the session's.
    monkeypatch.setenv("CELERY_BROKER_URL", broker_url)
    builder_worker = importlib.import_module("examples.builder_worker")
    if builder_worker.BROKER_URL != broker_url:
        builder_worker = importlib.reload(builder_worker)

    monkeypatch.setattr(builder_worker, "HIPCHAT_QUEUE", chat_queue.name)
    name = unique("builder")
    declare(Queue(name, Exchange(name, type="direct"), routing_key=name))
    with run_worker(builder_worker.app, queues=[name]):
        yield builder_worker.app, name


@pytest.mark.timeout(60)
def test_example_builder_reports_success_and_failure(
    builder: tuple[Celery, str], request_: dict[str, Any], orch_queue: Queue, chat_queue: Queue
) -> None:
    app_, queue = builder

    app_.send_task("builder.build", args=[request_], queue=queue)
    message = receive(orch_queue)
    payload = task_argument(message, ORCHESTRATE_TASK, message.headers["id"])
    assert payload["workflow_error"] is False
    assert payload["current_step"] == "build"
    assert payload["step_time"] == request_["step_time"]
    assert payload["event_log"][:-1] == request_["event_log"]
    assert payload["event_log"][-1].startswith(f"{PREFIX} Builder ")

    failing = {**request_, "deployment_repo": "Test-Org/fail_docker"}
    app_.send_task("builder.build", args=[failing], queue=queue)
    message = receive(orch_queue)
    payload = task_argument(message, ORCHESTRATE_TASK, message.headers["id"])
    assert payload["workflow_error"] is True
    assert payload["workflow_completed"] is True
    assert payload["current_step"] == "build"
    assert payload["event_log"][-2] == f"{PREFIX} docker build exited with status 1"
    assert payload["event_log"][-1].startswith(f"{PREFIX} Build of Test-Org/fail_docker failed")
    chat = receive(chat_queue)
    note = task_argument(chat, HIPCHAT_TASK, chat.headers["id"])
    assert note["is_success"] is False
    assert note["prefix"] == PREFIX


# --- the call shapes of CONTRACT §8 -----------------------------------------------------


def test_the_callbacks_work_as_the_contract_names_them_inside_a_workers_task(
    broker_url: str, request_: dict[str, Any], orch_queue: Queue, chat_queue: Queue
) -> None:
    """`step_completed(request)`, `publish_success_notification(request, message)`,
    `step_failed(request, message, reason)`: the app is the worker's own, the one a
    Celery worker makes current while it runs its task."""
    peer = worker_app("wo-test-current", broker_url)
    previous = current_app._get_current_object()
    peer.set_current()
    try:
        updated = publish_success_notification(
            request_, "checked out", hipchat_queue=chat_queue.name
        )
        assert updated["event_log"][-1] == f"{PREFIX} checked out"
        task_id = step_completed(updated)
        sent = task_argument(receive(orch_queue), ORCHESTRATE_TASK, task_id)
        assert sent["event_log"][-1] == f"{PREFIX} checked out"
        chat = receive(chat_queue)
        assert chat.headers["task"] == HIPCHAT_TASK
        (note,), _, _ = chat.decode()
        assert note["message"] == "checked out" and note["is_success"] is True
        failed_id = step_failed(updated, "build failed", "exit 1", hipchat_queue=chat_queue.name)
        report = task_argument(receive(orch_queue), ORCHESTRATE_TASK, failed_id)
        assert report["event_log"][-2:] == [f"{PREFIX} exit 1", f"{PREFIX} build failed"]
        started = execute_workflow(WID, queue=orch_queue.name, force_build=True)
        start = task_argument(receive(orch_queue), ORCHESTRATE_TASK, started)
        assert start == {"id": WID, "workflow_id": WID, "force_build": True}
        assert receive(chat_queue).decode()[0][0]["is_success"] is False  # the failure chat
    finally:
        previous.set_current()
        peer.close()


def test_save_and_register_read_the_manager_from_the_environment(
    request_: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`save(request)` and `register(module_type)`: MANAGER_URL, OAUTH_* and EXCHANGE_ID
    as the orchestrator reads them; one client per app."""
    from tests.conftest import CLIENT_ID, CLIENT_SECRET
    from workflow_orchestrator.emulator import ManagerEmulator

    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        emulator.add_exchange("2", name="remote")
        for name, value in {
            "MANAGER_URL": emulator.url,
            "OAUTH_LOGIN_URL": emulator.token_url,
            "OAUTH_CLIENT_ID": CLIENT_ID,
            "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
            "EXCHANGE_ID": "2",
            "MODULE_HEARTBEAT_SECONDS": "0.2",
        }.items():
            monkeypatch.setenv(name, value)
        peer = Celery("wo-test-env", set_as_current=False)
        previous = current_app._get_current_object()
        peer.set_current()
        try:
            workflow_id = emulator.add_workflow({"milestones": ["build"]})
            save({**request_, "id": workflow_id, "event_log": ["[OA][x] received"]})
            assert emulator.get_workflow(workflow_id)["event_log"] == ["[OA][x] received"]
            registration = register("builder", hostname="env-builder")
            assert registration.interval == 0.2  # MODULE_HEARTBEAT_SECONDS
            beats = "POST /messaging/exchanges/{id}/modules"
            wait_for(lambda: emulator.counters().get(beats, 0) >= 3, what="heartbeats")
            registration.stop()
            assert emulator.counters().get("POST /oauth/token") == 1  # one client, one token
        finally:
            previous.set_current()
        ((record,),) = [emulator.modules("2")]
        assert (record["hostname"], record["type"], record["status"]) == (
            "env-builder",
            "builder",
            "inactive",
        )
