import pytest

from workflow_orchestrator.errors import InvalidRequest
from workflow_orchestrator.request import parse_request

WID = "5b1d7f1e-8a4e-4c1e-9a55-0c1b2c3d4e5f"


def test_minimal_start_message_gets_workflow_id() -> None:
    assert parse_request({"id": WID, "force_build": True}) == {
        "id": WID,
        "force_build": True,
        "workflow_id": WID,
    }


def test_unknown_keys_are_kept() -> None:
    assert parse_request({"id": WID, "custom": {"x": 1}})["custom"] == {"x": 1}


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
            {"id": WID, "milestones": "build,deploy"},
            "milestones",
            "must be a list or null, got a string",
        ),
        ({"id": WID, "milestones": ["build", 3]}, "milestones", "item 1 is an integer"),
        (
            {"id": WID, "current_step": 7},
            "current_step",
            "must be a string or null, got an integer",
        ),
        ({"id": WID, "workflow_completed": "yes"}, "workflow_completed", "must be a boolean"),
        ({"id": WID, "event_log": [None]}, "event_log", "item 0 is null"),
        ({"id": WID, "notifications_config": []}, "notifications_config", "must be an object"),
        (
            {"id": WID, "workflow_step_durations": {"build": 3}},
            "workflow_step_durations",
            "'build'",
        ),
        ({"id": WID, "step_time": True}, "step_time", "got a boolean"),
        ({"id": WID, "step_time": float("nan")}, "step_time", "must be"),
        ({"id": WID, "workflow_id": "b"}, "workflow_id", "must equal id"),
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


@pytest.mark.parametrize("bad", ["x", "123", "not-a-uuid-at-all", "5b1d7f1e-8a4e-4c1e-9a55"])
def test_an_id_that_is_not_a_uuid_is_invalid(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="field 'id' must be a UUID"):
        parse_request({"id": bad})


def test_an_empty_current_step_is_read_as_none() -> None:
    assert (
        parse_request({"id": "5b1d7f1e-8a4e-4c1e-9a55-0c1b2c3d4e5f", "current_step": ""})[
            "current_step"
        ]
        is None
    )
