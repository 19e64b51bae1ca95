"""Records: the stored form of one checkpoint's state. Pure code: no IO, no clocks, no globals.

A record is a small header followed by a zstd frame. A *keyframe* compresses the serialized
state alone. Every other record is a delta: the state compressed with an earlier state on
its own history (its *base*) as a raw-content dictionary, so appending to a long list costs
about the appended bytes. Reading a record decodes its base first; ``depth`` counts the
records a read decodes, keyframe included, and :class:`KeyframePolicy` bounds it.

Two kinds of delta keep both reads and storage small (a two-level skip chain):

- a *plain* delta's base is the parent checkpoint: the cheapest record, written at most
  ``run`` times in a row;
- an *anchor* delta's base is the nearest anchor (or keyframe) behind the parent, so it
  skips over the run of plain deltas. Anchors stack, and a keyframe is written only when
  stacked anchors plus a run would exceed ``max_chain``. With ``max_chain=32`` a read
  decodes at most 32 records while keyframes come about every 270 steps instead of 32.

Layout (big-endian)::

    magic "SG" | format u8 | kind u8 | depth u16 | run u16 | raw_len u32 | raw_hash 8s
    | [deltas only: base_hash 8s] | chain_bytes u32 | keyframe_ratio u16 | crc32 u32 | frame

``raw_hash`` is BLAKE2b-64 of the serialized state; a delta's ``base_hash`` must equal its
base's ``raw_hash``. ``crc32`` covers the record's *location* (format 2: the thread,
namespace and checkpoint id it was written for, see :func:`location`), header and frame, so
a valid record copied onto another checkpoint fails its checksum; the frame carries zstd's
content checksum, so decoding against a wrong base fails loudly instead of returning plausible
bytes. ``run`` counts plain deltas since the anchor, ``chain_bytes`` the delta payload
bytes a read of this record fetches, ``keyframe_ratio`` the keyframe's compressed/raw size
(in 1/65535): the policy's inputs.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard as zstd

__all__ = [
    "ANCHOR",
    "DELTA",
    "FORMAT_VERSION",
    "KEYFRAME",
    "Base",
    "EncodedRecord",
    "KeyframePolicy",
    "RecordError",
    "RecordHeader",
    "UnsupportedFormatError",
    "decode_path",
    "encode",
    "location",
    "raw_hash",
    "read_header",
    "rebind",
]

#: 1: the checksum covers header and frame; 2: also the record's location.
FORMAT_VERSION = 2
KEYFRAME, DELTA, ANCHOR = 0, 1, 2  # DELTA: base is the parent; ANCHOR: base is an anchor

_MAGIC = b"SG"
_PREFIX = struct.Struct(">2sBBHHI8s")  # magic, format, kind, depth, run, raw_len, raw_hash
_BASE = struct.Struct(">8s")
_TAIL = struct.Struct(">IHI")  # chain_bytes, keyframe_ratio, crc32
_CRC = struct.Struct(">I")
_MAX_WINDOW_LOG = 27  # 128 MiB: what a decoder accepts by default
_FORMAT = zstd.FORMAT_ZSTD1_MAGICLESS


class RecordError(Exception):
    """A record cannot be decoded. ``position`` is its index in the decode path."""

    def __init__(self, message: str, position: int = 0):
        super().__init__(message)
        self.position = position


class UnsupportedFormatError(RecordError):
    """The record was written by a newer savegame (a higher format version)."""


@dataclass(frozen=True, slots=True)
class RecordHeader:
    kind: int
    depth: int
    run: int
    raw_len: int
    raw_hash: bytes
    base_hash: bytes | None
    chain_bytes: int
    keyframe_ratio: int
    size: int  # header length in bytes; the frame follows

    @property
    def is_keyframe(self) -> bool:
        return self.kind == KEYFRAME

    @property
    def is_anchor(self) -> bool:
        """Keyframes and anchor deltas: what later anchors are encoded against."""
        return self.kind != DELTA


@dataclass(frozen=True, slots=True)
class Base:
    """A decoded state a new record may be encoded against: its bytes and header."""

    raw: bytes
    header: RecordHeader


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    data: bytes
    header: RecordHeader
    #: which base was used: DELTA (the parent), ANCHOR (the anchor) or KEYFRAME (none)
    base: int


@dataclass(frozen=True, slots=True)
class KeyframePolicy:
    """Which base a new record is encoded against, and when to write a keyframe.

    - ``max_chain``: a read decodes at most this many records (keyframe included);
    - ``run``: plain deltas in a row before the next anchor (default ``max_chain // 2``);
      anchors stack to depth ``max_chain - run + 1``, so the deepest plain delta sits at
      exactly ``max_chain``;
    - ``max_delta_ratio``: a delta larger than this share of a fresh keyframe is a scene
      cut (the state changed wholesale): write the keyframe instead;
    - ``max_chain_ratio``: the delta bytes a read fetches may weigh this many fresh
      keyframes; past that a keyframe is the cheaper thing to read;
    - ``level``: zstd level of keyframes; ``delta_level`` of deltas (None: the cheapest
      level that still finds the base, by base size).
    A writer that does not hold its base's serialized state writes a keyframe.
    """

    max_chain: int = 32
    run: int | None = None
    max_delta_ratio: float = 0.5
    max_chain_ratio: float = 2.0
    level: int = 3
    delta_level: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_chain <= 0xFFFF:
            raise ValueError("max_chain must be between 1 and 65535")
        if self.run is not None and not 1 <= self.run <= self.max_chain:
            raise ValueError("run must be between 1 and max_chain")

    @property
    def run_length(self) -> int:
        return self.run if self.run is not None else max(1, self.max_chain // 2)

    def may_extend(self, parent: RecordHeader) -> bool:
        """May the next record be a plain delta against ``parent``?"""
        return parent.run + 1 < self.run_length and parent.depth < self.max_chain

    def may_anchor(self, anchor: RecordHeader) -> bool:
        """May the next record be an anchor delta against ``anchor``?"""
        return anchor.depth + self.run_length <= self.max_chain

    def keeps(self, base: RecordHeader, raw_len: int, delta_len: int) -> bool:
        """Is a delta of ``delta_len`` bytes against ``base`` worth keeping?"""
        keyframe_estimate = max(1.0, base.keyframe_ratio / 0xFFFF * raw_len)
        if delta_len > self.max_delta_ratio * keyframe_estimate:
            return False
        return base.chain_bytes + delta_len <= self.max_chain_ratio * keyframe_estimate


def location(*parts: str) -> bytes:
    """The bytes a record's checksum binds it to: its thread, namespace and checkpoint id
    (or a pending write's), each length-prefixed UTF-8."""
    out = bytearray()
    for part in parts:
        data = part.encode("utf-8")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def raw_hash(raw: bytes) -> bytes:
    """BLAKE2b-64 of serialized state: identifies a base and fingerprints content."""
    return hashlib.blake2b(raw, digest_size=8).digest()


def _params(level: int | None, raw_len: int, base_len: int) -> zstd.ZstdCompressionParameters:
    """The cheapest compression parameters whose match finder still reaches the whole base.

    Measured on chat states (raw-content dictionary = the base): level 2 finds the base up
    to ~0.5 MiB at half level 3's CPU (deltas ~3% larger) but misses it at 0.9 MiB; level
    3 holds to ~1 MiB; level 6 with a window covering base and input to ~2.5 MiB; beyond
    that only larger hash tables keep finding it. ``level`` (None: automatic) is a floor.
    """
    if base_len <= 1 << 20:
        auto = 2 if base_len <= 1 << 18 else 3
        return zstd.ZstdCompressionParameters.from_level(
            auto if level is None else level, source_size=raw_len, dict_size=base_len,
            write_checksum=1, format=_FORMAT,
        )
    level = 3 if level is None else level
    window_log = min(_MAX_WINDOW_LOG, max(10, math.ceil(math.log2(base_len + raw_len))))
    if base_len <= 5 << 19:
        return zstd.ZstdCompressionParameters.from_level(
            max(level, 6), source_size=raw_len, dict_size=base_len, window_log=window_log,
            write_checksum=1, format=_FORMAT,
        )
    table_log = min(window_log - 2, 24)
    return zstd.ZstdCompressionParameters.from_level(
        level, source_size=raw_len, dict_size=base_len, window_log=window_log,
        hash_log=table_log, chain_log=table_log, write_checksum=1, format=_FORMAT,
    )


def _compress(raw: bytes, base: bytes | None, level: int | None) -> bytes:
    if base is None:
        params = zstd.ZstdCompressionParameters.from_level(
            3 if level is None else level, source_size=len(raw), write_checksum=1,
            format=_FORMAT,
            window_log=min(_MAX_WINDOW_LOG, max(10, math.ceil(math.log2(len(raw) + 1)))),
        )
        return zstd.ZstdCompressor(compression_params=params).compress(raw)
    dictionary = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    params = _params(level, len(raw), len(base))
    return zstd.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(raw)


def _pack(kind: int, depth: int, run: int, raw: bytes, digest: bytes, base_hash: bytes | None,
          chain_bytes: int, keyframe_ratio: int, frame: bytes, where: bytes) -> EncodedRecord:
    head = _PREFIX.pack(_MAGIC, FORMAT_VERSION, kind, depth, run, len(raw), digest)
    if base_hash is not None:
        head += _BASE.pack(base_hash)
    body = struct.pack(">IH", min(chain_bytes, 0xFFFFFFFF), keyframe_ratio)
    crc = zlib.crc32(frame, zlib.crc32(head + body, zlib.crc32(where)))
    data = b"".join((head, body, _CRC.pack(crc), frame))
    header = RecordHeader(kind, depth, run, len(raw), digest, base_hash, chain_bytes,
                          keyframe_ratio, len(data) - len(frame))
    return EncodedRecord(data, header, kind)


def encode(
    raw: bytes,
    parent: Base | None = None,
    anchor: Base | None = None,
    policy: KeyframePolicy = KeyframePolicy(),
    digest: bytes | None = None,
    where: bytes = b"",
) -> EncodedRecord:
    """Encode serialized state against ``parent`` (plain delta) or ``anchor`` (the anchor
    behind the parent) when the policy allows, else as a keyframe. ``digest`` is
    ``raw_hash(raw)`` if the caller already has it; ``where`` is the record's
    :func:`location`, which reading it must name again."""
    if len(raw) > 0xFFFFFFFF:
        raise ValueError("a serialized state must be under 4 GiB")
    digest = digest if digest is not None else raw_hash(raw)
    candidates = []
    if parent is not None and policy.may_extend(parent.header):
        candidates.append((DELTA, parent, parent.header.run + 1))
    if anchor is not None and anchor.header.is_anchor and policy.may_anchor(anchor.header):
        candidates.append((ANCHOR, anchor, 0))
    for kind, base, run in candidates:
        frame = _compress(raw, base.raw, policy.delta_level)
        if policy.keeps(base.header, len(raw), len(frame)):
            head = base.header
            return _pack(kind, head.depth + 1, run, raw, digest, head.raw_hash,
                         head.chain_bytes + len(frame), head.keyframe_ratio, frame, where)
    frame = _compress(raw, None, policy.level)
    ratio = min(0xFFFF, max(1, round(len(frame) / max(1, len(raw)) * 0xFFFF)))
    return _pack(KEYFRAME, 1, 0, raw, digest, None, 0, ratio, frame, where)


def read_header(data: bytes, position: int = 0, where: bytes = b"") -> RecordHeader:
    """Parse and verify a record's header and checksum (the frame is not decompressed);
    ``where`` is the :func:`location` the record is read from."""
    if len(data) < _PREFIX.size + _TAIL.size or data[:2] != _MAGIC:
        raise RecordError("not a savegame record (bad magic or truncated)", position)
    _, version, kind, depth, run, raw_len, digest = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"record written by format version {version}; this savegame reads format "
            f"{FORMAT_VERSION} and older: upgrade savegame to read it",
            position,
        )
    if version < 1 or kind not in (KEYFRAME, DELTA, ANCHOR) or depth < 1:
        raise RecordError("malformed record header", position)
    offset = _PREFIX.size
    base_hash = None
    if kind != KEYFRAME:
        if len(data) < offset + _BASE.size + _TAIL.size:
            raise RecordError("truncated record header", position)
        (base_hash,) = _BASE.unpack_from(data, offset)
        offset += _BASE.size
    chain_bytes, ratio, crc = _TAIL.unpack_from(data, offset)
    size = offset + _TAIL.size
    if _crc(data, size, where if version >= 2 else b"") != crc:
        raise RecordError("record checksum mismatch (the stored bytes were altered, or the "
                          "record was moved here from another checkpoint)", position)
    return RecordHeader(kind, depth, run, raw_len, digest, base_hash, chain_bytes, ratio, size)


def _crc(data: bytes, header_size: int, where: bytes) -> int:
    view = memoryview(data)
    return zlib.crc32(view[header_size:],
                      zlib.crc32(view[: header_size - _CRC.size], zlib.crc32(where)))


def rebind(data: bytes, old: bytes, new: bytes) -> bytes:
    """The record ``data`` (verified at location ``old``) bound to location ``new``: what
    copying a thread does, without re-encoding anything."""
    header = read_header(data, 0, old)
    if data[2] < 2 or old == new:  # format 1 records are bound to no location
        return data
    crc = _crc(data, header.size, new)
    return b"".join((data[: header.size - _CRC.size], _CRC.pack(crc), data[header.size:]))


def decode_path(
    records: Sequence[bytes], base: Base | None = None, where: Sequence[bytes] | None = None
) -> list[bytes]:
    """Decode records that each are a delta against the one before, the first a keyframe
    or a delta against ``base`` (already decoded bytes and header); ``where`` holds each
    record's :func:`location`. Returns the serialized state of every record; raises
    :class:`RecordError` naming the failing position."""
    out: list[bytes] = []
    previous: RecordHeader | None = None if base is None else base.header
    for position, data in enumerate(records):
        header = read_header(data, position, where[position] if where else b"")
        if previous is None:
            if not header.is_keyframe:
                raise RecordError("delta record without its base (chain is cut)", position)
        else:
            if header.is_keyframe or header.base_hash != previous.raw_hash:
                raise RecordError("delta record does not match its base record", position)
            if header.depth <= previous.depth:  # a rewritten base may sit shallower
                raise RecordError("record chain depth is inconsistent", position)
        prior = out[-1] if out else (base.raw if base is not None else None)
        out.append(_decompress(data, header, None if header.is_keyframe else prior, position))
        previous = header
    return out


def _decompress(data: bytes, header: RecordHeader, base: bytes | None, position: int) -> bytes:
    frame = memoryview(data)[header.size:]
    try:
        if base is None:
            decompressor = zstd.ZstdDecompressor(format=_FORMAT)
        else:
            dictionary = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
            decompressor = zstd.ZstdDecompressor(dict_data=dictionary, format=_FORMAT)
        raw = decompressor.decompress(frame, max_output_size=header.raw_len)
    except zstd.ZstdError as exc:
        raise RecordError(f"compressed payload does not decode: {exc}", position) from None
    if len(raw) != header.raw_len:
        raise RecordError("decoded length differs from the recorded length", position)
    return raw
