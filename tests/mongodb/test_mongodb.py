"""MongoDB-specific behaviour: layout, command counts, big states, retention, bad input.

Runs against nx-27017 (the real PyMongo driver over the wire protocol) unless noted; the
conformance suite (tests/conformance) covers the shared contract on every tier.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import mongo_harness
import pymongo
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import monitoring

from savegame.savers import (
    AsyncMongoSaver,
    Checkpoint,
    ConflictError,
    CorruptCheckpointError,
    KeyframePolicy,
    MongoSaver,
    codec,
)
from savegame.savers.base import StoredWrite
from savegame.savers.checkpoint import PendingWrite, id_time
from savegame.savers.mongodb import UnsupportedLayoutError, _shared, _unasync
from savegame.savers.serde import Serializer

HANDSHAKE = {"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo"}


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in HANDSHAKE:
            self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[str]:
        out, self.names = self.names, []
        return out


@pytest.fixture
def counted(nx_uri: str) -> Iterator[tuple[MongoSaver, Commands]]:
    listener = Commands()
    client: Any = pymongo.MongoClient(nx_uri, event_listeners=[listener])
    saver = MongoSaver(client, database=mongo_harness.DATABASE,
                       prefix=mongo_harness.fresh_prefix())
    saver.setup()
    listener.take()
    yield saver, listener
    mongo_harness.drop(saver)
    client.close()


@pytest.fixture
def nx_saver(nx_uri: str) -> Iterator[MongoSaver]:
    yield from mongo_harness.server_sync_saver(nx_uri)


# -- packaging -------------------------------------------------------------------------
def test_sync_twin_is_generated_and_current() -> None:
    assert _unasync.main(["--check"]) == 0, "run: python -m savegame.savers.mongodb._unasync"
    text = _unasync.TARGET.read_text()
    assert text.startswith("# GENERATED") and "do not edit" in text.splitlines()[0]
    assert "async def" not in text and "await " not in text


def test_import_is_lazy_and_missing_pymongo_is_explained() -> None:
    code = (
        "import sys\n"
        "import savegame.savers as s\n"
        "assert 'pymongo' not in sys.modules, 'import savegame.savers imported pymongo'\n"
        "sys.modules['pymongo'] = None\n"
        "try:\n"
        "    s.MongoSaver\n"
        "except s.MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ImportError) and 'savegame[mongodb]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no MissingDependencyError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_io_in_init() -> None:
    client = pymongo.MongoClient("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1",
                                 connect=False)
    saver = MongoSaver(client, ttl=60, keep_last=3)
    assert saver._ready is False
    client.close()


# -- layout ----------------------------------------------------------------------------
def test_document_layout(nx_saver: MongoSaver, nx_uri: str) -> None:
    text = " ".join(f"word{i}" for i in range(400))  # (a second state is a delta of this)
    first = nx_saver.put(Checkpoint("t", {"n": 1, "text": text}, node_id="a", next_node_id="b",
                                    metadata={"user": "ada", "tags": {"x": 1}}))
    raw = mongo_harness.sync_client(nx_uri)[mongo_harness.DATABASE]
    doc = mongo_harness.doc_of(raw[nx_saver.names.checkpoints], first)
    assert doc is not None
    assert doc["meta"] == {"user": "ada", "tags": {"x": 1}}
    assert isinstance(doc["rec"], bytes) and doc["rec"][:2] == b"SG"
    assert "kf" not in doc and "base" not in doc  # a keyframe: its own chain's label
    assert doc["seq"] == 1 and "s" not in doc and "p" not in doc  # step 0
    assert "d" not in doc and codec.stated_depth(doc["rec"]) == 1  # the record says it
    # no time where the id states it (this process's id clock may run ahead of the wall
    # clock after a test put an id from the future: then the time is stored)
    assert ("ts" in doc) is (id_time(first.id or "") != first.created_at)
    assert doc["_id"] == _shared.record_id("t", "", first.id, 5) and len(doc["_id"]) == 16
    assert set(doc) - {"ts"} == {"_id", "thread_id", "ns", "cid", "seq", "node", "next", "meta",
                                 "rec"}
    second = nx_saver.put(Checkpoint("t", {"n": 2, "text": text}))
    doc = mongo_harness.doc_of(raw[nx_saver.names.checkpoints], second)
    assert doc["seq"] == 2 and "s" not in doc  # step 1
    assert doc["base"] == mongo_harness.stored_id(first.id) and "p" not in doc  # its base
    assert len(doc["cid"]) == len(doc["base"]) == 22  # UUIDs packed, in their order
    nx_saver.policy = KeyframePolicy(max_chain=1)  # the fork below: a master with a parent
    fork = nx_saver.put(Checkpoint("t", {"n": 3, "text": text}, parent_id=first.id))
    doc = mongo_harness.doc_of(raw[nx_saver.names.checkpoints], fork)
    assert bytes(doc["p"]) == uuid.UUID(first.id).bytes  # 16 bytes, not 36 characters
    assert "base" not in doc and doc["s"] == 1  # (a fork: its step is not seq - 1)
    keys = {tuple(index["key"]) for index in raw[nx_saver.names.checkpoints].list_indexes()}
    assert {("thread_id", "ns", "cid"), ("thread_id", "ns", "kf")} <= keys
    # pending writes live in their checkpoint's document
    task = str(uuid.uuid4())
    nx_saver.put_writes("t", second.id, [
        PendingWrite(task, 0, "messages", "v", task_path="~__pregel_pull, chat"),
        PendingWrite("not-a-uuid", 1, "c", "w"),
        PendingWrite("tâche", -3, "__interrupt__", "x", task_path="ü")])
    doc = mongo_harness.doc_of(raw[nx_saver.names.checkpoints], second)
    # one binary value each: index, task id (16 bytes for a UUID), channel and task path
    # (known names packed to a byte), then the record
    heads = [entry[:len(entry) - len(rec)] for entry, rec in zip(
        doc["w"], (w.record for w in _shared.writes_of(doc, 5)), strict=True)]
    assert heads == [b"\x00\x00" + uuid.UUID(task).bytes + b"\x01\x83\x05\x80chat",
                     b"\x02\x0bnot-a-uuid\x01c\x00",
                     b"\x05\x07t\xc3\xa2che\x01\x86\x02\xc3\xbc"]
    assert raw[nx_saver.names.writes].count_documents({}) == 0
    nx_saver._cache.clear()
    got = nx_saver.get_writes("t", [second.id])[second.id]
    assert sorted((w.task_id, w.index, w.channel, w.value, w.task_path) for w in got) == [
        (task, 0, "messages", "v", "~__pregel_pull, chat"),
        ("not-a-uuid", 1, "c", "w", ""), ("tâche", -3, "__interrupt__", "x", "ü")]


def test_every_query_names_thread_id(nx_uri: str) -> None:
    """Every command a saver's operations send filters on thread_id (the shard key)."""
    seen: list[dict[str, Any]] = []

    class Filters(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            cmd = event.command
            for key in ("filter", "q", "query"):
                if key in cmd:
                    seen.append(cmd[key])
            for statement in cmd.get("deletes", []) + cmd.get("updates", []):
                seen.append(statement["q"])
            for stage in cmd.get("pipeline", []):  # aggregates: $match and every lookup
                if "$match" in stage:
                    seen.append(stage["$match"])
                if "$graphLookup" in stage:
                    seen.append(stage["$graphLookup"]["restrictSearchWithMatch"])

        def succeeded(self, event: Any) -> None:
            pass

        def failed(self, event: Any) -> None:
            pass

    client: Any = pymongo.MongoClient(nx_uri, event_listeners=[Filters()])
    saver = MongoSaver(client, database=mongo_harness.DATABASE,
                       prefix=mongo_harness.fresh_prefix(), ttl=3600, keep_last=2,
                       policy=KeyframePolicy(max_chain=2))
    saver.setup()
    seen.clear()
    try:
        puts = [saver.put(Checkpoint("t", {"n": i}, metadata={"i": i})) for i in range(6)]
        saver._cache.clear()
        saver.get("t")
        list(saver.list("t", metadata={"i": 5}, limit=1))
        write = PendingWrite("task", 0, "messages", {"v": 1})
        saver.put_writes("t", puts[-1].id, [write])
        saver.put_writes("t", puts[-1].id, [write], replace=True)
        assert saver.get_writes("t", [puts[-1].id])[puts[-1].id][0].value == {"v": 1}
        assert saver.list_threads(prefix="t") == ["t"]
        assert saver.list_namespaces("t") == [""]
        saver.copy_thread("t", "t2")
        saver.delete_checkpoints("t", [puts[-2].id])
        saver._cache.clear()
        assert saver.get("t", puts[-1].id) is not None
        saver.release("t")
        saver.versions("t")
        saver.get_version("t", 1)
        saver.delete_thread("t")
        assert seen and all("thread_id" in query for query in seen), seen
        assert saver._chain_stage is True  # the cold get above was one aggregate
    finally:
        mongo_harness.drop(saver)
        client.close()


def test_sync_and_async_share_the_layout(nx_uri: str) -> None:
    prefix = mongo_harness.fresh_prefix()
    sync = MongoSaver(mongo_harness.sync_client(nx_uri), database=mongo_harness.DATABASE,
                      prefix=prefix)
    first = sync.put(Checkpoint("t", {"by": "sync"}, metadata={"k": 1}))

    async def main() -> None:
        async with AsyncMongoSaver.from_uri(nx_uri, database=mongo_harness.DATABASE,
                                            prefix=prefix) as saver:
            got = await saver.aget("t")
            assert got is not None and got.state == {"by": "sync"} and got.id == first.id
            await saver.aput(Checkpoint("t", {"by": "async"}))
        assert saver.client is not None  # closed by the context manager

    asyncio.run(main())
    sync._cache.clear()
    latest = sync.get("t")
    assert latest is not None and latest.state == {"by": "async"}
    assert latest.parent_id == first.id
    mongo_harness.drop(sync)


def test_from_uri_owns_and_closes_its_client(nx_uri: str) -> None:
    with MongoSaver.from_uri(nx_uri, prefix=mongo_harness.fresh_prefix()) as saver:
        saver.put(Checkpoint("t", {"n": 1}))
        assert saver.get("t") is not None
        mongo_harness.drop(saver)
    with pytest.raises(pymongo.errors.InvalidOperation):
        saver.client.admin.command("ping")


# -- command counts ----------------------------------------------------------------------
def test_command_counts(counted: tuple[MongoSaver, Commands]) -> None:
    saver, commands = counted
    saver.policy = KeyframePolicy(reverse=False)  # master events: the test below
    first = saver.put(Checkpoint("t", {"n": 0}))
    assert commands.take() == ["find", "insert"]  # latest (none yet), then the insert
    puts = [first]
    for i in range(1, 40):
        puts.append(saver.put(Checkpoint("t", {"n": i, "log": list(range(i))})))
    commands.take()
    saver.put(Checkpoint("t", {"n": 40}, parent_id=puts[-1].id))
    assert commands.take() == ["insert"]  # a parent this saver just wrote: no read
    saver._cache.clear()
    saver.put(Checkpoint("t", {"n": 41, "log": list(range(41))}, parent_id=puts[-1].id))
    assert commands.take() == ["find", "insert"]  # a parent it does not hold: read it
    for i in (42, 43):
        head = saver.put(Checkpoint("t", {"n": i, "log": list(range(i))}))
        assert commands.take() == ["find", "insert"]  # the latest, cached: a delta
    stored = saver._read("t", "", head.id)
    assert stored is not None and stored.depth > 2  # the decode path spans three records
    commands.take()

    assert saver.get("t") is not None  # warm: the saver holds the decoded parent
    assert commands.take() == ["find"]
    saver._cache.clear()
    assert saver.get("t") is not None  # cold: the head and its decode path, one aggregate
    assert commands.take() == ["aggregate"]
    assert saver._chain_stage is True  # nx-27017 runs $graphLookup
    saver._cache.clear()
    saver._chain_stage = False  # a server without the stage: the head, then its chain
    assert saver.get("t") is not None
    assert commands.take() == ["find", "find"]
    saver._chain_stage = None
    delta = next(p for p in reversed(puts) if saver._read("t", "", p.id).depth > 1)
    saver._cache.clear()
    commands.take()
    assert saver.get("t", delta.id) is not None
    assert commands.take() == ["find", "find"]  # a delta: the head, its chain in one query

    listed = list(saver.list("t"))
    assert len(listed) == 44
    names = commands.take()
    assert names[0] == "find" and set(names[1:]) <= {"getMore", "find"}
    assert names.count("find") <= 2  # the listing + at most one chain query

    listed = list(saver.list("t", limit=5, metadata={}))
    assert len(listed) == 5  # the page, and the chain when it starts before the page
    assert commands.take() in (["find"], ["find", "find"])


def test_put_loop_with_explicit_parents_is_one_insert(
    counted: tuple[MongoSaver, Commands],
) -> None:
    """A LangGraph-style loop (each put names the previous one as parent): the first put
    of a process reads its parent once, every later put is one insert, keyframes too."""
    saver, commands = counted
    saver.policy = KeyframePolicy(max_chain=4, reverse=False)
    previous = saver.put(Checkpoint("t", {"n": 0, "log": []}))
    for i in range(1, 5):
        previous = saver.put(Checkpoint("t", {"n": i, "log": list(range(i))},
                                        parent_id=previous.id))
    commands.take()
    # a new process: nothing cached, the parent comes from an earlier run
    fresh = MongoSaver(saver.client, database=mongo_harness.DATABASE,
                       prefix=saver.names.checkpoints.removesuffix("checkpoints"),
                       policy=KeyframePolicy(max_chain=4, reverse=False))
    fresh.setup()
    commands.take()
    previous = fresh.put(Checkpoint("t", {"n": 5, "log": list(range(5))},
                                    parent_id=previous.id))
    assert commands.take() == ["find", "insert"]  # cold cache: read the parent once
    for i in range(6, 26):  # deltas and (every 4th) keyframes alike
        previous = fresh.put(Checkpoint("t", {"n": i, "log": list(range(i))},
                                        parent_id=previous.id))
        assert commands.take() == ["insert"], i
        assert previous.step == i
    fresh._cache.clear()
    got = fresh.get("t")
    assert got is not None and got.id == previous.id and got.state["log"] == list(range(25))
    assert commands.take() == ["aggregate"]


def test_a_new_master_rewrites_older_ones_in_two_commands(
    counted: tuple[MongoSaver, Commands],
) -> None:
    """A LangGraph-style loop with masters every 3 puts: a delta is one insert; a master
    is its insert and one bulk update rewriting the older masters it re-points as reverse
    records (no find: the saver keeps the states of the masters it rewrote). Every
    checkpoint still reads back exactly, and a cold read walks few records."""
    saver, commands = counted
    saver.policy = KeyframePolicy(max_chain=3)
    previous = saver.put(Checkpoint("t", {"n": 0, "log": list(range(600))}))
    puts = [previous]
    commands.take()
    seen = set()
    for i in range(1, 60):
        previous = saver.put(Checkpoint("t", {"n": i, "log": list(range(600 + i))},
                                        parent_id=previous.id))
        puts.append(previous)
        names = commands.take()
        seen.add(tuple(names))
        assert names in (["insert"], ["insert", "update"]), i
    assert seen == {("insert",), ("insert", "update")}
    docs = list(saver._checkpoints.find({"thread_id": "t"}))
    masters = [d for d in docs if codec.stated_depth(d["rec"]) == 1]
    assert sum(1 for d in masters if "base" not in d) == 1  # only the newest is whole
    saver._cache.clear()
    for i, put in enumerate(puts):
        assert saver.get("t", put.id).state["log"] == list(range(600 + i))


@pytest.mark.parametrize("tier", ["mongomock", "mongomock_motor"])
def test_cold_latest_get_fetches_the_decode_path_on_mongomock(tier: str) -> None:
    """mongomock runs $graphLookup too: a cold latest get reads head and path at once."""
    policy = KeyframePolicy(max_chain=8)  # the six checkpoints below: one chain
    if tier == "mongomock":
        saver: Any = mongo_harness.mongomock_saver(prefix=mongo_harness.fresh_prefix(),
                                                   policy=policy)

        def run(value: Any) -> Any:
            return value
    else:
        saver = mongo_harness.mongomock_motor_saver(prefix=mongo_harness.fresh_prefix(),
                                                    policy=policy)
        loop = asyncio.new_event_loop()
        run = loop.run_until_complete
    calls: list[str] = []
    read_latest, read_chains = saver._read_latest, saver._read_chains
    saver._read_latest = lambda *a: (calls.append("latest"), read_latest(*a))[1]
    saver._read_chains = lambda *a: (calls.append("chains"), read_chains(*a))[1]
    put = saver.aput if tier == "mongomock_motor" else saver.put
    get = saver.aget if tier == "mongomock_motor" else saver.get
    puts = [run(put(Checkpoint("t", {"n": i, "log": list(range(200 + i))})))
            for i in range(6)]
    run(put(Checkpoint("u", {"other": True})))  # another thread's records stay out
    run(put(Checkpoint("t", {"ns": True}, namespace="sub")))
    calls.clear()
    saver._cache.clear()
    got = run(get("t"))
    assert got is not None and got.id == puts[-1].id and got.state == puts[-1].state
    assert calls == [] and saver._chain_stage is True
    found = run(saver._read_latest_chain("t", ""))
    assert found[0].id == puts[-1].id and len(found) > 2  # the head, then its deltas
    assert {(item.thread_id, item.namespace) for item in found} == {("t", "")}
    assert run(saver._read_latest_chain("nobody", "")) is None
    if tier == "mongomock_motor":
        loop.close()


def test_a_server_without_the_stage_falls_back_once(
    counted: tuple[MongoSaver, Commands],
) -> None:
    saver, commands = counted
    for i in range(4):
        head = saver.put(Checkpoint("t", {"n": i, "log": list(range(200 + i))}))
    stored = saver._read("t", "", head.id)
    assert stored is not None and stored.base_id is not None  # a delta: it needs its chain
    failures = []
    aggregate = saver._checkpoints.aggregate

    def unsupported(*args: Any, **kwargs: Any) -> Any:
        failures.append(args)
        raise pymongo.errors.OperationFailure("Unrecognized pipeline stage name: "
                                              "'$graphLookup'", code=40324)

    saver._checkpoints = type("NoGraphLookup", (), {
        "aggregate": staticmethod(unsupported),
        "__getattr__": lambda self, name: getattr(aggregate.__self__, name),
    })()
    for _ in range(3):
        saver._cache.clear()
        commands.take()
        got = saver.get("t")
        assert got is not None and got.state["n"] == 3
        assert commands.take() == ["find", "find"]  # the head, then its chain
    assert len(failures) == 1 and saver._chain_stage is False  # detected once


def test_bad_thread_id_never_reaches_the_server(counted: tuple[MongoSaver, Commands]) -> None:
    saver, commands = counted
    for bad in ({"$ne": ""}, {"$gt": ""}, ["t"], 1, None):
        with pytest.raises(TypeError):
            saver.get(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            list(saver.list(bad))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            saver.put(Checkpoint(bad, {}))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            saver.delete_thread(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            saver.get("t", namespace=bad)  # type: ignore[arg-type]
    assert commands.take() == []


# -- big states ----------------------------------------------------------------------
def test_fifty_megabyte_state_round_trips(nx_saver: MongoSaver, nx_uri: str) -> None:
    blob = os.urandom(50 << 20)  # incompressible: the record is ~50 MB too
    start = time.perf_counter()
    put = nx_saver.put(Checkpoint("big", {"blob": blob, "n": 1}))
    nx_saver._cache.clear()
    got = nx_saver.get("big")
    elapsed = time.perf_counter() - start
    assert got is not None and got.id == put.id and got.state["blob"] == blob
    raw = mongo_harness.sync_client(nx_uri)[mongo_harness.DATABASE]
    head = raw[nx_saver.names.checkpoints].find_one({"thread_id": "big"}, {"rec": 0})
    assert head is not None and "rec" not in head and head["chunks"]["n"] == 4
    chunks = raw[nx_saver.names.chunks].count_documents({"thread_id": "big"})
    assert chunks == 4
    print(f"\n50 MB state: put + cold get through nx-27017 in {elapsed:.1f} s")


def _chunked(**options: Any) -> MongoSaver:
    return mongo_harness.mongomock_saver(chunk_bytes=1000, prefix="c_", **options)


def test_chunks_are_written_before_the_head() -> None:
    saver = _chunked()
    order: list[str] = []
    for name in ("_chunks", "_checkpoints"):
        collection = getattr(saver, name)

        class Spy:
            def __init__(self, inner: Any, label: str) -> None:
                self.inner, self.label = inner, label

            def __getattr__(self, attr: str) -> Any:
                if attr.startswith("insert"):
                    order.append(self.label)
                return getattr(self.inner, attr)

        setattr(saver, name, Spy(collection, name))
    saver.put(Checkpoint("t", {"blob": os.urandom(5000)}))
    assert order == ["_chunks", "_checkpoints"]


def test_missing_chunk_is_corruption_not_partial_state() -> None:
    saver = _chunked()
    put = saver.put(Checkpoint("t", {"blob": os.urandom(5000)}))
    saver._chunks.delete_one({"thread_id": "t", "i": 2})
    saver._cache.clear()
    with pytest.raises(CorruptCheckpointError, match="chunks"):
        saver.get("t", put.id)


def test_orphan_chunks_are_collected() -> None:
    saver = _chunked()
    kept = saver.put(Checkpoint("t", {"blob": os.urandom(5000)}))

    def fail(doc: Any) -> None:
        raise pymongo.errors.OperationFailure("head insert failed")

    head = saver._checkpoints
    saver._checkpoints = type("Failing", (), {
        "insert_one": staticmethod(fail),
        "__getattr__": lambda self, name: getattr(head, name),
    })()
    with pytest.raises(pymongo.errors.OperationFailure):
        saver.put(Checkpoint("t", {"blob": os.urandom(5000)}))
    saver._checkpoints = head
    kept_chunks = saver._chunks.count_documents({"token": {"$ne": None}}) // 2
    assert saver._chunks.count_documents({}) == 2 * kept_chunks
    assert saver.collect_orphans(older_than=3600) == 0  # too young: maybe a put in flight
    time.sleep(0.01)
    assert saver.collect_orphans(older_than=0.001) == kept_chunks
    saver._cache.clear()
    got = saver.get("t", kept.id)
    assert got is not None and got.state == kept.state


# -- idempotence -----------------------------------------------------------------------
def test_insert_returns_the_existing_checkpoint_on_duplicate(nx_saver: MongoSaver) -> None:
    put = nx_saver.put(Checkpoint("t", {"n": 1}))
    stored = nx_saver._read("t", "", put.id)
    assert stored is not None
    assert nx_saver._insert(stored) == stored


# -- pending writes in their checkpoint's document (layout 3) ---------------------------
def test_ids_are_stored_as_16_bytes_only_when_they_read_back_the_same() -> None:
    canonical = str(uuid.uuid4())
    assert isinstance(_shared.pack_id(canonical), bson.Binary)
    for text in (canonical.upper(), canonical.replace("-", ""), "x" * 36, "",
                 "{" + canonical[1:-1] + "}", canonical[:8] + "_" + canonical[9:]):
        assert _shared.pack_id(text) == text  # kept as the text it is
    packed = _shared.pack_id(canonical)
    for stored in (packed, bytes(packed), uuid.UUID(canonical)):  # as drivers hand it back
        assert _shared.unpack_id(stored, "p") == canonical
    with pytest.raises(TypeError, match="'p'"):
        _shared.unpack_id(b"short", "p")


def test_a_keyframe_carries_no_label_of_its_own_chain(nx_saver: MongoSaver) -> None:
    """Layout 3 leaves ``kf`` out where it would name the document itself: chain reads,
    re-encoding after a deletion and retention find the group by ``cid`` then."""
    nx_saver.policy = KeyframePolicy(max_chain=3)
    log = [f"entry {i} " * 8 for i in range(40)]
    puts = [nx_saver.put(Checkpoint("t", {"log": log[:10 + i]})) for i in range(8)]

    def docs() -> dict[str, Any]:
        return mongo_harness.by_id(nx_saver._checkpoints.find({"thread_id": "t"}))

    stored = docs()
    assert "kf" not in stored[puts[0].id]
    assert stored[puts[1].id]["kf"] == mongo_harness.stored_id(puts[0].id)
    assert all(d.get("kf") != d["cid"] for d in stored.values())
    nx_saver._cache.clear()
    for i, put in enumerate(puts):  # cold reads fetch each chain group by label or cid
        assert nx_saver.get("t", put.id).state == {"log": log[:10 + i]}
    nx_saver.delete_checkpoints("t", [puts[3].id, puts[6].id])  # keyframes: re-encoded
    stored = docs()
    assert all(d.get("kf") != d["cid"] for d in stored.values())
    nx_saver._cache.clear()
    for i, put in enumerate(puts):
        if i not in (3, 6):
            assert nx_saver.get("t", put.id).state == {"log": log[:10 + i]}


def test_a_step_its_seq_says_is_not_stored(nx_saver: MongoSaver) -> None:
    """A linear thread's step is its seq - 1: layout 3 stores it only where a fork (or a
    copy between threads) makes them differ."""
    first = nx_saver.put(Checkpoint("t", {"n": 1}))
    second = nx_saver.put(Checkpoint("t", {"n": 2}, parent_id=first.id))
    fork = nx_saver.put(Checkpoint("t", {"n": 3}, parent_id=first.id))  # step 1, seq 3
    docs = mongo_harness.by_id(nx_saver._checkpoints.find({"thread_id": "t"}))
    assert ["s" in docs[c.id] for c in (first, second, fork)] == [False, False, True]
    assert docs[fork.id]["s"] == 1 and docs[fork.id]["seq"] == 3
    nx_saver._cache.clear()
    assert [(c.id, c.step) for c in nx_saver.list("t")] == [
        (fork.id, 1), (second.id, 1), (first.id, 0)]
    assert nx_saver.get("t", second.id).step == 1
    nx_saver._checkpoints.update_one({"cid": mongo_harness.stored_id(second.id)},
                                     {"$unset": {"seq": ""}})
    nx_saver._cache.clear()
    with pytest.raises(CorruptCheckpointError, match="'seq'"):
        nx_saver.get("t", second.id)


def test_a_delta_against_its_parent_spells_the_parent_as_its_base(nx_saver: MongoSaver) -> None:
    log = [f"entry {i} " * 8 for i in range(60)]
    first = nx_saver.put(Checkpoint("t", {"log": log}))
    second = nx_saver.put(Checkpoint("t", {"log": [*log, "more"]}, parent_id=first.id))
    doc = mongo_harness.doc_of(nx_saver._checkpoints, second)
    assert mongo_harness.read_id(doc["base"]) == first.id and "p" not in doc  # (3: true)
    nx_saver._cache.clear()
    again = nx_saver.get("t", second.id)
    assert again is not None and again.parent_id == first.id
    assert [c.parent_id for c in nx_saver.list("t")] == [first.id, None]
    # a keyframe rewritten as a reverse record against a newer one keeps its parent
    nx_saver.policy = KeyframePolicy(max_chain=2)
    last = second
    for i in range(6):
        last = nx_saver.put(Checkpoint("t", {"log": [*log, "more", *["x"] * i]},
                                       parent_id=last.id))
    nx_saver._cache.clear()
    listed = list(nx_saver.list("t"))
    assert [c.parent_id for c in listed[:-1]] == [c.id for c in listed[1:]]
    assert any(d.get("base") and d.get("p") not in (None, True) for d in
               nx_saver._checkpoints.find({"thread_id": "t"}))  # the parent spelled out


def test_writes_put_before_their_checkpoint_move_into_it(nx_saver: MongoSaver) -> None:
    """LangGraph may hand a checkpoint's writes to one thread before its put, queued
    behind the previous put, reaches the saver: the writes wait in the writes collection
    and the put moves them into the checkpoint's document."""
    first = nx_saver.put(Checkpoint("t", {"n": 1}))
    later = str(uuid.uuid4())
    nx_saver.put_writes("t", later, [PendingWrite("task", 0, "c", "early")])
    assert nx_saver._writes.count_documents({}) == 1
    assert nx_saver.get_writes("t", [later])[later][0].value == "early"
    nx_saver.put(Checkpoint("t", {"n": 2}, id=later, parent_id=first.id))
    assert nx_saver._writes.count_documents({}) == 0
    nx_saver._cache.clear()
    found = nx_saver.get_with_writes("t")
    assert found is not None and found[0].id == later
    assert [w.value for w in found[1]] == ["early"]


def test_a_put_landing_while_its_writes_go_loose_still_gets_them(nx_saver: MongoSaver,
                                                                 nx_uri: str) -> None:
    """The put of another saver lands between this saver finding no checkpoint and
    storing the writes apart: the writes see it afterwards and move in themselves."""
    first = nx_saver.put(Checkpoint("t", {"n": 1}))
    later = str(uuid.uuid4())
    other = MongoSaver(mongo_harness.sync_client(nx_uri), database=mongo_harness.DATABASE,
                       prefix=nx_saver.names.checkpoints[: -len("checkpoints")])
    insert_loose = nx_saver._insert_loose

    def racing(writes: Any, replace: bool) -> None:
        other.put(Checkpoint("t", {"n": 2}, id=later, parent_id=first.id))
        insert_loose(writes, replace)

    nx_saver._insert_loose = racing  # type: ignore[method-assign]
    nx_saver.put_writes("t", later, [PendingWrite("task", 0, "c", "raced"),
                                     PendingWrite("task", 1, "c", "too")])
    assert nx_saver._writes.count_documents({}) == 0
    found = other.get_with_writes("t")
    assert found is not None and [w.value for w in found[1]] == ["raced", "too"]


def test_more_writes_for_a_checkpoint_merge_and_replace_as_in_their_collection(
    nx_saver: MongoSaver,
) -> None:
    put = nx_saver.put(Checkpoint("t", {"n": 1}))
    nx_saver.put_writes("t", put.id, [PendingWrite("a", 0, "c", 1)])
    nx_saver.put_writes("t", put.id, [PendingWrite("b", 0, "c", 2), PendingWrite("a", 0, "c", 9)])
    nx_saver.put_writes("t", put.id, [PendingWrite("b", 0, "c", 3)], replace=True)
    nx_saver.put_writes("t", put.id, [PendingWrite("b", 0, "c", 3)], replace=True)  # no-op
    doc = mongo_harness.doc_of(nx_saver._checkpoints, put)
    assert len(doc["w"]) == 2 and doc["wn"] == 3
    got = nx_saver.get_writes("t", [put.id])[put.id]
    assert [(w.task_id, w.value) for w in got] == [("a", 1), ("b", 3)]


# -- retention ---------------------------------------------------------------------------
def test_keep_last_deletes_whole_chains_only() -> None:
    saver = mongo_harness.mongomock_saver(keep_last=3, policy=KeyframePolicy(max_chain=4))
    puts = [saver.put(Checkpoint("t", {"n": i, "log": list(range(i))})) for i in range(30)]
    remaining = list(saver.list("t"))
    ids = [c.id for c in remaining]
    assert ids[:3] == [p.id for p in reversed(puts[-3:])]
    assert len(remaining) < 30
    saver._cache.clear()
    for c in remaining:  # every kept checkpoint still decodes: its chain is whole
        got = saver.get("t", c.id)
        assert got is not None and got.state == puts[c.step].state
    # a put prunes when it starts a chain: chains the deltas since then pushed out of the
    # newest 3 go on an explicit prune, whole, and the rest still decodes
    pruned = saver.prune("t")
    after = list(saver.list("t"))
    assert len(after) == len(remaining) - pruned and [c.id for c in after][:3] == ids[:3]
    saver._cache.clear()
    assert all(saver.get("t", c.id).state == puts[c.step].state  # type: ignore[union-attr]
               for c in after)
    assert saver.prune("t") == 0


def test_keep_last_deletes_the_pending_writes_of_what_it_deletes() -> None:
    saver = mongo_harness.mongomock_saver(keep_last=2, policy=KeyframePolicy(max_chain=2))
    puts = []
    for i in range(12):
        puts.append(saver.put(Checkpoint("t", {"n": i, "log": [f"entry {j} " * 10
                                                             for j in range(i)]})))
        saver.put_writes("t", puts[-1].id or "", [PendingWrite("task", 0, "c", f"entry {i}")])
    kept = {c.id for c in saver.list("t")}
    assert len(kept) < 12
    writes = set(mongo_harness.by_id(saver._checkpoints.find({"thread_id": "t",
                                                              "w": {"$exists": True}})))
    assert writes == kept  # in their checkpoints' documents: deleted with them
    assert saver._writes.count_documents({}) == 0
    got = saver.get_writes("t", sorted(i for i in kept if i))
    assert all(len(w) == 1 for w in got.values())


def test_ttl_keeps_keyframes_alive_as_long_as_their_deltas(nx_saver: MongoSaver) -> None:
    saver = MongoSaver(nx_saver.client, database=mongo_harness.DATABASE,
                       prefix=nx_saver.names.checkpoints.replace("checkpoints", ""), ttl=3600)
    puts = [saver.put(Checkpoint("t", {"n": i, "log": list(range(i))})) for i in range(12)]
    docs = mongo_harness.by_id(saver._checkpoints.find({"thread_id": "t"}))
    assert len(docs) == 12 and all("exp" in d for d in docs.values())
    for doc in docs.values():  # every record a doc needs expires no earlier than it
        base = doc.get("base")
        while base is not None:
            assert docs[mongo_harness.read_id(base)]["exp"] >= doc["exp"]
            base = docs[mongo_harness.read_id(base)].get("base")
    ttl = [i for i in saver._checkpoints.list_indexes() if tuple(i["key"]) == ("exp",)]
    assert ttl and ttl[0].get("expireAfterSeconds") == 0
    assert puts[-1].id in docs


def test_ttl_pending_writes_expire_no_earlier_than_their_checkpoint() -> None:
    """With a ttl, pending writes expire too (they used to stay for ever), and never
    before their checkpoint: when a chain is extended, its writes are extended with it.
    (On mongomock: nx-27017 turns a date set by an update into text.)"""
    saver = mongo_harness.mongomock_saver(ttl=3600, policy=KeyframePolicy(max_chain=8))
    saver._meta.insert_one({"_id": "layout", "version": 2})  # writes in their collection
    first = saver.put(Checkpoint("t", {"n": 0, "log": ["x" * 50]}))
    saver.put_writes("t", first.id or "", [PendingWrite("task", 0, "c", "value")])
    written = saver._writes.find_one({"thread_id": "t"})
    assert written is not None and "exp" in written
    time.sleep(0.01)
    saver._bumped.clear()  # as if 0.1 ttl had passed since the chain's last extension
    saver.put(Checkpoint("t", {"n": 1, "log": ["x" * 50] * 2}, parent_id=first.id))
    chain_expiry = saver._checkpoints.find_one({"thread_id": "t", "cid": first.id})["exp"]
    extended = saver._writes.find_one({"thread_id": "t"})
    assert extended is not None
    assert extended["exp"] == chain_expiry > written["exp"]  # moved with its chain
    ttl = [i for i in saver._writes.list_indexes() if tuple(i["key"]) == ("exp",)]
    assert ttl and ttl[0].get("expireAfterSeconds") == 0


def test_ttl_pending_writes_inside_their_checkpoint_expire_with_it() -> None:
    """Layouts 3 and 4 keep writes in their checkpoint's document: they expire with it.
    Writes put for a checkpoint that is not stored go to the writes collection, with an
    expiry."""
    saver = mongo_harness.mongomock_saver(ttl=3600)
    first = saver.put(Checkpoint("t", {"n": 0}))
    saver.put_writes("t", first.id or "", [PendingWrite("task", 0, "c", "value")])
    doc = mongo_harness.doc_of(saver._checkpoints, first)
    assert "exp" in doc and isinstance(doc["w"][0], bytes)  # one expiry: the document's
    saver.put_writes("t", "elsewhere", [PendingWrite("task", 0, "c", "loose")])
    loose = saver._writes.find_one({"thread_id": "t"})
    assert loose is not None and loose["cid"] == "elsewhere" and "exp" in loose
    got = saver.get_writes("t", [first.id or "", "elsewhere"])
    assert [[w.value for w in ws] for ws in got.values()] == [["value"], ["loose"]]


def test_ttl_expiry_on_mongomock() -> None:
    saver = mongo_harness.mongomock_saver(ttl=0.05)
    saver.put(Checkpoint("t", {"n": 1}))
    time.sleep(0.1)
    saver._cache.clear()
    assert saver.get("t") is None  # mongomock expires lazily, on access


# -- release -------------------------------------------------------------------------
class Crash(Exception):
    pass


def _failing(collection: Any, method: str) -> Any:
    """``collection`` whose ``method`` raises (a crash at that point of a release)."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise Crash(method)

    return type("Failing", (), {
        method: staticmethod(fail),
        "__getattr__": lambda self, name: getattr(collection, name),
    })()


@pytest.mark.parametrize("point", [
    ("_checkpoints", "delete_many"),  # copied into the archive, live documents kept
    ("_archive_coll", "insert_many"),  # version claimed, nothing copied
    ("_releases", "update_one"),  # copied and deleted, the marker still pending
])
@pytest.mark.parametrize("tier", ["nx", "mongomock"])
def test_interrupted_release_is_finished_under_the_same_version(
    tier: str, point: tuple[str, str], request: pytest.FixtureRequest,
) -> None:
    if tier == "nx":
        saver = next(mongo_harness.server_sync_saver(request.getfixturevalue("nx_uri")))
    else:
        saver = mongo_harness.mongomock_saver(prefix=mongo_harness.fresh_prefix())
    try:
        first = [saver.put(Checkpoint("t", {"run": 1, "n": i})) for i in range(3)]
        assert saver.release("t").version == 1
        run = [saver.put(Checkpoint("t", {"run": 2, "n": i, "log": list(range(50 + i))}))
               for i in range(5)]
        attr, method = point
        healthy = getattr(saver, attr)
        setattr(saver, attr, _failing(healthy, method))
        with pytest.raises(Crash):
            saver.release("t")
        setattr(saver, attr, healthy)
        assert saver.versions("t") == [1]  # the interrupted version is not visible yet
        assert saver.get_version("t", 2) is None

        release = saver.release("t")  # the retry finishes version 2
        assert release.version == 2
        assert [c.id for c in release.checkpoints] == [c.id for c in reversed(run)]
        assert [c.state for c in release.checkpoints] == [c.state for c in reversed(run)]
        assert saver.versions("t") == [1, 2]
        assert saver.list_threads() == [] and saver.get("t") is None
        archived = [mongo_harness.read_id(d["cid"])
                    for d in saver._archive_coll.find({"thread_id": "t"})]
        assert sorted(archived) == sorted(c.id for c in first + run)  # no duplicates
        again = saver.get_version("t", 2)
        assert again is not None and [c.id for c in again.checkpoints] == \
            [c.id for c in release.checkpoints]
        assert saver.release("t").version is None  # nothing left: no version 3

        nxt = saver.put(Checkpoint("t", {"run": 3}))
        third = saver.release("t")
        assert third.version == 3 and [c.id for c in third.checkpoints] == [nxt.id]
    finally:
        mongo_harness.drop(saver)


def test_concurrent_release_claims_join_one_version() -> None:
    """A release whose claim collides with another's pending claim finishes that version
    with it instead of archiving the same run again as the next one."""
    saver = mongo_harness.mongomock_saver(prefix=mongo_harness.fresh_prefix())
    run = [saver.put(Checkpoint("t", {"n": i})) for i in range(3)]
    saver._releases.insert_one(_shared.release_doc("t", 1, 3))  # the other's claim
    find_one = saver._releases.find_one
    saver._releases = type("Stale", (), {  # this one read the markers before that claim
        "find_one": staticmethod(lambda *a, **k: None),
        "__getattr__": lambda self, name: getattr(find_one.__self__, name),
    })()
    release = saver.release("t")
    saver._releases = find_one.__self__
    assert release.version == 1 and {c.id for c in release.checkpoints} == {c.id for c in run}
    assert saver.versions("t") == [1]
    assert saver._archive_coll.count_documents({"thread_id": "t"}) == 3


# -- formats -----------------------------------------------------------------------------
def test_newer_record_format_is_refused_clearly(nx_saver: MongoSaver) -> None:
    put = nx_saver.put(Checkpoint("t", {"n": 1}))
    doc = nx_saver._checkpoints.find_one({"thread_id": "t"})
    record = bytearray(doc["rec"])
    record[2] = 99  # format version byte
    nx_saver._checkpoints.delete_one({"_id": doc["_id"]})
    nx_saver._checkpoints.insert_one({**doc, "rec": bytes(record)})
    nx_saver._cache.clear()
    with pytest.raises(CorruptCheckpointError, match=r"format version 99.*upgrade savegame"):
        nx_saver.get("t", put.id)


_PACKED_LOOKALIKE = st.from_regex(r"[-012][-0-9A-Z_a-z]{21}", fullmatch=True)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.uuids().map(str), st.text(max_size=40), _PACKED_LOOKALIKE,
                          _PACKED_LOOKALIKE.map(lambda text: "~" + text)),
                min_size=1, max_size=6))
def test_layout_5_ids_read_back_and_uuids_keep_their_order(ids: list[str]) -> None:
    """Any checkpoint id reads back from how layout 5 stores it; stored ids are distinct
    where the ids are; canonical UUIDs take 22 characters and sort as their text did (a
    list sorts on ``cid``), other ids are themselves or ``~`` and themselves."""
    stored = [_shared.id_value(checkpoint_id, 5) for checkpoint_id in ids]
    assert [_shared.id_text(value, "cid", 5) for value in stored] == ids
    assert len(set(stored)) == len(set(ids))
    uuids = [(i, v) for i, v in zip(ids, stored, strict=True) if _is_canonical_uuid(i)]
    assert all(len(value) == 22 for _, value in uuids)
    assert sorted(uuids) == sorted(uuids, key=lambda pair: pair[1])
    assert all(value in (i, "~" + i) for i, value in zip(ids, stored, strict=True)
               if not _is_canonical_uuid(i))
    assert [_shared.id_value(i, 4) for i in ids] == ids  # layout 4 stores them as they are


def test_a_thread_mixing_uuid_and_other_ids_lists_and_pages_consistently(
        nx_saver: MongoSaver) -> None:
    """Layout 5 sorts on the stored ids: a thread mixing UUIDs with other ids lists them in
    the order of :func:`_shared.id_value` (the order of the ids themselves within each
    kind), and ``before`` cuts that same order, so paging through it misses nothing."""
    text = " ".join(f"word{i}" for i in range(200))
    ids = ["plain-id", "!first", "~tilde", "1234567890123456789012", "zzz"]
    puts = []
    for n in range(10):  # savegame's own UUIDv7 ids between the others
        puts.append(nx_saver.put(Checkpoint("t", {"n": n, "text": text},
                                            id=ids[n // 2] if n % 2 else None)))
    nx_saver._cache.clear()
    listed = [c.id for c in nx_saver.list("t")]
    assert listed == sorted((c.id for c in puts), key=lambda i: _shared.id_value(i, 5),
                            reverse=True)
    uuids = [i for i in listed if _is_canonical_uuid(i)]
    others = [i for i in listed if not _is_canonical_uuid(i)]
    assert uuids == sorted(uuids, reverse=True) and len(uuids) == 5
    assert others == sorted(others, key=lambda i: _shared.id_value(i, 5), reverse=True)
    for position, checkpoint_id in enumerate(listed):
        assert [c.id for c in nx_saver.list("t", before=checkpoint_id)] == \
            listed[position + 1:]
    paged, before = [], None
    while page := [c.id for c in nx_saver.list("t", before=before, limit=3)]:
        paged += page
        before = page[-1]
    assert paged == listed
    for put in puts:  # and every one decodes, cold
        nx_saver._cache.clear()
        assert nx_saver.get("t", put.id).state == put.state  # type: ignore[union-attr]


def _is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def test_layout_5_packs_the_ids_langgraph_and_savegame_make() -> None:
    """Their UUIDv6 and UUIDv7 ids: packed, in order, UUIDv7's time first."""
    langgraph = "1f1f2114-adca-6e74-bfff-8e78e755f458"
    packed = _shared.id_value(langgraph, 5)
    assert len(packed) == 22 and _shared.id_text(packed, "base", 5) == langgraph
    ids = sorted(str(uuid.UUID(int=(ms << 80) | (7 << 76) | (2 << 62) | n))
                 for ms in (0, 1, 2**47 - 1) for n in (0, 2**62 - 1))
    assert sorted(ids, key=lambda i: _shared.id_value(i, 5)) == ids
    assert _shared.id_value("plain-id", 5) == "plain-id"  # other ids: as they are
    with pytest.raises(TypeError, match="'base'"):
        _shared.id_text(16, "base", 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.integers(-(2**40), 2**40),
       st.sampled_from(["task", "0b5ec1d6-2f4e-4c55-9a3e-7f1d2c3b4a59", "ü" * 3, ""]),
       st.text(max_size=20), st.text(max_size=30))
def test_a_layout_4_write_entry_round_trips_and_a_damaged_one_is_named(
        junk: bytes, index: int, task: str, channel: str, path: str) -> None:
    """Any write reads back from its entry exactly; bytes that are no entry make reading
    the checkpoint's writes a CorruptCheckpointError naming it, never another error."""
    write = StoredWrite("t", "", "c1", task, index, channel, path, b"SG-record")
    doc = {"thread_id": "t", "ns": "", "cid": "c1", "w": [_shared.write_entry(write, 4)]}
    assert _shared.writes_of(doc, 5) == [write]
    assert _shared.entry_key(doc["w"][0]) == (task, index)
    for damaged in (junk, doc["w"][0][:len(junk) % 8]):
        try:
            got = _shared.writes_of({**doc, "w": [damaged]}, 5)
        except CorruptCheckpointError as exc:
            assert "'c1'" in str(exc)
        else:
            assert len(got) == 1  # some bytes are a (different) entry: the record then fails
        _shared.entry_key(damaged)  # a merge keeps a damaged entry as it is


def _uuid7_at(when: dt.datetime) -> str:
    ms = (when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)
    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62) | 7))


