"""Publishing to many brokers against the local RabbitMQ (docs/behaviour.md §5.1,
docs/design.md "Publishing to other brokers").

Three virtual hosts made for this module stand in for three brokers: ours, exchange 2's
("east") and its failover ("west"), each with a user of its own and a random password
that is then searched for in every log record and error. A broker that cannot be
reached is 127.0.0.1 on a port nothing listens on. The module removes its vhosts and
users at the end, even on failure.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.relay import StallingRelay
from tests.services import RabbitVhosts, Vhost
from tests.support import in_process_worker, wait_for
from workflow_orchestrator.broker_pool import BrokerPublisher
from workflow_orchestrator.brokers import BrokerResolver, Endpoint, Route, connection_endpoint
from workflow_orchestrator.choice import run_key
from workflow_orchestrator.errors import ManagerNotFound, PublishError
from workflow_orchestrator.queues import worker_queue

SUFFIX = uuid.uuid4().hex[:8]
OWN_EXCHANGE, OWN_BROKER = "1", "1"
KEY = run_key("0b7c3e9a-1111-4222-8333-444455556666", "2024-05-01T10:00:00Z")


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout


@dataclass(frozen=True)
class Broker:
    """One virtual host with its own user: a broker of its own for the test."""

    vhost: str
    user: str
    password: str = field(repr=False)

    def row(self, port: int = 5672, host: str = "127.0.0.1") -> dict[str, Any]:
        """Its connection as the Manager lists it."""
        return {
            "id": self.vhost,
            "username": self.user,
            "password": self.password,
            "host": host,
            "port": port,
            "virtual_host": self.vhost,
        }

    @property
    def url(self) -> str:
        return connection_endpoint("x", self.row()).url

    def connections(self) -> list[str]:
        """Names of the client connections to this vhost (list_connections has no -p)."""
        return sorted(self._connections())

    def _connections(self) -> dict[str, str]:
        """Connection name -> its process id (what close_connection takes)."""
        lines = rabbitmqctl("list_connections", "--no-table-headers", "name", "pid", "vhost")
        rows = (line.split("\t") for line in lines.splitlines() if line)
        return {name: pid for name, pid, vhost in rows if vhost == self.vhost}

    def drop_connections(self) -> None:
        """What a network or an idle timeout does to a pooled connection."""
        for pid in self._connections().values():
            rabbitmqctl("close_connection", pid, "test: an idle connection dropped")

    def get_all(self, queue: str) -> list[Any]:
        """Drain a queue (declared the Celery way if it is missing)."""
        out = []
        with Connection(self.url, connect_timeout=3) as conn:
            bound = worker_queue(queue)(conn.default_channel)
            bound.declare()
            while (message := bound.get(no_ack=True)) is not None:
                out.append(message)
        return out

    def queues(self) -> dict[str, int]:
        lines = rabbitmqctl(
            "list_queues", "--no-table-headers", "-p", self.vhost, "name", "messages"
        ).splitlines()
        return {name: int(count) for name, count in (line.split("\t") for line in lines if line)}


@dataclass(frozen=True)
class Brokers:
    own: Broker
    east: Broker
    west: Broker

    def all(self) -> tuple[Broker, ...]:
        return (self.own, self.east, self.west)

    def passwords(self) -> list[str]:
        out = []
        for broker in self.all():
            out += [broker.password, quote(broker.password, safe="")]
        return out


@pytest.fixture(scope="module")
def brokers(rabbit_vhosts: RabbitVhosts) -> Iterator[Brokers]:
    made: list[Vhost] = []
    try:
        for name in ("own", "east", "west"):
            # A password with characters that must be URL-quoted, and that is unique.
            vhost = rabbit_vhosts.create(name, password=f"pw/{secrets.token_hex(12)}@x")
            made.append(vhost)
        yield Brokers(*(Broker(v.name, v.user, v.password) for v in made))
    finally:
        for vhost in made:
            rabbit_vhosts.remove(vhost)


class Registry:
    """The Manager's messaging registry (rows as docs/behaviour.md §5.1 gives them)."""

    def __init__(self) -> None:
        self.restrictions: dict[str, list[dict[str, Any]]] = {}
        self.brokers: dict[str, dict[str, Any]] = {}
        self.connections: dict[str, list[dict[str, Any]]] = {}

    def add(self, broker_id: str, row: dict[str, Any], failover: str | None = None) -> None:
        self.brokers[broker_id] = {
            "id": broker_id,
            "name": broker_id,
            "failover_broker_id": failover,
        }
        self.connections[broker_id] = [{**row, "messaging_broker_id": broker_id}]

    def restrict(self, exchange: str, broker_id: str) -> None:
        self.restrictions.setdefault(exchange, []).append(
            {
                "id": 900 + len(self.restrictions),
                "messaging_exchange_id": exchange,
                "messaging_broker_id": broker_id,
            }
        )

    def list_exchange_brokers(self, exchange_id: str) -> list[dict[str, Any]]:
        return self.restrictions.get(str(exchange_id), [])

    def get_broker(self, broker_id: str) -> dict[str, Any]:
        if str(broker_id) not in self.brokers:
            raise ManagerNotFound(f"GET /messaging/brokers/{broker_id}", 404)
        return self.brokers[str(broker_id)]

    def list_broker_connections(self, broker_id: str) -> list[dict[str, Any]]:
        return self.connections.get(str(broker_id), [])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app(brokers: Brokers) -> Iterator[Celery]:
    """The orchestrator's side: a Celery app on its own broker, confirms on."""
    app = Celery(f"wo-test-orchestrator-{SUFFIX}", broker=brokers.own.url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"confirm_publish": True},
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=3,
    )
    yield app
    app.close()


