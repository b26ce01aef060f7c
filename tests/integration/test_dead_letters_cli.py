"""`workflow-orchestrator dead-letters`: list the error queue, replay what an operator
fixed (CONTRACT 11.3), against the real worker, broker and emulator."""

from __future__ import annotations

import uuid

from click.testing import CliRunner
from kombu import Queue

from tests.support import wait_for
from workflow_orchestrator.cli import cli
from workflow_orchestrator.dead_letters import list_dead_letters
from workflow_orchestrator.locking import locks_from_settings

from .conftest import System


def test_an_unknown_workflow_replayed_once_it_exists_completes(system: System) -> None:
    system.dead_letters()  # start from an empty error queue
    settings = system.settings
    env = settings.to_env()
    runner = CliRunner()
    workflow_id = str(uuid.uuid4())
    system.start(workflow_id)

    def held() -> list:
        return list_dead_letters(settings.celery_broker_url, settings.error_queue_name)

    wait_for(lambda: any(v.workflow_id == workflow_id for v in held()), what="the dead letter")
    listed = runner.invoke(cli, ["dead-letters"], env=env)
    assert listed.exit_code == 0, listed.output
    (line,) = [x for x in listed.output.splitlines() if workflow_id in x]
    assert "does not exist in the Manager" in line and line.strip().startswith("20")
    assert len(held()) == 1  # listing takes nothing

    usage = runner.invoke(cli, ["dead-letters", "replay"], env=env)
    assert usage.exit_code == 2 and "--id WORKFLOW or --all" in usage.output
    other = runner.invoke(cli, ["dead-letters", "replay", "--id", str(uuid.uuid4())], env=env)
    assert other.exit_code == 1 and "nothing replayed" in other.output
    assert len(held()) == 1

    system.emulator.add_workflow(
        {"id": workflow_id, "deployment_repo": "Test-Org/app_docker", "milestones": ["build"]}
    )
    replayed = runner.invoke(cli, ["dead-letters", "replay", "--id", workflow_id], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 message(s)" in replayed.output
    done = system.wait_completed(workflow_id)
    assert done["workflow_error"] is False
    assert held() == []


def test_a_replayed_message_that_had_given_up_gets_its_retries_again(system: System) -> None:
    """A message set aside after MAX_RETRIES carries its retry count; the replay drops
    it, so one more transient failure is retried instead of giving up at once."""
    system.dead_letters()
    settings = system.settings
    wid = system.new_workflow(["build"])
    system.caller.send_task(  # the dead letter of a message that used up its retries
        settings.orchestrate_task,
        args=[{"id": wid}],
        kwargs={"attempts": settings.max_retries},
        queue=Queue(settings.error_queue_name, no_declare=True),
    )
    system.emulator.fail_next("GET /workflows/{id}", 1, 503)
    replayed = CliRunner().invoke(
        cli, ["dead-letters", "replay", "--id", wid], env=settings.to_env()
    )
    assert replayed.exit_code == 0, replayed.output
    done = system.wait_completed(wid)
    assert done["workflow_error"] is False
    assert f"Gave up on a message for workflow {wid}" not in system.orchestrator.log()
    assert system.dead_letters() == []


def test_a_replayed_message_that_gave_up_on_redeliveries_counts_them_afresh(
    system: System,
) -> None:
    """A message set aside after MAX_REDELIVERIES keeps its task id; the replay drops the
    redeliveries the workers' lock store counted for it, or its next one would end it."""
    system.dead_letters()
    settings = system.settings
    locks = locks_from_settings(settings)
    wid = system.new_workflow(["build"])
    task_id = str(uuid.uuid4())
    for _ in range(settings.max_redeliveries + 1):  # as the worker counted them
        locks.count_delivery(task_id)
    system.caller.send_task(  # its dead letter
        settings.orchestrate_task,
        args=[{"id": wid}],
        task_id=task_id,
        queue=Queue(settings.error_queue_name, no_declare=True),
    )
    replayed = CliRunner().invoke(
        cli, ["dead-letters", "replay", "--id", wid], env=settings.to_env()
    )
    assert replayed.exit_code == 0, replayed.output
    system.wait_completed(wid)
    assert locks.count_delivery(task_id) == 1  # the next redelivery is its first
