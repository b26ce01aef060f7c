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
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

import click

from . import __version__
from .errors import ManagerError, ManagerNotFound, SettingsError
from .settings import Settings, load_settings, redact_url

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

#: The states a milestone has in the status view.
MILESTONE_STATES = ("done", "running", "failed", "pending")
#: Workflow states of the status view.
WORKFLOW_STATES = ("pending", "running", "succeeded", "failed")
#: The `current_step` the orchestrator writes once every milestone is done.
COMPLETED_STEP = "workflow_completed"
BROKER_HINT = "is it running? check CELERY_BROKER_URL (host, port, credentials, vhost)"
#: Seconds between two redraws of a live status line.
TICK_SECONDS = 0.2
#: Seconds `watch` keeps trying while the Manager cannot be reached, before giving up.
WATCH_GIVE_UP_AFTER = 30.0

_FAILED = re.compile(r"Workflow Milestone Failed: (?P<step>.*?)\.  Reason: (?P<reason>.*)\Z", re.S)
_WORKER_FAILED = re.compile(r"Workflow step failed: (?P<reason>.*)\Z", re.S)
# `[OA][{id}][{repo}] ` (orchestrator lines) or `[OA][{id}] ` (worker lines).
_PREFIX = re.compile(r"\A\[OA\]\[[^\]]*\](?:\[[^\]]*\])?\s?")


class CliError(Exception):
    """A failure the command reports as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- the status view (pure) -------------------------------------------------------------


def event_message(line: Any) -> str:
    """An event-log line without its `[OA][id][repo]` prefix: what a person reads."""
    return _PREFIX.sub("", str(line), count=1)


def _milestones(workflow: dict[str, Any]) -> list[str]:
    value = workflow.get("milestones")
    return [str(m) for m in value] if isinstance(value, list) else []


def _failure(events: list[str], current_step: Any) -> dict[str, Any]:
    """The failure line's step and reason, and the worker's own reason when it gave one."""
    step: str | None = None if current_step in (None, COMPLETED_STEP) else str(current_step)
    reason: str | None = None
    for message in reversed(events):
        found = _FAILED.match(message)
        if found:
            step = None if found["step"] == "none" else found["step"]
            reason = found["reason"]
            break
    worker = [m for m in (_WORKER_FAILED.match(e) for e in events) if m]
    return {
        "step": step,
        "reason": reason or "unknown (no failure line in the event log)",
        "worker_reason": worker[-1]["reason"] if worker else None,
    }


def describe_workflow(workflow: dict[str, Any], events: int = 5) -> dict[str, Any]:
    """A stored workflow (as the Manager returns it) -> the status view of `status --json`.

    Pure, so the shape documented in docs/cli.md is pinned by unit tests. Milestone
    states come from the position of `current_step` in `milestones`: the ones before
    it are done, it is running (or failed when the workflow failed), the ones after it
    are pending; a succeeded workflow has every milestone done.
    """
    milestones = _milestones(workflow)
    step = workflow.get("current_step")
    completed = bool(workflow.get("workflow_completed"))
    error = bool(workflow.get("workflow_error"))
    log = workflow.get("event_log")
    messages = [event_message(line) for line in log] if isinstance(log, list) else []
    durations = workflow.get("workflow_step_durations")
    durations = durations if isinstance(durations, dict) else {}

    if completed:
        state = "failed" if error else "succeeded"
    elif step is None:
        state = "pending"
    else:
        state = "running"
    at = milestones.index(step) if step in milestones else None
    if state == "succeeded":
        at = len(milestones)

    rows = []
    for index, name in enumerate(milestones):
        if at is None or index > at:
            row_state = "pending"
        elif index < at:
            row_state = "done"
        else:
            row_state = "failed" if state == "failed" else "running"
        duration = durations.get(name)
        rows.append(
            {
                "name": name,
                "state": row_state,
                "duration": None if duration is None else str(duration),
            }
        )

    if state == "succeeded":
        index = len(milestones)
    elif at is not None:
        index = at + 1
    else:
        index = 0
    shown = max(0, events)
    return {
        "id": workflow.get("id"),
        "deployment_repo": workflow.get("deployment_repo"),
        "deployment_repo_git_ref": workflow.get("deployment_repo_git_ref"),
        "state": state,
        "finished": completed,
        "current_step": step,
        "milestone_index": index,
        "milestone_count": len(milestones),
        "milestones": rows,
        "duration": workflow.get("workflow_duration") if completed else None,
        "elapsed": workflow.get("elapsed_workflow_time"),
        "failure": _failure(messages, step) if state == "failed" else None,
        "events": messages[-shown:] if shown else [],
        "event_count": len(messages),
        "updated_at": workflow.get("updated_at"),
    }


def failure_text(view: dict[str, Any]) -> str:
    """`Reason (worker: detail)` for a failed view, '' otherwise."""
    failure = view.get("failure")
    if not failure:
        return ""
    text = failure["reason"]
    if failure.get("worker_reason") and failure["worker_reason"] not in text:
        text += f" (worker: {failure['worker_reason']})"
    return text


def state_text(view: dict[str, Any]) -> str:
    """One phrase for where the workflow is: `running deploy (milestone 2 of 3)`."""
    k, n = view["milestone_index"], view["milestone_count"]
    if view["state"] == "succeeded":
        return f"succeeded in {view['duration'] or '<unknown>'} ({n} of {n} milestones)"
    if view["state"] == "failed":
        step = (view["failure"] or {}).get("step")
        where = f"at {step} (milestone {k} of {n})" if step and k else "before any milestone"
        return f"failed {where} after {view['duration'] or '<unknown>'}"
    if view["state"] == "running":
        return f"running {view['current_step']} (milestone {k} of {n})"
    return f"pending: not started ({n} milestones)"


def render_status(view: dict[str, Any]) -> str:
    """The status view as text, for a person."""
    title = f"Workflow {view['id']}"
    if view.get("deployment_repo"):
        ref = view.get("deployment_repo_git_ref")
        title += f"  {view['deployment_repo']}" + (f" @ {ref}" if ref else "")
    lines = [title, f"State:    {state_text(view)}"]
    if view["state"] == "failed":
        lines.append(f"Reason:   {failure_text(view)}")
    elif view["state"] == "running" and view.get("elapsed"):
        lines.append(f"Elapsed:  {view['elapsed']} (at the last update)")
    if view["milestones"]:
        width = max(len(m["name"]) for m in view["milestones"])
        lines += ["", "Milestones:"]
        for m in view["milestones"]:
            duration = m["duration"] if m["duration"] and m["state"] != "pending" else ""
            lines.append(f"  {m['name']:<{width}}  {m['state']:<8} {duration}".rstrip())
    if view["events"]:
        lines += ["", f"Last {len(view['events'])} of {view['event_count']} events:"]
        lines += [f"  {event}" for event in view["events"]]
    return "\n".join(lines)


def seconds_text(seconds: float) -> str:
    """`4.2s`, `1m05s`, `2h03m`: a clock a person reads at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_text(view: dict[str, Any], elapsed: float) -> str:
    """The one-line progress of `watch` and `demo`: `[2/3] deploy running  4.2s`."""
    k, n = view["milestone_index"], view["milestone_count"]
    if view["state"] == "succeeded":
        return f"[{n}/{n}] succeeded in {view['duration'] or seconds_text(elapsed)}"
    if view["state"] == "failed":
        step = (view["failure"] or {}).get("step") or "start"
        return f"[{k}/{n}] failed at {step}: {failure_text(view)}"
    if view["state"] == "running":
        return f"[{k}/{n}] {view['current_step']} running  {seconds_text(elapsed)}"
    return f"[0/{n}] waiting for the orchestrator  {seconds_text(elapsed)}"