@dataclass
class Setup:
    registry: Registry
    resolver: BrokerResolver
    publisher: BrokerPublisher
    failed: list[str]


@pytest.fixture
def setup(app: Celery, brokers: Brokers) -> Iterator[Setup]:
    registry = Registry()
    resolver = BrokerResolver(registry, OWN_EXCHANGE, OWN_BROKER, brokers.own.url)
    failed: list[str] = []

    def forget(broker_id: str) -> None:
        failed.append(broker_id)
        resolver.forget_broker(broker_id)

    publisher = BrokerPublisher(app, connect_timeout=2, confirm_timeout=5, on_broker_failure=forget)
    yield Setup(registry, resolver, publisher, failed)
    publisher.close()


def payload(step: str = "build", **extra: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "current_step": step, "aws_config": {"secret": "x"}, **extra}


def assert_no_password(brokers: Brokers, *texts: str) -> None:
    for text in texts:
        for password in brokers.passwords():
            assert password not in text


def celery_task(message: Any) -> tuple[str, str, list[Any], str]:
    """(task name, task id, args, argsrepr) of a raw message, checked to be protocol 2."""
    headers = message.headers
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2
    args, kwargs, embed = json.loads(message.body)
    assert kwargs == {}
    assert headers["kwargsrepr"] == "{}"  # as Celery shows no keyword arguments
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    assert headers["lang"] == "py"
    assert message.properties["correlation_id"] == headers["id"]
    return headers["task"], headers["id"], args, headers["argsrepr"]


# -- where a request goes -----------------------------------------------------------------


