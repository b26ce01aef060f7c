"""Shared fixtures: a real Manager emulator on loopback and a client pointed at it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.manager import ManagerClient, TokenSource

#: The broker the integration tests publish to (RabbitMQ on loopback by default).
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CLIENT_ID = "orchestrator"
CLIENT_SECRET = "s3cret-do-not-leak-7f3a"


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
