"""Cluster and module lookups through the Manager, with their in-process caches.

Build clusters change rarely (cached 5 minutes); module registrations come and go, so
their answers live seconds and a failed lookup is never cached. This is the shell side
of `milestones.Topology`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import ManagerError, ManagerNotFound
from .manager import ManagerClient

logger = logging.getLogger("workflow_orchestrator.topology")


class _TTLCache:
    def __init__(self, lifetime: float, clock: Callable[[], float]) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bool, Any]:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] <= self.clock():
                return False, None
            return True, hit[1]

    def put(self, key: Any, value: Any) -> None:
        if self.lifetime > 0:
            with self._lock:
                self._items[key] = (self.clock() + self.lifetime, value)


def _has_type(modules: Any, module_type: str) -> bool:
    return any(isinstance(m, dict) and m.get("type") == module_type for m in modules or ())


class ManagerTopology:
    def __init__(
        self,
        manager: ManagerClient,
        exchange_id: str,
        *,
        cluster_cache_seconds: float = 300.0,
        module_cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.exchange_id = exchange_id
        self._clusters = _TTLCache(cluster_cache_seconds, clock)
        self._modules = _TTLCache(module_cache_seconds, clock)

    def build_clusters(self) -> list[dict[str, Any]]:
        found, clusters = self._clusters.get("build")
        if found:
            return clusters
        try:
            clusters = self.manager.list_exchange_clusters(
                self.exchange_id, allow_docker_builds=True
            )
        except ManagerError as exc:
            logger.warning("exchange build clusters unavailable, trying global ones: %s", exc)
            clusters = []
        if not clusters:
            clusters = self.manager.list_clusters(allow_docker_builds=True)
        if clusters:
            self._clusters.put("build", clusters)
        return clusters

    def cluster(self, etcd_token: str) -> dict[str, Any] | None:
        found, cluster = self._clusters.get(("cluster", etcd_token))
        if found:
            return cluster
        try:
            cluster = self.manager.get_cluster(etcd_token)
        except ManagerNotFound:
            return None
        self._clusters.put(("cluster", etcd_token), cluster)
        return cluster

    def has_module(self, exchange_id: Any, module_type: str) -> bool:
        """Cached for seconds; a miss is asked again, so a module registered after a
        failed precondition is seen by the very next workflow."""
        key = str(exchange_id)
        found, modules = self._modules.get(key)
        if found and _has_type(modules, module_type):
            return True
        modules = self.manager.list_exchange_modules(key)
        self._modules.put(key, modules)
        return _has_type(modules, module_type)
