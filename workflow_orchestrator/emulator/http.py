"""HTTP plumbing of the Manager emulator: sockets, parsing, routing. No Manager behaviour.

A stdlib ``ThreadingHTTPServer`` with keep-alive. The handler disables Nagle and buffers
its writes (one flush per response): without both, every keep-alive request costs ~44 ms
of Nagle + delayed-ACK stall and timings lie.

Bodies are read into ``Request.params`` the way the real Manager's Phoenix endpoint does
(``Plug.Parsers``): only a JSON (or form) content type is parsed; any other body is
ignored; a JSON value that is not an object lands under ``"_json"``; query and path
parameters are merged in, path parameters winning. Routing is Phoenix's too: an unknown
method on a known path is a 404 (no 405), and ``HEAD`` is served as ``GET``.
"""

from __future__ import annotations

import json
import logging
import re
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
from urllib.parse import parse_qs, unquote

log = logging.getLogger("workflow_orchestrator.emulator")

#: Plug.Parsers' default body limit (bytes); larger bodies are answered 413.
MAX_BODY = 8_000_000


@dataclass
class Response:
    """Status, raw body and headers; build one with ``json``, ``text`` or ``empty``."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        """A JSON body (Phoenix's ``json conn, ...``)."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return cls(status, body, "application/json; charset=utf-8", dict(headers or {}))

    @classmethod
    def text(cls, status: int, text: str, headers: dict[str, str] | None = None) -> Response:
        """A plain-text body (Plug's ``resp(conn, status, "...")``)."""
        return cls(status, text.encode("utf-8"), "text/plain; charset=utf-8", dict(headers or {}))

    @classmethod
    def empty(cls, status: int, headers: dict[str, str] | None = None) -> Response:
        """No body at all (Plug's ``resp(conn, status, "")``)."""
        return cls(status, b"", None, dict(headers or {}))


class HTTPProblem(Exception):
    """Raised by a route to answer with ``response`` at once."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Crash(Exception):
    """The real Manager would raise here (a cast error, a bad date): answered 500 by its
    error view. The message is for the emulator's log only."""


@dataclass
class Request:
    """What a route sees: the raw parts, the parsed body and Phoenix's merged ``params``."""

    method: str
    path: str
    path_params: dict[str, str]
    query: dict[str, str]
    headers: Message
    body: bytes
    params: dict[str, Any]
    body_params: dict[str, Any] = field(default_factory=dict)


def parse_body(headers: Message, body: bytes) -> dict[str, Any]:
    """``Plug.Parsers`` with ``[:urlencoded, :json]`` and ``pass: ["*/*"]``.

    Raises HTTPProblem(400) for a JSON body that does not decode.
    """
    content_type = headers.get_content_type()
    maintype, _, subtype = content_type.partition("/")
    if maintype == "application" and (subtype == "json" or subtype.endswith("+json")):
        if not body.strip():
            return {}
        try:
            value = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body_error = {"errors": [{"message": "malformed JSON body"}]}
            raise HTTPProblem(Response.json(400, body_error)) from None
        return value if isinstance(value, dict) else {"_json": value}
    if content_type == "application/x-www-form-urlencoded":
        return parse_form(body)
    return {}  # Plug passes other types through unparsed: the body is never read


def parse_form(body: bytes) -> dict[str, str]:
    """A form body as flat string params; 400 when it is not UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPProblem(Response.json(400, {"error": "invalid_request"})) from None
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


# -- routing --------------------------------------------------------------------------

Handler = Callable[[Any, Request], Response]


@dataclass(frozen=True)
class Route:
    """One path template and its handlers by method."""

    template: str
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


def routes(table: dict[str, dict[str, Handler]]) -> list[Route]:
    """``{"/workflows/{id}": {"GET": handler}}`` -> matchable routes."""
    out = []
    for template, methods in table.items():
        parts = []
        for segment in template.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(segment))
        out.append(Route(template, re.compile("^/" + "/".join(parts) + "$"), methods))
    return out


def match(
    table: list[Route], method: str, path: str
) -> tuple[Route, Handler, dict[str, str]] | None:
    """The route and handler for ``method path`` (``HEAD`` as ``GET``), or None."""
    wanted = "GET" if method == "HEAD" else method
    for route in table:
        found = route.pattern.match(path)
        if found and wanted in route.methods:
            params = {k: unquote(v, errors="surrogateescape") for k, v in found.groupdict().items()}
            return route, route.methods[wanted], params
    return None


# -- the server -----------------------------------------------------------------------------

#: ``serve(method, target, headers, body)`` -> Response, or None to drop the connection.
Serve = Callable[[str, str, Message, bytes], "Response | None"]


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive handler; all behaviour lives in the ``serve`` callable."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024
    timeout = 300  # an idle keep-alive connection is closed after this many seconds
    server_version = "ManagerEmulator/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.service.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.service.track(self.connection, False)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: _handle logs one line per request, without the query string."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http: " + format, *args)

    def _handle(self) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        outcome: int | str = "dropped"
        try:
            try:
                body = self._read_body()
            except _BadBody as exc:
                self.close_connection = True
                response: Response | None = Response.json(exc.status, {"error": exc.message})
            else:
                response = self.server.service.serve(self.command, self.path, self.headers, body)
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
                self._reply(Response.empty(500))
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
        body = self.rfile.read(length)
        if len(body) < length:
            # The client died between the headers and the end of its body (a worker killed
            # mid-PUT): Plug's read_body fails and the action never runs; neither does ours.
            raise ConnectionResetError("the connection closed inside the request body")
        return body

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
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ConnectionResetError("the connection closed inside a body chunk")
            chunks.append(chunk)
            self.rfile.readline(1024)

    def _reply(self, response: Response) -> None:
        status = response.status
        body = b"" if status in (204, 304) else response.body
        self.send_response(status)
        if body and response.content_type:
            self.send_header("Content-Type", response.content_type)
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

    def __init__(self, address: tuple[str, int], service: HTTPService) -> None:
        self.service = service
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("emulator: connection error from %s", client_address, exc_info=True)


class HTTPService:
    """Serves ``serve`` on loopback in a daemon thread; ``stop()`` cuts every connection."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None

    @property
    def running(self) -> bool:
        """Whether it is serving."""
        return self._server is not None

    def start(self, host: str, port: int) -> int:
        """Bind and serve; returns the bound port."""
        server = _Server((host, port), self)
        bound = int(server.server_address[1])
        self._server = server
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve_loop,
            args=(server, self._wake[0]),
            name=f"manager-emulator-{bound}",
            daemon=True,
        )
        self._thread.start()
        return bound

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
        """Stop serving and shut every open connection down."""
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

    def track(self, conn: socket.socket, add: bool) -> None:
        """Remember open connections so ``stop()`` can cut them."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