# -- terminal output --------------------------------------------------------------------


def terminal_width() -> int:
    """Columns usable on the terminal without wrapping (wrapping breaks a redraw)."""
    try:
        return max(20, shutil.get_terminal_size().columns - 1)
    except (OSError, ValueError):
        return 79


def fit(text: str, width: int) -> str:
    """`text` cut to `width` columns."""
    return text if len(text) <= width else text[: width - 3] + "..."


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


# -- check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of `check`: ok True (OK), False (FAIL) or None (WARN / SKIP)."""

    name: str
    ok: bool | None
    detail: str
    label: str = ""

    @property
    def word(self) -> str:
        return self.label or {True: "OK", False: "FAIL", None: "WARN"}[self.ok]


def _is_token_call(exc: ManagerError) -> bool:
    """Token calls name a full URL (`POST http://...`), Manager calls a path."""
    return exc.call.partition(" ")[2].startswith(("http://", "https://"))


def explain_manager_error(exc: ManagerError, settings: Settings | None) -> str:
    """A Manager or token-endpoint failure as one line with a hint (no secret in it)."""
    manager = settings.manager_url if settings else "the Manager"
    if _is_token_call(exc):
        where = exc.call.partition(" ")[2]
        if exc.status is None:
            return (
                f"cannot reach the token endpoint {where} ({exc.detail}): is it up? "
                "check OAUTH_LOGIN_URL"
            )
        if exc.status in (400, 401, 403):
            return (
                f"the token endpoint {where} refused the client credentials "
                f"(answered {exc.status}): check OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET "
                "and OAUTH_BODY (json or form)"
            )
        if exc.status == 404:
            return f"no token endpoint at {where} (answered 404): check OAUTH_LOGIN_URL"
        return f"the token endpoint {where} failed: {exc}"
    if exc.status is None:
        return (
            f"cannot reach the Manager at {manager} ({exc.call}: {exc.detail}): is it up? "
            "check MANAGER_URL"
        )
    if exc.status in (401, 403):
        return (
            f"the Manager at {manager} refused our token ({exc.call} answered {exc.status}): "
            "check the OAUTH_* settings"
        )
    if exc.status == 429 or exc.status >= 500:
        return f"the Manager at {manager} is failing ({exc.call} answered {exc.status}); try again"
    return f"the Manager at {manager} refused {exc.call} (answered {exc.status}): {exc.detail}"


