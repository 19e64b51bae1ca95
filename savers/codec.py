"""Records: the stored form of one checkpoint's state. Pure code: no IO, no clocks, no state
beyond a pool of idle compressors for small inputs.

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

Layout, format 6 (what this savegame writes; integers are LEB128 varints unless sized)::

    magic "SG" | format u8 | flags+kind u8 | depth | raw_len | raw_hash 8s | index
    | [kind != MASTER: base_hash 8s] | chain_bytes | keyframe_ratio u16 (big-endian)
    | [kind == MASTER: roots, per root: index, id length, id UTF-8]
    | crc32 u32 | frame (no zstd checksum)

Formats 4 and 5 (still read) had the same fields at fixed widths (big-endian: depth u16,
raw_len u32, index u32, chain_bytes u32, roots u16, per root index u32 and length u16) and
frames carrying zstd's content checksum: 8-12 bytes more a record, which on a long chat's
deltas of a few hundred bytes is a few percent. Formats 1 and 2 (still read) had a ``run
u16`` after ``depth``, no index and no roots, and ANCHOR records (deltas against an
earlier anchor). ``raw_hash`` fingerprints the serialized state: XXH3-64 where the kind
byte has the ``XXH3`` flag (format 4 on; a tenth of BLAKE2b's CPU on a 160 KB state), else
BLAKE2b-64 (formats 1-3, and the reverse records of their masters, which keep their
master's fingerprint). A delta's ``base_hash`` must equal its base's ``raw_hash``.
``crc32`` covers the record's *location* (the thread, namespace and checkpoint id it was
written for, see :func:`location`; formats 2 and later), header and frame, so a valid
record copied onto another checkpoint fails its checksum; every decoded state is checked
against its ``raw_hash`` (formats 4 and 5: zstd's content checksum in the frame), so
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
    "content_hash",
    "decode_path",
    "decode_records",
    "decode_write",
    "encode",
    "encode_reverse",
    "encode_write",
    "get_varint",
    "location",
    "put_varint",
    "raw_hash",
    "read_header",
    "stated_depth",
    "rebind",
    "repoint",
    "write_base",
]

#: 1: the checksum covers header and frame; 2: also the record's location; 3: masters
#: carry a number and the Fenwick roots, reverse records, no anchors; 4: the kind byte
#: carries flags (``_XXH3``, ``_SPLICE``); 5: format 4's layout, written only by pending
#: writes stored as copies of their checkpoint's state (:func:`encode_write`), so that a
#: savegame of format 4 refuses those with "upgrade" instead of calling them damaged,
#: and still reads everything else; 6: varint header fields and no zstd checksum (the
#: decoded state's fingerprint is checked instead). The newest format this savegame reads,
#: and the one it writes:
FORMAT_VERSION = 6
_WRITTEN = FORMAT_VERSION
#: The first format with varint header fields and unchecksummed frames.
_COMPACT = 6
#: KEYFRAME: a master (no base); DELTA: base is the parent; ANCHOR (formats 1-2 only): base
#: is an earlier anchor; REVERSE: a former master whose base is a newer master.
KEYFRAME, DELTA, ANCHOR, REVERSE = 0, 1, 2, 3
_ROOT_KINDS = (KEYFRAME, REVERSE)
_KIND_MASK = 0x0F
_XXH3 = 0x10  # flag: raw_hash is XXH3-64 (format 4), not BLAKE2b-64
_SPLICE = 0x20  # flag: the frame is a splice of the base (format 4; see _splice)
_FLAGS = _XXH3 | _SPLICE

_MAGIC = b"SG"
_PREFIX_V1 = struct.Struct(">2sBBHHI8s")  # magic, format, kind, depth, run, raw_len, raw_hash
_PREFIX = struct.Struct(">2sBBHI8sI")  # magic, format, kind, depth, raw_len, raw_hash, index
_TAIL = struct.Struct(">IH")  # chain_bytes, keyframe_ratio
_COUNT = struct.Struct(">H")
_ROOT = struct.Struct(">IH")  # index, id length
_CRC = struct.Struct(">I")
_HEAD = struct.Struct(">2sBB")  # format 6: magic, format, flags+kind
_HASH = struct.Struct(">8s")  # raw_hash, base_hash
_RATIO = struct.Struct(">H")
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
    version: int = _WRITTEN
    xxh3: bool = True  # raw_hash is XXH3-64 (else BLAKE2b-64, formats 1-3)
    splice: bool = False  # the frame splices the base (else a zstd frame)

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
      records that need it, e.g. MongoDB with a TTL);
    - ``splice``: encode deltas against bases of 64 KiB and more as splices (copies of the
      base's runs plus zstd-compressed new bytes) where that finds the shared runs: a
      third of the CPU of a zstd delta against the whole base, a few more bytes.
    A writer that does not hold its parent's serialized state writes a master.
    """

    max_chain: int = 4
    max_delta_ratio: float = 0.5
    max_chain_ratio: float = 2.0
    level: int = 3
    delta_level: int | None = None
    reverse: bool = True
    splice: bool = True

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


