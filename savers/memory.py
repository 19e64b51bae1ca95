"""In-process savers: checkpoints kept as encoded records in dictionaries."""

from __future__ import annotations

import bisect
import contextlib
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .base import HEAD_MOVED, BaseSaver, StoredCheckpoint, StoredWrite

__all__ = ["MemorySaver", "VersionedMemorySaver"]

_M = TypeVar("_M", bound="MemorySaver")
#: ``memory://NAME`` stores of this process, by (class, name)
_named: dict[tuple[type, str], Any] = {}
_named_lock = threading.Lock()


@dataclass
class _Space:
    """The checkpoints of one (thread, namespace), with ids kept sorted (newest last) and
    the id of each seq (the latest is the highest seq)."""

    ids: list[str] = field(default_factory=list)
    items: dict[str, StoredCheckpoint] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)
    seqs: dict[int, str] = field(default_factory=dict)
    head: str | None = None
    # checkpoint id -> (task_id, index) -> write
    writes: dict[str, dict[tuple[str, int], StoredWrite]] = field(default_factory=dict)


class MemorySaver(BaseSaver):
    """Checkpoints in process memory, delta-encoded and compressed like every saver.

    Safe to share between threads and asyncio tasks: every operation holds one lock, and no
    operation awaits while holding it. ``release`` drops the thread's run.
    """

    _trust_seconds = float("inf")  # nothing outside this process changes what it holds

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._threads: dict[str, dict[str, _Space]] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_uri(cls: type[_M], uri: str, **options: Any) -> _M:
        """The store ``memory://NAME`` names: one saver per name in this process, created
        with ``options`` on first open (a later open with options is refused, as they would
        be ignored); ``memory://`` alone is a new anonymous store. ``?load=PATH`` imports an
        export archive into it (``savegame.savers.archive``), e.g. to inspect a backup with
        the ``savegame`` command: ``savegame ls -s 'memory://?load=backup.sgar'``."""
        parts = urllib.parse.urlsplit(uri)
        name = urllib.parse.unquote(parts.netloc + parts.path.rstrip("/"))
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"load"}
        if unknown:
            raise ValueError(f"unknown memory:// URI parameter(s): {', '.join(sorted(unknown))}")
        if not name:
            saver = cls(**options)
        else:
            with _named_lock:
                existing = _named.get((cls, name))
                if existing is not None and options:
                    raise ValueError(f"memory://{name} is already open in this process; "
                                     "options apply only when a named store is created")
                saver = existing if existing is not None else cls(**options)
                _named[(cls, name)] = saver
        for path in query.get("load", []):
            from .archive import load_archive

            load_archive(saver, path)
        return saver

    def _guard(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock

    def storage_details(self) -> dict[str, Any]:
        """What the store holds, for ``savegame stats``."""
        with self._lock:
            spaces = [space for spaces in self._threads.values() for space in spaces.values()]
            return {
                "backend": "memory",
                "threads": sum(1 for spaces in self._threads.values()
                               if any(s.ids for s in spaces.values())),
                "checkpoints": sum(len(space.items) for space in spaces),
                "pending writes": sum(len(ws) for space in spaces
                                      for ws in space.writes.values()),
                "record bytes": self.storage_bytes(),
            }

    def storage_bytes(self) -> int:
        """Bytes of encoded records held (the stored payload, without Python overhead)."""
        with self._lock:
            return sum(
                sum(len(item.record) for item in space.items.values())
                + sum(len(w.record) for ws in space.writes.values() for w in ws.values())
                for spaces in self._threads.values()
                for space in spaces.values()
            )

    # -- primitives ------------------------------------------------------------------
    def _space(self, thread_id: str, namespace: str) -> _Space | None:
        return self._threads.get(thread_id, {}).get(namespace)

    def _read(self, thread_id: str, namespace: str, checkpoint_id: str) -> StoredCheckpoint | None:
        with self._lock:
            space = self._space(thread_id, namespace)
            return None if space is None else space.items.get(checkpoint_id)

    def _read_latest(self, thread_id: str, namespace: str) -> StoredCheckpoint | None:
        with self._lock:
            space = self._space(thread_id, namespace)
            return None if space is None or space.head is None else space.items[space.head]

    def _read_chains(
        self, thread_id: str, namespace: str, keyframe_ids: Sequence[str]
    ) -> list[StoredCheckpoint]:
        return self._pick(thread_id, namespace,
                          lambda space: [i for k in keyframe_ids for i in space.chains.get(k, ())])

    def _read_many(
        self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
    ) -> list[StoredCheckpoint]:
        return self._pick(thread_id, namespace,
                          lambda space: [i for i in checkpoint_ids if i in space.items])

    def _pick(self, thread_id: str, namespace: str,
              ids: Callable[[_Space], list[str]]) -> list[StoredCheckpoint]:
        """The stored checkpoints whose ids ``ids`` picks from the space's indexes."""
        with self._lock:
            space = self._space(thread_id, namespace)
            return [] if space is None else [space.items[i] for i in ids(space)]

    def _insert(self, stored: StoredCheckpoint) -> Any:
        with self._lock:
            spaces = self._threads.setdefault(stored.thread_id, {})
            space = spaces.setdefault(stored.namespace, _Space())
            existing = space.items.get(stored.id)
            if existing is not None:
                return existing
            if stored.seq in space.seqs or (stored.parent_id is not None
                                            and stored.parent_id not in space.items):
                return HEAD_MOVED
            self._store(space, stored)
            return None

    def _store(self, space: _Space, stored: StoredCheckpoint) -> None:
        with self._lock:
            space.items[stored.id] = stored
            space.seqs[stored.seq] = stored.id
            bisect.insort(space.ids, stored.id)
            space.chains.setdefault(stored.keyframe_id, []).append(stored.id)
            if space.head is None or stored.seq > space.items[space.head].seq:
                space.head = stored.id

    def _list(
        self,
        thread_id: str,
        namespace: str,
        before: str | None,
        limit: int | None,
        metadata: Mapping[str, Any] | None,
    ) -> list[StoredCheckpoint]:
        with self._lock:
            space = self._space(thread_id, namespace)
            if space is None:
                return []
            end = len(space.ids) if before is None else bisect.bisect_left(space.ids, before)
            out: list[StoredCheckpoint] = []
            for index in range(end - 1, -1, -1):
                item = space.items[space.ids[index]]
                if metadata and any(
                    key not in item.metadata or not _same_json(item.metadata[key], value)
                    for key, value in metadata.items()
                ):
                    continue
                out.append(item)
                if limit is not None and len(out) >= limit:
                    break
            return out

    def _insert_writes(self, writes: Sequence[StoredWrite], replace: bool) -> None:
        with self._lock:
            for write in writes:
                spaces = self._threads.setdefault(write.thread_id, {})
                space = spaces.setdefault(write.namespace, _Space())
                slot = space.writes.setdefault(write.checkpoint_id, {})
                key = (write.task_id, write.index)
                if replace or key not in slot:
                    slot[key] = write

    def _read_writes(
        self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
    ) -> list[StoredWrite]:
        with self._lock:
            space = self._space(thread_id, namespace)
            if space is None:
                return []
            return [w for i in checkpoint_ids for w in space.writes.get(i, {}).values()]

    def _list_threads(self, prefix: str) -> list[str]:
        with self._lock:
            return [t for t, spaces in self._threads.items()
                    if t.startswith(prefix) and any(s.ids for s in spaces.values())]

    def _list_namespaces(self, thread_id: str) -> list[str]:
        with self._lock:
            return [ns for ns, space in self._threads.get(thread_id, {}).items() if space.ids]

    def _read_thread(self, thread_id: str) -> tuple[list[StoredCheckpoint], list[StoredWrite]]:
        with self._lock:
            spaces = self._threads.get(thread_id, {}).values()
            return (
                [item for space in spaces for item in space.items.values()],
                [w for space in spaces for ws in space.writes.values() for w in ws.values()],
            )

    def _copy_in(
        self, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite]
    ) -> None:
        with self._lock:
            for item in checkpoints:  # parents may come after their children
                space = self._threads.setdefault(item.thread_id, {}).setdefault(
                    item.namespace, _Space())
                if item.id not in space.items and item.seq not in space.seqs:
                    self._store(space, item)
            self._insert_writes(writes, False)

    def _replace(self, stored: StoredCheckpoint) -> None:
        with self._lock:
            space = self._space(stored.thread_id, stored.namespace)
            if space is None or stored.id not in space.items:
                raise KeyError(f"checkpoint {stored.id!r} vanished while being rewritten")
            old = space.items[stored.id]
            space.items[stored.id] = stored
            if old.keyframe_id != stored.keyframe_id:
                space.chains[old.keyframe_id].remove(stored.id)
                space.chains.setdefault(stored.keyframe_id, []).append(stored.id)

    def _delete_checkpoints(self, thread_id: str, namespace: str, ids: Sequence[str]) -> None:
        with self._lock:
            space = self._space(thread_id, namespace)
            if space is None:
                return
            for checkpoint_id in ids:
                item = space.items.pop(checkpoint_id, None)
                space.writes.pop(checkpoint_id, None)
                if item is None:
                    continue
                space.ids.remove(checkpoint_id)
                del space.seqs[item.seq]
                members = space.chains[item.keyframe_id]
                members.remove(checkpoint_id)
                if not members:
                    del space.chains[item.keyframe_id]
            if space.head not in space.items:
                space.head = space.seqs[max(space.seqs)] if space.seqs else None

    def _take_thread(self, thread_id: str) -> list[StoredCheckpoint]:
        spaces = self._threads.pop(thread_id, {})
        return [item for space in spaces.values() for item in space.items.values()]

    def _delete_thread(self, thread_id: str) -> None:
        with self._lock:
            self._take_thread(thread_id)

    def _archive(self, thread_id: str) -> tuple[int | None, list[StoredCheckpoint]]:
        with self._lock:
            return None, self._take_thread(thread_id)

    def _versions(self, thread_id: str) -> list[int]:
        return []

    def _read_version(self, thread_id: str, version: int) -> list[StoredCheckpoint] | None:
        return None


