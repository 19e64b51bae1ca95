"""The in-memory index of one thread file, rebuilt from a scan of frame heads and envelopes
(payloads are skipped) and extended by scanning only what was appended since. Pure code:
it is fed frames, it does no IO."""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ..base import StoredCheckpoint, StoredWrite
from . import _format as fmt

__all__ = ["Entry", "Index", "Space", "WriteEntry"]


@dataclass(slots=True)
class Entry:
    """A CHECKPOINT frame: the checkpoint as stored (``record`` empty) and where its
    payload is."""

    stored: StoredCheckpoint
    offset: int  # of the frame
    size: int  # of the whole frame
    payload_at: int
    payload_len: int
    payload_crc: int


@dataclass(slots=True)
class WriteEntry:
    """A WRITE frame: the pending write (``record`` empty) and where its payload is."""

    write: StoredWrite
    offset: int
    size: int
    payload_at: int
    payload_len: int
    payload_crc: int


@dataclass
class Space:
    """The live checkpoints of one namespace: by id, ids sorted (newest last), seqs, the
    head (highest seq), chain groups, the newest creation time of each chain, and pending
    writes per checkpoint."""

    by_id: dict[str, Entry] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    seqs: dict[int, str] = field(default_factory=dict)
    head: str | None = None
    chains: dict[str, list[str]] = field(default_factory=dict)
    chain_newest: dict[str, dt.datetime] = field(default_factory=dict)
    writes: dict[str, dict[tuple[str, int], WriteEntry]] = field(default_factory=dict)

    def add(self, entry: Entry) -> int:
        """Add or replace a checkpoint; returns the bytes of the frame it replaced."""
        stored = entry.stored
        old = self.by_id.get(stored.id)
        replaced = 0
        if old is not None:
            replaced = old.size
            self._unlink(old.stored)
        self.by_id[stored.id] = entry
        if not self.ids or self.ids[-1] < stored.id:  # the usual case: newest last
            self.ids.append(stored.id)
        else:
            self.ids.insert(bisect.bisect_left(self.ids, stored.id), stored.id)
        self.seqs[stored.seq] = stored.id
        self.chains.setdefault(stored.keyframe_id, []).append(stored.id)
        newest = self.chain_newest.get(stored.keyframe_id)
        if newest is None or stored.created_at > newest:
            self.chain_newest[stored.keyframe_id] = stored.created_at
        if self.head is None or stored.seq > self.by_id[self.head].stored.seq:
            self.head = stored.id
        elif old is not None and self.head == stored.id:
            self._new_head()
        return replaced

    def _unlink(self, stored: StoredCheckpoint) -> None:
        del self.by_id[stored.id]
        index = bisect.bisect_left(self.ids, stored.id)
        if index < len(self.ids) and self.ids[index] == stored.id:
            del self.ids[index]
        if self.seqs.get(stored.seq) == stored.id:
            del self.seqs[stored.seq]
        members = self.chains.get(stored.keyframe_id)
        if members is not None:
            members.remove(stored.id)
            if not members:
                del self.chains[stored.keyframe_id]
                self.chain_newest.pop(stored.keyframe_id, None)

    def _new_head(self) -> None:
        self.head = self.seqs[max(self.seqs)] if self.seqs else None

    def add_write(self, entry: WriteEntry) -> int:
        write = entry.write
        slot = self.writes.setdefault(write.checkpoint_id, {})
        old = slot.get((write.task_id, write.index))
        slot[(write.task_id, write.index)] = entry
        return old.size if old is not None else 0

    def entries(self) -> list[Entry]:
        return list(self.by_id.values())


@dataclass
class Index:
    """Everything a thread file holds, as of its first ``end`` bytes.

    ``spaces`` are the live run per namespace; ``versions`` the released runs;
    ``dead`` the bytes of frames later ones replaced (or writes a release dropped), which
    a compaction reclaims; ``damage`` the frames whose envelope failed its checksum or
    whose head is unreadable with valid frames after it (offset, reason, checkpoint id
    when it can be guessed).
    """

    thread_id: str
    header_size: int
    end: int
    spaces: dict[str, Space] = field(default_factory=dict)
    versions: dict[int, list[Entry]] = field(default_factory=dict)
    release_frames: int = 0
    dead: int = 0
    damage: list[tuple[int, str, str | None]] = field(default_factory=list)

    def apply(self, head: fmt.Frame, fields: list[Any], offset: int) -> None:
        """Apply one verified frame found at ``offset``."""
        payload_at = offset + fmt.FRAME + head.env_len
        if head.kind == fmt.CHECKPOINT:
            self.add(fmt.parse_checkpoint(self.thread_id, fields), offset, head.size,
                     payload_at, head.payload_len, head.payload_crc)
            return
        if head.kind == fmt.WRITE:
            self.add(fmt.parse_write(self.thread_id, fields), offset, head.size, payload_at,
                     head.payload_len, head.payload_crc)
            return
        if head.kind == fmt.RELEASE:
            if len(fields) != 1 or not isinstance(fields[0], int) or fields[0] < 1:
                raise fmt.FormatError("a release envelope is malformed")
            self.release(fields[0], offset, head.size)
            return
        raise fmt.FormatError(f"frame kind {head.kind} does not belong in a thread file")

    def release(self, version: int, offset: int, size: int) -> None:
        """The RELEASE frame of ``version`` at ``offset``: the live run becomes that
        version, and its pending writes dead bytes."""
        items = [entry for space in self.spaces.values() for entry in space.entries()]
        self.versions.setdefault(version, []).extend(items)
        self.dead += sum(w.size for space in self.spaces.values()
                         for slot in space.writes.values() for w in slot.values())
        self.release_frames += 1
        self.spaces.clear()
        self.end = offset + size

    def add(self, item: StoredCheckpoint | StoredWrite, offset: int, size: int,
            payload_at: int, payload_len: int, payload_crc: int) -> None:
        """Add the checkpoint or pending write of a frame at ``offset`` (``record`` empty:
        what a scan of its envelope gives, or what its writer had in hand)."""
        if isinstance(item, StoredCheckpoint):
            entry = Entry(item, offset, size, payload_at, payload_len, payload_crc)
            self.dead += self.spaces.setdefault(item.namespace, Space()).add(entry)
        else:
            wentry = WriteEntry(item, offset, size, payload_at, payload_len, payload_crc)
            self.dead += self.spaces.setdefault(item.namespace, Space()).add_write(wentry)
        self.end = offset + size

    def space(self, namespace: str) -> Space | None:
        return self.spaces.get(namespace)

    def has_live(self) -> bool:
        return any(space.by_id for space in self.spaces.values())

    def live_entries(self) -> list[Entry]:
        return [entry for space in self.spaces.values() for entry in space.by_id.values()]

    def live_writes(self) -> list[WriteEntry]:
        return [w for space in self.spaces.values() for slot in space.writes.values()
                for w in slot.values()]

    def delete(self, namespace: str, ids: set[str]) -> None:
        """Forget checkpoints (and their writes) of a namespace: what a compaction that
        drops them leaves (the caller rescans the new file anyway)."""
        space = self.spaces.get(namespace)
        if space is None:
            return
        for checkpoint_id in ids:
            entry = space.by_id.get(checkpoint_id)
            if entry is not None:
                space._unlink(entry.stored)
            space.writes.pop(checkpoint_id, None)
        space._new_head()