_HASH_CHUNK = 64 * 1024


def raw_hash(raw: bytes) -> bytes:
    """XXH3-64 of serialized state: identifies a base and fingerprints content. Big
    states are fed in 64 KiB pieces: xxhash releases the GIL for larger buffers, and a
    saver called from a background thread (LangGraph saves from one while the graph runs
    on) pays ~15 us of CPU for each hand-over and back, more than hashing 160 KB."""
    if len(raw) <= _HASH_CHUNK:
        return xxhash.xxh3_64_digest(raw)
    state, view = xxhash.xxh3_64(), memoryview(raw)
    for start in range(0, len(raw), _HASH_CHUNK):
        state.update(view[start:start + _HASH_CHUNK])
    return state.digest()


def content_hash(raw: bytes, header: RecordHeader) -> bytes:
    """``raw``'s fingerprint by the algorithm of ``header``'s record, to compare with its
    ``raw_hash``."""
    return raw_hash(raw) if header.xxh3 else hashlib.blake2b(raw, digest_size=8).digest()


def _raw_dict(data: bytes) -> zstd.ZstdCompressionDict:
    """``data`` as a raw-content dictionary: what deltas are compressed against."""
    return zstd.ZstdCompressionDict(data, dict_type=zstd.DICT_TYPE_RAWCONTENT)


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
            write_checksum=0, format=_FORMAT,
        )
    window_log = min(_MAX_WINDOW_LOG, max(10, math.ceil(math.log2(base_len + raw_len))))
    table_log = window_log - 3
    return zstd.ZstdCompressionParameters.from_level(
        2 if level is None else level, source_size=raw_len, dict_size=base_len,
        window_log=window_log, hash_log=table_log, chain_log=table_log, write_checksum=0,
        format=_FORMAT,
    )


class Dictionary:
    """A base prepared once for several compressions against it (the reverse records a
    new master gets: each compression against a raw multi-MiB dictionary would otherwise
    hash the whole base again)."""

    def __init__(self, base: bytes, raw_len: int, level: int | None):
        self.params = _params(level, raw_len, len(base))
        self.dict = _raw_dict(base)
        self.dict.precompute_compress(compression_params=self.params)

    def compress(self, raw: bytes) -> bytes:
        return zstd.ZstdCompressor(dict_data=self.dict,
                                   compression_params=self.params).compress(raw)


_SMALL_WINDOW_LOG = 16  # inputs up to 64 KiB share compressors, per level and window
#: Idle compressors for small inputs, shared by all threads (a framework's worker threads
#: are often new at every step, so a per-thread cache would start cold each time): a
#: thread takes one out while it compresses (list.pop and append are atomic).
_small: dict[tuple[int, int], list[zstd.ZstdCompressor]] = {}
_SMALL_IDLE_MAX = 8


