"""Which broker a worker request goes to, and how it is reached (docs/behaviour.md §5.1).

OpenAperture spreads workers over exchanges, each reached through its own brokers; a
build for exchange 2 must reach the builder on exchange 2's broker. Resolution:

1. the target exchange's broker restrictions, else 2. the own exchange's, else 3. the
   own ``BROKER_ID``;
4. the own broker is the own broker URL; any other broker is one of its Manager
   connections, and its ``failover_broker_id``'s connections are the fallback;
5. every choice among several is ``choice.pick`` of the workflow run, salted per choice,
   over a sorted list, so a redone transition goes to the same place whatever order the
   Manager answers in.

The result is a ``Route``: plain data, an ordered list of endpoints to try. The pure
helpers below do the deciding; ``BrokerResolver`` adds the Manager calls and caches.
Endpoint URLs carry a password: their ``repr`` and ``display`` never do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from kombu.utils.url import url_to_parts

from .choice import pick
from .errors import ManagerError, ManagerNotFound, PublishError

logger = logging.getLogger("workflow_orchestrator.brokers")

#: Salt of the broker choice (rules 1 and 2); connection choices are salted per broker.
BROKER_SALT = "broker"
DEFAULT_AMQP_PORT = 5672


class BrokerRegistry(Protocol):
    """The part of ``manager.ManagerClient`` resolution needs (a fake in tests)."""

    def list_exchange_brokers(self, exchange_id: str) -> list[dict[str, Any]]: ...

    def get_broker(self, broker_id: str) -> dict[str, Any]: ...

    def list_broker_connections(self, broker_id: str) -> list[dict[str, Any]]: ...


class NoBrokerConnection(PublishError):
    """No endpoint is known for a route: transient, the Manager may know one later."""


@dataclass(frozen=True)
class Endpoint:
    """One way to reach one broker. ``url`` holds the password: never log it."""

    broker_id: str
    url: str = field(repr=False)
    display: str
    own: bool = False

    def __str__(self) -> str:
        return self.display


@dataclass(frozen=True)
class Route:
    """Where one request goes: the chosen broker and the endpoints to try, in order."""

    exchange_id: str
    broker_id: str
    reason: str
    endpoints: tuple[Endpoint, ...]

    @property
    def own(self) -> bool:
        """True when the request stays on the orchestrator's own broker."""
        return len(self.endpoints) == 1 and self.endpoints[0].own

    def __str__(self) -> str:
        return " then ".join(e.display for e in self.endpoints)


# -- pure helpers ------------------------------------------------------------------------


