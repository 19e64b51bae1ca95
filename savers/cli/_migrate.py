"""``savegame migrate``: bring the peers' checkpoints over as savegame checkpoints.

Each source is read from its own tables or collections and written through savegame's own
adapter (``savegame.adapters.langgraph.Checkpointer``, ``savegame.adapters.burr.Persister``),
so the result is exactly what that adapter would have written had it run the graph or app:
the run resumes on savegame where it stopped on the peer. Re-running a migration is a
no-op for what is already there (same ids, same content).

Nothing is imported by a name read from storage: LangGraph checkpoints are decoded with
LangGraph's ``JsonPlusSerializer`` restricted to its built-in safe types plus the types
given with ``--allow module:Name``, after a scan that refuses (naming thread, checkpoint
and type) any other type instead of letting it turn silently into a dict. Pending writes
keep LangGraph's own encoding and are copied without decoding. Burr states are JSON.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import click
import msgpack

from ..base import BaseSaver
from ..checkpoint import PendingWrite
from ..errors import SavegameError
from ..registry import open_saver
from ._app import Out, _warn_ephemeral

__all__ = ["migrate"]


class MigrationError(SavegameError):
    """A source row cannot be migrated (named by thread/app and checkpoint/sequence id)."""


@dataclass
class _LGCheckpoint:
    thread_id: str
    namespace: str
    checkpoint_id: str
    parent_id: str | None
    type: str
    blob: bytes
    metadata: Any  # decoded by the caller's loader


@dataclass
class _LGWrite:
    thread_id: str
    namespace: str
    checkpoint_id: str
    task_id: str
    task_path: str
    idx: int
    channel: str
    type: str
    value: bytes


# -- LangGraph ---------------------------------------------------------------------------
def _allowlist(allow: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for item in allow:
        module, sep, name = item.replace(":", ".").rpartition(".")
        if not sep or not module or not name:
            raise click.BadParameter(f"{item!r}: expected module:Name", param_hint="--allow")
        out.append((module, name))
    return out


def _scan_types(data: bytes) -> set[tuple[str, ...]]:
    """(module, name[, method]) of every constructor LangGraph's msgpack would call."""
    found: set[tuple[str, ...]] = set()

    def hook(code: int, payload: bytes) -> Any:
        parts = msgpack.unpackb(payload, ext_hook=hook, strict_map_key=False, raw=False)
        if code in (0, 1, 2, 4) and isinstance(parts, list) and len(parts) >= 2:
            found.add((str(parts[0]), str(parts[1])))
        elif code in (3, 5) and isinstance(parts, list) and len(parts) >= 4:
            found.add((str(parts[0]), str(parts[1])))
            if code == 3:
                found.add((str(parts[0]), str(parts[1]), str(parts[3])))
        return None

    msgpack.unpackb(data, ext_hook=hook, strict_map_key=False, raw=False)
    return found


class _LangGraphReader:
    """Decode peer rows with LangGraph's serializer, allowlisted."""

    def __init__(self, allow: Iterable[str]):
        from langgraph.checkpoint.serde import _msgpack as lg_msgpack
        from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

        self.allowed = _allowlist(allow)
        self.safe: set[tuple[str, ...]] = set(lg_msgpack.SAFE_MSGPACK_TYPES)
        self.safe |= set(getattr(lg_msgpack, "SAFE_MSGPACK_METHODS", ()))
        self.safe |= set(self.allowed)
        self.serde = JsonPlusSerializer(allowed_msgpack_modules=self.allowed or None)

    def checkpoint(self, row: _LGCheckpoint) -> Any:
        if row.type == "msgpack":
            for key in _scan_types(row.blob):
                if key not in self.safe and key[:2] not in self.safe:
                    raise MigrationError(
                        f"thread {row.thread_id!r}, checkpoint {row.checkpoint_id!r} holds "
                        f"type {'.'.join(key)}, which is not allowed: pass --allow "
                        f"{key[0]}:{key[1]} if you trust it")
        elif row.type == "pickle":
            raise MigrationError(f"thread {row.thread_id!r}, checkpoint {row.checkpoint_id!r} "
                                 "is pickled; savegame never unpickles stored data")
        return self.serde.loads_typed((row.type, row.blob))


