"""Fault injection with mockupdb: the real driver against scripted replies.

Each case scripts one put (parent read, then the insert) and checks that the insert is
resent with the same ``_id`` (so the server can never hold two copies), and that the user
sees success or one clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mongo_harness
import pymongo
import pytest

from savegame.savers import Checkpoint, MongoSaver

mockupdb = pytest.importorskip("mockupdb")


@pytest.fixture
def server() -> Iterator[Any]:
    srv = mockupdb.MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    srv.run()
    yield srv
    srv.stop()


@pytest.fixture
def saver(server: Any) -> Iterator[MongoSaver]:
    client: Any = pymongo.MongoClient(server.uri, retryWrites=False, retryReads=False,
                                      serverSelectionTimeoutMS=3000)
    saver = MongoSaver(client, retries=2)
    saver._ready = True  # indexes are not what these tests script
    yield saver
    client.close()


def inserted(request: Any) -> Any:
    """The document an insert command carries."""
    documents = request.doc["documents"]
    assert len(documents) == 1
    return documents[0]


def empty_cursor(request: Any) -> None:
    request.replies({"cursor": {"id": 0, "firstBatch": [],
                                "ns": "savegame.checkpoints"}})


def start_put(server: Any, saver: MongoSaver) -> tuple[Any, Any]:
    """Start a put in a thread; answer its read of the latest; return (future, insert)."""
    future = mockupdb.go(saver.put, Checkpoint("t", {"n": 1}))
    empty_cursor(server.receives(mockupdb.OpMsg("find", "checkpoints")))
    insert = server.receives(mockupdb.OpMsg("insert", "checkpoints"))
    return future, insert


def duplicate_then_found(server: Any, first: Any) -> None:
    """The resent insert meets the document the first attempt stored."""
    retry = server.receives(mockupdb.OpMsg("insert", "checkpoints"))
    assert inserted(retry)["_id"] == inserted(first)["_id"]
    retry.replies({"ok": 1, "n": 0, "writeErrors": [
        {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error"}]})
    find = server.receives(mockupdb.OpMsg("find", "checkpoints"))
    find.replies({"cursor": {"id": 0, "firstBatch": [inserted(first)],
                             "ns": "savegame.checkpoints"}})


def test_reset_before_the_insert_is_applied(server: Any, saver: MongoSaver) -> None:
    future, insert = start_put(server, saver)
    insert.hangup()  # the server never applied it
    retry = server.receives(mockupdb.OpMsg("insert", "checkpoints"))
    assert inserted(retry)["_id"] == inserted(insert)["_id"]
    retry.ok(n=1)
    put = future()
    assert put.state == {"n": 1} and put.step == 0
    assert mongo_harness.stored_id(put.id) == inserted(insert)["cid"]


def test_reset_after_the_insert_is_applied(server: Any, saver: MongoSaver) -> None:
    future, insert = start_put(server, saver)
    insert.hangup()  # pretend the server applied it, then the connection dropped
    duplicate_then_found(server, insert)
    put = future()  # success: the stored copy is the one we wrote, no second document
    assert mongo_harness.stored_id(put.id) == inserted(insert)["cid"]
    assert put.state == {"n": 1}


def test_not_writable_primary(server: Any, saver: MongoSaver) -> None:
    future, insert = start_put(server, saver)
    insert.replies({"ok": 0, "code": 10107, "errmsg": "not primary",
                    "codeName": "NotWritablePrimary"})
    retry = server.receives(mockupdb.OpMsg("insert", "checkpoints"))
    assert inserted(retry)["_id"] == inserted(insert)["_id"]
    retry.ok(n=1)
    assert mongo_harness.stored_id(future().id) == inserted(insert)["cid"]


def test_write_concern_error_then_duplicate(server: Any, saver: MongoSaver) -> None:
    future, insert = start_put(server, saver)
    insert.replies({"ok": 1, "n": 1, "writeConcernError": {
        "code": 64, "errmsg": "waiting for replication timed out"}})
    duplicate_then_found(server, insert)
    assert mongo_harness.stored_id(future().id) == inserted(insert)["cid"]


def test_persistent_write_concern_error_is_one_clear_error(
    server: Any, saver: MongoSaver
) -> None:
    future, insert = start_put(server, saver)
    reply = {"ok": 1, "n": 1, "writeConcernError": {
        "code": 64, "errmsg": "waiting for replication timed out"}}
    insert.replies(reply)
    for _ in range(saver.retries):
        retry = server.receives(mockupdb.OpMsg("insert", "checkpoints"))
        assert inserted(retry)["_id"] == inserted(insert)["_id"]
        retry.replies(reply)
    with pytest.raises(pymongo.errors.WriteConcernError, match="replication timed out"):
        future()