def _compress(raw: bytes, base: bytes | None, level: int | None) -> bytes:
    if base is None:
        level = 3 if level is None else level
        window_log = min(_MAX_WINDOW_LOG, max(10, math.ceil(math.log2(len(raw) + 1))))
        if window_log <= _SMALL_WINDOW_LOG:  # pending writes, small states: making a
            # compressor costs more than compressing a few hundred bytes with it
            idle = _small.setdefault((level, window_log), [])
            try:
                compressor = idle.pop()
            except IndexError:
                compressor = zstd.ZstdCompressor(
                    compression_params=zstd.ZstdCompressionParameters.from_level(
                        level, source_size=1 << window_log, write_checksum=0,
                        format=_FORMAT, window_log=window_log))
            try:
                return compressor.compress(raw)
            finally:
                if len(idle) < _SMALL_IDLE_MAX:
                    idle.append(compressor)
        params = zstd.ZstdCompressionParameters.from_level(
            level, source_size=len(raw), write_checksum=0, format=_FORMAT,
            window_log=window_log)
        return zstd.ZstdCompressor(compression_params=params).compress(raw)
    dictionary = _raw_dict(base)
    params = _params(level, len(raw), len(base))
    return zstd.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(raw)


def _pack(kind: int, depth: int, raw: bytes, digest: bytes, index: int,
          base_hash: bytes | None, chain_bytes: int, keyframe_ratio: int,
          roots: Sequence[Root], frame: bytes, where: bytes, xxh3: bool = True,
          splice: bool = False) -> EncodedRecord:
    flags = (_XXH3 if xxh3 else 0) | (_SPLICE if splice else 0)
    chain_bytes = min(chain_bytes, 0xFFFFFFFF)
    head = bytearray(_HEAD.pack(_MAGIC, _WRITTEN, kind | flags))
    put_varint(head, depth)
    put_varint(head, len(raw))
    head += digest
    put_varint(head, index)
    if base_hash is not None:
        head += base_hash
    put_varint(head, chain_bytes)
    head += _RATIO.pack(keyframe_ratio)
    if kind == KEYFRAME:
        put_varint(head, len(roots))
        for root_index, root_id in roots:
            data = root_id.encode("utf-8")
            put_varint(head, root_index)
            put_varint(head, len(data))
            head += data
    crc = zlib.crc32(frame, zlib.crc32(head, zlib.crc32(where)))
    data = b"".join((head, _CRC.pack(crc), frame))
    header = RecordHeader(kind, depth, len(raw), digest, base_hash, chain_bytes,
                          keyframe_ratio, len(data) - len(frame), index, tuple(roots),
                          _WRITTEN, xxh3, splice)
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
        spliced = _splice(raw, parent.raw) if policy.splice else None
        frame = spliced if spliced is not None else _compress(raw, parent.raw,
                                                              policy.delta_level)
        head = parent.header
        if policy.keeps(head, len(raw), len(frame)):
            return _pack(DELTA, head.depth + 1, raw, digest, head.index, head.raw_hash,
                         head.chain_bytes + len(frame), head.keyframe_ratio, (), frame,
                         where, splice=spliced is not None)
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
    # (no splice: several reverse records share one prepared dictionary, as cheap)
    frame = (dictionary.compress(raw) if dictionary is not None
             else _compress(raw, newer.raw, policy.delta_level))
    return _pack(REVERSE, 1, raw, master.raw_hash, master.index, newer.header.raw_hash, 0,
                 master.keyframe_ratio, (), frame, where, master.xxh3)


