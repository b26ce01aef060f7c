"""The Manager client against a real emulator over loopback HTTP (no mocks of the client)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.conftest import CLIENT_ID, CLIENT_SECRET
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.errors import (
    CredentialsRejected,
    ManagerError,
    ManagerNotFound,
    ManagerPermanentError,
    ManagerTransientError,
)
from workflow_orchestrator.manager import ManagerClient, TokenSource, new_session
from workflow_orchestrator.settings import Settings

TOKEN_KEY = "POST /oauth/token"


def make_client(
    emulator: ManagerEmulator,
    *,
    body: str = "json",
    secret: str = CLIENT_SECRET,
    read_timeout: float = 2.0,
    clock: Any = time.monotonic,
) -> ManagerClient:
    tokens = TokenSource(
        emulator.token_url,
        CLIENT_ID,
        secret,
        body=body,
        connect_timeout=1.0,
        read_timeout=read_timeout,
        clock=clock,
    )
    return ManagerClient(emulator.url, tokens, connect_timeout=1.0, read_timeout=read_timeout)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- every call ---------------------------------------------------------------------------


def test_get_workflow_decodes_json_text_and_keeps_dates(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow(
        {
            "deployment_repo": "Test-Org/app_docker",
            "milestones": ["build", "deploy"],
            "event_log": '["already text"]',
            "execute_options": {"force_build": True},
            "scheduled_start_time": "Tue, 05 Mar 2013 23:25:19 GMT",
        }
    )
    workflow = manager_client.get_workflow(wid)
    assert workflow["id"] == wid
    assert workflow["milestones"] == ["build", "deploy"]
    assert workflow["event_log"] == ["already text"]
    assert workflow["execute_options"] == {"force_build": True}
    assert workflow["workflow_step_durations"] is None
    assert workflow["workflow_completed"] is False
    # the Manager keeps the clock time and writes its own zone name back
    assert workflow["scheduled_start_time"] == "Tue, 05 Mar 2013 23:25:19 UTC"
    assert isinstance(workflow["inserted_at"], str) and workflow["inserted_at"].endswith(" UTC")


def test_a_stored_column_the_manager_cannot_decode_is_a_transient_500(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow({"milestones": "not json ["})
    with pytest.raises(ManagerTransientError) as info:
        manager_client.get_workflow(wid)
    assert info.value.status == 500


def test_save_workflow_sends_json_values_and_workflow_completed(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow({"milestones": ["build"], "workflow_completed": True})
    workflow = manager_client.get_workflow(wid)
    workflow.update(
        current_step="build",
        event_log=["one", "two"],
        workflow_step_durations={"build": "2 second(s)"},
        workflow_start_time="2026-01-01T00:00:00+00:00",  # message-only: not persisted
    )
    del workflow["workflow_completed"]
    manager_client.save_workflow(wid, workflow)

    (put,) = manager_emulator.workflow_puts(wid)
    assert put["event_log"] == ["one", "two"]  # a JSON list, not text
    assert put["workflow_step_durations"] == {"build": "2 second(s)"}
    assert put["workflow_completed"] is False and put["workflow_error"] is False
    assert "workflow_start_time" not in put and "id" not in put
    stored = manager_client.get_workflow(wid)
    assert stored["current_step"] == "build"
    assert stored["event_log"] == ["one", "two"]
    assert stored["workflow_completed"] is False


def test_save_unknown_workflow_is_not_found(manager_client: ManagerClient) -> None:
    with pytest.raises(ManagerNotFound) as info:
        manager_client.save_workflow("nope", {"milestones": []})
    assert info.value.status == 404
    assert info.value.call == "PUT /workflows/nope"


def test_get_unknown_workflow_is_not_found(manager_client: ManagerClient) -> None:
    unknown = "0b8e9f54-5a0c-4b8e-9d55-5c1b2c3d4e5f"
    with pytest.raises(ManagerNotFound) as info:
        manager_client.get_workflow(unknown)
    assert str(info.value).startswith(f"Manager call GET /workflows/{unknown} answered 404")


def test_path_segments_are_quoted(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    with pytest.raises(ManagerError) as info:
        manager_client.get_workflow("../clusters")
    assert info.value.call == "GET /workflows/..%2Fclusters"  # never /clusters
    assert manager_emulator.counters().get("GET /clusters") is None


def test_system_event_created_and_duplicate_is_success(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    event = {
        "unique": True,
        "type": "unhandled_exception",
        "severity": "error",
        "data": {"component": "workflow_orchestration", "exchange_id": "1", "hostname": "h"},
        "message": "boom",
    }
    manager_client.create_system_event(event)
    manager_client.create_system_event(event)  # 409 from the Manager: not an error
    assert manager_emulator.counters()["POST /system_events"] == 2
    (stored,) = manager_emulator.system_events()
    assert stored["message"] == "boom" and stored["data"]["exchange_id"] == "1"


def test_register_module_replaces_same_host_and_type(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    manager_emulator.add_exchange("1", "main")
    module = {"hostname": "h1", "type": "workflow_orchestrator", "status": "active", "workload": []}
    manager_client.register_module("1", module)
    manager_client.register_module("1", {**module, "status": "inactive"})
    (stored,) = manager_emulator.modules("1")
    assert stored["status"] == "inactive" and stored["workload"] == []
    with pytest.raises(ManagerNotFound):
        manager_client.register_module("404", module)


def test_cluster_calls(manager_emulator: ManagerEmulator, manager_client: ManagerClient) -> None:
    manager_emulator.add_cluster("build-a", 1, allow_docker_builds=True)
    manager_emulator.add_cluster("deploy-b", 1)
    manager_emulator.add_cluster("other-c", "2", allow_docker_builds=True)

    assert [c["etcd_token"] for c in manager_client.list_clusters()] == [
        "build-a",
        "deploy-b",
        "other-c",
    ]
    assert [c["etcd_token"] for c in manager_client.list_clusters(True)] == ["build-a", "other-c"]
    exchange_1 = manager_client.list_exchange_clusters(1)
    assert [c["etcd_token"] for c in exchange_1] == ["build-a", "deploy-b"]
    assert [c["etcd_token"] for c in manager_client.list_exchange_clusters("1", True)] == [
        "build-a"
    ]
    assert [c["etcd_token"] for c in manager_client.list_exchange_clusters(1, False)] == [
        "deploy-b"
    ]
    cluster = manager_client.get_cluster("other-c")
    assert cluster["messaging_exchange_id"] == 2  # an integer, as the Manager stores it
    assert manager_client.get_cluster("build-a")["messaging_exchange_id"] == 1
    with pytest.raises(ManagerNotFound):
        manager_client.get_cluster("missing")
    with pytest.raises(ManagerNotFound):
        manager_client.list_exchange_clusters("99")


def test_messaging_registry_calls(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    manager_emulator.add_exchange(1, "east")
    manager_emulator.add_module(1, "builder", hostname="b1")
    manager_emulator.add_module(1, "deployer", hostname="d1")
    manager_emulator.add_broker(7, 1, "rabbit")
    manager_emulator.add_broker_connection(7, "mq.local", 5672, "user", "pw")

    assert manager_client.get_exchange(1)["name"] == "east"
    assert [m["type"] for m in manager_client.list_exchange_modules(1)] == ["builder", "deployer"]
    (row,) = manager_client.list_exchange_brokers("1")  # a join row with its own id
    assert row["messaging_broker_id"] == 7 and row["messaging_exchange_id"] == 1
    assert manager_client.get_broker(7)["name"] == "rabbit"
    (connection,) = manager_client.list_broker_connections(7)
    assert connection["host"] == "mq.local" and connection["port"] == 5672
    with pytest.raises(ManagerNotFound):
        manager_client.get_exchange(2)
    with pytest.raises(ManagerNotFound):
        manager_client.get_broker(8)


def test_from_settings(manager_emulator: ManagerEmulator) -> None:
    settings = Settings(
        exchange_id="1",
        broker_id="1",
        manager_url=manager_emulator.url,
        oauth_login_url=manager_emulator.token_url,
        oauth_client_id=CLIENT_ID,
        oauth_client_secret=CLIENT_SECRET,
        oauth_body="form",
        manager_connect_timeout=1.0,
        manager_read_timeout=2.0,
    )
    wid = manager_emulator.add_workflow({})
    with ManagerClient.from_settings(settings) as client:
        assert client.get_workflow(wid)["id"] == wid
        assert client.timeout == (1.0, 2.0)
        assert client.tokens is not None and client.tokens.body == "form"


def test_the_proxy_environment_is_read_once_per_host(
    manager_emulator: ManagerEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxies from the environment are honoured, and read at a host's first call only."""
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:  # a port nothing listens on: a proxy that cannot be reached
        s.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    session = new_session()
    path = f"127.0.0.1:{manager_emulator.port}/workflows"
    assert session.get(f"http://{path}", timeout=5).status_code == 401  # reached directly
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    assert session.get(f"http://{path}", timeout=5).status_code == 401  # read once: still direct
    with pytest.raises(requests.exceptions.ProxyError):  # a new host reads it: the proxy
        session.get(f"http://localhost:{manager_emulator.port}/workflows", timeout=5)
    session.close()


