"""Pending writes, thread listing, copy_thread and delete_checkpoints: the generic pieces the
framework adapters stand on. Run against every backend, sync and async."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from conformance_support import assert_same

from savegame.savers import BaseSaver, Checkpoint, KeyframePolicy, SerializationError, codec
from savegame.savers.base import WRITES_BATCH, _write_location
from savegame.savers.checkpoint import PendingWrite

Call = Callable[..., Any]

NEW_PRIMITIVES = ("_insert_writes", "_read_writes", "_list_threads", "_read_thread",
                  "_copy_in", "_replace", "_delete_checkpoints")


@pytest.fixture(params=["sync", "async"])
def call(
    request: pytest.FixtureRequest, saver: BaseSaver, backend_name: str,
    loop: asyncio.AbstractEventLoop,
) -> Call:
    missing = [name for name in NEW_PRIMITIVES if not hasattr(saver, name)]
    if missing:
        pytest.skip(f"{backend_name} does not implement {', '.join(missing)} yet")
    if request.param == "sync":
        request.getfixturevalue("sync_ok")

        def sync(name: str, *args: Any, **kwargs: Any) -> Any:
            result = getattr(saver, name)(*args, **kwargs)
            return list(result) if name in ("list", "list_with_writes") else result

        return sync

    def run(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("list", "list_with_writes"):
            async def collect() -> list[Any]:
                return [c async for c in getattr(saver, "a" + name)(*args, **kwargs)]

            return loop.run_until_complete(collect())
        return loop.run_until_complete(getattr(saver, "a" + name)(*args, **kwargs))

    return run


def chat(call: Call, thread: str, turns: int, namespace: str = "") -> list[Checkpoint]:
    out = []
    messages: list[str] = []
    for turn in range(turns):
        messages = [*messages, f"message {turn} " + "lorem ipsum dolor " * 8]
        out.append(call("put", Checkpoint(thread, {"messages": messages, "turn": turn},
                                          namespace=namespace, metadata={"turn": turn})))
    return out


def test_writes_round_trip_in_order(call: Call) -> None:
    (first,) = chat(call, "w", 1)
    assert first.id is not None
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    call("put_writes", "w", first.id, [
        PendingWrite("task-b", 0, "messages", ("msgpack", b"\x01\x02")),
        PendingWrite("task-a", 1, "count", 2),
        PendingWrite("task-a", 0, "when", when),
        PendingWrite("task-a", -1, "__error__", {"error": "boom"}, task_path="~0"),
    ])
    got = call("get_writes", "w", [first.id])[first.id]
    assert [(w.task_path, w.task_id, w.index) for w in got] == [
        ("", "task-a", 0), ("", "task-a", 1), ("", "task-b", 0), ("~0", "task-a", -1)]
    assert_same(got[2].value, ("msgpack", b"\x01\x02"))
    assert_same(got[0].value, when)
    assert got[1].channel == "count" and got[1].value == 2


def test_writes_keep_first_unless_replace(call: Call) -> None:
    (first,) = chat(call, "w", 1)
    call("put_writes", "w", first.id, [PendingWrite("t", 0, "c", "first")])
    call("put_writes", "w", first.id, [PendingWrite("t", 0, "c", "second")])
    assert call("get_writes", "w", [first.id])[first.id][0].value == "first"
    call("put_writes", "w", first.id, [PendingWrite("t", 0, "c", "third")], replace=True)
    assert call("get_writes", "w", [first.id])[first.id][0].value == "third"


def test_get_with_writes_is_get_and_get_writes_at_once(call: Call, saver: BaseSaver) -> None:
    a, b = chat(call, "ww", 2)
    call("put_writes", "ww", a.id, [PendingWrite("t", 1, "c", "a1"),
                                    PendingWrite("t", 0, "c", "a0")])
    call("put_writes", "ww", b.id, [PendingWrite("u", 0, "c", "b")])
    for cold in (False, True):
        if cold:
            saver._cache.clear()
        for wanted, values in ((None, ["b"]), (b.id, ["b"]), (a.id, ["a0", "a1"])):
            checkpoint, writes = call("get_with_writes", "ww", wanted)
            assert checkpoint.id == (wanted or b.id)
            assert dict(checkpoint.state) == dict(call("get", "ww", wanted).state)
            assert [w.value for w in writes] == values
    assert call("get_with_writes", "ww", "nope") is None
    assert call("get_with_writes", "nobody") is None
    chat(call, "ww", 1)  # a checkpoint without writes
    assert call("get_with_writes", "ww")[1] == []


def test_list_with_writes_is_list_and_get_writes_at_once(call: Call, saver: BaseSaver) -> None:
    """More checkpoints than one query of writes covers where a store keeps them apart
    (WRITES_BATCH), every third with writes; listing options as for ``list``."""
    assert WRITES_BATCH < 70
    made = chat(call, "lw", 70)
    for number, checkpoint in enumerate(made):
        if number % 3 == 0:
            call("put_writes", "lw", checkpoint.id, [
                PendingWrite("t", 1, "c", f"{number}.1"),
                PendingWrite("t", 0, "messages", checkpoint.state["messages"][-1])])
    for cold in (False, True):
        if cold:
            saver._cache.clear()
            saver._listed.clear()
        for options in ({}, {"limit": 5}, {"before": made[40].id, "limit": 30},
                        {"metadata": {"turn": 9}}):
            listed = call("list", "lw", **options)
            expected = call("get_writes", "lw", [c.id for c in listed])
            got = call("list_with_writes", "lw", **options)
            assert [c.id for c, _ in got] == [c.id for c in listed]
            assert [dict(c.state) for c, _ in got] == [dict(c.state) for c in listed]
            assert [[(w.task_id, w.index, w.channel, w.value) for w in writes]
                    for _, writes in got] == [
                        [(w.task_id, w.index, w.channel, w.value) for w in expected[c.id]]
                        for c in listed]
        got = call("list_with_writes", "lw")
        assert len(got) == 70
        assert [w.value for w in got[-1][1]] == [made[0].state["messages"][-1], "0.1"]
        assert got[-2][1] == []
    assert call("list_with_writes", "nobody") == []


def test_writes_are_per_checkpoint_and_namespace(call: Call) -> None:
    a, b = chat(call, "w", 2)
    (sub,) = chat(call, "w", 1, namespace="sub")
    call("put_writes", "w", a.id, [PendingWrite("t", 0, "c", "a")])
    call("put_writes", "w", sub.id, [PendingWrite("t", 0, "c", "sub")], namespace="sub")
    got = call("get_writes", "w", [a.id, b.id, "nope"])
    assert {k: [w.value for w in v] for k, v in got.items()} == {a.id: ["a"], b.id: [],
                                                                  "nope": []}
    assert [w.value for w in call("get_writes", "w", [sub.id], namespace="sub")[sub.id]] == [
        "sub"]
    assert call("get_writes", "w", [sub.id])[sub.id] == []


def test_bad_write_stores_nothing(call: Call) -> None:
    (first,) = chat(call, "w", 1)

    class Opaque:
        pass

    with pytest.raises(SerializationError) as info:
        call("put_writes", "w", first.id, [PendingWrite("t", 0, "c", 1),
                                           PendingWrite("t", 1, "c", [Opaque()])])
    assert "writes[1]['value'][0]" in str(info.value) and "Opaque" in str(info.value)
    assert call("get_writes", "w", [first.id])[first.id] == []


def test_a_write_passing_on_its_checkpoints_state_reads_back_cold(
        call: Call, saver: BaseSaver) -> None:
    """A write that passes on bytes of its checkpoint's state (as LangGraph's first task
    passes on the input) is stored as a copy of them, and reads back after the saver
    forgot every state, after a listing, and in a copied thread."""
    text = "what the user said, " * 20
    first = call("put", Checkpoint("w", {"input": {"messages": [text]}, "n": 1}))
    assert first.id is not None
    call("put_writes", "w", first.id, [PendingWrite("task", 0, "messages", [text]),
                                       PendingWrite("task", 1, "branch", None)])
    _, stored = call("read_records", "w")
    copies = {w.channel: codec.write_base(w.record, _write_location(w)) is not None
              for w in stored}
    assert copies == {"messages": True, "branch": False}

    def values(thread: str) -> list[Any]:
        return [w.value for w in call("get_writes", thread, [first.id])[first.id]]

    saver._cache.clear()
    saver._listed.clear()
    assert values("w") == [[text], None]  # the state read back for it
    call("put", Checkpoint("w", {"n": 2}))
    saver._cache.clear()
    saver._listed.clear()
    assert [c.id for c in call("list", "w")][-1] == first.id
    assert values("w") == [[text], None]  # the listed state
    call("copy_thread", "w", "w2")
    saver._cache.clear()
    saver._listed.clear()
    assert values("w2") == [[text], None]


def test_delete_thread_removes_writes(call: Call) -> None:
    (first,) = chat(call, "w", 1)
    call("put_writes", "w", first.id, [PendingWrite("t", 0, "c", 1)])
    call("delete_thread", "w")
    assert call("get_writes", "w", [first.id])[first.id] == []


def test_list_threads_by_prefix(call: Call) -> None:
    for thread in ("app/1", "app/2", "other/1", "app/10"):
        chat(call, thread, 1)
    assert call("list_threads", prefix="app/") == ["app/1", "app/10", "app/2"]
    assert call("list_threads", prefix="zzz") == []
    assert {"app/1", "other/1"} <= set(call("list_threads"))
    call("delete_thread", "app/2")
    assert call("list_threads", prefix="app/") == ["app/1", "app/10"]
    # A regular-expression character in the prefix is matched literally.
    chat(call, "a.b", 1)
    assert call("list_threads", prefix="a.") == ["a.b"]
    assert "app/1" not in call("list_threads", prefix="a.")


def test_copy_thread(call: Call) -> None:
    main = chat(call, "src", 30)
    (sub,) = chat(call, "src", 1, namespace="sub")
    call("put_writes", "src", main[-1].id, [PendingWrite("t", 0, "c", "w")])
    call("copy_thread", "src", "dst")
    copied = call("list", "dst")
    assert [c.id for c in copied] == [c.id for c in reversed(main)]
    for original, copy in zip(reversed(main), copied, strict=True):
        assert copy.thread_id == "dst" and copy.parent_id == original.parent_id
        assert copy.step == original.step and copy.metadata == original.metadata
        assert_same(dict(copy.state), dict(original.state))
    assert call("get", "dst", sub.id, namespace="sub").state == sub.state
    assert [w.value for w in call("get_writes", "dst", [main[-1].id])[main[-1].id]] == ["w"]
    assert len(call("list", "src")) == 30  # the source is untouched
    # The copy lives on by itself.
    call("delete_thread", "src")
    assert call("get", "dst").state == main[-1].state


@pytest.fixture
def small_chains(saver: BaseSaver) -> BaseSaver:
    saver.policy = KeyframePolicy(max_chain=6)
    return saver


def test_delete_checkpoints_keeps_chains_readable(call: Call, small_chains: BaseSaver) -> None:
    cps = chat(call, "d", 40)
    for cp in cps:
        call("put_writes", "d", cp.id, [PendingWrite("t", 0, "turn", cp.step)])
    doomed = [cps[i].id for i in (0, 1, 5, 6, 7, 20, 33)]
    call("delete_checkpoints", "d", doomed)
    small_chains._cache.clear()
    listed = call("list", "d")
    survivors = [cp for cp in cps if cp.id not in doomed]
    assert [c.id for c in listed] == [c.id for c in reversed(survivors)]
    for cp in survivors:
        small_chains._cache.clear()
        assert_same(dict(call("get", "d", cp.id).state), dict(cp.state))
        assert call("get_writes", "d", [cp.id])[cp.id][0].value == cp.step
    for checkpoint_id in doomed:
        assert call("get", "d", checkpoint_id) is None
        assert call("get_writes", "d", [checkpoint_id])[checkpoint_id] == []
    # Later puts still extend the history.
    nxt = call("put", Checkpoint("d", {"messages": [], "turn": 99}))
    assert nxt.parent_id == cps[-1].id


def test_interrupted_delete_checkpoints_leaves_chains_readable(
    call: Call, small_chains: BaseSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    cps = chat(call, "d", 25)
    doomed = [cps[i].id for i in (0, 3, 4)]

    def fail(*args: Any) -> None:
        raise RuntimeError("connection lost")

    monkeypatch.setattr(small_chains, "_delete_checkpoints", fail)
    with pytest.raises(RuntimeError):
        call("delete_checkpoints", "d", doomed)
    monkeypatch.undo()
    for cp in cps:  # every record rewritten so far still decodes, cold
        small_chains._cache.clear()
        assert_same(dict(call("get", "d", cp.id).state), dict(cp.state))
    call("delete_checkpoints", "d", doomed)
    small_chains._cache.clear()
    assert [c.id for c in call("list", "d")] == [
        c.id for c in reversed(cps) if c.id not in doomed]
