"""The pure envelope helpers: what a replay sends back (docs/behaviour.md §11.3)."""

from __future__ import annotations

import json

import pytest

from workflow_orchestrator.envelope import RETRY_KWARGS, with_fresh_retry_budget

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def call(kwargs: dict) -> bytes:
    return json.dumps([[{"id": "wf-1"}], kwargs, EMBED]).encode()


def test_a_replay_drops_every_retry_kwarg_and_keeps_the_rest() -> None:
    body = call({"attempts": 8, "credential_retries": 2, "ahead_since": "x", "other": 1})
    args, kwargs, embed = json.loads(with_fresh_retry_budget(body, "application/json"))
    assert args == [{"id": "wf-1"}] and embed == EMBED
    assert kwargs == {"other": 1}
    assert set(RETRY_KWARGS) == {"attempts", "credential_retries", "ahead_since"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (call({}), "application/json"),  # nothing to drop: the very same bytes
        (call({"attempts": 3}), "application/x-python-serialize"),  # not JSON: untouched
        (b"\xff\xfe not json", "application/json"),
        (b'{"id": "x"}', "application/json"),  # not a Celery call
        (b'[[{"id": "x"}], "kwargs", {}]', "application/json"),
    ],
)
def test_anything_else_is_sent_back_unchanged(body: bytes, content_type: str) -> None:
    assert with_fresh_retry_budget(body, content_type) is body
