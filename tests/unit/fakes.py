"""An in-memory Topology for the pure core's tests (the real one is shell code)."""

from __future__ import annotations

from typing import Any

from workflow_orchestrator.errors import ManagerPermanentError

WID = "5b1d7f1e-8a4e-4c1e-9a55-0c1b2c3d4e5f"


class FakeTopology:
    def __init__(
        self,
        build_clusters: list[dict[str, Any]] | None = None,
        clusters: dict[str, dict[str, Any]] | None = None,
        modules: dict[str, list[str]] | None = None,
        refuse: bool = False,
    ) -> None:
        self._build = (
            [{"etcd_token": "123abc", "messaging_exchange_id": 1}]
            if build_clusters is None
            else build_clusters
        )
        self._clusters = (
            {"deploy-cluster-9": {"etcd_token": "deploy-cluster-9", "messaging_exchange_id": 1}}
            if clusters is None
            else clusters
        )
        self._modules = {"1": ["builder", "deployer"]} if modules is None else modules
        self.refuse = refuse
        self.calls: list[tuple[str, Any]] = []

    def _maybe_refuse(self, call: str) -> None:
        if self.refuse:
            raise ManagerPermanentError(call, 403)

    def build_clusters(self) -> list[dict[str, Any]]:
        self.calls.append(("build_clusters", None))
        self._maybe_refuse("GET /clusters")
        return list(self._build)

    def cluster(self, etcd_token: str) -> dict[str, Any] | None:
        self.calls.append(("cluster", etcd_token))
        self._maybe_refuse(f"GET /clusters/{etcd_token}")
        return self._clusters.get(etcd_token)

    def has_module(self, exchange_id: Any, module_type: str) -> bool:
        self.calls.append(("has_module", (exchange_id, module_type)))
        self._maybe_refuse(f"GET /messaging/exchanges/{exchange_id}/modules")
        return module_type in self._modules.get(str(exchange_id), [])


def stored_workflow(**changes: Any) -> dict[str, Any]:
    wf: dict[str, Any] = {
        "id": WID,
        "deployment_repo": "Test-Org/app_docker",
        "deployment_repo_git_ref": "master",
        "source_repo": "Test-Org/app",
        "source_repo_git_ref": "abc123",
        "source_commit_hash": None,
        "milestones": ["build", "deploy"],
        "current_step": None,
        "elapsed_step_time": None,
        "elapsed_workflow_time": None,
        "workflow_duration": None,
        "workflow_step_durations": None,
        "workflow_error": False,
        "workflow_completed": False,
        "event_log": [],
        "scheduled_start_time": None,
        "execute_options": None,
        "inserted_at": "Mon, 17 Aug 2015 20:03:02 UTC",
        "updated_at": "Mon, 17 Aug 2015 20:03:02 UTC",
    }
    wf.update(changes)
    return wf
