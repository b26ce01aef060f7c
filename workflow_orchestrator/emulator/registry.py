"""Clusters, exchanges, modules and brokers, as OpenAperture/manager's controllers serve them
(``etcd_clusters.ex``, ``messaging/messaging_exchanges.ex``,
``messaging/messaging_exchange_modules.ex``, ``messaging/messaging_brokers.ex``).

What a client meets with the real Manager:
- ids are serial integers: a path id that is not one makes Ecto's cast raise (a 500);
- errors carry ``{"errors": [{"message": ...}, ...]}`` (404s of the registry included);
- creations answer 201 with an empty body and a ``Location`` (clusters: a JSON string);
- ``GET /messaging/exchanges/{id}/brokers`` lists join rows ``{id, messaging_exchange_id,
  messaging_broker_id}`` whose ``id`` is the row's own; exchanges carry the resolved
  ``routing_key`` and ``root_exchange_name``;
- a module ``POST`` needs ``hostname``, ``type``, ``status`` and ``workload`` (400 without),
  replaces every module of that hostname in the exchange (whatever its type), and stores
  ``workload`` as JSON in a varchar(255): a long workload is a 500, after the old record
  was already deleted;
- a broker connection created over HTTP never stores a port (the controller does not
  cast it): its ``port`` is null.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .changeset import (
    INT_TEXT,
    INVALID,
    Changeset,
    cast_boolean,
    cast_integer,
    changeset_error_body,
    path_int,
    problem,
)
from .columns import Overflow, Undecodable, poison_encode
from .http import Crash, Handler, HTTPProblem, Request, Response
from .store import BrokenHierarchy, Conflict, NotNull

if TYPE_CHECKING:
    from .server import ManagerEmulator

log = logging.getLogger("workflow_orchestrator.emulator")

# -- clusters ------------------------------------------------------------------------------


def list_clusters(em: ManagerEmulator, req: Request) -> Response:
    """``GET /clusters``: only ``true`` (or ``"true"``) filters; anything else lists all."""
    flag = req.params.get("allow_docker_builds")
    allow = True if flag is True or flag == "true" else None
    return Response.json(200, em.store.list_clusters(allow_docker_builds=allow))


def create_cluster(em: ManagerEmulator, req: Request) -> Response:
    """``POST /clusters``: 201 with the JSON string ``"Registered id N"``."""
    changes = Changeset(req.params)
    changes.field("name", "string")
    changes.field("hosting_provider_id", "integer")
    changes.field("allow_docker_builds", "boolean")
    changes.field("messaging_exchange_id", "integer")
    changes.field("etcd_token", "string", required=True)
    if changes.values.get("hosting_provider_id") is not None:
        changes.errors.append(("hosting_provider_id", "Invalid Cloud Provider"))
    if changes.values.get("name") is not None:
        changes.min_length("name", 1)
    if not changes.valid:
        raise HTTPProblem(Response.json(400, changeset_error_body(changes.errors, "EtcdCluster")))
    try:
        cluster = em.store.add_cluster(changes.values)
    except (Overflow, NotNull) as exc:
        log.info("emulator: cluster insert refused: %s", exc)
        raise problem(500, "internal_server_error", "EtcdCluster") from None
    location = {"Location": f"/clusters/{quote(cluster['etcd_token'], safe='')}"}
    return Response.json(201, f"Registered id {cluster['id']}", location)


def get_cluster(em: ManagerEmulator, req: Request) -> Response:
    """``GET /clusters/{etcd_token}`` (the token is matched case-insensitively)."""
    cluster = em.store.get_cluster(req.path_params["etcd_token"])
    if cluster is None:
        raise problem(404, "not_found", "EtcdCluster")
    return Response.json(200, cluster)


# -- exchanges -----------------------------------------------------------------------------


def _exchange_id(em: ManagerEmulator, req: Request, item: str = "MessagingExchange") -> int:
    exchange_id = path_int(req.path_params["id"], "exchange")
    if em.store.exchange_row(exchange_id) is None:
        raise problem(404, "not_found", item)
    return exchange_id


def _render_exchange(em: ManagerEmulator, exchange_id: int) -> dict[str, Any] | None:
    try:
        return em.store.get_exchange(exchange_id)
    except BrokenHierarchy as exc:
        raise Crash(str(exc)) from None


def list_exchanges(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/exchanges``."""
    try:
        return Response.json(200, em.store.list_exchanges())
    except BrokenHierarchy as exc:
        raise Crash(str(exc)) from None


