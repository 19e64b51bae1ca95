"""Store maintenance over any saver: verify records, measure storage, copy between stores.

All three work on records as stored (``BaseSaver.read_records``), so they see exactly
what a backend holds, chunks joined, and never need the types a state names: ``verify``
decodes every record (checksums, delta chains, zstd content checksums, the state hash)
and parses the state's msgpack without building any object.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import codec
from .base import (
    BaseSaver,
    StoredCheckpoint,
    StoredWrite,
    _copy_sources,
    _location,
    _write_location,
)
from .errors import CorruptCheckpointError, SavegameError

__all__ = [
    "CopyResult",
    "Problem",
    "ThreadStats",
    "copy_thread",
    "merge_thread",
    "thread_stats",
    "verify_records",
    "verify_thread",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with one checkpoint (or one pending write of it).

    ``kind``: ``"corrupt"`` (its own record fails: checksum, header, payload),
    ``"chain"`` (its record is sound but a record it is decoded from is corrupt or
    missing), ``"envelope"`` (stored fields disagree with the record or each other),
    ``"write"`` (a pending write's record fails), ``"unreadable"`` (the store could not
    hand the record over, e.g. missing chunks).
    """

    thread_id: str
    namespace: str
    checkpoint_id: str | None
    kind: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify_thread(saver: BaseSaver, thread_id: str) -> tuple[int, int, list[Problem]]:
    """``(checkpoints, writes, problems)`` of one thread: see :func:`verify_records`."""
    try:
        checkpoints, writes = saver.read_records(thread_id)
    except CorruptCheckpointError as exc:
        return 0, 0, [Problem(thread_id, exc.namespace or "", exc.checkpoint_id,
                              "unreadable", str(exc))]
    return len(checkpoints), len(writes), verify_records(saver, checkpoints, writes)


def verify_records(
    saver: BaseSaver, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite]
) -> list[Problem]:
    """Every problem of one thread's records: each record's header and checksum on its
    own, then every state decoded from its keyframe through its delta chain (zstd's
    content checksum and the recorded BLAKE2b hash of the state must both hold), its
    msgpack parsed, the envelope (depth, base, keyframe label, seq) checked against the
    record, and every pending write decoded. A checkpoint whose own record is fine but
    whose chain goes through a bad record is reported as ``"chain"``."""
    problems: list[Problem] = []
    spaces: dict[str, dict[str, StoredCheckpoint]] = defaultdict(dict)
    for item in checkpoints:
        spaces[item.namespace][item.id] = item
    copies: dict[str, set[str]] = defaultdict(set)  # checkpoints writes are copies of
    for namespace, checkpoint_id in _copy_sources(writes):
        copies[namespace].add(checkpoint_id)
    states: dict[tuple[str, str], bytes] = {}
    for namespace, lookup in spaces.items():
        problems.extend(_verify_space(saver, namespace, lookup, copies[namespace], states))
    for write in writes:
        where = _write_location(write)
        try:
            raw = codec.decode_write(write.record,
                                     states.get((write.namespace, write.checkpoint_id)), where)
            _parse(raw)
        except (codec.RecordError, ValueError) as exc:
            problems.append(Problem(write.thread_id, write.namespace, write.checkpoint_id,
                                    "write", f"pending write ({write.task_id!r}, "
                                    f"{write.index}): {exc}"))
    return problems


def _parse(raw: bytes) -> None:
    """Parse serialized state as msgpack, extensions left as bytes (no object is built)."""
    try:
        msgpack.unpackb(raw, strict_map_key=False, raw=False,
                        ext_hook=lambda code, data: None)
    except Exception as exc:
        raise ValueError(f"the state bytes are not valid msgpack: {exc}") from None