def test_build_for_exchange_2_runs_on_its_brokers_celery_worker_and_not_on_ours(
    setup: Setup, brokers: Brokers
) -> None:
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row())
    route = setup.resolver.resolve("2", KEY)
    assert [e.display for e in route.endpoints] == [
        f"broker 20 127.0.0.1:5672/{brokers.east.vhost}"
    ]

    east = Celery(f"wo-test-east-{SUFFIX}", broker=brokers.east.url, set_as_current=False)
    east.conf.update(
        task_queues=[worker_queue("builder")],
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    received: list[tuple[str, dict[str, Any]]] = []

    @east.task(name="builder.build", bind=True, shared=False)
    def build(self: Any, request: dict[str, Any]) -> None:
        received.append((self.request.id, request))

    request = payload()
    task_id = str(uuid.uuid4())
    endpoint = setup.publisher.publish(
        route, "builder.build", "builder", request, task_id=task_id, argsrepr="event=request"
    )
    assert endpoint.broker_id == "20"
    with in_process_worker(east, f"wo-test-east-{SUFFIX}@localhost", concurrency=1):
        wait_for(lambda: received, 30, "the east builder to run the request")
    east.close()
    assert received == [(task_id, request)]
    assert "builder" not in brokers.own.queues()
    assert "builder" not in brokers.west.queues()
    assert setup.failed == []


def test_unrestricted_exchange_goes_to_our_broker(setup: Setup, brokers: Brokers) -> None:
    setup.registry.add("20", brokers.east.row())  # known, but no exchange points to it
    route = setup.resolver.resolve("3", KEY)
    assert route.own
    request = payload("deploy")
    endpoint = setup.publisher.publish(
        route,
        "deployer.deploy",
        "wo_own_deployer",
        request,
        task_id="t-own-1",
        argsrepr="event=request",
    )
    assert endpoint.own
    (message,) = brokers.own.get_all("wo_own_deployer")
    assert celery_task(message) == ("deployer.deploy", "t-own-1", [request], "event=request")
    assert "wo_own_deployer" not in brokers.east.queues()


def test_primary_on_a_closed_port_fails_over_without_showing_a_password(
    setup: Setup, brokers: Brokers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row(port=port), failover="30")
    setup.registry.add("30", brokers.west.row())
    route = setup.resolver.resolve("2", KEY)
    request = payload()

    endpoint = setup.publisher.publish(
        route,
        "builder.build",
        "wo_failover",
        request,
        task_id="t-failover",
        argsrepr="event=request",
    )

    assert endpoint.broker_id == "30"
    (message,) = brokers.west.get_all("wo_failover")
    assert celery_task(message) == ("builder.build", "t-failover", [request], "event=request")
    assert setup.failed == ["20"]
    assert f"broker 20 127.0.0.1:{port}/{brokers.east.vhost}" in caplog.text
    assert "to failover broker 30" in caplog.text
    assert_no_password(brokers, caplog.text, *(repr(r.args) for r in caplog.records))


def test_failover_to_our_own_broker(setup: Setup, brokers: Brokers) -> None:
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row(port=closed_port()), failover=OWN_BROKER)
    route = setup.resolver.resolve("2", KEY)
    assert [e.own for e in route.endpoints] == [False, True]
    endpoint = setup.publisher.publish(
        route, "builder.build", "wo_to_own", payload(), task_id="t-to-own"
    )
    assert endpoint.own
    assert [celery_task(m)[1] for m in brokers.own.get_all("wo_to_own")] == ["t-to-own"]


def test_a_publish_the_broker_does_not_confirm_fails_over(setup: Setup, brokers: Brokers) -> None:
    """A nack (here: a full queue that rejects publishes) is a failed publish."""
    queue = "wo_rejecting"
    rabbitmqctl(
        "set_policy", "-p", brokers.east.vhost, "--apply-to", "queues", "reject-all",
        f"^{queue}$", '{"max-length": 0, "overflow": "reject-publish"}',
    )  # fmt: skip
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row(), failover="30")
    setup.registry.add("30", brokers.west.row())
    route = setup.resolver.resolve("2", KEY)

    endpoint = setup.publisher.publish(route, "builder.build", queue, payload(), task_id="t-nacked")

    assert endpoint.broker_id == "30"
    assert setup.failed == ["20"]
    assert [celery_task(m)[1] for m in brokers.west.get_all(queue)] == ["t-nacked"]
    assert brokers.east.queues()[queue] == 0


