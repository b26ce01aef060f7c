"""SQLite storage of the Manager emulator, shaped like the real (Elixir/Ecto) Manager.

Workflows get one column per persisted field, and ``milestones``,
``workflow_step_durations``, ``event_log`` and ``execute_options`` are JSON *text*
columns, encoded on write and decoded on read, because that is what the real Manager
does and what a client must survive (a string sent for one of them is stored verbatim).
The registry (clusters, exchanges, modules, brokers) and system events are kept as JSON
documents with a few indexed columns: only their HTTP shape matters.

One connection, guarded by a lock, serves every server thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from typing import Any

from ..workflow import JSON_TEXT_FIELDS, WORKFLOW_FIELDS

_BOOL_FIELDS = ("workflow_error", "workflow_completed")
_TEXT_FIELDS = tuple(
    f for f in WORKFLOW_FIELDS if f not in JSON_TEXT_FIELDS and f not in _BOOL_FIELDS and f != "id"
)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY,
    {", ".join(f"{name} TEXT" for name in _TEXT_FIELDS + JSON_TEXT_FIELDS)},
    {", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in _BOOL_FIELDS)},
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    inserted_epoch REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workflow_puts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflow_puts_by_id ON workflow_puts (workflow_id, seq);
CREATE TABLE IF NOT EXISTS exchanges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    etcd_token TEXT NOT NULL UNIQUE,
    exchange_key TEXT,
    allow_docker_builds INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange_key TEXT NOT NULL,
    hostname TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (exchange_key, hostname, type)
);
CREATE TABLE IF NOT EXISTS brokers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    exchange_key TEXT,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS broker_connections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    broker_key TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS system_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT,
    message TEXT,
    created_epoch REAL NOT NULL,
    data TEXT NOT NULL
);
"""


