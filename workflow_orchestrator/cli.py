"""`workflow-orchestrator`: the command line for the people who run the orchestrator.

`execute` starts a workflow, `status` and `watch` show one the way a person reads it,
`check` says whether this machine's settings reach the broker, the token endpoint and
the Manager, and `demo` runs the whole system in one process.

Every failure is one line on stderr naming what to fix (a traceback only with
`--debug`); no line ever carries the client secret or a broker password. Exit codes:
0 success, 1 the thing looked at failed (a failed workflow, a failed check), 2 the
command itself could not do its job (bad settings, Manager or broker unreachable,
unknown workflow, timeout).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import click

from . import __version__
from .checks import BROKER_HINT, Check, explain_manager_error, run_checks, scrub_secrets
from .dead_letters import list_dead_letters, replay_dead_letters
from .errors import ManagerError, ManagerNotFound, SettingsError
from .locking import locks_from_settings
from .queue_migration import migrate_orchestration_queue
from .settings import Settings, load_settings, redact_url
from .status_view import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    describe_workflow,
    event_message,
    failure_text,
    fit,
    progress_text,
    render_status,
    seconds_text,
    state_text,
    terminal_width,
)
from .transition import CANCELLED_REASON

#: Seconds between two redraws of a live status line.
TICK_SECONDS = 0.2
#: Seconds `watch` keeps trying while the Manager cannot be reached, before giving up.
WATCH_GIVE_UP_AFTER = 30.0


class CliError(Exception):
    """A failure the command reports as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class LiveLine:
    """A status line redrawn in place on a terminal; plain appended lines elsewhere.

    On a TTY, `note()` lines scroll above the status line, which is rewritten with
    `\\r` + erase-line; off a TTY (logs, CI, pipes) the status line is printed only when
    its `key` changes, so the output stays readable line by line.
    """

    SPINNER = "|/-\\"

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._status = ""
        self._key: Any = object()
        self._ticks = 0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self._write("\r\x1b[K" + text + "\n" + self._status)
        else:
            self._write(text + "\n")

    def status(self, text: str, key: Any = None) -> None:
        if self.tty:
            self._ticks += 1
            spin = self.SPINNER[self._ticks % len(self.SPINNER)]
            self._status = fit(f"{spin} {text}", terminal_width())
            self._write("\r\x1b[K" + self._status)
        elif key != self._key:
            self._key = key
            self._write(text + "\n")

    def close(self, final: str | None = None) -> None:
        if self.tty:
            self._write("\r\x1b[K")
            self._status = ""
        if final is not None:
            self._write(final + "\n")


# -- watch (I/O injected, so it is testable without a Manager) ---------------------------


def follow(
    fetch: Callable[[], dict[str, Any]],
    display: LiveLine,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
    backlog: int = 5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    give_up_after: float = WATCH_GIVE_UP_AFTER,
) -> int:
    """Follow a workflow until it ends; returns the exit code (0 / 1 / 2).

    `fetch` returns the stored workflow. Once the workflow has been seen, Manager errors
    are shown and retried for up to `give_up_after` seconds in a row (a Manager restart
    must not end a watch); an error on the first poll, or a 404, ends it at once.
    """
    started = clock()
    seen = 0
    first = True
    view: dict[str, Any] | None = None
    failing_since: float | None = None
    while True:
        now = clock()
        try:
            workflow = fetch()
            failing_since = None
        except ManagerNotFound:
            raise
        except ManagerError as exc:
            failing_since = failing_since if failing_since is not None else now
            if first or now - failing_since >= give_up_after:  # down from the start: say so
                display.close()
                raise
            display.status(f"Manager unavailable ({exc}); retrying", key="manager-down")
        else:
            view = describe_workflow(workflow, events=0)
            log = workflow.get("event_log")
            lines = [event_message(e) for e in log] if isinstance(log, list) else []
            if len(lines) < seen:  # the stored log was replaced: start over
                seen = 0
            if first:
                names = " > ".join(m["name"] for m in view["milestones"]) or "no milestones"
                repo = view.get("deployment_repo") or "unknown repo"
                display.note(f"Watching workflow {view['id']} ({repo}): {names}")
                if len(lines) > backlog:
                    display.note(f"  ... {len(lines) - backlog} earlier events")
                    seen = len(lines) - backlog
                first = False
            for line in lines[seen:]:
                display.note(f"  {line}")
            seen = len(lines)
            if view["finished"]:
                code = EXIT_OK if view["state"] == "succeeded" else EXIT_FAILED
                verdict = f"Workflow {view['id']} {state_text(view)}"
                if code:
                    verdict += f"\nReason: {failure_text(view)}"
                display.close(verdict)
                return code
            display.status(
                progress_text(view, now - started), key=(view["state"], view["current_step"])
            )
        if timeout is not None and clock() - started >= timeout:
            if view is not None and view["state"] == "pending":
                where = (
                    "the workflow has not started (not executed yet, or no orchestrator "
                    "is consuming its queue)"
                )
            else:
                where = "the workflow is still running"
            display.close(f"Timed out after {seconds_text(timeout)}; {where}")
            return EXIT_ERROR
        # Between polls a terminal still sees the clock move.
        wake = clock() + interval
        while (left := wake - clock()) > 0:
            sleep(min(left, TICK_SECONDS) if display.tty else left)
            if display.tty and view is not None and failing_since is None:
                display.status(progress_text(view, clock() - started))