def test_layout_4_derives_what_it_leaves_out() -> None:
    """``ts`` is left out only where the checkpoint id states the same millisecond, and
    ``p`` only where the parent is the base: every other case stores them, and a cold read
    gives back every field as put."""
    saver = mongo_harness.mongomock_saver(policy=KeyframePolicy(max_chain=2))
    old_id = "0170c7e6-0000-7000-8000-000000000000"  # a UUIDv7 of 2020: not the put's time
    text = " ".join(f"word{i}" for i in range(400))
    puts = [saver.put(Checkpoint("t", {"n": -1, "text": text}, id=old_id)),
            saver.put(Checkpoint("t", {"n": 0, "text": text}, id="plain-id"))]
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=20)
    puts += [saver.put(Checkpoint("t", {"n": i, "text": text + " more" * i},
                                  id=_uuid7_at(start + dt.timedelta(milliseconds=i))))
             for i in range(1, 12)]  # masters every 2: the older ones become reverse records
    docs = mongo_harness.by_id(saver._checkpoints.find({"thread_id": "t"}))
    assert {cid for cid, doc in docs.items() if "ts" in doc} == {old_id, "plain-id"}
    assert docs[old_id]["p"] is None and docs[old_id]["base"]  # a root, now a reverse record
    kinds = {("p" in doc and doc["p"] is not None, "base" in doc) for doc in docs.values()}
    # deltas on their parent, masters with a parent, reverse records against newer masters
    assert {(False, True), (True, False), (True, True)} <= kinds
    saver._cache.clear()
    for put in puts:
        got = saver.get("t", put.id)
        assert got is not None
        assert (got.parent_id, got.created_at, got.step) == (put.parent_id, put.created_at,
                                                             put.step)
        assert got.state == put.state