#: A pending write shares a run at least this long with its checkpoint's state to be
#: stored as a copy of it.
_WRITE_MIN_COPY = 64
#: A write that copies nothing but is at least this long is compressed with the first
#: ``_WRITE_DICT`` bytes of its checkpoint's state as dictionary: a chat's new message
#: shares words and names with the conversation (on the 200-turn chat, 177 such writes
#: take 59 KB instead of 83 KB, for ~25 us each; 16 KiB: 55 KB for ~70 us).
_WRITE_MIN_DICT = 128
_WRITE_DICT = 8 * 1024
#: The state bytes searched for it: this many at the start and at the end (where a state's
#: input and its newest items sit), so that a write costs ~60 us of searching at most.
_WRITE_SEARCH = 256 * 1024


def _copy_ops(raw: bytes, state: bytes) -> list[tuple[int, int, int, int]] | None:
    """Splice ops copying the run ``raw`` shares with ``state`` around ``raw``'s middle
    (one search of ``state``), or None when there is none that long."""
    if len(raw) < _WRITE_MIN_COPY:
        return None
    middle = (len(raw) - _PROBE) // 2
    probe = raw[middle:middle + _PROBE]
    found = state.find(probe, 0, _WRITE_SEARCH)
    if found < 0 and len(state) > _WRITE_SEARCH:
        found = state.find(probe, max(_WRITE_SEARCH - _PROBE, len(state) - _WRITE_SEARCH))
    if found < 0:
        return None
    view = memoryview(state)
    back = _run_back(raw, middle, 0, view, found)
    start, at = middle - back, found - back
    length = _run(raw, start, view, at)
    if length < _WRITE_MIN_COPY:
        return None
    ops = [(0, start, at, length)]
    if start + length < len(raw):
        ops.append((start + length, len(raw), 0, 0))
    return ops


def encode_write(
    raw: bytes, state: bytes | None = None, policy: KeyframePolicy = KeyframePolicy(), *,
    state_hash: bytes | None = None, where: bytes = b"",
) -> EncodedRecord:
    """A pending write's record (``raw``: its serialized value). A write often passes on
    bytes its checkpoint's serialized ``state`` holds (LangGraph's input message is in the
    input checkpoint and in the write of the task that reads it): then the record is a
    splice copying that run of ``state`` (a delta whose ``base_hash`` is the XXH3 of
    ``state``, ``state_hash`` if the caller has it); else, when it is long enough, a
    splice of one literal compressed with the state's first bytes as dictionary; else a
    master."""
    if state:
        ops = _copy_ops(raw, state)
        window = 0
        if ops is None and len(raw) >= _WRITE_MIN_DICT:
            ops, window = [(0, len(raw), 0, 0)], _WRITE_DICT  # (the window is at 0)
        if ops is not None:
            frame = _splice_frame(raw, state, ops, window)
            return _pack(DELTA, 2, raw, raw_hash(raw), 0,
                         state_hash if state_hash is not None else raw_hash(state),
                         len(frame), 0xFFFF, (), frame, where, splice=True)
    return encode(raw, None, policy, where=where)


def decode_write(data: bytes, state: bytes | None = None, where: bytes = b"") -> bytes:
    """The serialized value of a pending write's record; ``state``: the serialized state
    of its checkpoint, needed when :func:`write_base` names one."""
    header = read_header(data, 0, where)
    if header.is_keyframe:
        return _decompress(data, header, None, 0)
    if header.kind != DELTA or not header.splice:
        raise RecordError("a pending write's record is neither a master nor a copy")
    if state is None:
        raise RecordError("the write is stored as a copy of its checkpoint's state, which "
                          "is missing")
    if raw_hash(state) != header.base_hash:
        raise RecordError("the write is stored as a copy of a state that differs from its "
                          "checkpoint's")
    return _decompress(data, header, state, 0)


def write_base(data: bytes, where: bytes = b"") -> bytes | None:
    """The XXH3 of the checkpoint state a pending write's record copies from (None: the
    record stands alone)."""
    return read_header(data, 0, where).base_hash


