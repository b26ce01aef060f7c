"""The milestone registry: what each step needs and where it is sent (docs/behaviour.md §4).

Handlers are pure given their `Topology`: the shell passes one backed by cached Manager
lookups, tests pass one backed by dicts. Every failure reason here is the contract's
text, verbatim, because operators and dashboards match on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .choice import pick
from .errors import ManagerNotFound, ManagerPermanentError
from .timefmt import parse_instant


class Topology(Protocol):
    """The Manager lookups a milestone may need (cached by the shell)."""

    def build_clusters(self) -> list[dict[str, Any]]:
        """Docker-build clusters: the exchange's own, else the global ones."""
        ...

    def cluster(self, etcd_token: str) -> dict[str, Any] | None:
        """The cluster with this token, None when the Manager does not know it."""
        ...

    def has_module(self, exchange_id: Any, module_type: str) -> bool:
        """Whether any module of this type is registered in the exchange."""
        ...


@dataclass(frozen=True)
class Target:
    """A Celery task name and queue a milestone's request goes to."""

    task: str
    queue: str


@dataclass(frozen=True)
class Dispatched:
    exchange_id: Any
    target: Target
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    reason: str
    unexpected: bool = False  # True: an operator must look (system event)
    #: Fields whose value the failure is about and the Manager would refuse to store
    #: (a `scheduled_start_time` that is no time): the stored value is saved instead.
    keep_stored: tuple[str, ...] = ()


@dataclass(frozen=True)
class Waiting:
    countdown: int


@dataclass(frozen=True)
class Passed:
    """The step completed inside the orchestrator (a `scheduled` time that has come)."""


StepResult = Dispatched | Failed | Waiting | Passed


@dataclass
class StepContext:
    """What a handler may use: the workflow, lookups, the clock reading and a logger."""

    step: str
    workflow: dict[str, Any]
    topology: Topology
    now: datetime
    exchange_id: str
    schedule_poll_seconds: int
    log: Callable[[str], None]
    #: Identifies this workflow run: every choice among several is a hash of it.
    run_key: str = ""


Handler = Callable[[StepContext, "Milestone"], StepResult]


@dataclass(frozen=True)
class Milestone:
    name: str
    handler: Handler
    target: Target | None = None
    #: True for steps the orchestrator completes itself (`scheduled`): a message that
    #: reports them means "evaluate again", not "the worker finished".
    internal: bool = False


def _lookup_failure(step: str, exc: ManagerPermanentError) -> Failed:
    return Failed(f"Unable to request {step} - the Manager refused a lookup: {exc}", True)


def request_build(ctx: StepContext, milestone: Milestone) -> StepResult:
    step, wf = ctx.step, ctx.workflow
    override = wf.get("build_messaging_exchange_id")
    if override is not None:
        ctx.log(
            f"The Workflow request has overriden the default build messaging_exchange_id to {override}"
        )
    try:
        clusters = ctx.topology.build_clusters()
    except ManagerPermanentError as exc:
        return _lookup_failure(step, exc)
    if not clusters:
        return Failed(f"Unable to request {step} - no build clusters are available!")
    cluster = pick(clusters, ctx.run_key, salt="build_cluster")
    token = cluster.get("etcd_token")
    exchange_id = override if override is not None else cluster.get("messaging_exchange_id")
    try:
        has_builder = exchange_id is not None and ctx.topology.has_module(exchange_id, "builder")
    except ManagerPermanentError as exc:
        return _lookup_failure(step, exc)
    if not has_builder:
        return Failed(
            f"Unable to request {step} - no Builders are currently accessible in exchange {exchange_id}!"
        )
    ctx.log(
        f"Dispatching a {step} request to exchange {exchange_id}, docker build cluster {token}..."
    )
    assert milestone.target is not None
    return Dispatched(exchange_id, milestone.target, {"docker_build_etcd_token": token})


def request_deploy(ctx: StepContext, milestone: Milestone) -> StepResult:
    wf = ctx.workflow
    token = wf.get("etcd_token")
    if not isinstance(token, str) or not token.strip():
        return Failed("Unable to execute deployment - an invalid deployment cluster was provided!")
    override = wf.get("deploy_messaging_exchange_id")
    if override is not None:
        ctx.log(
            f"The Workflow request has overriden the default deploy messaging_exchange_id to {override}"
        )
        exchange_id = override
    else:
        try:
            cluster = ctx.topology.cluster(token)
        except ManagerNotFound:
            cluster = None
        except ManagerPermanentError as exc:
            return _lookup_failure(ctx.step, exc)
        exchange_id = (cluster or {}).get("messaging_exchange_id")
        if exchange_id is None:
            return Failed(
                f"Unable to request deploy to cluster {token} - cluster is not associated with an exchange!"
            )
    try:
        has_deployer = ctx.topology.has_module(exchange_id, "deployer")
    except ManagerPermanentError as exc:
        return _lookup_failure(ctx.step, exc)
    if not has_deployer:
        return Failed(
            f"Unable to request deploy - no deploy clusters are available in exchange {exchange_id}!"
        )
    ctx.log(
        f"Dispatching a deploy request to exchange {exchange_id}, deployment cluster {token}..."
    )
    assert milestone.target is not None
    return Dispatched(exchange_id, milestone.target)


