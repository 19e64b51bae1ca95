"""FileSystemSaver and AsyncFileSystemSaver: checkpoints in a directory, no server needed.

Layout (the frame format is in ``_format.py``; the README's "How it stores" has both)::

    <root>/threads.sgr                    registry: thread ids (ADD / DEL frames), and the
                                          store's format version in its header
    <root>/t/<k[0:2]>/<k[2:4]>/<k>.sgt    one append-only file per thread, k = BLAKE2b-128
                                          of the thread id (the id itself is in the header)

Writers of one thread take an exclusive ``flock`` on its file (and re-check, once they
hold it, that the path still names the file they locked: a compaction or a delete may
have replaced it meanwhile). Readers take no lock: files are only appended to, a frame
is visible once whole, and a compaction replaces a file by an atomic rename, so a reader
keeps reading the file it opened.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import errno
import io
import logging
import os
import secrets
import sys
import threading
import time
import urllib.parse
import weakref
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .. import codec
from .._options import seconds
from ..base import HEAD_MOVED, BaseSaver, Flow, R, StoredCheckpoint, StoredWrite
from ..errors import CorruptCheckpointError, SavegameError
from ..memory import _same_json
from . import _format as fmt
from . import _syscalls
from ._index import Entry, Index, Space, WriteEntry

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["AsyncFileSystemSaver", "FileFormatError", "FileStoreError", "FileSystemSaver"]

Durability = Literal["fsync", "os"]
_log = logging.getLogger(__name__)
_SCAN_READ = fmt.FRAME + 512  # a frame's head and (usually) its envelope
_SCAN_BLOCK = 8192  # read ahead while frames are smaller than this
_COALESCE = 64 << 10  # payloads this close together are read with one pread
_MAX_PREAD = 0x7FFFF000  # the most Linux reads in one call
_TMP_GRACE = 3600.0  # temporary files older than this are a crashed writer's leftovers


class FileStoreError(SavegameError, OSError):
    """The file system refused an operation (no space left, not writable, ...). The
    message names the thread and the file; ``errno`` is the operating system's. Nothing
    already stored is damaged by the failed operation."""


class FileFormatError(SavegameError):
    """A store file is not in a format this savegame reads: written by a newer savegame
    (upgrade to read it), or not a savegame file at all."""


# -- small IO helpers --------------------------------------------------------------------
def _pread(fd: int, size: int, offset: int) -> bytes:
    """Exactly ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    if size <= _MAX_PREAD:
        return os.pread(fd, size, offset)
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.preadv(fd, [view[got:got + _MAX_PREAD]], offset + got)
        if n == 0:
            break
        got += n
    return bytes(view[:got])


def _write_all(fd: int, pieces: Sequence[bytes | memoryview], offset: int) -> int:
    """Write ``pieces`` one after the other at ``offset`` (one ``pwritev`` when it can);
    returns the bytes written."""
    total = sum(len(piece) for piece in pieces)
    written = _syscalls.pwritev(fd, pieces, offset)  # small writes: no GIL hand-over
    if written is None:
        written = 0
        if 1 < len(pieces) <= 512 and hasattr(os, "pwritev") and total <= _MAX_PREAD:
            written = os.pwritev(fd, pieces, offset)  # within IOV_MAX
    if written == total:
        return written
    skip = written
    for piece in pieces:
        view = memoryview(piece)
        if skip >= len(view):
            skip -= len(view)
            continue
        view, skip = view[skip:], 0
        while view:
            n = os.pwrite(fd, view[:_MAX_PREAD], offset + written)
            written += n
            view = view[n:]
    return written


def _sync_file(fd: int) -> None:
    """Data and size of the file on stable storage (macOS: F_FULLFSYNC, since its
    fsync does not flush the drive's cache)."""
    if sys.platform == "darwin" and hasattr(fcntl, "F_FULLFSYNC"):
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover
        os.fsync(fd)