def _same_json(a: Any, b: Any) -> bool:
    """Equality of JSON-like values as MongoDB filters see it: ``True`` is not ``1`` (bools
    are not numbers) while ``1 == 1.0``; lists and dicts compare member by member."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b
    if isinstance(a, list) or isinstance(b, list):
        return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                and all(_same_json(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_same_json(a[key], b[key]) for key in a))
    return type(a) is type(b) and bool(a == b)


class VersionedMemorySaver(MemorySaver):
    """A MemorySaver whose ``release`` archives the run as version 1, 2, 3... which stays
    readable through ``versions`` and ``get_version``; the thread id starts afresh."""

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._released: dict[str, dict[int, list[StoredCheckpoint]]] = {}

    def storage_bytes(self) -> int:
        with self._lock:
            archived = sum(
                len(item.record)
                for runs in self._released.values()
                for items in runs.values()
                for item in items
            )
        return super().storage_bytes() + archived

    def _delete_thread(self, thread_id: str) -> None:
        with self._lock:
            self._take_thread(thread_id)
            self._released.pop(thread_id, None)

    def _archive(self, thread_id: str) -> tuple[int | None, list[StoredCheckpoint]]:
        with self._lock:
            items = self._take_thread(thread_id)
            if not items:
                return None, []  # nothing ran since the last release: no empty version
            runs = self._released.setdefault(thread_id, {})
            version = max(runs, default=0) + 1
            runs[version] = items
            return version, items

    def _versions(self, thread_id: str) -> list[int]:
        with self._lock:
            return list(self._released.get(thread_id, {}))

    def _read_version(self, thread_id: str, version: int) -> list[StoredCheckpoint] | None:
        with self._lock:
            return self._released.get(thread_id, {}).get(version)
