"""`workflow-orchestrator check`: does this machine's configuration reach the broker,
the token endpoint and the Manager, and is the orchestration queue declared the plain
way? Each check is one line naming what to fix, never a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ManagerError, ManagerNotFound
from .queue_migration import declares_plain, queue_migration_hint
from .settings import Settings, redact_url

BROKER_HINT = "is it running? check CELERY_BROKER_URL (host, port, credentials, vhost)"


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
                if not declares_plain(conn, settings.queue_name):
                    checks.append(Check("queue", False, queue_migration_hint(settings.queue_name)))
                elif consumers:
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
                f"cannot connect to {shown}: {scrub_secrets(str(exc) or type(exc).__name__, settings)}; "
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


def scrub_secrets(text: str, settings: Settings | None) -> str:
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