def test_a_layout_4_document_missing_a_time_its_id_cannot_state_is_named() -> None:
    """A document whose ``ts`` is gone while its id states no time is damaged: reading it
    is a CorruptCheckpointError naming the thread and checkpoint, and nothing else moves."""
    saver = mongo_harness.mongomock_saver()
    saver.put(Checkpoint("t", {"n": 1}, id="plain-id"))
    saver._checkpoints.update_one({"cid": "plain-id"}, {"$unset": {"ts": ""}})
    saver._cache.clear()
    with pytest.raises(CorruptCheckpointError, match=r"'ts'.*thread 't'.*'plain-id'"):
        saver.get("t", "plain-id")
    assert saver._checkpoints.count_documents({"thread_id": "t"}) == 1


def test_newer_layout_is_refused_clearly() -> None:
    saver = mongo_harness.mongomock_saver()
    saver.put(Checkpoint("t", {"n": 1}))
    saver._checkpoints.update_many({}, {"$set": {"fmt": 9}})
    saver._cache.clear()
    with pytest.raises(UnsupportedLayoutError, match=r"layout 5.*upgrade savegame"):
        saver.get("t")


def test_a_store_of_a_newer_layout_is_refused_clearly() -> None:
    saver = mongo_harness.mongomock_saver()
    saver.put(Checkpoint("t", {"n": 1}))
    saver._meta.update_one({"_id": "layout"}, {"$set": {"version": 9}})
    other = MongoSaver(saver.client, database=mongo_harness.DATABASE)
    with pytest.raises(UnsupportedLayoutError, match=r"layout 9.*upgrade savegame"):
        other.get("t")


