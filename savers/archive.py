"""Export archives: a saver's threads as one streaming, versioned, checksummed file.

Records stay encoded (compressed, delta-encoded and checksummed as the saver stored them),
so an export is about the size of the store and an import re-encodes nothing. The format
holds only msgpack maps of str, int, bytes, lists and None: no extension types, no class
or module names, nothing to unpickle or import.

Layout (format 1)::

    archive = MAGIC frame*
    MAGIC   = b"\\x89SGAR\\r\\n\\x1a"  (8 bytes; the PNG trick: a text-mode copy breaks it)
    frame   = kind:u8 | length:u32 big-endian | body:msgpack map (length bytes)
              | crc32:u32 big-endian of kind, length and body

Frame kinds, in this order: one ``H`` (header), then per thread its ``C`` (checkpoint) and
``W`` (pending write) frames followed by one ``T`` (thread end), then one ``E`` (end):

- ``H``: ``{"format": 1, "created": "<ISO 8601 UTC>", "generator": "savegame <version>"}``
- ``C``: ``{"t": thread, "ns": namespace, "id", "parent", "step", "node", "next",
  "meta": {...}, "ts": created_at in ms since the epoch, "kf": keyframe id, "base",
  "depth", "seq", "rec": record bytes}``
- ``W``: ``{"t", "ns", "cid", "task", "idx", "ch": channel, "path": task path,
  "rec": record bytes}``
- ``T``: ``{"t": thread, "checkpoints": n, "writes": n}``
- ``E``: ``{"threads": n, "checkpoints": n, "writes": n, "sha256": hex digest of every
  byte before this frame}``

Readers refuse a higher ``format``, a bad magic, a frame whose CRC fails, counts that do
not match, and a missing ``E`` frame (a truncated file); every record's own checksum binds
it to its (thread, namespace, checkpoint) and is checked again on import. Writers of a
later minor revision may add keys to a map; readers ignore keys they do not know.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgpack

from .base import BaseSaver, StoredCheckpoint, StoredWrite
from .errors import SavegameError

__all__ = [
    "ARCHIVE_FORMAT",
    "MAGIC",
    "ArchiveError",
    "ArchiveReader",
    "ArchiveWriter",
    "ThreadRecords",
    "load_archive",
]

ARCHIVE_FORMAT = 1
MAGIC = b"\x89SGAR\r\n\x1a"
_FRAME = struct.Struct(">BI")
_CRC = struct.Struct(">I")
_MAX_FRAME = 0xFFFFFFFF
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class ArchiveError(SavegameError):
    """An archive cannot be read: not an archive, a newer format, damaged or truncated."""


@dataclass
class ThreadRecords:
    """One thread of an archive: its checkpoints and pending writes, records encoded."""

    thread_id: str
    checkpoints: list[StoredCheckpoint] = field(default_factory=list)
    writes: list[StoredWrite] = field(default_factory=list)


def _generator() -> str:
    try:
        from importlib.metadata import version

        return f"savegame {version('savegame')}"
    except Exception:  # pragma: no cover - running from a source tree without metadata
        return "savegame"


class ArchiveWriter:
    """Write an archive frame by frame to a binary stream (``with`` closes it)."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self._hash = hashlib.sha256()
        self.threads = self.checkpoints = self.writes = 0
        self._closed = False
        self._raw(MAGIC)
        self._frame(b"H", {"format": ARCHIVE_FORMAT, "generator": _generator(),
                           "created": dt.datetime.now(dt.timezone.utc).isoformat()})

    @classmethod
    def open(cls, path: str | Path) -> ArchiveWriter:
        return cls(open(path, "wb"))

    def _raw(self, data: bytes) -> None:
        self._hash.update(data)
        self._stream.write(data)

    def _frame(self, kind: bytes, body: dict[str, Any]) -> None:
        payload = msgpack.packb(body, use_bin_type=True)
        if len(payload) > _MAX_FRAME:
            raise ArchiveError("a record is too large for an archive frame (4 GiB)")
        head = _FRAME.pack(kind[0], len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        self._raw(head + payload + _CRC.pack(crc))

    def write_thread(self, thread_id: str, checkpoints: Iterable[StoredCheckpoint],
                     writes: Iterable[StoredWrite]) -> None:
        """Append one thread (all namespaces) as stored."""
        count_c = count_w = 0
        for item in sorted(checkpoints, key=lambda c: (c.namespace, c.seq, c.id)):
            if item.thread_id != thread_id:
                raise ValueError("a checkpoint of another thread was given")
            self._frame(b"C", _checkpoint_body(item))
            count_c += 1
        for write in writes:
            self._frame(b"W", _write_body(write))
            count_w += 1
        self._frame(b"T", {"t": thread_id, "checkpoints": count_c, "writes": count_w})
        self.threads += 1
        self.checkpoints += count_c
        self.writes += count_w

    def close(self) -> None:
        """Write the end frame (with the digest of everything before it) and close."""
        if self._closed:
            return
        self._closed = True
        body = {"threads": self.threads, "checkpoints": self.checkpoints,
                "writes": self.writes, "sha256": self._hash.hexdigest()}
        self._frame(b"E", body)
        self._stream.close()

    def abort(self) -> None:
        """Close without the end frame: readers will see a truncated archive."""
        self._closed = True
        self._stream.close()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _checkpoint_body(item: StoredCheckpoint) -> dict[str, Any]:
    created = item.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    millis = (created - _EPOCH) // dt.timedelta(milliseconds=1)
    return {"t": item.thread_id, "ns": item.namespace, "id": item.id, "parent": item.parent_id,
            "step": item.step, "node": item.node_id, "next": item.next_node_id,
            "meta": dict(item.metadata), "ts": millis, "kf": item.keyframe_id,
            "base": item.base_id, "depth": item.depth, "seq": item.seq,
            "rec": bytes(item.record)}


def _write_body(write: StoredWrite) -> dict[str, Any]:
    return {"t": write.thread_id, "ns": write.namespace, "cid": write.checkpoint_id,
            "task": write.task_id, "idx": write.index, "ch": write.channel,
            "path": write.task_path, "rec": bytes(write.record)}


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ArchiveError(f"archive frame holds a msgpack extension ({code}); "
                       "archives hold plain data only")


class ArchiveReader:
    """Read an archive as a stream of :class:`ThreadRecords` (``threads()``), checking
    every frame's CRC, the counts, the format and, at the end, the SHA-256 digest."""

    def __init__(self, stream: IO[bytes], name: str = "archive"):
        self._stream = stream
        self.name = name
        self._hash = hashlib.sha256()
        self._offset = 0
        magic = self._stream.read(len(MAGIC))
        self._offset = len(magic)
        if magic != MAGIC:
            raise ArchiveError(f"{name} is not a savegame archive (bad magic bytes)")
        self._hash.update(magic)
        kind, body = self._next()
        if kind != "H":
            raise ArchiveError(f"{name}: the first frame is {kind!r}, not the header")
        version = body.get("format")
        if not isinstance(version, int) or version < 1:
            raise ArchiveError(f"{name}: malformed header")
        if version > ARCHIVE_FORMAT:
            raise ArchiveError(f"{name} is archive format {version}; this savegame reads "
                               f"format {ARCHIVE_FORMAT}: upgrade savegame to import it")
        self.header = body
        self.summary: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: str | Path) -> ArchiveReader:
        return cls(open(path, "rb"), str(path))

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise ArchiveError(f"{self.name} is truncated at byte {self._offset + len(data)} "
                               "(an interrupted export?)")
        self._offset += size
        return data

    def _next(self) -> tuple[str, dict[str, Any]]:
        start = self._offset
        digest_before = self._hash.hexdigest()
        head = self._read(_FRAME.size)
        kind, length = _FRAME.unpack(head)
        payload = self._read(length)
        (crc,) = _CRC.unpack(self._read(_CRC.size))
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            raise ArchiveError(f"{self.name}: frame at byte {start} fails its checksum "
                               "(the file is damaged)")
        try:
            body = msgpack.unpackb(payload, raw=False, strict_map_key=True,
                                   ext_hook=_refuse_ext)
        except ArchiveError:
            raise
        except Exception as exc:
            raise ArchiveError(f"{self.name}: frame at byte {start} does not decode: "
                               f"{exc}") from None
        if not isinstance(body, dict):
            raise ArchiveError(f"{self.name}: frame at byte {start} is not a map")
        self._hash.update(head + payload + _CRC.pack(crc))
        body["__digest_before"] = digest_before
        return chr(kind), body

    def threads(self) -> Iterator[ThreadRecords]:
        """Each thread in turn; raises :class:`ArchiveError` on any damage, including a
        missing end frame (checked after the last thread is handed out)."""
        current: ThreadRecords | None = None
        threads = checkpoints = writes = 0
        while True:
            kind, body = self._next()
            try:
                if kind in ("C", "W"):
                    item = _checkpoint_from(body) if kind == "C" else _write_from(body)
                    if current is None:
                        current = ThreadRecords(item.thread_id)
                    if item.thread_id != current.thread_id:
                        raise ArchiveError("a thread's frames are interleaved with another's")
                    if isinstance(item, StoredCheckpoint):
                        current.checkpoints.append(item)
                    else:
                        current.writes.append(item)
                elif kind == "T":
                    thread = current or ThreadRecords(str(body["t"]))
                    if (body["t"] != thread.thread_id
                            or body["checkpoints"] != len(thread.checkpoints)
                            or body["writes"] != len(thread.writes)):
                        raise ArchiveError(f"thread {body['t']!r}: its end frame does not "
                                           "match its records")
                    threads += 1
                    checkpoints += len(thread.checkpoints)
                    writes += len(thread.writes)
                    current = None
                    yield thread
                elif kind == "E":
                    if current is not None:
                        raise ArchiveError("the archive ends inside a thread")
                    if (body["threads"], body["checkpoints"], body["writes"]) != (
                            threads, checkpoints, writes):
                        raise ArchiveError("the end frame's counts do not match the archive")
                    if body["sha256"] != body["__digest_before"]:
                        raise ArchiveError("the archive's SHA-256 digest does not match")
                    body.pop("__digest_before")
                    self.summary = body
                    return
                else:
                    raise ArchiveError(f"unknown frame kind {kind!r}")
            except (KeyError, TypeError, ValueError) as exc:
                raise ArchiveError(f"{self.name}: malformed {kind!r} frame ({exc})") from None