class StoreError(ValueError):
    """A body the real Manager's changeset would reject (answered 400)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


class Conflict(Exception):
    """The thing already exists, or the workflow cannot be executed (answered 409)."""


def rfc1123(epoch: float | None = None) -> str:
    """``Mon, 17 Aug 2015 20:03:02 UTC``: how the Manager renders Ecto timestamps."""
    t = time.gmtime(time.time() if epoch is None else epoch)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC"
    )


def _key(value: Any) -> str:
    """Ids in paths are strings; rows are keyed by the string form of any JSON id."""
    return str(value)


def _encode_json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _decode_json_text(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def _cast_bool(name: str, value: Any) -> int:
    # Ecto's boolean cast: booleans and their usual string spellings.
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return int(value.lower() in ("true", "1"))
    raise StoreError(name, "is invalid")


def _cast_text(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise StoreError(name, "is invalid")


def workflow_columns(fields: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """Client JSON -> column values; unknown keys are dropped like Ecto's cast does."""
    out: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        if name in fields:
            out[name] = _cast_text(name, fields[name])
    for name in JSON_TEXT_FIELDS:
        if name in fields:
            out[name] = _encode_json_text(fields[name])
    for name in _BOOL_FIELDS:
        # A PUT that omits workflow_completed (or workflow_error) sets it to false.
        if name in fields or defaults:
            out[name] = _cast_bool(name, fields.get(name))
    return out


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

    def insert_workflow(self, fields: dict[str, Any]) -> str:
        """A new workflow; the id is generated (uuid4) when absent. Conflict if it exists."""
        wid = fields.get("id")
        if wid is None:
            wid = str(uuid.uuid4())
        if not isinstance(wid, str) or not wid:
            raise StoreError("id", "is invalid")
        columns = workflow_columns(fields, defaults=True)
        now = time.time()
        columns.update(id=wid, inserted_at=rfc1123(now), updated_at=rfc1123(now))
        columns["inserted_epoch"] = now
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO workflows ({names}) VALUES ({marks})", tuple(columns.values())
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"workflow {wid} already exists") from None
        return wid

    def get_workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """The workflow as the Manager renders it (JSON-text fields decoded), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()
        return None if row is None else self._render_workflow(row)

    def list_workflows(
        self, lookback_hours: float = 0, deployment_repo: str | None = None
    ) -> list[dict[str, Any]]:
        """Workflows in insertion order; ``lookback_hours`` 0 means all of them."""
        sql = "SELECT * FROM workflows WHERE 1 = 1"
        args: list[Any] = []
        if lookback_hours > 0:
            sql += " AND inserted_epoch >= ?"
            args.append(time.time() - lookback_hours * 3600)
        if deployment_repo:
            sql += " AND deployment_repo = ?"
            args.append(deployment_repo)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY rowid", args).fetchall()
        return [self._render_workflow(row) for row in rows]

    def update_workflow(self, workflow_id: str, body: dict[str, Any]) -> bool:
        """Apply a PUT body; False when the workflow is unknown. Records the body."""
        columns = workflow_columns(body, defaults=True)
        columns["updated_at"] = rfc1123()
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE workflows SET {assignments} WHERE id = ?",
                (*columns.values(), workflow_id),
            )
            if cursor.rowcount == 0:
                return False
            self._db.execute(
                "INSERT INTO workflow_puts (workflow_id, body) VALUES (?, ?)",
                (workflow_id, json.dumps(body)),
            )
        return True

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

    def begin_execution(self, workflow_id: str, options: dict[str, Any]) -> bool:
        """Check and record an execute request atomically.

        False when the workflow is unknown; Conflict when it has started or completed
        (the real Manager's 409 rule); else ``execute_options`` is stored.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT current_step, workflow_completed FROM workflows WHERE id = ?",
                (workflow_id,),
            ).fetchone()
            if row is None:
                return False
            if row["workflow_completed"]:
                raise Conflict("Workflow has already completed")
            if row["current_step"] is not None:
                raise Conflict("Workflow has already been started")
            self._db.execute(
                "UPDATE workflows SET execute_options = ?, updated_at = ? WHERE id = ?",
                (json.dumps(options), rfc1123(), workflow_id),
            )
        return True

    def raw_workflow_row(self, workflow_id: str) -> dict[str, Any] | None:
        """The row exactly as stored (JSON-text columns still text), for inspection."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()
        return None if row is None else dict(row)

    @staticmethod
    def _render_workflow(row: sqlite3.Row) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in WORKFLOW_FIELDS:
            value = row[name]
            if name in JSON_TEXT_FIELDS:
                value = _decode_json_text(value)
            elif name in _BOOL_FIELDS:
                value = bool(value)
            out[name] = value
        out["inserted_at"] = row["inserted_at"]
        out["updated_at"] = row["updated_at"]
        return out

    # -- exchanges -------------------------------------------------------------------

    def add_exchange(self, exchange: dict[str, Any]) -> dict[str, Any]:
        """A new exchange; an absent id becomes the next integer. Conflict if it exists."""
        given = exchange.get("id")
        if given is not None and (isinstance(given, bool) or not isinstance(given, (str, int))):
            raise StoreError("id", "is invalid")
        with self._lock:
            data = dict(exchange)
            if data.get("id") is None:
                row = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM exchanges").fetchone()
                data["id"] = row[0]
                while self._get("exchanges", _key(data["id"])) is not None:
                    data["id"] += 1
            now = rfc1123()
            data.setdefault("name", "")
            data.setdefault("failover_exchange_id", None)
            data.setdefault("parent_exchange_id", None)
            data.setdefault("routing_key_fragment", None)
            data.setdefault("inserted_at", now)
            data.setdefault("updated_at", now)
            try:
                self._db.execute(
                    "INSERT INTO exchanges (key, data) VALUES (?, ?)",
                    (_key(data["id"]), json.dumps(data)),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"exchange {data['id']} already exists") from None
        return data

    def ensure_exchange(self, exchange_id: Any) -> dict[str, Any]:
        """The exchange, created with defaults when unknown (seeding convenience)."""
        with self._lock:
            found = self.get_exchange(_key(exchange_id))
            return found if found is not None else self.add_exchange({"id": exchange_id})

    def get_exchange(self, exchange_id: str) -> dict[str, Any] | None:
        """One exchange by (string) id."""
        return self._get("exchanges", _key(exchange_id))

    def list_exchanges(self) -> list[dict[str, Any]]:
        """Every exchange in insertion order."""
        return self._all("SELECT data FROM exchanges ORDER BY seq")

    # -- clusters --------------------------------------------------------------------

    def add_cluster(self, cluster: dict[str, Any]) -> dict[str, Any]:
        """A new cluster; its ``messaging_exchange_id`` keeps its JSON type."""
        token = cluster.get("etcd_token")
        if not isinstance(token, str) or not token:
            raise StoreError("etcd_token", "can't be blank")
        allow = _cast_bool("allow_docker_builds", cluster.get("allow_docker_builds", False))
        exchange_id = cluster.get("messaging_exchange_id")
        with self._lock:
            data = dict(cluster)
            now = rfc1123()
            data["allow_docker_builds"] = bool(allow)
            data.setdefault("messaging_exchange_id", None)
            data.setdefault("hosting_provider_id", None)
            data.setdefault("name", None)
            data.setdefault("primary_ip", None)
            data.setdefault("inserted_at", now)
            data.setdefault("updated_at", now)
            try:
                cursor = self._db.execute(
                    "INSERT INTO clusters (etcd_token, exchange_key, allow_docker_builds, data)"
                    " VALUES (?, ?, ?, '{}')",
                    (token, None if exchange_id is None else _key(exchange_id), allow),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"cluster {token} already exists") from None
            data = {"id": cursor.lastrowid, **{k: v for k, v in data.items() if k != "id"}}
            self._db.execute(
                "UPDATE clusters SET data = ? WHERE id = ?", (json.dumps(data), cursor.lastrowid)
            )
        return data

    def get_cluster(self, etcd_token: str) -> dict[str, Any] | None:
        """One cluster by etcd token."""
        rows = self._all("SELECT data FROM clusters WHERE etcd_token = ?", (etcd_token,))
        return rows[0] if rows else None

    def list_clusters(
        self, exchange_id: str | None = None, allow_docker_builds: bool | None = None
    ) -> list[dict[str, Any]]:
        """Clusters, optionally of one exchange and/or with the given docker-build flag."""
        sql = "SELECT data FROM clusters WHERE 1 = 1"
        args: list[Any] = []
        if exchange_id is not None:
            sql += " AND exchange_key = ?"
            args.append(_key(exchange_id))
        if allow_docker_builds is not None:
            sql += " AND allow_docker_builds = ?"
            args.append(int(allow_docker_builds))
        return self._all(sql + " ORDER BY id", args)

    # -- modules ---------------------------------------------------------------------

    def upsert_module(self, exchange_id: str, module: dict[str, Any]) -> dict[str, Any]:
        """Register a module; the same hostname + type in that exchange is replaced."""
        for name in ("hostname", "type"):
            if not isinstance(module.get(name), str) or not module[name]:
                raise StoreError(name, "can't be blank")
        with self._lock:
            exchange = self.get_exchange(exchange_id)
            if exchange is None:
                raise KeyError(exchange_id)
            now = rfc1123()
            data = {
                "messaging_exchange_id": exchange["id"],
                "status": None,
                "workload": None,
                **{k: v for k, v in module.items() if k != "id"},
                "inserted_at": now,
                "updated_at": now,
            }
            self._db.execute(
                "DELETE FROM modules WHERE exchange_key = ? AND hostname = ? AND type = ?",
                (_key(exchange_id), data["hostname"], data["type"]),
            )
            cursor = self._db.execute(
                "INSERT INTO modules (exchange_key, hostname, type, data) VALUES (?, ?, ?, '{}')",
                (_key(exchange_id), data["hostname"], data["type"]),
            )
            data = {"id": cursor.lastrowid, **data}
            self._db.execute(
                "UPDATE modules SET data = ? WHERE id = ?", (json.dumps(data), cursor.lastrowid)
            )
        return data

    def list_modules(self, exchange_id: str) -> list[dict[str, Any]]:
        """The modules of one exchange, oldest registration first."""
        return self._all(
            "SELECT data FROM modules WHERE exchange_key = ? ORDER BY id", (_key(exchange_id),)
        )

    # -- brokers ---------------------------------------------------------------------

    def add_broker(self, broker: dict[str, Any], exchange_id: Any) -> dict[str, Any]:
        """A new broker of an exchange. Conflict if the id exists."""
        with self._lock:
            now = rfc1123()
            data = {"name": "", "failover_broker_id": None, **broker}
            data.setdefault("inserted_at", now)
            data.setdefault("updated_at", now)
            try:
                self._db.execute(
                    "INSERT INTO brokers (key, exchange_key, data) VALUES (?, ?, ?)",
                    (_key(data["id"]), _key(exchange_id), json.dumps(data)),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"broker {data['id']} already exists") from None
        return data

    def get_broker(self, broker_id: str) -> dict[str, Any] | None:
        """One broker by (string) id."""
        return self._get("brokers", _key(broker_id))

    def list_brokers(self, exchange_id: str) -> list[dict[str, Any]]:
        """The brokers of one exchange."""
        return self._all(
            "SELECT data FROM brokers WHERE exchange_key = ? ORDER BY seq", (_key(exchange_id),)
        )

    def add_broker_connection(self, broker_id: Any, connection: dict[str, Any]) -> dict[str, Any]:
        """A connection option (host, port, credentials) of a broker."""
        with self._lock:
            now = rfc1123()
            cursor = self._db.execute(
                "INSERT INTO broker_connections (broker_key, data) VALUES (?, '{}')",
                (_key(broker_id),),
            )
            data = {
                "id": cursor.lastrowid,
                "messaging_broker_id": broker_id,
                "virtual_host": "/",
                "ssl": False,
                **connection,
                "inserted_at": now,
                "updated_at": now,
            }
            self._db.execute(
                "UPDATE broker_connections SET data = ? WHERE id = ?",
                (json.dumps(data), cursor.lastrowid),
            )
        return data

    def list_broker_connections(self, broker_id: str) -> list[dict[str, Any]]:
        """The connection options of one broker."""
        return self._all(
            "SELECT data FROM broker_connections WHERE broker_key = ? ORDER BY id",
            (_key(broker_id),),
        )

    # -- system events ---------------------------------------------------------------

    def add_system_event(
        self, event: dict[str, Any], unique_window: float = 3600.0
    ) -> dict[str, Any]:
        """Store an event; Conflict when ``unique`` and the same type+message is recent."""
        now = time.time()
        with self._lock:
            if event.get("unique") is True:
                row = self._db.execute(
                    "SELECT 1 FROM system_events WHERE type IS ? AND message IS ?"
                    " AND created_epoch >= ?",
                    (
                        _text_or_none(event.get("type")),
                        _text_or_none(event.get("message")),
                        now - unique_window,
                    ),
                ).fetchone()
                if row is not None:
                    raise Conflict("SystemEvent")
            cursor = self._db.execute(
                "INSERT INTO system_events (type, message, created_epoch, data) VALUES (?, ?, ?, '{}')",
                (_text_or_none(event.get("type")), _text_or_none(event.get("message")), now),
            )
            data = {
                "id": cursor.lastrowid,
                "type": event.get("type"),
                "message": event.get("message"),
                "severity": event.get("severity"),
                "data": event.get("data"),
                "inserted_at": rfc1123(now),
                "updated_at": rfc1123(now),
                "dismissed_at": None,
                "assigned_at": None,
            }
            self._db.execute(
                "UPDATE system_events SET data = ? WHERE id = ?",
                (json.dumps(data), cursor.lastrowid),
            )
        return data

    def list_system_events(self, lookback_hours: float = 0) -> list[dict[str, Any]]:
        """Events oldest first; ``lookback_hours`` 0 means all of them."""
        since = time.time() - lookback_hours * 3600 if lookback_hours > 0 else 0.0
        return self._all(
            "SELECT data FROM system_events WHERE created_epoch >= ? ORDER BY id", (since,)
        )

    # -- helpers ---------------------------------------------------------------------

    def _get(self, table: str, key: str) -> dict[str, Any] | None:
        rows = self._all(f"SELECT data FROM {table} WHERE key = ?", (key,))
        return rows[0] if rows else None

    def _all(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(sql, tuple(args)).fetchall()
        return [json.loads(row["data"]) for row in rows]


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)
