"""Records: the stored form of one checkpoint's state. Pure code: no IO, no clocks, no globals.

A record is a small header followed by a zstd frame. A *master* (a keyframe) compresses the
serialized state alone. A *delta* compresses the state with its parent's state as a
raw-content dictionary, so appending to a long list costs about the appended bytes. Runs of
deltas hang off a master: ``depth`` counts the records of that forward chain (the master is
1), and :class:`KeyframePolicy` starts a new master when a run reaches ``max_chain``.

A master costs a whole state, and a long thread writes many. So once a newer master exists,
an older one is rewritten as a *reverse* record: its state compressed against a newer
master's state. Going back in a growing thread mostly deletes content, so a reverse record
costs a few hundred bytes however far apart the two are. Which newer master it points to
follows a Fenwick tree over the masters' numbers (``index`` 1, 2, 3, ...): master ``i``
ends up pointing to master ``i + lowbit(i)``, and until that one exists, to the newest.
Reading any checkpoint then decodes the newest master, at most ``log2(masters) + 1``
reverse records, and at most ``max_chain - 1`` deltas. Each master carries the Fenwick
*roots* of its time (the masters that point to it, or will when it is converted) so the
writer of the next master knows which records to re-point (:func:`repoint`).

Layout, format 4 (big-endian)::

    magic "SG" | format u8 | flags+kind u8 | depth u16 | raw_len u32 | raw_hash 8s | index u32
    | [kind != MASTER: base_hash 8s] | chain_bytes u32 | keyframe_ratio u16
    | [kind == MASTER: roots u16, per root: index u32, id length u16, id UTF-8]
    | crc32 u32 | frame

Formats 1 and 2 (still read) had a ``run u16`` after ``depth``, no index and no roots, and
ANCHOR records (deltas against an earlier anchor). ``raw_hash`` fingerprints the serialized
state: XXH3-64 where the kind byte has the ``XXH3`` flag (format 4; a tenth of BLAKE2b's
CPU on a 160 KB state), else BLAKE2b-64 (formats 1-3, and the reverse records of their
masters, which keep their master's fingerprint). A delta's ``base_hash`` must equal its
base's ``raw_hash``. ``crc32``
covers the record's *location* (the thread, namespace and checkpoint id it was written for,
see :func:`location`; formats 2 and later), header and frame, so a valid record copied onto
another checkpoint fails its checksum; the frame carries zstd's content checksum, so
decoding against a wrong base fails loudly instead of returning plausible bytes.
``chain_bytes`` counts the delta payload bytes a read of this record's forward chain
fetches, ``keyframe_ratio`` the master's compressed/raw size (in 1/65535): the policy's
inputs.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash
import zstandard as zstd

__all__ = [
    "ANCHOR",
    "DELTA",
    "FORMAT_VERSION",
    "KEYFRAME",
    "REVERSE",
    "Base",
    "Dictionary",
    "EncodedRecord",
    "KeyframePolicy",
    "RecordError",
    "RecordHeader",
    "UnsupportedFormatError",
    "decode_path",
    "decode_records",
    "encode",
    "encode_reverse",
    "content_hash",
    "location",
    "raw_hash",
    "read_header",
    "rebind",
    "repoint",
]

#: 1: the checksum covers header and frame; 2: also the record's location; 3: masters
#: carry a number and the Fenwick roots, reverse records, no anchors; 4: the kind byte
#: carries flags (``_XXH3``).
FORMAT_VERSION = 4
#: KEYFRAME: a master (no base); DELTA: base is the parent; ANCHOR (formats 1-2 only): base
#: is an earlier anchor; REVERSE: a former master whose base is a newer master.
KEYFRAME, DELTA, ANCHOR, REVERSE = 0, 1, 2, 3
_ROOT_KINDS = (KEYFRAME, REVERSE)
_KIND_MASK = 0x0F
_XXH3 = 0x10  # flag: raw_hash is XXH3-64 (format 4), not BLAKE2b-64

_MAGIC = b"SG"
_PREFIX_V1 = struct.Struct(">2sBBHHI8s")  # magic, format, kind, depth, run, raw_len, raw_hash
_PREFIX = struct.Struct(">2sBBHI8sI")  # magic, format, kind, depth, raw_len, raw_hash, index
_BASE = struct.Struct(">8s")
_TAIL = struct.Struct(">IH")  # chain_bytes, keyframe_ratio
_COUNT = struct.Struct(">H")
_ROOT = struct.Struct(">IH")  # index, id length
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


#: A Fenwick root a master carries: (master index, checkpoint id).
Root = tuple[int, str]


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
    index: int = 0  # the master number of the record's forward chain (0: formats 1-2)
    roots: tuple[Root, ...] = ()  # masters only
    version: int = FORMAT_VERSION
    xxh3: bool = True  # raw_hash is XXH3-64 (else BLAKE2b-64, formats 1-3)

    @property
    def is_keyframe(self) -> bool:
        return self.kind == KEYFRAME

    @property
    def is_root(self) -> bool:
        """Masters and reverse records: the start of a forward chain."""
        return self.kind in _ROOT_KINDS


@dataclass(frozen=True, slots=True)
class Base:
    """A decoded state a new record may be encoded against: its bytes and header."""

    raw: bytes
    header: RecordHeader


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    data: bytes
    header: RecordHeader
    #: which base was used: DELTA (the parent) or KEYFRAME (none: a new master)
    base: int


@dataclass(frozen=True, slots=True)
class KeyframePolicy:
    """When a new record is a delta against its parent, and when a new master.

    - ``max_chain``: records in a forward chain, master included (a delta is written only
      while its parent's depth is below it); reads also decode the reverse records between
      the chain's master and the newest one, at most ``log2(masters) + 1``;
    - ``max_delta_ratio``: a delta larger than this share of a fresh master is a scene cut
      (the state changed wholesale): write the master instead;
    - ``max_chain_ratio``: the delta bytes a read fetches may weigh this many fresh
      masters; past that a master is the cheaper thing to read;
    - ``level``: zstd level of masters; ``delta_level`` of deltas and reverse records
      (None: the cheapest level that still finds the base, by base size);
    - ``reverse``: rewrite older masters as reverse records when a new master is written
      (savers turn it off where they cannot keep a newer master alive as long as the older
      records that need it, e.g. MongoDB with a TTL).
    A writer that does not hold its parent's serialized state writes a master.
    """

    max_chain: int = 4
    max_delta_ratio: float = 0.5
    max_chain_ratio: float = 2.0
    level: int = 3
    delta_level: int | None = None
    reverse: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_chain <= 0xFFFF:
            raise ValueError("max_chain must be between 1 and 65535")

    def may_extend(self, parent: RecordHeader) -> bool:
        """May the next record be a delta against ``parent``?"""
        return parent.depth < self.max_chain

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
    """XXH3-64 of serialized state: identifies a base and fingerprints content."""
    return xxhash.xxh3_64_digest(raw)


def content_hash(raw: bytes, header: RecordHeader) -> bytes:
    """``raw``'s fingerprint by the algorithm of ``header``'s record, to compare with its
    ``raw_hash``."""
    return raw_hash(raw) if header.xxh3 else hashlib.blake2b(raw, digest_size=8).digest()


def _params(level: int | None, raw_len: int, base_len: int) -> zstd.ZstdCompressionParameters:
    """The cheapest compression parameters whose match finder still reaches the whole base.

    Measured on chat states (raw-content dictionary = the base): level 2 finds the base up
    to ~0.5 MiB at half level 3's CPU (deltas ~3% larger), level 3 to ~1 MiB. Past that
    the window must cover base and input, and hash tables of an eighth of the window keep
    finding the base at a third of the CPU of larger ones (2.6 MiB base: 662 bytes in
    10 ms with level 2 and 2^20 entries, vs 32 ms for 2^24 at level 3; 4.4 MiB: 841 bytes
    in 31 ms vs 88 ms). ``level`` (None: automatic) is a floor.
    """
    if base_len <= 1 << 20:
        auto = 2 if base_len <= 1 << 18 else 3
        return zstd.ZstdCompressionParameters.from_level(
            auto if level is None else level, source_size=raw_len, dict_size=base_len,
            write_checksum=1, format=_FORMAT,
        )
    window_log = min(_MAX_WINDOW_LOG, max(10, math.ceil(math.log2(base_len + raw_len))))
    table_log = window_log - 3
    return zstd.ZstdCompressionParameters.from_level(
        2 if level is None else level, source_size=raw_len, dict_size=base_len,
        window_log=window_log, hash_log=table_log, chain_log=table_log, write_checksum=1,
        format=_FORMAT,
    )


class Dictionary:
    """A base prepared once for several compressions against it (the reverse records a
    new master gets: each compression against a raw multi-MiB dictionary would otherwise
    hash the whole base again)."""

    def __init__(self, base: bytes, raw_len: int, level: int | None):
        self.params = _params(level, raw_len, len(base))
        self.dict = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
        self.dict.precompute_compress(compression_params=self.params)

    def compress(self, raw: bytes) -> bytes:
        return zstd.ZstdCompressor(dict_data=self.dict,
                                   compression_params=self.params).compress(raw)


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


def _pack(kind: int, depth: int, raw: bytes, digest: bytes, index: int,
          base_hash: bytes | None, chain_bytes: int, keyframe_ratio: int,
          roots: Sequence[Root], frame: bytes, where: bytes, xxh3: bool = True
          ) -> EncodedRecord:
    head = _PREFIX.pack(_MAGIC, FORMAT_VERSION, kind | (_XXH3 if xxh3 else 0), depth,
                        len(raw), digest, index)
    if base_hash is not None:
        head += _BASE.pack(base_hash)
    head += _TAIL.pack(min(chain_bytes, 0xFFFFFFFF), keyframe_ratio)
    if kind == KEYFRAME:
        head += _COUNT.pack(len(roots))
        for root_index, root_id in roots:
            data = root_id.encode("utf-8")
            head += _ROOT.pack(root_index, len(data)) + data
    crc = zlib.crc32(frame, zlib.crc32(head, zlib.crc32(where)))
    data = b"".join((head, _CRC.pack(crc), frame))
    header = RecordHeader(kind, depth, len(raw), digest, base_hash, chain_bytes,
                          keyframe_ratio, len(data) - len(frame), index, tuple(roots),
                          FORMAT_VERSION, xxh3)
    return EncodedRecord(data, header, kind)


def _ratio(frame: bytes, raw: bytes) -> int:
    return min(0xFFFF, max(1, round(len(frame) / max(1, len(raw)) * 0xFFFF)))


def encode(
    raw: bytes,
    parent: Base | None = None,
    policy: KeyframePolicy = KeyframePolicy(),
    *,
    digest: bytes | None = None,
    where: bytes = b"",
    index: int = 1,
    roots: Sequence[Root] = (),
) -> EncodedRecord:
    """Encode serialized state as a delta against ``parent`` when the policy allows, else
    as a master numbered ``index`` carrying ``roots`` (see :func:`repoint`). ``digest`` is
    ``raw_hash(raw)`` if the caller already has it; ``where`` is the record's
    :func:`location`, which reading it must name again."""
    if len(raw) > 0xFFFFFFFF:
        raise ValueError("a serialized state must be under 4 GiB")
    digest = digest if digest is not None else raw_hash(raw)
    if parent is not None and policy.may_extend(parent.header):
        frame = _compress(raw, parent.raw, policy.delta_level)
        head = parent.header
        if policy.keeps(head, len(raw), len(frame)):
            return _pack(DELTA, head.depth + 1, raw, digest, head.index, head.raw_hash,
                         head.chain_bytes + len(frame), head.keyframe_ratio, (), frame,
                         where)
    frame = _compress(raw, None, policy.level)
    return _pack(KEYFRAME, 1, raw, digest, index, None, 0, _ratio(frame, raw), roots,
                 frame, where)


def encode_reverse(
    raw: bytes, master: RecordHeader, newer: Base, policy: KeyframePolicy = KeyframePolicy(),
    *, where: bytes = b"", dictionary: Dictionary | None = None,
) -> EncodedRecord:
    """The reverse record of a master (``raw`` its state, ``master`` its header): the same
    state compressed against ``newer``, a newer master's state (or a reverse record's);
    ``dictionary``: ``newer.raw`` prepared for several such records."""
    if not master.is_root:
        raise ValueError("only a master or a reverse record can become a reverse record")
    frame = (dictionary.compress(raw) if dictionary is not None
             else _compress(raw, newer.raw, policy.delta_level))
    return _pack(REVERSE, 1, raw, master.raw_hash, master.index, newer.header.raw_hash, 0,
                 master.keyframe_ratio, (), frame, where, master.xxh3)


def repoint(roots: Sequence[Root], previous: Root, index: int) -> tuple[list[Root], list[Root]]:
    """The Fenwick step of writing master ``index`` after master ``previous``, whose
    header carried ``roots``: returns (the masters to rewrite as reverse records against
    the new one, the roots the new master carries). Master ``i`` points to
    ``i + lowbit(i)`` once that exists, so reads reach the newest master in at most
    ``log2(index) + 1`` reverse steps."""
    members = [*roots, previous]
    keep = [root for root in members if root[0] + (root[0] & -root[0]) > index]
    return members, keep


def read_header(data: bytes, position: int = 0, where: bytes = b"") -> RecordHeader:
    """Parse and verify a record's header and checksum (the frame is not decompressed);
    ``where`` is the :func:`location` the record is read from."""
    if len(data) < 4 or data[:2] != _MAGIC:
        raise RecordError("not a savegame record (bad magic or truncated)", position)
    version = data[2]
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"record written by format version {version}; this savegame reads format "
            f"{FORMAT_VERSION} and older: upgrade savegame to read it",
            position,
        )
    try:
        flags = 0
        if version >= 3:
            _, _, kind, depth, raw_len, digest, index = _PREFIX.unpack_from(data)
            if version >= 4:
                kind, flags = kind & _KIND_MASK, kind & ~_KIND_MASK
            offset = _PREFIX.size
            valid = kind in (KEYFRAME, DELTA, REVERSE) and flags & ~_XXH3 == 0
        else:
            _, _, kind, depth, _run, raw_len, digest = _PREFIX_V1.unpack_from(data)
            offset, index = _PREFIX_V1.size, 0
            valid = kind in (KEYFRAME, DELTA, ANCHOR)
        if version < 1 or not valid or depth < 1:
            raise RecordError("malformed record header", position)
        base_hash = None
        if kind != KEYFRAME:
            (base_hash,) = _BASE.unpack_from(data, offset)
            offset += _BASE.size
        chain_bytes, ratio = _TAIL.unpack_from(data, offset)
        offset += _TAIL.size
        roots: list[Root] = []
        if kind == KEYFRAME and version >= 3:
            (count,) = _COUNT.unpack_from(data, offset)
            offset += _COUNT.size
            for _ in range(count):
                root_index, length = _ROOT.unpack_from(data, offset)
                offset += _ROOT.size
                if offset + length > len(data):
                    raise RecordError("truncated record header", position)
                roots.append((root_index, data[offset:offset + length].decode("utf-8")))
                offset += length
        (crc,) = _CRC.unpack_from(data, offset)
    except (struct.error, UnicodeDecodeError):
        raise RecordError("truncated record header", position) from None
    size = offset + _CRC.size
    if _crc(data, size, where if version >= 2 else b"") != crc:
        raise RecordError("record checksum mismatch (the stored bytes were altered, or the "
                          "record was moved here from another checkpoint)", position)
    return RecordHeader(kind, depth, raw_len, digest, base_hash, chain_bytes, ratio, size,
                        index, tuple(roots), version, bool(flags & _XXH3))


def _crc(data: bytes, header_size: int, where: bytes) -> int:
    view = memoryview(data)
    return zlib.crc32(view[header_size:],
                      zlib.crc32(view[: header_size - _CRC.size], zlib.crc32(where)))


def rebind(data: bytes, old: bytes, new: bytes) -> bytes:
    """The record ``data`` (verified at location ``old``) bound to location ``new``: what
    copying a thread does, without re-encoding anything."""
    header = read_header(data, 0, old)
    if header.version < 2 or old == new:  # format 1 records are bound to no location
        return data
    crc = _crc(data, header.size, new)
    return b"".join((data[: header.size - _CRC.size], _CRC.pack(crc), data[header.size:]))


def decode_path(
    records: Sequence[bytes], base: Base | None = None, where: Sequence[bytes] | None = None
) -> list[bytes]:
    """Decode records that each are encoded against the one before (a reverse record
    against a newer master or reverse record, a delta against its parent), the first a
    master or encoded against ``base`` (already decoded bytes and header); ``where`` holds
    each record's :func:`location`. Returns the serialized state of every record; raises
    :class:`RecordError` naming the failing position."""
    return [raw for raw, _ in decode_records(records, base, where)]


def decode_records(
    records: Sequence[bytes], base: Base | None = None, where: Sequence[bytes] | None = None
) -> list[tuple[bytes, RecordHeader]]:
    """:func:`decode_path`, with each record's verified header beside its state."""
    out: list[tuple[bytes, RecordHeader]] = []
    previous: RecordHeader | None = None if base is None else base.header
    for position, data in enumerate(records):
        header = read_header(data, position, where[position] if where else b"")
        if previous is None:
            if not header.is_keyframe:
                raise RecordError("delta record without its base (chain is cut)", position)
        else:
            if header.is_keyframe or header.base_hash != previous.raw_hash:
                raise RecordError("delta record does not match its base record", position)
            if header.kind == REVERSE:
                if not previous.is_root:
                    raise RecordError("reverse record whose base is not a master", position)
            elif header.depth <= previous.depth:
                # depth grows along a forward chain (a rewritten base may sit shallower)
                raise RecordError("record chain depth is inconsistent", position)
        prior = out[-1][0] if out else (base.raw if base is not None else None)
        raw = _decompress(data, header, None if header.is_keyframe else prior, position)
        out.append((raw, header))
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