def test_a_store_written_by_layout_1_reads_and_grows(nx_saver: MongoSaver) -> None:
    """Layout 1 (savegame <= 0.1.0) had no ``seq`` and no ``meta`` collection: its latest
    checkpoint is the highest id. A saver over such a store reads it and appends to it."""
    nx_saver.policy = KeyframePolicy(reverse=False)  # layout 1 knew no reverse records
    nx_saver._meta.insert_one({"_id": "layout", "version": 2})  # layout 1's field names
    first = nx_saver.put(Checkpoint("t", {"n": 1}))
    second = nx_saver.put(Checkpoint("t", {"n": 2}))
    nx_saver.put(Checkpoint("u", {"n": 1}))
    nx_saver._checkpoints.update_many({}, {"$unset": {"seq": ""}})
    nx_saver._meta.delete_many({})
    old = MongoSaver(nx_saver.client, database=mongo_harness.DATABASE,
                     prefix=nx_saver.names.checkpoints[: -len("checkpoints")])
    latest = old.get("t")
    assert latest is not None and latest.id == second.id and latest.state == {"n": 2}
    assert old._layout == 1
    third = old.put(Checkpoint("t", {"n": 3}))
    assert third.parent_id == second.id and third.step == 2
    assert old.get("t").id == third.id
    assert [c.id for c in old.list("t")] == [third.id, second.id, first.id]
    fork = old.put(Checkpoint("t", {"n": 4}, parent_id=first.id))
    assert old.get("t").id == fork.id


