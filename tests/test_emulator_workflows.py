"""``/workflows`` of the emulator against the real Manager's behaviour, over real HTTP.

Each expectation is read from OpenAperture/manager (``web/controllers/workflows.ex``, the
workflows migrations, Ecto 1.0's casts, Timex 0.13's RFC 1123 parser), not from what the
orchestrator's client sends. The execute tests publish to the real local RabbitMQ.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kombu import Connection

from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.queues import orchestration_queue

#: The workflows table of the real Manager, column by column, from its two migrations.
REAL_COLUMNS = [
    "id",
    "deployment_repo",
    "deployment_repo_git_ref",
    "source_repo",
    "source_repo_git_ref",
    "source_commit_hash",
    "milestones",
    "current_step",
    "elapsed_step_time",
    "elapsed_workflow_time",
    "workflow_duration",
    "workflow_step_durations",
    "workflow_error",
    "workflow_completed",
    "event_log",
    "app_name",
    "scheduled_start_time",
    "execute_options",
    "inserted_at",
    "updated_at",
]
#: ``@workflow_sendable_fields``: what every GET renders.
RENDERED = {
    "id",
    "deployment_repo",
    "deployment_repo_git_ref",
    "source_repo",
    "source_repo_git_ref",
    "source_commit_hash",
    "milestones",
    "current_step",
    "elapsed_step_time",
    "elapsed_workflow_time",
    "workflow_duration",
    "workflow_step_durations",
    "workflow_error",
    "workflow_completed",
    "event_log",
    "inserted_at",
    "updated_at",
    "scheduled_start_time",
    "execute_options",
}
#: varchar sizes of the migration.
SIZED = {
    "deployment_repo": 128,
    "deployment_repo_git_ref": 256,
    "source_repo": 128,
    "source_repo_git_ref": 256,
    "source_commit_hash": 256,
    "current_step": 128,
    "elapsed_step_time": 128,
    "elapsed_workflow_time": 128,
    "workflow_duration": 128,
}


@pytest.fixture
def http(manager_emulator: ManagerEmulator) -> Iterator[requests.Session]:
    """A keep-alive session that carries a valid bearer token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {manager_emulator.issue_token()}"
    yield session
    session.close()


def at(em: ManagerEmulator, path: str) -> str:
    return em.url + path


# -- POST ---------------------------------------------------------------------------------


def test_post_makes_its_own_uuid_and_answers_201_empty_with_a_location(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    given = str(uuid.uuid4())
    created = http.post(at(manager_emulator, "/workflows"), json={"id": given, "milestones": []})
    assert created.status_code == 201 and created.content == b""
    location = created.headers["Location"]
    assert location.startswith("/workflows/")
    new_id = location.rsplit("/", 1)[1]
    assert str(uuid.UUID(new_id)) == new_id and new_id != given
    assert http.get(at(manager_emulator, f"/workflows/{given}")).status_code == 404
    stored = http.get(at(manager_emulator, location)).json()
    assert set(stored) == RENDERED and stored["id"] == new_id
    assert stored["workflow_completed"] is False and stored["workflow_error"] is None


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (["deploy"], ["config", "deploy"]),
        ([], ["config"]),
        (["build", "deploy"], ["build", "deploy"]),
        (["config", "deploy"], ["config", "deploy"]),
        (["deploy", "build"], ["deploy", "build"]),
        (None, None),
    ],
)
def test_post_puts_config_first_when_neither_build_nor_config_is_listed(
    manager_emulator: ManagerEmulator, http: requests.Session, sent: Any, stored: Any
) -> None:
    created = http.post(at(manager_emulator, "/workflows"), json={"milestones": sent})
    assert http.get(at(manager_emulator, created.headers["Location"])).json()["milestones"] == (
        stored
    )


