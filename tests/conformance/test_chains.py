"""Delta chains: long threads stay exact, reads are bounded by the keyframe policy, and a
corrupt or missing record fails loudly instead of returning empty or partial state."""

from __future__ import annotations

import math
import random
import string

import pytest
from conformance_support import assert_checkpoint, assert_same

from savegame.savers import Checkpoint, CorruptCheckpointError, KeyframePolicy


def cp(thread: str = "t", **kw: object) -> Checkpoint:
    kw.setdefault("state", {})
    return Checkpoint(thread_id=thread, **kw)  # type: ignore[arg-type]


def text(rng: random.Random, n: int = 200) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + " ", k=n))


# -- a long thread --------------------------------------------------------------------
STEPS = 1000


def test_thousand_step_thread_is_exact(api):
    rng = random.Random(1000)
    lines = [text(rng) for _ in range(STEPS)]

    def state(i: int) -> dict[str, object]:
        return {"messages": lines[: i + 1], "counter": i}

    puts = [api.put(cp(state=state(i), node_id=f"n{i % 3}")) for i in range(STEPS)]
    assert [p.step for p in puts] == list(range(STEPS))
    assert len({p.id for p in puts}) == STEPS

    # through list, with a cold cache (decodes every chain from its keyframe)
    api.saver._cache.clear()
    listed = api.list("t")
    assert len(listed) == STEPS
    for got, i in zip(listed, range(STEPS - 1, -1, -1), strict=True):
        assert got.id == puts[i].id and got.step == i
        assert got.state["counter"] == i
        assert got.state["messages"] == lines[: i + 1]
    assert_checkpoint(listed[0], puts[-1])
    assert_checkpoint(listed[-1], puts[0])

    # through get-by-id, with a cold cache
    api.saver._cache.clear()
    for i in range(STEPS):
        got = api.get("t", puts[i].id)
        assert got.state["counter"] == i and got.state["messages"] == lines[: i + 1], i

    api.saver._cache.clear()
    latest = api.get("t")
    assert_checkpoint(latest, puts[-1])
    assert_same(dict(latest.state), state(STEPS - 1))


# -- the keyframe policy bounds reads ---------------------------------------------------
def chain_length(api, thread: str, namespace: str, stored) -> int:
    """Records a read of ``stored`` decodes, following base links to the newest master."""
    count = 1
    while stored.base_id is not None:
        stored = api.stored(thread, stored.base_id, namespace)
        count += 1
        assert count <= 70000
    return count


@pytest.mark.parametrize("k", [1, 2, 8, 32])
def test_policy_bounds_the_chain(api, k):
    """Forward chains hold at most ``max_chain`` records; older masters become reverse
    records against newer ones, and a read walks at most log2(masters) + 1 of them."""
    api.saver.policy = KeyframePolicy(max_chain=k)
    rng = random.Random(k)
    prefix = text(rng, 20_000)
    lines: list[str] = []
    puts = []
    for i in range(3 * k + 10):
        lines.append(text(rng, 100))
        puts.append(api.put(cp(state={"prefix": prefix, "lines": list(lines), "i": i})))
    depths = []
    stored_all = [api.stored("t", put.id) for put in puts]
    masters = sum(1 for s in stored_all if s.depth == 1)
    for stored in stored_all:
        assert 1 <= stored.depth <= k, (stored.step, stored.depth)
        assert chain_length(api, "t", "", stored) <= stored.depth + math.log2(masters) + 1
        if stored.depth == 1:  # a master, or a reverse record against a newer one
            assert stored.keyframe_id == stored.id
            if stored.base_id is not None:
                base = api.stored("t", stored.base_id)
                assert base.depth == 1 and base.seq > stored.seq
        else:
            base = api.stored("t", stored.base_id)
            assert base.keyframe_id == stored.keyframe_id and base.depth < stored.depth
        depths.append(stored.depth)
    if k == 1:
        assert set(depths) == {1}
    else:
        assert max(depths) >= 2, "deltas are used"
        assert depths.count(1) <= len(depths) / 2, "deltas are the rule"
    if masters > 1:  # every master but the newest was rewritten as a reverse record
        assert [s.base_id is None for s in stored_all if s.depth == 1].count(True) == 1
    api.saver._cache.clear()
    latest = api.get("t")
    assert latest.id == puts[-1].id and latest.state["lines"] == lines
    for got, put in zip(api.list("t"), reversed(puts), strict=True):
        assert got.id == put.id and got.state["i"] == put.step
    api.saver._cache.clear()
    for i, put in enumerate(puts):  # every checkpoint decodes from a cold cache
        assert api.get("t", put.id).state["lines"] == lines[: i + 1]


