"""IO-free parts of the Redis savers: key layout, value format, Lua scripts, chunking.

Both savers (``AsyncRedisSaver`` and its generated twin ``RedisSaver``) build every key,
value and script call here, so the two read and write exactly the same layout.

Keys of one thread (``P`` = the saver's ``key_prefix``, ``T`` = the thread's tag)::

    P:{T}:m   hash    the thread's meta: ``t`` thread id, ``l`` layout version,
                      ``h<ns>`` = "<seq>:<id>" of each namespace's latest checkpoint,
                      ``rv`` last released version, ``rt`` "<token>:<version>" of the last
                      release, ``V<n>`` = number of checkpoints released as version n
    P:{T}:c   hash    ``<ns>\\0<id>`` -> the checkpoint's value (envelope + record bytes)
    P:{T}:o   zset    ``<ns>\\0<id>``, all scores 0: checkpoint ids in string order (list)
    P:{T}:w   hash    ``<ns>\\0<id>`` -> the checkpoint's pending writes (one msgpack array)
    P:{T}:x   hash    ``<token>:<i>`` -> piece i of a record too big for one value
    P:{T}:a   hash    ``<version>\\0<ns>\\0<id>`` -> a released checkpoint's value
    P:{T}:ao  zset    ``<version>\\0<ns>\\0<id>``, scores 0: released checkpoints per version
    P:threads zset    thread ids, scores 0: the registry ``list_threads`` reads by prefix

Every key of a thread carries the same hash tag ``{T}``, so a thread lives in one cluster
slot and each script below (which names all seven keys) runs atomically there. ``T`` is
the thread id itself when it is short and made of ``[A-Za-z0-9_.:/@=+-]`` only, else
``#`` followed by a 128-bit BLAKE2b of its UTF-8 bytes (``#`` is not in the plain
alphabet, so the two forms never collide); ``t`` in the meta hash names the thread a tag
belongs to, and a write to a tag owned by another thread id is refused.

Checkpoint value: a concatenation of msgpack objects (Lua reads the first ones with
``cmsgpack.unpack_limit`` without touching the record)::

    fmt  seq  step  depth  ts_ms  parent  kf  base  node  next  meta  record

``kf`` is nil when the checkpoint is its own keyframe, ``base`` nil (keyframe), true (the
parent) or an id; ``meta`` the metadata as JSON bytes (nil when empty); ``record`` the
record bytes, or ``[token, n, size]`` when the record is split into ``n`` pieces in ``x``
(written before the value that refers to them, so a reader never sees half a record).

Pending writes of one checkpoint: a msgpack array of ``[task, index, channel, path,
record]``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ..base import StoredCheckpoint, StoredWrite
from ..errors import CorruptCheckpointError, SavegameError

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

LAYOUT_VERSION = 1
#: Records longer than this are split into pieces of at most this size (Redis values may
#: hold 512 MB; a few MiB keeps every command small and every script's copy cheap).
CHUNK_BYTES = 4 << 20
#: How many pieces one round trip writes (bounds the bytes of one pipeline).
CHUNKS_PER_CALL = 4
#: Suffixes of a thread's keys, in the order every script receives them as KEYS.
SUFFIXES = ("m", "c", "o", "w", "x", "a", "ao")
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


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The seven keys of one thread, in script order."""

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
        return self.keys[3]

    @property
    def chunks(self) -> str:
        return self.keys[4]


def registry_key(prefix: str) -> str:
    return f"{prefix}:threads"


def field(namespace: str, checkpoint_id: str) -> bytes:
    return _utf8(namespace) + b"\0" + _utf8(checkpoint_id)


def split_field(data: bytes) -> tuple[str, str]:
    namespace, _, checkpoint_id = data.partition(b"\0")
    return _text(namespace), _text(checkpoint_id)


def new_token() -> str:
    return os.urandom(9).hex()


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


def pack_metadata(metadata: Mapping[str, Any]) -> bytes | None:
    if not metadata:
        return None
    return _utf8(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False))


