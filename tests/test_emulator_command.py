"""The `workflow-orchestrator-manager-emulator` command as a user runs it, and the
shipped examples doing what the README promises.

Every process here is real: the emulator serving `examples/manager-seed.json` over
HTTP, `create-workflow` posting to it with a token, and (last test) the orchestrator,
the example builder and the example deployer as `celery worker` processes on RabbitMQ,
with the example notifications worker, driven by `workflow-orchestrator execute` and
`watch`. Queue names are unique to the
run, on the session's own RabbitMQ virtual host, and deleted afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from kombu import Connection

from tests.support import (
    REPO,
    OrchestratorProcess,
    WorkerProcess,
    delete_test_queues,
    system_settings,
    wait_for,
)

SECRET = f"emulator-cmd-{uuid.uuid4().hex}"
SEED = REPO / "examples" / "manager-seed.json"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Settings a developer's shell may hold; the tests give their own or none.
OWN_SETTINGS = ("MANAGER_URL", "OAUTH_", "CELERY_BROKER_URL", "MANAGER_EMULATOR_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_SETTINGS)}
    return {**env, "PYTHONPATH": str(REPO), **extra}


@dataclass
class Emulator:
    process: subprocess.Popen[str]
    url: str

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    def get(self, path: str) -> Any:
        token = requests.post(
            self.token_url,
            json={
                "grant_type": "client_credentials",
                "client_id": "orchestrator",
                "client_secret": SECRET,
            },
            timeout=5,
        ).json()["access_token"]
        answer = requests.get(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        answer.raise_for_status()
        return answer.json()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """`workflow-orchestrator-manager-emulator --seed examples/manager-seed.json`."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workflow_orchestrator.emulator",
            "--port",
            "0",
            "--seed",
            str(SEED),
        ],
        env=clean_env(MANAGER_EMULATOR_CLIENT_SECRET=SECRET),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert found, line + process.stderr.read()  # type: ignore[union-attr]
        yield Emulator(process, found.group(1))
    finally:
        process.terminate()
        process.wait(timeout=10)