def test_post_trims_the_repos_and_refuses_wrong_types(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    created = http.post(
        at(manager_emulator, "/workflows"),
        json={"deployment_repo": "  Org/app_docker/ ", "source_repo": "Org/app\\\\"},
    )
    stored = http.get(at(manager_emulator, created.headers["Location"])).json()
    assert stored["deployment_repo"] == "Org/app_docker" and stored["source_repo"] == "Org/app"
    bad = http.post(at(manager_emulator, "/workflows"), json={"current_step": 3})
    assert bad.status_code == 400 and bad.json() == {"current_step": "is invalid"}
    assert http.post(
        at(manager_emulator, "/workflows"), json={"milestones": "build"}
    ).status_code == (500)


# -- PUT ----------------------------------------------------------------------------------


def test_put_leaves_omitted_fields_and_resets_only_workflow_completed(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    wid = manager_emulator.add_workflow(
        {"milestones": ["build"], "workflow_error": True, "workflow_completed": True}
    )
    target = at(manager_emulator, f"/workflows/{wid}")
    put = http.put(target, json={"current_step": "build"})
    assert put.status_code == 204 and put.content == b""
    assert put.headers["Location"] == f"/workflows/{wid}"
    got = http.get(target).json()
    assert got["workflow_error"] is True  # omitted: kept
    assert got["workflow_completed"] is False  # omitted: the one field that defaults
    assert got["milestones"] == ["build"] and got["current_step"] == "build"


@pytest.mark.parametrize("sent", [b"", b'{"event_log": "[]", "workflow'], ids=["none", "half"])
def test_a_put_whose_client_dies_inside_the_body_changes_nothing(
    manager_emulator: ManagerEmulator, http: requests.Session, sent: bytes
) -> None:
    """A worker killed between the headers and the end of its body: Plug's read_body fails
    and the action never runs, so nothing is stored (not even workflow_completed=false)."""
    wid = manager_emulator.add_workflow(
        {"milestones": ["build"], "workflow_completed": True, "event_log": ["a line"]}
    )
    body = json.dumps({"event_log": [], "workflow_completed": False}).encode()
    head = (
        f"PUT /workflows/{wid} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {manager_emulator.issue_token()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", manager_emulator.port), timeout=5) as s:
        s.sendall(head + sent)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64)
    assert answer == b""  # no reply: the request was never served
    got = http.get(at(manager_emulator, f"/workflows/{wid}")).json()
    assert got["workflow_completed"] is True and got["event_log"] == ["a line"]
    assert manager_emulator.workflow_puts(wid) == []


