"""IO-free parts of the Redis savers: key layout, value format, Lua scripts, chunking.

Both savers (``AsyncRedisSaver`` and its generated twin ``RedisSaver``) build every key,
value and script call here, so the two read and write exactly the same layout.

Keys of one thread (``P`` = the saver's ``key_prefix``, ``T`` = the thread's tag)::

    P:{T}:m   hash   the thread's meta: ``t`` thread id, ``l`` layout it was made with, ``h<ns>`` =
                     "<seq>:<id>" of each namespace's latest checkpoint, ``rv`` the last
                     released version, ``rt`` "<token>:<version>" of the last release,
                     ``V<n>`` = number of checkpoints released as version n
    P:{T}:c   zset   one member per checkpoint, ``<ns>\\0<id>\\0<value>``, all scores 0:
                     lexical order is (namespace, id) order, so a get by id, the newest
                     page before an id and a namespace's whole run are ZRANGEBYLEX ranges,
                     and one entry per checkpoint carries its record (no second index)
    P:{T}:w   hash   ``<ns>\\0<id>`` -> pending writes of a checkpoint not stored (yet);
                     writes of a stored checkpoint live in its value
    P:{T}:x   hash   ``<token>:<i>`` -> piece i of a record too big for one value
    P:{T}:a   zset   released runs: ``<version>\\0<ns>\\0<id>\\0<value>``, scores 0
    P:threads zset   thread ids, scores 0: the registry ``list_threads`` reads by prefix

Every key of a thread carries the same hash tag ``{T}``, so a thread lives in one cluster
slot and each script below (which names all five keys) runs atomically there. ``T`` is
the thread id itself when it is short and made of ``[A-Za-z0-9_.:/@=+-]`` only, else
``#`` followed by a 128-bit BLAKE2b of its UTF-8 bytes (``#`` is not in the plain
alphabet, so the two forms never collide); ``t`` in the meta hash names the thread a tag
belongs to, and a write to a tag owned by another thread id is refused.

Checkpoint value: a concatenation of msgpack objects (Lua reads the first ones with
``cmsgpack.unpack_limit`` without touching the record)::

    fmt  seq  step  depth  ts  parent  kf  base  node  next  meta  record  [writes]

``fmt`` is the layout (2; values of layout 1 still read). ``ts`` is created_at: ms after
the clock inside the checkpoint's id (an int, usually one byte) when the id is a UUIDv6
(LangGraph's) or v7 (savegame's), else ms since 1970 as 6 big-endian bytes (always, in
layout 1). ``kf`` is nil when the checkpoint is its own keyframe, ``base`` nil (keyframe),
true (the parent) or an id; ids that are canonical lowercase UUIDs are stored as 0xff +
their 16 bytes; ``meta`` the metadata, a msgpack map with its names packed by
``known_text`` (``source`` is one byte; layout 1: the map's msgpack bytes, names as text),
nil when empty; ``record`` the record bytes, or ``[token, n, size]`` when the record is
split into ``n`` pieces in ``x`` (written before the value that refers to them, so a reader
never sees half a record); ``writes`` the checkpoint's pending writes, a msgpack array of
``[task, index, channel, path, record]``, channel and path packed by ``known_text`` (text
that never held a packed name reads as itself). Text and bytes are both msgpack raw strings
(Redis's cmsgpack has no bin type).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ..base import StoredCheckpoint, StoredWrite
from ..errors import CorruptCheckpointError, SavegameError
from ..known_text import pack_names, pack_text, unpack_names, unpack_text

__all__ = [
    "CHUNK_BYTES",
    "LAYOUT_VERSION",
    "SCRIPTS",
    "RedisStoreError",
    "UnsupportedLayoutError",
    "ThreadKeys",
    "pack_checkpoint",
    "unpack_checkpoint",
]

#: 2: known names packed (``known_text``), metadata inline, ``ts`` relative to the id's
#: clock; layout 1 values still read.
LAYOUT_VERSION = 2
#: Records longer than this are split into pieces of at most this size (Redis values may
#: hold 512 MB; a few MiB keeps every command small and every script's copy cheap).
CHUNK_BYTES = 4 << 20
#: How many pieces one round trip writes (bounds the bytes of one pipeline).
CHUNKS_PER_CALL = 4
#: Suffixes of a thread's keys, in the order every script receives them as KEYS.
SUFFIXES = ("m", "c", "w", "x", "a")
_PLAIN_TAG = re.compile(r"[A-Za-z0-9_.:/@=+\-]{1,64}")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class RedisStoreError(SavegameError):
    """Redis refused a command (out of memory, read-only replica, ...): nothing of the
    operation named in the message was stored."""


class UnsupportedLayoutError(SavegameError):
    """A value was written by a newer savegame (a newer Redis layout)."""


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "surrogatepass")


def thread_tag(thread_id: str) -> str:
    """The hash-tag text of a thread: the id itself when plain, else ``#`` + its hash."""
    if _PLAIN_TAG.fullmatch(thread_id):
        return thread_id
    return "#" + hashlib.blake2b(_utf8(thread_id), digest_size=16).hexdigest()


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise TypeError(f"key_prefix must be a non-empty str, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"key_prefix {prefix!r} must not hold '{{' or '}}' (it would "
                         "change the cluster hash tag of every key)")
    return prefix


def check_client(client: object) -> None:
    """Values are bytes: a client that decodes replies to text would garble them."""
    kwargs = getattr(client, "get_connection_kwargs", None)
    try:
        decodes = bool(kwargs().get("decode_responses")) if callable(kwargs) else False
    except Exception:  # a client without the usual pool: nothing to check
        decodes = False
    if decodes:
        raise ValueError("the Redis client decodes responses (decode_responses=True); the "
                         "savers store bytes: pass a client made with decode_responses=False")


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The five keys of one thread, in script order."""

    thread_id: str
    keys: tuple[str, ...]

    @classmethod
    def of(cls, prefix: str, thread_id: str) -> ThreadKeys:
        base = f"{prefix}:{{{thread_tag(thread_id)}}}:"
        return cls(thread_id, tuple(base + suffix for suffix in SUFFIXES))

    @property
    def meta(self) -> str:
        return self.keys[0]

    @property
    def records(self) -> str:
        return self.keys[1]

    @property
    def writes(self) -> str:
        return self.keys[2]

    @property
    def chunks(self) -> str:
        return self.keys[3]


def registry_key(prefix: str) -> str:
    return f"{prefix}:threads"


def field(namespace: str, checkpoint_id: str) -> bytes:
    return _utf8(namespace) + b"\0" + _utf8(checkpoint_id)


def split_field(data: bytes) -> tuple[str, str]:
    namespace, _, checkpoint_id = data.partition(b"\0")
    return _text(namespace), _text(checkpoint_id)


def split_member(member: bytes) -> tuple[str, str, bytes]:
    """(namespace, id, value) of a member of ``c`` (neither id holds a NUL)."""
    namespace, rest = member.split(b"\0", 1)
    checkpoint_id, value = rest.split(b"\0", 1)
    return _text(namespace), _text(checkpoint_id), value


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def ref(identifier: str) -> bytes:
    """An id as stored inside values: a canonical lowercase UUID as 0xff + its 16 bytes
    (0xff never occurs in UTF-8 text), anything else as its UTF-8 bytes."""
    if len(identifier) == 36 and _UUID.fullmatch(identifier):
        return b"\xff" + uuid.UUID(identifier).bytes
    return _utf8(identifier)


def unref(data: bytes) -> str:
    if len(data) == 17 and data[0] == 0xFF:
        return str(uuid.UUID(bytes=data[1:]))
    return _text(data)


def _opt_ref(identifier: str | None) -> bytes | None:
    return None if identifier is None else ref(identifier)


def _opt_unref(data: bytes | None) -> str | None:
    return None if data is None else unref(data)


def new_token() -> str:
    """A fresh piece-set token: 12 hex digits of the time in ms, then 12 random ones (so
    ``collect_orphans`` can tell the age of pieces no checkpoint refers to)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(6).hex()}"