def repoint(roots: Sequence[Root], previous: Root, index: int) -> tuple[list[Root], list[Root]]:
    """The Fenwick step of writing master ``index`` after master ``previous``, whose
    header carried ``roots``: returns (the masters to rewrite as reverse records against
    the new one, the roots the new master carries). Master ``i`` points to
    ``i + lowbit(i)`` once that exists, so reads reach the newest master in at most
    ``log2(index) + 1`` reverse steps."""
    members = [*roots, previous]
    keep = [root for root in members if root[0] + (root[0] & -root[0]) > index]
    return members, keep


def stated_depth(data: bytes) -> int:
    """The depth a record's header states, unverified (every format keeps it right after
    the kind byte: u16 up to format 5, a varint from 6), for a store that does not repeat
    it beside the record; 1 when the bytes are not a record. :func:`read_header` checks
    the record, depth included, when it is read, so a damaged one is reported there, as
    that checkpoint's."""
    if len(data) < 6 or data[:2] != _MAGIC:
        return 1
    if data[2] >= _COMPACT:
        try:
            depth, _ = get_varint(data, 4)
        except ValueError:
            return 1
    else:
        depth = struct.unpack_from(">H", data, 4)[0]
    return max(1, min(depth, 0xFFFF))


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
        (kind, flags, depth, raw_len, digest, index, base_hash, chain_bytes, ratio, roots,
         offset) = (_compact_fields(data) if version >= _COMPACT
                    else _fixed_fields(data, version))
        (crc,) = _CRC.unpack_from(data, offset)
    except (struct.error, UnicodeDecodeError, ValueError, IndexError):
        raise RecordError("truncated record header", position) from None
    if version >= 3:
        valid = kind in (KEYFRAME, DELTA, REVERSE) and flags & ~_FLAGS == 0 and (
            not flags & _SPLICE or (kind == DELTA and flags & _XXH3))
    else:
        valid = kind in (KEYFRAME, DELTA, ANCHOR)
    if (version < 1 or not valid or not 1 <= depth <= 0xFFFF
            or max(raw_len, index, chain_bytes) > 0xFFFFFFFF):
        raise RecordError("malformed record header", position)
    size = offset + _CRC.size
    if _crc(data, size, where if version >= 2 else b"") != crc:
        raise RecordError("record checksum mismatch (the stored bytes were altered, or the "
                          "record was moved here from another checkpoint)", position)
    return RecordHeader(kind, depth, raw_len, digest, base_hash, chain_bytes, ratio, size,
                        index, tuple(roots), version, bool(flags & _XXH3),
                        bool(flags & _SPLICE))


#: A header's fields as parsed, before they are checked: kind, flags, depth, raw_len,
#: raw_hash, index, base_hash, chain_bytes, keyframe_ratio, roots, and where the CRC is.
_Fields = tuple[int, int, int, int, bytes, int, bytes | None, int, int, list[Root], int]


def _fixed_fields(data: bytes, version: int) -> _Fields:
    """The header fields of formats 1-5 (fixed widths, big-endian)."""
    flags = 0
    if version >= 3:
        _, _, kind, depth, raw_len, digest, index = _PREFIX.unpack_from(data)
        if version >= 4:
            kind, flags = kind & _KIND_MASK, kind & ~_KIND_MASK
        offset = _PREFIX.size
    else:
        _, _, kind, depth, _run, raw_len, digest = _PREFIX_V1.unpack_from(data)
        offset, index = _PREFIX_V1.size, 0
    base_hash = None
    if kind != KEYFRAME:
        (base_hash,) = _HASH.unpack_from(data, offset)
        offset += _HASH.size
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
                raise ValueError("root past the end of the record")
            roots.append((root_index, data[offset:offset + length].decode("utf-8")))
            offset += length
    return (kind, flags, depth, raw_len, digest, index, base_hash, chain_bytes, ratio, roots,
            offset)