# -- the commands -----------------------------------------------------------------------


@dataclass
class _State:
    debug: bool = False
    settings: Settings | None = None

    def load(self) -> Settings:
        """The settings, validated; SettingsError names the first bad one."""
        if self.settings is None:
            self.settings = load_settings()
        return self.settings


def explain(exc: BaseException, settings: Settings | None) -> str:
    """Any error as the one line shown on stderr."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import OperationalError

    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, SettingsError):
        return f"{exc} (set it in the environment or in a .env file in this directory)"
    if isinstance(exc, ManagerError):
        return explain_manager_error(exc, settings)
    if isinstance(exc, (OperationalError, ConnectionError, AMQPError)):
        where = redact_url(settings.celery_broker_url) if settings else "(unknown URL)"
        return (
            f"cannot connect to the broker at {where}: {exc or type(exc).__name__}; {BROKER_HINT}"
        )
    return f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


class _Group(click.Group):
    """Turns every error into one line on stderr, unless `--debug` asks for the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            state = ctx.obj if isinstance(ctx.obj, _State) else _State()
            if state.debug:
                raise
            message = scrub_secrets(explain(exc, state.settings), state.settings)
            click.echo(f"workflow-orchestrator: {message}", err=True)
            ctx.exit(exc.code if isinstance(exc, CliError) else EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="workflow-orchestrator")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Operate the WorkflowOrchestrator: start and follow workflows, check the set-up,
    run a demo.

    Settings come from the environment or a .env file in the current directory
    (the same ones the worker reads: MANAGER_URL, OAUTH_*, CELERY_BROKER_URL, ...).
    """
    ctx.obj = _State(debug=debug)
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


def _state(ctx: click.Context) -> _State:
    return ctx.ensure_object(_State)


def _get_workflow(settings: Settings, workflow_id: str) -> dict[str, Any]:
    from .manager import ManagerClient

    with ManagerClient.from_settings(settings) as client:
        try:
            return client.get_workflow(workflow_id)
        except ManagerNotFound:
            raise CliError(
                f"workflow {workflow_id} not found in the Manager at {settings.manager_url}"
            ) from None


@cli.command(short_help="Start a stored workflow; print the task id.")
@click.argument("workflow_id")
@click.option("--force-build", is_flag=True, help="Ask the builder to build even if unchanged.")
@click.option("--build-exchange", metavar="N", help="Send build/config requests to exchange N.")
@click.option("--deploy-exchange", metavar="N", help="Send deploy requests to exchange N.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Send without first asking the Manager whether the workflow exists and is new.",
)
@click.pass_context
def execute(
    ctx: click.Context,
    workflow_id: str,
    force_build: bool,
    build_exchange: str | None,
    deploy_exchange: str | None,
    no_verify: bool,
) -> None:
    """Start the stored workflow WORKFLOW_ID; prints the start message's task id.

    The workflow must already exist in the Manager and not be started: the orchestrator
    ignores a start message for a workflow that is running or finished.
    """
    from .worker_api import execute_workflow, worker_app

    settings = _state(ctx).load()
    if not no_verify:
        view = describe_workflow(_get_workflow(settings, workflow_id))
        if view["state"] != "pending":
            already = "has already run" if view["finished"] else "has already started"
            raise CliError(
                f"workflow {workflow_id} {already} ({state_text(view)}); the orchestrator "
                "would ignore a new start (nothing sent)"
            )
    app = worker_app(
        "workflow-orchestrator-cli",
        settings.celery_broker_url,
        orchestration_queue=settings.queue_name,
        orchestrate_task=settings.orchestrate_task,
    )
    try:
        task_id = execute_workflow(
            app,
            workflow_id,
            force_build=force_build,
            build_messaging_exchange_id=build_exchange,
            deploy_messaging_exchange_id=deploy_exchange,
            queue=settings.queue_name,
            orchestrate_task=settings.orchestrate_task,
        )
    finally:
        app.close()
    click.echo(task_id)


def _send_control(
    ctx: click.Context,
    workflow_id: str,
    send: Callable[..., str],
    shown: Callable[[dict[str, Any]], bool | None],
    timeout: float,
    **options: Any,
) -> None:
    """Send a control, wait (with a progress line) until the Manager shows its effect
    (`shown` True), print the workflow's state. `shown` False: the workflow reached a
    state where the control can no longer act, so nothing was done (exit 1)."""
    from .worker_api import worker_app

    settings = _state(ctx).load()
    app = worker_app(
        "workflow-orchestrator-cli",
        settings.celery_broker_url,
        orchestration_queue=settings.queue_name,
        orchestrate_task=settings.orchestrate_task,
    )
    try:
        send(
            app,
            workflow_id,
            queue=settings.queue_name,
            orchestrate_task=settings.orchestrate_task,
            **options,
        )
    finally:
        app.close()
    click.echo(f"sent; waiting for the orchestrator to apply it (up to {timeout:g} s)...")
    deadline = time.monotonic() + timeout
    while True:
        workflow = _get_workflow(settings, workflow_id)
        outcome = shown(workflow)
        if outcome is not None:
            view = describe_workflow(workflow)
            if not outcome:
                click.echo(
                    f"workflow {workflow_id} completed before the orchestrator applied it "
                    f"({state_text(view)}): nothing done"
                )
                ctx.exit(EXIT_FAILED)
            click.echo(render_status(view))
            ctx.exit(EXIT_OK)
        if time.monotonic() > deadline:
            raise CliError(
                f"the orchestrator did not apply it within {timeout:g} s: is a worker "
                f"consuming {settings.queue_name}?"
            )
        time.sleep(0.5)


def _log_count(workflow: dict[str, Any], text: str) -> int:
    return sum(1 for line in workflow.get("event_log") or [] if text in str(line))


def cancel_shown(cancels_before: int, workflow: dict[str, Any]) -> bool | None:
    """True once the Manager shows the cancel (completed, one more cancel line than the
    workflow had when it was sent: an earlier run may have been cancelled too); False
    when it completed without it (it failed or succeeded by itself first); None: not yet."""
    if not workflow.get("workflow_completed"):
        return None
    return _log_count(workflow, CANCELLED_REASON) > cancels_before


@cli.command(short_help="Fail a running workflow on an operator's word.")
@click.argument("workflow_id")
@click.option("--reason", default=None, help="Why: it goes into the failure reason.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for it.")
@click.pass_context
def cancel(ctx: click.Context, workflow_id: str, reason: str | None, timeout: float) -> None:
    """Fail WORKFLOW_ID with `Cancelled by an operator`; its worker's later report is
    ignored. Exits 1 (nothing sent) when the workflow is already completed."""
    from .worker_api import cancel_workflow

    settings = _state(ctx).load()
    workflow = _get_workflow(settings, workflow_id)
    if workflow.get("workflow_completed"):
        view = describe_workflow(workflow)
        click.echo(
            f"workflow {workflow_id} is already completed ({state_text(view)}): nothing to cancel"
        )
        ctx.exit(EXIT_FAILED)
    before = _log_count(workflow, CANCELLED_REASON)
    _send_control(
        ctx,
        workflow_id,
        cancel_workflow,
        lambda wf: cancel_shown(before, wf),
        timeout,
        reason=reason,
    )


@cli.command(short_help="Run a failed workflow again from the step that failed.")
@click.argument("workflow_id")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for it.")
@click.pass_context
def retry(ctx: click.Context, workflow_id: str, timeout: float) -> None:
    """Run WORKFLOW_ID again from its failed step (new task ids, its own e-mail). Exits 1
    (nothing sent) when it did not fail, or failed before any step."""
    from .worker_api import retry_workflow

    settings = _state(ctx).load()
    workflow = _get_workflow(settings, workflow_id)
    step = workflow.get("current_step")
    if not (workflow.get("workflow_completed") and workflow.get("workflow_error")):
        view = describe_workflow(workflow)
        click.echo(f"workflow {workflow_id} did not fail ({state_text(view)}): nothing to retry")
        ctx.exit(EXIT_FAILED)
    if step in (None, "", "workflow_completed"):
        click.echo(f"workflow {workflow_id} failed before any step: nothing to retry")
        ctx.exit(EXIT_FAILED)
    before = _log_count(workflow, "Retrying Workflow Milestone:")
    _send_control(
        ctx,
        workflow_id,
        retry_workflow,
        lambda wf: _log_count(wf, "Retrying Workflow Milestone:") > before or None,
        timeout,
    )


@cli.command(short_help="Show a workflow: milestones, durations, events, failure.")
@click.argument("workflow_id")
@click.option("--events", "events", default=5, show_default=True, help="How many last events.")
@click.option("--json", "as_json", is_flag=True, help="Print the status view as JSON.")
@click.pass_context
def status(ctx: click.Context, workflow_id: str, events: int, as_json: bool) -> None:
    """Show where workflow WORKFLOW_ID is: milestones, durations, last events, failure."""
    settings = _state(ctx).load()
    view = describe_workflow(_get_workflow(settings, workflow_id), events=events)
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        click.echo(render_status(view))


@cli.command(short_help="Follow a workflow live until it ends.")
@click.argument("workflow_id")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between two polls.")
@click.option("--timeout", type=float, default=None, help="Give up (exit 2) after this many s.")
@click.pass_context
def watch(ctx: click.Context, workflow_id: str, interval: float, timeout: float | None) -> None:
    """Follow workflow WORKFLOW_ID until it ends: exit 0 succeeded, 1 failed, 2 timeout/error."""
    from .manager import ManagerClient

    settings = _state(ctx).load()
    stream = sys.stdout
    display = LiveLine(stream, tty=stream.isatty())
    with ManagerClient.from_settings(settings) as client:

        def fetch() -> dict[str, Any]:
            return client.get_workflow(workflow_id)

        try:
            code = follow(fetch, display, interval=max(0.05, interval), timeout=timeout)
        except ManagerNotFound:
            display.close()
            raise CliError(
                f"workflow {workflow_id} not found in the Manager at {settings.manager_url}"
            ) from None
        except KeyboardInterrupt:
            display.close("Stopped watching (the workflow goes on).")
            ctx.exit(EXIT_INTERRUPTED)
    ctx.exit(code)


@cli.command(short_help="Check the settings, broker, token endpoint and Manager.")
@click.option("--timeout", default=3.0, show_default=True, help="Seconds allowed per check.")
@click.pass_context
def check(ctx: click.Context, timeout: float) -> None:
    """Validate the settings and reach the broker, the token endpoint and the Manager."""
    state = _state(ctx)
    try:
        settings = state.load()
    except SettingsError as exc:
        _print_checks([Check("settings", False, explain(exc, None))])
        ctx.exit(EXIT_FAILED)
    checks = [
        Check(
            "settings",
            True,
            f"EXCHANGE_ID={settings.exchange_id} BROKER_ID={settings.broker_id} "
            f"QUEUE_NAME={settings.queue_name} MANAGER_URL={settings.manager_url}",
        ),
        *run_checks(settings, timeout),
    ]
    _print_checks(checks, settings)
    ctx.exit(EXIT_FAILED if any(c.ok is False for c in checks) else EXIT_OK)


@cli.group("dead-letters", invoke_without_command=True)
@click.pass_context
def dead_letters(ctx: click.Context) -> None:
    """List what the error queue holds: workflow id, reason and when (nothing is taken)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _state(ctx).load()
    views = list_dead_letters(settings.celery_broker_url, settings.error_queue_name)
    if not views:
        click.echo(f"{settings.error_queue_name} is empty")
        return
    click.echo(f"{len(views)} message(s) in {settings.error_queue_name}:")
    for view in views:
        what = (
            view.workflow_id or f"(no workflow; task {view.task or '?'}, id {view.task_id or '?'})"
        )
        click.echo(f"  {view.dead_lettered_at}  {what}  {view.reason}")