def test_a_publish_whose_confirm_never_comes_fails_over_after_the_confirm_timeout(
    app: Celery, brokers: Brokers, caplog: pytest.LogCaptureFixture
) -> None:
    """The bound is the pooled connection's read timeout: the relay passes the publish
    on and drops the broker's confirm."""
    caplog.set_level(logging.WARNING)
    queue = "wo_unconfirmed"
    failed: list[str] = []
    with StallingRelay() as relay:
        registry = Registry()
        registry.restrict("2", "20")
        registry.add("20", brokers.east.row(port=relay.port), failover="30")
        registry.add("30", brokers.west.row())
        resolver = BrokerResolver(registry, OWN_EXCHANGE, OWN_BROKER, brokers.own.url)
        publisher = BrokerPublisher(
            app, connect_timeout=2, confirm_timeout=1, on_broker_failure=failed.append
        )
        try:
            route = resolver.resolve("2", KEY)
            first = publisher.publish(route, "builder.build", queue, payload(), task_id="u-1")
            assert first.broker_id == "20"
            relay.stall()
            endpoint = publisher.publish(route, "builder.build", queue, payload(), task_id="u-2")
        finally:
            publisher.close()

    assert endpoint.broker_id == "30"
    assert failed == ["20"]
    assert relay.dropped > 0  # the broker answered; its answer never arrived
    assert "publishing builder.build (task id u-2) to broker 20" in caplog.text
    assert [celery_task(m)[1] for m in brokers.west.get_all(queue)] == ["u-2"]
    # Broker 20 took the unconfirmed copy as well: at least once, never lost.
    assert sorted(celery_task(m)[1] for m in brokers.east.get_all(queue)) == ["u-1", "u-2"]


@pytest.mark.parametrize(
    ("transport_options", "confirm_timeout"),
    [
        # celeryconfig.py: the bound is the connections' read timeout; the publisher's
        # confirm_timeout (an hour here) is not used for the own broker.
        ({"confirm_publish": True, "read_timeout": 1.0}, 3600),
        # an app without one: confirm_timeout on each publish.
        ({"confirm_publish": True}, 1),
    ],
    ids=["read_timeout", "confirm_timeout"],
)
def test_an_own_publish_whose_confirm_never_comes_is_a_publish_error(
    brokers: Brokers, transport_options: dict[str, Any], confirm_timeout: float
) -> None:
    queue = f"wo_own_unconfirmed_{confirm_timeout}"
    with StallingRelay() as relay:
        url = connection_endpoint("1", brokers.own.row(port=relay.port)).url
        own = Celery(f"wo-test-stalled-{SUFFIX}", broker=url, set_as_current=False)
        own.conf.update(
            broker_transport_options=transport_options,
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=2,
        )
        resolver = BrokerResolver(Registry(), OWN_EXCHANGE, OWN_BROKER, url)
        retry = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
        publisher = BrokerPublisher(own, confirm_timeout=confirm_timeout, own_retry_policy=retry)
        route = resolver.own_route()
        try:
            publisher.publish(route, "notifications.hipchat", queue, payload(), task_id="o-1")
            relay.stall()
            with pytest.raises(PublishError) as caught:
                publisher.publish(route, "notifications.hipchat", queue, payload(), task_id="o-2")
            relay.resume()
            publisher.publish(route, "notifications.hipchat", queue, payload(), task_id="o-3")
        finally:
            publisher.close()
            own.close()

    assert "publishing notifications.hipchat (task id o-2)" in str(caught.value)
    assert relay.dropped > 0
    ids = [celery_task(m)[1] for m in brokers.own.get_all(queue)]
    assert ids[0] == "o-1" and ids[-1] == "o-3" and "o-2" in ids


def test_no_broker_works_is_a_publish_error_naming_them_without_passwords(
    setup: Setup, brokers: Brokers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    east_port, west_port = closed_port(), closed_port()
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row(port=east_port), failover="30")
    setup.registry.add("30", brokers.west.row(port=west_port))
    route = setup.resolver.resolve("2", KEY)

    with pytest.raises(PublishError) as caught:
        setup.publisher.publish(route, "builder.build", "wo_nowhere", payload(), task_id="t-lost")

    text = str(caught.value)
    assert f"broker 20 127.0.0.1:{east_port}/{brokers.east.vhost}" in text
    assert f"broker 30 127.0.0.1:{west_port}/{brokers.west.vhost}" in text
    assert "t-lost" in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert setup.failed == ["20", "30"]
    assert_no_password(brokers, text, repr(caught.value.args), caplog.text)