def create_exchange(em: ManagerEmulator, req: Request) -> Response:
    """``POST /messaging/exchanges``: a new id; 409 when the name is taken."""
    name = req.params.get("name")
    if name is None or name == "":
        raise problem(400, "bad_request", "MessagingExchange")
    if not isinstance(name, str):
        raise Crash("exchange name is not a string")  # the name query's cast raises
    if em.store.exchange_named(name) is not None:
        raise problem(409, "conflict", "MessagingExchange")
    changes = Changeset(req.params)
    changes.field("failover_exchange_id", "integer")
    changes.field("parent_exchange_id", "integer")
    changes.field("routing_key_fragment", "string")
    changes.field("name", "string", required=True)
    changes.min_length("name", 1)
    if not changes.valid:
        body = changeset_error_body(changes.errors, "MessagingExchange")
        raise HTTPProblem(Response.json(400, body))
    for ref in ("failover_exchange_id", "parent_exchange_id"):
        target = changes.values.get(ref)
        if target is not None and em.store.exchange_row(target) is None:
            raise problem(500, "internal_server_error", "MessagingExchange")  # foreign key
    try:
        exchange_id = em.store.add_exchange(changes.values)
    except (Overflow, NotNull, Conflict) as exc:
        log.info("emulator: exchange insert refused: %s", exc)
        raise problem(500, "internal_server_error", "MessagingExchange") from None
    return Response.empty(201, {"Location": f"/messaging/exchanges/{exchange_id}"})