def test_put_with_null_sets_null_and_workflow_error_can_be_null(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    wid = manager_emulator.add_workflow({"workflow_error": False, "event_log": ["a"]})
    target = at(manager_emulator, f"/workflows/{wid}")
    assert http.put(target, json={"workflow_error": None, "event_log": None}).status_code == 204
    got = http.get(target).json()
    assert got["workflow_error"] is None and got["event_log"] is None
    assert http.put(target, json={"workflow_completed": None}).status_code == 204
    assert http.get(target).json()["workflow_completed"] is False  # null counts as omitted


def test_put_casts_like_ecto(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    wid = manager_emulator.add_workflow({"source_repo": "o/r"})
    target = at(manager_emulator, f"/workflows/{wid}")
    bad = http.put(target, json={"deployment_repo": 12, "workflow_error": "yes"})
    assert bad.status_code == 400
    assert bad.json() == {"deployment_repo": "is invalid", "workflow_error": "is invalid"}
    assert http.put(target, json={"workflow_error": "1", "workflow_completed": "true"}).ok
    got = http.get(target).json()
    assert got["workflow_error"] is True and got["workflow_completed"] is True
    assert http.put(target, json={"workflow_error": 1}).status_code == 400  # not a boolean
    assert http.put(target, json={"id": str(uuid.uuid4()), "app_name": "x"}).status_code == 204
    assert http.get(target).json()["id"] == wid  # the path's id wins; app_name is not cast


@pytest.mark.parametrize(("field", "size"), sorted(SIZED.items()))
def test_put_longer_than_the_column_is_500_and_changes_nothing(
    manager_emulator: ManagerEmulator, http: requests.Session, field: str, size: int
) -> None:
    wid = manager_emulator.add_workflow({})
    target = at(manager_emulator, f"/workflows/{wid}")
    assert http.put(target, json={field: "x" * size}).status_code == 204
    refused = http.put(target, json={field: "é" * (size + 1), "workflow_error": True})
    assert refused.status_code == 500 and refused.content == b""
    got = http.get(target).json()
    assert got[field] == "x" * size and got["workflow_error"] is None
    created = http.post(at(manager_emulator, "/workflows"), json={field: "y" * (size + 1)})
    assert created.status_code == 500


@pytest.mark.parametrize(
    ("sent", "rendered"),
    [
        ("Tue, 05 Mar 2013 23:25:19 GMT", "Tue, 05 Mar 2013 23:25:19 UTC"),
        ("Tue, 05 Mar 2013 23:25:19 UTC", "Tue, 05 Mar 2013 23:25:19 UTC"),
        # Timex drops the zone: the wall clock is kept and rendered as UTC.
        ("Tue, 05 Mar 2013 23:25:19 EST", "Tue, 05 Mar 2013 23:25:19 UTC"),
        # The weekday is not checked against the date; the rendered one is recomputed.
        ("Mon, 05 Mar 2013 23:25:19 GMT", "Tue, 05 Mar 2013 23:25:19 UTC"),
    ],
)
def test_put_scheduled_start_time_is_stored_as_a_datetime(
    manager_emulator: ManagerEmulator, http: requests.Session, sent: str, rendered: str
) -> None:
    wid = manager_emulator.add_workflow({})
    target = at(manager_emulator, f"/workflows/{wid}")
    assert http.put(target, json={"scheduled_start_time": sent}).status_code == 204
    assert http.get(target).json()["scheduled_start_time"] == rendered


@pytest.mark.parametrize(
    "sent",
    [
        "Tue, 05 Mar 2013 23:25:19 +0000",  # RFC 1123 numeric zone: not {Zname}
        "2013-03-05T23:25:19Z",
        "Tue, 30 Feb 2013 23:25:19 GMT",
        "Tue, 05 Mar 2013 23:25:19 XYZ",
        "",
        1362525919,
    ],
)
def test_put_scheduled_start_time_timex_cannot_parse_is_500(
    manager_emulator: ManagerEmulator, http: requests.Session, sent: Any
) -> None:
    wid = manager_emulator.add_workflow({"scheduled_start_time": "Tue, 05 Mar 2013 23:25:19 GMT"})
    target = at(manager_emulator, f"/workflows/{wid}")
    assert http.put(
        target, json={"scheduled_start_time": sent, "source_repo": "x"}
    ).status_code == (500)
    got = http.get(target).json()
    assert got["scheduled_start_time"] == "Tue, 05 Mar 2013 23:25:19 UTC"
    assert got["source_repo"] is None
    assert (
        http.post(at(manager_emulator, "/workflows"), json={"scheduled_start_time": sent})
    ).status_code == 500


# -- ids and 404s ------------------------------------------------------------------------------


def test_a_non_uuid_id_is_500_on_get_and_cast_away_to_404_elsewhere(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """show/2 hands the raw id to Repo.get (Ecto raises); update, destroy and execute
    cast it first (Ecto.UUID.cast: shape only), so only a UUID-shaped non-hex id raises."""
    unshaped = ["nope", "0000", "a b", str(uuid.uuid4()).replace("-", "")]
    shaped = ["zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"]
    for wid in unshaped + shaped:
        assert http.get(at(manager_emulator, f"/workflows/{wid}")).status_code == 500, wid
    for wid in unshaped:
        assert http.put(at(manager_emulator, f"/workflows/{wid}"), json={}).status_code == 404
        assert http.delete(at(manager_emulator, f"/workflows/{wid}")).status_code == 404
        assert http.post(at(manager_emulator, f"/workflows/{wid}/execute")).status_code == 404
    for wid in shaped:
        assert http.put(at(manager_emulator, f"/workflows/{wid}"), json={}).status_code == 500
        assert http.delete(at(manager_emulator, f"/workflows/{wid}")).status_code == 500
        assert http.post(at(manager_emulator, f"/workflows/{wid}/execute")).status_code == 500


def test_an_upper_case_uuid_finds_the_workflow(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    wid = manager_emulator.add_workflow({})
    got = http.get(at(manager_emulator, f"/workflows/{wid.upper()}"))
    assert got.status_code == 200 and got.json()["id"] == wid


def test_an_unknown_workflow_is_a_404_with_an_empty_body(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    target = at(manager_emulator, f"/workflows/{uuid.uuid4()}")
    for answer in (
        http.get(target),
        http.put(target, json={}),
        http.delete(target),
        http.post(target + "/execute"),
    ):
        assert answer.status_code == 404 and answer.content == b""


def test_delete_then_everything_is_404(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    wid = manager_emulator.add_workflow({})
    target = at(manager_emulator, f"/workflows/{wid}")
    deleted = http.delete(target)
    assert deleted.status_code == 204 and deleted.content == b""
    assert http.get(target).status_code == 404
    assert http.put(target, json={}).status_code == 404


# -- storage ---------------------------------------------------------------------------------


def test_the_table_is_the_real_one_with_json_text_columns(tmp_path: Path) -> None:
    db = tmp_path / "manager.sqlite3"
    with ManagerEmulator(db_path=str(db)) as em:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {em.issue_token()}"
        wid = em.add_workflow({"milestones": ["build"]})
        body = {
            "milestones": ["build", "deploy"],
            "event_log": ["line 1", "ligne 2 é"],
            "workflow_step_durations": {"deploy": "2 second(s)", "build": "1 minute(s)"},
            "execute_options": '{"force_build": true}',  # a string is JSON-encoded too
            "not_a_column": "ignored",
        }
        assert session.put(f"{em.url}/workflows/{wid}", json=body).status_code == 204

        raw = sqlite3.connect(db)
        raw.row_factory = sqlite3.Row
        assert [c[1] for c in raw.execute("PRAGMA table_info(workflows)")] == REAL_COLUMNS
        row = raw.execute("SELECT * FROM workflows WHERE id = ?", (wid,)).fetchone()
        assert row["milestones"] == '["build","deploy"]'  # what Poison.encode! writes
        assert row["event_log"] == '["line 1","ligne 2 é"]'
        assert row["workflow_step_durations"] == '{"build":"1 minute(s)","deploy":"2 second(s)"}'
        assert row["execute_options"] == '"{\\"force_build\\": true}"'
        raw.close()

        got = session.get(f"{em.url}/workflows/{wid}").json()
        assert got["milestones"] == ["build", "deploy"]
        assert got["workflow_step_durations"] == {"build": "1 minute(s)", "deploy": "2 second(s)"}
        assert got["execute_options"] == '{"force_build": true}'  # back as the string sent
        assert set(got) == RENDERED
        assert em.workflow_puts(wid) == [body]
        session.close()


def test_every_stored_field_is_rendered_even_if_no_client_sends_it(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """The columns are the Manager's, not the orchestrator client's field list."""
    fields = {
        "deployment_repo": "o/r_docker",
        "deployment_repo_git_ref": "master",
        "source_repo": "o/r",
        "source_repo_git_ref": "main",
        "source_commit_hash": "abc",
        "milestones": ["build"],
        "current_step": "build",
        "elapsed_step_time": "1 second(s)",
        "elapsed_workflow_time": "2 second(s)",
        "workflow_duration": "3 second(s)",
        "workflow_step_durations": {"build": "1 second(s)"},
        "workflow_error": False,
        "workflow_completed": True,
        "event_log": ["x"],
        "scheduled_start_time": "Tue, 05 Mar 2013 23:25:19 UTC",
        "execute_options": {"force_build": True},
    }
    wid = manager_emulator.add_workflow(fields)
    got = http.get(at(manager_emulator, f"/workflows/{wid}")).json()
    assert {k: got[k] for k in fields} == fields


def test_text_that_does_not_decode_makes_the_get_500(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """Poison.decode! raises on it; seeding raw column text is how a test gets there."""
    wid = manager_emulator.add_workflow({"milestones": "not json ["})
    assert http.get(at(manager_emulator, f"/workflows/{wid}")).status_code == 500


def test_list_with_lookback_and_repo_filters(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    a = manager_emulator.add_workflow({"deployment_repo": "o/a_docker"})
    b = manager_emulator.add_workflow({"deployment_repo": "o/b_docker"})

    def ids(query: str) -> list[str]:
        return [w["id"] for w in http.get(at(manager_emulator, "/workflows" + query)).json()]

    assert ids("") == [a, b] and ids("?lookback=0") == [a, b] and ids("?lookback=1h") == [a, b]
    assert ids("?deployment_repo=o/b_docker") == [b]
    assert ids("?source_repo=o/a") == [a]
    assert http.get(at(manager_emulator, "/workflows?lookback=soon")).status_code == 500


def test_seeding_refuses_what_the_real_table_cannot_hold(manager_emulator: ManagerEmulator) -> None:
    for fields in (
        {"id": "w-1"},
        {"source_repo": "x" * 129},
        {"workflow_error": "maybe"},
        {"scheduled_start_time": "tomorrow"},
    ):
        with pytest.raises(ValueError):
            manager_emulator.add_workflow(fields)


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
        # Declared as the orchestrator declares it: RabbitMQ accepts it only if the
        # emulator declared the queue with the same function (same arguments).
        queue.declare()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = queue.get(no_ack=True)
            if message is not None:
                return message
            time.sleep(0.05)
    raise AssertionError(f"no message on {name}")


def _execute(em: ManagerEmulator, wid: str, body: Any = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {em.issue_token()}"}
    return requests.post(
        f"{em.url}/workflows/{wid}/execute", json=body, headers=headers, timeout=10
    )


def test_execute_publishes_the_whole_workflow_and_the_managers_routing_ids(
    broker_url: str,
    broker_queue: str,
) -> None:
    with ManagerEmulator(
        broker_url=broker_url, queue_name=broker_queue, exchange_id="9", broker_id="4"
    ) as em:
        wid = em.add_workflow(
            {
                "deployment_repo": "o/r_docker",
                "deployment_repo_git_ref": "master",
                "source_repo": "o/r",
                "source_repo_git_ref": "main",
                "source_commit_hash": "abc",
                "milestones": ["build", "deploy"],
                "workflow_step_durations": {},
                "event_log": ["seeded"],
                "scheduled_start_time": "Tue, 05 Mar 2013 23:25:19 GMT",
            }
        )
        answer = _execute(
            em,
            wid,
            {
                "force_build": True,
                "build_messaging_exchange_id": "7abc",  # Integer.parse: 7
                "deploy_messaging_exchange_id": 2,
                "notifications_config": {"ignored": True},
            },
        )
        assert answer.status_code == 202 and answer.content == b""
        assert answer.headers["Location"] == f"/workflows/{wid}"

        message = _get_message(broker_url, broker_queue)
        assert message.headers["task"] == "workflow_orchestrator.orchestrate"
        assert message.content_type == "application/json"
        (payload,), kwargs, _embed = json.loads(message.body)
        assert kwargs == {}
        options = {
            "force_build": True,
            "build_messaging_exchange_id": 7,
            "deploy_messaging_exchange_id": 2,
        }
        assert payload == {
            "id": wid,
            "workflow_id": None,
            "deployment_repo": "o/r_docker",
            "deployment_repo_git_ref": "master",
            "source_repo": "o/r",
            "source_repo_git_ref": "main",
            "source_commit_hash": "abc",
            "milestones": ["build", "deploy"],
            "current_step": None,
            "elapsed_step_time": None,
            "elapsed_workflow_time": None,
            "workflow_duration": None,
            "workflow_step_durations": {},
            "workflow_error": None,
            "workflow_completed": False,
            "workflow_start_time": None,
            "step_time": None,
            "event_log": ["seeded"],
            "scheduled_start_time": "Tue, 05 Mar 2013 23:25:19 UTC",
            "execute_options": options,
            **options,
            "orchestration_queue_name": broker_queue,
            "workflow_orchestration_exchange_id": "9",
            "workflow_orchestration_broker_id": "4",
            "notifications_exchange_id": "9",
            "notifications_broker_id": "4",
            "docker_build_etcd_token": None,
            "etcd_token": None,
            "deployable_units": None,
            "notifications_config": None,
            "fleet_config": None,
        }
        # The real Manager saves the options through a :string cast of a map: refused.
        assert em.get_workflow(wid)["execute_options"] is None


@pytest.mark.parametrize(
    ("sent", "published"),
    [("12", 12), ("-3", -3), ("+4", 4), (5.9, 5), ("east", None), (True, None), ("", None)],
)
def test_execute_turns_exchange_overrides_into_integers(
    broker_url: str, broker_queue: str, sent: Any, published: Any
) -> None:
    with ManagerEmulator(broker_url=broker_url, queue_name=broker_queue) as em:
        wid = em.add_workflow({})
        assert _execute(em, wid, {"deploy_messaging_exchange_id": sent}).status_code == 202
        (payload,), _, _ = json.loads(_get_message(broker_url, broker_queue).body)
        assert payload["deploy_messaging_exchange_id"] == published
        assert payload["execute_options"]["deploy_messaging_exchange_id"] == published
        assert payload["build_messaging_exchange_id"] is None
        assert payload["force_build"] is None


def test_stored_execute_options_win_over_the_request(broker_url: str, broker_queue: str) -> None:
    with ManagerEmulator(broker_url=broker_url, queue_name=broker_queue) as em:
        stored = {"force_build": False, "deploy_messaging_exchange_id": 3}
        wid = em.add_workflow({"execute_options": stored})
        assert _execute(em, wid, {"force_build": True, "deploy_messaging_exchange_id": 8}).ok
        (payload,), _, _ = json.loads(_get_message(broker_url, broker_queue).body)
        assert payload["force_build"] is False
        assert payload["deploy_messaging_exchange_id"] == 3
        assert payload["build_messaging_exchange_id"] is None
        assert payload["execute_options"] == stored


def test_execute_refusals_are_plain_text_409s() -> None:
    with ManagerEmulator(broker_url=None) as em:
        for fields, text in [
            ({"current_step": "build"}, "Workflow has already been started"),
            ({"current_step": ""}, "Workflow has already been started"),  # saves write ""
            ({"workflow_completed": True}, "Workflow has already completed"),
        ]:
            answer = _execute(em, em.add_workflow(fields))
            assert answer.status_code == 409 and answer.text == text
            assert answer.headers["Content-Type"].startswith("text/plain")
        bad = _execute(em, em.add_workflow({}), {"build_messaging_exchange_id": [1]})
        assert bad.status_code == 500  # to_string/1 of a list raises


def test_execute_answers_202_even_when_the_publish_fails(caplog: Any) -> None:
    """The real Manager publishes from a GenServer cast: the caller never hears of it."""
    broker = "amqp://someone:hunter2secret@127.0.0.1:1//"
    with ManagerEmulator(broker_url=broker) as em:
        wid = em.add_workflow({})
        with caplog.at_level("WARNING", logger="workflow_orchestrator.emulator"):
            answer = _execute(em, wid)
        assert answer.status_code == 202 and answer.content == b""
        assert f"could not enqueue workflow {wid}" in caplog.text
        assert "hunter2secret" not in caplog.text