# -- pooling ------------------------------------------------------------------------------


def test_200_publishes_reuse_one_connection(setup: Setup, brokers: Brokers) -> None:
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row())
    route = setup.resolver.resolve("2", KEY)
    (endpoint,) = route.endpoints
    setup.publisher.publish(route, "builder.build", "wo_bounded", payload(), task_id="t-0")
    first = brokers.east.connections()
    assert len(first) == 1

    for n in range(1, 200):
        setup.publisher.publish(route, "builder.build", "wo_bounded", payload(), task_id=f"t-{n}")

    assert brokers.east.connections() == first  # the same connection, not a new one each time
    assert setup.publisher.opened(endpoint) == 1
    ids = {celery_task(m)[1] for m in brokers.east.get_all("wo_bounded")}
    assert ids == {f"t-{n}" for n in range(200)}


def test_concurrent_publishes_stay_within_the_pool_limit(
    app: Celery, setup: Setup, brokers: Brokers
) -> None:
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row())
    route = setup.resolver.resolve("2", KEY)
    (endpoint,) = route.endpoints
    publisher = BrokerPublisher(app, pool_limit=2, connect_timeout=2)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        barrier.wait()
        try:
            for n in range(25):
                publisher.publish(
                    route, "builder.build", "wo_concurrent", payload(), task_id=f"c-{worker}-{n}"
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert 1 <= publisher.opened(endpoint) <= 2
        assert 1 <= len(brokers.east.connections()) <= 2
        assert len({celery_task(m)[1] for m in brokers.east.get_all("wo_concurrent")}) == 200
    finally:
        publisher.close()
    wait_for(lambda: not brokers.east.connections(), 30, "the closed pool's connections to go")


def test_a_dead_pooled_connection_costs_one_reconnect_not_the_request(
    setup: Setup, brokers: Brokers
) -> None:
    setup.registry.restrict("2", "20")
    setup.registry.add("20", brokers.east.row(), failover="30")
    setup.registry.add("30", brokers.west.row())
    route = setup.resolver.resolve("2", KEY)
    east = route.endpoints[0]
    setup.publisher.publish(route, "builder.build", "wo_revived", payload(), task_id="r-1")
    assert len(brokers.east.connections()) == 1
    # RabbitMQ has sent Connection.Close; the idle client has not read it yet (the
    # server then waits 30 s for a Close-OK that never comes): a dead pooled connection.
    brokers.east.drop_connections()

    endpoint = setup.publisher.publish(
        route, "builder.build", "wo_revived", payload(), task_id="r-2"
    )

    assert endpoint == east  # not the failover
    assert setup.failed == []
    assert setup.publisher.opened(east) == 2
    assert [celery_task(m)[1] for m in brokers.east.get_all("wo_revived")] == ["r-1", "r-2"]
    assert "wo_revived" not in brokers.west.queues()


def test_close_releases_every_connection(app: Celery, brokers: Brokers) -> None:
    endpoint = connection_endpoint("20", brokers.east.row())
    route = Route("2", "20", "test", (endpoint,))
    publisher = BrokerPublisher(app)
    publisher.publish(route, "builder.build", "wo_closing", payload(), task_id="x-1")
    assert publisher.open_connections(endpoint) == 1
    publisher.close()
    assert publisher.open_connections(endpoint) == 0
    wait_for(lambda: not brokers.east.connections(), 30, "the connection to close")


# -- queue declarations -------------------------------------------------------------------


def test_worker_queue_is_what_a_plain_celery_app_declares() -> None:
    plain = Celery("wo-test-plain", set_as_current=False)
    celery_queue = plain.amqp.queues["builder"]
    ours = worker_queue("builder")
    assert ours.name == celery_queue.name
    assert ours.routing_key == celery_queue.routing_key
    assert ours.durable and celery_queue.durable
    assert (ours.exchange.name, ours.exchange.type, ours.exchange.durable) == (
        celery_queue.exchange.name,
        celery_queue.exchange.type,
        celery_queue.exchange.durable,
    )
    assert not ours.queue_arguments and not celery_queue.queue_arguments
    assert worker_queue("builder", "openaperture").queue_arguments == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "builder_error",
    }
    with pytest.raises(ValueError, match="openaperture"):
        worker_queue("builder", "quorum")


