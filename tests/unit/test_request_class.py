"""The orchestration task's request class hands its pool the body the consumer decoded.

Built the way Celery's strategy builds a protocol 2 request (raw body, `decoded=False`),
from a kombu message whose body the consumer's envelope check has decoded already.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery.worker.request import Request
from kombu import Message
from kombu.exceptions import ContentDisallowed

from tests.unit.test_factory import SETTINGS
from workflow_orchestrator.consumer import OrchestrationRequest
from workflow_orchestrator.factory import create_app

WID = "0b6f7a1e-2a34-4c55-9a0e-5f3d2c1b0a99"


def _message(body: bytes, task: str, content_type: str = "application/json") -> Message:
    headers = {"id": "c0ffee00-0000-4000-8000-000000000001", "task": task, "retries": 0}
    return Message(
        body=body,
        content_type=content_type,
        content_encoding="utf-8",
        headers=headers,
        delivery_info={"routing_key": SETTINGS.queue_name, "exchange": ""},
        properties={},
        accept=["application/json"],
    )


def _request(app: Any, message: Message, cls: type[Request] = OrchestrationRequest) -> Request:
    # What celery.worker.strategy does for a protocol 2 message.
    return cls(
        message,
        app=app,
        hostname="test@host",
        task=app.tasks[SETTINGS.orchestrate_task],
        body=message.body,
        headers=message.headers,
        decoded=False,
        utc=True,
    )


def test_the_pool_gets_the_body_the_consumer_decoded() -> None:
    app = create_app(SETTINGS)
    payload = {"id": WID, "current_step": "build", "event_log": ["a line"]}
    raw = json.dumps([[payload], {}, {"callbacks": None, "errbacks": None}]).encode()
    message = _message(raw, SETTINGS.orchestrate_task)
    decoded = message.decode()  # the envelope check, on the consumer's thread

    request = _request(app, message)

    # No content type: the pool's trace takes the body as (args, kwargs, embed) and
    # decodes nothing; the body is the very object the consumer decoded.
    assert request.content_type is None
    assert request.body is decoded
    assert request.args == [payload]
    assert request.kwargs == {}


def test_a_body_that_cannot_be_decoded_fails_as_in_stock_celery() -> None:
    """No decoded body to hand over: Celery's own request raises what it always did."""
    app = create_app(SETTINGS)
    raised = []
    for cls in (OrchestrationRequest, Request):
        message = _message(b"[[{}], {}, {}]", SETTINGS.orchestrate_task, "application/x-bad")
        with pytest.raises(ContentDisallowed) as caught:
            _request(app, message, cls)
        raised.append(str(caught.value))
    assert raised[0] == raised[1]