def ms(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def from_ms(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=value)


# -- values ------------------------------------------------------------------------------
def _packb(value: Any) -> bytes:
    # Redis's Lua cmsgpack knows no bin type: bytes and text are both msgpack raw strings,
    # and the reader decodes the text fields itself.
    return msgpack.packb(value, use_bin_type=False)  # type: ignore[no-any-return]


def _opt_text(data: bytes | None) -> str | None:
    return None if data is None else _text(data)


def metadata_object(metadata: Mapping[str, Any] | None) -> Any:
    """Metadata as stored inside a value: a map with its names packed (JSON-like values:
    types kept exactly, 64-bit ints included), nil when empty."""
    return pack_names(dict(metadata)) if metadata else None


def unpack_metadata(data: Any) -> dict[str, Any]:
    """The metadata of a value: inline (layout 2) or msgpack bytes (layout 1)."""
    if data is None:
        return {}
    if isinstance(data, bytes):
        data = msgpack.unpackb(data, raw=True)
    if not isinstance(data, dict):
        raise ValueError("the metadata is not a map")
    out: dict[str, Any] = unpack_names(data)
    return out


_UUID_EPOCH_100NS = 0x01B21DD213814000  # 1582-10-15 to 1970-01-01, in 100 ns


def id_clock_ms(identifier: str) -> int | None:
    """The time (ms since 1970) inside a canonical UUIDv6 or v7 id, else None."""
    if len(identifier) != 36 or identifier[14] not in "67" or not _UUID.fullmatch(identifier):
        return None
    digits = identifier.replace("-", "")
    if identifier[14] == "7":
        return int(digits[:12], 16)
    ticks = (int(digits[:12], 16) << 12) | int(digits[13:16], 16)
    return (ticks - _UUID_EPOCH_100NS) // 10_000


def _pack_ts(checkpoint_id: str, created_at: dt.datetime) -> Any:
    """created_at as ms after the id's own clock (a byte or two) when the id has one."""
    at = ms(created_at)
    clock = id_clock_ms(checkpoint_id)
    if clock is not None and abs(at - clock) < 1 << 31:
        return at - clock
    return at.to_bytes(6, "big", signed=True)


def _unpack_ts(checkpoint_id: str, ts: Any) -> dt.datetime:
    if isinstance(ts, int):
        clock = id_clock_ms(checkpoint_id)
        if clock is None:
            raise ValueError("the time is relative to an id without a clock")
        return from_ms(clock + ts)
    return from_ms(int.from_bytes(ts, "big", signed=True))


def pack_checkpoint(stored: StoredCheckpoint, chunked: tuple[str, int, int] | None) -> bytes:
    """The value of ``stored`` (``chunked`` = (token, pieces, size) when its record is
    stored in pieces)."""
    base: Any = None
    if stored.base_id is not None:
        base = True if stored.base_id == stored.parent_id else ref(stored.base_id)
    record: Any = list(chunked) if chunked is not None else stored.record
    return b"".join(_packb(item) for item in (
        LAYOUT_VERSION, stored.seq, stored.step, stored.depth,
        _pack_ts(stored.id, stored.created_at), _opt_ref(stored.parent_id),
        None if stored.keyframe_id == stored.id else ref(stored.keyframe_id),
        base, stored.node_id, stored.next_node_id, metadata_object(stored.metadata), record,
    ))


@dataclass(frozen=True, slots=True)
class Parsed:
    """A checkpoint value, parsed; ``record`` is empty while its pieces are not joined."""

    stored: StoredCheckpoint
    pieces: tuple[str, int, int] | None  # (token, n, size) of a chunked record
    writes: Any = None  # the pending writes stored in the value (msgpack array), if any


def unpack_checkpoint(thread_id: str, namespace: str, checkpoint_id: str,
                      value: bytes) -> Parsed:
    """Parse a checkpoint value; a newer layout is refused, a damaged one is corruption."""
    where = dict(thread_id=thread_id, namespace=namespace, checkpoint_id=checkpoint_id)
    try:
        unpacker = msgpack.Unpacker(raw=True, max_buffer_size=max(len(value), 1 << 20))
        unpacker.feed(value)
        fields = list(unpacker)
    except Exception as exc:
        raise CorruptCheckpointError(f"cannot parse the stored value: {exc}", **where) from None
    if fields and isinstance(fields[0], int) and fields[0] > LAYOUT_VERSION:
        raise UnsupportedLayoutError(
            f"checkpoint {checkpoint_id!r} of thread {thread_id!r} was written with Redis "
            f"layout {fields[0]}; this savegame reads layout {LAYOUT_VERSION} and older: "
            "upgrade savegame to read it")
    if len(fields) not in (12, 13):
        raise CorruptCheckpointError(f"the stored value has {len(fields)} fields, not 12",
                                     **where)
    _, seq, step, depth, ts, parent, kf, base, node, nxt, meta, record = fields[:12]
    pieces: tuple[str, int, int] | None = None
    if isinstance(record, list):
        token, count, size = record
        pieces, record = (_text(token), int(count), int(size)), b""
    parent_id = _opt_unref(parent)
    try:
        metadata = unpack_metadata(meta)
        created_at = _unpack_ts(checkpoint_id, ts)
    except (ValueError, TypeError) as exc:
        raise CorruptCheckpointError(f"cannot parse the stored metadata or time: {exc}",
                                     **where) from None
    stored = StoredCheckpoint(
        thread_id=thread_id, namespace=namespace, id=checkpoint_id, parent_id=parent_id,
        step=int(step), node_id=_opt_text(node), next_node_id=_opt_text(nxt),
        metadata=metadata, created_at=created_at,
        record=bytes(record),
        keyframe_id=checkpoint_id if kf is None else unref(kf),
        base_id=parent_id if base is True else _opt_unref(base), depth=int(depth),
        seq=int(seq),
    )
    return Parsed(stored, pieces, fields[12] if len(fields) == 13 else None)


def chunk_fields(token: str, count: int) -> list[str]:
    return [f"{token}:{index}" for index in range(count)]


def split_record(record: bytes, chunk_bytes: int) -> tuple[tuple[str, int, int], list[bytes]]:
    view = memoryview(record)
    pieces = [bytes(view[start:start + chunk_bytes])
              for start in range(0, len(record), chunk_bytes)]
    return (new_token(), len(pieces), len(record)), pieces


def join_record(parsed: Parsed, pieces: Sequence[bytes | None]) -> StoredCheckpoint:
    """The checkpoint of a chunked value, its pieces joined; a missing piece is corruption."""
    assert parsed.pieces is not None
    _, count, size = parsed.pieces
    data = b"".join(piece for piece in pieces if piece is not None)
    if len(pieces) != count or any(piece is None for piece in pieces) or len(data) != size:
        stored = parsed.stored
        raise CorruptCheckpointError(
            f"cannot decode checkpoint: {sum(p is not None for p in pieces)} of {count} "
            "pieces of its record are stored", thread_id=stored.thread_id,
            namespace=stored.namespace, checkpoint_id=stored.id)
    return _with_record(parsed.stored, data)


def _with_record(stored: StoredCheckpoint, record: bytes) -> StoredCheckpoint:
    import dataclasses

    return dataclasses.replace(stored, record=record)


def pack_writes(writes: Iterable[StoredWrite]) -> bytes:
    """Pending writes of one checkpoint: ``[task, index, channel, path, record]`` each,
    ``task`` and ``path`` false when the same as the entry before (a task's writes come
    together)."""
    entries: list[list[Any]] = []
    task: bytes | None = None
    path: str | None = None
    for w in writes:
        this = ref(w.task_id)
        entries.append([False if this == task else this, w.index, pack_text(w.channel),
                        False if w.task_path == path else pack_text(w.task_path), w.record])
        task, path = this, w.task_path
    return _packb(entries)


def unpack_writes(thread_id: str, namespace: str, checkpoint_id: str,
                  value: bytes | list[Any]) -> list[StoredWrite]:
    """Pending writes of one checkpoint (packed, or the array a parsed value holds)."""
    try:
        entries = msgpack.unpackb(value, raw=True) if isinstance(value, bytes) else value
        out = []
        task = path = b""
        for this, index, channel, this_path, record in entries:
            task = task if this is False else this
            path = path if this_path is False else this_path
            out.append(StoredWrite(thread_id, namespace, checkpoint_id, unref(task),
                                   int(index), unpack_text(channel), unpack_text(path),
                                   bytes(record)))
        return out
    except Exception as exc:
        raise CorruptCheckpointError(f"cannot parse stored pending writes: {exc}",
                                     thread_id=thread_id, namespace=namespace,
                                     checkpoint_id=checkpoint_id) from None


def metadata_filter(metadata: Mapping[str, Any] | None) -> bytes:
    """A filter as the read script compares it: packed like stored metadata."""
    packed = metadata_object(metadata)
    return b"" if packed is None else _packb(packed)


def ttl_ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, int(seconds * 1000))


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the members starting with ``prefix`` (UTF-8 never holds 0xff)."""
    if not prefix:
        return b"-", b"+"
    data = _utf8(prefix)
    return b"[" + data, b"(" + data + b"\xff"


# -- Lua ---------------------------------------------------------------------------------
# Every script receives the five keys of one thread (SUFFIXES order) and touches no other
# key, so it runs on the thread's slot in a cluster and is atomic there.
_PRELUDE = r"""
local M, C, W, X, A = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function pack(...) return {n = select('#', ...), ...} end
-- a compact id (0xff + 16 bytes of a UUID) as its text
local function expand(s)
  if type(s) == 'string' and #s == 17 and string.byte(s, 1) == 255 then
    local h = (string.gsub(string.sub(s, 2), '.', function(c)
      return string.format('%02x', string.byte(c)) end))
    return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-' .. string.sub(h, 13, 16)
      .. '-' .. string.sub(h, 17, 20) .. '-' .. string.sub(h, 21, 32)
  end
  return s