def _compact_fields(data: bytes) -> _Fields:
    """The header fields of format 6 (varints)."""
    kind, flags = data[3] & _KIND_MASK, data[3] & ~_KIND_MASK
    depth, offset = get_varint(data, 4)
    raw_len, offset = get_varint(data, offset)
    (digest,) = _HASH.unpack_from(data, offset)
    index, offset = get_varint(data, offset + _HASH.size)
    base_hash = None
    if kind != KEYFRAME:
        (base_hash,) = _HASH.unpack_from(data, offset)
        offset += _HASH.size
    chain_bytes, offset = get_varint(data, offset)
    (ratio,) = _RATIO.unpack_from(data, offset)
    offset += _RATIO.size
    roots: list[Root] = []
    if kind == KEYFRAME:
        count, offset = get_varint(data, offset)
        if count > len(data):
            raise ValueError("more roots than bytes")
        for _ in range(count):
            root_index, offset = get_varint(data, offset)
            length, offset = get_varint(data, offset)
            if offset + length > len(data) or root_index > 0xFFFFFFFF:
                raise ValueError("root past the end of the record")
            roots.append((root_index, data[offset:offset + length].decode("utf-8")))
            offset += length
    return (kind, flags, depth, raw_len, digest, index, base_hash, chain_bytes, ratio, roots,
            offset)


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


def _inflate(decompressor: zstd.ZstdDecompressor, frame: memoryview, limit: int) -> bytes:
    """Decompress a frame of at most ``limit`` bytes; a frame declaring more is refused
    before anything is allocated (zstandard would try, and raise MemoryError)."""
    declared = zstd.get_frame_parameters(frame, format=_FORMAT).content_size
    if declared != zstd.CONTENTSIZE_UNKNOWN and declared > limit:
        raise zstd.ZstdError(f"the frame declares {declared} bytes, more than {limit}")
    return decompressor.decompress(frame, max_output_size=limit)


def _decompress(data: bytes, header: RecordHeader, base: bytes | None, position: int) -> bytes:
    frame = memoryview(data)[header.size:]
    if header.splice and base is not None:
        return _unsplice(frame, base, header, position)
    try:
        if base is None:
            decompressor = zstd.ZstdDecompressor(format=_FORMAT)
        else:
            decompressor = zstd.ZstdDecompressor(dict_data=_raw_dict(base), format=_FORMAT)
        raw = _inflate(decompressor, frame, header.raw_len)
    except zstd.ZstdError as exc:
        raise RecordError(f"compressed payload does not decode: {exc}", position) from None
    if len(raw) != header.raw_len:
        raise RecordError("decoded length differs from the recorded length", position)
    if header.version >= _COMPACT and content_hash(raw, header) != header.raw_hash:
        raise RecordError("decoded state does not match its fingerprint (wrong base?)",
                          position)
    return raw


# -- splices ------------------------------------------------------------------------------
# A splice delta: the new state as runs copied from the base and literal bytes between
# them. Finding the runs costs a few memcmp-speed comparisons and searches per edit (an
# appended message, a changed counter), where a zstd delta hashes the whole base as its
# dictionary; the literals and the run table are zstd-compressed with the base's bytes
# around the edits as a small dictionary. Frame::
#
#     varint spans, per span: varint gap, varint length   (the dictionary: base slices)
#     zstd frame (magicless, checksummed) of:
#         varint ops, per op: varint literal length, zigzag varint (copy start - the end of
#         the previous copy), varint copy length;  then the literals
#
# The decoder checks every bound and the result's XXH3 against the header's raw_hash.

_SPLICE_MIN_BASE = 64 * 1024  # below this a zstd delta is as cheap
_PROBE = 32  # bytes searched for when re-synchronizing after an edit
_MIN_RUN = 12  # shorter common runs are cheaper as literals
_NEAR = (512, 4096)  # the base window searched first, behind and ahead of the cursor
_WIDE_EVERY = 32  # probes between searches of the whole base
_SPLICE_WINDOW = 16 * 1024  # dictionary bytes either side of an edit
_SPLICE_DICT_MAX = 64 * 1024
_SPLICE_MAX_OPS = 1024  # edits scattered wider than this: a zstd delta is cheaper


