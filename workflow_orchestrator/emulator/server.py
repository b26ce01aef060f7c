"""The Manager emulator's HTTP side: real sockets, the real routes, switchable faults.

It speaks the part of the OpenAperture Manager REST contract the orchestrator uses
(CONTRACT.md 6), over a stdlib ``ThreadingHTTPServer`` with keep-alive. The handler
disables Nagle and buffers its writes (one flush per response): without both, every
keep-alive request costs ~44 ms of Nagle + delayed-ACK stall and timings lie.

Fault switches (``fail_for``, ``set_latency``, ``drop_connections_for``,
``expire_tokens``) let tests and the demo rehearse a Manager outage; they are also
reachable over HTTP (``/_emulator/*``, no auth) for out-of-process tests.
Neither the client secret nor any token is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import secrets
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..publisher import describe
from ..queues import orchestration_queue
from ..settings import redact_url
from .store import Conflict, Store, StoreError

log = logging.getLogger("workflow_orchestrator.emulator")

#: Largest request body accepted (a workflow with a long event log fits easily).
MAX_BODY = 16 * 1024 * 1024
#: Seconds the unique flag of a system event looks back.
UNIQUE_EVENT_WINDOW = 3600.0
_EXECUTE_OPTIONS = ("force_build", "build_messaging_exchange_id", "deploy_messaging_exchange_id")


class HTTPProblem(Exception):
    """Raised by a route to answer an error status with a JSON body."""

    def __init__(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = headers or {}


@dataclass
class Request:
    """What a route sees: path parameters already unquoted, query flattened."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The decoded body (None when empty); 400 when it is not JSON."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HTTPProblem(400, {"error": "invalid JSON body"}) from None

    def json_object(self, *, optional: bool = False) -> dict[str, Any]:
        """The body as a JSON object; 400 for anything else (an empty body if optional)."""
        value = self.json()
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise HTTPProblem(400, {"error": "body must be a JSON object"})
        return value


@dataclass
class Response:
    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)


# -- routing --------------------------------------------------------------------------


def _pattern(template: str) -> re.Pattern[str]:
    parts = []
    for segment in template.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "$")


_Route = tuple[re.Pattern[str], str, dict[str, str]]


def _routes(table: dict[str, dict[str, str]]) -> list[_Route]:
    return [(_pattern(template), template, methods) for template, methods in table.items()]


#: template -> {method: ManagerEmulator method name}; the key of counters() is "METHOD template".
API_ROUTES = _routes(
    {
        "/oauth/token": {"POST": "_token"},
        "/workflows": {"GET": "_list_workflows", "POST": "_create_workflow"},
        "/workflows/{id}": {
            "GET": "_get_workflow",
            "PUT": "_put_workflow",
            "PATCH": "_put_workflow",
            "DELETE": "_delete_workflow",
        },
        "/workflows/{id}/execute": {"POST": "_execute_workflow"},
        "/clusters": {"GET": "_list_clusters", "POST": "_create_cluster"},
        "/clusters/{etcd_token}": {"GET": "_get_cluster"},
        "/messaging/exchanges": {"GET": "_list_exchanges", "POST": "_create_exchange"},
        "/messaging/exchanges/{id}": {"GET": "_get_exchange"},
        "/messaging/exchanges/{id}/clusters": {"GET": "_list_exchange_clusters"},
        "/messaging/exchanges/{id}/modules": {
            "GET": "_list_exchange_modules",
            "POST": "_create_exchange_module",
        },
        "/messaging/exchanges/{id}/brokers": {"GET": "_list_exchange_brokers"},
        "/messaging/brokers/{id}": {"GET": "_get_broker"},
        "/messaging/brokers/{id}/connections": {"GET": "_list_broker_connections"},
        "/system_events": {"GET": "_list_system_events", "POST": "_create_system_event"},
    }
)
CONTROL_ROUTES = _routes(
    {
        "/_emulator/faults": {"GET": "_ctl_get_faults", "POST": "_ctl_set_faults"},
        "/_emulator/counters": {"GET": "_ctl_counters", "DELETE": "_ctl_reset_counters"},
        "/_emulator/workflows/{id}/puts": {"GET": "_ctl_workflow_puts"},
    }
)
PUBLIC_ROUTES = frozenset({"POST /oauth/token"})