def _sync_dir(path: str) -> None:
    """The directory's entries (a created, renamed or removed file) on stable storage."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_range(src: int, dst: int, offset: int, size: int, dst_offset: int) -> None:
    """Copy ``size`` bytes at ``offset`` of ``src`` to ``dst_offset`` of ``dst`` (in the
    kernel where it can), in bounded pieces."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < size:
                n = os.copy_file_range(src, dst, min(size - done, 1 << 30),
                                       offset + done, dst_offset + done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    while done < size:
        chunk = os.pread(src, min(size - done, 1 << 20), offset + done)
        if not chunk:
            raise OSError(errno.EIO, "the file ended while it was being copied")
        _write_all(dst, [chunk], dst_offset + done)
        done += len(chunk)


# -- one thread file -----------------------------------------------------------------------
@dataclass(eq=False)
class _ThreadFile:
    """One thread's file as this saver sees it: an open handle, the inode it names and the
    index of its first ``index.end`` bytes. ``mutex`` serializes this saver's use of it;
    other processes (and other savers) are kept out by the ``flock`` writers take."""

    thread_id: str
    path: str
    mutex: threading.RLock = field(default_factory=threading.RLock)
    handle: io.FileIO | None = None
    ino: tuple[int, int] = (0, 0)
    seen_size: int = 0  # file size at the last scan (past index.end: a torn tail)
    index: Index | None = None

    @property
    def fd(self) -> int:
        assert self.handle is not None
        return self.handle.fileno()

    def drop(self) -> None:
        self.handle = None  # closed when no one uses it any more
        self.index = None
        self.ino = (0, 0)
        self.seen_size = 0


_SAVERS: weakref.WeakSet[FileSystemSaver] = weakref.WeakSet()


class _Frames:
    """Frames to append, with what the index learns from each: the checkpoint or write it
    was made of, or the version a RELEASE frame names (a writer never parses its own
    frames back)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self._items: list[tuple[StoredCheckpoint | StoredWrite | int, int, int, int]] = []

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def checkpoint(self, stored: StoredCheckpoint) -> None:
        head, crc = fmt.checkpoint_frame(stored)
        created = stored.created_at  # as a scan reads it back: UTC, to the microsecond
        if created.tzinfo is not dt.timezone.utc:
            created = fmt.from_micros(fmt.micros(created))
        self._add(head, stored.record, crc, StoredCheckpoint(
            stored.thread_id, stored.namespace, stored.id, stored.parent_id, stored.step,
            stored.node_id, stored.next_node_id, dict(stored.metadata), created, b"",
            stored.keyframe_id, stored.base_id, stored.depth, stored.seq))

    def write(self, write: StoredWrite) -> None:
        head, crc = fmt.write_frame(write)
        self._add(head, write.record, crc, StoredWrite(
            write.thread_id, write.namespace, write.checkpoint_id, write.task_id, write.index,
            write.channel, write.task_path, b""))

    def release(self, version: int) -> None:
        head = fmt.release_frame(version)
        self.pieces.append(head)
        self._items.append((version, len(head), 0, 0))

    def _add(self, head: bytes, payload: bytes, crc: int,
             bare: StoredCheckpoint | StoredWrite) -> None:
        self.pieces += [head, payload]
        self._items.append((bare, len(head), len(payload), crc))

    def index(self, index: Index, offset: int) -> None:
        """Add the frames, just written at ``offset``, to ``index``."""
        for item, head_len, payload_len, crc in self._items:
            size = head_len + payload_len
            if isinstance(item, int):
                index.release(item, offset, size)
            else:
                index.add(item, offset, size, offset + head_len, payload_len, crc)
            offset += size


def _after_fork() -> None:
    for saver in list(_SAVERS):
        saver._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


#: Replaced bytes a thread file may hold before a compaction is worth its copy.
DEAD_FLOOR = 32 << 10


class FileSystemSaver(BaseSaver):
    """Checkpoints in a directory: one append-only file per thread, no server needed.

    - ``path``: the store's directory (created on the first write);
    - ``durability``: ``"fsync"`` (default) — a put returns once its record (and, for a
      new thread file, its directory entry) is on stable storage; ``"os"`` — no fsync:
      a crash of the process loses nothing, a crash of the machine may lose the last
      puts (never a torn record: it is detected by its checksum and ignored);
    - ``keep_last``: when a thread starts a new keyframe chain, whole chains holding none
      of its ``keep_last`` newest checkpoints (per namespace) are deleted;
    - ``ttl`` (seconds or timedelta): a chain whose newest checkpoint is older than
      ``ttl`` is deleted on the thread's next write or by :meth:`vacuum`;
    - ``max_open_files``: thread files (and their indexes) kept open by this saver.
    Other keyword arguments (``serializer``, ``policy``, ``cache_bytes``) go to BaseSaver;
    the default ``policy`` here allows chains of 8 records (4 elsewhere) and compresses
    keyframes at zstd level 2 (3 elsewhere).

    Safe for many threads, tasks and processes on one machine (``flock``); network file
    systems are not supported. ``release`` archives runs as versions 1, 2, ... in the
    thread's file. The async methods run the file IO in a worker thread (``_blocking_io``);
    :class:`AsyncFileSystemSaver` is the async-only twin.
    """

    _blocking_io = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        keep_last: int | None = None,
        ttl: float | dt.timedelta | None = None,
        max_open_files: int = 256,
        **options: Any,
    ):
        if fcntl is None:  # pragma: no cover - Windows
            raise NotImplementedError(
                "FileSystemSaver needs POSIX file locks (fcntl.flock): Linux and macOS are "
                "supported, Windows is not; use MongoSaver there")
        # Longer chains than elsewhere: a read here costs a pread per record and a splice
        # decodes at memcpy speed, while every keyframe leaves a whole state of replaced
        # bytes to compact once the next one is written (a fifth less put CPU at 200
        # turns). Keyframes at zstd level 2: 25% less CPU than 3 for 0.5% more bytes, and
        # only the newest stays whole (older ones become reverse records).
        options.setdefault("policy", codec.KeyframePolicy(max_chain=8, level=2))
        super().__init__(**options)
        if durability not in ("fsync", "os"):
            raise ValueError(f"durability must be 'fsync' or 'os', got {durability!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
        if not isinstance(max_open_files, int) or max_open_files < 1:
            raise ValueError("max_open_files must be a positive int")
        self.path = Path(path).absolute()
        self.durability: Durability = durability
        self.keep_last = keep_last
        self.ttl = seconds(ttl, "ttl")
        self.max_open_files = max_open_files
        self._root = str(self.path)
        self._registry_path = os.path.join(self._root, "threads.sgr")
        self._forget_after_fork()
        _SAVERS.add(self)

    def _forget_after_fork(self) -> None:
        """Fresh locks and no open files: also what a forked child must start from (an
        inherited descriptor would share the parent's flock)."""
        self._lock = threading.Lock()  # guards _files and _damaged
        self._files: OrderedDict[str, _ThreadFile] = OrderedDict()
        self._registry = _ThreadFile("", self._registry_path)
        self._registry_lock = threading.RLock()
        self._registry_threads: dict[str, bool] = {}
        self._registry_sorted: list[str] | None = None
        self._registry_dead = 0  # registry frames a compaction would drop
        self._checked_store = False
        self._ready = False  # setup() ran (the Burr adapter asks)
        #: (thread, checkpoint) -> (file, offset) of payloads that failed their checksum
        self._damaged: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> FileSystemSaver:
        """A saver over the directory of a ``file:///absolute/path`` URI; query parameters
        ``durability``, ``keep_last`` and ``ttl`` (seconds) are accepted too."""
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"not a local file URI: {uri!r} (expected file:///path)")
        if not parsed.path:
            raise ValueError(f"the file URI {uri!r} names no directory")
        query = dict(urllib.parse.parse_qsl(parsed.query))
        unknown = set(query) - {"durability", "keep_last", "ttl"}
        if unknown:
            raise ValueError(f"unknown file URI parameters: {', '.join(sorted(unknown))}")
        if "durability" in query:
            options.setdefault("durability", query["durability"])
        if "keep_last" in query:
            options.setdefault("keep_last", int(query["keep_last"]))
        if "ttl" in query:
            options.setdefault("ttl", float(query["ttl"]))
        return cls(urllib.parse.unquote(parsed.path), **options)

    def close(self) -> None:
        """Forget open files and indexes (their descriptors close once unused)."""
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
        for tf in files:
            with tf.mutex:
                tf.drop()
        with self._registry_lock:
            self._registry.drop()

    # -- drivers: corruption errors name the file ------------------------------------
    def _located(self, exc: CorruptCheckpointError) -> CorruptCheckpointError:
        """``exc`` with the thread's file named (and the offset of any record of that
        thread whose framing checksum failed), as a CorruptCheckpointError again."""
        if exc.thread_id is None or " in file " in str(exc):
            return exc
        with self._lock:
            bad = [(cid, where) for (thread, cid), where in self._damaged.items()
                   if thread == exc.thread_id]
        detail = "".join(f"; record {cid!r} at byte {offset} fails its framing checksum"
                         for cid, (_, offset) in bad[-3:])
        located = CorruptCheckpointError(
            f"{exc} in file {self.thread_path(exc.thread_id)}{detail}")
        located.thread_id, located.namespace = exc.thread_id, exc.namespace
        located.checkpoint_id = exc.checkpoint_id
        return located

    def _run(self, flow: Flow[R]) -> R:
        try:
            return super()._run(flow)
        except CorruptCheckpointError as exc:
            raise self._located(exc) from None

    async def _arun(self, flow: Flow[R]) -> R:
        try:
            return await super()._arun(flow)
        except CorruptCheckpointError as exc:
            raise self._located(exc) from None

    def _iterate(self, flow: Flow[None]) -> Iterator[Any]:
        try:
            yield from super()._iterate(flow)
        except CorruptCheckpointError as exc:
            raise self._located(exc) from None

    async def _aiterate(self, flow: Flow[None]) -> AsyncIterator[Any]:
        try:
            async for item in super()._aiterate(flow):
                yield item
        except CorruptCheckpointError as exc:
            raise self._located(exc) from None

    # -- paths and errors ------------------------------------------------------------
    def thread_path(self, thread_id: str) -> str:
        """The file that holds ``thread_id`` (it may not exist)."""
        key = fmt.thread_key(thread_id)
        return os.path.join(self._root, "t", key[:2], key[2:4], key + ".sgt")

    def _file(self, thread_id: str) -> _ThreadFile:
        with self._lock:
            tf = self._files.get(thread_id)
            if tf is None:
                tf = self._files[thread_id] = _ThreadFile(thread_id,
                                                          self.thread_path(thread_id))
                while len(self._files) > self.max_open_files:
                    # not dropped: a thread of this process may be using it (its handle
                    # closes once nobody does)
                    self._files.popitem(last=False)
            else:
                self._files.move_to_end(thread_id)
            return tf

    @contextlib.contextmanager
    def _os_errors(self, action: str, tf: _ThreadFile) -> Iterator[None]:
        """Turn an OSError into a FileStoreError naming the action, thread and file."""
        try:
            yield
        except FileStoreError:
            raise
        except OSError as exc:
            what = f"thread {tf.thread_id!r}" if tf.thread_id else "the thread registry"
            reason = exc.strerror or str(exc)
            if exc.filename and exc.filename != tf.path:
                reason += f": {exc.filename}"
            raise FileStoreError(
                exc.errno or errno.EIO,
                f"cannot {action} ({what}, file {tf.path}): {reason}; nothing already "
                "stored was changed",
            ) from exc

    def _corrupt(self, tf: _ThreadFile, message: str, checkpoint_id: str | None = None,
                 namespace: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{message} in file {tf.path}", thread_id=tf.thread_id,
                                      namespace=namespace, checkpoint_id=checkpoint_id)

    def _format_error(self, path: str, exc: fmt.FormatError) -> FileFormatError:
        return FileFormatError(f"{path}: {exc}")

    # -- opening and scanning ----------------------------------------------------------
    def _check_store(self) -> None:
        """Refuse a store whose registry was written by a newer format (once per saver)."""
        if self._checked_store:
            return
        try:
            with open(self._registry_path, "rb") as handle:
                head = handle.read(64)
        except FileNotFoundError:
            return  # a new (or still empty) store
        except OSError as exc:
            raise FileStoreError(exc.errno or errno.EIO,
                                 f"cannot read the store registry {self._registry_path}: "
                                 f"{exc.strerror or exc}") from exc
        try:
            fmt.read_file_header(head, fmt.REGISTRY_MAGIC)
        except fmt.FormatError as exc:
            raise self._format_error(self._registry_path, exc) from None
        self._checked_store = True

    def _open(self, tf: _ThreadFile, magic: bytes = fmt.THREAD_MAGIC) -> bool:
        """Open the file at ``tf.path`` and index it from scratch; False if there is none."""
        tf.drop()
        try:
            fd = os.open(tf.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except PermissionError:  # a read-only store can still be read
            fd = os.open(tf.path, os.O_RDONLY | os.O_CLOEXEC)
        handle = io.FileIO(fd, "r+" if _writable(fd) else "r")
        st = os.fstat(fd)
        head = os.pread(fd, 4096, 0)
        size = fmt.file_header_size(head)
        if size is not None and size > len(head):
            head = os.pread(fd, size, 0)
        try:
            thread_id, header_size = fmt.read_file_header(head, magic)
        except fmt.NewerFormatError as exc:
            raise self._format_error(tf.path, exc) from None
        except fmt.FormatError as exc:
            if magic == fmt.REGISTRY_MAGIC:
                raise self._format_error(tf.path, exc) from None
            raise self._corrupt(tf, f"the file header is unreadable ({exc})") from None
        if thread_id != tf.thread_id:
            raise SavegameError(
                f"thread ids {tf.thread_id!r} and {thread_id!r} hash to the same file "
                f"{tf.path}; {tf.thread_id!r} cannot be stored (a 128-bit hash collision)")
        tf.handle = handle
        tf.ino = (st.st_dev, st.st_ino)
        tf.index = Index(thread_id, header_size, header_size)
        tf.seen_size = header_size
        self._scan(tf, st.st_size)
        return True

    def _refresh(self, tf: _ThreadFile) -> bool:
        """Bring ``tf`` up to date with the file at its path (one ``stat`` when nothing
        changed); False when the file does not exist."""
        try:
            inode, size = _syscalls.identity(tf.path)
        except FileNotFoundError:
            tf.drop()
            return False
        if tf.handle is None or inode != tf.ino:
            return self._open(tf)
        assert tf.index is not None
        if size != tf.seen_size:
            if size < tf.index.end:  # cut below what we indexed: start over
                return self._open(tf)
            self._scan(tf, size)
        return True

    def _scan(self, tf: _ThreadFile, size: int) -> None:
        """Index the frames between ``index.end`` and ``size``: heads and envelopes only,
        payloads are skipped (read in passing when frames are small: one read then covers
        several). A frame that is incomplete (or unreadable with nothing valid after it)
        ends the scan: a torn tail, ignored here and cut by the next writer."""
        index = tf.index
        assert index is not None
        fd = tf.fd
        offset = index.end
        buffer, at = b"", offset  # file bytes [at, at + len(buffer))
        window = _SCAN_BLOCK
        while offset < size:
            if size - offset < fmt.FRAME:
                break  # a torn head
            rel = offset - at
            if rel + fmt.FRAME > len(buffer):
                buffer, at, rel = os.pread(fd, min(window, size - offset), offset), offset, 0
            head = fmt.parse_frame_head(buffer, rel)
            if head is None:
                resumed = self._resync(tf, offset + 1, size)
                if resumed is None:
                    break  # garbage to the end: a torn tail
                index.damage.append((offset, "a frame head is unreadable", None))
                offset = index.end = resumed
                continue
            if offset + head.size > size:
                break  # the frame is not whole (yet): a torn tail, or a write in progress
            stop = rel + fmt.FRAME + head.env_len
            if stop > len(buffer):
                buffer = os.pread(fd, fmt.FRAME + head.env_len + _SCAN_READ, offset)
                at, rel, stop = offset, 0, fmt.FRAME + head.env_len
            envelope = memoryview(buffer)[rel + fmt.FRAME:stop]
            try:
                index.apply(head, fmt.unpack_envelope(head, envelope), offset)
            except (fmt.FormatError, ValueError, TypeError, OverflowError) as exc:
                index.damage.append((offset, str(exc), fmt.guess_id(envelope)))
                index.end = offset + head.size
            offset = index.end
            # small frames: read ahead a block; big ones: just the next head and envelope
            window = _SCAN_BLOCK if head.payload_len < _SCAN_BLOCK else _SCAN_READ
        tf.seen_size = size

    def _resync(self, tf: _ThreadFile, start: int, size: int) -> int | None:
        """The offset of the next valid frame head after ``start``, if any (a damaged
        frame in the middle of the file), else None (a torn tail)."""
        fd = tf.fd
        position = start
        while position < size:
            block = os.pread(fd, min(1 << 20, size - position) + fmt.FRAME, position)
            at = block.find(fmt.FRAME_MAGIC)
            while at != -1:
                if len(block) - at >= fmt.FRAME:
                    head = fmt.parse_frame_head(block, at)
                    if head is not None and position + at + head.size <= size:
                        return position + at
                at = block.find(fmt.FRAME_MAGIC, at + 1)
            position += max(1, len(block) - fmt.FRAME)
        return None

    def _damage_check(self, tf: _ThreadFile) -> None:
        index = tf.index
        if index is not None and index.damage:
            offset, reason, guess = index.damage[0]
            raise self._corrupt(
                tf, f"the thread's file is damaged at byte {offset} ({reason}); its "
                "checkpoints cannot be trusted until it is restored", guess)

    def _reading(self, tf: _ThreadFile) -> Index | None:
        """The index of ``tf``, up to date, or None. Call with ``tf.mutex`` held."""
        self._check_store()
        with self._os_errors("read", tf):
            if not self._refresh(tf):
                return None
        self._damage_check(tf)
        assert tf.index is not None
        return tf.index

    # -- reading records -------------------------------------------------------------
    def _payloads(self, tf: _ThreadFile, spans: Sequence[Entry | WriteEntry]) -> list[bytes]:
        """The payloads of ``spans`` (in their order), neighbours read with one pread. A
        payload whose checksum fails is returned as it is: the record's own checksum makes
        the core report it as corrupt, naming the checkpoint asked for."""
        order = sorted(range(len(spans)), key=lambda i: spans[i].payload_at)
        out: list[bytes] = [b""] * len(spans)
        fd = tf.fd
        with self._os_errors("read", tf):
            start = 0
            while start < len(order):
                end = start + 1
                first = spans[order[start]]
                stop = first.payload_at + first.payload_len
                while end < len(order):
                    nxt = spans[order[end]]
                    if nxt.payload_at - stop > _COALESCE or nxt.payload_len > _COALESCE:
                        break
                    stop = max(stop, nxt.payload_at + nxt.payload_len)
                    end += 1
                if end - start == 1:
                    out[order[start]] = _pread(fd, first.payload_len, first.payload_at)
                else:
                    block = memoryview(_pread(fd, stop - first.payload_at, first.payload_at))
                    for i in order[start:end]:
                        span = spans[i]
                        at = span.payload_at - first.payload_at
                        out[i] = bytes(block[at:at + span.payload_len])
                start = end
        for span, data in zip(spans, out, strict=True):
            if zlib.crc32(data) != span.payload_crc:
                self._note_damage(tf, span)
        return out

    def _note_damage(self, tf: _ThreadFile, span: Entry | WriteEntry) -> None:
        """Remember a payload that failed its framing checksum, so the corruption error the
        core raises for it also names the file and the offset."""
        key = span.stored.id if isinstance(span, Entry) else span.write.checkpoint_id
        with self._lock:
            self._damaged[(tf.thread_id, key)] = (tf.path, span.offset)
            while len(self._damaged) > 1024:
                self._damaged.popitem(last=False)

    def _with_records(self, tf: _ThreadFile, entries: Sequence[Entry]) -> list[StoredCheckpoint]:
        return [replace(entry.stored, record=data)
                for entry, data in zip(entries, self._payloads(tf, entries), strict=True)]

    def _writes_with_records(self, tf: _ThreadFile, entries: Sequence[WriteEntry]
                             ) -> list[StoredWrite]:
        return [replace(entry.write, record=data)
                for entry, data in zip(entries, self._payloads(tf, entries), strict=True)]

    # -- writing -----------------------------------------------------------------------
    def _create(self, tf: _ThreadFile, magic: bytes = fmt.THREAD_MAGIC) -> None:
        """Create the file with its header, atomically: a temporary file is written, synced
        and linked into place (linking fails if another writer made it first: fine)."""
        directory = os.path.dirname(tf.path)
        self._makedirs(directory)
        tmp = f"{tf.path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, [fmt.file_header(magic, tf.thread_id)], 0)
                if self.durability == "fsync":
                    _sync_file(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, tf.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if self.durability == "fsync":
            _sync_dir(directory)

    def _makedirs(self, directory: str) -> None:
        """Make ``directory`` and its parents; each new one's entry is synced too."""
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        if parent != directory:
            self._makedirs(parent)
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            return
        if self.durability == "fsync":
            _sync_dir(parent)

    @contextlib.contextmanager
    def _writing(self, thread_id: str, *, create: bool, damaged_ok: bool = False
                 ) -> Iterator[_ThreadFile | None]:
        """Hold the thread's file exclusively (this saver's mutex, then ``flock``), with the
        index current and any torn tail cut off. Yields None when the file does not exist
        and ``create`` is false. A damaged file is refused unless ``damaged_ok`` (delete)."""
        self._check_store()
        tf = self._file(thread_id)
        with tf.mutex:
            locked: list[io.FileIO] = []  # every handle locked here, kept open until unlocked
            try:
                with self._os_errors("write", tf):
                    for _ in range(1000):
                        # An open file is locked first and checked after (one stat); the
                        # check below catches a file replaced or deleted meanwhile.
                        if tf.handle is None and not self._refresh(tf):
                            if not create:
                                break
                            self._ensure_registry()
                            self._create(tf)
                            continue
                        handle = tf.handle
                        if handle is None:
                            continue
                        if not handle.writable():  # opened read-only: say why it must be
                            os.close(os.open(tf.path, os.O_RDWR | os.O_CLOEXEC))
                            tf.drop()
                            continue
                        _syscalls.lock(handle.fileno())
                        locked.append(handle)
                        # the path may name another file by now (compacted, deleted, made
                        # anew): then lock that one instead
                        if self._refresh(tf) and tf.handle is handle:
                            if not damaged_ok:
                                self._damage_check(tf)
                                self._cut_torn_tail(tf)
                            break
                        _syscalls.unlock(handle.fileno())
                        locked.pop()
                    else:
                        raise OSError(errno.EBUSY, "the file kept being replaced under this "
                                                   "writer")
                yield tf if locked else None
            finally:
                # a compaction leaves its new file locked as tf.handle: unlock it too
                if tf.handle is not None and all(tf.handle is not h for h in locked):
                    locked.append(tf.handle)
                for handle in locked:
                    with contextlib.suppress(OSError, ValueError):
                        _syscalls.unlock(handle.fileno())

    def _cut_torn_tail(self, tf: _ThreadFile) -> None:
        index = tf.index
        assert index is not None
        if tf.seen_size > index.end:
            os.ftruncate(tf.fd, index.end)
            if self.durability == "fsync":
                _sync_file(tf.fd)
            tf.seen_size = index.end

    def _append(self, tf: _ThreadFile, frames: _Frames) -> None:
        """Append frames at the end of the locked file; on any failure (a full disk) cut
        the file back, so nothing half-written stays, and raise. The index learns them
        from the objects they were made of."""
        index = tf.index
        assert index is not None
        fd, end = tf.fd, index.end
        try:
            written = _write_all(fd, frames.pieces, end)
            if self.durability == "fsync":
                _sync_file(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            tf.seen_size = end
            raise
        frames.index(index, end)
        tf.seen_size = max(tf.seen_size, end + written)
        if index.end != end + written:  # cannot happen: we just wrote whole frames
            raise OSError(errno.EIO, "an appended frame did not read back")

    def _ensure_registry(self) -> None:
        if not os.path.exists(self._registry_path):
            self._makedirs(self._root)
            self._create(self._registry, fmt.REGISTRY_MAGIC)

    # -- the registry of thread ids ----------------------------------------------------
    def _registry_refresh(self) -> None:
        tf = self._registry
        before = tf.seen_size, tf.ino
        if not self._refresh_registry(tf):
            self._registry_threads.clear()
            self._registry_sorted = None
            return
        if (tf.seen_size, tf.ino) != before:
            self._registry_sorted = None

    def _refresh_registry(self, tf: _ThreadFile) -> bool:
        """The registry's own scan: ADD / DEL frames into ``_registry_threads``."""
        try:
            st = os.stat(tf.path)
        except FileNotFoundError:
            tf.drop()
            return False
        if tf.handle is None or (st.st_dev, st.st_ino) != tf.ino:
            self._registry_threads.clear()
            self._registry_dead = 0
            if not self._open_registry(tf):
                return False
        if st.st_size != tf.seen_size:
            self._scan_registry(tf, st.st_size)
        return True

    def _open_registry(self, tf: _ThreadFile) -> bool:
        tf.drop()
        try:
            fd = os.open(tf.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except PermissionError:
            fd = os.open(tf.path, os.O_RDONLY | os.O_CLOEXEC)
        handle = io.FileIO(fd, "r+" if _writable(fd) else "r")
        head = os.pread(fd, 64, 0)
        try:
            _, header_size = fmt.read_file_header(head, fmt.REGISTRY_MAGIC)
        except fmt.FormatError as exc:
            raise self._format_error(tf.path, exc) from None
        st = os.fstat(fd)
        tf.handle = handle
        tf.ino = (st.st_dev, st.st_ino)
        tf.index = Index("", header_size, header_size)
        tf.seen_size = header_size
        return True

    def _scan_registry(self, tf: _ThreadFile, size: int) -> None:
        """Apply the registry's ADD / DEL frames. A damaged frame is skipped (valid frames
        follow it); unreadable bytes at the end are a torn tail, cut by the next writer."""
        index = tf.index
        assert index is not None
        fd = tf.fd
        offset = index.end
        while offset + fmt.FRAME <= size:
            chunk = os.pread(fd, min(_SCAN_READ, size - offset), offset)
            head = fmt.parse_frame_head(chunk)
            if head is None or head.kind not in (fmt.ADD, fmt.DEL):
                resumed = self._resync(tf, offset + 1, size)
                if resumed is None:
                    break
                offset = index.end = resumed
                continue
            if offset + head.size > size:
                break
            envelope = (chunk[fmt.FRAME:fmt.FRAME + head.env_len]
                        if len(chunk) >= fmt.FRAME + head.env_len
                        else os.pread(fd, head.env_len, offset + fmt.FRAME))
            try:
                (thread_id,) = fmt.unpack_envelope(head, envelope)
            except (fmt.FormatError, ValueError):
                thread_id = None  # a damaged entry: vacuum() rebuilds what it said
            if isinstance(thread_id, str):
                if head.kind == fmt.ADD:
                    self._registry_dead += thread_id in self._registry_threads
                    self._registry_threads[thread_id] = True
                else:
                    self._registry_dead += 2
                    self._registry_threads.pop(thread_id, None)
            offset += head.size
            index.end = offset
        tf.seen_size = size

    def _register(self, thread_id: str, alive: bool) -> None:
        """Record that a thread holds checkpoints (ADD) or no longer does (DEL). Called
        with the thread's own file locked, so the two never race for one thread."""
        tf = self._registry
        with self._registry_lock, self._os_errors("update", tf):
            self._registry_refresh()
            if self._registry_threads.get(thread_id, False) == alive:
                return
            self._ensure_registry()
            for _ in range(1000):
                if not self._refresh_registry(tf):
                    self._ensure_registry()
                    continue
                fd = tf.fd
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    if not self._refresh_registry(tf) or tf.fd != fd:
                        continue
                    index = tf.index
                    assert index is not None
                    if tf.seen_size > index.end:
                        os.ftruncate(fd, index.end)
                    frame = fmt.registry_frame(fmt.ADD if alive else fmt.DEL, thread_id)
                    end = index.end
                    try:
                        _write_all(fd, [frame], end)
                        if self.durability == "fsync":
                            _sync_file(fd)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, end)
                        raise
                    self._scan_registry(tf, end + len(frame))
                    self._registry_sorted = None
                    if self._registry_dead > max(1024, 2 * len(self._registry_threads)):
                        self._compact_registry(tf)
                    return
                finally:
                    with contextlib.suppress(OSError, ValueError):
                        fcntl.flock(fd, fcntl.LOCK_UN)
            raise OSError(errno.EBUSY, "the registry kept being replaced")

    def _compact_registry(self, tf: _ThreadFile) -> None:
        """Rewrite the registry with one ADD per live thread (atomic rename)."""
        frames = [fmt.registry_frame(fmt.ADD, t) for t in sorted(self._registry_threads)]
        self._replace_file(tf, [fmt.file_header(fmt.REGISTRY_MAGIC, ""), *frames])
        self._registry_threads.clear()
        self._registry_dead = 0
        self._refresh_registry(tf)

    def _replace_file(self, tf: _ThreadFile, pieces: Sequence[bytes]) -> None:
        tmp = f"{tf.path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, pieces, 0)
            _sync_file(fd)
            os.replace(tmp, tf.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        if self.durability == "fsync":
            _sync_dir(os.path.dirname(tf.path))

    # -- compaction --------------------------------------------------------------------
    def _compact(self, tf: _ThreadFile, drop: Callable[[str, str], bool]) -> None:
        """Rewrite the locked thread file without the live checkpoints and pending writes
        ``drop(namespace, checkpoint_id)`` selects, and without replaced frames: a new file
        is written beside it, synced, renamed over it, and the directory synced. A reader in
        another process keeps reading the file it opened; writers waiting for the lock find
        the new file. A thread left with nothing is removed."""
        index = tf.index
        assert index is not None
        live, live_writes = index.live_entries(), index.live_writes()
        kept = [e for e in live if not drop(e.stored.namespace, e.stored.id)]
        writes = [w for w in live_writes if not drop(w.write.namespace, w.write.checkpoint_id)]
        # Only replaced frames go: the index stays true once its offsets are moved, so the
        # new file need not be scanned again (a scan parses every envelope in Python).
        remap = len(kept) == len(live) and len(writes) == len(live_writes) and not index.damage
        moves: list[tuple[Entry | WriteEntry, int]] = []
        directory = os.path.dirname(tf.path)
        if not kept and not writes and not index.versions:
            os.unlink(tf.path)
            if self.durability == "fsync":
                _sync_dir(directory)
            self._register(tf.thread_id, False)
            tf.drop()
            return
        old = tf.fd
        tmp = f"{tf.path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        handle = io.FileIO(fd, "r+")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until the new file is ours
            header = fmt.file_header(fmt.THREAD_MAGIC, tf.thread_id)
            at = _write_all(fd, [header], 0)
            for version in sorted(index.versions):
                at = self._copy_frames(old, fd, index.versions[version], at, moves)
                at += _write_all(fd, [fmt.release_frame(version)], at)
            at = self._copy_frames(old, fd, [*kept, *writes], at, moves)
            _sync_file(fd)  # always: a rename of an unsynced file may leave it empty
            os.replace(tmp, tf.path)
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.durability == "fsync":
            _sync_dir(directory)
        if not kept:
            self._register(tf.thread_id, False)
        # Index the new file (still locked through ``handle``; the writer unlocks both).
        tf.drop()
        st = os.fstat(fd)
        tf.handle = handle
        tf.ino = (st.st_dev, st.st_ino)
        if remap:
            for span, offset in moves:
                span.payload_at += offset - span.offset
                span.offset = offset
            index.end = tf.seen_size = at
            index.dead = 0
            index.release_frames = len(index.versions)
            tf.index = index
            return
        tf.index = Index(tf.thread_id, len(header), len(header))
        tf.seen_size = len(header)
        self._scan(tf, at)

    def _after_write(self, tf: _ThreadFile, stored: StoredCheckpoint | None) -> None:
        """Retention after a write that is already stored: a failure here (a full disk
        during a compaction) must not fail that write; the next write tries again."""
        try:
            with self._os_errors("compact", tf):
                self._retention(tf, stored)
        except FileStoreError as exc:
            _log.warning("%s", exc)

    def _copy_frames(self, src: int, dst: int, spans: Sequence[Entry | WriteEntry],
                     at: int, moves: list[tuple[Entry | WriteEntry, int]]) -> int:
        """Copy whole frames, in file order, neighbours in one go; returns the new end and
        adds each frame's new offset to ``moves``."""
        ordered = sorted(spans, key=lambda s: s.offset)
        i = 0
        while i < len(ordered):
            start = ordered[i].offset
            stop = start + ordered[i].size
            moves.append((ordered[i], at))
            i += 1
            while i < len(ordered) and ordered[i].offset == stop:
                moves.append((ordered[i], at + stop - start))
                stop += ordered[i].size
                i += 1
            _copy_range(src, dst, start, stop - start, at)
            at += stop - start
        return at

    def _retention(self, tf: _ThreadFile, stored: StoredCheckpoint | None) -> None:
        """Apply ``keep_last`` (when ``stored`` starts a chain) and ``ttl`` to the locked
        file, and reclaim replaced frames once they pass a quarter of the live ones."""
        index = tf.index
        assert index is not None
        doomed: set[tuple[str, str]] = set()
        if self.keep_last is not None and stored is not None and stored.base_id is None:
            space = index.space(stored.namespace)
            if space is not None and len(space.ids) > self.keep_last:
                newest = space.ids[-self.keep_last:]
                chains = {space.by_id[i].stored.keyframe_id for i in newest}
                doomed |= {(stored.namespace, i) for i in space.ids
                           if i < newest[0] and space.by_id[i].stored.keyframe_id not in chains}
        if self.ttl is not None:
            cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self.ttl)
            for namespace, space in index.spaces.items():
                expired = {kf for kf, newest_at in space.chain_newest.items()
                           if newest_at < cutoff}
                doomed |= {(namespace, i) for kf in expired for i in space.chains.get(kf, ())}
        size = tf.seen_size
        # Replaced frames (a keyframe rewritten as a reverse record when the next one is
        # written leaves its old frame behind) are reclaimed once they pass a quarter of
        # the live bytes, which keeps the file within 1.25x of its live frames.
        if doomed or (index.dead > DEAD_FLOOR and 4 * index.dead > size - index.dead):
            self._compact(tf, lambda namespace, cid: (namespace, cid) in doomed)

    # -- primitives: reads -------------------------------------------------------------
    @contextlib.contextmanager
    def _read_index(self, thread_id: str) -> Iterator[tuple[_ThreadFile, Index | None]]:
        """The thread's file and its index, current, held for this saver's other threads
        (the index is None when the thread has no file)."""
        tf = self._file(thread_id)
        with tf.mutex:
            yield tf, self._reading(tf)

    @contextlib.contextmanager
    def _read_space(self, thread_id: str, namespace: str
                    ) -> Iterator[tuple[_ThreadFile, Space | None]]:
        """Like :meth:`_read_index`, for one namespace of the thread."""
        with self._read_index(thread_id) as (tf, index):
            yield tf, None if index is None else index.space(namespace)

    def _read(self, thread_id: str, namespace: str, checkpoint_id: str
              ) -> StoredCheckpoint | None:
        with self._read_space(thread_id, namespace) as (tf, space):
            entry = space.by_id.get(checkpoint_id) if space is not None else None
            return None if entry is None else self._with_records(tf, [entry])[0]

    def _read_latest(self, thread_id: str, namespace: str) -> StoredCheckpoint | None:
        with self._read_space(thread_id, namespace) as (tf, space):
            if space is None or space.head is None:
                return None
            return self._with_records(tf, [space.by_id[space.head]])[0]

    def _read_latest_chain(self, thread_id: str, namespace: str
                           ) -> list[StoredCheckpoint] | None:
        """The latest checkpoint and the records its base links lead to, read together
        (the index knows the path; no second call is needed)."""
        with self._read_space(thread_id, namespace) as (tf, space):
            if space is None or space.head is None:
                return None
            path = [space.by_id[space.head]]
            seen = {space.head}
            while path[-1].stored.base_id is not None and len(path) <= 0xFFFF:
                base = space.by_id.get(path[-1].stored.base_id)
                if base is None or base.stored.id in seen:
                    break  # the core reports the cut or the loop
                seen.add(base.stored.id)
                path.append(base)
            return self._with_records(tf, path)

    def _read_chains(self, thread_id: str, namespace: str, keyframe_ids: Sequence[str]
                     ) -> list[StoredCheckpoint]:
        return self._pick(thread_id, namespace, lambda space: [
            space.by_id[i] for k in keyframe_ids for i in space.chains.get(k, ())])

    def _read_many(self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
                   ) -> list[StoredCheckpoint]:
        return self._pick(thread_id, namespace, lambda space: [
            space.by_id[i] for i in checkpoint_ids if i in space.by_id])

    def _pick(self, thread_id: str, namespace: str,
              entries: Callable[[Space], list[Entry]]) -> list[StoredCheckpoint]:
        """The checkpoints, records read, of the index entries ``entries`` picks."""
        with self._read_space(thread_id, namespace) as (tf, space):
            return [] if space is None else self._with_records(tf, entries(space))

    def _list(
        self,
        thread_id: str,
        namespace: str,
        before: str | None,
        limit: int | None,
        metadata: Mapping[str, Any] | None,
    ) -> list[StoredCheckpoint]:
        with self._read_space(thread_id, namespace) as (tf, space):
            if space is None:
                return []
            end = len(space.ids) if before is None else bisect.bisect_left(space.ids, before)
            out: list[Entry] = []
            for position in range(end - 1, -1, -1):  # newest first, by id
                entry = space.by_id[space.ids[position]]
                stored = entry.stored.metadata
                if all(key in stored and _same_json(stored[key], value)
                       for key, value in (metadata or {}).items()):
                    out.append(entry)
                    if limit is not None and len(out) >= limit:
                        break
            return self._with_records(tf, out)

    def _read_writes(self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
                     ) -> list[StoredWrite]:
        with self._read_space(thread_id, namespace) as (tf, space):
            if space is None:
                return []
            return self._writes_with_records(tf, [
                w for i in checkpoint_ids for w in space.writes.get(i, {}).values()])

    def _list_threads(self, prefix: str) -> list[str]:
        """Threads of the registry starting with ``prefix`` (a range of a sorted list)
        whose file exists; no thread file is opened."""
        self._check_store()
        with self._registry_lock, self._os_errors("read", self._registry):
            self._registry_refresh()
            if self._registry_sorted is None:
                self._registry_sorted = sorted(self._registry_threads)
            ids = self._registry_sorted
        start = bisect.bisect_left(ids, prefix)
        out = []
        for thread_id in ids[start:]:
            if not thread_id.startswith(prefix):
                break
            if os.path.exists(self.thread_path(thread_id)):
                out.append(thread_id)
        return out

    def _list_namespaces(self, thread_id: str) -> list[str]:
        with self._read_index(thread_id) as (_, index):
            return [] if index is None else [ns for ns, space in index.spaces.items()
                                             if space.by_id]

    def _read_thread(self, thread_id: str) -> tuple[list[StoredCheckpoint], list[StoredWrite]]:
        with self._read_index(thread_id) as (tf, index):
            if index is None:
                return [], []
            return (self._with_records(tf, index.live_entries()),
                    self._writes_with_records(tf, index.live_writes()))

    def _versions(self, thread_id: str) -> list[int]:
        with self._read_index(thread_id) as (_, index):
            return [] if index is None else sorted(index.versions)

    def _read_version(self, thread_id: str, version: int) -> list[StoredCheckpoint] | None:
        with self._read_index(thread_id) as (tf, index):
            entries = None if index is None else index.versions.get(version)
            return None if entries is None else self._with_records(tf, entries)

    # -- primitives: writes ------------------------------------------------------------
    def _insert(self, stored: StoredCheckpoint) -> Any:
        with self._writing(stored.thread_id, create=stored.parent_id is None) as tf:
            if tf is None:  # a named parent in a thread that does not exist
                return HEAD_MOVED
            index = tf.index
            assert index is not None
            space = index.space(stored.namespace)
            if space is not None:
                existing = space.by_id.get(stored.id)
                if existing is not None:
                    return self._with_records(tf, [existing])[0]
                if stored.seq in space.seqs:
                    return HEAD_MOVED
            if stored.parent_id is not None and (space is None
                                                 or stored.parent_id not in space.by_id):
                return HEAD_MOVED
            with self._os_errors(f"store checkpoint {stored.id!r}", tf):
                if not index.has_live():
                    self._register(stored.thread_id, True)
                frames = _Frames()
                frames.checkpoint(stored)
                self._append(tf, frames)
            self._after_write(tf, stored)
            return None

    def _insert_writes(self, writes: Sequence[StoredWrite], replace: bool) -> None:
        by_thread: dict[str, list[StoredWrite]] = {}
        for write in writes:
            by_thread.setdefault(write.thread_id, []).append(write)
        for thread_id, items in by_thread.items():
            with self._writing(thread_id, create=True) as tf:
                assert tf is not None and tf.index is not None
                frames = _Frames()
                seen: set[tuple[str, str, str, int]] = set()
                for write in items:
                    key = (write.namespace, write.checkpoint_id, write.task_id, write.index)
                    space = tf.index.space(write.namespace)
                    present = space is not None and (write.task_id, write.index) in \
                        space.writes.get(write.checkpoint_id, {})
                    if (present or key in seen) and not replace:
                        continue
                    seen.add(key)
                    frames.write(write)
                if frames:
                    with self._os_errors("store pending writes", tf):
                        self._append(tf, frames)
                    self._after_write(tf, None)

    def _copy_in(self, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite]
                 ) -> None:
        threads = {item.thread_id for item in checkpoints} | {w.thread_id for w in writes}
        for thread_id in sorted(threads):
            with self._writing(thread_id, create=True) as tf:
                assert tf is not None and tf.index is not None
                index = tf.index
                frames = _Frames()
                taken: dict[str, tuple[set[str], set[int]]] = {}
                for item in checkpoints:
                    if item.thread_id != thread_id:
                        continue
                    space = index.space(item.namespace)
                    ids, seqs = taken.setdefault(item.namespace, (
                        set(space.by_id) if space else set(), set(space.seqs) if space else set()))
                    if item.id in ids or item.seq in seqs:
                        continue
                    ids.add(item.id)
                    seqs.add(item.seq)
                    frames.checkpoint(item)
                adds_checkpoints = bool(frames)
                for write in writes:
                    space = index.space(write.namespace)
                    if write.thread_id != thread_id or (space is not None and (
                            write.task_id, write.index) in space.writes.get(
                            write.checkpoint_id, {})):
                        continue
                    frames.write(write)
                if frames:
                    with self._os_errors("copy checkpoints in", tf):
                        if adds_checkpoints and not index.has_live():
                            self._register(thread_id, True)
                        self._append(tf, frames)

    def _replace(self, stored: StoredCheckpoint) -> None:
        if not FileSystemSaver._replace_many(self, [stored]):  # (the async twin wraps both)
            raise KeyError(f"checkpoint {stored.id!r} vanished while being rewritten")

    def _replace_many(self, items: Sequence[StoredCheckpoint]) -> int:
        """Append new frames for checkpoints of one thread that still exist (one lock and
        one write for the keyframes a new one re-points); returns how many."""
        if not items:
            return 0
        thread_id = items[0].thread_id
        with self._writing(thread_id, create=False) as tf:
            if tf is None or tf.index is None:
                return 0
            frames = _Frames()
            for stored in items:
                if stored.thread_id != thread_id:
                    raise ValueError("_replace_many takes checkpoints of one thread")
                space = tf.index.space(stored.namespace)
                if space is not None and stored.id in space.by_id:
                    frames.checkpoint(stored)
            if frames:
                with self._os_errors("rewrite checkpoint " + ", ".join(
                        repr(stored.id) for stored in items), tf):
                    self._append(tf, frames)
            return len(frames)

    def _delete_checkpoints(self, thread_id: str, namespace: str, ids: Sequence[str]) -> None:
        doomed = set(ids)
        with self._writing(thread_id, create=False) as tf:
            if tf is None or tf.index is None:
                return
            space = tf.index.space(namespace)
            if space is None or not (doomed & (set(space.by_id) | set(space.writes))):
                return
            with self._os_errors("delete checkpoints", tf):
                self._compact(tf, lambda ns, cid: ns == namespace and cid in doomed)

    def _delete_thread(self, thread_id: str) -> None:
        with self._writing(thread_id, create=False, damaged_ok=True) as tf:
            if tf is None:
                with self._os_errors("delete", self._file(thread_id)):
                    self._register(thread_id, False)
                return
            with self._os_errors("delete", tf):
                os.unlink(tf.path)
                if self.durability == "fsync":
                    _sync_dir(os.path.dirname(tf.path))
                self._register(thread_id, False)
            tf.drop()

    def _archive(self, thread_id: str) -> tuple[int | None, list[StoredCheckpoint]]:
        with self._writing(thread_id, create=False) as tf:
            if tf is None or tf.index is None or not tf.index.has_live():
                return None, []
            index = tf.index
            version = max(index.versions, default=0) + 1
            items = self._with_records(tf, index.live_entries())
            with self._os_errors("release", tf):
                frames = _Frames()
                frames.release(version)
                self._append(tf, frames)
                self._register(thread_id, False)
            return version, items

    # -- maintenance -------------------------------------------------------------------
    def setup(self) -> None:
        """Create the store directory and its registry now, and check the store's format
        (otherwise done on the first write): an unwritable directory fails here."""
        self._check_store()
        with self._registry_lock, self._os_errors("create the store", self._registry):
            self._ensure_registry()
        self._check_store()
        self._ready = True

    async def asetup(self) -> None:
        await asyncio.to_thread(FileSystemSaver.setup, self)

    def vacuum(self) -> int:
        """Apply ``ttl`` to every thread, compact files whose replaced frames pass a quarter
        of the live ones, bring the registry in line with the thread files (after a crash it may
        list a thread that no longer holds checkpoints), and remove temporary files left
        by crashed writers (older than an hour). A damaged thread file is left as it is
        (logged). Returns the number of thread files rewritten or removed."""
        done = 0
        seen: set[str] = set()
        now = time.time()
        for directory, _, names in os.walk(os.path.join(self._root, "t")):
            for name in names:
                path = os.path.join(directory, name)
                if ".tmp." in name:
                    with contextlib.suppress(OSError):
                        if now - os.stat(path).st_mtime > _TMP_GRACE:
                            os.unlink(path)
                    continue
                thread_id = _thread_id_of(path)
                if thread_id is None:
                    continue
                seen.add(thread_id)
                try:
                    with self._writing(thread_id, create=False) as tf:
                        if tf is None or tf.index is None:
                            continue
                        before = tf.ino
                        with self._os_errors("compact", tf):
                            self._retention(tf, None)
                            self._register(thread_id, tf.index is not None
                                           and tf.index.has_live())
                        done += tf.ino != before
                except CorruptCheckpointError as exc:
                    _log.warning("vacuum skipped a damaged file: %s", exc)
        with self._registry_lock:
            self._registry_refresh()
            gone = [t for t in self._registry_threads if t not in seen]
        for thread_id in gone:
            with self._writing(thread_id, create=False, damaged_ok=True) as tf:
                if tf is None:  # still no file: the registry entry is a leftover
                    with self._os_errors("update", self._registry):
                        self._register(thread_id, False)
        return done

    def storage_bytes(self) -> int:
        """Bytes of every file of the store (thread files and registry), as ``st_size``."""
        return self._disk()[1]

    def _disk(self) -> tuple[int, int, int]:
        """Files, their bytes (``st_size``) and their allocated bytes."""
        files = size = allocated = 0
        for directory, _, names in os.walk(self._root):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(os.path.join(directory, name))
                    files += 1
                    size += st.st_size
                    allocated += getattr(st, "st_blocks", 0) * 512
        return files, size, allocated

    def storage_details(self) -> dict[str, Any]:
        """Files and bytes on disk, for ``savegame stats``."""
        files, size, allocated = self._disk()
        return {"backend": "file", "path": str(self._root), "durability": self.durability,
                "threads": len(self.list_threads()), "files": files, "bytes on disk": size,
                "allocated bytes": allocated}


def _writable(fd: int) -> bool:
    return (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) == os.O_RDWR


def _thread_id_of(path: str) -> str | None:
    """The thread id in a thread file's header (None if it is not one)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
            size = fmt.file_header_size(head)
            if size is not None and size > len(head):
                head += handle.read(size - len(head))
        return fmt.read_file_header(head, fmt.THREAD_MAGIC)[0]
    except (OSError, fmt.FormatError):
        return None


# -- the async-only twin -------------------------------------------------------------------
_PRIMITIVES = ("_read", "_read_latest", "_read_latest_chain", "_read_chains", "_read_many",
               "_list",
               "_read_writes", "_list_threads", "_list_namespaces", "_read_thread",
               "_versions", "_read_version", "_insert", "_insert_writes", "_copy_in",
               "_replace", "_replace_many", "_delete_checkpoints", "_delete_thread",
               "_archive")


class AsyncFileSystemSaver(FileSystemSaver):
    """The file store for asyncio code: the same files, format and options as
    :class:`FileSystemSaver` (either reads what the other wrote), with a-methods only.

    Every primitive is a coroutine that runs the blocking file IO in a worker thread
    (``asyncio.to_thread``), so the event loop never waits on the disk, not even on an
    fsync; the sync methods raise TypeError (use FileSystemSaver for sync code).
    """

    _blocking_io = False
    _async_only = True

    async def avacuum(self) -> int:
        return await asyncio.to_thread(FileSystemSaver.vacuum, self)

    def vacuum(self) -> int:
        raise TypeError("AsyncFileSystemSaver is async-only: use avacuum()")

    def setup(self) -> None:
        raise TypeError("AsyncFileSystemSaver is async-only: use asetup()")


def _to_thread(name: str) -> Callable[..., Any]:
    sync = getattr(FileSystemSaver, name)

    async def primitive(self: AsyncFileSystemSaver, *args: Any) -> Any:
        return await asyncio.to_thread(sync, self, *args)

    primitive.__name__ = primitive.__qualname__ = name
    primitive.__doc__ = f"``FileSystemSaver.{name}`` in a worker thread."
    return primitive


for _name in _PRIMITIVES:
    setattr(AsyncFileSystemSaver, _name, _to_thread(_name))
