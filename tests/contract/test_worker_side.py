"""§8, the worker side: the callbacks a Python builder/deployer uses."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import uuid

from celery import Celery
from kombu import Connection

from tests.support import REPO

from .conftest import celery_queue


def test_importing_the_worker_api_has_no_side_effects() -> None:
    """No Celery app of ours becomes current, no logging of the importer's is changed."""
    script = """
import logging, json
import celery
from celery import Celery
mine = Celery("theirs", set_as_current=True)
root = logging.getLogger()
before = (list(root.handlers), root.level, logging.getLogger("celery").level)
import workflow_orchestrator.worker_api as api
after = (list(root.handlers), root.level, logging.getLogger("celery").level)
print(json.dumps({"current": celery.current_app.main, "same_logging": before == after}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "current": "theirs",
        "same_logging": True,
    }


def test_the_callbacks_take_the_arguments_the_contract_names() -> None:
    from workflow_orchestrator import worker_api as api

    request = {"id": str(uuid.uuid4())}
    inspect.signature(api.step_completed).bind(request)
    inspect.signature(api.step_failed).bind(request, "message", "reason")
    inspect.signature(api.publish_success_notification).bind(request, "message")
    inspect.signature(api.publish_failure_notification).bind(request, "message")
    inspect.signature(api.save).bind(request)
    inspect.signature(api.register).bind("builder")
    inspect.signature(api.execute_workflow).bind(request["id"], force_build=True)


def test_step_failed_logs_reason_then_message_chats_and_reports(broker_url: str) -> None:
    """§8: `[OA][{id}] {reason}` then `[OA][{id}] {message}`, a failure chat, the report
    on the queue the request names."""
    from workflow_orchestrator.worker_api import step_failed

    suffix = uuid.uuid4().hex[:8]
    orchestration = f"wo_ct8_{suffix}_orch"
    chats = f"wo_ct8_{suffix}_chat"
    app = Celery("a-python-builder", broker=broker_url, set_as_current=False)
    app.conf.broker_url = app.conf.broker_write_url = broker_url
    wid = str(uuid.uuid4())
    request = {
        "id": wid,
        "current_step": "build",
        "event_log": ["[OA][x][r] Starting Workflow Milestone: build"],
        "orchestration_queue_name": orchestration,
        "notifications_config": {"hipchat": {"room_names": ["Deploys"]}},
    }
    try:
        step_failed(app, request, "build failed", "exit 1", hipchat_queue=chats)
        with Connection(broker_url) as conn:
            report = celery_queue(orchestration)(conn.default_channel).get(no_ack=True)
            chat = celery_queue(chats)(conn.default_channel).get(no_ack=True)
        assert report is not None and chat is not None
        assert report.headers["task"] == "workflow_orchestrator.orchestrate"
        (sent,), _, _ = report.decode()
        assert sent["workflow_error"] is True and sent["workflow_completed"] is True
        assert sent["event_log"][-2:] == [f"[OA][{wid}] exit 1", f"[OA][{wid}] build failed"]
        (note,), _, _ = chat.decode()
        assert note["is_success"] is False and note["message"] == "build failed"
        assert note["prefix"] == f"[OA][{wid}]"
        assert note["notifications"] == {"hipchat_rooms": ["Deploys"]}
    finally:
        with Connection(broker_url) as conn:
            for name in (orchestration, chats):
                channel = conn.channel()
                channel.queue_delete(name)
                channel.exchange_delete(name)