def test_openaperture_queue_arguments_match_a_queue_openaperture_declared(
    app: Celery, brokers: Brokers
) -> None:
    name = "wo_oa_deployer"
    with Connection(brokers.east.url) as conn:
        Queue(
            name,
            Exchange(name, type="direct", durable=True),
            routing_key=name,
            durable=True,
            queue_arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{name}_error",
            },
        )(conn.default_channel).declare()
    route = Route("2", "20", "test", (connection_endpoint("20", brokers.east.row()),))

    plain = BrokerPublisher(app)
    try:
        with pytest.raises(PublishError, match="PRECONDITION_FAILED"):
            plain.publish(route, "deployer.deploy", name, payload("deploy"), task_id="oa-0")
    finally:
        plain.close()

    openaperture = BrokerPublisher(app, queue_arguments="openaperture")
    try:
        openaperture.publish(route, "deployer.deploy", name, payload("deploy"), task_id="oa-1")
    finally:
        openaperture.close()
    with Connection(brokers.east.url) as conn:
        bound = worker_queue(name, "openaperture")(conn.default_channel)
        message = bound.get(no_ack=True)
    assert message is not None and celery_task(message)[1] == "oa-1"


def test_unknown_queue_argument_mode_is_refused(app: Celery) -> None:
    with pytest.raises(ValueError):
        BrokerPublisher(app, queue_arguments="quorum")


def test_endpoint_repr_hides_the_password(brokers: Brokers) -> None:
    endpoint = connection_endpoint("20", brokers.east.row())
    assert isinstance(endpoint, Endpoint)
    assert_no_password(brokers, repr(endpoint), str(endpoint))


def test_a_refused_login_fails_without_showing_the_password(
    app: Celery, brokers: Brokers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong/{secrets.token_hex(8)}@pw"
    endpoint = connection_endpoint("20", {**brokers.east.row(), "password": wrong})
    publisher = BrokerPublisher(app, connect_timeout=2)
    try:
        with pytest.raises(PublishError) as caught:
            publisher.publish(
                Route("2", "20", "test", (endpoint,)),
                "builder.build",
                "wo_x",
                payload(),
                task_id="l",
            )
    finally:
        publisher.close()
    assert "ACCESS_REFUSED" in str(caught.value) or "AccessRefused" in str(caught.value)
    for text in (str(caught.value), caplog.text):
        assert wrong not in text and quote(wrong, safe="") not in text


def test_failure_texts_are_scrubbed_of_passwords() -> None:
    from workflow_orchestrator.broker_pool import _secrets, describe_failure

    url = "amqp://u:p%40ss%2Fw@h:5672/v;amqp://u:other@h2:5672/v"
    exc = OSError(f"cannot reach {url} (password p@ss/w, or other)")
    text = describe_failure(exc, _secrets(url))
    assert text.startswith("OSError: cannot reach")
    for secret in ("p@ss/w", "p%40ss%2Fw", "other"):
        assert secret not in text


def test_each_queue_declaration_is_built_once_per_name_and_mode() -> None:
    app = Celery(f"wo-test-queue-cache-{SUFFIX}", set_as_current=False)
    publisher = BrokerPublisher(app)
    plain = publisher.queue("builder_q", "none")
    assert publisher.queue("builder_q", "none") is plain
    openaperture = publisher.queue("builder_q", "openaperture")
    assert openaperture is not plain
    for mode, queue in (("none", plain), ("openaperture", openaperture)):
        expected = worker_queue("builder_q", mode)
        assert (queue.name, queue.queue_arguments, queue.exchange.name) == (
            expected.name,
            expected.queue_arguments,
            expected.exchange.name,
        )
    assert publisher.queue("deployer_q", "none").name == "deployer_q"