def _order(value: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the others: a stable order for choices."""
    return (0, int(value), value) if value.isdigit() else (1, 0, value)


def _text(value: Any) -> str | None:
    """An id as a string (the Manager may answer ints or strings); None stays None."""
    if value is None or value == "":
        return None
    return str(value)


def restricted_brokers(rows: Iterable[Any]) -> list[str]:
    """The distinct ``messaging_broker_id`` of exchange-broker rows, sorted.

    The rows are join rows ``{"id", "messaging_exchange_id", "messaging_broker_id"}``:
    the row's own ``id`` is not a broker id.
    """
    ids = {_text(row.get("messaging_broker_id")) for row in rows or () if isinstance(row, dict)}
    ids.discard(None)
    return sorted((i for i in ids if i is not None), key=_order)


def _connection_key(row: dict[str, Any]) -> tuple[Any, ...]:
    ident = _text(row.get("id"))
    return (
        _order(ident) if ident is not None else (2, 0, ""),
        str(row.get("host", "")),
        str(row.get("port", "")),
        str(row.get("virtual_host", "")),
        str(row.get("username", "")),
    )


def usable_connections(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """The connection rows that name a host, in a stable order."""
    usable = [row for row in rows or () if isinstance(row, dict) and row.get("host")]
    return sorted(usable, key=_connection_key)


def _port(row: dict[str, Any]) -> int:
    port = row.get("port")
    return int(port) if port not in (None, "") else DEFAULT_AMQP_PORT


def _vhost(row: dict[str, Any]) -> str:
    vhost = row.get("virtual_host")
    return "/" if vhost in (None, "") else str(vhost)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def display(broker_id: str, host: str, port: int | None, vhost: str | None) -> str:
    """How logs and errors name an endpoint: ``broker {id} host:port/vhost``, no password."""
    port_part = f":{port}" if port else ""
    return f"broker {broker_id} {_host(host)}{port_part}/{vhost or '/'}"


def connection_url(row: dict[str, Any]) -> str:
    """``amqp://username:password@host:port/virtual_host``, each part URL-quoted."""
    user = quote(str(row.get("username") or ""), safe="")
    password = quote(str(row.get("password") or ""), safe="")
    credentials = f"{user}:{password}@" if user or password else ""
    vhost = quote(_vhost(row), safe="")
    return f"amqp://{credentials}{_host(str(row['host']))}:{_port(row)}/{vhost}"


def connection_endpoint(broker_id: str, row: dict[str, Any]) -> Endpoint:
    """The endpoint of one Manager connection row."""
    return Endpoint(
        broker_id=broker_id,
        url=connection_url(row),
        display=display(broker_id, str(row["host"]), _port(row), _vhost(row)),
    )


def own_endpoint(broker_id: str, url: str) -> Endpoint:
    """The own broker, reached through the orchestrator's own broker URL."""
    first = url.split(";", 1)[0]
    parts = url_to_parts(first)
    return Endpoint(
        broker_id=broker_id,
        url=url,
        display=display(broker_id, parts.hostname or "localhost", parts.port, parts.path),
        own=True,
    )


def choose_broker(
    target_rows: Sequence[Any],
    own_rows: Callable[[], Sequence[Any]],
    own_broker_id: str,
    run_key: str,
) -> tuple[str, str]:
    """Rules 1-3: ``(broker id, reason)``. ``own_rows`` is only called when needed."""
    ids = restricted_brokers(target_rows)
    if ids:
        return pick(ids, run_key, BROKER_SALT), "restricted by the target exchange"
    ids = restricted_brokers(own_rows())
    if ids:
        return pick(ids, run_key, BROKER_SALT), "restricted by the own exchange"
    return own_broker_id, "no exchange restrictions"


def choose_connection(broker_id: str, rows: Sequence[Any], run_key: str) -> Endpoint | None:
    """Rule 4 and 5: one of a broker's connections, fixed per run; None when it has none."""
    usable = usable_connections(rows)
    if not usable:
        return None
    return connection_endpoint(broker_id, pick(usable, run_key, f"connection|{broker_id}"))


# -- the shell: Manager calls and caches -------------------------------------------------


class _TTLCache:
    """Answers kept ``lifetime`` seconds; thread-safe; failures are never stored."""

    def __init__(self, lifetime: float, clock: Callable[[], float]) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._items: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> tuple[bool, Any]:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] <= self.clock():
                return False, None
            return True, hit[1]

    def put(self, key: tuple[str, str], value: Any) -> None:
        if self.lifetime > 0:
            with self._lock:
                self._items[key] = (self.clock() + self.lifetime, value)

    def drop(self, predicate: Callable[[tuple[str, str], Any], bool]) -> None:
        with self._lock:
            for key in [k for k, (_, v) in self._items.items() if predicate(k, v)]:
                del self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class BrokerResolver:
    """Resolves the route of a request to a target exchange (docs/behaviour.md §5.1).

    One instance per worker process, shared by its threads. Exchange restrictions,
    broker records and connection lists are cached ``cache_seconds`` (5 minutes); a
    publisher that fails on a broker calls ``forget_broker`` so it is asked again.

    Manager failures: a restriction list or the chosen broker's connection list that
    cannot be read raises (a transient Manager error is retried by the task; sending
    elsewhere would misroute the request). A 404 reads as "none". The failover part
    is best effort: a failure to look it up costs the fallback, not the request.
    """

    def __init__(
        self,
        manager: BrokerRegistry,
        exchange_id: str | int,
        broker_id: str | int,
        own_url: str,
        *,
        cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.exchange_id = str(exchange_id)
        self.broker_id = str(broker_id)
        self._own = own_endpoint(self.broker_id, own_url)
        #: Plain data that never changes: built once, not per chat, e-mail and deadline.
        self._own_route = Route(self.exchange_id, self.broker_id, "own broker", (self._own,))
        self._cache = _TTLCache(cache_seconds, clock)

    def __repr__(self) -> str:
        return f"BrokerResolver(exchange={self.exchange_id!r}, own={self._own.display!r})"

    def own_route(self) -> Route:
        """The own exchange and broker: notifications and ``scheduled`` (rule 7)."""
        return self._own_route

    def resolve(self, target_exchange_id: str | int | None, run_key: str) -> Route:
        """The route to ``target_exchange_id`` (None: the own exchange) for one run."""
        target = _text(target_exchange_id) or self.exchange_id

        def own_rows() -> list[dict[str, Any]]:
            if target == self.exchange_id:
                return []  # rule 2 would ask the same exchange again
            return self._restrictions(self.exchange_id)

        target_rows = self._restrictions(target)
        broker_id, reason = choose_broker(target_rows, own_rows, self.broker_id, run_key)
        endpoints = self._endpoints(broker_id, run_key)
        if not endpoints:
            raise NoBrokerConnection(
                f"no connection is known for broker {broker_id} (exchange {target}, {reason})"
            )
        route = Route(target, broker_id, reason, tuple(endpoints))
        logger.debug("exchange %s: broker %s (%s) via %s", target, broker_id, reason, route)
        return route

    def route_to_broker(self, broker_id: str | int, run_key: str) -> Route:
        """The route to one named broker (rule 4 and its failover): how a worker reaches
        the broker a request's routing fields name."""
        key = str(broker_id)
        endpoints = self._endpoints(key, run_key)
        if not endpoints:
            raise NoBrokerConnection(f"no connection is known for broker {key}")
        return Route(self.exchange_id, key, "named by the request", tuple(endpoints))

    def forget_broker(self, broker_id: str | int) -> None:
        """Drop what is cached about a broker that failed, so the Manager is asked again."""
        key = str(broker_id)
        self._cache.drop(
            lambda k, v: (
                (k[0] in ("broker", "connections") and k[1] == key)
                or (k[0] == "restrictions" and key in restricted_brokers(v))
            )
        )

    def clear(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    # -- lookups -----------------------------------------------------------------------

    def _cached(self, kind: str, ident: str, fetch: Callable[[str], Any]) -> Any:
        found, value = self._cache.get((kind, ident))
        if found:
            return value
        value = fetch(ident)
        self._cache.put((kind, ident), value)
        return value

    def _restrictions(self, exchange_id: str) -> list[dict[str, Any]]:
        try:
            return self._cached("restrictions", exchange_id, self.manager.list_exchange_brokers)
        except ManagerNotFound:
            return []

    def _connections(self, broker_id: str) -> list[dict[str, Any]]:
        try:
            return self._cached("connections", broker_id, self.manager.list_broker_connections)
        except ManagerNotFound:
            return []

    def _failover_id(self, broker_id: str) -> str | None:
        try:
            record = self._cached("broker", broker_id, self.manager.get_broker)
        except ManagerError as exc:
            logger.warning("broker %s: no failover known (%s)", broker_id, exc)
            return None
        failover = _text(record.get("failover_broker_id")) if isinstance(record, dict) else None
        return failover if failover != broker_id else None

    def _endpoint(self, broker_id: str, run_key: str) -> Endpoint | None:
        if broker_id == self.broker_id:
            return self._own
        endpoint = choose_connection(broker_id, self._connections(broker_id), run_key)
        if endpoint is None:
            logger.warning("broker %s has no connections in the Manager", broker_id)
        return endpoint

    def _endpoints(self, broker_id: str, run_key: str) -> list[Endpoint]:
        if broker_id == self.broker_id:
            return [self._own]  # rule 4: the own URL, nothing asked of the Manager
        primary = self._endpoint(broker_id, run_key)
        endpoints = [primary] if primary is not None else []
        failover_id = self._failover_id(broker_id)
        if failover_id is not None:
            try:
                fallback = self._endpoint(failover_id, run_key)
            except ManagerError as exc:
                logger.warning("failover broker %s unavailable: %s", failover_id, exc)
                fallback = None
            if fallback is not None:
                endpoints.append(fallback)
        return endpoints
