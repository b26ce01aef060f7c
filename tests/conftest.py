"""Shared fixtures: a real Manager emulator on loopback and a client pointed at it, and
the session's own broker virtual host and Redis database (tests/services.py), so no test
uses vhost `/` or Redis db 0 of the machine's shared services."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.services import (
    RabbitVhosts,
    RedisTestDatabase,
    ServiceError,
    Vhost,
    redis_down_reason,
)
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.manager import ManagerClient, TokenSource

CLIENT_ID = "orchestrator"
CLIENT_SECRET = "s3cret-do-not-leak-7f3a"


@pytest.fixture(scope="session", autouse=True)
def no_ambient_broker_url() -> Iterator[None]:
    """Celery prefers CELERY_BROKER_URL (and its READ/WRITE forms) to any app's own
    broker. One set in the environment the tests run from (often vhost `/`) would take
    every in-process app there; the tests name their broker explicitly instead."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def rabbit_vhosts() -> Iterator[RabbitVhosts]:
    """Every virtual host the session makes on the machine's RabbitMQ; all deleted at
    its end (their queues and exchanges go with them)."""
    vhosts = RabbitVhosts()
    yield vhosts
    vhosts.remove_all()


@pytest.fixture(scope="session")
def broker_vhost(rabbit_vhosts: RabbitVhosts) -> Vhost:
    """The session's own virtual host and user. Subprocess workers get its URL through
    their environment (Settings.to_env()). It is deliberately not put in this process's
    CELERY_BROKER_URL: Celery prefers that variable to any app's own broker, so every
    in-process app (even one meant for another broker) would silently use it."""
    try:
        return rabbit_vhosts.create("session")
    except ServiceError as exc:
        pytest.fail(f"the tests need a RabbitMQ virtual host of their own: {exc}")


@pytest.fixture(scope="session")
def broker_url(broker_vhost: Vhost) -> str:
    """The broker URL every test uses: the session's virtual host, never `/`."""
    return broker_vhost.url


@pytest.fixture
def extra_vhost(rabbit_vhosts: RabbitVhosts) -> Iterator[Callable[..., Vhost]]:
    """Make more virtual hosts, each with a user and password of its own, standing in for
    other brokers; they are deleted after the test."""
    made: list[Vhost] = []

    def make(label: str = "extra", password: str | None = None) -> Vhost:
        try:
            vhost = rabbit_vhosts.create(label, password)
        except ServiceError as exc:
            pytest.fail(f"could not make a RabbitMQ virtual host for the test: {exc}")
        made.append(vhost)
        return vhost

    yield make
    for vhost in made:
        rabbit_vhosts.remove(vhost)


@pytest.fixture(scope="session")
def redis_db() -> Iterator[RedisTestDatabase]:
    """A Redis database number of the session's own (never 0), given back at its end."""
    reason = redis_down_reason()
    if reason:
        pytest.skip(reason)
    database = RedisTestDatabase()
    try:
        database.claim()
    except ServiceError as exc:
        pytest.fail(str(exc))
    yield database
    database.release()


@pytest.fixture
def redis_url(redis_db: RedisTestDatabase) -> Iterator[str]:
    """The URL of the session's Redis database; the orchestrator's keys the test wrote
    there are deleted after it."""
    yield redis_db.url
    redis_db.clean()


@pytest.fixture
def manager_emulator() -> Iterator[ManagerEmulator]:
    """A started emulator (in-memory SQLite, no broker); stopped after the test."""
    with ManagerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        yield emulator


@pytest.fixture
def manager_client(manager_emulator: ManagerEmulator) -> Iterator[ManagerClient]:
    """A ManagerClient with JSON token bodies and short timeouts, against the emulator."""
    tokens = TokenSource(
        manager_emulator.token_url,
        CLIENT_ID,
        CLIENT_SECRET,
        connect_timeout=1.0,
        read_timeout=2.0,
    )
    client = ManagerClient(manager_emulator.url, tokens, connect_timeout=1.0, read_timeout=2.0)
    yield client
    client.close()