@dead_letters.command("replay")
@click.option("--id", "workflow_id", default=None, help="Replay the messages of this workflow.")
@click.option("--all", "everything", is_flag=True, help="Replay every message.")
@click.pass_context
def replay(ctx: click.Context, workflow_id: str | None, everything: bool) -> None:
    """Move dead letters back to the orchestration queue, each confirmed before its copy
    in the error queue is acked."""
    if (workflow_id is None) == (not everything):
        raise click.UsageError("say which: --id WORKFLOW or --all (one of the two)")
    settings = _state(ctx).load()
    moved = replay_dead_letters(
        settings.celery_broker_url,
        settings.error_queue_name,
        settings.queue_name,
        workflow_id,
        forget_deliveries=locks_from_settings(settings).forget_deliveries,
    )
    if not moved:
        which = f"of workflow {workflow_id} " if workflow_id else ""
        click.echo(f"no message {which}in {settings.error_queue_name}: nothing replayed")
        ctx.exit(EXIT_FAILED)
    click.echo(f"replayed {moved} message(s) to {settings.queue_name}")


@cli.command(
    "migrate-queue", short_help="Re-declare an old orchestration queue, keeping its messages."
)
@click.option("--queue", "queue", default=None, help="The queue (default: QUEUE_NAME).")
@click.pass_context
def migrate_queue(ctx: click.Context, queue: str | None) -> None:
    """Move an orchestration queue declared with an earlier version's x-arguments to the
    plain declaration every Celery caller uses, losing no message. Stop the orchestrator
    workers first; run it again if it was interrupted."""
    settings = _state(ctx).load()
    name = queue or settings.queue_name
    done = migrate_orchestration_queue(settings.celery_broker_url, name)
    if done.already_plain:
        click.echo(f"queue {name} is already declared the plain way: nothing to migrate")
        ctx.exit(EXIT_FAILED)
    click.echo(f"queue {name} is declared the plain way now; {done.moved} message(s) kept in it")
    ctx.exit(EXIT_OK)


