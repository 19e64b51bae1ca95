"""Checkpoint ids: time-ordered text, unique across threads, never behind a parent's id."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from savegame.savers import Checkpoint, MemorySaver
from savegame.savers.checkpoint import new_checkpoint_id


def future_id(ms_ahead: int) -> str:
    now = uuid.UUID(new_checkpoint_id()).int >> 80
    value = ((now + ms_ahead) << 80) | (0x7 << 76) | (5 << 64) | (0b10 << 62) | 42
    return str(uuid.UUID(int=value))


def test_ids_increase_and_are_unique_across_threads() -> None:
    def batch(_: int) -> list[str]:
        return [new_checkpoint_id() for _ in range(2000)]

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(batch, range(8)))
    for ids in batches:
        assert ids == sorted(ids)
    everything = [i for ids in batches for i in ids]
    assert len(set(everything)) == len(everything)
    assert all(uuid.UUID(i).version == 7 for i in everything)


def test_id_after_a_future_id_sorts_after_it() -> None:
    ahead = future_id(60_000)  # another process whose clock runs a minute ahead
    assert new_checkpoint_id(ahead) > ahead
    assert new_checkpoint_id() > ahead  # and the clock stays ahead afterwards
    assert new_checkpoint_id("not-a-uuid") > ahead  # foreign ids are simply ignored


def test_child_of_a_skewed_parent_is_the_latest() -> None:
    saver = MemorySaver()
    parent = saver.put(Checkpoint("t", {"n": 1}, id=future_id(3_600_000)))
    child = saver.put(Checkpoint("t", {"n": 2}))
    assert child.parent_id == parent.id and child.id is not None and parent.id is not None
    assert child.id > parent.id
    latest = saver.get("t")
    assert latest is not None and latest.id == child.id
