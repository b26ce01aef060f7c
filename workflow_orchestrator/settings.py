"""Every setting of the orchestrator, read once from the environment (and `.env`).

All configuration lives here so an operator can find it in one place and the worker
can refuse to start, with one line naming the culprit, before it consumes anything.
The OAuth client secret is kept out of every repr and error text.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from decouple import AutoConfig, UndefinedValueError

from .errors import SettingsError

REQUIRED = object()

#: name -> (default, meaning). The README's configuration table is this dict.
SETTINGS_DOC: dict[str, tuple[Any, str]] = {
    "EXCHANGE_ID": (REQUIRED, "Id of the messaging exchange the orchestrator runs in"),
    "BROKER_ID": (REQUIRED, "Id of the broker the orchestrator connects to"),
    "MANAGER_URL": (REQUIRED, "Base URL of the OpenAperture Manager REST API"),
    "OAUTH_LOGIN_URL": (REQUIRED, "OAuth2 token endpoint (client credentials grant)"),
    "OAUTH_CLIENT_ID": (REQUIRED, "OAuth2 client id"),
    "OAUTH_CLIENT_SECRET": (REQUIRED, "OAuth2 client secret (never logged)"),
    "OAUTH_BODY": ("json", "Token request body: `json` (OpenAperture) or `form` (RFC 6749)"),
    "QUEUE_NAME": ("workflow_orchestration", "Queue the orchestrator consumes"),
    "ERROR_QUEUE_NAME": ("", "Dead-letter queue; empty means `{QUEUE_NAME}_error`"),
    "UI_URL": ("", "Base URL of the UI linked from e-mails; empty means MANAGER_URL"),
    "CELERY_BROKER_URL": ("amqp://guest:guest@localhost:5672//", "Celery broker URL"),
    "MANAGER_CONNECT_TIMEOUT": (3.05, "Seconds to connect to the Manager / token endpoint"),
    "MANAGER_READ_TIMEOUT": (15.0, "Seconds to wait for a Manager answer"),
    "CLUSTER_CACHE_SECONDS": (300.0, "Lifetime of the cached build-cluster list"),
    "MODULE_CACHE_SECONDS": (5.0, "Lifetime of a cached exchange-module check"),
    "OUT_OF_ORDER_TIMEOUT": (
        300.0,
        "Seconds an ahead-of-store message is retried before dead-lettering",
    ),
    "OUT_OF_ORDER_RETRY_SECONDS": (0.5, "Delay between retries of an ahead-of-store message"),
    "SCHEDULE_POLL_SECONDS": (600, "Longest countdown between two `scheduled` evaluations"),
    "RETRY_BACKOFF_SECONDS": (1.0, "First delay of the transient-error backoff"),
    "RETRY_BACKOFF_MAX": (60.0, "Largest delay of the transient-error backoff"),
    "MAX_RETRIES": (120, "Tries of a message failing transiently before it is dead-lettered"),
    "MAX_REDELIVERIES": (
        10,
        "Redeliveries of one message (never finished: its worker died, or lost its broker, "
        "each time) before it is dead-lettered",
    ),
    "LOCK_URL": ("", "Empty: file locks under LOCK_DIR (one host); `redis://...`: Redis locks"),
    "LOCK_DIR": (
        "",
        "Directory of the file locks, one per workflow, removed once unwritten for a week;"
        " empty means the temp dir",
    ),
    "LOCK_TIMEOUT": (60.0, "Seconds a Redis lock lives if its holder dies"),
    "LOCK_WAIT": (30.0, "Seconds to wait for a workflow lock before retrying the message"),
    "HOSTNAME": ("", "Hostname registered with the Manager; empty means this host's"),
    "ORCHESTRATE_TASK": ("workflow_orchestrator.orchestrate", "Name of the orchestration task"),
    "BUILDER_TASK": ("builder.build", "Task for `build` and `config`"),
    "BUILDER_QUEUE": ("builder", "Queue for `build` and `config`"),
    "DEPLOYER_TASK": ("deployer.deploy", "Task for `deploy` and `deploy_ecs`"),
    "DEPLOYER_QUEUE": ("deployer", "Queue for `deploy` and `deploy_ecs`"),
    "DEPLOY_OA_TASK": ("deployer.deploy_oa", "Task for `deploy_oa`"),
    "DEPLOY_OA_QUEUE": ("deploy_oa", "Queue for `deploy_oa`"),
    "HIPCHAT_TASK": ("notifications.hipchat", "Chat notification task"),
    "HIPCHAT_QUEUE": ("notifications_hipchat", "Chat notification queue"),
    "EMAIL_TASK": ("notifications.email", "E-mail notification task"),
    "EMAIL_QUEUE": ("notifications_email", "E-mail notification queue"),
    "EXTRA_MILESTONES": (
        "",
        "More milestones, `name=task@queue` separated by commas (dispatched to EXCHANGE_ID)",
    ),
    "LOG_FORMAT": ("text", "`text` or `json` log lines"),
    "STEP_TIMEOUTS": (
        "",
        "Deadlines per milestone, e.g. `build=2h,deploy=45m` (units s, m, h)",
    ),
    "STEP_TIMEOUT_DEFAULT": (
        "3h",
        "Deadline of a milestone STEP_TIMEOUTS does not name; `0`: none",
    ),
    "WORKER_QUEUE_ARGUMENTS": (
        "none",
        "Worker and notification queues declared `none` (as Celery does) or `openaperture` "
        "(with OpenAperture's dead-letter arguments, for a broker shared with its modules)",
    ),
    "METRICS_PORT": ("", "Port of the worker's Prometheus endpoint; empty means no metrics"),
    "METRICS_ADDRESS": ("127.0.0.1", "Address the metrics endpoint listens on"),
    "METRICS_MULTIPROC_DIR": (
        "",
        "Prefork pool: directory of the per-process metric files; empty means a fresh temp dir",
    ),
    "MODULE_HEARTBEAT_SECONDS": (
        30.0,
        "Seconds between two registrations of this module with the Manager (its heartbeat)",
    ),
}


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(name, f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _port_or_none(value: str) -> int | None:
    if not value:
        return None
    port = int(value)
    if not 0 <= port <= 65535:
        raise SettingsError("METRICS_PORT", f"must be a port number (0-65535), got {value!r}")
    return port


_port_or_none.__name__ = "port"


def positive(name: str, value: float) -> float:
    """`value` when it is above 0, else a SettingsError naming the setting."""
    if value <= 0:
        raise SettingsError(name, f"must be positive, got {value}")
    return value


def redact_url(url: str) -> str:
    """A URL fit for logs: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(name: str, text: str) -> float:
    """`90s`, `45m`, `2h` (or plain seconds) -> seconds; `0` means none."""
    value = text.strip().lower()
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNIT_SECONDS else (value, "s")
    try:
        seconds = float(number) * _UNIT_SECONDS[unit]
    except ValueError:
        raise SettingsError(name, f"is not a duration like 45m or 2h: {text!r}") from None
    if seconds < 0:
        raise SettingsError(name, f"must not be negative: {text!r}")
    return seconds