def _migrate_langgraph(
    dst: BaseSaver,
    checkpoints: Iterable[_LGCheckpoint],
    writes_of: Callable[[str], Iterable[_LGWrite]],
    reader: _LangGraphReader,
    out: Out,
    total: int,
) -> dict[str, int]:
    from savegame.adapters.langgraph import Checkpointer

    checkpointer = Checkpointer(dst)
    threads: dict[str, list[_LGCheckpoint]] = defaultdict(list)
    for row in checkpoints:
        threads[row.thread_id].append(row)
    counts = {"threads": 0, "checkpoints": 0, "writes": 0}
    with out.progress() as bar:
        task = bar.add_task("migrating", total=total)
        for thread_id in sorted(threads):
            rows = sorted(threads[thread_id], key=lambda r: (r.namespace, r.checkpoint_id))
            for row in rows:
                checkpoint = reader.checkpoint(row)
                config: Any = {"configurable": {"thread_id": thread_id,
                                                "checkpoint_ns": row.namespace,
                                                "checkpoint_id": row.parent_id}}
                metadata: Any = dict(row.metadata or {})
                checkpointer.put(config, checkpoint, metadata,
                                 dict(checkpoint.get("channel_versions") or {}))
                counts["checkpoints"] += 1
                bar.advance(task)
            grouped: dict[tuple[str, str], list[PendingWrite]] = defaultdict(list)
            for write in writes_of(thread_id):
                if write.type == "pickle":
                    raise MigrationError(f"thread {thread_id!r}, checkpoint "
                                         f"{write.checkpoint_id!r}: a pending write is "
                                         "pickled; savegame never unpickles stored data")
                grouped[(write.namespace, write.checkpoint_id)].append(PendingWrite(
                    write.task_id, write.idx, write.channel, (write.type, bytes(write.value)),
                    write.task_path))
            for (namespace, checkpoint_id), items in grouped.items():
                dst.put_writes(thread_id, checkpoint_id, items, namespace=namespace)
                counts["writes"] += len(items)
            counts["threads"] += 1
    return counts


def _mongo_client(uri: str) -> Any:
    from .._deps import require

    pymongo = require("pymongo", "mongodb")
    return pymongo.MongoClient(uri)


# -- Burr --------------------------------------------------------------------------------
@dataclass
class _BurrRow:
    partition_key: str | None
    app_id: str
    sequence_id: int
    position: str
    state: str
    status: str


def _migrate_burr(dst: BaseSaver, rows: Iterable[_BurrRow], out: Out, total: int,
                  thread_prefix: str) -> dict[str, int]:
    from burr.core.state import State

    from savegame.adapters.burr import Persister

    persister = Persister(dst, thread_prefix=thread_prefix)
    apps: dict[tuple[str | None, str], list[_BurrRow]] = defaultdict(list)
    for row in rows:
        apps[(row.partition_key, row.app_id)].append(row)
    counts = {"apps": 0, "rows": 0}
    with out.progress() as bar:
        task = bar.add_task("migrating", total=total)
        for (partition_key, app_id), items in sorted(apps.items(), key=lambda kv: (
                kv[0][0] or "", kv[0][1])):
            for row in sorted(items, key=lambda r: (r.sequence_id, r.status != "failed")):
                try:
                    state = json.loads(row.state)
                except ValueError as exc:
                    raise MigrationError(f"partition {partition_key!r}, app {app_id!r}, "
                                         f"sequence id {row.sequence_id}: state is not "
                                         f"JSON ({exc})") from None
                # the stored JSON is already Burr's serialized form: saved as it is
                persister.save(partition_key, app_id, row.sequence_id, row.position,
                               State(state), row.status)  # type: ignore[arg-type]
                counts["rows"] += 1
                bar.advance(task)
            counts["apps"] += 1
    return counts


# -- commands ----------------------------------------------------------------------------
@click.group("migrate")
def migrate() -> None:
    """Bring LangGraph or Burr checkpoints from their own savers into a savegame store.

    The source is read, never changed; re-running is safe (what is there is skipped)."""


def _report(out: Out, as_json: bool, source: str, counts: dict[str, int]) -> None:
    if as_json:
        out.json({"source": source, **counts})
    else:
        parts = ", ".join(f"{value} {key}" for key, value in counts.items())
        out.data.print(f"migrated {parts} from {source}", markup=False, highlight=False)


_json = click.option("--json", "as_json", is_flag=True, help="JSON output")
_allow = click.option("--allow", multiple=True, metavar="MODULE:NAME",
                      help="also decode this type in checkpoints (repeatable); LangGraph's "
                           "safe built-in types are always allowed")


@migrate.command("langgraph-mongodb")
@click.argument("mongo_uri")
@click.argument("dst_uri")
@click.option("--db", default="checkpointing_db", show_default=True,
              help="database of MongoDBSaver")