def unpack_metadata(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {}
    out: dict[str, Any] = json.loads(_text(data))
    return out


def pack_checkpoint(stored: StoredCheckpoint, chunked: tuple[str, int, int] | None) -> bytes:
    """The value of ``stored`` (``chunked`` = (token, pieces, size) when its record is
    stored in pieces)."""
    base: Any = None
    if stored.base_id is not None:
        base = True if stored.base_id == stored.parent_id else stored.base_id
    record: Any = list(chunked) if chunked is not None else stored.record
    return b"".join(_packb(item) for item in (
        LAYOUT_VERSION, stored.seq, stored.step, stored.depth, ms(stored.created_at),
        stored.parent_id, None if stored.keyframe_id == stored.id else stored.keyframe_id,
        base, stored.node_id, stored.next_node_id, pack_metadata(stored.metadata), record,
    ))


@dataclass(frozen=True, slots=True)
class Parsed:
    """A checkpoint value, parsed; ``record`` is None while its pieces are not joined."""

    stored: StoredCheckpoint
    pieces: tuple[str, int, int] | None  # (token, n, size) of a chunked record


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
    if len(fields) != 12:
        raise CorruptCheckpointError(f"the stored value has {len(fields)} fields, not 12",
                                     **where)
    _, seq, step, depth, ts, parent, kf, base, node, nxt, meta, record = fields
    pieces: tuple[str, int, int] | None = None
    if isinstance(record, list):
        token, count, size = record
        pieces, record = (_text(token), int(count), int(size)), b""
    parent_id = _opt_text(parent)
    try:
        metadata = unpack_metadata(meta)
    except ValueError as exc:
        raise CorruptCheckpointError(f"cannot parse the stored metadata: {exc}",
                                     **where) from None
    stored = StoredCheckpoint(
        thread_id=thread_id, namespace=namespace, id=checkpoint_id, parent_id=parent_id,
        step=int(step), node_id=_opt_text(node), next_node_id=_opt_text(nxt),
        metadata=metadata, created_at=from_ms(int(ts)), record=bytes(record),
        keyframe_id=checkpoint_id if kf is None else _text(kf),
        base_id=parent_id if base is True else _opt_text(base), depth=int(depth),
        seq=int(seq),
    )
    return Parsed(stored, pieces)


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
    return _packb([[w.task_id, w.index, w.channel, w.task_path, w.record] for w in writes])


def unpack_writes(thread_id: str, namespace: str, checkpoint_id: str,
                  value: bytes) -> list[StoredWrite]:
    """Pending writes of one checkpoint (Lua's merge stores text as msgpack raw strings,
    so every field is read as bytes)."""
    try:
        entries = msgpack.unpackb(value, raw=True)
        return [StoredWrite(thread_id, namespace, checkpoint_id, _text(task), int(index),
                            _text(channel), _text(path), bytes(record))
                for task, index, channel, path, record in entries]
    except Exception as exc:
        raise CorruptCheckpointError(f"cannot parse stored pending writes: {exc}",
                                     thread_id=thread_id, namespace=namespace,
                                     checkpoint_id=checkpoint_id) from None


def metadata_filter(metadata: Mapping[str, Any] | None) -> bytes:
    return b"" if not metadata else _utf8(json.dumps(metadata, separators=(",", ":"),
                                                     ensure_ascii=False))


def ttl_ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, int(seconds * 1000))


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the members starting with ``prefix`` (UTF-8 never holds 0xff)."""
    if not prefix:
        return b"-", b"+"
    data = _utf8(prefix)
    return b"[" + data, b"(" + data + b"\xff"


# -- Lua ---------------------------------------------------------------------------------
# Every script receives the seven keys of one thread (SUFFIXES order) and touches no other
# key, so it runs on the thread's slot in a cluster and is atomic there.
_PRELUDE = r"""
local M, C, O, W, X, A, AO = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local function pack(...) return {n = select('#', ...), ...} end
-- seq, keyframe id, base id (nil for a keyframe) of the value of checkpoint cid
local function info(cid, v)
  local t = pack(cmsgpack.unpack_limit(v, 8, 0))
  local parent, kf, base = t[7], t[8], t[9]
  if kf == nil then kf = cid end
  if base == true then base = parent end
  return t[3], kf, base
end
local function pieces(v)
  local t = pack(cmsgpack.unpack_limit(v, 12, 0))
  local r = t[13]
  if type(r) == 'table' then return r[1], r[2] end
  return nil, 0
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
  if not owner then redis.call('HSET', M, 't', tid, 'l', '1') end
  return nil
