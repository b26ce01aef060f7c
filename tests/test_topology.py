"""Cluster and module lookups through a real Manager emulator, and their caches."""

from __future__ import annotations

import pytest

from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.errors import ManagerTransientError
from workflow_orchestrator.manager import ManagerClient
from workflow_orchestrator.topology import ManagerTopology


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


GLOBAL = "GET /clusters"


@pytest.fixture
def topology(manager_emulator: ManagerEmulator, manager_client: ManagerClient) -> ManagerTopology:
    manager_emulator.add_exchange("1")
    manager_emulator.add_exchange("2")
    return ManagerTopology(
        manager_client, "1", cluster_cache_seconds=300, module_cache_seconds=5, clock=Clock()
    )


def route_names(emulator: ManagerEmulator) -> set[str]:
    return set(emulator.counters())


def test_local_build_clusters_first_and_cached_five_minutes(
    manager_emulator: ManagerEmulator, topology: ManagerTopology
) -> None:
    manager_emulator.add_cluster("local-1", 1, allow_docker_builds=True)
    manager_emulator.add_cluster("global-2", 2, allow_docker_builds=True)
    manager_emulator.add_cluster("no-builds", 1, allow_docker_builds=False)
    assert [c["etcd_token"] for c in topology.build_clusters()] == ["local-1"]
    before = manager_emulator.counters()
    topology.build_clusters()
    topology._clusters.clock.now += 299  # still cached
    topology.build_clusters()
    assert manager_emulator.counters() == before
    topology._clusters.clock.now += 2  # expired
    topology.build_clusters()
    assert manager_emulator.counters()["total"] == before["total"] + 1


def test_global_build_clusters_when_the_exchange_has_none(
    manager_emulator: ManagerEmulator, topology: ManagerTopology
) -> None:
    manager_emulator.add_cluster("global-2", 2, allow_docker_builds=True)
    assert [c["etcd_token"] for c in topology.build_clusters()] == ["global-2"]
    assert any(r.startswith(GLOBAL) for r in route_names(manager_emulator))


def test_global_build_clusters_when_the_exchange_lookup_fails(
    manager_emulator: ManagerEmulator, manager_client: ManagerClient
) -> None:
    manager_emulator.add_cluster("global-2", 2, allow_docker_builds=True)
    unknown_exchange = ManagerTopology(manager_client, "404-exchange")
    assert [c["etcd_token"] for c in unknown_exchange.build_clusters()] == ["global-2"]


def test_no_build_cluster_anywhere_is_not_cached(
    manager_emulator: ManagerEmulator, topology: ManagerTopology
) -> None:
    assert topology.build_clusters() == []
    manager_emulator.add_cluster("late", 1, allow_docker_builds=True)
    assert [c["etcd_token"] for c in topology.build_clusters()] == ["late"]


def test_cluster_by_token(manager_emulator: ManagerEmulator, topology: ManagerTopology) -> None:
    manager_emulator.add_cluster("deploy-1", 2)
    assert topology.cluster("deploy-1")["messaging_exchange_id"] == 2
    assert topology.cluster("nope") is None


def test_module_presence_cached_absence_asked_again(
    manager_emulator: ManagerEmulator, topology: ManagerTopology
) -> None:
    manager_emulator.add_module("1", "builder")
    assert topology.has_module("1", "builder") is True
    total = manager_emulator.counters()["total"]
    assert topology.has_module(1, "builder") is True  # cached, ids of either type
    assert manager_emulator.counters()["total"] == total
    assert topology.has_module("1", "deployer") is False  # a miss asks again
    manager_emulator.add_module("1", "deployer")
    assert topology.has_module("1", "deployer") is True  # seen at once
    topology._modules.clock.now += 6
    topology.has_module("1", "builder")
    assert manager_emulator.counters()["total"] == total + 3


def test_a_failed_lookup_is_not_cached(
    manager_emulator: ManagerEmulator, topology: ManagerTopology
) -> None:
    manager_emulator.add_module("1", "builder")
    manager_emulator.fail_for(30, status=503)
    with pytest.raises(ManagerTransientError):
        topology.has_module("1", "builder")
    manager_emulator.reset_faults()
    assert topology.has_module("1", "builder") is True
