import pytest

from workflow_orchestrator.errors import InvalidRequest
from workflow_orchestrator.request import parse_request


def test_minimal_start_message_gets_workflow_id() -> None:
    assert parse_request({"id": "abc", "force_build": True}) == {
        "id": "abc",
        "force_build": True,
        "workflow_id": "abc",
    }


def test_unknown_keys_are_kept() -> None:
    assert parse_request({"id": "a", "custom": {"x": 1}})["custom"] == {"x": 1}


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ("just a string", None, "must be a JSON object, got a string"),
        ([1, 2], None, "got a list"),
        (None, None, "got null"),
        ({}, "id", "is required"),
        ({"id": None}, "id", "is required"),
        ({"id": ""}, "id", "non-empty string"),
        ({"id": 42}, "id", "got an integer"),
        (
            {"id": "a", "milestones": "build,deploy"},
            "milestones",
            "must be a list or null, got a string",
        ),
        ({"id": "a", "milestones": ["build", 3]}, "milestones", "item 1 is an integer"),
        (
            {"id": "a", "current_step": 7},
            "current_step",
            "must be a string or null, got an integer",
        ),
        ({"id": "a", "workflow_completed": "yes"}, "workflow_completed", "must be a boolean"),
        ({"id": "a", "event_log": [None]}, "event_log", "item 0 is null"),
        ({"id": "a", "notifications_config": []}, "notifications_config", "must be an object"),
        (
            {"id": "a", "workflow_step_durations": {"build": 3}},
            "workflow_step_durations",
            "'build'",
        ),
        ({"id": "a", "step_time": True}, "step_time", "got a boolean"),
        ({"id": "a", "step_time": float("nan")}, "step_time", "must be"),
        ({"id": "a", "workflow_id": "b"}, "workflow_id", "must equal id"),
        ({"id": "x" * 300}, "id", "longer than"),
    ],
)
def test_invalid_payloads_name_the_field(payload: object, field: str | None, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(payload)
    assert caught.value.field == field
    assert words in str(caught.value)
    if field:
        assert f"'{field}'" in str(caught.value)
