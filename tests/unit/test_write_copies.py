"""Pending writes stored as copies of their checkpoint's state: a write racing the put of
its checkpoint waits for it, a state read for writes is read once, and ``verify`` checks
copies against the states they copy (and reports one whose state is gone)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from savegame.savers import Checkpoint, CorruptCheckpointError, MemorySaver, codec
from savegame.savers.base import _write_location
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.maintenance import verify_records

TEXT = "the input every node passes on, " * 20


class SlowPuts(MemorySaver):
    """A store whose inserts take a while, as a remote one's do."""

    def __init__(self) -> None:
        super().__init__()
        self.inserting = threading.Event()
        self.reads: list[str] = []

    def _insert(self, stored: Any) -> Any:
        self.inserting.set()
        time.sleep(0.3)
        return super()._insert(stored)

    def _read_many(self, thread_id: str, namespace: str, ids: Any) -> Any:
        self.reads.append("_read_many")
        return super()._read_many(thread_id, namespace, ids)


def copied(saver: MemorySaver, thread_id: str) -> dict[str, bool]:
    _, writes = saver.read_records(thread_id)
    return {w.channel: codec.write_base(w.record, _write_location(w)) is not None
            for w in writes}


def test_writes_racing_the_put_of_their_checkpoint_wait_for_it() -> None:
    """LangGraph hands a checkpoint's put and its first task's writes to its background
    threads at once: the writes wait for the put, so they can be stored as copies."""
    saver = SlowPuts()
    checkpoint = Checkpoint("t", {"input": [TEXT]}, id="00000000-0000-4000-8000-000000000001")
    putter = threading.Thread(target=saver.put, args=(checkpoint,))
    putter.start()
    assert saver.inserting.wait(5)
    saver.put_writes("t", checkpoint.id or "", [PendingWrite("task", 0, "messages", [TEXT])])
    putter.join()
    assert copied(saver, "t") == {"messages": True}
    assert saver.get_writes("t", [checkpoint.id or ""])[checkpoint.id or ""][0].value == [TEXT]


def test_states_for_writes_are_read_once_and_only_when_needed() -> None:
    saver = SlowPuts()
    ids = [saver.put(Checkpoint("t", {"input": [f"{n} {TEXT}"]})).id or "" for n in range(3)]
    for n, checkpoint_id in enumerate(ids):
        saver.put_writes("t", checkpoint_id, [PendingWrite("a", 0, "m", [f"{n} {TEXT}"]),
                                              PendingWrite("b", 0, "x", n)])
    assert copied(saver, "t") == {"m": True, "x": False}
    saver._cache.clear()
    got = saver.get_writes("t", ids)
    assert [[w.value for w in got[i]] for i in ids] == [[[f"{n} {TEXT}"], n]
                                                         for n in range(3)]
    assert saver.reads == ["_read_many"]  # one read for the three states
    saver.reads.clear()
    saver.get_writes("t", ids)  # now cached
    assert saver.reads == []


def test_verify_checks_copies_and_reports_one_whose_state_is_gone() -> None:
    saver = MemorySaver()
    first = saver.put(Checkpoint("t", {"input": [TEXT]}))
    saver.put_writes("t", first.id or "", [PendingWrite("task", 0, "messages", [TEXT])])
    checkpoints, writes = saver.read_records("t")
    assert verify_records(saver, checkpoints, writes) == []
    problems = verify_records(saver, [], writes)
    assert [(p.checkpoint_id, p.kind) for p in problems] == [(first.id, "write")]
    assert "missing" in problems[0].message


def test_a_copy_whose_checkpoint_is_gone_is_an_error_naming_it() -> None:
    """Read without the state it copies, a write is a CorruptCheckpointError naming the
    thread, checkpoint and write, never a missing or empty value; the store is unharmed."""
    source = MemorySaver()
    first = source.put(Checkpoint("t", {"input": [TEXT]}))
    source.put_writes("t", first.id or "", [PendingWrite("task", 0, "messages", [TEXT])])
    _, writes = source.read_records("t")
    orphan = MemorySaver()
    orphan.write_records([], writes)  # the write without its checkpoint
    with pytest.raises(CorruptCheckpointError) as info:
        orphan.get_writes("t", [first.id or ""])
    message = str(info.value)
    assert repr(first.id) in message and "'t'" in message and "'task'" in message
    assert "missing" in message
    assert orphan.read_records("t")[1] == writes
