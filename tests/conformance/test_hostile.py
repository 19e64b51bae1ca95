"""Hostile stored records, hostile states and hostile ids, on every saver (issue #11).

Each test here failed on the code before the fix it names: reads looped forever on a
record chain that names itself (1), ``put`` of a cyclic state spun forever (2), a record
copied onto another checkpoint decoded as that checkpoint's state (6), a put naming a
parent that does not exist stored a dangling parent (7), and ids a store cannot keep were
accepted (5). A per-test timeout turns a hang into a failure.
"""

from __future__ import annotations

import threading

import pytest

from savegame.savers import (
    Checkpoint,
    CorruptCheckpointError,
    KeyframePolicy,
    ParentNotFoundError,
    SerializationError,
)
from savegame.savers.base import MAX_ID_LENGTH
from savegame.savers.serde import MAX_DEPTH, MAX_EXTENSION_DEPTH

pytestmark = pytest.mark.timeout(60)


def chain(api, thread: str = "t", n: int = 3) -> list[Checkpoint]:
    """A thread of ``n`` checkpoints, each a delta against its parent."""
    out: list[Checkpoint] = []
    for i in range(n):
        out.append(api.put(Checkpoint(thread, {"log": [f"entry {j}" for j in range(40 + i)]})))
    return out


def forget(api) -> None:
    api.saver._cache.clear()


def call(api, name: str, *args, **kwargs):
    """``saver.<name>`` through the API mode under test (``a<name>`` when async)."""
    if api.mode == "sync":
        return getattr(api.saver, name)(*args, **kwargs)
    return api.run(getattr(api.saver, "a" + name)(*args, **kwargs))


def every_read(api, thread: str, checkpoint_id: str):
    """The reads that walk record chains."""
    return [
        lambda: api.get(thread, checkpoint_id),
        lambda: api.get(thread),
        lambda: api.list(thread),
        lambda: call(api, "delete_checkpoints", thread, ["no-such-checkpoint"]),
    ]


# -- 1. cyclic record chains --------------------------------------------------------------
def test_record_naming_itself_as_base_is_corruption_not_a_hang(api, tamper):
    items = chain(api)
    tip = items[-1]
    stored = api.stored("t", tip.id)
    assert stored.base_id is not None, "the tip must be a delta for this test"
    tamper.alter("t", "", tip.id, base_id=tip.id)
    for read in every_read(api, "t", tip.id):
        forget(api)
        with pytest.raises(CorruptCheckpointError, match="'t'") as info:
            read()
        assert info.value.thread_id == "t" and info.value.checkpoint_id == tip.id


def test_two_records_naming_each_other_is_corruption_not_a_hang(api, tamper):
    items = chain(api, n=4)
    a, b = items[-2], items[-1]
    depth_a = api.stored("t", a.id).depth
    # b -> a is a legal step (a is shallower); a -> b closes the loop
    tamper.alter("t", "", a.id, base_id=b.id)
    tamper.alter("t", "", b.id, base_id=a.id, depth=depth_a + 1)
    for check in (lambda: api.get("t", b.id), lambda: api.get("t"), lambda: api.list("t"),
                  lambda: api.get("t", a.id)):
        forget(api)
        with pytest.raises(CorruptCheckpointError):
            check()


def test_delete_checkpoints_over_a_cyclic_chain_raises_and_deletes_nothing(api, tamper):
    items = chain(api)
    tip = items[-1]
    tamper.alter("t", "", tip.id, base_id=tip.id)
    forget(api)
    with pytest.raises(CorruptCheckpointError):
        call(api, "delete_checkpoints", "t", [items[0].id])
    assert api.stored("t", items[0].id).id == items[0].id


# -- 2. cyclic and deep states ------------------------------------------------------------
def _cyclic_dict() -> dict:
    d: dict = {"x": 1}
    d["self"] = d
    return d


def _cyclic_list() -> list:
    items: list = []
    items.append(items)
    return items


def _deep_dicts(levels: int) -> dict:
    root: dict = {}
    current = root
    for _ in range(levels):
        current["x"] = {}
        current = current["x"]
    return root


def _deep_tuples(levels: int) -> tuple:
    value: tuple = ()
    for _ in range(levels):
        value = (value,)
    return value