def request_deploy_ecs(ctx: StepContext, milestone: Milestone) -> StepResult:
    exchange_id = ctx.exchange_id
    try:
        has_deployer = ctx.topology.has_module(exchange_id, "deployer")
    except ManagerPermanentError as exc:
        return _lookup_failure(ctx.step, exc)
    if not has_deployer:
        return Failed(
            f"Unable to request deploy to ECS - no deploy clusters are available in exchange {exchange_id}!"
        )
    ctx.log(f"Dispatching an ECS deploy request to exchange {exchange_id}...")
    assert milestone.target is not None
    return Dispatched(exchange_id, milestone.target)


def request_configured(ctx: StepContext, milestone: Milestone) -> StepResult:
    """A milestone an operator added by configuration: no preconditions, own exchange."""
    ctx.log(f"Dispatching a {ctx.step} request to exchange {ctx.exchange_id}...")
    assert milestone.target is not None
    return Dispatched(ctx.exchange_id, milestone.target)


def evaluate_schedule(ctx: StepContext, milestone: Milestone) -> StepResult:
    """Start now if the time has come, else ask to be evaluated again later (no sleep)."""
    raw = ctx.workflow.get("scheduled_start_time")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return Failed(
            "Unable to execute deployment - the scheduled milestone was invoked, "
            "but no scheduled_start_time was set!"
        )
    start = parse_instant(raw) if isinstance(raw, str) else None
    if start is None:
        return Failed(
            f"Unable to execute deployment - the scheduled_start_time {raw!r} is not a valid "
            "RFC 1123 time (e.g. 'Tue, 05 Mar 2013 23:25:19 GMT')!",
            keep_stored=("scheduled_start_time",),
        )
    remaining = (start - ctx.now).total_seconds()
    if remaining <= 0:
        ctx.log("Workflow is now scheduled to start")
        return Passed()
    seconds_left = math.ceil(remaining)
    countdown = math.ceil(min(remaining, ctx.schedule_poll_seconds))
    ctx.log(
        f"Workflow is not scheduled to start until {raw} ({seconds_left} seconds remain).  "
        f"Next evaluation will occur in {countdown} seconds"
    )
    return Waiting(countdown)


@dataclass(frozen=True)
class Targets:
    """Task names and queues of the built-in milestones (settings)."""

    builder: Target = Target("builder.build", "builder")
    deployer: Target = Target("deployer.deploy", "deployer")
    deploy_oa: Target = Target("deployer.deploy_oa", "deploy_oa")


def build_registry(
    targets: Targets = Targets(), extra: Sequence[tuple[str, Target]] = ()
) -> Mapping[str, Milestone]:
    """Built-in milestones plus operator-configured ones (name -> task and queue)."""
    registry = {
        "build": Milestone("build", request_build, targets.builder),
        "config": Milestone("config", request_build, targets.builder),
        "deploy": Milestone("deploy", request_deploy, targets.deployer),
        "deploy_oa": Milestone("deploy_oa", request_deploy, targets.deploy_oa),
        "deploy_ecs": Milestone("deploy_ecs", request_deploy_ecs, targets.deployer),
        "scheduled": Milestone("scheduled", evaluate_schedule, None, internal=True),
    }
    for name, target in extra:
        registry[name] = Milestone(name, request_configured, target)
    return registry


def check_milestones(milestones: Any, registry: Mapping[str, Milestone]) -> str | None:
    """The reason a milestone list cannot run, or None when it can (no list: no steps)."""
    if milestones is None:
        return None
    if not isinstance(milestones, list) or not all(isinstance(m, str) for m in milestones):
        return f"Invalid milestones: expected a list of step names, got {milestones!r}"[:300]
    seen: set[str] = set()
    for name in milestones:
        if name not in registry:
            return f"Unknown milestone: {name}"
        if name in seen:
            return f"Milestone listed twice: {name}"
        seen.add(name)
    return None