# -- storage figures -------------------------------------------------------------------
def test_chat_storage_within_six_times_the_floor() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    try:
        from chat import chat_states
    finally:
        sys.path.pop(0)
    states = chat_states(200)
    saver = mongo_harness.mongomock_saver()
    for state in states:
        saver.put(Checkpoint("chat", state, node_id="agent"))
    stored = sum(len(bson.encode(doc)) for doc in saver._checkpoints.find({}))
    floor = len(zstandard.ZstdCompressor(level=3).compress(Serializer().dumps(states[-1])))
    print(f"\n200-turn chat: {stored} BSON bytes stored, floor {floor}: "
          f"{stored / floor:.2f}x")
    assert stored <= 6 * floor


# -- two processes ---------------------------------------------------------------------
WRITER = """
import sys
from savegame.savers import Checkpoint, MongoSaver
uri, prefix, name = sys.argv[1:4]
with MongoSaver.from_uri(uri, database="savegame_test", prefix=prefix) as saver:
    for i in range(40):
        saver.put(Checkpoint("shared", {"writer": name, "i": i}, metadata={"w": name}))
    saver.put(Checkpoint("shared", {"same": True}, id="fixed-id"))
"""


def test_two_processes_lose_nothing_and_conflicts_are_explicit(nx_uri: str) -> None:
    prefix = mongo_harness.fresh_prefix()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, nx_uri, prefix, name])
             for name in ("a", "b")]
    assert [proc.wait(120) for proc in procs] == [0, 0]
    saver = MongoSaver(mongo_harness.sync_client(nx_uri), database=mongo_harness.DATABASE,
                       prefix=prefix)
    try:
        listed = list(saver.list("shared"))
        assert len(listed) == 81  # 40 + 40 + one "fixed-id" (the second put was a no-op)
        for name in ("a", "b"):
            mine = sorted(c.state["i"] for c in listed if c.metadata.get("w") == name)
            assert mine == list(range(40))
        by_id = {c.id: c for c in listed}
        for c in listed:  # the tree is intact: every parent exists, steps follow
            if c.parent_id is not None:
                assert by_id[c.parent_id].step + 1 == c.step
        # and it is one line: neither process forked it (issue #11)
        roots = [c for c in listed if c.parent_id is None]
        parents = [c.parent_id for c in listed if c.parent_id is not None]
        assert len(roots) == 1 and len(parents) == len(set(parents))
        with pytest.raises(ConflictError):
            saver.put(Checkpoint("shared", {"same": False}, id="fixed-id"))
    finally:
        mongo_harness.drop(saver)


