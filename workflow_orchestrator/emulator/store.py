"""SQLite storage of the Manager emulator, table for table as the real Manager's PostgreSQL.

Every table has the columns of OpenAperture/manager's migrations (``columns.py`` for
workflows; the registry and system events below), integer ids where the real one has
serial ids, and the varchar sizes that make PostgreSQL refuse an over-long value
(``Overflow``). Values arrive here already cast by the route (``columns.cast``); the store
only checks sizes, keeps rows and renders them the way the real controllers do.

One connection, guarded by a lock, serves every server thread.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from datetime import datetime
from typing import Any

from .columns import (
    COLUMNS_BY_NAME,
    RENDERED_FIELDS,
    WORKFLOW_TABLE,
    Column,
    Overflow,
    now_text,
    poison_decode,
    render_datetime,
    store_datetime,
)

#: First id of the exchange-broker join rows: kept apart from broker ids, so a client that
#: reads the row's ``id`` where it means ``messaging_broker_id`` fails visibly.
EXCHANGE_BROKER_FIRST_ID = 101

_SQL_TYPES = {
    "uuid": "TEXT PRIMARY KEY",
    "string": "TEXT",
    "text": "TEXT",
    "json_text": "TEXT",
    "boolean": "INTEGER",
    "datetime": "TEXT",
}
_WORKFLOWS = (
    "CREATE TABLE IF NOT EXISTS workflows (\n    "
    + ",\n    ".join(f"{c.name} {_SQL_TYPES[c.kind]}" for c in WORKFLOW_TABLE)
    + ",\n    inserted_at TEXT NOT NULL,\n    updated_at TEXT NOT NULL\n);\n"
)
_SCHEMA = (
    _WORKFLOWS
    + f"""
CREATE INDEX IF NOT EXISTS workflows_deployment_repo ON workflows (deployment_repo);
CREATE TABLE IF NOT EXISTS workflow_puts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflow_puts_by_id ON workflow_puts (workflow_id, seq);
CREATE TABLE IF NOT EXISTS messaging_exchanges (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    failover_exchange_id INTEGER,
    parent_exchange_id INTEGER,
    routing_key_fragment TEXT,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS etcd_clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    etcd_token TEXT NOT NULL,
    name TEXT,
    hosting_provider_id INTEGER,
    allow_docker_builds INTEGER,
    messaging_exchange_id INTEGER,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messaging_exchange_modules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    messaging_exchange_id INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    workload TEXT NOT NULL,
    source_repo TEXT,
    source_repo_git_ref TEXT,
    deployment_repo TEXT,
    deployment_repo_git_ref TEXT,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messaging_brokers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    failover_broker_id INTEGER,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messaging_broker_connections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    messaging_broker_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    password TEXT NOT NULL,
    password_keyname TEXT,
    host TEXT NOT NULL,
    virtual_host TEXT NOT NULL,
    port INTEGER,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messaging_exchange_brokers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    messaging_exchange_id INTEGER NOT NULL,
    messaging_broker_id INTEGER NOT NULL,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'messaging_exchange_brokers', {EXCHANGE_BROKER_FIRST_ID - 1}
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messaging_exchange_brokers');
CREATE TABLE IF NOT EXISTS system_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT,
    message TEXT,
    severity TEXT,
    data TEXT,
    dismissed_at TEXT,
    dismissed_by_id INTEGER,
    dismissed_reason TEXT,
    assigned_at TEXT,
    assignee_id INTEGER,
    assigned_by_id INTEGER,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
)

#: varchar sizes of the registry and event tables (Ecto's ``:string`` is varchar(255)).
SIZES: dict[str, dict[str, int]] = {
    "messaging_exchanges": {"name": 1024, "routing_key_fragment": 255},
    "etcd_clusters": {"etcd_token": 255, "name": 255},
    "messaging_exchange_modules": {
        "hostname": 255,
        "type": 255,
        "status": 255,
        "workload": 255,
        "source_repo": 128,
        "source_repo_git_ref": 256,
        "deployment_repo": 128,
        "deployment_repo_git_ref": 256,
    },
    "messaging_brokers": {"name": 255},
    "messaging_broker_connections": {
        "username": 255,
        "password": 255,
        "password_keyname": 255,
        "host": 255,
        "virtual_host": 255,
    },
    "system_events": {"type": 255, "severity": 255, "dismissed_reason": 255},
}
_INT_TEXT = re.compile(r"^[+-]?\d+$")