end
local function cid_of(ns, f) return string.sub(f, #ns + 2) end
local function lo(ns) return '[' .. ns .. '\0' end
local function hi(ns) return '(' .. ns .. '\1' end
-- the checkpoint (seq, id) with the highest seq of ns, or nil
local function highest(ns)
  local best, best_id = nil, nil
  for _, f in ipairs(redis.call('ZRANGEBYLEX', O, lo(ns), hi(ns))) do
    local cid = cid_of(ns, f)
    local seq = info(cid, redis.call('HGET', C, f))
    if best == nil or seq > best then best, best_id = seq, cid end
  end
  return best, best_id
end
local function drop_checkpoint(f, v)
  drop_pieces(pieces(v))
  redis.call('HDEL', C, f)
  redis.call('ZREM', O, f)
  redis.call('HDEL', W, f)
end
local function fix_head(ns)
  local seq, cid = highest(ns)
  if seq == nil then redis.call('HDEL', M, 'h' .. ns)
  else redis.call('HSET', M, 'h' .. ns, string.format('%d', seq) .. ':' .. cid) end
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
local f = ns .. '\0' .. cid
local existing = redis.call('HGET', C, f)
if existing then return reject({1, existing}, existing) end
local head = redis.call('HGET', M, 'h' .. ns)
if head then
  local colon = string.find(head, ':', 1, true)
  if seq <= tonumber(string.sub(head, 1, colon - 1)) then return reject({2}) end
end
if parent ~= '' and redis.call('HEXISTS', C, ns .. '\0' .. parent) == 0 then
  return reject({2})
end
local created = 1 - redis.call('EXISTS', C)
redis.call('HSET', C, f, ARGV[6])
redis.call('ZADD', O, 0, f)
redis.call('HSET', M, 'h' .. ns, ARGV[4] .. ':' .. cid)
if keep > 0 and ARGV[9] == '1' then
  -- a new chain starts: drop whole chains holding none of the keep newest checkpoints
  local newest = redis.call('ZREVRANGEBYLEX', O, hi(ns), lo(ns), 'LIMIT', 0, keep)
  if #newest == keep then
    local kept = {}
    for _, g in ipairs(newest) do
      local _, kf = info(cid_of(ns, g), redis.call('HGET', C, g))
      kept[kf] = true
    end
    for _, g in ipairs(redis.call('ZRANGEBYLEX', O, lo(ns), '(' .. newest[#newest])) do
      if g ~= f then
        local v = redis.call('HGET', C, g)
        local _, kf = info(cid_of(ns, g), v)
        if not kept[kf] then drop_checkpoint(g, v) end
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
# Returns {npage, resume, page f/v pairs..., path f/v pairs...}; resume = the last field a
# filtered list scanned when it stopped on its budget ('' = done).
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
local filter = nil
if filter_json ~= '' then filter = cjson.decode(filter_json) end
-- may the value match the filter? (exact equality is checked by the client)
local function candidate(v)
  if filter == nil then return true end
  local t = pack(cmsgpack.unpack_limit(v, 11, 0))
  local meta_json = t[12]
  if meta_json == nil then return false end
  local ok, meta = pcall(cjson.decode, meta_json)
  if not ok or type(meta) ~= 'table' then return true end
  for k, want in pairs(filter) do
    local have = meta[k]
    if have == nil or not same(have, want) then return false end
  end
  return true
end
if mode == 'id' then
  local v = redis.call('HGET', C, ns .. '\0' .. arg)
  if v then page[1] = {ns .. '\0' .. arg, v} end
elseif mode == 'latest' then
  local head = redis.call('HGET', M, 'h' .. ns)
  if head then
    local f = ns .. '\0' .. string.sub(head, string.find(head, ':', 1, true) + 1)
    local v = redis.call('HGET', C, f)
    if v then page[1] = {f, v} end
  end
else
  local top = hi(ns)
  if arg ~= '' then top = '(' .. ns .. '\0' .. arg end
  if filter == nil then
    local fs
    if limit > 0 then
      fs = redis.call('ZREVRANGEBYLEX', O, top, lo(ns), 'LIMIT', 0, limit)
    else
      fs = redis.call('ZREVRANGEBYLEX', O, top, lo(ns))
    end
    if #fs > 0 then
      local vs = redis.call('HMGET', C, unpack(fs))
      for i = 1, #fs do if vs[i] then page[#page + 1] = {fs[i], vs[i]} end end
    end
  else
    local scanned, offset = 0, 0
    while true do
      local fs = redis.call('ZREVRANGEBYLEX', O, top, lo(ns), 'LIMIT', offset, 64)
      if #fs == 0 then break end
      offset = offset + #fs
      local vs = redis.call('HMGET', C, unpack(fs))
      for i = 1, #fs do
        scanned = scanned + 1
        if vs[i] and candidate(vs[i]) then page[#page + 1] = {fs[i], vs[i]} end
        if (limit > 0 and #page >= limit) then break end
        if scanned >= budget then resume = fs[i]; break end
      end
      if (limit > 0 and #page >= limit) or resume ~= '' then break end
    end
  end
end
for _, item in ipairs(page) do seen[cid_of(ns, item[1])] = true end
out[1] = #page
out[2] = resume
for _, item in ipairs(page) do out[#out + 1] = item[1]; out[#out + 1] = item[2] end
if max_path > 0 then
  for _, item in ipairs(page) do
    local cid = cid_of(ns, item[1])
    local _, _, base = info(cid, item[2])
    local hops = 0
    while base ~= nil and not seen[base] and hops < max_path do
      seen[base] = true
      local f = ns .. '\0' .. base
      local v = redis.call('HGET', C, f)
      if not v then break end
      out[#out + 1] = f; out[#out + 1] = v
      local _, _, next_base = info(base, v)
      base = next_base
      hops = hops + 1
    end
  end
end
return out
"""

# Every record of the given chain groups (the fallback of the path prefetch: a scan of the
# namespace). ARGV: ns, keyframe ids...  Returns f/v pairs.
_CHAINS = _PRELUDE + r"""
local ns = ARGV[1]
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local out = {}
for _, f in ipairs(redis.call('ZRANGEBYLEX', O, lo(ns), hi(ns))) do
  local v = redis.call('HGET', C, f)
  local _, kf = info(cid_of(ns, f), v)
  if wanted[kf] then out[#out + 1] = f; out[#out + 1] = v end
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

# ARGV: tid, ttl_ms, replace ('1'/'0'), field, packed writes, field, packed writes...
_WRITES = _PRELUDE + r"""
local err = claim(ARGV[1])
if err then return err end
local replace = ARGV[3] == '1'
for i = 4, #ARGV, 2 do
  local f = ARGV[i]
  local current = redis.call('HGET', W, f)
  if not current then
    redis.call('HSET', W, f, ARGV[i + 1])
  else
    local entries, index = cmsgpack.unpack(current), {}
    for j, e in ipairs(entries) do index[e[1] .. '\0' .. tostring(e[2])] = j end
    for _, e in ipairs(cmsgpack.unpack(ARGV[i + 1])) do
      local k = e[1] .. '\0' .. tostring(e[2])
      local j = index[k]
      if j == nil then
        entries[#entries + 1] = e
        index[k] = #entries
      elseif replace then
        entries[j] = e
      end
    end
    redis.call('HSET', W, f, cmsgpack.pack(entries))
  end
end
touch(tonumber(ARGV[2]))
return 1
"""

# ARGV: ttl_ms, ns, id, value  Returns 1, or 0 when the checkpoint is gone.
_REPLACE = _PRELUDE + r"""
local f = ARGV[2] .. '\0' .. ARGV[3]
local old = redis.call('HGET', C, f)
if not old then return 0 end
local token, n = pieces(old)
local new_token = pieces(ARGV[4])
if token ~= new_token then drop_pieces(token, n) end
redis.call('HSET', C, f, ARGV[4])
touch(tonumber(ARGV[1]))
return 1
"""

# ARGV: ttl_ms, ns, ids...
_DELETE = _PRELUDE + r"""
local ns = ARGV[2]
local head = redis.call('HGET', M, 'h' .. ns)
local head_gone = false
for i = 3, #ARGV do
  local f = ns .. '\0' .. ARGV[i]
  local v = redis.call('HGET', C, f)
  if v then drop_checkpoint(f, v) end
  redis.call('HDEL', W, f)
  if head and string.sub(head, string.find(head, ':', 1, true) + 1) == ARGV[i] then
    head_gone = true
  end
end
if head_gone then fix_head(ns) end
touch(tonumber(ARGV[1]))
return 1
"""

# Copy checkpoints in (ids or seqs already present are skipped) and writes (kept).
# ARGV: tid, ttl_ms, count, then count x (ns, id, seq, value), then field/packed writes.
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
    for _, f in ipairs(redis.call('ZRANGEBYLEX', O, lo(ns), hi(ns))) do
      seqs[ns][info(cid_of(ns, f), redis.call('HGET', C, f))] = true
    end
  end
  local f = ns .. '\0' .. cid
  local current = redis.call('HGET', C, f)
  if current == false and not seqs[ns][seq] then
    redis.call('HSET', C, f, v)
    redis.call('ZADD', O, 0, f)
    seqs[ns][seq] = true
    touched[ns] = true
  elseif current == false or pieces(current) ~= pieces(v) then
    drop_pieces(pieces(v))  -- not stored: its pieces (unless a resend stored them) go
  end
end
for ns, _ in pairs(touched) do fix_head(ns) end
for i = 4 + 4 * count, #ARGV, 2 do
  local f = ARGV[i]
  local current = redis.call('HGET', W, f)
  if not current then
    redis.call('HSET', W, f, ARGV[i + 1])
  else
    local entries, index = cmsgpack.unpack(current), {}
    for j, e in ipairs(entries) do index[e[1] .. '\0' .. tostring(e[2])] = j end
    for _, e in ipairs(cmsgpack.unpack(ARGV[i + 1])) do
      if index[e[1] .. '\0' .. tostring(e[2])] == nil then entries[#entries + 1] = e end
    end
    redis.call('HSET', W, f, cmsgpack.pack(entries))
  end
end
touch(tonumber(ARGV[2]))
return created
"""

# The whole thread: every checkpoint and every pending write, as f/v pairs.
_THREAD = _PRELUDE + r"""
return {redis.call('HGETALL', C), redis.call('HGETALL', W)}
"""

# Release: move the live run to the next version. ARGV: ttl_ms, token.
# Returns {version, f/v pairs...} ({0} when nothing ran since the last release); a resend
# of the same release (same token) returns the version it made.
_ARCHIVE = _PRELUDE + r"""
local token = ARGV[2]
local function archived(version)
  local prefix = version .. '\0'
  local out = {tonumber(version)}
  local fs = redis.call('ZRANGEBYLEX', AO, '[' .. prefix, '(' .. version .. '\1')
  if #fs > 0 then
    local vs = redis.call('HMGET', A, unpack(fs))
    for i = 1, #fs do
      out[#out + 1] = string.sub(fs[i], #prefix + 1)
      out[#out + 1] = vs[i]
    end
  end
  return out
end
local last = redis.call('HGET', M, 'rt')
if last and string.sub(last, 1, #token + 1) == token .. ':' then
  return archived(string.sub(last, #token + 2))
end
local fs = redis.call('ZRANGEBYLEX', O, '-', '+')
if #fs == 0 then return {0} end
local version = tostring(tonumber(redis.call('HGET', M, 'rv') or '0') + 1)
local vs = redis.call('HMGET', C, unpack(fs))
local spaces = {}
for i = 1, #fs do
  local member = version .. '\0' .. fs[i]
  redis.call('HSET', A, member, vs[i])
  redis.call('ZADD', AO, 0, member)
  spaces[string.sub(fs[i], 1, string.find(fs[i], '\0', 1, true) - 1)] = true
end
redis.call('UNLINK', C, O, W)
for ns, _ in pairs(spaces) do redis.call('HDEL', M, 'h' .. ns) end
redis.call('HSET', M, 'rv', version, 'V' .. version, #fs, 'rt', token .. ':' .. version)
touch(tonumber(ARGV[1]))
return archived(version)
"""

# ARGV: version. Returns {found, f/v pairs...}.
_VERSION = _PRELUDE + r"""
local version = ARGV[1]
if redis.call('HEXISTS', M, 'V' .. version) == 0 then return {0} end
local prefix = version .. '\0'
local out = {1}
local fs = redis.call('ZRANGEBYLEX', AO, '[' .. prefix, '(' .. version .. '\1')
if #fs > 0 then
  local vs = redis.call('HMGET', A, unpack(fs))
  for i = 1, #fs do
    out[#out + 1] = string.sub(fs[i], #prefix + 1)
    out[#out + 1] = vs[i]
  end
end
return out
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
        ("insert", _INSERT), ("read", _READ), ("chains", _CHAINS), ("pieces", _PIECES),
        ("writes", _WRITES), ("replace", _REPLACE), ("delete", _DELETE),
        ("copy_in", _COPY_IN), ("thread", _THREAD), ("archive", _ARCHIVE),
        ("version", _VERSION),
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