# -- tokens ---------------------------------------------------------------------------------


def test_one_token_fetch_for_many_calls(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow({})
    for _ in range(20):
        manager_client.get_workflow(wid)
    counters = manager_emulator.counters()
    assert counters[TOKEN_KEY] == 1
    assert counters["GET /workflows/{id}"] == 20


@pytest.mark.parametrize("body", ["json", "form"])
def test_token_bodies(manager_emulator: ManagerEmulator, body: str) -> None:
    wid = manager_emulator.add_workflow({})
    with make_client(manager_emulator, body=body) as client:
        assert client.get_workflow(wid)["id"] == wid
    assert manager_emulator.counters()[TOKEN_KEY] == 1


@pytest.mark.parametrize("body", ["json", "form"])
def test_wrong_secret_names_the_settings_is_kept_and_not_shown(
    manager_emulator: ManagerEmulator, body: str
) -> None:
    with make_client(manager_emulator, body=body, secret="wrong-secret-123") as client:
        with pytest.raises(CredentialsRejected) as info:
            client.get_workflow("x")
    assert info.value.status == 401
    assert info.value.call == f"POST {manager_emulator.token_url}"
    assert "OAUTH_CLIENT_ID" in str(info.value) and "OAUTH_CLIENT_SECRET" in str(info.value)
    assert isinstance(info.value, ManagerTransientError)  # messages wait, never dead-lettered
    assert "wrong-secret-123" not in str(info.value)
    assert manager_emulator.counters().get("GET /workflows/{id}") is None


def test_token_refreshed_30_seconds_before_expiry() -> None:
    clock = FakeClock()
    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_ttl=100) as em:
        wid = em.add_workflow({})
        with make_client(em, clock=clock) as client:
            client.get_workflow(wid)
            clock.now += 69.0  # 31 s left: still reused
            client.get_workflow(wid)
            assert em.counters()[TOKEN_KEY] == 1
            clock.now += 1.5  # 29.5 s left: refreshed before the server would refuse it
            client.get_workflow(wid)
            assert em.counters()[TOKEN_KEY] == 2
            assert em.counters()["GET /workflows/{id}"] == 3