end
-- seq, keyframe id, base id (nil for a keyframe) of the value of checkpoint cid
local function info(cid, v)
  local t = pack(cmsgpack.unpack_limit(v, 8, 0))
  local parent, kf, base = expand(t[7]), expand(t[8]), t[9]
  if kf == nil then kf = cid end
  if base == true then base = parent else base = expand(base) end
  return t[3], kf, base
end
local function pieces(v)
  local t = pack(cmsgpack.unpack_limit(v, 12, 0))
  local r = t[13]
  if type(r) == 'table' then return r[1], r[2] end
  return nil, 0
end
-- a value without / only the pending writes stored after its twelve fields
local function head_part(v)
  local t = pack(cmsgpack.unpack_limit(v, 12, 0))
  if t[1] == -1 then return v end
  return string.sub(v, 1, t[1])
end
local function writes_of(v)
  local t = pack(cmsgpack.unpack_limit(v, 12, 0))
  if t[1] == -1 then return '' end
  return string.sub(v, t[1] + 1)
end
local function drop_pieces(token, n)
  if token and n > 0 then
    local f = {}
    for i = 0, n - 1 do f[#f + 1] = token .. ':' .. i end
    redis.call('HDEL', X, unpack(f))
  end
end
local function touch(ttl)
  if ttl > 0 then
    for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
local function claim(tid)
  local owner = redis.call('HGET', M, 't')
  if owner and owner ~= tid then
    return redis.error_reply('SAVEGAME the keys of thread ' .. tid ..
      ' are held by another thread id with the same tag')
  end
  if not owner then redis.call('HSET', M, 't', tid, 'l', '2') end
  return nil
end
local function lo(ns) return '[' .. ns .. '\0' end
local function hi(ns) return '(' .. ns .. '\1' end
-- the member of checkpoint cid of ns (ns \0 cid \0 value), or nil
local function find(ns, cid)
  return redis.call('ZRANGEBYLEX', C, '[' .. ns .. '\0' .. cid .. '\0',
    '(' .. ns .. '\0' .. cid .. '\1', 'LIMIT', 0, 1)[1]
end
-- cid and value of a member of ns
local function split(ns, m)
  local stop = string.find(m, '\0', #ns + 2, true)
  return string.sub(m, #ns + 2, stop - 1), string.sub(m, stop + 1)
end
local function store(ns, cid, v) redis.call('ZADD', C, 0, ns .. '\0' .. cid .. '\0' .. v) end
-- entries of packed writes with task (1) and path (4) filled in where false = "as before"
local function expand_writes(packed)
  local entries = cmsgpack.unpack(packed)
  local task, path = '', ''
  for _, e in ipairs(entries) do
    if e[1] == false then e[1] = task else task = e[1] end
    if e[4] == false then e[4] = path else path = e[4] end
  end
  return entries
end
local function merge_writes(current, incoming, replace)
  if current == '' then return incoming end
  if incoming == '' then return current end
  local entries, index = expand_writes(current), {}
  for j, e in ipairs(entries) do index[e[1] .. '\0' .. tostring(e[2])] = j end
  for _, e in ipairs(expand_writes(incoming)) do
    local k = e[1] .. '\0' .. tostring(e[2])
    local j = index[k]
    if j == nil then
      entries[#entries + 1] = e
      index[k] = #entries
    elseif replace then
      entries[j] = e
    end
  end
  local task, path = nil, nil
  for _, e in ipairs(entries) do
    local this, this_path = e[1], e[4]
    if this == task then e[1] = false end
    if this_path == path then e[4] = false end
    task, path = this, this_path
  end
  return cmsgpack.pack(entries)
end
-- attach writes to checkpoint cid of ns: inside its value when it is stored, else in W
local function add_writes(ns, cid, packed, replace)
  local m = find(ns, cid)
  if m then
    local _, v = split(ns, m)
    redis.call('ZREM', C, m)
    store(ns, cid, head_part(v) .. merge_writes(writes_of(v), packed, replace))
  else
    local f = ns .. '\0' .. cid
    redis.call('HSET', W, f, merge_writes(redis.call('HGET', W, f) or '', packed, replace))
  end
end
-- the checkpoint (seq, id) with the highest seq of ns, or nil
local function highest(ns)
  local best, best_id = nil, nil
  for _, m in ipairs(redis.call('ZRANGEBYLEX', C, lo(ns), hi(ns))) do
    local cid, v = split(ns, m)
    local seq = info(cid, v)
    if best == nil or seq > best then best, best_id = seq, cid end
  end
  return best, best_id
end
local function drop_checkpoint(ns, m)
  local _, v = split(ns, m)
  drop_pieces(pieces(v))
  redis.call('ZREM', C, m)
end
local function fix_head(ns)
  local seq, cid = highest(ns)
  if seq == nil then redis.call('HDEL', M, 'h' .. ns)
  else redis.call('HSET', M, 'h' .. ns, string.format('%d', seq) .. ':' .. cid) end
end
local function head_id(ns)
  local head = redis.call('HGET', M, 'h' .. ns)
  if not head then return nil, nil end
  local colon = string.find(head, ':', 1, true)
  return tonumber(string.sub(head, 1, colon - 1)), string.sub(head, colon + 1)
end
"""

# ARGV: tid, ns, cid, seq, parent ('' = none), value, ttl_ms, keep_last (0 = off),
#       keyframe ('1'/'0'), token ('' = not chunked), pieces
# Returns {0, created} stored | {1, value} id taken | {2} head moved or parent gone
_INSERT = _PRELUDE + r"""
local tid, ns, cid, seq, parent = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local ttl, keep, token, n = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[10], tonumber(ARGV[11])
local function reject(reply, existing)
  -- pieces written for this attempt are dropped, unless the stored value is this very
  -- put (a resend after a lost reply) and refers to them
  if token ~= '' and (existing == nil or pieces(existing) ~= token) then
    drop_pieces(token, n)
  end
  return reply
end
local err = claim(tid)
if err then return reject(err) end
local existing = find(ns, cid)
if existing then
  local _, v = split(ns, existing)
  return reject({1, v}, v)
end
local head_seq = head_id(ns)
if head_seq and seq <= head_seq then return reject({2}) end
if parent ~= '' and not find(ns, parent) then return reject({2}) end
local created = 1 - redis.call('EXISTS', C)
local f = ns .. '\0' .. cid
local early = redis.call('HGET', W, f)  -- writes stored before their checkpoint
if early then redis.call('HDEL', W, f) end
store(ns, cid, ARGV[6] .. (early or ''))
redis.call('HSET', M, 'h' .. ns, ARGV[4] .. ':' .. cid)
if keep > 0 and ARGV[9] == '1' then
  -- a new chain starts: drop whole chains holding none of the keep newest checkpoints
  local newest = redis.call('ZREVRANGEBYLEX', C, hi(ns), lo(ns), 'LIMIT', 0, keep)
  if #newest == keep then
    local kept = {}
    for _, m in ipairs(newest) do
      local _, kf = info(split(ns, m))
      kept[kf] = true
    end
    local last = newest[#newest]
    for _, m in ipairs(redis.call('ZRANGEBYLEX', C, lo(ns), '(' .. last)) do
      local other, v = split(ns, m)
      local _, kf = info(other, v)
      if other ~= cid and not kept[kf] then
        drop_checkpoint(ns, m)
        redis.call('HDEL', W, ns .. '\0' .. other)
      end
    end
  end
end
touch(ttl)
return {0, created}
"""

# Reads: the checkpoints asked for and, for each, the records on its decode path (base
# links) up to a keyframe, a checkpoint the client holds (ARGV[8..]) or max_path hops.
# ARGV: ns, mode ('id' | 'latest' | 'list'), id or before ('' = none), limit (0 = none),
#       metadata filter JSON ('' = none), max_path, budget (values a list may scan),
#       known ids...
# Returns {npage, resume, page id/value pairs..., path id/value pairs...}; resume = the
# last id a filtered list scanned when it stopped on its budget ('' = done).
_READ = _PRELUDE + r"""
local ns, mode, arg, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local filter_json, max_path, budget = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local seen = {}
for i = 8, #ARGV do seen[ARGV[i]] = true end
local page, out = {}, {}
local resume = ''
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= 'table' then return a == b end
  for k, v in pairs(a) do if b[k] == nil or not same(v, b[k]) then return false end end
  for k, _ in pairs(b) do if a[k] == nil then return false end end
  return true
end
-- Metadata and filter are msgpack maps; cmsgpack reads numbers as doubles and drops
-- nil values on both sides alike, so this equality may keep too much, never too little:
-- the client checks exactly.
local filter = nil
if filter_json ~= '' then filter = cmsgpack.unpack(filter_json) end
local function candidate(v)
  if filter == nil then return true end
  local t = pack(cmsgpack.unpack_limit(v, 11, 0))
  local meta = t[12]
  if meta == nil then return false end
  -- layout 1 (metadata as msgpack bytes, names not packed): the client decides
  if type(meta) ~= 'table' then return true end
  for k, want in pairs(filter) do
    local have = meta[k]
    if have == nil or not same(have, want) then return false end
  end
  return true
end
local function add(m)
  local cid, v = split(ns, m)
  page[#page + 1] = {cid, v}
end
if mode == 'id' then
  local m = find(ns, arg)
  if m then add(m) end
elseif mode == 'latest' then
  local _, cid = head_id(ns)
  if cid then
    local m = find(ns, cid)
    if m then add(m) end
  end
else
  local top = hi(ns)
  if arg ~= '' then top = '(' .. ns .. '\0' .. arg .. '\0' end
  if filter == nil then
    local ms
    if limit > 0 then
      ms = redis.call('ZREVRANGEBYLEX', C, top, lo(ns), 'LIMIT', 0, limit)
    else
      ms = redis.call('ZREVRANGEBYLEX', C, top, lo(ns))
    end
    for _, m in ipairs(ms) do add(m) end
  else
    local scanned, offset = 0, 0
    while true do
      local ms = redis.call('ZREVRANGEBYLEX', C, top, lo(ns), 'LIMIT', offset, 64)
      if #ms == 0 then break end
      offset = offset + #ms
      for _, m in ipairs(ms) do
        scanned = scanned + 1
        local cid, v = split(ns, m)
        if candidate(v) then page[#page + 1] = {cid, v} end
        if limit > 0 and #page >= limit then break end
        if scanned >= budget then resume = cid; break end
      end
      if (limit > 0 and #page >= limit) or resume ~= '' then break end
    end
  end
end
for _, item in ipairs(page) do seen[item[1]] = true end
out[1] = #page
out[2] = resume
for _, item in ipairs(page) do out[#out + 1] = item[1]; out[#out + 1] = item[2] end
if max_path > 0 then
  for _, item in ipairs(page) do
    local _, _, base = info(item[1], item[2])
    local hops = 0
    while base ~= nil and not seen[base] and hops < max_path do
      seen[base] = true
      local m = find(ns, base)
      if not m then break end
      local _, v = split(ns, m)
      out[#out + 1] = base; out[#out + 1] = v
      local _, _, next_base = info(base, v)
      base = next_base
      hops = hops + 1
    end
  end
end
return out
"""

# Every record of the given chain groups (the fallback of the path prefetch: a scan of the
# namespace). ARGV: ns, keyframe ids...  Returns id/value pairs.
_CHAINS = _PRELUDE + r"""
local ns = ARGV[1]
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYLEX', C, lo(ns), hi(ns))) do
  local cid, v = split(ns, m)
  local _, kf = info(cid, v)
  if wanted[kf] then out[#out + 1] = cid; out[#out + 1] = v end
end
return out
"""

# The checkpoints with the given ids (a ZRANGEBYLEX each: no scan). ARGV: ns, ids...
# Returns id/value pairs of the ones stored.
_MANY = _PRELUDE + r"""
local ns = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local m = find(ns, ARGV[i])
  if m then out[#out + 1] = ARGV[i]; out[#out + 1] = select(2, split(ns, m)) end
end
return out
"""

# Pieces of big records, written before the value that refers to them.
# ARGV: tid, ttl_ms, field, piece, field, piece...
_PIECES = _PRELUDE + r"""
local err = claim(ARGV[1])
if err then return err end
for i = 3, #ARGV, 2 do redis.call('HSET', X, ARGV[i], ARGV[i + 1]) end
touch(tonumber(ARGV[2]))
return 1
"""

# ARGV: tid, ttl_ms, replace ('1'/'0'), then (ns, id, packed writes) triples.
_WRITES = _PRELUDE + r"""
local err = claim(ARGV[1])
if err then return err end
for i = 4, #ARGV, 3 do add_writes(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[3] == '1') end
touch(tonumber(ARGV[2]))
return 1
"""

# ARGV: ns, ids...  Returns the packed writes of each id ('' when none).
_READ_WRITES = _PRELUDE + r"""
local ns = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local m = find(ns, ARGV[i])
  if m then
    local _, v = split(ns, m)
    out[#out + 1] = writes_of(v)
  else
    out[#out + 1] = redis.call('HGET', W, ns .. '\0' .. ARGV[i]) or ''
  end
end
return out
"""

# ARGV: ttl_ms, ns, id, value  Returns 1, or 0 when the checkpoint is gone.
_REPLACE = _PRELUDE + r"""
local ns, cid = ARGV[2], ARGV[3]
local m = find(ns, cid)
if not m then return 0 end
local _, old = split(ns, m)
local token, n = pieces(old)
local new_token = pieces(ARGV[4])
if token ~= new_token then drop_pieces(token, n) end
redis.call('ZREM', C, m)
store(ns, cid, ARGV[4] .. writes_of(old))
touch(tonumber(ARGV[1]))
return 1
"""

# ARGV: ttl_ms, ns, ids...
_DELETE = _PRELUDE + r"""
local ns = ARGV[2]
local _, head = head_id(ns)
local head_gone = false
for i = 3, #ARGV do
  local m = find(ns, ARGV[i])
  if m then drop_checkpoint(ns, m) end
  redis.call('HDEL', W, ns .. '\0' .. ARGV[i])
  if head == ARGV[i] then head_gone = true end
end
if head_gone then fix_head(ns) end
touch(tonumber(ARGV[1]))
return 1
"""

# Copy checkpoints in (ids or seqs already present are skipped) and writes (kept).
# ARGV: tid, ttl_ms, count, then count x (ns, id, seq, value), then (ns, id, writes).
_COPY_IN = _PRELUDE + r"""
local err = claim(ARGV[1])
if err then return err end
local count = tonumber(ARGV[3])
local seqs, touched = {}, {}
local created = 1 - redis.call('EXISTS', C)
for i = 0, count - 1 do
  local ns, cid, seq, v = ARGV[4 + 4 * i], ARGV[5 + 4 * i], tonumber(ARGV[6 + 4 * i]),
    ARGV[7 + 4 * i]
  if seqs[ns] == nil then
    seqs[ns] = {}
    for _, m in ipairs(redis.call('ZRANGEBYLEX', C, lo(ns), hi(ns))) do
      seqs[ns][info(split(ns, m))] = true
    end
  end
  local current = find(ns, cid)
  if current == nil and not seqs[ns][seq] then
    store(ns, cid, v)
    seqs[ns][seq] = true
    touched[ns] = true
  else
    local same = false
    if current then
      local _, cv = split(ns, current)
      same = pieces(cv) == pieces(v)
    end
    if not same then drop_pieces(pieces(v)) end  -- not stored: its pieces go
  end
end
for ns, _ in pairs(touched) do fix_head(ns) end
for i = 4 + 4 * count, #ARGV, 3 do add_writes(ARGV[i], ARGV[i + 1], ARGV[i + 2], false) end
touch(tonumber(ARGV[2]))
return created
"""

# The whole thread: every checkpoint member and the writes of checkpoints not stored.
_THREAD = _PRELUDE + r"""
return {redis.call('ZRANGE', C, 0, -1), redis.call('HGETALL', W)}
"""

# Release: move the live run to the next version. ARGV: ttl_ms, token.
# Returns {version, member...} ({0} when nothing ran since the last release); a resend of
# the same release (same token) returns the version it made.
_ARCHIVE = _PRELUDE + r"""
local token = ARGV[2]
local function archived(version)
  local out = {tonumber(version)}
  local cut = #version + 2
  for _, m in ipairs(redis.call('ZRANGEBYLEX', A, '[' .. version .. '\0',
                                '(' .. version .. '\1')) do
    out[#out + 1] = string.sub(m, cut)
  end
  return out
end
local last = redis.call('HGET', M, 'rt')
if last and string.sub(last, 1, #token + 1) == token .. ':' then
  return archived(string.sub(last, #token + 2))
end
local ms = redis.call('ZRANGE', C, 0, -1)
if #ms == 0 then return {0} end
local version = tostring(tonumber(redis.call('HGET', M, 'rv') or '0') + 1)
local spaces = {}
for _, m in ipairs(ms) do
  local ns = string.sub(m, 1, string.find(m, '\0', 1, true) - 1)
  local cid, v = split(ns, m)
  -- pending writes are not part of a released run
  redis.call('ZADD', A, 0, version .. '\0' .. ns .. '\0' .. cid .. '\0' .. head_part(v))
  spaces[ns] = true
end
redis.call('UNLINK', C, W)
for ns, _ in pairs(spaces) do redis.call('HDEL', M, 'h' .. ns) end
redis.call('HSET', M, 'rv', version, 'V' .. version, #ms, 'rt', token .. ':' .. version)
touch(tonumber(ARGV[1]))
return archived(version)
"""

# ARGV: version. Returns {found, member...}.
_VERSION = _PRELUDE + r"""
local version = ARGV[1]
if redis.call('HEXISTS', M, 'V' .. version) == 0 then return {0} end
local out = {1}
local cut = #version + 2
for _, m in ipairs(redis.call('ZRANGEBYLEX', A, '[' .. version .. '\0',
                              '(' .. version .. '\1')) do
  out[#out + 1] = string.sub(m, cut)
end
return out
"""


# Pieces no checkpoint (live or released) refers to, whose token is older than ARGV[1]
# (ms since 1970, the first 12 hex digits of a token): left by a put whose connection died
# between its pieces and its value. Returns the number of pieces dropped.
_ORPHANS = _PRELUDE + r"""
local cutoff = tonumber(ARGV[1])
local used = {}
-- the value of a member: what follows its nuls-th NUL
local function value_after(m, nuls)
  local at = 0
  for _ = 1, nuls do at = string.find(m, '\0', at + 1, true) end
  return string.sub(m, at + 1)
end
for key, nuls in pairs({[C] = 2, [A] = 3}) do  -- <ns>\0<id>\0, <version>\0<ns>\0<id>\0
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local token = pieces(value_after(m, nuls))
    if token then used[token] = true end
  end
end
local dropped = 0
for _, f in ipairs(redis.call('HKEYS', X)) do
  local token = string.sub(f, 1, string.find(f, ':', 1, true) - 1)
  local born = tonumber(string.sub(token, 1, 12), 16)
  if not used[token] and born ~= nil and born < cutoff then
    redis.call('HDEL', X, f)
    dropped = dropped + 1
  end
end
return dropped
"""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


SCRIPTS: dict[str, Script] = {
    name: _script(name, source) for name, source in (
        ("insert", _INSERT), ("read", _READ), ("chains", _CHAINS), ("many", _MANY),
        ("pieces", _PIECES), ("writes", _WRITES), ("read_writes", _READ_WRITES),
        ("replace", _REPLACE), ("delete", _DELETE),
        ("copy_in", _COPY_IN), ("thread", _THREAD), ("archive", _ARCHIVE),
        ("version", _VERSION), ("orphans", _ORPHANS),
    )
}

#: How many list entries a filtered list scans per script call (bounds the time one call
#: holds the server; the client continues from where it stopped).
SCAN_BUDGET = 2000


def metadata_matches(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Exact, type-strict equality on each wanted key (MemorySaver's semantics)."""
    from ..memory import _same_json

    return all(key in stored and _same_json(stored[key], value)
               for key, value in wanted.items())


def pairs(flat: Sequence[Any]) -> list[tuple[bytes, bytes]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def check_space(thread_id: object, namespace: object) -> None:
    """The same checks as the base flows, for the saver's own public methods."""
    if not isinstance(thread_id, str) or not thread_id:
        raise TypeError(f"thread_id must be a non-empty str, got {thread_id!r}")
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__qualname__}")