# -- corruption -----------------------------------------------------------------------
@pytest.fixture
def chain(api):
    """A thread of 12 checkpoints on one delta chain (max_chain=16), plus a namespace."""
    api.saver.policy = KeyframePolicy(max_chain=16)
    rng = random.Random(7)
    prefix = text(rng, 5_000)
    puts = []
    for i in range(12):
        puts.append(api.put(cp(state={"prefix": prefix, "i": i, "tail": text(rng, 50)})))
    api.put(cp(state={"other": 1}, namespace="ns"))
    stored = [api.stored("t", p.id) for p in puts]
    assert stored[0].base_id is None
    assert all(s.base_id is not None for s in stored[1:]), "expected one delta chain"
    return puts, stored


def needs(stored, target_id: str, of) -> bool:
    """Whether reading ``of`` decodes the record ``target_id``."""
    by_id = {s.id: s for s in stored}
    current = by_id[of.id]
    while True:
        if current.id == target_id:
            return True
        if current.base_id is None:
            return False
        current = by_id[current.base_id]


def assert_corrupt(api, put, namespace: str = "") -> None:
    api.saver._cache.clear()
    with pytest.raises(CorruptCheckpointError) as info:
        api.get("t", put.id, namespace=namespace)
    message = str(info.value)
    assert "'t'" in message and put.id in message and repr(namespace) in message
    assert info.value.checkpoint_id == put.id
    assert info.value.thread_id == "t"
    assert info.value.namespace == namespace


@pytest.mark.parametrize("where", ["keyframe", "middle", "latest"])
def test_corrupt_record(api, tamper, chain, where):
    puts, stored = chain
    index = {"keyframe": 0, "middle": 4, "latest": 11}[where]
    target = puts[index]
    tamper.corrupt("t", "", target.id)
    affected = [p for p in puts if needs(stored, target.id, p)]
    assert target in affected
    if where == "keyframe":
        assert len(affected) == len(puts)
    elif where == "middle":
        assert len(affected) >= 2, "later checkpoints decode through the corrupt one"
    for put in puts:
        if put in affected:
            assert_corrupt(api, put)
        else:
            api.saver._cache.clear()
            assert_checkpoint(api.get("t", put.id), put)
    if puts[-1] in affected:
        api.saver._cache.clear()
        with pytest.raises(CorruptCheckpointError):
            api.get("t")
    api.saver._cache.clear()
    with pytest.raises(CorruptCheckpointError):
        api.list("t")
    # the other namespace is untouched
    assert api.get("t", namespace="ns").state == {"other": 1}


def test_corrupt_record_in_cache_is_not_trusted(api, tamper, chain):
    """A warm cache must not hide corruption of the record being read."""
    puts, _ = chain
    tamper.corrupt("t", "", puts[-1].id)
    with pytest.raises(CorruptCheckpointError):
        api.get("t")


def test_corrupt_then_continue_writing(api, tamper, chain):
    puts, _ = chain
    api.get("t", puts[5].id)  # its decoded state is now cached
    tamper.corrupt("t", "", puts[5].id)
    # a child of a corrupt parent must not be encoded against it
    child = api.put(cp(state={"fresh": True}, parent_id=puts[5].id))
    assert child.step == 6
    api.saver._cache.clear()
    assert_checkpoint(api.get("t", child.id), child)


@pytest.mark.parametrize("where", ["keyframe", "middle"])
def test_missing_base(api, tamper, chain, where):
    puts, stored = chain
    index = {"keyframe": 0, "middle": 5}[where]
    target = puts[index]
    dependants = [p for p in puts if p is not target and needs(stored, target.id, p)]
    assert dependants
    tamper.remove("t", "", target.id)
    api.saver._cache.clear()
    assert api.get("t", target.id) is None
    for put in dependants:
        assert_corrupt(api, put)
    for put in puts:
        if put is not target and put not in dependants:
            api.saver._cache.clear()
            assert_checkpoint(api.get("t", put.id), put)
    api.saver._cache.clear()
    with pytest.raises(CorruptCheckpointError):
        api.list("t")