def _broker_check(settings: Settings, timeout: float) -> list[Check]:
    from kombu import Connection

    shown = redact_url(settings.celery_broker_url)
    try:
        with Connection(settings.celery_broker_url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=timeout)
            checks = [Check("broker", True, f"{shown} ({conn.transport.driver_name})")]
            if conn.transport.driver_type != "amqp":
                return checks
            channel = conn.channel()
            try:
                _, messages, consumers = channel.queue_declare(
                    queue=settings.queue_name, passive=True
                )
            except conn.channel_errors:
                checks.append(
                    Check(
                        "queue",
                        None,
                        f"{settings.queue_name} is not declared yet: no orchestrator has "
                        "started on this broker",
                    )
                )
            else:
                what = (
                    f"{settings.queue_name}: {messages} message(s) waiting, {consumers} consumer(s)"
                )
                if consumers:
                    checks.append(Check("queue", True, what))
                else:
                    checks.append(Check("queue", None, what + ": is the orchestrator running?"))
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - a closed channel is fine
                    pass
            return checks
    except Exception as exc:  # noqa: BLE001 - any failure is this check's answer
        return [
            Check(
                "broker",
                False,
                f"cannot connect to {shown}: {_scrub(str(exc) or type(exc).__name__, settings)}; "
                + BROKER_HINT,
            )
        ]


def run_checks(settings: Settings, timeout: float = 3.0) -> list[Check]:
    """Reach the broker, the token endpoint and the Manager; one Check per line."""
    from .manager import ManagerClient, TokenSource

    checks = _broker_check(settings, timeout)
    tokens = TokenSource(
        settings.oauth_login_url,
        settings.oauth_client_id,
        settings.oauth_client_secret,
        body=settings.oauth_body,
        connect_timeout=min(settings.manager_connect_timeout, timeout),
        read_timeout=min(settings.manager_read_timeout, 2 * timeout),
    )
    try:
        tokens.token()
    except ManagerError as exc:
        checks.append(Check("token", False, explain_manager_error(exc, settings)))
        checks.append(Check("manager", None, "not tried: it needs a token", "SKIP"))
        tokens.close()
        return checks
    checks.append(
        Check(
            "token",
            True,
            f"{_url_without_secrets(settings.oauth_login_url)} issued a token to client "
            f"{settings.oauth_client_id} ({settings.oauth_body} body)",
        )
    )
    client = ManagerClient(
        settings.manager_url,
        tokens,
        connect_timeout=min(settings.manager_connect_timeout, timeout),
        read_timeout=min(settings.manager_read_timeout, 2 * timeout),
    )
    with client:
        try:
            exchange = client.get_exchange(settings.exchange_id)
            modules = client.list_exchange_modules(settings.exchange_id)
        except ManagerNotFound as exc:
            checks.append(
                Check(
                    "manager",
                    False,
                    f"EXCHANGE_ID {settings.exchange_id} is unknown to the Manager at "
                    f"{settings.manager_url} ({exc.call} answered 404): check EXCHANGE_ID "
                    "(and that MANAGER_URL is the API's base URL)",
                )
            )
        except ManagerError as exc:
            checks.append(Check("manager", False, explain_manager_error(exc, settings)))
        else:
            kinds: dict[str, int] = {}
            for module in modules:
                kind = str(module.get("type"))
                kinds[kind] = kinds.get(kind, 0) + 1
            name = exchange.get("name")
            counts = ", ".join(
                f"{kinds.get(k, 0)} {k}" for k in ("builder", "deployer", "workflow_orchestrator")
            )
            checks.append(
                Check(
                    "manager",
                    True,
                    f"{settings.manager_url} knows exchange {settings.exchange_id}"
                    + (f" ({name})" if name else "")
                    + f"; modules there: {counts}",
                )
            )
    return checks


def _url_without_secrets(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _scrub(text: str, settings: Settings | None) -> str:
    """`text` with the client secret, and any URL's broker or lock password, masked.

    A safety net under the texts we build from redacted URLs: library errors may quote
    a URL whole (`user:password@host`), and a secret must never reach a terminal.
    """
    if settings is None:
        return text
    if len(settings.oauth_client_secret) >= 3:
        text = text.replace(settings.oauth_client_secret, "***")
    for url in (settings.celery_broker_url, settings.lock_url):
        password = urlsplit(url).password if url else None
        if password:
            text = text.replace(f":{password}@", ":***@")
    return text


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
            message = _scrub(explain(exc, state.settings), state.settings)
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


_COLOURS = {"OK": "green", "FAIL": "red", "WARN": "yellow", "SKIP": "yellow"}


def _print_checks(checks: Iterable[Check], settings: Settings | None = None) -> None:
    for item in checks:
        word = click.style(f"{item.word:<4}", fg=_COLOURS.get(item.word), bold=True)
        click.echo(f"{word}  {item.name:<8}  {_scrub(item.detail, settings)}")


@cli.command(short_help="Run the whole system here, with demo workers.")
@click.option(
    "--broker",
    metavar="URL",
    default=None,
    help="Use this broker (amqp://...) and a separate orchestrator process instead of "
    "the in-process memory:// broker.",
)
@click.option("--workflows", default=3, show_default=True, help="How many workflows to run.")
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