def create_workflow(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workflow_orchestrator.emulator", "create-workflow", *args],
        env=env or clean_env(OAUTH_CLIENT_SECRET=SECRET),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_example_seed_has_what_a_build_and_deploy_needs(emulator: Emulator) -> None:
    assert emulator.get("/messaging/exchanges/1")["name"] == "example"
    types = sorted(m["type"] for m in emulator.get("/messaging/exchanges/1/modules"))
    assert types == ["builder", "deployer"]
    builds = emulator.get("/messaging/exchanges/1/clusters?allow_docker_builds=true")
    assert [c["etcd_token"] for c in builds] == ["example-build-cluster"]
    assert emulator.get("/clusters/example-deploy-cluster")["messaging_exchange_id"] == 1


def test_create_workflow_prints_the_id_of_a_stored_workflow(emulator: Emulator) -> None:
    result = create_workflow(
        "--url", emulator.url, "--repo", "acme/web_docker", "--ref", "v2", "--milestones",
        "build, deploy",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    workflow_id = result.stdout.strip()
    assert UUID.match(workflow_id), result.stdout
    stored = emulator.get(f"/workflows/{workflow_id}")
    assert stored["deployment_repo"] == "acme/web_docker"
    assert stored["deployment_repo_git_ref"] == "v2"
    assert stored["milestones"] == ["build", "deploy"]
    assert stored["current_step"] is None
    assert stored["workflow_completed"] is False


def test_create_workflow_reads_a_file_and_the_settings_of_a_dot_env(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Run where the orchestrator's .env is, it needs no option but the workflow's."""
    (tmp_path / ".env").write_text(
        f"MANAGER_URL={emulator.url}\nOAUTH_LOGIN_URL={emulator.token_url}\n"
        f"OAUTH_CLIENT_ID=orchestrator\nOAUTH_CLIENT_SECRET={SECRET}\n"
    )
    example = json.loads((REPO / "examples" / "workflow.json").read_text())
    result = create_workflow(
        "--file", str(REPO / "examples" / "workflow.json"), "--repo", "acme/api_docker",
        cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stored = emulator.get(f"/workflows/{result.stdout.strip()}")
    assert stored["deployment_repo"] == "acme/api_docker"  # the option wins over the file
    assert stored["milestones"] == example["milestones"]
    assert stored["source_repo"] == example["source_repo"]


def test_create_workflow_errors_are_one_line_without_the_secret(emulator: Emulator) -> None:
    wrong = f"wrong-{SECRET}"
    refused = create_workflow(
        "--url", emulator.url, "--milestones", "build",
        env=clean_env(OAUTH_CLIENT_SECRET=wrong),
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1
    assert "401" in refused.stderr and "OAUTH_CLIENT_SECRET" in refused.stderr
    assert "is the emulator up" not in refused.stderr  # it is up; the secret is wrong
    assert wrong not in refused.stderr and SECRET not in refused.stderr

    no_milestones = create_workflow("--url", emulator.url, "--repo", "acme/web_docker")
    assert no_milestones.returncode == 2
    assert "--milestones" in no_milestones.stderr

    down = create_workflow("--url", "http://127.0.0.1:9", "--milestones", "build")
    assert down.returncode == 2
    assert "is the emulator up at http://127.0.0.1:9?" in down.stderr


# -- the README's one-host walk-through, with the shipped examples --------------------


class ExampleWorker(WorkerProcess):
    """`celery -A examples.<module> worker -Q ...`, as the README starts it."""

    def __init__(self, module: str, env: dict[str, str], queues: list[str]) -> None:
        super().__init__(env, name=module, queues=queues, concurrency=2)
        self.app_module = f"examples.{module}"


@pytest.mark.timeout(120)
def test_the_example_builder_and_deployer_run_a_build_and_deploy_workflow(
    emulator: Emulator, broker_url: str
) -> None:
    with Connection(broker_url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)
    suffix = uuid.uuid4().hex[:8]
    settings = system_settings(
        SimpleNamespace(url=emulator.url, token_url=emulator.token_url),
        secret=SECRET,
        prefix=f"wo_examples_{suffix}",
        broker_url=broker_url,
        hostname=f"examples-orchestrator-{suffix}",
    )
    env = settings.to_env()
    peers_env = {
        "CELERY_BROKER_URL": broker_url,
        "BUILDER_QUEUE": settings.builder_queue,
        "DEPLOYER_QUEUE": settings.deployer_queue,
        "DEPLOY_OA_QUEUE": settings.deploy_oa_queue,
        "HIPCHAT_QUEUE": settings.hipchat_queue,
        "EMAIL_QUEUE": settings.email_queue,
    }  # no ETCD_TOKEN: the builder's default must match the example seed
    processes = [
        OrchestratorProcess(env, name="examples-orchestrator"),
        ExampleWorker("builder_worker", peers_env, [settings.builder_queue]),
        ExampleWorker(
            "deployer_worker", peers_env, [settings.deployer_queue, settings.deploy_oa_queue]
        ),
        ExampleWorker(
            "notifications_worker", peers_env, [settings.hipchat_queue, settings.email_queue]
        ),
    ]
    cli_env = clean_env(**env)
    try:
        for process in processes:
            process.start()
        for process in processes:
            wait_for(
                lambda p=process: "ready." in p.log() or not p.alive(), 60, f"{process.name} ready"
            )
            assert process.alive(), process.log()
        created = create_workflow(
            "--file", str(REPO / "examples" / "workflow.json"), "--url", emulator.url
        )
        assert created.returncode == 0, created.stderr
        workflow_id = created.stdout.strip()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "workflow_orchestrator.cli", *args],
                env=cli_env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=90,
            )

        executed = cli("execute", workflow_id)
        assert executed.returncode == 0, executed.stderr
        watched = cli("watch", workflow_id, "--interval", "0.2", "--timeout", "60")
        logs = "\n".join(p.log() for p in processes)
        assert watched.returncode == 0, watched.stdout + watched.stderr + logs
        assert f"Workflow {workflow_id} succeeded in " in watched.stdout
        stored = emulator.get(f"/workflows/{workflow_id}")
        assert stored["workflow_completed"] is True and stored["workflow_error"] is False
        assert set(stored["workflow_step_durations"]) == {"build", "deploy"}
        events = "\n".join(stored["event_log"])
        assert "Dispatching a build request to exchange 1, docker build cluster " in events
        assert "completed the build of acme/web_docker" in events
        assert (
            "Dispatching a deploy request to exchange 1, deployment cluster "
            "example-deploy-cluster..." in events
        )
        assert "completed the deploy of acme/web_docker to example-deploy-cluster" in events
        notifier = processes[-1]
        wait_for(
            lambda: f"e-mail to dev@example.com: SUCCEEDED [OA][{workflow_id}]" in notifier.log(),
            30,
            "the completion e-mail at the example notifications worker",
        )
        assert "Workflow completed in " in notifier.log()  # the chat lines too
    finally:
        for process in processes:
            process.stop()
        delete_test_queues(broker_url, settings)