def _verify_space(
    saver: BaseSaver, namespace: str, lookup: Mapping[str, StoredCheckpoint],
    keep: set[str], states: dict[tuple[str, str], bytes],
) -> list[Problem]:
    """The problems of one namespace's checkpoints; the decoded states of those in
    ``keep`` (pending writes are copies of them) go into ``states``."""
    problems: list[Problem] = []
    bad: set[str] = set()
    headers: dict[str, codec.RecordHeader] = {}

    def report(item: StoredCheckpoint, kind: str, message: str) -> None:
        if item.id not in bad:
            bad.add(item.id)
            problems.append(Problem(item.thread_id, namespace, item.id, kind, message))

    for item in lookup.values():
        try:
            headers[item.id] = codec.read_header(item.record, 0, _location(item))
        except codec.RecordError as exc:
            report(item, "corrupt", str(exc))
    seqs = Counter(item.seq for item in lookup.values() if item.seq)
    for item in lookup.values():
        header = headers.get(item.id)
        if header is None:
            continue
        if header.depth != item.depth:
            report(item, "envelope", f"stored depth {item.depth} but the record says "
                                     f"{header.depth}")
        elif header.is_keyframe != (item.base_id is None):
            report(item, "envelope", "the record's kind (keyframe/delta) disagrees with "
                                     "its stored base")
        elif item.base_id is not None:
            base = lookup.get(item.base_id)
            if base is None:
                report(item, "chain", f"its base record {item.base_id!r} is missing")
            elif header.kind == codec.REVERSE:
                if base.depth != 1 or base.seq <= item.seq:
                    report(item, "envelope", f"its base {base.id!r} is not a newer master")
            elif base.keyframe_id != item.keyframe_id:
                report(item, "envelope", f"its base {base.id!r} is in another chain group")
        elif item.keyframe_id != item.id and item.keyframe_id not in lookup:
            pass  # a keyframe rewritten by delete_checkpoints keeps its group label
        if item.seq and seqs[item.seq] > 1:
            report(item, "envelope", f"seq {item.seq} is held by {seqs[item.seq]} checkpoints")
    # decode chain groups in depth order, one group's states in memory at a time
    groups: dict[str, list[StoredCheckpoint]] = defaultdict(list)
    for item in lookup.values():
        groups[item.keyframe_id].append(item)
    for members in groups.values():
        memo: dict[str, bytes] = {}
        for item in sorted(members, key=lambda i: (i.depth, i.id)):
            if item.id in bad:
                continue
            chain_bad = _bad_ancestor(item, lookup, bad)
            if chain_bad is not None:
                report(item, "chain", f"it is decoded from record {chain_bad!r}, which is "
                                      "corrupt or missing")
                continue
            try:
                raw = memo.get(item.id) or saver._decode(item, lookup, memo)
            except CorruptCheckpointError as exc:
                report(item, "corrupt", str(exc))
                continue
            header = headers[item.id]
            if codec.content_hash(raw, header) != header.raw_hash:
                report(item, "corrupt", "the decoded state does not match its recorded hash")
                continue
            try:
                _parse(raw)
            except ValueError as exc:
                report(item, "corrupt", str(exc))
                continue
            if item.id in keep:
                states[namespace, item.id] = raw
    return problems


def _bad_ancestor(
    item: StoredCheckpoint, lookup: Mapping[str, StoredCheckpoint], bad: set[str]
) -> str | None:
    current = item
    seen = {item.id}
    while current.base_id is not None:  # forward links, then reverse ones to the newest
        if current.base_id in bad or current.base_id not in lookup:
            return current.base_id
        current = lookup[current.base_id]
        if current.id in seen:
            return current.id  # a loop
        seen.add(current.id)
    return None


