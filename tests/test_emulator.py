"""The Manager emulator's plumbing over real loopback HTTP: OAuth, parsing, faults, CLI.

The Manager's own behaviour (workflows, registry, system events) is in the
``test_emulator_*.py`` files beside this one.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import CLIENT_ID, CLIENT_SECRET
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.emulator.http import _Handler

SEEDED = "4b0c8f0e-2f5e-4c3a-9d2e-0a1b2c3d4e5f"


@pytest.fixture
def http(manager_emulator: ManagerEmulator) -> Iterator[requests.Session]:
    """A keep-alive session that carries a valid bearer token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {manager_emulator.issue_token()}"
    yield session
    session.close()


def url(emulator: ManagerEmulator, path: str) -> str:
    return emulator.url + path


# -- OAuth and bearer checks -------------------------------------------------------------


def test_token_endpoint_accepts_json_form_and_basic(manager_emulator: ManagerEmulator) -> None:
    grant = {"grant_type": "client_credentials"}
    creds = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    answers = [
        requests.post(manager_emulator.token_url, json={**grant, **creds}, timeout=2),
        requests.post(manager_emulator.token_url, data={**grant, **creds}, timeout=2),
        requests.post(
            manager_emulator.token_url,
            data=grant,
            headers={"Authorization": f"Basic {basic}"},
            timeout=2,
        ),
    ]
    tokens = set()
    for answer in answers:
        assert answer.status_code == 200
        body = answer.json()
        assert body["token_type"] == "bearer" and body["expires_in"] == 3600
        tokens.add(body["access_token"])
        check = requests.get(
            url(manager_emulator, "/workflows"),
            headers={"Authorization": f"Bearer {body['access_token']}"},
            timeout=2,
        )
        assert check.status_code == 200
    assert len(tokens) == 3


