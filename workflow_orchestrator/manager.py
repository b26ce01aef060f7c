"""The Manager client: every REST call the orchestrator makes, over one keep-alive session.

Failures are mapped onto the package's error classes (``errors.py``) so a caller decides
between "retry later" and "give up" by the class alone: transport errors, 5xx and 429
are transient, 404 is ``ManagerNotFound``, any other 4xx is permanent. Error texts and
log lines name the call (``GET /workflows/{id}``) and the status, never a credential:
the bearer token and the client secret are scrubbed from any response excerpt.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from oauthlib.oauth2 import BackendApplicationClient
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from .errors import (
    CredentialsRejected,
    ManagerError,
    ManagerNotFound,
    ManagerPermanentError,
    ManagerTransientError,
)
from .metrics import NullMetrics, OrchestratorMetrics, call_label
from .settings import Settings
from .tracing import NullTracing, Tracing
from .workflow import JSON_TEXT_FIELDS, persisted_view

log = logging.getLogger("workflow_orchestrator.manager")

#: Seconds before ``expires_in`` at which a cached token is no longer handed out.
TOKEN_REFRESH_MARGIN = 30.0
#: Longest response-body excerpt kept in an error's ``detail``.
DETAIL_MAX = 200
#: Connections kept per host: enough for a threads-pool worker of ~16 threads.
POOL_SIZE = 32

#: The Manager stores a module's `workload` as JSON text in a 255-character column and
#: answers 500 past it (after deleting the old record: the module would vanish).
WORKLOAD_MAX_CHARS = 255


def fit_workload(items: list[Any]) -> list[Any]:
    """The longest prefix of `items` whose JSON fits the Manager's workload column."""
    kept: list[Any] = []
    for item in items:
        if len(json.dumps([*kept, item])) > WORKLOAD_MAX_CHARS:
            break
        kept.append(item)
    return kept


_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _NoNetrc(AuthBase):
    """Authentication that adds nothing. requests gives a call without an `auth` of its
    own the Basic credentials of a matching ``~/.netrc`` entry (``$NETRC``), which
    replace an ``Authorization`` header set by hand: a ``default`` entry, common on an
    operator's machine, would replace every call's bearer token and send the token
    request someone else's credentials. As the session's `auth` it keeps ``.netrc`` out
    (and saves the file lookups requests makes per call to find it)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class _Session(requests.Session):
    """requests reads the proxy and CA-bundle variables from the environment on every
    call (about 0.17 ms each); a worker's environment does not change under it, so they
    are read once per scheme and host. ``~/.netrc`` is never read (`_NoNetrc`)."""

    def __init__(self) -> None:
        super().__init__()
        self.auth = _NoNetrc()
        self._environment: dict[tuple[str, str], dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if proxies or stream is not None or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        settings = self._environment.get(key)
        if settings is None:  # two threads may both read it: the same answer, no harm
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._environment[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}


def new_session() -> requests.Session:
    """A keep-alive session whose pool serves a threads-pool worker without churn."""
    session = _Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _excerpt(text: str, secrets: Iterable[str | None]) -> str:
    """A short, single-line body excerpt with every secret replaced before truncating."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    if len(text) > DETAIL_MAX:
        text = text[: DETAIL_MAX - 3] + "..."
    return text


def _classify(call: str, status: int, detail: str) -> ManagerError:
    """Status -> error class: the one place the retry policy is decided."""
    if status == 404:
        return ManagerNotFound(call, status, detail)
    if status == 429 or status >= 500:
        return ManagerTransientError(call, status, detail)
    return ManagerPermanentError(call, status, detail)


def _transport_error(call: str, exc: requests.RequestException) -> ManagerError:
    """Transport failures are retried; malformed URLs and the like are not."""
    kind = type(exc).__name__
    if isinstance(exc, _TRANSPORT_ERRORS):
        return ManagerTransientError(call, None, kind)
    return ManagerPermanentError(call, None, kind)


