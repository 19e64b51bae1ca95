"""MongoDB stores written by earlier releases still read, and grow, with this one.

Each fixture holds every document an earlier savegame wrote for a 40-turn chat with a
fork, pending writes, a second namespace and a second thread, the state each checkpoint
decoded to then and the pending writes it read back:

- ``mongodb_layout1.json``: savegame 0.1.0 (record format 1 with anchor deltas, layout 1:
  no seq, no meta collection; ``make_mongodb_layout1.py``);
- ``mongodb_layout2.json``: layout 2 as of commit 1877df1 (record formats 4 and 5, text
  ``_id`` hashes, pending writes in their own collection; ``make_mongodb_layout2.py``);
- ``mongodb_layout3.json``: layout 3 as of commit c2befe6 (record formats 4 and 5, pending
  writes inside their checkpoint's document, short field names, packed UUIDs;
  ``make_mongodb_layout.py``);
- ``mongodb_layout4.json``: layout 4 as of commit 0624c7e (record format 6, 96-bit ``_id``,
  pending writes as one binary value each, ``p`` and ``ts`` left out where derivable;
  ``make_mongodb_layout.py``).

The documents go into a fresh database over the real driver on nx-27017; the current
saver must decode every checkpoint to the same state and every pending write to the same
value, list and find the latest as that release did, and append to it in its layout."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongo_harness
import pytest
from bson import json_util

from savegame.savers import Checkpoint, MongoSaver
from savegame.savers.checkpoint import PendingWrite

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
_databases = itertools.count()


def digest(state: object) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module", params=[1, 2, 3, 4],
                ids=["layout1", "layout2", "layout3", "layout4"])
def release(request: pytest.FixtureRequest) -> dict[str, Any]:
    data = json_util.loads((FIXTURES / f"mongodb_layout{request.param}.json").read_text())
    data["layout"] = request.param
    return data  # type: ignore[no-any-return]


@pytest.fixture
def client(nx_uri: str) -> Any:
    """The real driver on nx-27017 (mongomock cannot host a layout-1 store: it ignores the
    seq index's partialFilterExpression, so the saver's setup over documents without seq
    fails there with a duplicate key, where MongoDB and nx-27017 skip them)."""
    return mongo_harness.sync_client(nx_uri)


@pytest.fixture
def saver(client: Any, release: dict[str, Any]) -> Iterator[MongoSaver]:
    name = f"previous_release_{next(_databases)}"
    for collection, documents in release["collections"].items():
        if documents:
            client[name][collection].insert_many(documents)
    yield MongoSaver(client, database=name)
    client.drop_database(name)


def test_every_checkpoint_decodes_to_the_state_it_had(saver: MongoSaver,
                                                     release: dict[str, Any]) -> None:
    seen = {}
    for place, ids in release["order"].items():
        thread, namespace = place.split("/")
        listed = list(saver.list(thread, namespace=namespace))
        assert [c.id for c in listed] == ids  # newest first, as that release listed them
        seen.update({f"{place}/{c.id}": digest(c.state) for c in listed})
        for checkpoint_id in ids:  # and one by one, cold
            saver._cache.clear()
            got = saver.get(thread, checkpoint_id, namespace=namespace)
            assert got is not None
            assert digest(got.state) == release["states"][f"{place}/{checkpoint_id}"]
    assert seen == release["states"]
    assert len(seen) == 43  # 40 turns, a fork, a subgraph namespace, another thread


def test_every_pending_write_reads_back_cold(saver: MongoSaver,
                                           release: dict[str, Any]) -> None:
    """Copies of their checkpoint's state, splices against it and whole records alike."""
    expected = release["writes"]
    saver._cache.clear()
    got = saver.get_writes("chat", list(expected))
    if release["layout"] == 1:
        assert {cid: [w.value for w in ws] for cid, ws in got.items()} == {
            cid: [value] for cid, value in expected.items()}
    else:
        assert {cid: [[w.task_id, w.index, w.channel, w.value] for w in ws]
                for cid, ws in got.items()} == expected
        assert len(expected) == 40


def test_latest_writes_and_growth_follow_the_old_layout(saver: MongoSaver,
                                                       release: dict[str, Any]) -> None:
    for place, latest in release["latest"].items():
        thread, namespace = place.split("/")
        got = saver.get(thread, namespace=namespace)
        assert got is not None and got.id == latest
    assert saver._layout == release["layout"]  # kept: an older saver may share the store
    parent = saver.get("chat")
    assert parent is not None
    grown = saver.put(Checkpoint("chat", {**parent.state, "turn": 99}))
    assert grown.parent_id == parent.id and grown.step == parent.step + 1
    saver._cache.clear()
    again = saver.get("chat")
    assert again is not None and again.id == grown.id and again.state["turn"] == 99
    assert again.state["messages"] == parent.state["messages"]
    saver.put_writes("chat", grown.id, [PendingWrite("t", 0, "messages", ["new"])])
    saver._cache.clear()
    assert [w.value for w in saver.get_writes("chat", [grown.id])[grown.id]] == [["new"]]
    head = saver._checkpoints.find_one({"thread_id": "chat", "cid": grown.id})
    assert isinstance(head["_id"], str)  # the old layout's hashed ids, as its readers expect
    if release["layout"] < 3:  # its layout's fields
        assert "depth" in head and "d" not in head and "w" not in head
    else:  # writes inside, the depth in the record, 128-bit ids (4: 96), the time stored
        assert "depth" not in head and "d" not in head and "w" in head
        assert len(head["_id"]) == (22 if release["layout"] == 3 else 16)
        assert "ts" in head or release["layout"] > 3  # (4: absent where the id states it)