@click.option("--checkpoints", "checkpoints_name", default="checkpoints", show_default=True)
@click.option("--writes", "writes_name", default="checkpoint_writes", show_default=True)
@_allow
@_json
def langgraph_mongodb(mongo_uri: str, dst_uri: str, db: str, checkpoints_name: str,
                      writes_name: str, allow: tuple[str, ...], as_json: bool) -> None:
    """From langgraph-checkpoint-mongodb's MongoDBSaver collections."""
    from langgraph.checkpoint.mongodb.utils import loads_metadata

    out = Out()
    _warn_ephemeral(out, dst_uri)
    reader = _LangGraphReader(allow)
    client = _mongo_client(mongo_uri)
    try:
        database = client[db]
        source = database[checkpoints_name]
        writes = database[writes_name]
        total = source.count_documents({})

        def rows() -> Iterator[_LGCheckpoint]:
            for doc in source.find({}, sort=[("thread_id", 1), ("checkpoint_ns", 1),
                                             ("checkpoint_id", 1)]):
                yield _LGCheckpoint(
                    doc["thread_id"], doc.get("checkpoint_ns", ""), doc["checkpoint_id"],
                    doc.get("parent_checkpoint_id"), doc["type"], bytes(doc["checkpoint"]),
                    loads_metadata(reader.serde, doc.get("metadata") or {}))

        def writes_of(thread_id: str) -> Iterator[_LGWrite]:
            for doc in writes.find({"thread_id": thread_id}):
                yield _LGWrite(thread_id, doc.get("checkpoint_ns", ""), doc["checkpoint_id"],
                               doc["task_id"], doc.get("task_path", ""), int(doc["idx"]),
                               doc["channel"], doc["type"], bytes(doc["value"]))

        with open_saver(dst_uri) as dst:
            counts = _migrate_langgraph(dst, rows(), writes_of, reader, out, total)
    finally:
        client.close()
    _report(out, as_json, f"{db}.{checkpoints_name}", counts)


@migrate.command("langgraph-sqlite")
@click.argument("sqlite_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst_uri")
@_allow
@_json
def langgraph_sqlite(sqlite_path: str, dst_uri: str, allow: tuple[str, ...],
                     as_json: bool) -> None:
    """From langgraph-checkpoint-sqlite's SqliteSaver database file."""
    out = Out()
    _warn_ephemeral(out, dst_uri)
    reader = _LangGraphReader(allow)
    connection = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(writes)")}
        path_column = "task_path" if "task_path" in columns else "''"
        total = connection.execute("SELECT count(*) FROM checkpoints").fetchone()[0]

        def rows() -> Iterator[_LGCheckpoint]:
            for (thread_id, ns, cid, parent, kind, blob, meta) in connection.execute(
                    "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
                    "type, checkpoint, metadata FROM checkpoints "
                    "ORDER BY thread_id, checkpoint_ns, checkpoint_id"):
                yield _LGCheckpoint(str(thread_id), ns, cid, parent, kind, bytes(blob),
                                    json.loads(meta) if meta is not None else {})

        def writes_of(thread_id: str) -> Iterator[_LGWrite]:
            for (ns, cid, task, path, idx, channel, kind, value) in connection.execute(
                    f"SELECT checkpoint_ns, checkpoint_id, task_id, {path_column}, idx, "
                    "channel, type, value FROM writes WHERE thread_id = ?", (thread_id,)):
                yield _LGWrite(thread_id, ns, cid, task, path, int(idx), channel, kind,
                               bytes(value))

        with open_saver(dst_uri) as dst:
            counts = _migrate_langgraph(dst, rows(), writes_of, reader, out, total)
    finally:
        connection.close()
    _report(out, as_json, sqlite_path, counts)


_prefix = click.option("--thread-prefix", default="burr:", show_default=True,
                       help="thread id prefix of the savegame Burr persister")


@migrate.command("burr-mongodb")
@click.argument("mongo_uri")
@click.argument("dst_uri")
@click.option("--db", default="mydatabase", show_default=True,
              help="database of Burr's MongoDBBasePersister")
@click.option("--collection", default="mystates", show_default=True)
@_prefix
@_json
def burr_mongodb(mongo_uri: str, dst_uri: str, db: str, collection: str,
                 thread_prefix: str, as_json: bool) -> None:
    """From Burr's MongoDBBasePersister collection."""
    out = Out()
    _warn_ephemeral(out, dst_uri)
    client = _mongo_client(mongo_uri)
    try:
        source = client[db][collection]
        total = source.count_documents({})
        rows = (_BurrRow(doc.get("partition_key"), doc["app_id"], int(doc["sequence_id"]),
                         doc["position"], doc["state"], doc["status"])
                for doc in source.find({}))
        with open_saver(dst_uri) as dst:
            counts = _migrate_burr(dst, rows, out, total, thread_prefix)
    finally:
        client.close()
    _report(out, as_json, f"{db}.{collection}", counts)


@migrate.command("burr-sqlite")
@click.argument("sqlite_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst_uri")
@click.option("--table", default="burr_state", show_default=True)
@_prefix
@_json
def burr_sqlite(sqlite_path: str, dst_uri: str, table: str, thread_prefix: str,
                as_json: bool) -> None:
    """From Burr's SQLitePersister database file."""
    out = Out()
    _warn_ephemeral(out, dst_uri)
    if not table.replace("_", "").isalnum():
        raise click.BadParameter(f"{table!r} is not a table name", param_hint="--table")
    connection = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        total = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        rows = (_BurrRow(pk, app, int(seq), position, state, status)
                for (pk, app, seq, position, state, status) in connection.execute(
                    f"SELECT partition_key, app_id, sequence_id, position, state, status "
                    f"FROM {table}"))
        with open_saver(dst_uri) as dst:
            counts = _migrate_burr(dst, rows, out, total, thread_prefix)
    finally:
        connection.close()
    _report(out, as_json, sqlite_path, counts)
