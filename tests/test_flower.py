"""Flower shows the orchestrator's traffic by name and identifiers, never by payload.

Real Flower (`celery -A workflow_orchestrator flower`) on loopback, configured by the
same environment as the orchestrator worker process; peers run in this process. The
events exchange is shared by everything on the broker, so only tasks of our own
workflows are looked at.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import REPO, wait_for
from tests.test_cli import SECRET, Live, live_system
from workflow_orchestrator.worker_api import execute_workflow, worker_app

ARGSREPR = re.compile(
    r"^workflow=(?P<id>[0-9a-f-]{36}) "
    r"(?:step=(?P<step>\S+) event=(?P<event>start|completed|failed|request|reevaluate|notification)"
    r"|notification=(?:chat|email))$"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Flower:
    def __init__(self, live: Live) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="wo-flower-", suffix=".log")[1])
        env = {
            **os.environ,
            **live.settings.to_env(),
            "PYTHONPATH": str(REPO),
            # Flower 2 serves its API without authentication only when told to.
            "FLOWER_UNAUTHENTICATED_API": "true",
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workflow_orchestrator",
                    "flower",
                    "--address=127.0.0.1",
                    f"--port={self.port}",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=5)

    def up(self) -> bool:
        try:
            return self.get("/healthcheck").text == "OK"
        except requests.RequestException:
            return False

    def sees_worker(self, prefix: str) -> bool:
        """Flower's event receiver has heard from the worker (its heartbeats)."""
        return f'flower_worker_online{{worker="{prefix}' in self.get("/metrics").text

    def tasks(self) -> dict[str, dict[str, Any]]:
        return self.get("/api/tasks").json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def system(broker_url: str) -> Iterator[tuple[Live, Flower]]:
    with live_system(broker_url, "flower", (0.1, 0.2)) as live:
        flower = Flower(live)
        try:
            deadline = time.monotonic() + 20
            while not flower.up():
                if flower.process.poll() is not None or time.monotonic() > deadline:
                    log = flower.log_path.read_text(errors="replace")[-1500:]
                    pytest.fail(f"Flower could not start: {log}")
                time.sleep(0.2)
            command = live.orchestrator.command()
            node = command[command.index("-n") + 1]
            wait_for(lambda: flower.sees_worker(node), 15, "Flower to hear the orchestrator")
            yield live, flower
        finally:
            flower.stop()


def test_flower_lists_our_tasks_by_name_and_identifiers_only(
    system: tuple[Live, Flower],
) -> None:
    live, flower = system
    caller = worker_app(
        "flower-test-caller",
        live.settings.celery_broker_url,
        orchestration_queue=live.settings.queue_name,
    )
    ids = {
        live.new_workflow("Org/web_docker", ["build", "deploy"]): "succeeded",
        live.new_workflow("Org/api_docker", ["config", "deploy_oa"]): "succeeded",
        live.new_workflow("Org/broken_docker", ["build", "deploy"]): "failed",
    }
    for wid in ids:
        execute_workflow(caller, wid, queue=live.settings.queue_name)
    caller.close()
    for wid in ids:
        wait_for(
            lambda wid=wid: (live.emulator.get_workflow(wid) or {}).get("workflow_completed"),
            30,
            f"workflow {wid} to finish",
        )

    def ours() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {wid: [] for wid in ids}
        for task in flower.tasks().values():
            match = ARGSREPR.match(str(task.get("args")))
            if match and match["id"] in found:
                found[match["id"]].append(task)
        return found

    def settled() -> dict[str, list[dict[str, Any]]] | None:
        found = ours()
        for tasks in found.values():
            orchestrations = [t for t in tasks if t["name"] == live.settings.orchestrate_task]
            # start + one report per worker step (the failing one reports once)
            if len(orchestrations) < 2 or any(t["state"] != "SUCCESS" for t in orchestrations):
                return None
        return found

    found = wait_for(settled, 20, "Flower to show every orchestration as SUCCESS")
    for wid, outcome in ids.items():
        tasks = found[wid]
        names = {t["name"] for t in tasks}
        assert {
            live.settings.orchestrate_task,
            live.settings.builder_task,
            live.settings.hipchat_task,
        } <= names, names
        starts = [t for t in tasks if t["args"].endswith("event=start")]
        assert len(starts) == 1 and starts[0]["state"] == "SUCCESS"
        builds = [t for t in tasks if t["name"] == live.settings.builder_task]
        assert [t["args"] for t in builds] in (
            [f"workflow={wid} step=build event=request"],
            [f"workflow={wid} step=config event=request"],
        )
        if outcome == "failed":
            assert any(t["args"] == f"workflow={wid} step=build event=failed" for t in tasks)
        else:
            requested = {t["name"] for t in tasks if t["args"].endswith("event=request")}
            assert requested & {live.settings.deployer_task, live.settings.deploy_oa_task}

    # Nothing of a payload anywhere: every task naming our workflows is identifiers only,
    # and the client secret appears nowhere in the whole answer.
    raw = flower.get("/api/tasks").text
    assert SECRET not in raw
    for wid in ids:
        for task in flower.tasks().values():
            if wid in str(task.get("args")) or wid in str(task.get("kwargs")):
                assert ARGSREPR.match(task["args"]), task["args"]
                assert "event_log" not in str(task.get("kwargs"))
