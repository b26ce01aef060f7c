"""Broker resolution (docs/behaviour.md §5.1) against an in-memory Manager: every rule, the
choices fixed per run and spread over runs, the caches and how a failed broker is
forgotten."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Connection

from workflow_orchestrator.brokers import (
    BrokerResolver,
    NoBrokerConnection,
    connection_url,
    own_endpoint,
    restricted_brokers,
)
from workflow_orchestrator.choice import run_key
from workflow_orchestrator.errors import (
    ManagerNotFound,
    ManagerTransientError,
    PublishError,
)

OWN_EXCHANGE = "1"
OWN_BROKER = "1"
OWN_URL = "amqp://orch:own-secret-pw@rabbit.local:5672//"
KEY = run_key("3f5b8e4c-0000-4000-8000-000000000001", "2024-01-01T00:00:00Z")


class FakeManager:
    """The Manager's messaging registry in memory, recording every call it answers."""

    def __init__(self) -> None:
        self.restrictions: dict[str, list[dict[str, Any]]] = {}
        self.brokers: dict[str, dict[str, Any]] = {}
        self.connections: dict[str, list[dict[str, Any]]] = {}
        self.failures: dict[tuple[str, str], Exception] = {}
        self.calls: list[tuple[str, str]] = []
        self._rows = 100
        self._lock = threading.Lock()

    # -- seeding ---------------------------------------------------------------------

    def restrict(self, exchange: Any, *broker_ids: Any) -> None:
        """Join rows whose own ids are deliberately other brokers' ids."""
        for broker_id in broker_ids:
            self._rows += 1
            self.restrictions.setdefault(str(exchange), []).append(
                {
                    "id": self._rows,
                    "messaging_exchange_id": exchange,
                    "messaging_broker_id": broker_id,
                }
            )

    def broker(self, broker_id: Any, *hosts: str, failover: Any = None, **row: Any) -> None:
        self.brokers[str(broker_id)] = {
            "id": broker_id,
            "name": f"broker-{broker_id}",
            "failover_broker_id": failover,
        }
        for host in hosts:
            self._rows += 1
            connection = {
                "id": self._rows,
                "messaging_broker_id": broker_id,
                "username": f"user{broker_id}",
                "password": f"pw-{broker_id}-secret",
                "host": host,
                "port": 5672,
                "virtual_host": f"vh{broker_id}",
                **row,
            }
            self.connections.setdefault(str(broker_id), []).append(connection)

    # -- the client's methods ---------------------------------------------------------

    def _answer(self, call: str, ident: Any, table: dict[str, Any], path: str) -> Any:
        ident = str(ident)
        with self._lock:
            self.calls.append((call, ident))
        failure = self.failures.get((call, ident))
        if failure is not None:
            raise failure
        if ident not in table:
            raise ManagerNotFound(f"GET {path}", 404)
        value = table[ident]
        return [dict(v) for v in value] if isinstance(value, list) else dict(value)

    def list_exchange_brokers(self, exchange_id: Any) -> list[dict[str, Any]]:
        if str(exchange_id) not in self.restrictions and (
            ("restrictions", str(exchange_id)) not in self.failures
        ):
            with self._lock:
                self.calls.append(("restrictions", str(exchange_id)))
            return []  # an exchange without restrictions
        path = f"/messaging/exchanges/{exchange_id}/brokers"
        return self._answer("restrictions", exchange_id, self.restrictions, path)

    def get_broker(self, broker_id: Any) -> dict[str, Any]:
        return self._answer("broker", broker_id, self.brokers, f"/messaging/brokers/{broker_id}")

    def list_broker_connections(self, broker_id: Any) -> list[dict[str, Any]]:
        path = f"/messaging/brokers/{broker_id}/connections"
        return self._answer("connections", broker_id, self.connections, path)

    def count(self, call: str, ident: Any) -> int:
        return self.calls.count((call, str(ident)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def resolver_for(manager: FakeManager, clock: Clock | None = None, **kw: Any) -> BrokerResolver:
    return BrokerResolver(manager, OWN_EXCHANGE, OWN_BROKER, OWN_URL, clock=clock or Clock(), **kw)


# -- rules 1-3: which broker --------------------------------------------------------------


def test_target_exchange_restriction_uses_messaging_broker_id_not_row_id(
    manager: FakeManager,
) -> None:
    manager.restrict(2, 7)  # the join row's own id (101) is not a broker
    manager.broker(7, "rabbit-7.example")
    manager.broker(101, "wrong.example")
    route = resolver_for(manager).resolve(2, KEY)
    assert route.broker_id == "7"
    assert route.exchange_id == "2"
    assert [e.broker_id for e in route.endpoints] == ["7"]
    assert route.endpoints[0].url == "amqp://user7:pw-7-secret@rabbit-7.example:5672/vh7"
    assert route.endpoints[0].display == "broker 7 rabbit-7.example:5672/vh7"
    assert not route.own
    assert manager.count("connections", 101) == 0


def test_unrestricted_target_falls_back_to_own_exchange_restrictions(
    manager: FakeManager,
) -> None:
    manager.restrict(OWN_EXCHANGE, 5)
    manager.broker(5, "rabbit-5.example")
    route = resolver_for(manager).resolve(3, KEY)
    assert route.broker_id == "5"
    assert route.reason == "restricted by the own exchange"
    assert manager.count("restrictions", 3) == 1
    assert manager.count("restrictions", OWN_EXCHANGE) == 1


def test_no_restrictions_anywhere_uses_own_broker_and_own_url(manager: FakeManager) -> None:
    manager.broker(OWN_BROKER, "never-asked.example")
    route = resolver_for(manager).resolve(3, KEY)
    assert route.own
    assert route.broker_id == OWN_BROKER
    (endpoint,) = route.endpoints
    assert endpoint.url == OWN_URL
    assert endpoint.display == "broker 1 rabbit.local:5672//"
    # Rule 4: the own broker needs no Manager lookup at all.
    assert manager.count("connections", OWN_BROKER) == 0
    assert manager.count("broker", OWN_BROKER) == 0


def test_target_restriction_wins_over_own_exchange_restriction(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.restrict(OWN_EXCHANGE, 5)
    manager.broker(7, "rabbit-7.example")
    assert resolver_for(manager).resolve(2, KEY).broker_id == "7"
    assert manager.count("restrictions", OWN_EXCHANGE) == 0


def test_target_is_own_exchange_is_asked_once(manager: FakeManager) -> None:
    route = resolver_for(manager, cache_seconds=0).resolve(OWN_EXCHANGE, KEY)
    assert route.own
    assert manager.count("restrictions", OWN_EXCHANGE) == 1


def test_no_target_means_own_exchange(manager: FakeManager) -> None:
    manager.restrict(OWN_EXCHANGE, 5)
    manager.broker(5, "rabbit-5.example")
    route = resolver_for(manager).resolve(None, KEY)
    assert (route.exchange_id, route.broker_id) == (OWN_EXCHANGE, "5")


def test_restriction_to_the_own_broker_uses_own_url(manager: FakeManager) -> None:
    manager.restrict(2, int(OWN_BROKER))  # an int from the Manager, our id is a string
    manager.broker(OWN_BROKER, "never-asked.example")
    route = resolver_for(manager).resolve("2", KEY)
    assert route.own
    assert route.endpoints[0].url == OWN_URL
    assert manager.count("connections", OWN_BROKER) == 0


def test_ids_compare_as_strings(manager: FakeManager) -> None:
    manager.restrict("2", 7)
    manager.broker("7", "rabbit-7.example", failover=1)  # int failover = own "1"
    resolver = BrokerResolver(manager, 1, 1, OWN_URL, clock=Clock())
    route = resolver.resolve(2, KEY)
    assert [e.broker_id for e in route.endpoints] == ["7", "1"]
    assert route.endpoints[1].own
    assert route.endpoints[1].url == OWN_URL


def test_404_on_restrictions_reads_as_none(manager: FakeManager) -> None:
    manager.failures[("restrictions", "9")] = ManagerNotFound("GET x", 404)
    assert resolver_for(manager).resolve(9, KEY).own


def test_transient_failure_on_restrictions_raises_and_is_asked_again(
    manager: FakeManager,
) -> None:
    """Falling back to our own broker during a Manager blip would misroute the build."""
    manager.restrict(2, 7)
    manager.broker(7, "rabbit-7.example")
    manager.failures[("restrictions", "2")] = ManagerTransientError("GET x", 503)
    resolver = resolver_for(manager)
    with pytest.raises(ManagerTransientError):
        resolver.resolve(2, KEY)
    del manager.failures[("restrictions", "2")]
    assert resolver.resolve(2, KEY).broker_id == "7"


def test_transient_failure_on_chosen_broker_connections_raises(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, "rabbit-7.example", failover=8)
    manager.broker(8, "rabbit-8.example")
    manager.failures[("connections", "7")] = ManagerTransientError("GET x", 502)
    with pytest.raises(ManagerTransientError):
        resolver_for(manager).resolve(2, KEY)


# -- rule 4: connections, URLs and failover -----------------------------------------------


def test_connection_url_quotes_every_part_and_round_trips_through_kombu() -> None:
    row = {
        "username": "build@eu",
        "password": "p@ss:w/rd%?#",
        "host": "10.0.0.5",
        "port": "5673",
        "virtual_host": "/",
    }
    url = connection_url(row)
    assert url == "amqp://build%40eu:p%40ss%3Aw%2Frd%25%3F%23@10.0.0.5:5673/%2F"
    conn = Connection(url)
    assert (conn.userid, conn.password, conn.hostname, conn.port, conn.virtual_host) == (
        "build@eu",
        "p@ss:w/rd%?#",
        "10.0.0.5",
        5673,
        "/",
    )
    nested = Connection(connection_url({**row, "virtual_host": "eu/builds"}))
    assert nested.virtual_host == "eu/builds"


def test_connection_defaults_and_ipv6() -> None:
    url = connection_url({"username": "u", "password": "p", "host": "::1"})
    assert url == "amqp://u:p@[::1]:5672/%2F"
    assert Connection(url).hostname == "::1"


def test_failover_broker_connections_come_second(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, "rabbit-7.example", failover=8)
    manager.broker(8, "rabbit-8.example")
    route = resolver_for(manager).resolve(2, KEY)
    assert [e.display for e in route.endpoints] == [
        "broker 7 rabbit-7.example:5672/vh7",
        "broker 8 rabbit-8.example:5672/vh8",
    ]
    assert (
        str(route) == "broker 7 rabbit-7.example:5672/vh7 then broker 8 rabbit-8.example:5672/vh8"
    )


def test_failover_is_one_level_and_never_itself(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, "rabbit-7.example", failover=8)
    manager.broker(8, "rabbit-8.example", failover=9)
    manager.broker(9, "rabbit-9.example")
    assert [e.broker_id for e in resolver_for(manager).resolve(2, KEY).endpoints] == ["7", "8"]
    manager.broker(7, "rabbit-7.example", failover=7)
    assert [e.broker_id for e in resolver_for(manager).resolve(2, KEY).endpoints] == ["7"]


def test_primary_without_connections_leaves_the_failover(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, failover=8)  # no connections at all
    manager.broker(8, "rabbit-8.example")
    route = resolver_for(manager).resolve(2, KEY)
    assert route.broker_id == "7"
    assert [e.broker_id for e in route.endpoints] == ["8"]


def test_no_connection_anywhere_is_a_publish_error_without_password(
    manager: FakeManager,
) -> None:
    manager.restrict(2, 7)
    manager.broker(7)
    with pytest.raises(NoBrokerConnection) as caught:
        resolver_for(manager).resolve(2, KEY)
    assert isinstance(caught.value, PublishError)
    assert "broker 7" in str(caught.value)
    assert "exchange 2" in str(caught.value)


def test_rows_without_host_are_skipped(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, "", "rabbit-7.example")
    assert (
        resolver_for(manager)
        .resolve(2, KEY)
        .endpoints[0]
        .display.startswith("broker 7 rabbit-7.example")
    )


def test_failover_lookup_failure_costs_the_fallback_only(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, "rabbit-7.example", failover=8)
    manager.broker(8, "rabbit-8.example")
    manager.failures[("broker", "7")] = ManagerTransientError("GET x", 503)
    resolver = resolver_for(manager)
    assert [e.broker_id for e in resolver.resolve(2, KEY).endpoints] == ["7"]
    del manager.failures[("broker", "7")]
    assert [e.broker_id for e in resolver.resolve(2, KEY).endpoints] == ["7", "8"]

    manager.failures[("connections", "8")] = ManagerTransientError("GET x", 503)
    resolver.forget_broker(8)
    assert [e.broker_id for e in resolver.resolve(2, KEY).endpoints] == ["7"]


def test_no_password_in_route_repr(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, "rabbit-7.example", failover=1)
    route = resolver_for(manager).resolve(2, KEY)
    shown = repr(route) + str(route) + repr(resolver_for(manager))
    assert "pw-7-secret" not in shown
    assert "own-secret-pw" not in shown
    assert "pw-7-secret" in route.endpoints[0].url


def test_own_route_is_own_exchange_and_broker(manager: FakeManager) -> None:
    resolver = resolver_for(manager)
    route = resolver.own_route()
    assert (route.exchange_id, route.broker_id, route.own) == (OWN_EXCHANGE, OWN_BROKER, True)
    assert manager.calls == []
    # Built once (3.7 own-broker publishes a transition): immutable, so shared.
    assert resolver.own_route() is route


def test_own_endpoint_display_of_a_failover_list() -> None:
    endpoint = own_endpoint("1", "amqp://u:pw@a:5671/vh;amqp://u:pw@b:5671/vh")
    assert endpoint.display == "broker 1 a:5671/vh"
    assert endpoint.own


# -- caches -------------------------------------------------------------------------------


def seeded(manager: FakeManager) -> None:
    manager.restrict(2, 7)
    manager.broker(7, "rabbit-7.example", failover=8)
    manager.broker(8, "rabbit-8.example")


def test_answers_are_cached_for_five_minutes(manager: FakeManager, clock: Clock) -> None:
    seeded(manager)
    resolver = resolver_for(manager, clock)
    first = resolver.resolve(2, KEY)
    asked = len(manager.calls)
    assert asked == 4  # restrictions, connections 7, broker 7, connections 8
    clock.now += 299
    assert resolver.resolve(2, KEY) == first
    assert len(manager.calls) == asked
    clock.now += 2
    assert resolver.resolve(2, KEY) == first
    assert len(manager.calls) == 2 * asked


def test_empty_restrictions_are_cached_too(manager: FakeManager, clock: Clock) -> None:
    resolver = resolver_for(manager, clock)
    resolver.resolve(3, KEY)
    resolver.resolve(3, KEY)
    assert manager.count("restrictions", 3) == 1
    assert manager.count("restrictions", OWN_EXCHANGE) == 1


def test_cache_lifetime_is_a_parameter(manager: FakeManager, clock: Clock) -> None:
    seeded(manager)
    resolver = resolver_for(manager, clock, cache_seconds=10)
    resolver.resolve(2, KEY)
    clock.now += 11
    resolver.resolve(2, KEY)
    assert manager.count("connections", 7) == 2


def test_failures_are_never_cached(manager: FakeManager, clock: Clock) -> None:
    seeded(manager)
    manager.failures[("connections", "8")] = ManagerTransientError("GET x", 503)
    resolver = resolver_for(manager, clock)
    resolver.resolve(2, KEY)
    resolver.resolve(2, KEY)
    assert manager.count("connections", 8) == 2
    assert manager.count("connections", 7) == 1


def test_forget_broker_asks_again_for_that_broker_only(manager: FakeManager, clock: Clock) -> None:
    seeded(manager)
    manager.restrict(3, 9)
    manager.broker(9, "rabbit-9.example")
    resolver = resolver_for(manager, clock)
    resolver.resolve(2, KEY)
    resolver.resolve(3, KEY)
    before = Counter(manager.calls)

    resolver.forget_broker(7)
    manager.connections["7"][0]["host"] = "moved-7.example"
    route = resolver.resolve(2, KEY)
    resolver.resolve(3, KEY)
    asked = Counter(manager.calls) - before
    assert route.endpoints[0].display == "broker 7 moved-7.example:5672/vh7"
    assert asked == Counter({("restrictions", "2"): 1, ("connections", "7"): 1, ("broker", "7"): 1})

    resolver.forget_broker("8")  # a failover broker: its record and connections only
    before = Counter(manager.calls)
    resolver.resolve(2, KEY)
    assert Counter(manager.calls) - before == Counter({("connections", "8"): 1})


def test_clear_forgets_everything(manager: FakeManager, clock: Clock) -> None:
    seeded(manager)
    resolver = resolver_for(manager, clock)
    resolver.resolve(2, KEY)
    resolver.clear()
    resolver.resolve(2, KEY)
    assert manager.count("restrictions", 2) == 2


def test_threads_share_one_cache_and_agree(manager: FakeManager) -> None:
    seeded(manager)
    resolver = resolver_for(manager)
    expected = resolver.resolve(2, KEY)
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(50):
            results.append(resolver.resolve(2, KEY))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 400
    assert manager.count("connections", 7) == 1


# -- rule 5: choices fixed per run, spread over runs --------------------------------------


def many_brokers(manager: FakeManager, brokers: int, connections: int) -> None:
    ids = list(range(10, 10 + brokers))
    manager.restrict(2, *ids)
    for broker_id in ids:
        manager.broker(broker_id, *(f"h{broker_id}-{n}.example" for n in range(connections)))


def shuffled(manager: FakeManager, order: random.Random) -> FakeManager:
    """The same registry, every list answered in another order."""
    copy = FakeManager()
    copy.brokers = dict(manager.brokers)
    for source, target in (
        (manager.restrictions, copy.restrictions),
        (manager.connections, copy.connections),
    ):
        for ident, rows in source.items():
            target[ident] = order.sample(rows, len(rows))
    return copy


@settings(max_examples=60, deadline=None)
@given(
    brokers=st.integers(1, 6),
    connections=st.integers(1, 4),
    workflow=st.uuids(),
    start=st.datetimes(),
    seed=st.integers(0, 2**32),
)
def test_choice_is_fixed_per_run_whatever_the_manager_order(
    brokers: int, connections: int, workflow: Any, start: Any, seed: int
) -> None:
    key = run_key(str(workflow), start.isoformat())
    manager = FakeManager()
    many_brokers(manager, brokers, connections)
    route = resolver_for(manager).resolve(2, key)
    assert resolver_for(manager).resolve(2, key) == route
    assert resolver_for(shuffled(manager, random.Random(seed))).resolve(2, key) == route


@settings(max_examples=20, deadline=None)
@given(brokers=st.integers(2, 6), connections=st.integers(2, 4), prefix=st.text(max_size=8))
def test_choices_spread_over_many_runs(brokers: int, connections: int, prefix: str) -> None:
    manager = FakeManager()
    many_brokers(manager, brokers, connections)
    resolver = resolver_for(manager)
    runs = 60 * brokers * connections
    chosen = Counter(
        resolver.resolve(2, run_key(f"{prefix}{i}", "2024-01-01T00:00:00Z")).endpoints[0].display
        for i in range(runs)
    )
    assert len(chosen) == brokers * connections  # every broker, every connection of each
    assert min(chosen.values()) > runs / (brokers * connections) / 3


def test_broker_and_connection_choices_are_salted_apart(manager: FakeManager) -> None:
    """With as many brokers as connections, an unsalted hash would pick index i twice."""
    many_brokers(manager, 3, 3)
    resolver = resolver_for(manager)
    pairs = set()
    for i in range(300):
        endpoint = resolver.resolve(2, run_key(i, "t")).endpoints[0]
        broker_index = int(endpoint.broker_id) - 10
        host_index = int(endpoint.display.split("-")[1].split(".")[0])
        pairs.add((broker_index, host_index))
    assert len(pairs) == 9


def test_restricted_brokers_are_distinct_sorted_strings() -> None:
    rows = [
        {"id": 1, "messaging_broker_id": 10},
        {"id": 2, "messaging_broker_id": "9"},
        {"id": 3, "messaging_broker_id": 10},
        {"id": 4, "messaging_broker_id": None},
        {"id": 5},
        "not a row",
    ]
    assert restricted_brokers(rows) == ["9", "10"]
