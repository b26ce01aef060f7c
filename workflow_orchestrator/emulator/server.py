"""``ManagerEmulator``: the emulated Manager's Python API, and the pipeline of one request.

The HTTP side behaves like OpenAperture's real Manager (routes in ``workflows.py``,
``registry.py``, ``events.py``; sockets and parsing in ``http.py``). The Python side is
for tests, the demo and the benchmark: seeding writes rows as the real database would
hold them (``add_workflow`` keeps a given id), inspection reads them, and the fault
switches (``fail_for``, ``set_latency``, ``drop_connections_for``, ``expire_tokens``)
rehearse a Manager outage; they are also reachable over HTTP (``/_emulator/*``, no auth).
Neither the client secret nor any token is ever logged.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..settings import redact_url
from . import control, events, registry, workflows
from .auth import Tokens, token_endpoint, unauthorized
from .columns import MODEL_FIELDS, cast, parse_rfc1123, poison_encode, uuid_hex, uuid_shaped
from .faults import Faults
from .http import Crash, HTTPProblem, HTTPService, Request, Response, match, parse_body, routes
from .publisher import StartPublisher
from .store import Store, integer_id

log = logging.getLogger("workflow_orchestrator.emulator")

TOKEN_ROUTE = "/oauth/token"
#: The real Manager's routes this emulator serves; the key of counters() is "METHOD template".
API_ROUTES = routes(
    {
        TOKEN_ROUTE: {"POST": lambda em, req: token_endpoint(em.tokens, req)},
        **workflows.ROUTES,
        **registry.ROUTES,
        **events.ROUTES,
    }
)
CONTROL_ROUTES = routes(control.ROUTES)
#: What the real Manager's error view answers when a controller raises.
SERVER_ERROR = "Server internal error - 500"


class ManagerEmulator:
    """A Manager on loopback: SQLite-backed, OAuth-protected, able to misbehave on demand.

    ``start()`` serves in a daemon thread; ``stop()`` closes every connection. A stopped
    emulator keeps its data and can be started again on the same port, which is how a
    test simulates a Manager restart. ``exchange_id`` and ``broker_id`` are the Manager's
    own (its ``EXCHANGE_ID`` / ``BROKER_ID``), which ``execute`` puts in the start message.
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
        exchange_id: str = "1",
        broker_id: str = "1",
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.token_ttl = token_ttl
        self.broker_url = broker_url
        self.orchestrate_task = orchestrate_task
        self.queue_name = queue_name
        # Kept for callers: the orchestration queue no longer carries dead-letter arguments
        # (the orchestrator dead-letters itself), so the emulator has no use for it.
        self.error_queue_name = error_queue_name
        self.exchange_id = exchange_id
        self.broker_id = broker_id
        self.store = Store(db_path)
        self.tokens = Tokens(client_id, client_secret, token_ttl)
        self.faults = Faults()
        self.url = ""
        self.token_url = ""
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._http = HTTPService(self._serve)
        self._publisher = StartPublisher(broker_url, orchestrate_task, queue_name)

    def __repr__(self) -> str:
        broker = redact_url(self.broker_url) if self.broker_url else None
        return f"ManagerEmulator(url={self.url!r}, broker_url={broker!r})"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ManagerEmulator:
        """Bind and serve in a daemon thread; ``url`` and ``token_url`` are set on return."""
        if self._http.running:
            return self
        self.port = self._http.start(self.host, self.port)
        self.url = f"http://{self.host}:{self.port}"
        self.token_url = f"{self.url}{TOKEN_ROUTE}"
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection; the data stays readable."""
        self._http.stop()
        self._publisher.close()

    def __enter__(self) -> ManagerEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- seeding (rows as the real database would hold them) ---------------------------

    def add_workflow(self, fields: dict[str, Any]) -> str:
        """Store a workflow row; returns its id (a new uuid4 when ``id`` is absent).

        Unlike ``POST /workflows`` a given id is kept (it must be a UUID, as every real
        one is), milestones are stored as given, and a string for a JSON-text column is
        the column's raw text (so a test can seed text that does not decode). Omitted
        ``workflow_completed`` is false (the schema default), omitted fields null.
        ValueError for what the real table could not hold.
        """
        given = fields.get("id")
        workflow_id = str(uuid.uuid4()) if given is None else str(given)
        if not (uuid_shaped(workflow_id) and uuid_hex(workflow_id)):
            raise ValueError(f"workflow ids are UUIDs in the real Manager, not {workflow_id!r}")
        values: dict[str, Any] = {"workflow_completed": False}
        for column in MODEL_FIELDS:
            if column.name not in fields:
                continue
            value = fields[column.name]
            if column.kind == "json_text" and value is not None and not isinstance(value, str):
                value = poison_encode(value)
            elif (
                column.kind == "datetime" and value is not None and not isinstance(value, datetime)
            ):
                value = parse_rfc1123(value)
            values[column.name] = cast(column, value)
        self.store.insert_workflow(workflow_id.lower(), values)
        return workflow_id.lower()

    def add_exchange(
        self,
        exchange_id: str | int | None = None,
        name: str = "",
        *,
        failover_exchange_id: str | int | None = None,
        parent_exchange_id: str | int | None = None,
        routing_key_fragment: str | None = None,
    ) -> dict[str, Any]:
        """Register an exchange (ids are integers; the next one when None); returns it."""
        values = {
            "name": name,
            "failover_exchange_id": _optional_id(failover_exchange_id, "exchange"),
            "parent_exchange_id": _optional_id(parent_exchange_id, "exchange"),
            "routing_key_fragment": routing_key_fragment,
        }
        wanted = None if exchange_id is None else integer_id(exchange_id, "exchange")
        new_id = self.store.add_exchange(values, wanted)
        exchange = self.store.get_exchange(new_id)
        assert exchange is not None
        return exchange

    def _ensure_exchange(self, exchange_id: str | int) -> int:
        wanted = integer_id(exchange_id, "exchange")
        if self.store.exchange_row(wanted) is None:
            self.store.add_exchange({"name": ""}, wanted)
        return wanted

    def add_cluster(
        self,
        etcd_token: str,
        messaging_exchange_id: str | int | None,
        allow_docker_builds: bool | None = False,
        *,
        name: str | None = None,
        hosting_provider_id: int | None = None,
    ) -> dict[str, Any]:
        """Register a cluster; its exchange is created when unknown. Returns it."""
        exchange = None
        if messaging_exchange_id is not None:
            exchange = self._ensure_exchange(messaging_exchange_id)
        return self.store.add_cluster(
            {
                "etcd_token": etcd_token,
                "messaging_exchange_id": exchange,
                "allow_docker_builds": allow_docker_builds,
                "name": name,
                "hosting_provider_id": hosting_provider_id,
            }
        )

    def add_module(
        self,
        exchange_id: str | int,
        type: str,  # noqa: A002 (the Manager's field name)
        hostname: str | None = None,
        status: str = "active",
        workload: Any = (),
        **repos: str | None,
    ) -> dict[str, Any]:
        """Register a module (builder, deployer...) as its POST would; returns it.

        The Manager keeps one module per hostname and exchange, so the default hostname
        is ``{type}-host``: a builder and a deployer added without one both stay.
        ``repos``: ``source_repo``, ``source_repo_git_ref``, ``deployment_repo``,
        ``deployment_repo_git_ref``.
        """
        unknown = set(repos) - {
            "source_repo",
            "source_repo_git_ref",
            "deployment_repo",
            "deployment_repo_git_ref",
        }
        if unknown:
            raise TypeError(f"add_module() got unexpected fields {sorted(unknown)}")
        exchange = self._ensure_exchange(exchange_id)
        module = {
            **repos,
            "hostname": hostname or f"{type}-host",
            "type": type,
            "status": status,
            "workload": poison_encode(list(workload) if isinstance(workload, tuple) else workload),
        }
        return self.store.replace_module(exchange, module)

    def add_broker(
        self,
        broker_id: str | int | None = None,
        exchange_id: str | int | None = None,
        name: str = "",
        *,
        failover_broker_id: str | int | None = None,
    ) -> dict[str, Any]:
        """Register a broker (ids are integers; the next one when None); returns it.

        With ``exchange_id`` the broker also becomes a restriction of that exchange
        (``add_exchange_broker``), the exchange being created when unknown.
        """
        wanted = None if broker_id is None else integer_id(broker_id, "broker")
        values = {
            "name": name,
            "failover_broker_id": _optional_id(failover_broker_id, "broker"),
        }
        broker = self.store.add_broker(values, wanted)
        if exchange_id is not None:
            self.add_exchange_broker(exchange_id, broker["id"])
        return broker

    def add_exchange_broker(self, exchange_id: str | int, broker_id: str | int) -> dict[str, Any]:
        """Restrict an exchange to a broker: a join row, with its own id (not the broker's)."""
        exchange = self._ensure_exchange(exchange_id)
        return self.store.add_exchange_broker(exchange, integer_id(broker_id, "broker"))

    def add_broker_connection(
        self,
        broker_id: str | int,
        host: str,
        port: int | None,
        username: str,
        password: str,
        virtual_host: str = "/",
    ) -> dict[str, Any]:
        """Add a connection option to a broker (``port`` None as the HTTP API stores it)."""
        connection = {
            "host": host,
            "port": port,
            "username": username,
            "password": password,
            "virtual_host": virtual_host,
        }
        return self.store.add_broker_connection(integer_id(broker_id, "broker"), connection)

    def seed(self, data: dict[str, Any]) -> None:
        """Load ``{"exchanges", "clusters", "modules", "brokers", "exchange_brokers",
        "broker_connections", "workflows"}`` (lists of objects with the add_* arguments)."""
        for item in data.get("exchanges", ()):
            item = dict(item)
            self.add_exchange(item.pop("id", None), item.pop("name", ""), **item)
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
            self.add_broker(item.pop("id", None), exchange, **item)
        for item in data.get("exchange_brokers", ()):
            item = dict(item)
            exchange = item.pop("exchange_id", item.pop("messaging_exchange_id", None))
            broker = item.pop("broker_id", item.pop("messaging_broker_id", None))
            self.add_exchange_broker(exchange, broker)
        for item in data.get("broker_connections", ()):
            item = dict(item)
            broker = item.pop("broker_id", item.pop("messaging_broker_id", None))
            self.add_broker_connection(
                broker,
                item.pop("host"),
                item.pop("port", None),
                item.pop("username"),
                item.pop("password"),
                **item,
            )
        for item in data.get("workflows", ()):
            self.add_workflow(item)

    # -- inspection (no HTTP) --------------------------------------------------------------

    def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """The workflow as GET would answer it, or None."""
        return self.store.get_workflow(workflow_id.lower())

    def system_events(self) -> list[dict[str, Any]]:
        """Every system event posted, oldest first."""
        return self.store.list_system_events()

    def modules(self, exchange_id: str | int) -> list[dict[str, Any]]:
        """The modules registered in an exchange."""
        return self.store.list_modules(integer_id(exchange_id, "exchange"))

    def workflow_puts(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every accepted PUT body for the workflow, in order (fault tests check the log)."""
        return self.store.workflow_puts(workflow_id.lower())

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
        return self.tokens.issue()

    # -- faults ----------------------------------------------------------------------

    def fail_for(self, seconds: float, status: int = 503, *, include_token: bool = False) -> None:
        """Answer every API call (the token endpoint too if asked) with ``status`` for a while."""
        self.faults.fail_for(seconds, status, include_token=include_token)

    def fail_next(self, call: str, count: int, status: int = 500) -> None:
        """Answer the next ``count`` calls ``call`` (``PUT /workflows/{id}``) with ``status``."""
        self.faults.fail_next(call, count, status)

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before answering any API call (0 turns it off)."""
        self.faults.set_latency(seconds)

    def drop_connections_for(self, seconds: float, *, include_token: bool = False) -> None:
        """Close the socket without answering, for a while."""
        self.faults.drop_connections_for(seconds, include_token=include_token)

    def reset_faults(self) -> None:
        """Behave again."""
        self.faults.reset()

    def expire_tokens(self) -> None:
        """Invalidate every issued token: the next call with one is answered 401."""
        self.tokens.expire_all()

    # -- what routes call ------------------------------------------------------------------

    def publish_start(self, message: dict[str, Any]) -> str | None:
        """Enqueue ``execute``'s start message; None (and a log line) when it cannot.

        The real Manager publishes from a GenServer cast and answers 202 either way.
        """
        try:
            return self._publisher.publish(message)
        except Exception as exc:  # noqa: BLE001
            # Broker errors may carry the broker URL (with its password): name the class only.
            log.warning(
                "emulator: could not enqueue workflow %s: %s", message.get("id"), type(exc).__name__
            )
            return None

    # -- request pipeline --------------------------------------------------------------

    def _serve(self, method: str, target: str, headers: Message, body: bytes) -> Response | None:
        """One request -> Response, or None to drop the connection unanswered."""
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if path.startswith("/_emulator/"):
            return self._control(method, path, query, headers, body)

        found = match(API_ROUTES, method, path)
        key = f"{method} {found[0].template}" if found else f"{method} <unknown>"
        is_token = found is not None and found[0].template == TOKEN_ROUTE
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1
        verdict = self.faults.verdict(is_token, key)
        if verdict.latency:
            time.sleep(verdict.latency)
        if verdict.drop:
            return None
        if verdict.fail_status is not None:
            status = verdict.fail_status
            retry = {"Retry-After": "1"} if status in (429, 503) else {}
            return Response.json(status, {"error": "emulated fault"}, retry)
        if found is not None and is_token:
            request = Request(method, path, found[2], query, headers, body, {})
            return self._call(found[1], request)
        try:
            body_params = parse_body(headers, body)
        except HTTPProblem as problem:
            return problem.response
        if found is None:
            return Response.empty(404)
        if not self.tokens.authorized(headers):
            return unauthorized()
        _route, handler, path_params = found
        params = {**query, **body_params, **path_params}
        request = Request(method, path, path_params, query, headers, body, params, body_params)
        return self._call(handler, request)

    def _control(
        self, method: str, path: str, query: dict[str, str], headers: Message, body: bytes
    ) -> Response:
        found = match(CONTROL_ROUTES, method, path)
        if found is None:
            return Response.json(404, {"error": "no such control route"})
        try:
            body_params = parse_body(headers, body)
        except HTTPProblem as problem:
            return problem.response
        _route, handler, path_params = found
        params = {**query, **body_params, **path_params}
        request = Request(method, path, path_params, query, headers, body, params, body_params)
        return self._call(handler, request)

    def _call(self, handler: Any, request: Request) -> Response:
        try:
            response: Response = handler(self, request)
            return response
        except HTTPProblem as problem:
            return problem.response
        except Crash as crash:
            log.info(
                "emulator: %s %s raised like the real Manager: %s",
                request.method,
                request.path,
                crash,
            )
            return Response.json(500, SERVER_ERROR)


def _optional_id(value: str | int | None, what: str) -> int | None:
    return None if value is None else integer_id(value, what)
