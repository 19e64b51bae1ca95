"""Checkpoint ids: time-ordered text, unique across threads, never behind a parent's id."""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor

from savegame.savers import Checkpoint, MemorySaver
from savegame.savers.checkpoint import id_time, new_checkpoint_id

UTC = dt.timezone.utc


def uuid7_at(when: dt.datetime) -> str:
    ms = (when - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)
    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62) | 99))


def uuid6_at(when: dt.datetime) -> str:
    """A UUIDv6 as LangGraph makes them: 100-ns ticks since 1582-10-15, high bits first."""
    ticks = (when - dt.datetime(1582, 10, 15, tzinfo=UTC)) // dt.timedelta(microseconds=1) * 10
    ticks += 7  # below a microsecond
    value = ((ticks >> 12) << 80) | (0x6 << 76) | ((ticks & 0xFFF) << 64) | (0b10 << 62) | 5
    return str(uuid.UUID(int=value))


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


def test_id_time_reads_uuid7_and_uuid6_to_the_millisecond() -> None:
    when = dt.datetime(2026, 12, 7, 6, 25, 35, 846377, tzinfo=UTC)
    assert uuid.UUID(uuid6_at(when)).version == 6
    assert id_time(uuid7_at(when)) == id_time(uuid6_at(when)) == when.replace(microsecond=846000)
    assert id_time(new_checkpoint_id()) is not None
    for other in (str(uuid.uuid4()), str(uuid.uuid1()), "not-a-uuid", "", "x" * 36):
        assert id_time(other) is None


def test_created_at_is_the_time_a_fresh_id_states() -> None:
    """A time-ordered id made within the last minute (savegame's own, LangGraph's UUIDv6)
    gives the checkpoint its created_at, so a store may leave the time out; any other id
    gets the time of the put."""
    saver = MemorySaver()
    now = dt.datetime.now(UTC)
    fresh = saver.put(Checkpoint("a", {"n": 1}, id=uuid6_at(now - dt.timedelta(seconds=2))))
    assert fresh.created_at == id_time(fresh.id or "")
    recent = saver.put(Checkpoint("b", {"n": 1}, id=uuid7_at(now - dt.timedelta(seconds=30))))
    assert recent.created_at == id_time(recent.id or "")
    for stale in (uuid7_at(now - dt.timedelta(hours=1)), uuid7_at(now + dt.timedelta(hours=1)),
                  "plain"):
        put = saver.put(Checkpoint(stale, {"n": 1}, id=stale))
        assert put.created_at != id_time(stale)
        assert abs(put.created_at - now) < dt.timedelta(seconds=5)
