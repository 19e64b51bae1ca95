"""A MongoDB store written by the previous release still reads, and grows, with this one.

``tests/fixtures/mongodb_layout1.json`` holds every document savegame 0.1.0 wrote (record
format 1 with anchor deltas, layout 1: no seq, no meta collection) for a 40-turn chat with
a fork, pending writes, a second namespace and a second thread, and the state each of its
checkpoints decoded to then (made by ``tests/fixtures/make_mongodb_layout1.py`` against
that release). The documents go into a fresh database, over mongomock and over the real
driver on nx-27017; the current saver must decode every checkpoint to the same state, list
and find the latest as that release did, and append to it."""

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

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mongodb_layout1.json"
_databases = itertools.count()


def digest(state: object) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def release() -> dict[str, Any]:
    return json_util.loads(FIXTURE.read_text())  # type: ignore[no-any-return]


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


def test_latest_writes_and_growth_follow_the_old_layout(saver: MongoSaver,
                                                       release: dict[str, Any]) -> None:
    for place, latest in release["latest"].items():
        thread, namespace = place.split("/")
        got = saver.get(thread, namespace=namespace)
        assert got is not None and got.id == latest
    (checkpoint_id, value), = release["writes"].items()
    (write,) = saver.get_writes("chat", [checkpoint_id])[checkpoint_id]
    assert write.value == value
    assert saver._legacy  # the store keeps its layout: an older saver may share it
    parent = saver.get("chat")
    assert parent is not None
    grown = saver.put(Checkpoint("chat", {**parent.state, "turn": 99}))
    assert grown.parent_id == parent.id and grown.step == parent.step + 1
    saver._cache.clear()
    again = saver.get("chat")
    assert again is not None and again.id == grown.id and again.state["turn"] == 99
    assert again.state["messages"] == parent.state["messages"]
