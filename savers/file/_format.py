"""The on-disk format of the file store: file headers, frames and envelopes. Pure code: no
IO, no clocks (README "How it stores" shows the same layout).

A thread file is a file header followed by frames, appended and never changed in place::

    file header: magic "SGFT" | version u16 | flags u16 | id_len u32 | thread id (UTF-8)
                 | crc32 u32 (of everything before it)
    frame:       magic "\\xf5G" | kind u8 | flags u8 | env_len u32 | payload_len u32
                 | env_crc u32 | payload_crc u32 | head_crc u32 (of the 20 bytes before it)
                 | envelope (msgpack array, env_len bytes) | payload (payload_len bytes)

The registry (``threads.sgr``) has the same layout with magic "SGFR" and an empty id.
Integers are big-endian; checksums are CRC-32 (``zlib.crc32``). ``head_crc`` makes the
lengths trustworthy before they are used, so a scan knows where the next frame starts
without reading a payload; ``env_crc`` guards the envelope (what the index is built
from); ``payload_crc`` guards the payload, checked when it is read. A frame that ends past
the end of the file is a torn tail (a writer died mid-append).

Envelopes (msgpack arrays, field order fixed by ``FORMAT_VERSION``):

- CHECKPOINT: ``[ns, id, parent, step, node, next, metadata, created_us, keyframe, base,
  depth, seq]``, payload = the record. ``keyframe`` is nil when equal to ``id``, ``base``
  is nil (a keyframe), true (the parent) or an id; ``created_us`` is microseconds since
  the Unix epoch (UTC). A later frame of the same (ns, id) replaces an earlier one.
- WRITE: ``[ns, checkpoint_id, task_id, index, channel, task_path]``, payload = record.
- RELEASE: ``[version]``, no payload: every checkpoint stored before it that was live
  becomes released version ``version``; live pending writes are dropped.
- ADD / DEL (registry only): ``[thread_id]``.

Ids in canonical UUID text (what savegame makes) are stored as 16 bytes, any other id as
text: msgpack keeps ``bin`` and ``str`` apart, so reading back is exact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from ..base import StoredCheckpoint, StoredWrite

__all__ = [
    "CHECKPOINT",
    "FORMAT_VERSION",
    "FRAME",
    "RELEASE",
    "WRITE",
    "FormatError",
    "Frame",
    "NewerFormatError",
    "checkpoint_frame",
    "file_header",
    "from_micros",
    "micros",
    "parse_checkpoint",
    "parse_frame_head",
    "parse_write",
    "read_file_header",
    "release_frame",
    "thread_key",
    "write_frame",
]

#: Version of the file layout, written in every file header. 1: this layout.
FORMAT_VERSION = 1

THREAD_MAGIC = b"SGFT"
REGISTRY_MAGIC = b"SGFR"
FRAME_MAGIC = b"\xf5G"

CHECKPOINT, WRITE, RELEASE, ADD, DEL = 1, 2, 3, 16, 17
KINDS = frozenset({CHECKPOINT, WRITE, RELEASE, ADD, DEL})

_FILE_HEAD = struct.Struct(">4sHHI")  # magic, version, flags, id_len
_CRC = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">2sBBIIIII")  # magic, kind, flags, env_len, payload_len,
#                                            env_crc, payload_crc, head_crc
FRAME = _FRAME_HEAD.size  # 24 bytes
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: Longest envelope a reader accepts (ids are at most 16,384 characters; metadata small).
MAX_ENVELOPE = 64 << 20


class FormatError(Exception):
    """Bytes that are not what the format says (a checksum, a magic or a field is wrong)."""


class NewerFormatError(FormatError):
    """A file written by a newer savegame (a higher format version)."""


def thread_key(thread_id: str) -> str:
    """The file name stem of a thread: 128-bit BLAKE2b of its id, in hex. Thread ids may
    hold any Unicode, ``/``, ``..`` and 16,384 characters; none of it reaches a path."""
    return hashlib.blake2b(thread_id.encode("utf-8"), digest_size=16).hexdigest()


# -- file headers ------------------------------------------------------------------------
def file_header(magic: bytes, thread_id: str) -> bytes:
    name = thread_id.encode("utf-8")
    head = _FILE_HEAD.pack(magic, FORMAT_VERSION, 0, len(name)) + name
    return head + _CRC.pack(zlib.crc32(head))


def file_header_size(data: bytes) -> int | None:
    """Bytes of the file header at the start of ``data`` (None: ``data`` is too short to
    tell)."""
    if len(data) < _FILE_HEAD.size:
        return None
    id_len: int = _FILE_HEAD.unpack_from(data)[3]
    return _FILE_HEAD.size + id_len + _CRC.size


def read_file_header(data: bytes, magic: bytes) -> tuple[str, int]:
    """(thread id, header size) of a file starting with ``data`` (which must hold the
    whole header, see :func:`file_header_size`)."""
    if len(data) < _FILE_HEAD.size or data[:4] != magic:
        raise FormatError("not a savegame file-store file (bad magic)")
    _, version, _, id_len = _FILE_HEAD.unpack_from(data)
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"written by file format version {version}; this savegame reads version "
            f"{FORMAT_VERSION} and older: upgrade savegame to read it")
    if version < 1:
        raise FormatError(f"unknown file format version {version}")
    size = _FILE_HEAD.size + id_len
    if len(data) < size + _CRC.size:
        raise FormatError("truncated file header")
    (crc,) = _CRC.unpack_from(data, size)
    if zlib.crc32(memoryview(data)[:size]) != crc:
        raise FormatError("file header checksum mismatch")
    try:
        thread_id = bytes(data[_FILE_HEAD.size:size]).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("file header holds an id that is not UTF-8") from None
    return thread_id, size + _CRC.size


# -- frames ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    """A frame's fixed head, verified: where its envelope and payload are."""

    kind: int
    env_len: int
    payload_len: int
    env_crc: int
    payload_crc: int

    @property
    def size(self) -> int:
        return FRAME + self.env_len + self.payload_len