@pytest.mark.parametrize(
    "value,path,reason",
    [
        (_cyclic_dict(), "state['v']['self']", "cycle"),
        (_cyclic_list(), "state['v'][0]", "cycle"),
        (_deep_dicts(3000), "state['v']['x']", f"deeper than {MAX_DEPTH}"),
        (_deep_tuples(600), "state['v'][0]", f"deeper than {MAX_EXTENSION_DEPTH}"),
        (_deep_tuples(MAX_EXTENSION_DEPTH), "state['v'][0]",  # 65 tuples: () is one
         f"deeper than {MAX_EXTENSION_DEPTH}"),
    ],
    ids=["dict-cycle", "list-cycle", "3000-dicts", "600-tuples", "65-tuples"],
)
def test_cyclic_or_too_deep_state_is_refused_naming_the_path(api, value, path, reason):
    with pytest.raises(SerializationError, match=reason) as info:
        api.put(Checkpoint("t", {"v": value}))
    assert info.value.path is not None and info.value.path.startswith(path)
    assert api.get("t") is None and api.list("t") == []


def test_state_at_the_depth_limits_round_trips(api):
    state = {"v": _deep_dicts(MAX_DEPTH - 2), "t": _deep_tuples(MAX_EXTENSION_DEPTH - 1)}
    api.put(Checkpoint("t", state))
    forget(api)
    assert api.get("t").state == state


def test_a_refused_cyclic_put_does_not_block_other_callers(saver, sync_ok):
    """The refusal is fast and releases every lock: another thread's put proceeds."""
    errors: list[BaseException] = []

    def bad() -> None:
        try:
            saver.put(Checkpoint("t", {"v": _cyclic_dict()}))
        except SerializationError:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=bad)
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and not errors
    assert saver.put(Checkpoint("t", {"ok": True})).step == 0


# -- 5. ids a store cannot keep -----------------------------------------------------------
@pytest.mark.parametrize("thread", ["a\x00b", "\ud800x", "x" * (MAX_ID_LENGTH + 1)],
                         ids=["nul", "lone-surrogate", "too-long"])
def test_ids_a_store_cannot_keep_are_refused_before_any_write(api, thread):
    with pytest.raises(ValueError):
        api.put(Checkpoint(thread, {"x": 1}))
    with pytest.raises(ValueError):
        api.put(Checkpoint("t", {"x": 1}, namespace=thread))
    with pytest.raises(ValueError):
        api.put(Checkpoint("t", {"x": 1}, id=thread))
    assert api.get("t") is None
    assert call(api, "list_threads") == []


@pytest.mark.parametrize(
    "thread",
    ["x" * 10_000, "$where", ".hidden", "a.b.c", "$", "{tag}", "sp ace/..\\..", "日本語🙂"],
    ids=["10000-chars", "dollar", "dot", "dots", "lone-dollar", "braces", "path", "unicode"])
def test_edge_ids_round_trip(api, thread):
    first = api.put(Checkpoint(thread, {"n": 1}, namespace=thread, node_id=thread))
    second = api.put(Checkpoint(thread, {"n": 2}, namespace=thread))
    forget(api)
    got = api.get(thread, namespace=thread)
    assert got is not None and got.id == second.id and got.state == {"n": 2}
    assert [c.id for c in api.list(thread, namespace=thread)] == [second.id, first.id]
    assert api.get(thread, first.id, namespace=thread).node_id == thread
    assert api.get(thread) is None  # the root namespace is another space


# -- 6. records bound to where they sit ---------------------------------------------------
def test_a_record_moved_onto_another_checkpoint_is_corruption(api, tamper):
    api.saver.policy = KeyframePolicy(max_chain=1, reverse=False)  # every record a master
    items = [api.put(Checkpoint("t", {"step": i})) for i in range(40)]
    early = api.stored("t", items[1].id)
    tamper.alter("t", "", items[39].id, record=early.record)
    forget(api)
    with pytest.raises(CorruptCheckpointError, match=r"moved|checksum") as info:
        api.get("t", items[39].id)
    assert info.value.checkpoint_id == items[39].id
    assert api.get("t", items[1].id).state == {"step": 1}


def test_copied_threads_rebind_their_records(api):
    items = chain(api, n=5)
    call(api, "copy_thread", "t", "copy")
    forget(api)
    assert [c.state for c in api.list("copy")] == [c.state for c in reversed(items)]


# -- 7. dangling parents ------------------------------------------------------------------
def test_a_parent_that_does_not_exist_is_refused(api):
    chain(api, n=2)
    with pytest.raises(ParentNotFoundError, match="does-not-exist"):
        api.put(Checkpoint("t", {"x": 1}, parent_id="does-not-exist"))
    with pytest.raises(ParentNotFoundError):
        api.put(Checkpoint("empty", {"x": 1}, parent_id="does-not-exist"))
    assert len(api.list("t")) == 2 and api.list("empty") == []


def test_a_deleted_parent_is_refused(api):
    first = api.put(Checkpoint("t", {"n": 1}))
    api.delete_thread("t")
    with pytest.raises(ParentNotFoundError):
        api.put(Checkpoint("t", {"n": 2}, parent_id=first.id))
    assert api.list("t") == []