def test_token_endpoint_refuses_bad_credentials(manager_emulator: ManagerEmulator) -> None:
    wrong = requests.post(
        manager_emulator.token_url,
        json={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "no"},
        timeout=2,
    )
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid_client"}
    grant = requests.post(
        manager_emulator.token_url,
        json={"grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        timeout=2,
    )
    assert grant.status_code == 400 and grant.json() == {"error": "unsupported_grant_type"}
    assert requests.post(manager_emulator.token_url, data=b"{", timeout=2).status_code == 400


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer "])
def test_api_needs_a_valid_bearer_token(manager_emulator: ManagerEmulator, header: str) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [("GET", "/workflows"), ("PUT", "/workflows/x"), ("GET", "/clusters")]:
        answer = requests.request(method, url(manager_emulator, path), headers=headers, timeout=2)
        # The real Manager's authentication plug: plain "Unauthorized", no challenge header.
        assert answer.status_code == 401 and answer.text == "Unauthorized"
        assert "WWW-Authenticate" not in answer.headers


def test_expired_and_revoked_tokens_are_refused() -> None:
    with ManagerEmulator(token_ttl=0.2) as em:
        token = em.issue_token()
        headers = {"Authorization": f"Bearer {token}"}
        assert requests.get(url(em, "/workflows"), headers=headers, timeout=2).status_code == 200
        time.sleep(0.25)
        assert requests.get(url(em, "/workflows"), headers=headers, timeout=2).status_code == 401
        headers = {"Authorization": f"Bearer {em.issue_token()}"}
        em.expire_tokens()
        assert requests.get(url(em, "/workflows"), headers=headers, timeout=2).status_code == 401


# -- plumbing -------------------------------------------------------------------------------


def test_unknown_paths_and_methods_are_empty_404s(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """Phoenix's router has no 405: an unknown path or method is a 404 (no body here)."""
    for method, path in [
        ("GET", "/nothing/here"),
        ("DELETE", "/system_events"),
        ("POST", "/clusters/abc"),
        ("PATCH", f"/workflows/{uuid.uuid4()}"),
    ]:
        answer = http.request(method, url(manager_emulator, path))
        assert answer.status_code == 404, (method, path)
        assert answer.content == b"" and "Allow" not in answer.headers


def test_head_is_served_as_get_without_a_body(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """Plug.Head turns HEAD into GET."""
    manager_emulator.add_workflow({})
    head = http.head(url(manager_emulator, "/workflows"))
    assert head.status_code == 200 and head.content == b""
    assert manager_emulator.counters()["HEAD /workflows"] == 1


def test_a_body_without_a_json_content_type_is_ignored(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """Plug.Parsers passes other types unread: such a PUT is an empty PUT (and resets
    workflow_completed), it is not refused."""
    wid = manager_emulator.add_workflow({"workflow_completed": True, "current_step": "build"})
    target = url(manager_emulator, f"/workflows/{wid}")
    answer = http.put(
        target, data=json.dumps({"current_step": "deploy"}), headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 204
    stored = http.get(target).json()
    assert stored["current_step"] == "build" and stored["workflow_completed"] is False


def test_a_json_body_that_is_not_an_object_is_an_empty_params_map(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """Plug puts a non-object JSON body under "_json": the controller sees no fields."""
    wid = manager_emulator.add_workflow({"workflow_completed": True, "source_repo": "o/r"})
    target = url(manager_emulator, f"/workflows/{wid}")
    assert http.put(target, json=["a", "list"]).status_code == 204
    stored = http.get(target).json()
    assert stored["workflow_completed"] is False and stored["source_repo"] == "o/r"
    created = http.post(url(manager_emulator, "/workflows"), json="x")
    assert created.status_code == 201


def test_a_json_body_that_does_not_decode_is_400(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    wid = manager_emulator.add_workflow({"source_repo": "o/r"})
    target = url(manager_emulator, f"/workflows/{wid}")
    for raw in (b"{not json", "\xff".encode("latin-1")):
        answer = http.put(target, data=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400
    assert http.get(target).json()["source_repo"] == "o/r"  # untouched, server still fine


def test_malformed_requests_do_not_break_the_server(manager_emulator: ManagerEmulator) -> None:
    token = manager_emulator.issue_token().encode()
    garbage = [
        b"garbage\r\n\r\n",
        b"GET /workflows HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"PUT /workflows/x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b"POST /workflows HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"PUT /workflows/%ff%fe HTTP/1.1\r\nAuthorization: Bearer " + token + b"\r\n\r\n",
        b"GET /workflows HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        b"POST /oauth/token HTTP/1.1\r\nAuthorization: Basic !!!\r\nContent-Length: 2\r\n\r\n{}",
        b"PUT /workflows/x HTTP/1.1\r\nContent-Length: 10\r\n\r\nab",  # then hang up
    ]
    for data in garbage:
        with socket.create_connection(("127.0.0.1", manager_emulator.port), timeout=2) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            head = s.recv(64)
        status_line = head.split(b"\r\n", 1)[0]
        assert not re.match(rb"HTTP/1\.[01] [235]", status_line), (data, head)
    chunked = requests.post(
        url(manager_emulator, "/workflows"),
        data=iter([b'{"deployment_repo":', b' "o/r"}']),  # sent chunked
        headers={"Authorization": f"Bearer {token.decode()}", "Content-Type": "application/json"},
        timeout=2,
    )
    assert chunked.status_code == 201
    assert (
        manager_emulator.get_workflow(chunked.headers["Location"].rsplit("/", 1)[1])[
            "deployment_repo"
        ]
        == "o/r"
    )


# -- faults -----------------------------------------------------------------------------


def test_fail_for_then_recover(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    manager_emulator.fail_for(0.3, status=503)
    answer = http.get(url(manager_emulator, "/workflows"))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    token = requests.post(
        manager_emulator.token_url,
        json={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
        timeout=2,
    )
    assert token.status_code == 200  # the token endpoint is spared unless asked
    time.sleep(0.35)
    assert http.get(url(manager_emulator, "/workflows")).status_code == 200
    manager_emulator.fail_for(5, status=500, include_token=True)
    assert requests.post(manager_emulator.token_url, json={}, timeout=2).status_code == 500


def test_latency_and_drops(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    manager_emulator.set_latency(0.2)
    started = time.monotonic()
    assert http.get(url(manager_emulator, "/workflows")).status_code == 200
    assert time.monotonic() - started >= 0.2
    manager_emulator.set_latency(0)
    manager_emulator.drop_connections_for(5)
    with pytest.raises(requests.ConnectionError):
        http.get(url(manager_emulator, "/workflows"))
    manager_emulator.reset_faults()
    assert http.get(url(manager_emulator, "/workflows")).status_code == 200


def test_control_endpoints_over_http(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    control = url(manager_emulator, "/_emulator/faults")
    state = requests.post(control, json={"fail_for": 5, "status": 502}, timeout=2).json()
    assert state["status"] == 502 and state["fail_for"] > 4
    assert http.get(url(manager_emulator, "/workflows")).status_code == 502
    requests.post(control, json={"reset": True}, timeout=2)
    assert http.get(url(manager_emulator, "/workflows")).status_code == 200
    requests.post(control, json={"drop_for": 5}, timeout=2)
    with pytest.raises(requests.ConnectionError):
        requests.get(url(manager_emulator, "/workflows"), timeout=2)
    assert requests.post(control, json={"reset": True, "latency": 0}, timeout=2).ok
    assert requests.post(control, json={"latency": "slow"}, timeout=2).status_code == 400

    wid = manager_emulator.add_workflow({})
    http.put(url(manager_emulator, f"/workflows/{wid}"), json={"event_log": ["a"]})
    http.put(url(manager_emulator, f"/workflows/{wid}"), json={"event_log": ["a", "b"]})
    puts = requests.get(url(manager_emulator, f"/_emulator/workflows/{wid}/puts"), timeout=2)
    assert [p["event_log"] for p in puts.json()] == [["a"], ["a", "b"]]

    counters = requests.get(url(manager_emulator, "/_emulator/counters"), timeout=2).json()
    assert counters["PUT /workflows/{id}"] == 2
    assert counters["GET /workflows"] == 3  # 502, 200, dropped
    assert counters["total"] == sum(v for k, v in counters.items() if k != "total")
    assert (
        requests.delete(url(manager_emulator, "/_emulator/counters"), timeout=2).status_code == 204
    )
    assert manager_emulator.counters() == {"total": 0}


def test_keep_alive_connections_have_nagle_off_and_buffered_writes(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """Guards the Nagle + delayed-ACK trap (~44 ms per keep-alive request with it)."""
    assert http.get(url(manager_emulator, "/workflows")).status_code == 200
    (conn,) = manager_emulator._http._connections  # the session's open keep-alive socket
    assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert _Handler.wbufsize > 0  # one flush per response, not one segment per header
    assert http.get(url(manager_emulator, "/workflows")).status_code == 200
    assert len(manager_emulator._http._connections) == 1  # the same connection was reused


# -- CLI --------------------------------------------------------------------------------------


def test_cli_serves_seed_until_sigterm(tmp_path: Path) -> None:
    seed = {
        "exchanges": [{"id": 1, "name": "main"}],
        "clusters": [{"etcd_token": "t", "messaging_exchange_id": 1, "allow_docker_builds": True}],
        "modules": [{"exchange_id": 1, "type": "builder", "hostname": "b"}],
        "workflows": [{"id": SEEDED, "milestones": ["build"]}],
    }
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workflow_orchestrator.emulator",
            "--port",
            "0",
            "--client-secret",
            CLIENT_SECRET,
            "--seed",
            str(tmp_path / "seed.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert found, line
        base = found.group(1)
        token = requests.post(
            f"{base}/oauth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            timeout=5,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        workflow = requests.get(f"{base}/workflows/{SEEDED}", headers=headers, timeout=5).json()
        assert workflow["milestones"] == ["build"]
        modules = requests.get(f"{base}/messaging/exchanges/1/modules", headers=headers, timeout=5)
        assert [m["type"] for m in modules.json()] == ["builder"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, err = proc.communicate(timeout=5)
        assert CLIENT_SECRET not in err and token not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