def frame(kind: int, envelope: bytes, payload: bytes | memoryview = b"") -> tuple[bytes, int]:
    """(head + envelope, payload crc) of a frame; the payload follows it on disk as is, so
    a 200 MB record is never copied into a bigger buffer."""
    payload_crc = zlib.crc32(payload)
    head = _FRAME_HEAD.pack(FRAME_MAGIC, kind, 0, len(envelope), len(payload),
                            zlib.crc32(envelope), payload_crc, 0)[:-4]
    return head + _CRC.pack(zlib.crc32(head)) + envelope, payload_crc


def parse_frame_head(data: bytes | memoryview, offset: int = 0) -> Frame | None:
    """The frame head at ``offset`` of ``data`` (24 bytes there), or None when it is not a
    valid head (bad magic or checksum, unknown kind, absurd lengths)."""
    magic, kind, _, env_len, payload_len, env_crc, payload_crc, head_crc = (
        _FRAME_HEAD.unpack_from(data, offset))
    if magic != FRAME_MAGIC or zlib.crc32(data[offset:offset + FRAME - 4]) != head_crc:
        return None
    if kind not in KINDS or env_len > MAX_ENVELOPE:
        return None
    return Frame(kind, env_len, payload_len, env_crc, payload_crc)


def unpack_envelope(head: Frame, data: bytes | memoryview) -> list[Any]:
    """The envelope of a frame (``data`` = its ``env_len`` bytes), checked."""
    if zlib.crc32(data) != head.env_crc:
        raise FormatError("frame envelope checksum mismatch")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise FormatError(f"frame envelope does not parse: {exc}") from None
    if not isinstance(value, list):
        raise FormatError("frame envelope is not an array")
    return value


