"""A Redis store written before layout 2 still reads, filters and grows with this release.

``tests/fixtures/redis_layout1.json`` holds every key savegame wrote at commit 8f98700
(values of layout 1: names as text, metadata as msgpack bytes, absolute times) for a
30-turn chat with LangGraph-like metadata and pending writes, a fork, writes of a
checkpoint not stored, a second namespace and a second thread, and what each checkpoint
read as then (made by ``tests/fixtures/make_redis_layout1.py`` against that commit). The
keys go under a fresh prefix on the session's redis-server, single node and cluster."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis_harness
from redis_harness import Deployment

from savegame.savers import Checkpoint, RedisSaver
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.redis import _shared

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "redis_layout1.json"
pytestmark = pytest.mark.timeout(120)


def digest(state: object) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def release() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())  # type: ignore[no-any-return]


@pytest.fixture(params=redis_harness.DEPLOYMENTS)
def saver(request: pytest.FixtureRequest, release: dict[str, Any]) -> Iterator[RedisSaver]:
    where: Deployment = redis_harness.deployment(request, request.param)
    prefix = redis_harness.fresh_prefix()
    for key, content in release["keys"].items():
        name = prefix + key.removeprefix("old")
        if "zset" in content:
            where.client.zadd(name, {base64.b64decode(m): 0 for m in content["zset"]})
        else:
            where.client.hset(name, mapping={base64.b64decode(f): base64.b64decode(v)
                                             for f, v in content["hash"].items()})
    yield RedisSaver(where.client, key_prefix=prefix)
    where.drop(prefix)


def test_the_fixture_is_layout_1() -> None:
    keys = json.loads(FIXTURE.read_text())["keys"]
    (members,) = [k["zset"] for name, k in keys.items() if name == "old:{chat}:c"]
    assert {base64.b64decode(m).split(b"\0", 2)[2][0] for m in members} == {1}  # fmt 1
    assert _shared.LAYOUT_VERSION >= 2  # so reading it exercises the older layout


def test_every_checkpoint_reads_as_it_did(saver: RedisSaver, release: dict[str, Any]) -> None:
    seen = {}
    for place, ids in release["order"].items():
        thread, namespace = place.split("/")
        listed = list(saver.list(thread, namespace=namespace))
        assert [c.id for c in listed] == ids
        for c in listed:
            seen[f"{place}/{c.id}"] = {
                "state": digest(c.state), "metadata": c.metadata, "step": c.step,
                "parent_id": c.parent_id, "created_at": c.created_at.isoformat(),
                "node_id": c.node_id}
    assert seen == release["checkpoints"]
    assert len(seen) == 33


def test_filters_and_pending_writes_of_layout_1(saver: RedisSaver,
                                                release: dict[str, Any]) -> None:
    forks = list(saver.list("chat", metadata={"source": "fork"}))
    assert [c.metadata for c in forks] == [{"source": "fork", "step": 5}]
    assert len(list(saver.list("chat", metadata={"source": "loop", "parents": {}}))) == 30
    assert [c.id for c in saver.list("other", metadata={"status": "completed"})] == \
        release["order"]["other/"]
    found = saver.get_writes("chat", list(release["writes"]))
    got = {cid: [[w.task_id, w.index, w.channel, w.value, w.task_path] for w in writes]
           for cid, writes in found.items()}
    assert got == release["writes"]


def test_a_layout_1_thread_grows_in_layout_2(saver: RedisSaver,
                                             release: dict[str, Any]) -> None:
    parent = saver.get("chat")
    assert parent is not None
    grown = saver.put(Checkpoint("chat", {**parent.state, "turn": 99},
                                 metadata={"source": "loop", "step": 99, "parents": {}}))
    saver.put_writes("chat", grown.id, [PendingWrite("t2", 0, "messages", "hi",
                                                     task_path="~__pregel_pull, chat")])
    # writes added to a layout-1 value and to a layout-1 pending entry merge with it
    saver.put_writes("chat", "not-stored-yet", [PendingWrite("t3", 0, "messages", "more")])
    fresh = RedisSaver(saver.client, key_prefix=saver.key_prefix)
    again = fresh.get("chat")
    assert again is not None and again.id == grown.id and again.state["turn"] == 99
    assert again.state["messages"] == parent.state["messages"]
    assert abs(again.created_at - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)
    loops = list(fresh.list("chat", metadata={"source": "loop"}))
    assert len(loops) == 31 and grown.id in {c.id for c in loops}
    keys = _shared.ThreadKeys.of(saver.key_prefix, "chat")
    formats = {_shared.split_member(m)[1]: _shared.split_member(m)[2][0]
               for m in saver.client.zrange(keys.records, 0, -1)}
    assert formats[grown.id] == 2 and formats[parent.id] == 1  # old values stay as they were
    writes = fresh.get_writes("chat", [grown.id, "not-stored-yet"])
    assert [(w.channel, w.value, w.task_path) for w in writes[grown.id]] == \
        [("messages", "hi", "~__pregel_pull, chat")]
    assert [(w.task_id, w.channel, w.value) for w in writes["not-stored-yet"]] == \
        [("t", "__interrupt__", "why"), ("t3", "messages", "more")]


def test_format_3_records_keep_their_fingerprints(saver: RedisSaver,
                                                  release: dict[str, Any]) -> None:
    """Records of that commit fingerprint states with BLAKE2b, this one with XXH3: a
    re-put of an old checkpoint with its own state is still a no-op and a changed one a
    conflict, and a thread grown past several keyframes (which rewrites the old masters as
    reverse records, keeping their BLAKE2b fingerprints) verifies and reads as before."""
    from savegame.savers import ConflictError, codec, maintenance

    stored = {c.id: c for c in saver.list("chat")}
    assert {_header(saver, cid).version for cid in stored} == {3}
    target = stored[next(iter(stored))]
    again = saver.put(Checkpoint("chat", target.state, id=target.id,
                                 parent_id=target.parent_id, node_id=target.node_id,
                                 next_node_id=target.next_node_id, metadata=target.metadata))
    assert again.id == target.id
    with pytest.raises(ConflictError):
        saver.put(Checkpoint("chat", {**target.state, "turn": -1}, id=target.id,
                             parent_id=target.parent_id, node_id=target.node_id,
                             next_node_id=target.next_node_id, metadata=target.metadata))
    before = {c.id: digest(c.state) for c in saver.list("chat")}
    latest = saver.get("chat")
    assert latest is not None
    for turn in range(12):  # three keyframes at least: old masters become reverse records
        messages = [*latest.state["messages"], f"grown {turn} " + "x" * 300]
        latest = saver.put(Checkpoint("chat", {**latest.state, "messages": messages}))
    fresh = RedisSaver(saver.client, key_prefix=saver.key_prefix)
    after = {c.id: digest(c.state) for c in fresh.list("chat")}
    assert {k: after[k] for k in before} == before
    kinds = {(h.version, h.kind, h.xxh3) for h in (_header(saver, c) for c in before)}
    assert (6, codec.REVERSE, False) in kinds  # an old master, rewritten (format 6)
    checked, _, problems = maintenance.verify_thread(fresh, "chat")
    assert problems == [] and checked >= len(after)  # and the other namespace's


def _header(saver: RedisSaver, checkpoint_id: str) -> Any:
    from savegame.savers import codec

    stored = saver._read("chat", "", checkpoint_id)
    assert stored is not None
    return codec.read_header(stored.record, 0, codec.location("chat", "", checkpoint_id))