def _display_url(url: str) -> str:
    """The token endpoint as shown in errors: no user info, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class TokenSource:
    """OAuth2 client-credentials tokens, fetched once and shared by every thread.

    ``body="json"`` posts ``{"grant_type", "client_id", "client_secret"}`` as JSON, which
    is what OpenAperture's auth server reads. ``body="form"`` posts the RFC 6749 4.4
    form body built by oauthlib, with the client credentials as body parameters
    (RFC 6749 2.3.1 ``client_secret_post``) rather than HTTP basic: it is what most
    servers accept and it keeps one code path for both bodies.

    A token is reused until ``TOKEN_REFRESH_MARGIN`` seconds before its ``expires_in``
    (half its lifetime when that is shorter than twice the margin); a token answered
    without ``expires_in`` is kept until a 401 invalidates it. A lock around the fetch
    makes N threads with a cold cache cause exactly one request.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        body: str = "json",
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: OrchestratorMetrics | None = None,
    ) -> None:
        if body not in ("json", "form"):
            raise ValueError(f"body must be 'json' or 'form', got {body!r}")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.body = body
        self.timeout = (connect_timeout, read_timeout)
        self._own_session = session is None
        self._session = session or new_session()
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._valid_until = 0.0
        self._call = f"POST {_display_url(token_url)}"
        self.metrics: OrchestratorMetrics = metrics or NullMetrics()

    def __repr__(self) -> str:
        return f"TokenSource({_display_url(self.token_url)!r}, client_id={self.client_id!r})"

    def token(self) -> str:
        """The current access token, fetching a new one when none is valid."""
        with self._lock:
            if self._token is not None and self._clock() < self._valid_until:
                return self._token
            self._token = None
            token, lifetime = self._fetch()
            self._token = token
            if lifetime is None:
                self._valid_until = float("inf")
            else:
                margin = min(TOKEN_REFRESH_MARGIN, lifetime / 2)
                self._valid_until = self._clock() + lifetime - margin
            return token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after a 401, unless another thread already replaced it."""
        with self._lock:
            if self._token == token:
                self._token = None

    def scrub(self, text: str) -> str:
        """``text`` with the client secret and the current token masked."""
        return _excerpt(text, (self._secret, self._token))

    def close(self) -> None:
        """Close the session if this source created it."""
        if self._own_session:
            self._session.close()

    def _request_kwargs(self) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if self.body == "json":
            payload = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._secret,
            }
            return {"headers": headers, "json": payload}
        form = BackendApplicationClient(client_id=self.client_id).prepare_request_body(
            include_client_id=True, client_secret=self._secret
        )
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return {"headers": headers, "data": form}

    def _fetch(self) -> tuple[str, float | None]:
        started = time.perf_counter()
        try:
            response = self._session.post(
                self.token_url,
                timeout=self.timeout,
                allow_redirects=False,
                **self._request_kwargs(),
            )
        except requests.RequestException as exc:
            self.metrics.manager_call(self._call, None, time.perf_counter() - started)
            log.debug("%s failed: %s", self._call, type(exc).__name__)
            raise _transport_error(self._call, exc) from exc
        seconds = time.perf_counter() - started
        self.metrics.manager_call(self._call, response.status_code, seconds)
        log.debug("%s -> %s in %.1f ms", self._call, response.status_code, seconds * 1000)
        if not 200 <= response.status_code < 300:
            detail = _excerpt(response.text, (self._secret,))
            if response.status_code in (400, 401) or "invalid_client" in response.text:
                raise CredentialsRejected(self._call, response.status_code, detail)
            raise _classify(self._call, response.status_code, detail)
        try:
            answer = response.json()
            token = answer["access_token"]
        except (ValueError, KeyError, TypeError):
            # A 2xx without a token is a server fault (or a proxy page): retry later.
            raise ManagerTransientError(
                self._call, response.status_code, "answer holds no access_token"
            ) from None
        if not isinstance(token, str) or not token:
            raise ManagerTransientError(self._call, response.status_code, "empty access_token")
        expires_in = answer.get("expires_in")
        try:
            lifetime = float(expires_in) if expires_in is not None else None
        except (TypeError, ValueError):
            lifetime = None
        return token, lifetime


class ManagerClient:
    """The Manager REST API as methods; one instance is shared by a worker's threads."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenSource | None,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        session: requests.Session | None = None,
        metrics: OrchestratorMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout = (connect_timeout, read_timeout)
        self._session = session or new_session()
        self.metrics: OrchestratorMetrics = metrics or NullMetrics()
        self.tracing: Tracing = tracing or NullTracing()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: OrchestratorMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> ManagerClient:
        """The client the worker uses."""
        return cls.connect(
            settings.manager_url,
            settings.oauth_login_url,
            settings.oauth_client_id,
            settings.oauth_client_secret,
            body=settings.oauth_body,
            connect_timeout=settings.manager_connect_timeout,
            read_timeout=settings.manager_read_timeout,
            metrics=metrics,
            tracing=tracing,
        )

    @classmethod
    def connect(
        cls,
        manager_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        body: str = "json",
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        metrics: OrchestratorMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> ManagerClient:
        """A client with its own token source; both share one session."""
        session = new_session()
        tokens = TokenSource(
            token_url,
            client_id,
            client_secret,
            body=body,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            session=session,
            metrics=metrics,
        )
        return cls(
            manager_url,
            tokens,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            session=session,
            metrics=metrics,
            tracing=tracing,
        )

    def __repr__(self) -> str:
        return f"ManagerClient({self.base_url!r})"

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections (the token source's too)."""
        self._session.close()
        if self.tokens is not None:
            self.tokens.close()

    # -- workflows -------------------------------------------------------------------

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        """The stored workflow, its JSON-text fields decoded; dates stay strings."""
        workflow = self._json("GET", f"/workflows/{_q(workflow_id)}", expect=dict)
        for name in JSON_TEXT_FIELDS:
            value = workflow.get(name)
            if isinstance(value, str):
                try:
                    workflow[name] = json.loads(value)
                except ValueError:
                    pass  # not JSON text after all: hand it over untouched
        return workflow

    def save_workflow(self, workflow_id: str, workflow: dict[str, Any]) -> None:
        """PUT the persisted fields (``workflow_completed`` always sent, see persisted_view)."""
        self._request("PUT", f"/workflows/{_q(workflow_id)}", body=persisted_view(workflow))

    # -- system events and modules ---------------------------------------------------

    def create_system_event(self, event: dict[str, Any]) -> None:
        """Report something to operators; a 409 (same event within the hour) is success."""
        self._request("POST", "/system_events", body=event, accept=(409,))

    def register_module(self, exchange_id: str | int, module: dict[str, Any]) -> None:
        """Announce this worker in its exchange (replaces an earlier registration)."""
        self._request("POST", f"/messaging/exchanges/{_q(exchange_id)}/modules", body=module)

    # -- clusters --------------------------------------------------------------------

    def list_clusters(self, allow_docker_builds: bool | None = None) -> list[dict[str, Any]]:
        """Every cluster, or only docker-build ones (the Manager filters on ``true`` only)."""
        params = {"allow_docker_builds": "true"} if allow_docker_builds else None
        return self._json("GET", "/clusters", params=params, expect=list)

    def list_exchange_clusters(
        self, exchange_id: str | int, allow_docker_builds: bool | None = None
    ) -> list[dict[str, Any]]:
        """The clusters of one exchange, optionally filtered on ``allow_docker_builds``."""
        params = None
        if allow_docker_builds is not None:
            params = {"allow_docker_builds": "true" if allow_docker_builds else "false"}
        path = f"/messaging/exchanges/{_q(exchange_id)}/clusters"
        return self._json("GET", path, params=params, expect=list)

    def get_cluster(self, etcd_token: str) -> dict[str, Any]:
        """One cluster by etcd token; ManagerNotFound when the Manager does not know it."""
        return self._json("GET", f"/clusters/{_q(etcd_token)}", expect=dict)

    # -- messaging registry ----------------------------------------------------------

    def get_exchange(self, exchange_id: str | int) -> dict[str, Any]:
        """One messaging exchange."""
        return self._json("GET", f"/messaging/exchanges/{_q(exchange_id)}", expect=dict)

    def list_exchange_modules(self, exchange_id: str | int) -> list[dict[str, Any]]:
        """The modules (builders, deployers...) registered in an exchange."""
        path = f"/messaging/exchanges/{_q(exchange_id)}/modules"
        return self._json("GET", path, expect=list)

    def list_exchange_brokers(self, exchange_id: str | int) -> list[dict[str, Any]]:
        """The brokers of an exchange."""
        path = f"/messaging/exchanges/{_q(exchange_id)}/brokers"
        return self._json("GET", path, expect=list)

    def get_broker(self, broker_id: str | int) -> dict[str, Any]:
        """One broker."""
        return self._json("GET", f"/messaging/brokers/{_q(broker_id)}", expect=dict)

    def list_broker_connections(self, broker_id: str | int) -> list[dict[str, Any]]:
        """A broker's connection options (hosts, credentials)."""
        path = f"/messaging/brokers/{_q(broker_id)}/connections"
        return self._json("GET", path, expect=list)

    # -- plumbing --------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        expect: type,
    ) -> Any:
        """A call whose 2xx answer must be a JSON value of type ``expect``."""
        response = self._request(method, path, params=params)
        call = f"{method} {path}"
        try:
            value = response.json()
        except ValueError:
            # The Manager answered but not in JSON: a server fault, retrying may help.
            raise ManagerTransientError(call, response.status_code, "answer is not JSON") from None
        if not isinstance(value, expect):
            raise ManagerTransientError(
                call, response.status_code, f"expected a JSON {expect.__name__}"
            )
        return value

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> requests.Response:
        """One call with bearer auth; on a 401 a fresh token is fetched and the call repeated once."""
        call = f"{method} {path}"
        for attempt in (1, 2):
            token = self.tokens.token() if self.tokens is not None else None
            response = self._send(method, path, call, token, body, params)
            if response.status_code == 401 and token is not None and attempt == 1:
                assert self.tokens is not None
                self.tokens.invalidate(token)
                response.close()
                continue
            status = response.status_code
            if 200 <= status < 300 or status in accept:
                return response
            if status == 401 and token is not None:  # refused with a token just issued
                raise CredentialsRejected(call, status, self._scrub(response.text, token))
            raise _classify(call, status, self._scrub(response.text, token))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self,
        method: str,
        path: str,
        call: str,
        token: str | None,
        body: Any,
        params: dict[str, str] | None,
    ) -> requests.Response:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        # The label is worked out only when a span will carry it.
        label = call_label(call) if self.tracing.enabled else ""
        started = time.perf_counter()
        try:
            with self.tracing.span(f"manager {label}", manager_call=label):
                response = self._session.request(
                    method,
                    self.base_url + path,
                    headers=headers,
                    data=data,
                    params=params,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
        except requests.RequestException as exc:
            seconds = time.perf_counter() - started
            self.metrics.manager_call(call, None, seconds)
            log.debug("%s failed after %.1f ms: %s", call, seconds * 1000, type(exc).__name__)
            raise _transport_error(call, exc) from exc
        seconds = time.perf_counter() - started
        self.metrics.manager_call(call, response.status_code, seconds)
        log.debug("%s -> %s in %.1f ms", call, response.status_code, seconds * 1000)
        return response

    def _scrub(self, text: str, token: str | None) -> str:
        if self.tokens is not None:
            return _excerpt(self.tokens.scrub(text), (token,))
        return _excerpt(text, (token,))


def _q(segment: str | int) -> str:
    """One URL path segment, quoted so an id can never change the path."""
    return quote(str(segment), safe="")