def guess_id(data: bytes | memoryview) -> str | None:
    """Best effort: the checkpoint id of a damaged CHECKPOINT envelope (for messages)."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return _unpack_id(value[1])
    except Exception:
        return None


# -- ids ---------------------------------------------------------------------------------
def _pack_id(value: str) -> str | bytes:
    """Canonical UUID text as its 16 bytes, anything else unchanged."""
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        digits = value[:8] + value[9:13] + value[14:18] + value[19:23] + value[24:]
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            return value
        if raw.hex() == digits:  # lower-case hex only (and no whitespace fromhex skips)
            return raw
    return value


def _unpack_id(value: Any) -> str:
    if type(value) is bytes:
        if len(value) != 16:
            raise FormatError("a packed id is not 16 bytes")
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if type(value) is not str:
        raise FormatError(f"an id is {type(value).__name__}, not text")
    return value


def micros(when: dt.datetime) -> int:
    """``when`` in microseconds since 1970 (naive = UTC), as envelopes keep it."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


def _packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


# -- envelopes ---------------------------------------------------------------------------
def checkpoint_frame(stored: StoredCheckpoint) -> tuple[bytes, int]:
    """(head + envelope, payload crc) of a CHECKPOINT frame; ``stored.record`` follows."""
    base: Any = stored.base_id
    if base is not None and base == stored.parent_id:
        base = True
    else:
        base = None if base is None else _pack_id(base)
    envelope = _packb([
        stored.namespace,
        _pack_id(stored.id),
        None if stored.parent_id is None else _pack_id(stored.parent_id),
        stored.step,
        stored.node_id,
        stored.next_node_id,
        dict(stored.metadata),
        micros(stored.created_at),
        None if stored.keyframe_id == stored.id else _pack_id(stored.keyframe_id),
        base,
        stored.depth,
        stored.seq,
    ])
    return frame(CHECKPOINT, envelope, stored.record)


def parse_checkpoint(thread_id: str, fields: list[Any]) -> StoredCheckpoint:
    """The StoredCheckpoint of a CHECKPOINT envelope, with an empty ``record``."""
    try:
        ns, cid, parent, step, node, nxt, meta, when, kf, base, depth, seq = fields
    except ValueError:
        raise FormatError("a checkpoint envelope has the wrong number of fields") from None
    checkpoint_id = _unpack_id(cid)
    parent_id = None if parent is None else _unpack_id(parent)
    if (type(ns) is not str or type(meta) is not dict or type(step) is not int
            or type(when) is not int or type(depth) is not int or type(seq) is not int
            or (node is not None and type(node) is not str)
            or (nxt is not None and type(nxt) is not str)):
        raise FormatError("a checkpoint envelope has fields of the wrong type")
    return StoredCheckpoint(
        thread_id, ns, checkpoint_id, parent_id, step, node, nxt, meta,
        from_micros(when), b"",
        checkpoint_id if kf is None else _unpack_id(kf),
        parent_id if base is True else None if base is None else _unpack_id(base),
        depth, seq,
    )


def write_frame(write: StoredWrite) -> tuple[bytes, int]:
    envelope = _packb([write.namespace, _pack_id(write.checkpoint_id), write.task_id,
                       write.index, write.channel, write.task_path])
    return frame(WRITE, envelope, write.record)


def parse_write(thread_id: str, fields: list[Any]) -> StoredWrite:
    """The StoredWrite of a WRITE envelope, with an empty ``record``."""
    try:
        ns, cid, task_id, index, channel, task_path = fields
    except ValueError:
        raise FormatError("a write envelope has the wrong number of fields") from None
    if not (isinstance(ns, str) and isinstance(task_id, str) and isinstance(index, int)
            and isinstance(channel, str) and isinstance(task_path, str)):
        raise FormatError("a write envelope has fields of the wrong type")
    return StoredWrite(thread_id, ns, _unpack_id(cid), task_id, index, channel, task_path, b"")


def release_frame(version: int) -> bytes:
    return frame(RELEASE, _packb([version]))[0]


def registry_frame(kind: int, thread_id: str) -> bytes:
    return frame(kind, _packb([thread_id]))[0]