def parse_step_timeouts(text: str) -> tuple[tuple[str, float], ...]:
    """`build=2h,deploy=45m` -> ((build, 7200.0), (deploy, 2700.0))."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        step, sep, duration = item.partition("=")
        if not (sep and step.strip() and duration.strip()):
            raise SettingsError("STEP_TIMEOUTS", f"entry {item!r} is not of the form step=duration")
        out.append((step.strip(), parse_duration("STEP_TIMEOUTS", duration)))
    return tuple(out)


@dataclass(frozen=True)
class ExtraMilestone:
    name: str
    task: str
    queue: str


def parse_extra_milestones(text: str) -> tuple[ExtraMilestone, ...]:
    """`name=task@queue,...` -> milestones operators add without code."""
    out: list[ExtraMilestone] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, target = item.partition("=")
        task, at, queue = target.partition("@")
        if not (sep and at and name.strip() and task.strip() and queue.strip()):
            raise SettingsError(
                "EXTRA_MILESTONES", f"entry {item!r} is not of the form name=task@queue"
            )
        out.append(ExtraMilestone(name.strip(), task.strip(), queue.strip()))
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    exchange_id: str
    broker_id: str
    manager_url: str
    oauth_login_url: str
    oauth_client_id: str
    oauth_client_secret: str = field(repr=False)
    oauth_body: str = "json"
    queue_name: str = "workflow_orchestration"
    error_queue_name: str = ""  # derived: {queue_name}_error
    ui_url: str = ""
    celery_broker_url: str = field(default="amqp://guest:guest@localhost:5672//", repr=False)
    manager_connect_timeout: float = 3.05
    manager_read_timeout: float = 15.0
    cluster_cache_seconds: float = 300.0
    module_cache_seconds: float = 5.0
    out_of_order_timeout: float = 300.0
    out_of_order_retry_seconds: float = 0.5
    schedule_poll_seconds: int = 600
    retry_backoff_seconds: float = 1.0
    retry_backoff_max: float = 60.0
    max_retries: int = 120
    max_redeliveries: int = 10
    lock_url: str = field(default="", repr=False)
    lock_dir: str = ""
    lock_timeout: float = 60.0
    lock_wait: float = 30.0
    hostname: str = ""
    orchestrate_task: str = "workflow_orchestrator.orchestrate"
    builder_task: str = "builder.build"
    builder_queue: str = "builder"
    deployer_task: str = "deployer.deploy"
    deployer_queue: str = "deployer"
    deploy_oa_task: str = "deployer.deploy_oa"
    deploy_oa_queue: str = "deploy_oa"
    hipchat_task: str = "notifications.hipchat"
    hipchat_queue: str = "notifications_hipchat"
    email_task: str = "notifications.email"
    email_queue: str = "notifications_email"
    extra_milestones: tuple[ExtraMilestone, ...] = ()
    log_format: str = "text"
    module_heartbeat_seconds: float = 30.0
    step_timeouts: tuple[tuple[str, float], ...] = ()
    step_timeout_default: float = 10800.0
    worker_queue_arguments: str = "none"
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    metrics_multiproc_dir: str = ""

    def __post_init__(self) -> None:
        # Derived defaults, so callers constructing Settings directly (tests) get them too.
        if not self.ui_url:
            object.__setattr__(self, "ui_url", self.manager_url)
        if not self.error_queue_name:
            object.__setattr__(self, "error_queue_name", f"{self.queue_name}_error")
        if not self.lock_dir:
            lock_dir = os.path.join(tempfile.gettempdir(), "workflow-orchestrator-locks")
            object.__setattr__(self, "lock_dir", lock_dir)
        if not self.hostname:
            object.__setattr__(self, "hostname", socket.gethostname())

    def to_env(self) -> dict[str, str]:
        """The environment that makes `load_settings()` in another process return these
        settings (how the demo, tests and benchmark configure a worker subprocess)."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra_milestones":
                value = ",".join(f"{m.name}={m.task}@{m.queue}" for m in value)
            elif f.name == "step_timeouts":
                value = ",".join(f"{step}={seconds:g}s" for step, seconds in value)
            env[f.name.upper()] = "" if value is None else str(value)
        return env

    def describe(self) -> dict[str, Any]:
        """Every setting with secrets masked: safe to log or print."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "oauth_client_secret":
                value = "***"
            elif f.name in ("celery_broker_url", "lock_url"):
                value = redact_url(value)
            out[f.name.upper()] = value
        return out


def _reader(config: Callable[..., Any]) -> Callable[[str, Callable[[str], Any]], Any]:
    def read(name: str, cast: Callable[[str], Any] = str) -> Any:
        default, _ = SETTINGS_DOC[name]
        try:
            if default is REQUIRED:
                raw = config(name)
            else:
                raw = config(name, default=str(default))
        except UndefinedValueError:
            raise SettingsError(name, "is required but not set") from None
        raw = str(raw).strip()
        if default is REQUIRED and not raw:
            raise SettingsError(name, "is required but empty")
        try:
            return cast(raw)
        except SettingsError:
            raise
        except (TypeError, ValueError):
            shown = "***" if name == "OAUTH_CLIENT_SECRET" else repr(raw)
            raise SettingsError(name, f"cannot be read as {cast.__name__}: {shown}") from None

    return read


def setting_reader(
    config: Callable[..., Any] | None = None,
) -> Callable[[str, Callable[[str], Any]], Any]:
    """`read(NAME, cast)`: one setting, from the environment or a `.env` in the working
    directory, with its default and checks, for code that needs a few settings and not
    a whole `Settings` (the worker library's Manager client)."""
    return _reader(config or AutoConfig(search_path=os.getcwd()))


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def cast(value: str) -> str:
        if value.lower() not in allowed:
            raise SettingsError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value.lower()

    cast.__name__ = "choice"
    return cast


def load_settings(config: Callable[..., Any] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the first bad one."""
    read = _reader(config or AutoConfig(search_path=os.getcwd()))
    s = Settings(
        exchange_id=read("EXCHANGE_ID"),
        broker_id=read("BROKER_ID"),
        manager_url=read("MANAGER_URL", lambda v: _url("MANAGER_URL", v)),
        oauth_login_url=read("OAUTH_LOGIN_URL", lambda v: _url("OAUTH_LOGIN_URL", v)),
        oauth_client_id=read("OAUTH_CLIENT_ID"),
        oauth_client_secret=read("OAUTH_CLIENT_SECRET"),
        oauth_body=read("OAUTH_BODY", _choice("OAUTH_BODY", ("json", "form"))),
        queue_name=read("QUEUE_NAME"),
        error_queue_name=read("ERROR_QUEUE_NAME"),
        ui_url=read("UI_URL", lambda v: _url("UI_URL", v) if v else ""),
        celery_broker_url=read("CELERY_BROKER_URL"),
        manager_connect_timeout=positive(
            "MANAGER_CONNECT_TIMEOUT", read("MANAGER_CONNECT_TIMEOUT", float)
        ),
        manager_read_timeout=positive("MANAGER_READ_TIMEOUT", read("MANAGER_READ_TIMEOUT", float)),
        cluster_cache_seconds=read("CLUSTER_CACHE_SECONDS", float),
        module_cache_seconds=read("MODULE_CACHE_SECONDS", float),
        out_of_order_timeout=read("OUT_OF_ORDER_TIMEOUT", float),
        out_of_order_retry_seconds=positive(
            "OUT_OF_ORDER_RETRY_SECONDS", read("OUT_OF_ORDER_RETRY_SECONDS", float)
        ),
        schedule_poll_seconds=int(
            positive("SCHEDULE_POLL_SECONDS", read("SCHEDULE_POLL_SECONDS", int))
        ),
        retry_backoff_seconds=positive(
            "RETRY_BACKOFF_SECONDS", read("RETRY_BACKOFF_SECONDS", float)
        ),
        retry_backoff_max=positive("RETRY_BACKOFF_MAX", read("RETRY_BACKOFF_MAX", float)),
        max_retries=int(positive("MAX_RETRIES", read("MAX_RETRIES", int))),
        max_redeliveries=int(positive("MAX_REDELIVERIES", read("MAX_REDELIVERIES", int))),
        lock_url=read("LOCK_URL"),
        lock_dir=read("LOCK_DIR"),
        lock_timeout=positive("LOCK_TIMEOUT", read("LOCK_TIMEOUT", float)),
        lock_wait=positive("LOCK_WAIT", read("LOCK_WAIT", float)),
        hostname=read("HOSTNAME"),
        orchestrate_task=read("ORCHESTRATE_TASK"),
        builder_task=read("BUILDER_TASK"),
        builder_queue=read("BUILDER_QUEUE"),
        deployer_task=read("DEPLOYER_TASK"),
        deployer_queue=read("DEPLOYER_QUEUE"),
        deploy_oa_task=read("DEPLOY_OA_TASK"),
        deploy_oa_queue=read("DEPLOY_OA_QUEUE"),
        hipchat_task=read("HIPCHAT_TASK"),
        hipchat_queue=read("HIPCHAT_QUEUE"),
        email_task=read("EMAIL_TASK"),
        email_queue=read("EMAIL_QUEUE"),
        extra_milestones=read("EXTRA_MILESTONES", parse_extra_milestones),
        log_format=read("LOG_FORMAT", _choice("LOG_FORMAT", ("text", "json"))),
        step_timeouts=read("STEP_TIMEOUTS", parse_step_timeouts),
        step_timeout_default=read(
            "STEP_TIMEOUT_DEFAULT", lambda v: parse_duration("STEP_TIMEOUT_DEFAULT", v)
        ),
        module_heartbeat_seconds=positive(
            "MODULE_HEARTBEAT_SECONDS", read("MODULE_HEARTBEAT_SECONDS", float)
        ),
        metrics_port=read("METRICS_PORT", _port_or_none),
        metrics_address=read("METRICS_ADDRESS"),
        metrics_multiproc_dir=read("METRICS_MULTIPROC_DIR"),
        worker_queue_arguments=read(
            "WORKER_QUEUE_ARGUMENTS", _choice("WORKER_QUEUE_ARGUMENTS", ("none", "openaperture"))
        ),
    )
    if s.lock_url and not s.lock_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("LOCK_URL", "must be empty or a redis:// URL")
    return s


def load_settings_or_exit() -> Settings:
    """`load_settings()` for a command's start: a bad setting is one line, then exit 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"workflow-orchestrator: cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def settings_table() -> str:
    """The README's configuration table, from SETTINGS_DOC (a test keeps them equal)."""
    rows = ["| Setting | Meaning | Default |", "|---|---|---|"]
    for name, (default, meaning) in SETTINGS_DOC.items():
        shown = "**required**" if default is REQUIRED else (f"`{default}`" if default != "" else "")
        rows.append(f"| `{name}` | {meaning} | {shown} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