def _text(value: Any, name: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str")
    return value


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int")
    return value


def _checkpoint_from(body: dict[str, Any]) -> StoredCheckpoint:
    meta = body["meta"]
    if not isinstance(meta, dict) or not isinstance(body["rec"], bytes):
        raise TypeError("meta must be a map and rec bytes")
    return StoredCheckpoint(
        thread_id=_text(body["t"], "t"), namespace=_text(body["ns"], "ns"),
        id=_text(body["id"], "id"), parent_id=_text(body["parent"], "parent", True),
        step=_int(body["step"], "step"), node_id=_text(body["node"], "node", True),
        next_node_id=_text(body["next"], "next", True), metadata=meta,
        created_at=_EPOCH + dt.timedelta(milliseconds=_int(body["ts"], "ts")),
        record=body["rec"], keyframe_id=_text(body["kf"], "kf"),
        base_id=_text(body["base"], "base", True), depth=_int(body["depth"], "depth"),
        seq=_int(body["seq"], "seq"),
    )


def _write_from(body: dict[str, Any]) -> StoredWrite:
    if not isinstance(body["rec"], bytes):
        raise TypeError("rec must be bytes")
    return StoredWrite(
        thread_id=_text(body["t"], "t"), namespace=_text(body["ns"], "ns"),
        checkpoint_id=_text(body["cid"], "cid"), task_id=_text(body["task"], "task"),
        index=_int(body["idx"], "idx"), channel=_text(body["ch"], "ch"),
        task_path=_text(body["path"], "path"), record=body["rec"],
    )


def check_archive(path: str | Path) -> dict[str, Any]:
    """Read a whole archive, checking every frame and the digest; returns its summary."""
    with ArchiveReader.open(path) as reader:
        for _ in reader.threads():
            pass
        assert reader.summary is not None
        return reader.summary


def load_archive(saver: BaseSaver, path: str | Path) -> dict[str, Any]:
    """Import an archive into ``saver``: checked whole first (a damaged or truncated file
    imports nothing), then written thread by thread (idempotent: records already there
    are skipped; a thread the store holds with other content is refused, see
    ``maintenance.merge_thread``). Returns the archive's summary."""
    from .maintenance import merge_thread

    summary = check_archive(path)
    with ArchiveReader.open(path) as reader:
        for thread in reader.threads():
            merge_thread(saver, thread.thread_id, thread.checkpoints, thread.writes)
    return summary