_COLOURS = {"OK": "green", "FAIL": "red", "WARN": "yellow", "SKIP": "yellow"}


def _print_checks(checks: Iterable[Check], settings: Settings | None = None) -> None:
    for item in checks:
        word = click.style(f"{item.word:<4}", fg=_COLOURS.get(item.word), bold=True)
        click.echo(f"{word}  {item.name:<8}  {scrub_secrets(item.detail, settings)}")


@cli.command(short_help="Run the whole system here, with demo workers.")
@click.option(
    "--broker",
    metavar="URL",
    default=None,
    help="Use this broker (amqp://...) and a separate orchestrator process instead of "
    "the in-process memory:// broker.",
)
@click.option(
    "--workflows",
    default=5,
    show_default=True,
    help="How many workflows to run (the 5 scenarios in turn).",
)
@click.option(
    "--log",
    "log_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the workers' logs here (default: a new file in the temp directory).",
)
@click.pass_context
def demo(ctx: click.Context, broker: str | None, workflows: int, log_path: str | None) -> None:
    """Run the whole system on this machine: emulated Manager, orchestrator, demo workers.

    Needs nothing installed: by default everything runs in this process over an
    in-memory broker. Exit 0 when every workflow ended as expected.
    """
    from .demo import run_demo

    if workflows < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workflows")
    stream = sys.stdout
    code = run_demo(
        broker=broker, workflows=workflows, out=stream, tty=stream.isatty(), log_path=log_path
    )
    ctx.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry point (`workflow-orchestrator`)."""
    cli.main(args=argv, prog_name="workflow-orchestrator")
    raise SystemExit(EXIT_OK)  # pragma: no cover - click exits itself


if __name__ == "__main__":
    main()