def test_async_saver_cold_latest_get_is_one_aggregate(nx_uri: str) -> None:
    listener = Commands()

    async def main() -> None:
        client: Any = pymongo.AsyncMongoClient(nx_uri, event_listeners=[listener])
        saver = AsyncMongoSaver(client, database=mongo_harness.DATABASE,
                                prefix=mongo_harness.fresh_prefix())
        try:
            await saver.asetup()
            previous = None
            for i in range(5):
                previous = await saver.aput(Checkpoint(
                    "t", {"n": i, "log": list(range(200 + i))},
                    parent_id=previous.id if previous else None))
            assert previous is not None
            saver._cache.clear()
            listener.take()
            got = await saver.aget("t")
            assert got is not None and got.id == previous.id and got.state["n"] == 4
            assert listener.take() == ["aggregate"]
        finally:
            for name in saver.names.all():
                await client[mongo_harness.DATABASE].drop_collection(name)
            await client.close()

    asyncio.run(main())


def test_with_a_ttl_keyframes_stay_whole() -> None:
    """Records expire by keyframe chain: an old chain continued by a fork could outlive
    the newer keyframe a reverse record needs, so with a ttl none is written."""
    saver = mongo_harness.mongomock_saver(ttl=3600, policy=KeyframePolicy(max_chain=2))
    for i in range(10):
        saver.put(Checkpoint("t", {"n": i, "log": list(range(600 + i))}))
    masters = [doc for doc in saver._checkpoints.find({"thread_id": "t"})
               if codec.stated_depth(doc["rec"]) == 1]
    assert len(masters) >= 4 and all("base" not in doc for doc in masters)
    untimed = mongo_harness.mongomock_saver(policy=KeyframePolicy(max_chain=2))
    for i in range(10):
        untimed.put(Checkpoint("t", {"n": i, "log": list(range(600 + i))}))
    masters = [doc for doc in untimed._checkpoints.find({"thread_id": "t"})
               if codec.stated_depth(doc["rec"]) == 1]
    assert sum("base" not in doc for doc in masters) == 1
