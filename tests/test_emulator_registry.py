"""Clusters, exchanges, modules and brokers of the emulator against the real Manager.

Expectations come from OpenAperture/manager's controllers and migrations
(``etcd_clusters.ex``, ``messaging_exchanges.ex``, ``messaging_exchange_modules.ex``,
``messaging_brokers.ex``, ``routing_key.ex``), over real loopback HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from workflow_orchestrator.emulator import ManagerEmulator


@pytest.fixture
def http(manager_emulator: ManagerEmulator) -> Iterator[requests.Session]:
    """A keep-alive session that carries a valid bearer token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {manager_emulator.issue_token()}"
    yield session
    session.close()


def at(em: ManagerEmulator, path: str) -> str:
    return em.url + path


def not_found(item: str) -> dict[str, object]:
    return {"errors": [{"message": f"{item} was not found"}]}


# -- modules ---------------------------------------------------------------------------------


def test_a_module_post_replaces_by_hostname_alone(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    manager_emulator.add_exchange(7, "x")
    target = at(manager_emulator, "/messaging/exchanges/7/modules")
    body = {"hostname": "h", "type": "builder", "status": "active", "workload": []}
    first = http.post(target, json=body)
    assert first.status_code == 201 and first.content == b""
    assert first.headers["Location"] == "/messaging/exchanges/7/modules/h"
    assert http.post(target, json={**body, "type": "deployer", "workload": ["w1"]}).ok
    assert http.post(target, json={**body, "hostname": "other"}).ok
    modules = http.get(target).json()
    assert [(m["hostname"], m["type"], m["workload"]) for m in modules] == [
        ("h", "deployer", ["w1"]),
        ("other", "builder", []),
    ]
    assert modules[0]["messaging_exchange_id"] == 7
    assert set(modules[0]) == {
        "id",
        "messaging_exchange_id",
        "hostname",
        "type",
        "status",
        "workload",
        "source_repo",
        "source_repo_git_ref",
        "deployment_repo",
        "deployment_repo_git_ref",
        "inserted_at",
        "updated_at",
    }
    one = http.get(target + "/other")
    assert one.status_code == 200 and one.json()["type"] == "builder"


@pytest.mark.parametrize("missing", ["hostname", "type", "status", "workload"])
def test_a_module_post_requires_hostname_type_status_and_workload(
    manager_emulator: ManagerEmulator, http: requests.Session, missing: str
) -> None:
    manager_emulator.add_exchange(1, "x")
    body = {"hostname": "h", "type": "builder", "status": "active", "workload": []}
    del body[missing]
    answer = http.post(at(manager_emulator, "/messaging/exchanges/1/modules"), json=body)
    assert answer.status_code == 400
    assert answer.json() == {
        "errors": [
            {"message": "One or more fields for MessagingExchangeModule were invalid"},
            {missing: "can't be blank"},
        ]
    }
    assert manager_emulator.modules(1) == []


def test_a_workload_longer_than_its_column_is_500_and_loses_the_old_record(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    """workload is JSON in a varchar(255); the old rows are deleted before the insert."""
    manager_emulator.add_exchange(1, "x")
    target = at(manager_emulator, "/messaging/exchanges/1/modules")
    body = {"hostname": "h", "type": "workflow_orchestrator", "status": "active", "workload": []}
    assert http.post(target, json=body).status_code == 201
    six = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(6)]  # 235 characters
    assert http.post(target, json={**body, "workload": six}).status_code == 201
    seven = six + ["00000006-0000-4000-8000-000000000000"]  # 274 characters
    refused = http.post(target, json={**body, "workload": seven})
    assert refused.status_code == 500
    assert refused.json() == {
        "errors": [{"message": "An unexpected error occured with MessagingExchangeModule"}]
    }
    assert manager_emulator.modules(1) == []


def test_modules_of_an_unknown_or_non_integer_exchange(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    body = {"hostname": "h", "type": "builder", "status": "active", "workload": []}
    unknown = at(manager_emulator, "/messaging/exchanges/8/modules")
    assert http.post(unknown, json=body).json() == not_found("MessagingExchange")
    listed = http.get(unknown)
    assert listed.status_code == 404 and listed.json() == not_found("MessagingExchangeModule")
    assert http.get(at(manager_emulator, "/messaging/exchanges/east/modules")).status_code == 500


def test_add_module_defaults_keep_one_module_per_type(manager_emulator: ManagerEmulator) -> None:
    manager_emulator.add_module("1", "builder")
    manager_emulator.add_module("1", "deployer")
    manager_emulator.add_module("1", "builder", hostname="deployer-host")  # replaces it
    assert [(m["hostname"], m["type"]) for m in manager_emulator.modules(1)] == [
        ("builder-host", "builder"),
        ("deployer-host", "builder"),
    ]


# -- brokers ---------------------------------------------------------------------------------


def test_exchange_brokers_are_join_rows_with_their_own_id(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    manager_emulator.add_exchange(2, "remote")
    manager_emulator.add_broker(1, name="b1")
    manager_emulator.add_broker(2, name="b2")
    manager_emulator.add_exchange_broker(2, 2)
    manager_emulator.add_exchange_broker(2, 1)
    rows = http.get(at(manager_emulator, "/messaging/exchanges/2/brokers")).json()
    assert [(r["messaging_exchange_id"], r["messaging_broker_id"]) for r in rows] == [
        (2, 2),
        (2, 1),
    ]
    assert all(r["id"] not in (1, 2) for r in rows)  # the join row's own id
    assert set(rows[0]) == {
        "id",
        "messaging_exchange_id",
        "messaging_broker_id",
        "inserted_at",
        "updated_at",
    }
    assert http.get(at(manager_emulator, "/messaging/exchanges/3/brokers")).status_code == 404


def test_broker_and_its_connections(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    manager_emulator.add_broker(5, name="backup")
    broker = manager_emulator.add_broker(7, 1, "rabbit", failover_broker_id=5)
    assert broker["failover_broker_id"] == 5
    manager_emulator.add_broker_connection(7, "mq.local", 5672, "user", "pw", "/prod")
    got = http.get(at(manager_emulator, "/messaging/brokers/7")).json()
    assert {k: got[k] for k in ("id", "name", "failover_broker_id")} == {
        "id": 7,
        "name": "rabbit",
        "failover_broker_id": 5,
    }
    assert set(got) == {"id", "name", "failover_broker_id", "inserted_at", "updated_at"}
    (connection,) = http.get(at(manager_emulator, "/messaging/brokers/7/connections")).json()
    assert {k: v for k, v in connection.items() if k not in ("inserted_at", "updated_at")} == {
        "id": connection["id"],
        "messaging_broker_id": 7,
        "username": "user",
        "password": "pw",
        "host": "mq.local",
        "port": 5672,
        "virtual_host": "/prod",
    }
    (row,) = http.get(at(manager_emulator, "/messaging/exchanges/1/brokers")).json()
    assert row["messaging_broker_id"] == 7
    assert http.get(at(manager_emulator, "/messaging/brokers/8")).json() == not_found(
        "MessagingBroker"
    )
    assert http.get(at(manager_emulator, "/messaging/brokers/8/connections")).status_code == 404
    assert http.get(at(manager_emulator, "/messaging/brokers/b1")).status_code == 500


def test_brokers_created_over_http(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    made = http.post(at(manager_emulator, "/messaging/brokers"), json={"name": "east"})
    assert made.status_code == 201 and made.content == b""
    broker_path = made.headers["Location"]
    broker_id = int(broker_path.rsplit("/", 1)[1])
    assert http.post(at(manager_emulator, "/messaging/brokers"), json={"name": "east"}).json() == {
        "errors": [{"message": "A MessagingBroker already exists with that identifier"}]
    }
    connection = {
        "username": "u",
        "password": "p",
        "host": "mq",
        "port": 5673,
        "virtual_host": "/",
    }
    assert http.post(at(manager_emulator, broker_path + "/connections"), json=connection).ok
    (stored,) = http.get(at(manager_emulator, broker_path + "/connections")).json()
    assert stored["host"] == "mq" and stored["port"] is None  # the controller never casts it
    no_vhost = {k: v for k, v in connection.items() if k != "virtual_host"}
    assert http.post(
        at(manager_emulator, broker_path + "/connections"), json=no_vhost
    ).status_code == (500)
    manager_emulator.add_exchange(1, "main")
    restriction = http.post(
        at(manager_emulator, "/messaging/exchanges/1/brokers"),
        json={"messaging_broker_id": broker_id},
    )
    assert restriction.status_code == 201
    (row,) = http.get(at(manager_emulator, "/messaging/exchanges/1/brokers")).json()
    # The real controller names the join row's id in the Location, not the exchange's.
    assert restriction.headers["Location"] == f"/messaging/exchanges/{row['id']}/brokers"
    again = http.post(
        at(manager_emulator, "/messaging/exchanges/1/brokers"),
        json={"messaging_broker_id": broker_id},
    )
    assert again.status_code == 409 and again.content == b""
    unknown_broker = http.post(
        at(manager_emulator, "/messaging/exchanges/1/brokers"), json={"messaging_broker_id": 99}
    )
    assert unknown_broker.status_code == 400


def test_registry_ids_must_be_integers(manager_emulator: ManagerEmulator) -> None:
    with pytest.raises(ValueError):
        manager_emulator.add_broker("b1")
    with pytest.raises(ValueError):
        manager_emulator.add_exchange("east")


# -- exchanges -------------------------------------------------------------------------------


def test_exchanges_carry_routing_key_and_root_exchange_name(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    manager_emulator.add_exchange(1, "aws", routing_key_fragment="aws")
    manager_emulator.add_exchange(2, "us-east", parent_exchange_id=1, routing_key_fragment="east")
    manager_emulator.add_exchange(3, "dc", parent_exchange_id=2, routing_key_fragment="dc1")
    manager_emulator.add_exchange(4, "loose")
    got = http.get(at(manager_emulator, "/messaging/exchanges/3")).json()
    assert got["routing_key"] == "aws.east.dc1" and got["root_exchange_name"] == "aws"
    assert set(got) == {
        "id",
        "name",
        "failover_exchange_id",
        "parent_exchange_id",
        "routing_key_fragment",
        "routing_key",
        "root_exchange_name",
        "inserted_at",
        "updated_at",
    }
    listed = http.get(at(manager_emulator, "/messaging/exchanges")).json()
    assert [(e["id"], e["routing_key"], e["root_exchange_name"]) for e in listed] == [
        (1, "aws", "aws"),
        (2, "aws.east", "aws"),
        (3, "aws.east.dc1", "aws"),
        (4, "", "loose"),
    ]
    assert http.get(at(manager_emulator, "/messaging/exchanges/9")).json() == not_found(
        "MessagingExchange"
    )
    assert http.get(at(manager_emulator, "/messaging/exchanges/x")).status_code == 500


def test_exchanges_created_over_http(
    manager_emulator: ManagerEmulator, http: requests.Session
) -> None:
    target = at(manager_emulator, "/messaging/exchanges")
    made = http.post(target, json={"id": 50, "name": "a"})
    assert made.status_code == 201 and made.content == b""
    assert made.headers["Location"] == "/messaging/exchanges/1"  # a given id is ignored
    assert http.post(target, json={"name": "a"}).status_code == 409
    assert http.post(target, json={}).status_code == 400
    bad = http.post(target, json={"name": "b", "parent_exchange_id": "top"})
    assert bad.status_code == 400
    assert bad.json()["errors"][1] == {"parent_exchange_id": "is invalid"}


# -- clusters --------------------------------------------------------------------------------


def test_clusters(manager_emulator: ManagerEmulator, http: requests.Session) -> None:
    manager_emulator.add_exchange(1, "a")
    made = http.post(
        at(manager_emulator, "/clusters"),
        json={"etcd_token": "t1", "messaging_exchange_id": "1", "allow_docker_builds": True},
    )
    assert made.status_code == 201 and made.json() == "Registered id 1"
    assert made.headers["Location"] == "/clusters/t1"
    no_flag = http.post(at(manager_emulator, "/clusters"), json={"etcd_token": "t2"})
    assert no_flag.status_code == 201
    bad_exchange = http.post(
        at(manager_emulator, "/clusters"), json={"etcd_token": "t3", "messaging_exchange_id": 9}
    )
    assert bad_exchange.status_code == 500  # the foreign key refuses the row
    manager_emulator.add_cluster("t4", "1")  # allow_docker_builds false
    clusters = http.get(at(manager_emulator, "/clusters")).json()
    assert [
        (c["etcd_token"], c["messaging_exchange_id"], c["allow_docker_builds"]) for c in clusters
    ] == [
        ("t1", 1, True),
        ("t2", None, None),
        ("t4", 1, False),
    ]
    assert set(clusters[0]) == {
        "id",
        "etcd_token",
        "name",
        "hosting_provider_id",
        "allow_docker_builds",
        "messaging_exchange_id",
        "inserted_at",
        "updated_at",
    }
    only_builds = http.get(at(manager_emulator, "/clusters?allow_docker_builds=true")).json()
    assert [c["etcd_token"] for c in only_builds] == ["t1"]
    in_exchange = at(manager_emulator, "/messaging/exchanges/1/clusters")
    assert [c["etcd_token"] for c in http.get(in_exchange).json()] == ["t1", "t4"]
    assert [
        c["etcd_token"] for c in http.get(in_exchange + "?allow_docker_builds=false").json()
    ] == ["t4"]
    assert http.get(in_exchange + "?allow_docker_builds=maybe").status_code == 500
    assert http.get(at(manager_emulator, "/clusters/T4")).json()["etcd_token"] == "t4"
    assert http.get(at(manager_emulator, "/clusters/zz")).json() == not_found("EtcdCluster")