class Conflict(Exception):
    """The row already exists (a seeding mistake, or the real Manager's 409)."""


class NotNull(ValueError):
    """A NOT NULL column left empty: PostgreSQL refuses the row (the real Manager's 500)."""


class BrokenHierarchy(LookupError):
    """An exchange whose parent chain is dangling or circular (the real Manager crashes)."""


def integer_id(value: Any, what: str) -> int:
    """An id as the real Manager keeps it (serial integer); ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(value)
    raise ValueError(f"{what} ids are integers in the real Manager, not {value!r}")


def _check_sizes(table: str, values: dict[str, Any]) -> None:
    for name, size in SIZES.get(table, {}).items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > size:
            raise Overflow(name, size)


def _check_workflow_sizes(values: dict[str, Any]) -> None:
    for name, value in values.items():
        column = COLUMNS_BY_NAME.get(name)
        if column is not None and column.size is not None:
            if isinstance(value, str) and len(value) > column.size:
                raise Overflow(name, column.size)


def _to_sql(column: Column, value: Any) -> Any:
    if value is None:
        return None
    if column.kind == "boolean":
        return int(bool(value))
    if column.kind == "datetime":
        return store_datetime(value) if isinstance(value, datetime) else value
    return value


class Store:
    """Thread-safe storage; every public method is one atomic step under the lock."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database (an in-memory store is gone afterwards)."""
        with self._lock:
            self._db.close()

    # -- workflows -------------------------------------------------------------------

    def insert_workflow(self, workflow_id: str, values: dict[str, Any]) -> None:
        """A new row from cast values; Overflow or Conflict refuse it whole."""
        _check_workflow_sizes(values)
        now = now_text()
        columns = {n: _to_sql(COLUMNS_BY_NAME[n], v) for n, v in values.items()}
        columns.update(id=workflow_id, inserted_at=now, updated_at=now)
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO workflows ({names}) VALUES ({marks})", tuple(columns.values())
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"workflow {workflow_id} already exists") from None

    def update_workflow(
        self, workflow_id: str, values: dict[str, Any], body: dict[str, Any] | None = None
    ) -> bool:
        """Set the given columns (the others stay); False when unknown. Records ``body``."""
        _check_workflow_sizes(values)
        columns = {n: _to_sql(COLUMNS_BY_NAME[n], v) for n, v in values.items()}
        columns["updated_at"] = now_text()
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE workflows SET {assignments} WHERE id = ?",
                (*columns.values(), workflow_id),
            )
            if cursor.rowcount == 0:
                return False
            if body is not None:
                self._db.execute(
                    "INSERT INTO workflow_puts (workflow_id, body) VALUES (?, ?)",
                    (workflow_id, json.dumps(body)),
                )
        return True

    def workflow_row(self, workflow_id: str) -> dict[str, Any] | None:
        """The row exactly as stored (JSON text still text), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()
        return None if row is None else dict(row)

    def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """The workflow as ``GET /workflows/{id}`` renders it, or None (Undecodable: 500)."""
        row = self.workflow_row(workflow_id)
        return None if row is None else render_workflow(row)

    def list_workflows(
        self, lookback_hours: int = 0, deployment_repo: str | None = None
    ) -> list[dict[str, Any]]:
        """Workflows in insertion order; ``lookback_hours`` 0 or less means all of them."""
        sql = "SELECT * FROM workflows WHERE 1 = 1"
        args: list[Any] = []
        if lookback_hours > 0:
            sql += " AND inserted_at >= ?"
            args.append(now_text(time.time() - lookback_hours * 3600))
        if deployment_repo:
            sql += " AND deployment_repo = ?"
            args.append(deployment_repo)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY rowid", args).fetchall()
        return [render_workflow(dict(row)) for row in rows]

    def delete_workflow(self, workflow_id: str) -> bool:
        """Remove a workflow; False when it is unknown."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM workflows WHERE id = ?", (workflow_id,))
        return cursor.rowcount > 0

    def workflow_puts(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every accepted PUT body for the workflow, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM workflow_puts WHERE workflow_id = ? ORDER BY seq", (workflow_id,)
            ).fetchall()
        return [json.loads(row["body"]) for row in rows]

    # -- exchanges -------------------------------------------------------------------

    def add_exchange(self, values: dict[str, Any], exchange_id: int | None = None) -> int:
        """A new exchange (next id when none is given); Conflict if the id exists."""
        _check_sizes("messaging_exchanges", values)
        now = now_text()
        row = {
            "id": exchange_id,
            "name": values.get("name"),
            "failover_exchange_id": values.get("failover_exchange_id"),
            "parent_exchange_id": values.get("parent_exchange_id"),
            "routing_key_fragment": values.get("routing_key_fragment"),
            "inserted_at": now,
            "updated_at": now,
        }
        if row["name"] is None:
            raise NotNull("name")
        return self._insert("messaging_exchanges", row, f"exchange {exchange_id}")

    def exchange_row(self, exchange_id: int) -> dict[str, Any] | None:
        """One exchange row, or None."""
        return self._one("SELECT * FROM messaging_exchanges WHERE id = ?", (exchange_id,))

    def exchange_named(self, name: str) -> dict[str, Any] | None:
        """The first exchange with that name, or None."""
        return self._one("SELECT * FROM messaging_exchanges WHERE name = ?", (name,))

    def get_exchange(self, exchange_id: int) -> dict[str, Any] | None:
        """An exchange as the Manager renders it (routing key resolved), or None."""
        row = self.exchange_row(exchange_id)
        return None if row is None else self._render_exchange(row)

    def list_exchanges(self) -> list[dict[str, Any]]:
        """Every exchange, by id."""
        rows = self._rows("SELECT * FROM messaging_exchanges ORDER BY id")
        return [self._render_exchange(row) for row in rows]

    def _render_exchange(self, row: dict[str, Any]) -> dict[str, Any]:
        routing_key, root = self._hierarchy(row)
        return {
            "id": row["id"],
            "name": row["name"],
            "failover_exchange_id": row["failover_exchange_id"],
            "parent_exchange_id": row["parent_exchange_id"],
            "routing_key_fragment": row["routing_key_fragment"],
            "routing_key": "" if routing_key is None else routing_key,
            "root_exchange_name": root["name"],
            "inserted_at": render_datetime(row["inserted_at"]),
            "updated_at": render_datetime(row["updated_at"]),
        }

    def _hierarchy(self, row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        # OpenAperture.Manager.RoutingKey.build_hierarchy: fragments joined up to the root;
        # an exchange without a fragment restarts the key at its parent's fragment.
        routing_key: str | None = None
        seen: set[int] = set()
        current: dict[str, Any] | None = row
        root = row
        while current is not None:
            if current["id"] in seen:
                raise BrokenHierarchy(f"exchange {row['id']} has a circular parent chain")
            seen.add(current["id"])
            fragment = current["routing_key_fragment"]
            if routing_key is None:
                routing_key = fragment
            else:
                routing_key = f"{fragment or ''}.{routing_key}"
            root = current
            parent = current["parent_exchange_id"]
            if parent is None:
                break
            current = self.exchange_row(parent)
            if current is None:
                raise BrokenHierarchy(f"exchange {row['id']} has a missing parent {parent}")
        return routing_key, root

    # -- clusters --------------------------------------------------------------------

    def add_cluster(self, values: dict[str, Any]) -> dict[str, Any]:
        """A new etcd cluster row; returns it rendered."""
        _check_sizes("etcd_clusters", values)
        if values.get("etcd_token") is None:
            raise NotNull("etcd_token")
        now = now_text()
        row = {
            "id": None,
            "etcd_token": values["etcd_token"],
            "name": values.get("name"),
            "hosting_provider_id": values.get("hosting_provider_id"),
            "allow_docker_builds": _bool_sql(values.get("allow_docker_builds")),
            "messaging_exchange_id": values.get("messaging_exchange_id"),
            "inserted_at": now,
            "updated_at": now,
        }
        with self._lock:
            exchange = row["messaging_exchange_id"]
            if exchange is not None and self.exchange_row(exchange) is None:
                raise NotNull("messaging_exchange_id")  # a foreign key the database refuses
            new_id = self._insert("etcd_clusters", row, "cluster")
            found = self._one("SELECT * FROM etcd_clusters WHERE id = ?", (new_id,))
        assert found is not None
        return _render_cluster(found)

    def get_cluster(self, etcd_token: str) -> dict[str, Any] | None:
        """The first cluster whose token matches, case-insensitively (as the real query)."""
        row = self._one(
            "SELECT * FROM etcd_clusters WHERE lower(etcd_token) = lower(?) ORDER BY id LIMIT 1",
            (etcd_token,),
        )
        return None if row is None else _render_cluster(row)

    def list_clusters(
        self, exchange_id: int | None = None, allow_docker_builds: bool | None = None
    ) -> list[dict[str, Any]]:
        """Clusters, optionally of one exchange and/or with the flag equal (SQL: NULL never is)."""
        sql = "SELECT * FROM etcd_clusters WHERE 1 = 1"
        args: list[Any] = []
        if exchange_id is not None:
            sql += " AND messaging_exchange_id = ?"
            args.append(exchange_id)
        if allow_docker_builds is not None:
            sql += " AND allow_docker_builds = ?"
            args.append(int(allow_docker_builds))
        return [_render_cluster(row) for row in self._rows(sql + " ORDER BY id", args)]

    # -- modules ---------------------------------------------------------------------

    def replace_module(self, exchange_id: int, values: dict[str, Any]) -> dict[str, Any]:
        """Register a module: every module of that hostname in the exchange is replaced.

        As in the real controller the old rows are deleted first, in their own step, and
        the insert may then fail (Overflow, NotNull): the hostname is left with no module.
        """
        now = now_text()
        row = {
            "id": None,
            "messaging_exchange_id": exchange_id,
            "hostname": values.get("hostname"),
            "type": values.get("type"),
            "status": values.get("status"),
            "workload": values.get("workload"),
            "source_repo": values.get("source_repo"),
            "source_repo_git_ref": values.get("source_repo_git_ref"),
            "deployment_repo": values.get("deployment_repo"),
            "deployment_repo_git_ref": values.get("deployment_repo_git_ref"),
            "inserted_at": now,
            "updated_at": now,
        }
        with self._lock:
            self._db.execute(
                "DELETE FROM messaging_exchange_modules"
                " WHERE messaging_exchange_id = ? AND hostname IS ?",
                (exchange_id, row["hostname"]),
            )
            _check_sizes("messaging_exchange_modules", row)
            for name in ("hostname", "type", "status", "workload"):
                if row[name] is None:
                    raise NotNull(name)
            new_id = self._insert("messaging_exchange_modules", row, "module")
            found = self._one("SELECT * FROM messaging_exchange_modules WHERE id = ?", (new_id,))
        assert found is not None
        return _render_module(found)

    def list_modules(self, exchange_id: int) -> list[dict[str, Any]]:
        """The modules of one exchange, oldest registration first (Undecodable: 500)."""
        rows = self._rows(
            "SELECT * FROM messaging_exchange_modules WHERE messaging_exchange_id = ? ORDER BY id",
            (exchange_id,),
        )
        return [_render_module(row) for row in rows]

    # -- brokers ---------------------------------------------------------------------

    def add_broker(self, values: dict[str, Any], broker_id: int | None = None) -> dict[str, Any]:
        """A new broker (next id when none is given); Conflict if the id exists."""
        _check_sizes("messaging_brokers", values)
        if values.get("name") is None:
            raise NotNull("name")
        now = now_text()
        row = {
            "id": broker_id,
            "name": values["name"],
            "failover_broker_id": values.get("failover_broker_id"),
            "inserted_at": now,
            "updated_at": now,
        }
        with self._lock:
            new_id = self._insert("messaging_brokers", row, f"broker {broker_id}")
            found = self.get_broker(new_id)
        assert found is not None
        return found

    def get_broker(self, broker_id: int) -> dict[str, Any] | None:
        """A broker as ``GET /messaging/brokers/{id}`` renders it, or None."""
        row = self._one("SELECT * FROM messaging_brokers WHERE id = ?", (broker_id,))
        if row is None:
            return None
        return {
            "id": row["id"],
            "name": row["name"],
            "inserted_at": render_datetime(row["inserted_at"]),
            "failover_broker_id": row["failover_broker_id"],
            "updated_at": render_datetime(row["updated_at"]),
        }

    def list_brokers(self) -> list[dict[str, Any]]:
        """Every broker, by id."""
        rows = self._rows("SELECT id FROM messaging_brokers ORDER BY id")
        return [b for b in (self.get_broker(row["id"]) for row in rows) if b is not None]

    def broker_named(self, name: str) -> dict[str, Any] | None:
        """The first broker with that name, or None."""
        return self._one("SELECT * FROM messaging_brokers WHERE name = ?", (name,))

    def add_exchange_broker(self, exchange_id: int, broker_id: int) -> dict[str, Any]:
        """A broker restriction of an exchange (a join row with its own id)."""
        now = now_text()
        row = {
            "id": None,
            "messaging_exchange_id": exchange_id,
            "messaging_broker_id": broker_id,
            "inserted_at": now,
            "updated_at": now,
        }
        with self._lock:
            if self._one(
                "SELECT id FROM messaging_exchange_brokers"
                " WHERE messaging_exchange_id = ? AND messaging_broker_id = ?",
                (exchange_id, broker_id),
            ):
                raise Conflict(f"exchange {exchange_id} already lists broker {broker_id}")
            new_id = self._insert("messaging_exchange_brokers", row, "exchange broker")
        return _render_exchange_broker({**row, "id": new_id})

    def exchange_brokers(self, exchange_id: int) -> list[dict[str, Any]]:
        """The broker restrictions of one exchange, as join rows."""
        rows = self._rows(
            "SELECT * FROM messaging_exchange_brokers WHERE messaging_exchange_id = ? ORDER BY id",
            (exchange_id,),
        )
        return [_render_exchange_broker(row) for row in rows]

    def add_broker_connection(self, broker_id: int, values: dict[str, Any]) -> dict[str, Any]:
        """A connection option of a broker; NotNull/Overflow as the database would."""
        _check_sizes("messaging_broker_connections", values)
        for name in ("username", "password", "host", "virtual_host"):
            if values.get(name) is None:
                raise NotNull(name)
        now = now_text()
        row = {
            "id": None,
            "messaging_broker_id": broker_id,
            "username": values["username"],
            "password": values["password"],
            "password_keyname": values.get("password_keyname"),
            "host": values["host"],
            "virtual_host": values["virtual_host"],
            "port": values.get("port"),
            "inserted_at": now,
            "updated_at": now,
        }
        new_id = self._insert("messaging_broker_connections", row, "connection")
        return _render_connection({**row, "id": new_id})

    def list_broker_connections(self, broker_id: int) -> list[dict[str, Any]]:
        """The connection options of one broker."""
        rows = self._rows(
            "SELECT * FROM messaging_broker_connections WHERE messaging_broker_id = ? ORDER BY id",
            (broker_id,),
        )
        return [_render_connection(row) for row in rows]

    # -- system events ---------------------------------------------------------------

    def add_system_event(self, values: dict[str, Any]) -> dict[str, Any]:
        """Store an event (type, message, severity, data as JSON text); Overflow refuses it."""
        _check_sizes("system_events", values)
        now = now_text()
        row = {
            "id": None,
            "type": values.get("type"),
            "message": values.get("message"),
            "severity": values.get("severity"),
            "data": values.get("data"),
            "inserted_at": now,
            "updated_at": now,
        }
        new_id = self._insert("system_events", row, "system event")
        found = self._one("SELECT * FROM system_events WHERE id = ?", (new_id,))
        assert found is not None
        return _render_event(found)

    def recent_event_rows(self, since_epoch: float, type_: str) -> list[dict[str, Any]]:
        """Raw rows of one type inserted since then (the unique check reads their data)."""
        return self._rows(
            "SELECT * FROM system_events WHERE inserted_at >= ? AND type = ? ORDER BY id",
            (now_text(since_epoch), type_),
        )

    def list_system_events(self, lookback_hours: int = 0) -> list[dict[str, Any]]:
        """Events oldest first; ``lookback_hours`` 0 or less means all of them."""
        if lookback_hours > 0:
            rows = self._rows(
                "SELECT * FROM system_events WHERE inserted_at >= ? ORDER BY id",
                (now_text(time.time() - lookback_hours * 3600),),
            )
        else:
            rows = self._rows("SELECT * FROM system_events ORDER BY id")
        return [_render_event(row) for row in rows]

    # -- helpers ---------------------------------------------------------------------

    def _insert(self, table: str, row: dict[str, Any], what: str) -> int:
        values = {k: v for k, v in row.items() if not (k == "id" and v is None)}
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            try:
                cursor = self._db.execute(
                    f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values())
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"{what} already exists") from None
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def _one(self, sql: str, args: Any = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(sql, tuple(args)).fetchone()
        return None if row is None else dict(row)

    def _rows(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(sql, tuple(args)).fetchall()
        return [dict(row) for row in rows]


# -- rendering (the controllers' ``to_sendable`` field lists) ------------------------------


def render_workflow(row: dict[str, Any]) -> dict[str, Any]:
    """A workflows row as the Workflows controller sends it (Undecodable: its GET is a 500)."""
    out: dict[str, Any] = {}
    for name in RENDERED_FIELDS:
        value = row[name]
        if name in ("inserted_at", "updated_at", "scheduled_start_time"):
            value = render_datetime(value)
        else:
            column = COLUMNS_BY_NAME[name]
            if column.kind == "json_text":
                value = poison_decode(value)
            elif column.kind == "boolean":
                value = None if value is None else bool(value)
        out[name] = value
    return out


def _bool_sql(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def _render_cluster(row: dict[str, Any]) -> dict[str, Any]:
    allow = row["allow_docker_builds"]
    return {
        "id": row["id"],
        "etcd_token": row["etcd_token"],
        "name": row["name"],
        "hosting_provider_id": row["hosting_provider_id"],
        "allow_docker_builds": None if allow is None else bool(allow),
        "messaging_exchange_id": row["messaging_exchange_id"],
        "inserted_at": render_datetime(row["inserted_at"]),
        "updated_at": render_datetime(row["updated_at"]),
    }


def _render_module(row: dict[str, Any]) -> dict[str, Any]:
    out = {
        name: row[name]
        for name in (
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
        )
    }
    out["workload"] = poison_decode(row["workload"])
    out["inserted_at"] = render_datetime(row["inserted_at"])
    out["updated_at"] = render_datetime(row["updated_at"])
    return out


def _render_exchange_broker(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "messaging_exchange_id": row["messaging_exchange_id"],
        "messaging_broker_id": row["messaging_broker_id"],
        "inserted_at": render_datetime(row["inserted_at"]),
        "updated_at": render_datetime(row["updated_at"]),
    }


def _render_connection(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "messaging_broker_id": row["messaging_broker_id"],
        "username": row["username"],
        "password": row["password"],
        "host": row["host"],
        "port": row["port"],
        "virtual_host": row["virtual_host"],
        "inserted_at": render_datetime(row["inserted_at"]),
        "updated_at": render_datetime(row["updated_at"]),
    }


def _render_event(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": row["type"],
        "message": row["message"],
        "severity": row["severity"],
        "data": poison_decode(row["data"]),
        "inserted_at": render_datetime(row["inserted_at"]),
        "updated_at": render_datetime(row["updated_at"]),
        "dismissed_at": render_datetime(row["dismissed_at"]),
        "dismissed_by_id": row["dismissed_by_id"],
        "dismissed_reason": row["dismissed_reason"],
        "assigned_at": render_datetime(row["assigned_at"]),
        "assignee_id": row["assignee_id"],
        "assigned_by_id": row["assigned_by_id"],
    }
