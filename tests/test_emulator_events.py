"""``/system_events`` of the emulator against the real Manager's ``system_events.ex``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from workflow_orchestrator.emulator import ManagerEmulator

CONFLICT = {"errors": [{"message": "A SystemEvent already exists with that identifier"}]}


@pytest.fixture
def post(manager_emulator: ManagerEmulator) -> Iterator[Any]:
    """POST one event, returns the response."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {manager_emulator.issue_token()}"

    def send(**event: Any) -> requests.Response:
        body = {"type": "unhandled_exception", "severity": "error", **event}
        return session.post(f"{manager_emulator.url}/system_events", json=body)

    yield send
    session.close()


def test_unique_is_judged_on_type_and_data_not_message(
    manager_emulator: ManagerEmulator, post: Any
) -> None:
    data = {"component": "workflow_orchestration", "kind": "invalid_message", "message_id": "m1"}
    created = post(unique=True, data=data, message="first")
    assert created.status_code == 201 and created.content == b""
    assert created.headers["Location"] == "/system_events"
    same_data_new_message = post(unique=True, data=data, message="second")
    assert same_data_new_message.status_code == 409 and same_data_new_message.json() == CONFLICT
    assert post(unique=True, data={**data, "message_id": "m2"}, message="first").status_code == 201
    assert post(unique=True, type="other", data=data, message="first").status_code == 201
    assert post(unique=False, data=data, message="first").status_code == 201
    stored = [(e["type"], e["message"], e["data"]) for e in manager_emulator.system_events()]
    assert stored == [
        ("unhandled_exception", "first", data),
        ("unhandled_exception", "first", {**data, "message_id": "m2"}),
        ("other", "first", data),
        ("unhandled_exception", "first", data),
    ]


def test_unique_without_data_on_either_side_conflicts(post: Any) -> None:
    assert post(unique=True, message="no data").status_code == 201
    assert post(unique=True, data={"a": 1}).status_code == 409  # the stored one has none
    assert post(unique=True, type="t2", data={"a": 1}).status_code == 201
    assert post(unique=True, type="t2").status_code == 409  # this one has none


def test_unique_compares_data_strictly(post: Any) -> None:
    """Map.equal?/2 is ===: 1, 1.0 and true are three different values."""
    assert post(unique=True, data={"n": 1}).status_code == 201
    assert post(unique=True, data={"n": 1.0}).status_code == 201
    assert post(unique=True, data={"n": True}).status_code == 201
    assert post(unique=True, data={"n": 1}).status_code == 409
    assert post(unique=True, data={"n": [1, {"x": None}]}).status_code == 201
    assert post(unique=True, data={"n": [1, {"x": None}]}).status_code == 409


def test_only_json_true_turns_unique_on(post: Any) -> None:
    assert post(unique=True, data={"a": 1}).status_code == 201
    assert post(unique="true", data={"a": 1}).status_code == 201
    assert post(unique=1, data={"a": 1}).status_code == 201


def test_type_and_severity_are_required(post: Any) -> None:
    answer = post(type=None, severity="")
    assert answer.status_code == 400
    errors = answer.json()["errors"]
    assert errors[0] == {"message": "One or more fields for SystemEvent were invalid"}
    assert {next(iter(e)) for e in errors[1:]} == {"type", "severity"}
    assert post(type=5).status_code == 400


def test_listing_and_lookback(manager_emulator: ManagerEmulator, post: Any) -> None:
    post(message="m", data={"k": "v"})
    listed = requests.get(
        f"{manager_emulator.url}/system_events?lookback=0",
        headers={"Authorization": f"Bearer {manager_emulator.issue_token()}"},
        timeout=5,
    ).json()
    (event,) = listed
    assert event["data"] == {"k": "v"} and event["dismissed_at"] is None
    assert set(event) == {
        "id",
        "type",
        "message",
        "severity",
        "data",
        "inserted_at",
        "updated_at",
        "dismissed_at",
        "dismissed_by_id",
        "dismissed_reason",
        "assigned_at",
        "assignee_id",
        "assigned_by_id",
    }
    assert manager_emulator.system_events() == listed
