"""The value types every saver speaks: ``Checkpoint`` and ``Release``."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["Checkpoint", "PendingWrite", "Release", "id_time", "new_checkpoint_id"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The state of one thread after one step.

    ``id``, ``step`` and ``created_at`` are filled in by ``put``. ``parent_id=None`` on put
    means "child of the thread's latest checkpoint"; an explicit older parent makes a fork.
    """

    thread_id: str
    state: Mapping[str, Any]
    namespace: str = ""
    id: str | None = None
    parent_id: str | None = None
    step: int | None = None
    node_id: str | None = None
    next_node_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """A closed run of a thread: ``version`` is 1, 2, 3... on versioned savers, ``None`` otherwise.

    ``checkpoints`` holds every checkpoint of the run, all namespaces, newest first.
    """

    thread_id: str
    version: int | None
    checkpoints: tuple[Checkpoint, ...]


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A value a task wrote to a channel while running from a checkpoint, kept beside that
    checkpoint until the next one (LangGraph's pending writes; any runtime may use them).

    ``(task_id, index)`` identifies a write within its checkpoint; ``task_path`` orders
    writes of nested tasks. ``value`` is any serializable value.
    """

    task_id: str
    index: int
    channel: str
    value: Any
    task_path: str = ""


class _IdClock:
    """UUIDv7 strings, strictly increasing within the process (their text sorts by time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def next(self, after: str | None = None) -> str:
        floor_ms, floor_seq = _uuid7_clock(after) if after else (0, -1)
        with self._lock:
            # Never behind the latest id seen: another process's clock may run ahead of
            # ours, and a child must sort after its parent to be the thread's latest.
            if (floor_ms, floor_seq) > (self._last_ms, self._seq):
                self._last_ms, self._seq = floor_ms, floor_seq
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                self._seq += 1
                if self._seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                    self._last_ms += 1
                    self._seq = 0
                ms = self._last_ms
            else:
                self._last_ms = ms
                self._seq = 0
            seq = self._seq
        rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
        return str(uuid.UUID(int=value))


def _uuid7_clock(text: str) -> tuple[int, int]:
    """(milliseconds, counter) of a UUIDv7 id made here; (0, -1) for any other id."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return 0, -1
    if value.version != 7:
        return 0, -1
    return value.int >> 80, (value.int >> 64) & 0xFFF


_clock = _IdClock()


def new_checkpoint_id(after: str | None = None) -> str:
    """A fresh time-ordered checkpoint id (UUIDv7 text; later ids sort after earlier ones),
    greater than ``after`` when that is a UUIDv7 id."""
    return _clock.next(after)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Milliseconds from UUIDv6's epoch (the Gregorian reform, 1582-10-15) to the Unix epoch.
_GREGORIAN_MS = 12_219_292_800_000


def id_time(checkpoint_id: str) -> datetime | None:
    """The time a time-ordered UUID states, to the millisecond: UUIDv7 (this module's ids)
    and UUIDv6 (LangGraph's); None for any other id."""
    if len(checkpoint_id) != 36:
        return None
    try:
        value = uuid.UUID(checkpoint_id)
    except ValueError:
        return None
    if value.version == 7:
        millis = value.int >> 80
    elif value.version == 6:  # 100-ns ticks: the top 48 bits, the version, the low 12
        ticks = ((value.int >> 80) << 12) | ((value.int >> 64) & 0xFFF)
        millis = ticks // 10_000 - _GREGORIAN_MS
    else:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        return None