def _match(routes: list[_Route], path: str) -> tuple[str, dict[str, str], dict[str, str]] | None:
    for pattern, template, methods in routes:
        found = pattern.match(path)
        if found:
            params = {k: unquote(v) for k, v in found.groupdict().items()}
            return template, methods, params
    return None


# -- faults ---------------------------------------------------------------------------


@dataclass
class _Faults:
    fail_until: float = 0.0
    fail_status: int = 503
    fail_token: bool = False
    drop_until: float = 0.0
    drop_token: bool = False
    latency: float = 0.0

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "fail_for": max(0.0, self.fail_until - now),
            "status": self.fail_status,
            "drop_for": max(0.0, self.drop_until - now),
            "latency": self.latency,
        }


# -- HTTP plumbing ----------------------------------------------------------------------


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive JSON handler; all behaviour lives in ManagerEmulator."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024
    timeout = 300  # an idle keep-alive connection is closed after this many seconds
    server_version = "ManagerEmulator/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track(self.connection, False)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: _handle logs one line per request, without the query string."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http: " + format, *args)

    def _handle(self) -> None:
        started = time.perf_counter()
        path = urlsplit(self.path).path
        outcome: int | str = "dropped"
        try:
            try:
                body = self._read_body()
            except _BadBody as exc:
                self.close_connection = True
                response: Response | None = Response(exc.status, {"error": exc.message})
            else:
                response = self.server.emulator._serve(self.command, self.path, self.headers, body)
            if response is None:
                self.close_connection = True  # emulate a dropped connection: no answer at all
                return
            self._reply(response)
            outcome = response.status
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
            outcome = "client gone"
        except Exception:
            log.exception("emulator: unhandled error on %s %s", self.command, path)
            self.close_connection = True
            outcome = 500
            try:
                self._reply(Response(500, {"error": "internal error"}))
            except OSError:
                pass
        finally:
            ms = (time.perf_counter() - started) * 1000
            log.debug("%s %s -> %s in %.1f ms", self.command, path, outcome, ms)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if not raw:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise _BadBody(400, "invalid Content-Length") from None
        if length < 0:
            raise _BadBody(400, "invalid Content-Length")
        if length > MAX_BODY:
            raise _BadBody(413, "body too large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadBody(400, "invalid chunked body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise _BadBody(413, "body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _reply(self, response: Response) -> None:
        status = response.status
        body = b""
        if status not in (204, 304) and response.payload is not None:
            body = json.dumps(response.payload).encode("utf-8")
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # 16 threads connecting at once must not hit SYN retries

    def __init__(self, address: tuple[str, int], emulator: ManagerEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("emulator: connection error from %s", client_address, exc_info=True)


# -- the emulator -----------------------------------------------------------------------


class ManagerEmulator:
    """A Manager on loopback: SQLite-backed, OAuth-protected, able to misbehave on demand.

    ``start()`` serves in a daemon thread; ``stop()`` closes every connection. A stopped
    emulator keeps its data and can be started again on the same port, which is how a
    test simulates a Manager restart.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str = "orchestrator",
        client_secret: str = "s3cret",
        token_ttl: float = 3600,
        broker_url: str | None = None,
        orchestrate_task: str = "workflow_orchestrator.orchestrate",
        queue_name: str = "workflow_orchestration",
        error_queue_name: str = "",
        db_path: str = ":memory:",
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_ttl = token_ttl
        self.broker_url = broker_url
        self.orchestrate_task = orchestrate_task
        self.queue_name = queue_name
        self.error_queue_name = error_queue_name
        self.store = Store(db_path)
        self.url = ""
        self.token_url = ""
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._counters: dict[str, int] = {}
        self._faults = _Faults()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._celery: Any = None
        self._celery_lock = threading.Lock()

    def __repr__(self) -> str:
        broker = redact_url(self.broker_url) if self.broker_url else None
        return f"ManagerEmulator(url={self.url!r}, broker_url={broker!r})"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ManagerEmulator:
        """Bind and serve in a daemon thread; ``url`` and ``token_url`` are set on return."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), self)
        self.port = server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self.token_url = f"{self.url}/oauth/token"
        self._server = server
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve_loop,
            args=(server, self._wake[0]),
            name=f"manager-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    @staticmethod
    def _serve_loop(server: _Server, wake: socket.socket) -> None:
        # serve_forever() polls for shutdown every poll_interval, which made each stop()
        # cost 0.1 s; a wake-up socket ends the loop at once.
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                for key, _events in selector.select():
                    if key.fileobj is wake:
                        return
                    server._handle_request_noblock()

    def stop(self) -> None:
        """Stop serving and cut every open connection; the data stays readable."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._wake is not None:
            for end in self._wake:
                end.close()
            self._wake = None
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._celery_lock:
            app, self._celery = self._celery, None
        if app is not None:
            app.close()

    def __enter__(self) -> ManagerEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- seeding and inspection (no HTTP) --------------------------------------------

    def add_workflow(self, fields: dict[str, Any]) -> str:
        """Store a workflow as POST /workflows would; returns its id (uuid4 when absent)."""
        return self.store.insert_workflow(fields)

    def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """The workflow as GET would answer it, or None."""
        return self.store.get_workflow(workflow_id)

    def add_exchange(self, exchange_id: str | int, name: str = "", **extra: Any) -> dict[str, Any]:
        """Register an exchange (its id keeps its type in the JSON it is rendered as)."""
        return self.store.add_exchange({**extra, "id": exchange_id, "name": name})

    def add_cluster(
        self,
        etcd_token: str,
        messaging_exchange_id: str | int | None,
        allow_docker_builds: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """Register a cluster; its exchange is created when unknown."""
        if messaging_exchange_id is not None:
            self.store.ensure_exchange(messaging_exchange_id)
        return self.store.add_cluster(
            {
                **extra,
                "etcd_token": etcd_token,
                "messaging_exchange_id": messaging_exchange_id,
                "allow_docker_builds": allow_docker_builds,
            }
        )

    def add_module(
        self,
        exchange_id: str | int,
        type: str,  # noqa: A002 (the Manager's field name)
        hostname: str = "host",
        status: str = "active",
        **extra: Any,
    ) -> dict[str, Any]:
        """Register a module (builder, deployer...); its exchange is created when unknown."""
        self.store.ensure_exchange(exchange_id)
        module = {"workload": [], **extra, "hostname": hostname, "type": type, "status": status}
        return self.store.upsert_module(str(exchange_id), module)

    def add_broker(
        self, broker_id: str | int, exchange_id: str | int, name: str = "", **extra: Any
    ) -> dict[str, Any]:
        """Register a broker of an exchange; the exchange is created when unknown."""
        self.store.ensure_exchange(exchange_id)
        return self.store.add_broker({**extra, "id": broker_id, "name": name}, exchange_id)

    def add_broker_connection(
        self,
        broker_id: str | int,
        host: str,
        port: int,
        username: str,
        password: str,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a connection option to a broker."""
        connection = {
            **extra,
            "host": host,
            "port": port,
            "username": username,
            "password": password,
        }
        return self.store.add_broker_connection(broker_id, connection)

    def seed(self, data: dict[str, Any]) -> None:
        """Load ``{"exchanges", "clusters", "modules", "brokers", "broker_connections", "workflows"}``."""
        for item in data.get("exchanges", ()):
            item = dict(item)
            self.add_exchange(item.pop("id"), item.pop("name", ""), **item)
        for item in data.get("clusters", ()):
            item = dict(item)
            self.add_cluster(
                item.pop("etcd_token"), item.pop("messaging_exchange_id", None), **item
            )
        for item in data.get("modules", ()):
            item = dict(item)
            exchange = item.pop("exchange_id", None)
            exchange = item.pop("messaging_exchange_id", exchange)
            self.add_module(exchange, item.pop("type"), **item)
        for item in data.get("brokers", ()):
            item = dict(item)
            exchange = item.pop("exchange_id", None)
            exchange = item.pop("messaging_exchange_id", exchange)
            self.add_broker(item.pop("id"), exchange, **item)
        for item in data.get("broker_connections", ()):
            item = dict(item)
            self.add_broker_connection(
                item.pop("broker_id"),
                item.pop("host"),
                item.pop("port"),
                item.pop("username"),
                item.pop("password"),
                **item,
            )
        for item in data.get("workflows", ()):
            self.add_workflow(item)

    def system_events(self) -> list[dict[str, Any]]:
        """Every system event posted, oldest first."""
        return self.store.list_system_events()

    def modules(self, exchange_id: str | int) -> list[dict[str, Any]]:
        """The modules registered in an exchange."""
        return self.store.list_modules(str(exchange_id))

    def workflow_puts(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every accepted PUT body for the workflow, in order (fault tests check the log)."""
        return self.store.workflow_puts(workflow_id)

    def counters(self) -> dict[str, int]:
        """Calls per route key (``GET /workflows/{id}``), plus ``total``."""
        with self._lock:
            out = dict(self._counters)
        out["total"] = sum(out.values())
        return out

    def reset_counters(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._counters.clear()

    def issue_token(self) -> str:
        """A valid access token, as the token endpoint would issue it (for raw HTTP tests)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl
        return token

    # -- faults ----------------------------------------------------------------------

    def fail_for(self, seconds: float, status: int = 503, *, include_token: bool = False) -> None:
        """Answer every API call (the token endpoint too if asked) with ``status`` for a while."""
        with self._lock:
            self._faults.fail_until = time.monotonic() + seconds
            self._faults.fail_status = int(status)
            self._faults.fail_token = include_token

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before answering any API call (0 turns it off)."""
        with self._lock:
            self._faults.latency = max(0.0, float(seconds))

    def drop_connections_for(self, seconds: float, *, include_token: bool = False) -> None:
        """Close the socket without answering, for a while."""
        with self._lock:
            self._faults.drop_until = time.monotonic() + seconds
            self._faults.drop_token = include_token

    def reset_faults(self) -> None:
        """Behave again."""
        with self._lock:
            self._faults = _Faults()

    def expire_tokens(self) -> None:
        """Invalidate every issued token: the next call with one is answered 401."""
        with self._lock:
            self._tokens.clear()

    # -- request pipeline --------------------------------------------------------------

    def _serve(self, method: str, target: str, headers: Message, body: bytes) -> Response | None:
        """One request -> Response, or None to drop the connection unanswered."""
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if path.startswith("/_emulator/"):
            return self._dispatch(CONTROL_ROUTES, method, path, query, headers, body)

        found = _match(API_ROUTES, path)
        key = f"{method} {found[0]}" if found else f"{method} <unknown>"
        is_token = key in PUBLIC_ROUTES
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            faults = self._faults
            now = time.monotonic()
            latency = faults.latency
            drop = now < faults.drop_until and (faults.drop_token or not is_token)
            fail = now < faults.fail_until and (faults.fail_token or not is_token)
            fail_status = faults.fail_status
        if latency:
            time.sleep(latency)
        if drop:
            return None
        if fail:
            headers_out = {"Retry-After": "1"} if fail_status in (429, 503) else {}
            return Response(fail_status, {"error": "emulated fault"}, headers_out)
        if found and key not in PUBLIC_ROUTES and method in found[1]:
            if not self._authorized(headers):
                return Response(
                    401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Bearer realm="manager"'}
                )
        return self._dispatch(API_ROUTES, method, path, query, headers, body)

    def _dispatch(
        self,
        routes: list[_Route],
        method: str,
        path: str,
        query: dict[str, str],
        headers: Message,
        body: bytes,
    ) -> Response:
        found = _match(routes, path)
        if found is None:
            return Response(404, {"error": "not found"})
        _template, methods, params = found
        if method not in methods:
            allow = ", ".join(sorted(methods))
            return Response(405, {"error": "method not allowed"}, {"Allow": allow})
        request = Request(method, path, params, query, headers, body)
        handler: Callable[[Request], Response] = getattr(self, methods[method])
        try:
            return handler(request)
        except HTTPProblem as problem:
            return Response(problem.status, problem.payload, problem.headers)
        except StoreError as exc:
            return Response(400, {"errors": {exc.field: [exc.problem]}})
        except Conflict as exc:
            return Response(409, {"error": str(exc)})

    def _authorized(self, headers: Message) -> bool:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        with self._lock:
            expires = self._tokens.get(token)
            if expires is None:
                return False
            if time.monotonic() >= expires:
                del self._tokens[token]
                return False
        return True

    # -- OAuth -------------------------------------------------------------------------

    def _token(self, req: Request) -> Response:
        """Client credentials grant: JSON body (OpenAperture), form body or HTTP basic."""
        form = self._token_params(req)
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        scheme, _, encoded = req.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic" and encoded:
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return Response(400, {"error": "invalid_request"})
            user, _, password = decoded.partition(":")
            client_id, client_secret = unquote(user), unquote(password)
        if form.get("grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type"})
        if not (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and hmac.compare_digest(client_id.encode(), self.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), self._client_secret.encode())
        ):
            return Response(401, {"error": "invalid_client"})
        token = self.issue_token()
        payload = {"access_token": token, "token_type": "bearer", "expires_in": self.token_ttl}
        return Response(200, payload, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    @staticmethod
    def _token_params(req: Request) -> dict[str, Any]:
        content_type = req.headers.get_content_type()
        if content_type == "application/x-www-form-urlencoded":
            return _form(req.body)
        if content_type == "application/json":
            value = req.json()
            return value if isinstance(value, dict) else {}
        try:
            value = req.json()
        except HTTPProblem:
            return _form(req.body)
        return value if isinstance(value, dict) else {}

    # -- workflows -------------------------------------------------------------------

    def _list_workflows(self, req: Request) -> Response:
        lookback = _number(req.query.get("lookback", "24"), "lookback")
        repo = req.query.get("deployment_repo")
        if not repo and req.query.get("source_repo"):
            repo = f"{req.query['source_repo']}_docker"
        return Response(200, self.store.list_workflows(lookback, repo))

    def _create_workflow(self, req: Request) -> Response:
        wid = self.store.insert_workflow(req.json_object())
        location = f"/workflows/{quote(wid, safe='')}"
        return Response(201, self.store.get_workflow(wid), {"Location": location})

    def _get_workflow(self, req: Request) -> Response:
        workflow = self.store.get_workflow(req.params["id"])
        if workflow is None:
            raise HTTPProblem(404, {"error": "workflow not found"})
        return Response(200, workflow)

    def _put_workflow(self, req: Request) -> Response:
        wid = req.params["id"]
        body = req.json()
        if self.store.get_workflow(wid) is None:
            raise HTTPProblem(404, {"error": "workflow not found"})
        if not isinstance(body, dict):
            raise HTTPProblem(400, {"error": "body must be a JSON object"})
        if not self.store.update_workflow(wid, body):
            raise HTTPProblem(404, {"error": "workflow not found"})
        return Response(204, None, {"Location": f"/workflows/{quote(wid, safe='')}"})

    def _delete_workflow(self, req: Request) -> Response:
        if not self.store.delete_workflow(req.params["id"]):
            raise HTTPProblem(404, {"error": "workflow not found"})
        return Response(204)

    def _execute_workflow(self, req: Request) -> Response:
        wid = req.params["id"]
        body = req.json_object(optional=True)
        workflow = self.store.get_workflow(wid)
        if workflow is None:
            raise HTTPProblem(404, {"error": "workflow not found"})
        if workflow["workflow_completed"]:
            raise HTTPProblem(409, {"error": "Workflow has already completed"})
        if workflow["current_step"] is not None:
            raise HTTPProblem(409, {"error": "Workflow has already been started"})
        if not self.broker_url:
            raise HTTPProblem(503, {"error": "no broker configured"})
        options = {name: body.get(name) for name in _EXECUTE_OPTIONS}
        if not self.store.begin_execution(wid, options):
            raise HTTPProblem(404, {"error": "workflow not found"})
        try:
            task_id = self._publish({"id": wid, "workflow_id": wid, **options})
        except Exception as exc:
            # Broker errors may carry the broker URL (with its password): name the class only.
            log.warning("emulator: could not enqueue workflow %s: %s", wid, type(exc).__name__)
            raise HTTPProblem(503, {"error": "broker unavailable"}) from None
        location = f"/workflows/{quote(wid, safe='')}"
        return Response(202, {"id": wid, "task_id": task_id}, {"Location": location})

    def _publish(self, payload: dict[str, Any]) -> str:
        """Enqueue the orchestration exactly as a Celery caller would, with confirms."""
        app = self._celery_app()
        result = app.send_task(
            self.orchestrate_task,
            args=[payload],
            queue=self.queue_name,
            argsrepr=describe(payload, "start"),
            kwargsrepr="{}",
        )
        return str(result.id)

    def _celery_app(self) -> Any:
        with self._celery_lock:
            if self._celery is None:
                from celery import Celery  # imported lazily: seeding-only users skip its cost

                app = Celery(
                    "workflow_orchestrator_manager_emulator",
                    broker=self.broker_url,
                    set_as_current=False,
                )
                app.conf.update(
                    task_serializer="json",
                    accept_content=["json"],
                    result_serializer="json",
                    result_backend=None,
                    task_queues=[orchestration_queue(self.queue_name)],
                    task_default_queue=self.queue_name,
                    broker_transport_options={"confirm_publish": True},
                    broker_connection_timeout=4.0,
                    broker_connection_retry_on_startup=True,
                    task_publish_retry_policy={
                        "max_retries": 2,
                        "interval_start": 0,
                        "interval_step": 0.5,
                        "interval_max": 1,
                    },
                )
                self._celery = app
            return self._celery

    # -- clusters --------------------------------------------------------------------

    def _list_clusters(self, req: Request) -> Response:
        # Like the real Manager: only the value "true" filters; anything else lists all.
        allow = True if req.query.get("allow_docker_builds") == "true" else None
        return Response(200, self.store.list_clusters(allow_docker_builds=allow))

    def _create_cluster(self, req: Request) -> Response:
        body = req.json_object()
        exchange_id = body.get("messaging_exchange_id")
        if exchange_id is not None and self.store.get_exchange(str(exchange_id)) is None:
            raise StoreError("messaging_exchange_id", "does not exist")
        cluster = self.store.add_cluster(body)
        location = f"/clusters/{quote(cluster['etcd_token'], safe='')}"
        return Response(201, cluster, {"Location": location})

    def _get_cluster(self, req: Request) -> Response:
        cluster = self.store.get_cluster(req.params["etcd_token"])
        if cluster is None:
            raise HTTPProblem(404, {"error": "cluster not found"})
        return Response(200, cluster)

    # -- messaging -------------------------------------------------------------------

    def _exchange(self, req: Request) -> dict[str, Any]:
        exchange = self.store.get_exchange(req.params["id"])
        if exchange is None:
            raise HTTPProblem(404, {"error": "exchange not found"})
        return exchange

    def _list_exchanges(self, req: Request) -> Response:
        return Response(200, self.store.list_exchanges())

    def _create_exchange(self, req: Request) -> Response:
        exchange = self.store.add_exchange(req.json_object())
        location = f"/messaging/exchanges/{quote(str(exchange['id']), safe='')}"
        return Response(201, exchange, {"Location": location})

    def _get_exchange(self, req: Request) -> Response:
        return Response(200, self._exchange(req))

    def _list_exchange_clusters(self, req: Request) -> Response:
        self._exchange(req)
        raw = req.query.get("allow_docker_builds")
        allow = None if raw is None else _boolean(raw, "allow_docker_builds")
        clusters = self.store.list_clusters(exchange_id=req.params["id"], allow_docker_builds=allow)
        return Response(200, clusters)

    def _list_exchange_modules(self, req: Request) -> Response:
        self._exchange(req)
        return Response(200, self.store.list_modules(req.params["id"]))

    def _create_exchange_module(self, req: Request) -> Response:
        self._exchange(req)
        body = req.json_object()
        module = self.store.upsert_module(req.params["id"], body)
        location = (
            f"/messaging/exchanges/{quote(req.params['id'], safe='')}"
            f"/modules/{quote(module['hostname'], safe='')}"
        )
        return Response(201, module, {"Location": location})

    def _list_exchange_brokers(self, req: Request) -> Response:
        self._exchange(req)
        return Response(200, self.store.list_brokers(req.params["id"]))

    def _get_broker(self, req: Request) -> Response:
        broker = self.store.get_broker(req.params["id"])
        if broker is None:
            raise HTTPProblem(404, {"error": "broker not found"})
        return Response(200, broker)

    def _list_broker_connections(self, req: Request) -> Response:
        if self.store.get_broker(req.params["id"]) is None:
            raise HTTPProblem(404, {"error": "broker not found"})
        return Response(200, self.store.list_broker_connections(req.params["id"]))

    # -- system events ---------------------------------------------------------------

    def _list_system_events(self, req: Request) -> Response:
        lookback = _number(req.query.get("lookback", "24"), "lookback")
        return Response(200, self.store.list_system_events(lookback))

    def _create_system_event(self, req: Request) -> Response:
        try:
            event = self.store.add_system_event(req.json_object(), UNIQUE_EVENT_WINDOW)
        except Conflict:
            raise HTTPProblem(409, {"error": "a matching SystemEvent exists"}) from None
        return Response(201, event, {"Location": f"/system_events/{event['id']}"})

    # -- /_emulator control ----------------------------------------------------------

    def _ctl_get_faults(self, req: Request) -> Response:
        with self._lock:
            return Response(200, self._faults.snapshot(time.monotonic()))

    def _ctl_set_faults(self, req: Request) -> Response:
        body = req.json_object(optional=True)
        include_token = bool(body.get("include_token", False))
        try:
            if body.get("reset"):
                self.reset_faults()
            if body.get("expire_tokens"):
                self.expire_tokens()
            if body.get("fail_for") is not None:
                status = int(body.get("status", 503))
                self.fail_for(float(body["fail_for"]), status, include_token=include_token)
            if body.get("latency") is not None:
                self.set_latency(float(body["latency"]))
            if body.get("drop_for") is not None:
                self.drop_connections_for(float(body["drop_for"]), include_token=include_token)
        except (TypeError, ValueError):
            raise HTTPProblem(400, {"error": "fault values must be numbers"}) from None
        return self._ctl_get_faults(req)

    def _ctl_counters(self, req: Request) -> Response:
        return Response(200, self.counters())

    def _ctl_reset_counters(self, req: Request) -> Response:
        self.reset_counters()
        return Response(204)

    def _ctl_workflow_puts(self, req: Request) -> Response:
        return Response(200, self.workflow_puts(req.params["id"]))


def _form(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPProblem(400, {"error": "invalid_request"}) from None
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _number(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise HTTPProblem(400, {"error": f"{name} must be a number"}) from None


def _boolean(raw: str, name: str) -> bool:
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise HTTPProblem(400, {"error": f"{name} must be true or false"})