@dataclass
class ThreadStats:
    """Storage of one thread, from record headers (nothing decompressed)."""

    thread_id: str
    checkpoints: int = 0
    writes: int = 0
    namespaces: int = 0
    keyframes: int = 0
    deltas: int = 0
    stored_bytes: int = 0  # record bytes of checkpoints
    raw_bytes: int = 0  # serialized state bytes they stand for
    keyframe_stored: int = 0
    keyframe_raw: int = 0
    delta_stored: int = 0
    delta_raw: int = 0
    write_bytes: int = 0
    unreadable: int = 0
    last_update: Any = None
    nodes: Counter[str] = field(default_factory=Counter)

    def add(self, other: ThreadStats) -> None:
        for name in ("checkpoints", "writes", "namespaces", "keyframes", "deltas",
                     "stored_bytes", "raw_bytes", "keyframe_stored", "keyframe_raw",
                     "delta_stored", "delta_raw", "write_bytes", "unreadable"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.last_update is not None and (self.last_update is None
                                              or other.last_update > self.last_update):
            self.last_update = other.last_update


def thread_stats(
    thread_id: str, checkpoints: Iterable[StoredCheckpoint], writes: Iterable[StoredWrite]
) -> ThreadStats:
    stats = ThreadStats(thread_id)
    namespaces = set()
    for item in checkpoints:
        stats.checkpoints += 1
        namespaces.add(item.namespace)
        stats.stored_bytes += len(item.record)
        if stats.last_update is None or item.created_at > stats.last_update:
            stats.last_update = item.created_at
        try:
            header = codec.read_header(item.record, 0, _location(item))
        except codec.RecordError:
            stats.unreadable += 1
            continue
        stats.raw_bytes += header.raw_len
        if header.is_keyframe:
            stats.keyframes += 1
            stats.keyframe_stored += len(item.record)
            stats.keyframe_raw += header.raw_len
        else:
            stats.deltas += 1
            stats.delta_stored += len(item.record)
            stats.delta_raw += header.raw_len
    for write in writes:
        stats.writes += 1
        stats.write_bytes += len(write.record)
    stats.namespaces = len(namespaces)
    return stats


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What copying one thread did: checkpoints and writes written, and those the target
    already held (a re-run after an interruption writes only what is missing)."""

    thread_id: str
    copied: int
    present: int
    writes_copied: int
    writes_present: int


class CopyConflictError(SavegameError):
    """The target already holds the thread with checkpoints the source does not have."""


def copy_thread(
    source: BaseSaver,
    target: BaseSaver,
    thread_id: str,
    *,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> CopyResult:
    """Copy one thread (all namespaces, records as stored) from ``source`` to ``target``.

    Resumable and idempotent: what the target already holds (same id, same record) is
    skipped, so re-running after an interruption neither duplicates nor skips anything.
    Records are written in append order (seq) in batches of ``batch``, each thread's
    newest checkpoints last. A target thread holding a checkpoint the source lacks, or
    the same id with other content, raises :class:`CopyConflictError` naming it and
    writes nothing. ``progress(n)`` is called as checkpoints are handled.
    """
    checkpoints, writes = source.read_records(thread_id)
    return merge_thread(target, thread_id, checkpoints, writes, batch=batch,
                        progress=progress)


def merge_thread(
    target: BaseSaver,
    thread_id: str,
    checkpoints: Sequence[StoredCheckpoint],
    writes: Sequence[StoredWrite],
    *,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> CopyResult:
    """Write one thread's records (from another store or an archive) into ``target``,
    skipping what it already holds and refusing a conflicting thread: see
    :func:`copy_thread`."""
    have, have_writes = target.read_records(thread_id)
    wanted = {(item.namespace, item.id): item for item in checkpoints}
    for item in have:
        mine = wanted.get((item.namespace, item.id))
        if mine is None or bytes(mine.record) != bytes(item.record) or mine.seq != item.seq:
            raise CopyConflictError(
                f"thread {thread_id!r} already exists in the target with other content "
                f"(checkpoint {item.id!r}, namespace {item.namespace!r}); delete it there "
                "first or copy to another store")
    present = {(item.namespace, item.id) for item in have}
    missing = sorted((item for key, item in wanted.items() if key not in present),
                     key=lambda item: (item.seq, item.id))
    write_keys = {_write_key(w) for w in have_writes}
    missing_writes = [w for w in writes if _write_key(w) not in write_keys]
    if progress is not None and present:
        progress(len(present))
    for start in range(0, len(missing), max(1, batch)):
        chunk = missing[start:start + batch]
        last = start + batch >= len(missing)
        target.write_records(chunk, missing_writes if last else ())
        if progress is not None:
            progress(len(chunk))
    if not missing and missing_writes:
        target.write_records((), missing_writes)
    return CopyResult(thread_id, len(missing), len(present), len(missing_writes),
                      len(writes) - len(missing_writes))


def _write_key(write: StoredWrite) -> tuple[str, str, str, int]:
    return write.namespace, write.checkpoint_id, write.task_id, write.index
