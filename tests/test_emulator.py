"""The Manager emulator's contract, over real loopback HTTP (and real RabbitMQ for execute)."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kombu import Connection

from tests.conftest import CLIENT_ID, CLIENT_SECRET
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.queues import orchestration_queue

RFC1123 = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d UTC$"
)


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
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


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


# -- workflows --------------------------------------------------------------------------


def test_workflow_lifecycle_status_codes(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    created = http.post(url(manager_emulator, "/workflows"), json={"deployment_repo": "o/r"})
    assert created.status_code == 201
    wid = created.json()["id"]
    uuid.UUID(wid)
    assert created.headers["Location"] == f"/workflows/{wid}"

    got = http.get(url(manager_emulator, f"/workflows/{wid}"))
    assert got.status_code == 200 and got.json()["deployment_repo"] == "o/r"
    assert RFC1123.match(got.json()["inserted_at"]) and RFC1123.match(got.json()["updated_at"])

    put = http.put(url(manager_emulator, f"/workflows/{wid}"), json={"current_step": "build"})
    assert put.status_code == 204 and put.content == b""
    assert http.get(url(manager_emulator, "/workflows")).json()[0]["current_step"] == "build"

    assert http.delete(url(manager_emulator, f"/workflows/{wid}")).status_code == 204
    assert http.get(url(manager_emulator, f"/workflows/{wid}")).status_code == 404
    assert http.put(url(manager_emulator, f"/workflows/{wid}"), json={}).status_code == 404
    assert http.delete(url(manager_emulator, f"/workflows/{wid}")).status_code == 404


def test_workflow_create_with_given_id_and_conflict(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    wid = str(uuid.uuid4())
    first = http.post(url(manager_emulator, "/workflows"), json={"id": wid})
    assert first.status_code == 201 and first.headers["Location"] == f"/workflows/{wid}"
    assert http.post(url(manager_emulator, "/workflows"), json={"id": wid}).status_code == 409


def test_bad_bodies_are_400(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    wid = manager_emulator.add_workflow({})
    target = url(manager_emulator, f"/workflows/{wid}")
    assert http.put(target, data=b"{not json").status_code == 400
    assert http.put(target, json=["a", "list"]).status_code == 400
    assert http.put(target, data="\xff".encode("latin-1")).status_code == 400
    bad_type = http.put(target, json={"deployment_repo": 12})
    assert bad_type.status_code == 400
    assert bad_type.json() == {"errors": {"deployment_repo": ["is invalid"]}}
    assert http.post(url(manager_emulator, "/workflows"), json="x").status_code == 400
    # the server is still fine and the workflow untouched
    assert http.get(target).json()["deployment_repo"] is None


def test_unknown_path_404_and_wrong_method_405(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    missing = http.get(url(manager_emulator, "/nothing/here"))
    assert missing.status_code == 404 and missing.json()["error"]
    wrong = http.delete(url(manager_emulator, "/system_events"))
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, POST"
    assert http.post(url(manager_emulator, "/clusters/abc")).status_code == 405
    assert http.head(url(manager_emulator, "/workflows")).status_code == 405


def test_malformed_requests_do_not_break_the_server(manager_emulator: ManagerEmulator) -> None:
    token = manager_emulator.issue_token().encode()
    garbage = [
        b"garbage\r\n\r\n",
        b"GET /workflows HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"PUT /workflows/x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b"POST /workflows HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /workflows/%ff%fe HTTP/1.1\r\nAuthorization: Bearer " + token + b"\r\n\r\n",
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
        headers={"Authorization": f"Bearer {token.decode()}"},
        timeout=2,
    )
    assert chunked.status_code == 201 and chunked.json()["deployment_repo"] == "o/r"


def test_json_text_columns_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "manager.sqlite3"
    with ManagerEmulator(db_path=str(db)) as em:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {em.issue_token()}"
        wid = em.add_workflow({"milestones": ["build"]})
        body = {
            "milestones": ["build", "deploy"],
            "event_log": ["line 1", "line 2"],
            "workflow_step_durations": {"build": "1 minute(s)"},
            "execute_options": '{"force_build": true}',  # a string is stored verbatim
            "not_a_column": "ignored",
        }
        assert session.put(url(em, f"/workflows/{wid}"), json=body).status_code == 204

        raw = sqlite3.connect(db)
        raw.row_factory = sqlite3.Row
        row = raw.execute("SELECT * FROM workflows WHERE id = ?", (wid,)).fetchone()
        assert row["milestones"] == '["build", "deploy"]'
        assert row["event_log"] == '["line 1", "line 2"]'
        assert row["workflow_step_durations"] == '{"build": "1 minute(s)"}'
        assert row["execute_options"] == '{"force_build": true}'
        assert "not_a_column" not in row.keys()
        raw.close()

        got = session.get(url(em, f"/workflows/{wid}")).json()
        assert got["milestones"] == ["build", "deploy"]
        assert got["event_log"] == ["line 1", "line 2"]
        assert got["workflow_step_durations"] == {"build": "1 minute(s)"}
        assert got["execute_options"] == {"force_build": True}
        assert "not_a_column" not in got
        assert em.workflow_puts(wid) == [body]
        session.close()


def test_put_without_workflow_completed_resets_it(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    wid = manager_emulator.add_workflow({"milestones": ["build"]})
    target = url(manager_emulator, f"/workflows/{wid}")
    http.put(target, json={"workflow_completed": True, "workflow_error": True})
    got = http.get(target).json()
    assert got["workflow_completed"] is True and got["workflow_error"] is True
    http.put(target, json={"current_step": "build"})
    got = http.get(target).json()
    assert got["workflow_completed"] is False and got["workflow_error"] is False
    assert got["milestones"] == ["build"]  # fields a PUT omits are kept


# -- registry ------------------------------------------------------------------------------


def test_clusters_and_exchanges(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    assert (
        http.post(url(manager_emulator, "/messaging/exchanges"), json={"name": "a"}).json()["id"]
        == 1
    )
    assert (
        http.post(url(manager_emulator, "/messaging/exchanges"), json={"id": 1}).status_code == 409
    )
    for bad_id in ([1], True, {"a": 1}):
        answer = http.post(url(manager_emulator, "/messaging/exchanges"), json={"id": bad_id})
        assert answer.status_code == 400
    made = http.post(
        url(manager_emulator, "/clusters"),
        json={"etcd_token": "t1", "messaging_exchange_id": 1, "allow_docker_builds": True},
    )
    assert made.status_code == 201 and made.headers["Location"] == "/clusters/t1"
    bad = http.post(
        url(manager_emulator, "/clusters"), json={"etcd_token": "t2", "messaging_exchange_id": 9}
    )
    assert bad.status_code == 400
    manager_emulator.add_cluster("t3", "1")
    clusters = http.get(url(manager_emulator, "/clusters")).json()
    assert [(c["etcd_token"], c["messaging_exchange_id"]) for c in clusters] == [
        ("t1", 1),
        ("t3", "1"),
    ]
    for key in ("id", "etcd_token", "allow_docker_builds", "hosting_provider_id", "name"):
        assert key in clusters[0]
    only_builds = http.get(url(manager_emulator, "/clusters?allow_docker_builds=true")).json()
    assert [c["etcd_token"] for c in only_builds] == ["t1"]
    in_exchange = url(manager_emulator, "/messaging/exchanges/1/clusters")
    assert len(http.get(in_exchange).json()) == 2
    assert [
        c["etcd_token"] for c in http.get(in_exchange + "?allow_docker_builds=false").json()
    ] == ["t3"]
    assert http.get(url(manager_emulator, "/clusters/t3")).json()["etcd_token"] == "t3"
    assert http.get(url(manager_emulator, "/clusters/zz")).status_code == 404
    assert http.get(url(manager_emulator, "/messaging/exchanges/1")).json()["name"] == "a"
    assert http.get(url(manager_emulator, "/messaging/exchanges/2")).status_code == 404


def test_modules_register_and_replace(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    manager_emulator.add_exchange("7", "x")
    target = url(manager_emulator, "/messaging/exchanges/7/modules")
    body = {"hostname": "h", "type": "builder", "status": "active", "workload": []}
    first = http.post(target, json=body)
    assert first.status_code == 201 and first.headers["Location"].endswith("/modules/h")
    assert http.post(target, json={**body, "status": "inactive"}).status_code == 201
    assert http.post(target, json={**body, "type": "deployer"}).status_code == 201
    modules = http.get(target).json()
    assert sorted((m["type"], m["status"]) for m in modules) == [
        ("builder", "inactive"),
        ("deployer", "active"),
    ]
    assert http.post(target, json={"type": "builder"}).status_code == 400
    unknown = url(manager_emulator, "/messaging/exchanges/8/modules")
    assert http.post(unknown, json=body).status_code == 404
    assert http.get(unknown).status_code == 404


def test_brokers(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    manager_emulator.add_broker("b1", "1", "rabbit", failover_broker_id=None)
    manager_emulator.add_broker_connection("b1", "mq", 5672, "u", "p")
    assert [
        b["id"] for b in http.get(url(manager_emulator, "/messaging/exchanges/1/brokers")).json()
    ] == ["b1"]
    assert http.get(url(manager_emulator, "/messaging/brokers/b1")).json()["name"] == "rabbit"
    (conn,) = http.get(url(manager_emulator, "/messaging/brokers/b1/connections")).json()
    assert (conn["host"], conn["port"], conn["username"]) == ("mq", 5672, "u")
    assert http.get(url(manager_emulator, "/messaging/brokers/b2")).status_code == 404
    assert http.get(url(manager_emulator, "/messaging/brokers/b2/connections")).status_code == 404


def test_system_events_unique_within_the_hour(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    target = url(manager_emulator, "/system_events")
    event = {"unique": True, "type": "unhandled_exception", "severity": "error", "message": "m1"}
    created = http.post(target, json=event)
    assert created.status_code == 201 and created.json()["type"] == "unhandled_exception"
    assert http.post(target, json=event).status_code == 409
    assert http.post(target, json={**event, "message": "m2"}).status_code == 201
    assert http.post(target, json={**event, "unique": False}).status_code == 201
    listed = http.get(target).json()
    assert [e["message"] for e in listed] == ["m1", "m2", "m1"]
    assert manager_emulator.system_events() == listed


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


def test_keep_alive_is_fast(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    """Guards the Nagle + delayed-ACK trap: 50 keep-alive requests would take ~2 s with it."""
    target = url(manager_emulator, "/workflows")
    http.get(target)
    started = time.perf_counter()
    for _ in range(50):
        assert http.put(url(manager_emulator, "/workflows/none"), json={"a": 1}).status_code == 404
        assert http.get(target).status_code == 200
    assert time.perf_counter() - started < 1.5


# -- execute -> RabbitMQ -------------------------------------------------------------------


@pytest.fixture
def broker_queue(broker_url: str) -> Iterator[str]:
    """A unique orchestration queue name; the queue and its exchange are deleted afterwards."""
    name = f"wo_test_{uuid.uuid4().hex}"
    yield name
    with Connection(broker_url, connect_timeout=4) as conn:
        channel = conn.channel()
        channel.queue_delete(name)
        channel.exchange_delete(name)
        channel.close()


def _get_message(broker_url: str, name: str, timeout: float = 5.0) -> Any:
    with Connection(broker_url, connect_timeout=4) as conn:
        queue = orchestration_queue(name)(conn.default_channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = queue.get(no_ack=True)
            if message is not None:
                queue.declare()  # the same arguments as the worker's: RabbitMQ accepts it
                return message
            time.sleep(0.05)
    raise AssertionError(f"no message on {name}")


def test_execute_publishes_a_celery_message(broker_url: str, broker_queue: str) -> None:
    with ManagerEmulator(broker_url=broker_url, queue_name=broker_queue) as em:
        wid = em.add_workflow({"milestones": ["build"]})
        headers = {"Authorization": f"Bearer {em.issue_token()}"}
        answer = requests.post(
            url(em, f"/workflows/{wid}/execute"),
            json={"force_build": True, "deploy_messaging_exchange_id": "2"},
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["id"] == wid
        task_id = answer.json()["task_id"]
        assert em.get_workflow(wid)["execute_options"] == {
            "force_build": True,
            "build_messaging_exchange_id": None,
            "deploy_messaging_exchange_id": "2",
        }

        message = _get_message(broker_url, broker_queue)
        assert message.headers["task"] == "workflow_orchestrator.orchestrate"
        assert message.headers["id"] == task_id
        assert message.content_type == "application/json"
        assert message.delivery_info["routing_key"] == broker_queue
        args, kwargs, _embed = json.loads(message.body)
        assert args == [
            {
                "id": wid,
                "workflow_id": wid,
                "force_build": True,
                "build_messaging_exchange_id": None,
                "deploy_messaging_exchange_id": "2",
            }
        ]
        assert kwargs == {}

        # an execute without a body is fine too
        other = em.add_workflow({})
        again = requests.post(url(em, f"/workflows/{other}/execute"), headers=headers, timeout=10)
        assert again.status_code == 202
        (payload,), _, _ = json.loads(_get_message(broker_url, broker_queue).body)
        assert payload == {
            "id": other,
            "workflow_id": other,
            "force_build": None,
            "build_messaging_exchange_id": None,
            "deploy_messaging_exchange_id": None,
        }


def test_execute_refusals() -> None:
    with ManagerEmulator(broker_url=None) as em:
        headers = {"Authorization": f"Bearer {em.issue_token()}"}
        started = em.add_workflow({"current_step": "build"})
        completed = em.add_workflow({"workflow_completed": True})
        fresh = em.add_workflow({})

        def execute(wid: str) -> requests.Response:
            return requests.post(url(em, f"/workflows/{wid}/execute"), headers=headers, timeout=5)

        assert execute("missing").status_code == 404
        assert execute(started).status_code == 409
        assert execute(completed).status_code == 409
        no_broker = execute(fresh)
        assert no_broker.status_code == 503
        assert no_broker.json() == {"error": "no broker configured"}
        assert (
            requests.post(
                url(em, f"/workflows/{fresh}/execute"), headers=headers, data=b"[1]", timeout=5
            ).status_code
            == 400
        )


# -- CLI --------------------------------------------------------------------------------------


def test_cli_serves_seed_until_sigterm(tmp_path: Path) -> None:
    seed = {
        "exchanges": [{"id": 1, "name": "main"}],
        "clusters": [{"etcd_token": "t", "messaging_exchange_id": 1, "allow_docker_builds": True}],
        "modules": [{"exchange_id": 1, "type": "builder", "hostname": "b"}],
        "workflows": [{"id": "w-1", "milestones": ["build"]}],
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
        workflow = requests.get(f"{base}/workflows/w-1", headers=headers, timeout=5).json()
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