def _run(new: bytes, i: int, base: memoryview, j: int) -> int:
    """Length of the common run of ``new[i:]`` and ``base[j:]``: galloping, then binary
    search, each step one C-level comparison of only the bytes not yet known to match
    (no copies; about twice the run's length compared in all)."""
    top = min(len(new) - i, len(base) - j)
    low, high = 0, min(32, top)
    while True:  # base[j:j+low] is known to match
        if not new.startswith(base[j + low:j + high], i + low):
            break
        if high == top:
            return top
        low, high = high, min(top, high * 8)
    while high - low > 1:  # base[j:j+high] is known not to match
        middle = (low + high) // 2
        if new.startswith(base[j + low:j + middle], i + low):
            low = middle
        else:
            high = middle
    return low


def _run_back(new: bytes, p: int, floor: int, base: memoryview, f: int) -> int:
    """Length of the common run ending at ``new[p]`` and ``base[f]``, not before ``floor``
    (binary search, comparing only the bytes not yet known to match)."""
    low, high = 0, min(p - floor, f) + 1
    while high - low > 1:
        middle = (low + high) // 2
        if new.endswith(base[f - middle:f - low], floor, p - low):
            low = middle
        else:
            high = middle
    return low


def _splice_ops(new: bytes, base: bytes, budget: int) -> list[tuple[int, int, int, int]] | None:
    """(literal start, literal end, copy start, copy length) per op, or None when the
    literals would pass ``budget`` bytes or the ops ``_SPLICE_MAX_OPS`` (then a zstd
    delta does better)."""
    view = memoryview(base)
    ops: list[tuple[int, int, int, int]] = []
    i = j = start = literal = 0
    n = len(new)
    while i < n:
        length = _run(new, i, view, j)
        if length >= _MIN_RUN or (length and i + length == n):
            if len(ops) >= _SPLICE_MAX_OPS:
                return None
            ops.append((start, i, j, length))
            literal += i - start
            i += length
            j += length
            start = i
            continue
        p, found, tries = i + max(length, 1), -1, 0
        while p + _PROBE <= n:
            if p - start + literal > budget:
                return None
            probe = new[p:p + _PROBE]
            found = base.find(probe, max(0, j - _NEAR[0]), j + _NEAR[1])
            if found < 0 and tries % _WIDE_EVERY == _WIDE_EVERY - 1:
                found = base.find(probe)
            if found >= 0:
                break
            tries += 1
            p += _PROBE
        if found < 0:
            break
        back = _run_back(new, p, start, view, found)
        i, j = p - back, found - back
    if start < n:
        ops.append((start, n, 0, 0))
        literal += n - start
    return None if literal > budget else ops