def test_401_fetches_a_new_token_and_retries_once(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow({})
    manager_client.get_workflow(wid)
    manager_emulator.expire_tokens()
    assert manager_client.get_workflow(wid)["id"] == wid
    counters = manager_emulator.counters()
    assert counters[TOKEN_KEY] == 2
    assert counters["GET /workflows/{id}"] == 3  # ok, 401, retried ok


def test_persistent_401_is_a_credentials_problem_after_one_retry(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    manager_emulator.fail_for(5, status=401)
    with pytest.raises(CredentialsRejected) as info:
        manager_client.get_workflow("x")
    assert info.value.status == 401
    counters = manager_emulator.counters()
    assert counters["GET /workflows/{id}"] == 2
    assert counters[TOKEN_KEY] == 2


def test_invalidate_only_drops_the_current_token(manager_emulator: ManagerEmulator) -> None:
    tokens = TokenSource(manager_emulator.token_url, CLIENT_ID, CLIENT_SECRET)
    first = tokens.token()
    tokens.invalidate("some-older-token")
    assert tokens.token() == first
    tokens.invalidate(first)
    second = tokens.token()
    assert second != first
    assert manager_emulator.counters()[TOKEN_KEY] == 2
    tokens.close()


def test_sixteen_threads_with_a_cold_cache_fetch_one_token(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow({})
    manager_emulator.set_latency(0.05)  # the fetch is in flight while the others arrive
    barrier = threading.Barrier(16)
    results: list[Any] = []

    def work() -> None:
        barrier.wait()
        try:
            results.append(manager_client.get_workflow(wid)["id"])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [wid] * 16
    assert manager_emulator.counters()[TOKEN_KEY] == 1


# -- failure classification -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, ManagerTransientError),
        (502, ManagerTransientError),
        (503, ManagerTransientError),
        (429, ManagerTransientError),
        (400, ManagerPermanentError),
        (403, ManagerPermanentError),
        (404, ManagerNotFound),
    ],
)
def test_status_classification(
    manager_emulator: ManagerEmulator,
    manager_client: ManagerClient,
    status: int,
    error: type[ManagerError],
) -> None:
    wid = manager_emulator.add_workflow({})
    manager_emulator.fail_for(5, status=status)
    with pytest.raises(error) as info:
        manager_client.get_workflow(wid)
    assert type(info.value) is error
    assert info.value.status == status
    assert str(info.value).startswith(f"Manager call GET /workflows/{wid} answered {status}")
    assert len(info.value.detail) <= 200
    manager_emulator.reset_faults()
    assert manager_client.get_workflow(wid)["id"] == wid


def test_token_endpoint_outage_is_transient(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    manager_emulator.fail_for(5, status=503, include_token=True)
    with pytest.raises(ManagerTransientError) as info:
        manager_client.get_workflow("x")
    assert info.value.call == f"POST {manager_emulator.token_url}"
    assert info.value.status == 503


def test_read_timeout_is_transient(manager_emulator: ManagerEmulator) -> None:
    wid = manager_emulator.add_workflow({})
    with make_client(manager_emulator, read_timeout=0.2) as client:
        client.get_workflow(wid)  # token cached before the Manager turns slow
        manager_emulator.set_latency(0.6)
        with pytest.raises(ManagerTransientError) as info:  # without it: an answer at 0.6 s
            client.get_workflow(wid)
        assert info.value.status is None
        assert str(info.value) == f"Manager call GET /workflows/{wid} failed: ReadTimeout"
        manager_emulator.set_latency(0)
        time.sleep(0.5)  # let the emulator finish the abandoned request
        assert client.get_workflow(wid)["id"] == wid


def test_dropped_connections_are_transient(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow({})
    manager_client.get_workflow(wid)  # a kept-alive pooled connection exists
    manager_emulator.drop_connections_for(5)
    for _ in range(2):  # a reused connection and a fresh one
        with pytest.raises(ManagerTransientError) as info:
            manager_client.get_workflow(wid)
        assert info.value.status is None
    manager_emulator.reset_faults()
    assert manager_client.get_workflow(wid)["id"] == wid


def test_refused_connection_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    tokens = TokenSource(f"{url}/oauth/token", CLIENT_ID, CLIENT_SECRET, connect_timeout=0.5)
    with ManagerClient(url, tokens, connect_timeout=0.5, read_timeout=0.5) as client:
        with pytest.raises(ManagerTransientError) as info:
            client.get_workflow("x")
    assert info.value.call == f"POST {url}/oauth/token"


def test_manager_restart_is_survived(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    wid = manager_emulator.add_workflow({})
    manager_client.get_workflow(wid)
    manager_emulator.stop()
    with pytest.raises(ManagerTransientError):
        manager_client.get_workflow(wid)
    manager_emulator.start()  # same port, same data, same tokens
    assert manager_client.get_workflow(wid)["id"] == wid


# -- secrets ------------------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """A misbehaving Manager that echoes credentials back in error bodies."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen: list[dict[str, str]] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if self.path == "/oauth/token":
            self._answer(200, {"access_token": "tok-" + "z" * 40, "expires_in": 3600})
        else:
            self._answer(400, {"echo": raw})

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(dict(self.headers))
        if self.path == "/token-error":
            self._answer(400, {"error": "bad", "you_sent": self.headers.get("Authorization")})
            return
        auth = self.headers.get("Authorization", "")
        self._answer(403, {"message": "forbidden for " + auth * 3})


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_headers_and_no_token_in_error_details(echo_server: str) -> None:
    tokens = TokenSource(f"{echo_server}/oauth/token", CLIENT_ID, CLIENT_SECRET)
    with ManagerClient(echo_server, tokens, connect_timeout=1, read_timeout=2) as client:
        with pytest.raises(ManagerPermanentError) as info:
            client.get_workflow("w1")
    token = "tok-" + "z" * 40
    headers = _EchoHandler.seen[-1]
    assert headers["Authorization"] == f"Bearer {token}"
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/json"
    assert info.value.status == 403
    assert token not in str(info.value)
    assert "***" in info.value.detail
    assert len(info.value.detail) <= 200


def test_token_endpoint_echo_never_shows_the_secret(echo_server: str) -> None:
    tokens = TokenSource(f"{echo_server}/echo", CLIENT_ID, CLIENT_SECRET)
    with pytest.raises(CredentialsRejected) as info:
        tokens.token()
    assert info.value.status == 400
    assert CLIENT_SECRET not in str(info.value)
    assert "client_credentials" in info.value.detail  # the echo itself did arrive


def test_secret_and_tokens_never_logged_or_shown(
    manager_emulator: ManagerEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []
    messages: list[str] = []
    wid = manager_emulator.add_workflow({"milestones": ["build"]})
    with make_client(manager_emulator, read_timeout=0.3) as client:
        assert client.tokens is not None
        original = client.tokens.token

        def spy() -> str:
            token = original()
            if token not in issued:
                issued.append(token)
            return token

        client.tokens.token = spy  # type: ignore[method-assign]
        client.get_workflow(wid)
        client.save_workflow(wid, client.get_workflow(wid))
        manager_emulator.expire_tokens()
        client.list_clusters(True)
        for status in (503, 429, 403, 401):
            manager_emulator.fail_for(5, status=status)
            try:
                client.get_workflow(wid)
            except ManagerError as exc:
                messages.append(str(exc))
            manager_emulator.reset_faults()
        manager_emulator.set_latency(0.5)
        try:
            client.get_workflow(wid)
        except ManagerError as exc:
            messages.append(str(exc))
        manager_emulator.set_latency(0)
        manager_emulator.drop_connections_for(5, include_token=True)
        manager_emulator.expire_tokens()
        try:
            client.get_workflow(wid)
        except ManagerError as exc:
            messages.append(str(exc))
        manager_emulator.reset_faults()
    with make_client(manager_emulator, secret=CLIENT_SECRET + "x") as bad:
        try:
            bad.get_workflow(wid)
        except ManagerError as exc:
            messages.append(str(exc))
            messages.append(repr(exc.__cause__))

    assert len(issued) >= 3
    assert len(messages) == 8
    text = "\n".join(messages + [r.getMessage() for r in caplog.records] + [caplog.text])
    assert "GET /workflows/" in caplog.text  # the calls were logged...
    for secret in [CLIENT_SECRET, *issued]:
        assert secret not in text  # ...without a credential
    assert "Bearer" not in text