def get_exchange(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/exchanges/{id}``."""
    exchange = _render_exchange(em, path_int(req.path_params["id"], "exchange"))
    if exchange is None:
        raise problem(404, "not_found", "MessagingExchange")
    return Response.json(200, exchange)


def list_exchange_clusters(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/exchanges/{id}/clusters[?allow_docker_builds=true|false]``."""
    exchange_id = _exchange_id(em, req)
    raw = req.params.get("allow_docker_builds")
    allow = None
    if raw is not None:
        allow = cast_boolean(raw)
        if allow is INVALID:
            raise Crash(f"allow_docker_builds {raw!r} cannot be cast to a boolean")
    return Response.json(200, em.store.list_clusters(exchange_id, allow))


def list_exchange_brokers(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/exchanges/{id}/brokers``: the restriction join rows."""
    return Response.json(200, em.store.exchange_brokers(_exchange_id(em, req)))


def create_exchange_broker(em: ManagerEmulator, req: Request) -> Response:
    """``POST /messaging/exchanges/{id}/brokers`` with ``messaging_broker_id``."""
    broker_raw = req.params.get("messaging_broker_id")
    if broker_raw is None or broker_raw == "":
        raise problem(400, "bad_request", "MessagingExchange")
    exchange_id = path_int(req.path_params["id"], "exchange")
    broker_id = cast_integer(broker_raw)
    if broker_id is INVALID:
        raise Crash(f"cannot cast {broker_raw!r} to a broker id")
    if em.store.exchange_row(exchange_id) is None:
        raise problem(404, "not_found", "MessagingExchange")
    if em.store.get_broker(broker_id) is None:
        raise problem(400, "bad_request", "MessagingBroker")
    try:
        row = em.store.add_exchange_broker(exchange_id, broker_id)
    except Conflict:
        return Response.empty(409)
    # The real controller rebinds `exchange` to the new join row before building the
    # path, so the Location names the join row's id, not the exchange's.
    return Response.empty(201, {"Location": f"/messaging/exchanges/{row['id']}/brokers"})


# -- modules ---------------------------------------------------------------------------------


def list_modules(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/exchanges/{id}/modules``."""
    exchange_id = _exchange_id(em, req, "MessagingExchangeModule")
    try:
        return Response.json(200, em.store.list_modules(exchange_id))
    except Undecodable as exc:
        raise Crash(f"Poison.decode! failed on a workload: {exc}") from None


def get_module(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/exchanges/{id}/modules/{hostname}``."""
    exchange_id = _exchange_id(em, req, "MessagingExchangeModule")
    try:
        modules = em.store.list_modules(exchange_id)
    except Undecodable as exc:
        raise Crash(f"Poison.decode! failed on a workload: {exc}") from None
    for module in modules:
        if module["hostname"] == req.path_params["hostname"]:
            return Response.json(200, module)
    raise problem(404, "not_found", "MessagingExchangeModuleDB")


def create_module(em: ManagerEmulator, req: Request) -> Response:
    """``POST /messaging/exchanges/{id}/modules``: register (or replace) a hostname's module."""
    exchange_id = _exchange_id(em, req)
    params = dict(req.params)
    params["messaging_exchange_id"] = exchange_id
    if params.get("workload") is not None:
        params["workload"] = poison_encode(params["workload"])
    changes = Changeset(params)
    for name in (
        "source_repo",
        "source_repo_git_ref",
        "deployment_repo",
        "deployment_repo_git_ref",
    ):
        changes.field(name, "string")
    changes.field("messaging_exchange_id", "integer", required=True)
    for name in ("hostname", "type", "status", "workload"):
        changes.field(name, "string", required=True)
    if not changes.valid:
        body = changeset_error_body(changes.errors, "MessagingExchangeModule")
        raise HTTPProblem(Response.json(400, body))
    try:
        module = em.store.replace_module(exchange_id, changes.values)
    except (Overflow, NotNull) as exc:
        log.info("emulator: module insert refused: %s", exc)
        raise problem(500, "internal_server_error", "MessagingExchangeModule") from None
    location = (
        f"/messaging/exchanges/{quote(req.path_params['id'], safe='')}"
        f"/modules/{quote(module['hostname'], safe='')}"
    )
    return Response.empty(201, {"Location": location})


# -- brokers ---------------------------------------------------------------------------------


def list_brokers(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/brokers``."""
    return Response.json(200, em.store.list_brokers())


def create_broker(em: ManagerEmulator, req: Request) -> Response:
    """``POST /messaging/brokers``: a new id; 409 when the name is taken."""
    name = req.params.get("name")
    if name is None or name == "":
        raise problem(400, "bad_request", "MessagingBroker")
    if not isinstance(name, str):
        raise Crash("broker name is not a string")
    if em.store.broker_named(name) is not None:
        raise problem(409, "conflict", "MessagingBroker")
    changes = Changeset(req.params)
    changes.field("failover_broker_id", "integer")
    changes.field("name", "string", required=True)
    changes.min_length("name", 1)
    if not changes.valid:
        body = changeset_error_body(changes.errors, "MessagingBroker")
        raise HTTPProblem(Response.json(400, body))
    failover = changes.values.get("failover_broker_id")
    try:
        if failover is not None and em.store.get_broker(failover) is None:
            raise NotNull("failover_broker_id")  # a foreign key the database refuses
        broker = em.store.add_broker(changes.values)
    except (Overflow, NotNull, Conflict) as exc:
        log.info("emulator: broker insert refused: %s", exc)
        raise problem(500, "internal_server_error", "MessagingBroker") from None
    return Response.empty(201, {"Location": f"/messaging/brokers/{broker['id']}"})


def get_broker(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/brokers/{id}``: ``{id, name, failover_broker_id, ...}``."""
    broker = em.store.get_broker(path_int(req.path_params["id"], "broker"))
    if broker is None:
        raise problem(404, "not_found", "MessagingBroker")
    return Response.json(200, broker)


def list_connections(em: ManagerEmulator, req: Request) -> Response:
    """``GET /messaging/brokers/{id}/connections`` (passwords decrypted, as the real one)."""
    broker_id = path_int(req.path_params["id"], "broker")
    if em.store.get_broker(broker_id) is None:
        raise problem(404, "not_found", "MessagingBroker")
    return Response.json(200, em.store.list_broker_connections(broker_id))


def create_connection(em: ManagerEmulator, req: Request) -> Response:
    """``POST /messaging/brokers/{id}/connections``; the port is never stored."""
    # The real action runs inside one try/rescue: any raise is a 500 with a JSON body.
    internal = problem(500, "internal_server_error", "MessagingBroker")
    if not INT_TEXT.match(req.path_params["id"]):
        raise internal
    broker_id = int(req.path_params["id"])
    if em.store.get_broker(broker_id) is None:
        raise problem(404, "not_found", "MessagingBroker")
    if req.params.get("password") is None:
        raise internal  # encrypt_value(nil) raises before the changeset
    params = {
        "messaging_broker_id": broker_id,
        "username": req.params.get("username"),
        "password": req.params.get("password"),
        "host": req.params.get("host"),
        "virtual_host": req.params.get("virtual_host"),
    }
    changes = Changeset(params)
    changes.field("virtual_host", "string")
    changes.field("messaging_broker_id", "integer", required=True)
    for name in ("username", "password", "host"):
        changes.field(name, "string", required=True)
    if not changes.valid:
        body = changeset_error_body(changes.errors, "MessagingBroker")
        raise HTTPProblem(Response.json(400, body))
    try:
        em.store.add_broker_connection(broker_id, changes.values)
    except (Overflow, NotNull) as exc:
        log.info("emulator: connection insert refused: %s", exc)
        raise internal from None
    return Response.empty(201, {"Location": f"/messaging/brokers/{broker_id}/connections"})


ROUTES: dict[str, dict[str, Handler]] = {
    "/clusters": {"GET": list_clusters, "POST": create_cluster},
    "/clusters/{etcd_token}": {"GET": get_cluster},
    "/messaging/exchanges": {"GET": list_exchanges, "POST": create_exchange},
    "/messaging/exchanges/{id}": {"GET": get_exchange},
    "/messaging/exchanges/{id}/clusters": {"GET": list_exchange_clusters},
    "/messaging/exchanges/{id}/brokers": {
        "GET": list_exchange_brokers,
        "POST": create_exchange_broker,
    },
    "/messaging/exchanges/{id}/modules": {"GET": list_modules, "POST": create_module},
    "/messaging/exchanges/{id}/modules/{hostname}": {"GET": get_module},
    "/messaging/brokers": {"GET": list_brokers, "POST": create_broker},
    "/messaging/brokers/{id}": {"GET": get_broker},
    "/messaging/brokers/{id}/connections": {"GET": list_connections, "POST": create_connection},
}