def put_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (>= 0) as a LEB128 varint."""
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def get_varint(data: memoryview | bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ValueError when truncated."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _splice(raw: bytes, base: bytes) -> bytes | None:
    """The splice frame of ``raw`` against ``base``, or None where a zstd delta is the
    better choice (a small base, or edits too large or scattered to splice)."""
    if len(base) < _SPLICE_MIN_BASE:
        return None
    ops = _splice_ops(raw, base, min(max(4096, len(raw) // 8), 64 * 1024))
    return None if ops is None else _splice_frame(raw, base, ops, _SPLICE_WINDOW)


def _splice_frame(raw: bytes, base: bytes, ops: Sequence[tuple[int, int, int, int]],
                  window: int) -> bytes:
    """The splice frame of ``ops`` (see :func:`_splice_ops`), its literals compressed with
    the base's bytes up to ``window`` either side of each edit as dictionary (0: none)."""
    spans: list[list[int]] = []
    table, cursor = bytearray(), 0
    put_varint(table, len(ops))
    for lit_start, lit_end, copy_start, copy_len in ops:
        if lit_end > lit_start and window:  # the dictionary: the base around the edit
            low = max(0, cursor - window)
            high = min(len(base), cursor + window)
            if spans and low <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], high)
            else:
                spans.append([low, high])
        move = copy_start - cursor if copy_len else 0
        put_varint(table, lit_end - lit_start)
        put_varint(table, move * 2 if move >= 0 else -move * 2 - 1)
        put_varint(table, copy_len)
        if copy_len:
            cursor = copy_start + copy_len
    head, end, size = bytearray(), 0, 0
    kept = []
    for low, high in spans:
        high = min(high, low + _SPLICE_DICT_MAX - size)
        if high <= low:
            break
        kept.append((low, high))
        size += high - low
    put_varint(head, len(kept))
    for low, high in kept:
        put_varint(head, low - end)
        put_varint(head, high - low)
        end = high
    payload = bytes(table) + b"".join(raw[a:b] for a, b, _, _ in ops)
    if not kept:
        return bytes(head) + _compress(payload, None, 2)
    dictionary = b"".join(base[low:high] for low, high in kept)
    params = zstd.ZstdCompressionParameters.from_level(  # level 2: as small as 3 here
        2, source_size=len(payload), dict_size=len(dictionary), write_checksum=0,
        format=_FORMAT)
    compressor = zstd.ZstdCompressor(compression_params=params,
                                     dict_data=_raw_dict(dictionary))
    return bytes(head) + compressor.compress(payload)


def _unsplice(frame: memoryview, base: bytes, header: RecordHeader, position: int) -> bytes:
    """Rebuild a state from its splice frame and base, checking every bound."""
    try:
        count, pos = get_varint(frame, 0)
        if count > len(base) + 1:
            raise ValueError("more dictionary spans than base bytes")
        slices, end = [], 0
        for _ in range(count):
            gap, pos = get_varint(frame, pos)
            length, pos = get_varint(frame, pos)
            low, end = end + gap, end + gap + length
            if end > len(base):
                raise ValueError("dictionary span past the end of the base")
            slices.append(base[low:end])
        dictionary = b"".join(slices)
        decompressor = zstd.ZstdDecompressor(
            format=_FORMAT, dict_data=_raw_dict(dictionary) if dictionary else None)
        limit = header.raw_len + 32 * (header.raw_len // _MIN_RUN + 2)
        payload = _inflate(decompressor, frame[pos:], limit)
        ops, pos = get_varint(payload, 0)
        if ops > header.raw_len + 1:
            raise ValueError("more operations than output bytes")
        moves = []
        literal_total = 0
        for _ in range(ops):
            literal, pos = get_varint(payload, pos)
            move, pos = get_varint(payload, pos)
            copy, pos = get_varint(payload, pos)
            moves.append((literal, (move >> 1) if not move & 1 else -((move + 1) >> 1), copy))
            literal_total += literal
        if pos + literal_total != len(payload):
            raise ValueError("literal bytes do not match the operations")
        view, cursor = memoryview(base), 0
        out: list[bytes | memoryview] = []
        for literal, move, copy in moves:
            if literal:
                out.append(payload[pos:pos + literal])
                pos += literal
            if copy:
                start = cursor + move
                if start < 0 or start + copy > len(base):
                    raise ValueError("copy outside the base")
                out.append(view[start:start + copy])
                cursor = start + copy
        raw = b"".join(out)
    except (ValueError, zstd.ZstdError) as exc:
        raise RecordError(f"splice payload does not decode: {exc}", position) from None
    if len(raw) != header.raw_len:
        raise RecordError("decoded length differs from the recorded length", position)
    if raw_hash(raw) != header.raw_hash:
        raise RecordError("spliced state does not match its fingerprint (wrong base?)",
                          position)
    return raw
