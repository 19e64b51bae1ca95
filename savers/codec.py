"""Records: the stored form of one checkpoint's state. Pure code: no IO, no clocks, no globals.

A record is a small header followed by a zstd frame. A *keyframe* compresses the serialized
state alone; a *delta* compresses it with its base's serialized state (the parent
checkpoint's) as a raw-content dictionary, so an append to a long list costs about the
appended bytes. Reading a delta needs its base decoded first: ``depth`` counts the records a
read decodes, and :class:`KeyframePolicy` bounds it.

Layout (big-endian)::

    magic "SG" | format u8 | kind u8 | depth u16 | raw_len u32 | raw_hash 8s
    | [delta only: base_hash 8s] | chain_bytes u32 | keyframe_ratio u16 | crc32 u32 | frame

``raw_hash`` is BLAKE2b-64 of the serialized state; a delta's ``base_hash`` must equal its
base's ``raw_hash``. ``crc32`` covers the header and the frame; the frame carries zstd's own
content checksum, so decoding against a wrong base fails loudly instead of returning
plausible bytes. ``chain_bytes`` (delta payload bytes since the keyframe) and
``keyframe_ratio`` (the keyframe's compressed/raw size, in 1/65535) feed the policy.
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
    "FORMAT_VERSION",
    "KEYFRAME",
    "DELTA",
    "EncodedRecord",
    "KeyframePolicy",
    "RecordError",
    "RecordHeader",
    "UnsupportedFormatError",
    "decode_path",
    "encode",
    "raw_hash",
    "read_header",
]

FORMAT_VERSION = 1
KEYFRAME, DELTA = 0, 1

_MAGIC = b"SG"
_PREFIX = struct.Struct(">2sBBHI8s")  # magic, format, kind, depth, raw_len, raw_hash
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
    raw_len: int
    raw_hash: bytes
    base_hash: bytes | None
    chain_bytes: int
    keyframe_ratio: int
    size: int  # header length in bytes; the frame follows

    @property
    def is_keyframe(self) -> bool:
        return self.kind == KEYFRAME


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    data: bytes
    header: RecordHeader


@dataclass(frozen=True, slots=True)
class KeyframePolicy:
    """When to write a keyframe instead of a delta.

    - ``max_chain``: a read decodes at most this many records (keyframe included);
    - ``max_delta_ratio``: a delta larger than this share of a fresh keyframe is a scene
      cut (the state changed wholesale): write the keyframe instead;
    - ``max_chain_ratio``: once the deltas since the keyframe weigh more than this many
      fresh keyframes, start a new chain (storing the keyframe is then the cheaper way).
    - ``level``: zstd level of keyframes and deltas.
    A writer that does not hold the parent's serialized state writes a keyframe too.
    """

    max_chain: int = 32
    max_delta_ratio: float = 0.5
    max_chain_ratio: float = 1.0
    level: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.max_chain <= 0xFFFF:
            raise ValueError("max_chain must be between 1 and 65535")

    def may_delta(self, base: RecordHeader | None) -> bool:
        return base is not None and base.depth < self.max_chain

    def keeps_delta(self, base: RecordHeader, raw_len: int, delta_len: int) -> bool:
        keyframe_estimate = max(1.0, base.keyframe_ratio / 0xFFFF * raw_len)
        if delta_len > self.max_delta_ratio * keyframe_estimate:
            return False
        return base.chain_bytes + delta_len <= self.max_chain_ratio * keyframe_estimate


def raw_hash(raw: bytes) -> bytes:
    """BLAKE2b-64 of serialized state: identifies a base and fingerprints content."""
    return hashlib.blake2b(raw, digest_size=8).digest()


def _params(level: int, raw_len: int, base_len: int) -> zstd.ZstdCompressionParameters:
    """Compression parameters whose match finder still reaches the whole base.

    Measured (research/compression_delta.md and our own runs): level 3 with a raw-content
    dictionary finds the parent up to ~1 MiB of base; level 6 with a window covering base
    and input holds to ~2.5 MiB; beyond that only larger hash tables keep finding it.
    """
    if base_len <= 1 << 20:
        return zstd.ZstdCompressionParameters.from_level(
            level, source_size=raw_len, dict_size=base_len, write_checksum=1, format=_FORMAT
        )
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


def _compress(raw: bytes, base: bytes | None, level: int) -> bytes:
    if base is None:
        params = zstd.ZstdCompressionParameters.from_level(
            level, source_size=len(raw), write_checksum=1, format=_FORMAT,
            window_log=min(_MAX_WINDOW_LOG, max(10, math.ceil(math.log2(len(raw) + 1)))),
        )
        return zstd.ZstdCompressor(compression_params=params).compress(raw)
    dictionary = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    params = _params(level, len(raw), len(base))
    return zstd.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(raw)


def _pack(kind: int, depth: int, raw: bytes, digest: bytes, base_hash: bytes | None,
          chain_bytes: int, keyframe_ratio: int, frame: bytes) -> EncodedRecord:
    head = _PREFIX.pack(_MAGIC, FORMAT_VERSION, kind, depth, len(raw), digest)
    if base_hash is not None:
        head += _BASE.pack(base_hash)
    body = struct.pack(">IH", min(chain_bytes, 0xFFFFFFFF), keyframe_ratio)
    crc = zlib.crc32(frame, zlib.crc32(head + body))
    data = b"".join((head, body, _CRC.pack(crc), frame))
    header = RecordHeader(kind, depth, len(raw), digest, base_hash, chain_bytes, keyframe_ratio,
                          len(data) - len(frame))
    return EncodedRecord(data, header)


def encode(
    raw: bytes,
    base: tuple[bytes, RecordHeader] | None = None,
    policy: KeyframePolicy = KeyframePolicy(),
    digest: bytes | None = None,
) -> EncodedRecord:
    """Encode serialized state as a delta against ``base`` (its bytes and header) when the
    policy allows it, else as a keyframe. ``digest`` is ``raw_hash(raw)`` if already known."""
    if len(raw) > 0xFFFFFFFF:
        raise ValueError("a serialized state must be under 4 GiB")
    digest = digest if digest is not None else raw_hash(raw)
    if base is not None and policy.may_delta(base[1]):
        base_raw, base_header = base
        frame = _compress(raw, base_raw, policy.level)
        if policy.keeps_delta(base_header, len(raw), len(frame)):
            return _pack(DELTA, base_header.depth + 1, raw, digest, base_header.raw_hash,
                         base_header.chain_bytes + len(frame), base_header.keyframe_ratio, frame)
    frame = _compress(raw, None, policy.level)
    ratio = min(0xFFFF, max(1, round(len(frame) / max(1, len(raw)) * 0xFFFF)))
    return _pack(KEYFRAME, 1, raw, digest, None, 0, ratio, frame)


def read_header(data: bytes, position: int = 0) -> RecordHeader:
    """Parse and verify a record's header and checksum (the frame is not decompressed)."""
    if len(data) < _PREFIX.size + _TAIL.size or data[:2] != _MAGIC:
        raise RecordError("not a savegame record (bad magic or truncated)", position)
    _, version, kind, depth, raw_len, digest = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"record written by format version {version}; this savegame reads format "
            f"{FORMAT_VERSION} and older: upgrade savegame to read it",
            position,
        )
    if version < 1 or kind not in (KEYFRAME, DELTA) or depth < 1:
        raise RecordError("malformed record header", position)
    offset = _PREFIX.size
    base_hash = None
    if kind == DELTA:
        if len(data) < offset + _BASE.size + _TAIL.size:
            raise RecordError("truncated record header", position)
        (base_hash,) = _BASE.unpack_from(data, offset)
        offset += _BASE.size
    chain_bytes, ratio, crc = _TAIL.unpack_from(data, offset)
    size = offset + _TAIL.size
    if zlib.crc32(data[size:], zlib.crc32(data[: size - _CRC.size])) != crc:
        raise RecordError("record checksum mismatch (stored bytes were altered)", position)
    return RecordHeader(kind, depth, raw_len, digest, base_hash, chain_bytes, ratio, size)


def decode_path(
    records: Sequence[bytes], base: tuple[bytes, RecordHeader] | None = None
) -> list[bytes]:
    """Decode records that each are a delta against the one before, the first a keyframe
    or a delta against ``base`` (already decoded bytes and header). Returns the serialized
    state of every record; raises :class:`RecordError` naming the failing position."""
    out: list[bytes] = []
    previous: RecordHeader | None = None if base is None else base[1]
    for position, data in enumerate(records):
        header = read_header(data, position)
        if previous is None:
            if not header.is_keyframe:
                raise RecordError("delta record without its base (chain is cut)", position)
        else:
            if header.is_keyframe or header.base_hash != previous.raw_hash:
                raise RecordError("delta record does not match its base record", position)
            if header.depth != previous.depth + 1:
                raise RecordError("record chain depth is inconsistent", position)
        prior = out[-1] if out else (base[0] if base is not None and position == 0 else None)
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
