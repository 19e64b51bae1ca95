"""AsyncRedisSaver: checkpoints in Redis (or Redis Cluster, or Valkey) through redis-py's
asyncio client.

``_async.py`` is the source of truth: ``_sync.py`` (``RedisSaver``) is generated from it by
``python -m savegame.savers.redis._unasync``; ``_IS_SYNC`` flips in the copy. The key
layout, value format and Lua scripts live in ``_shared.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._options import seconds as _seconds
from ..base import HEAD_MOVED, BaseSaver, StoredCheckpoint, StoredWrite
from . import _shared as sh

__all__ = ["AsyncRedisSaver"]

_IS_SYNC = False
#: Base links a read follows past a forward chain: the reverse records between its keyframe
#: and the newest one (log2 of the keyframes, + 1), with room to spare.
_REVERSE_HOPS = 32
_TRANSIENT = (RedisConnectionError, RedisTimeoutError)
#: How long the records a read fetched along decode paths may serve the chain read that
#: follows it in the same flow (seconds).
_PREFETCH_SECONDS = 2.0


class AsyncRedisSaver(BaseSaver):
    """Checkpoints in Redis, every key of a thread in one cluster slot (layout: ``_shared``).

    ``client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` created with
    ``decode_responses=False`` (the default); the saver never closes a client it was given.

    - ``key_prefix``: the first part of every key (several apps can share one Redis);
    - ``ttl`` (seconds or timedelta): every key of a thread expires ``ttl`` after the
      thread's last write; each write sets the expiry of all of them in the same script,
      so no record outlives or underlives the others and no key is ever left without one;
    - ``keep_last``: when a thread starts a new keyframe chain, whole chains holding none
      of its ``keep_last`` newest checkpoints (per namespace) are deleted in the same step;
    - ``chunk_bytes``: records longer than this are stored in pieces of this size;
    - ``retries``: a command that failed on a dropped connection or a timeout is sent again
      this many times (every script is idempotent: a resent put finds its own checkpoint).
    Other keyword arguments (``serializer``, ``policy``, ``cache_bytes``) go to BaseSaver.
    """

    _ttl_covers_thread = True  # every key of a thread expires at once

    _blocking_io = _IS_SYNC
    _async_only = not _IS_SYNC

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = "savegame",
        ttl: float | dt.timedelta | None = None,
        keep_last: int | None = None,
        chunk_bytes: int = sh.CHUNK_BYTES,
        retries: int = 2,
        owns_client: bool = False,
        **options: Any,
    ):
        super().__init__(**options)
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
        if not isinstance(chunk_bytes, int) or not 1 <= chunk_bytes <= 256 << 20:
            raise ValueError("chunk_bytes must be between 1 and 256 MiB")
        sh.check_client(client)
        self.client = client
        self.key_prefix = sh.check_prefix(key_prefix)
        self.ttl = _seconds(ttl, "ttl")
        self.keep_last = keep_last
        self.chunk_bytes = chunk_bytes
        self.retries = max(0, int(retries))
        self._owns_client = owns_client
        self._ttl_ms = sh.ttl_ms(self.ttl)
        self._registry = sh.registry_key(self.key_prefix)
        self._registered: OrderedDict[str, None] = OrderedDict()
        self._registrations = 0
        self._sweep_from = b""  # the registry sweep's cursor
        #: (thread, namespace) -> (when, records on decode paths by id, ids of the page)
        self._prefetched: OrderedDict[
            tuple[str, str], tuple[float, dict[str, StoredCheckpoint], frozenset[str]]
        ] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        cluster: bool = False,
        client_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncRedisSaver:
        """A saver owning a new client for ``uri`` (``redis://``, ``rediss://`` or
        ``unix://``; ``cluster=True`` for a Redis Cluster); use it as a context manager
        (or call ``aclose``) to close the client."""
        factory: Any = RedisCluster if cluster else Redis
        client = factory.from_url(uri, **dict(client_options or {}))
        return cls(client, owns_client=True, **options)

    async def aclose(self) -> None:
        """Close the client if this saver created it (``from_uri``)."""
        if self._owns_client:
            self._owns_client = False
            await self.client.aclose()

    def keys(self, thread_id: str) -> tuple[str, ...]:
        """Every key the thread's checkpoints, writes, pieces and versions live in."""
        sh.check_space(thread_id, "")
        return sh.ThreadKeys.of(self.key_prefix, thread_id).keys

    # -- commands ------------------------------------------------------------------------
    async def _run_script(self, name: str, keys: sh.ThreadKeys, args: Sequence[Any],
                          what: str) -> Any:
        """Run one of the scripts on the thread's keys: EVALSHA, or EVAL when the server
        does not hold it yet."""
        script = sh.SCRIPTS[name]
        what = f"{what} (keys {keys.records!r}, ...)"
        try:
            return await self._command(what, "evalsha", script.sha, len(keys.keys),
                                       *keys.keys, *args)
        except NoScriptError:
            return await self._command(what, "eval", script.source, len(keys.keys),
                                       *keys.keys, *args)

    async def _command(self, what: str, method: str, *args: Any) -> Any:
        """``client.<method>(*args)``, sent again after a dropped connection or a timeout
        (every command the saver sends is idempotent); a refusal by the server becomes a
        RedisStoreError saying what was refused."""
        attempt = 0
        while True:
            try:
                return await getattr(self.client, method)(*args)
            except _TRANSIENT:
                attempt += 1
                if attempt > self.retries:
                    raise
            except NoScriptError:
                raise
            except ResponseError as exc:
                raise sh.RedisStoreError(
                    f"Redis refused to {what}: {type(exc).__name__}: {exc}") from exc

    def _keys(self, thread_id: str) -> sh.ThreadKeys:
        return sh.ThreadKeys.of(self.key_prefix, thread_id)

    def _known_ids(self, thread_id: str, namespace: str) -> list[str]:
        """Ids of this thread and namespace whose states the core's cache holds (the 64
        most recently used): a read's path walk stops there, the core decodes from them."""
        return self._cache.known_ids(thread_id, namespace, 64)

    async def _complete(self, keys: sh.ThreadKeys, parsed: Sequence[sh.Parsed]
                        ) -> list[StoredCheckpoint]:
        """Checkpoints of parsed values, joining chunked records (one more command)."""
        chunked = [item for item in parsed if item.pieces is not None]
        if not chunked:
            return [item.stored for item in parsed]
        fields = [name for item in chunked if item.pieces is not None
                  for name in sh.chunk_fields(item.pieces[0], item.pieces[1])]
        values = await self._command(f"read pieces of thread {keys.thread_id!r}", "hmget",
                                  keys.chunks, fields)
        joined: dict[int, StoredCheckpoint] = {}
        position = 0
        for item in chunked:
            assert item.pieces is not None
            count = item.pieces[1]
            joined[id(item)] = sh.join_record(item, values[position:position + count])
            position += count
        return [joined.get(id(item), item.stored) for item in parsed]

    def _parse(self, thread_id: str, namespace: str,
               pairs: Sequence[tuple[bytes, bytes]]) -> list[sh.Parsed]:
        """Parsed values of (id, value) pairs of one namespace."""
        return [sh.unpack_checkpoint(thread_id, namespace, sh._text(cid), value)
                for cid, value in pairs]

    def _parse_members(self, thread_id: str, members: Sequence[bytes]) -> list[sh.Parsed]:
        """Parsed values of ``<ns>\\0<id>\\0<value>`` members."""
        out = []
        for member in members:
            namespace, checkpoint_id, value = sh.split_member(member)
            out.append(sh.unpack_checkpoint(thread_id, namespace, checkpoint_id, value))
        return out

    async def _register(self, thread_id: str, force: bool = False) -> None:
        """Add the thread to the registry ``list_threads`` reads (before its first put in
        this process, and again whenever a put created the thread's keys)."""
        with self._lock:
            known = thread_id in self._registered
        if known and not force:
            return
        await self._command(f"register thread {thread_id!r}", "zadd", self._registry,
                            {sh._utf8(thread_id): 0})
        with self._lock:
            self._registered[thread_id] = None
            self._registered.move_to_end(thread_id)
            while len(self._registered) > 65536:
                self._registered.popitem(last=False)
            self._registrations += 1
            sweep = self.ttl is not None and self._registrations % 16 == 0
        if sweep:  # threads expire without a word: their entries leave a few at a time
            await self._sweep_registry()

    async def _sweep_registry(self, count: int = 64) -> None:
        """Check ``count`` registry entries after a rolling cursor, dropping the threads
        that expired or were deleted (so the registry does not grow with dead threads
        when nobody calls ``list_threads``)."""
        low = b"(" + self._sweep_from if self._sweep_from else b"-"
        members = await self._command("sweep the thread registry", "zrangebylex",
                                      self._registry, low, b"+", 0, count)
        self._sweep_from = members[-1] if len(members) == count else b""
        await self._live_threads([sh._text(member) for member in members])

    async def _live_threads(self, threads: Sequence[str]) -> list[str]:
        """The threads (of the registry) that hold checkpoints; the others leave the
        registry. One dropped by mistake (a writer created it meanwhile) is added back."""
        live: list[str] = []
        dead: list[str] = []
        for start in range(0, len(threads), 512):
            batch = threads[start:start + 512]
            found = await self._exist(batch)
            live.extend(t for t, exists in zip(batch, found, strict=True) if exists)
            dead.extend(t for t, exists in zip(batch, found, strict=True) if not exists)
        if dead:
            await self._command("prune the thread registry", "zrem", self._registry,
                                *(sh._utf8(t) for t in dead))
            revived = [t for t, exists in zip(dead, await self._exist(dead), strict=True)
                       if exists]
            if revived:
                await self._command("register threads", "zadd", self._registry,
                                    {sh._utf8(t): 0 for t in revived})
                live.extend(revived)
        return live

    async def _exist(self, threads: Sequence[str]) -> list[bool]:
        """Whether each thread holds checkpoints (one pipeline: one round trip per node)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for thread in threads:
                pipe.exists(self._keys(thread).records)
            found = await pipe.execute()
        return [bool(exists) for exists in found]

    # -- reads ---------------------------------------------------------------------------
    async def _read_some(
        self, thread_id: str, namespace: str, mode: str, arg: str, limit: int,
        metadata: Mapping[str, Any] | None, budget: int = sh.SCAN_BUDGET,
    ) -> tuple[list[StoredCheckpoint], list[StoredCheckpoint], str]:
        """One read script: (the checkpoints asked for, the records on their decode paths,
        where a filtered list stopped)."""
        keys = self._keys(thread_id)
        args: list[Any] = [sh._utf8(namespace), mode, sh._utf8(arg), limit,
                           sh.metadata_filter(metadata), self.policy.max_chain + _REVERSE_HOPS,
                           budget]
        args += [sh._utf8(i) for i in self._known_ids(thread_id, namespace)]
        reply = await self._run_script("read", keys, args, f"read thread {thread_id!r}")
        count, resume = int(reply[0]), reply[1]
        parsed = self._parse(thread_id, namespace, sh.pairs(reply[2:]))
        items = await self._complete(keys, parsed)
        page, path = items[:count], items[count:]
        if path:
            self._stash(thread_id, namespace, page, path)
        return page, path, sh._text(resume) if resume else ""

    def _stash(self, thread_id: str, namespace: str, page: Sequence[StoredCheckpoint],
               path: Sequence[StoredCheckpoint]) -> None:
        """Keep the decode-path records a read fetched, so the chain read the core asks for
        right after it (same flow) is served without a round trip. Taken by that read."""
        with self._lock:
            key = (thread_id, namespace)
            self._prefetched[key] = (time.monotonic(), {item.id: item for item in path},
                                     frozenset(item.id for item in page))
            self._prefetched.move_to_end(key)
            while len(self._prefetched) > 64:
                self._prefetched.popitem(last=False)

    def _forget_stash(self, thread_id: str) -> None:
        """Drop what reads of the thread fetched (a write of this saver changed it)."""
        with self._lock:
            for key in [k for k in self._prefetched if k[0] == thread_id]:
                del self._prefetched[key]

    def _from_stash(self, thread_id: str, namespace: str, keyframe_ids: Sequence[str]
                    ) -> list[StoredCheckpoint] | None:
        """The stashed records of those chain groups, when each decodes from stashed
        records alone, down to a keyframe, a checkpoint of the read's page or a state the
        core's cache holds; else None (the caller reads them)."""
        with self._lock:  # kept until it expires: a decode path that runs through
            entry = self._prefetched.get((thread_id, namespace))  # reverse records asks
        if entry is None or time.monotonic() - entry[0] > _PREFETCH_SECONDS:  # in steps
            return None
        _, records, page = entry
        wanted = set(keyframe_ids)
        chosen = [item for item in records.values() if item.keyframe_id in wanted]
        for item in chosen:
            current, hops = item, 0
            while current.base_id is not None and current.base_id not in page:
                if self._cache.get((thread_id, namespace, current.base_id)) is not None:
                    break
                base = records.get(current.base_id)
                hops += 1
                if base is None or hops > self.policy.max_chain + _REVERSE_HOPS:
                    return None
                current = base
        return chosen

    async def _read(
        self, thread_id: str, namespace: str, checkpoint_id: str
    ) -> StoredCheckpoint | None:
        page, _, _ = await self._read_some(thread_id, namespace, "id", checkpoint_id, 0, None)
        return page[0] if page else None

    async def _read_latest(self, thread_id: str, namespace: str) -> StoredCheckpoint | None:
        page, _, _ = await self._read_some(thread_id, namespace, "latest", "", 0, None)
        return page[0] if page else None

    async def _read_latest_chain(
        self, thread_id: str, namespace: str
    ) -> list[StoredCheckpoint] | None:
        """The latest checkpoint and the records of its decode path, in one script."""
        page, path, _ = await self._read_some(thread_id, namespace, "latest", "", 0, None)
        return [*page, *path] if page else None

    async def _read_chains(
        self, thread_id: str, namespace: str, keyframe_ids: Sequence[str]
    ) -> list[StoredCheckpoint]:
        stashed = self._from_stash(thread_id, namespace, keyframe_ids)
        if stashed is not None:
            return stashed
        return await self._read_by("chains", thread_id, namespace, keyframe_ids,
                                   "read record chains")

    async def _read_many(
        self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
    ) -> list[StoredCheckpoint]:
        """The stored checkpoints among ``checkpoint_ids``: one script, a lookup each (the
        chains script scans the namespace)."""
        return await self._read_by("many", thread_id, namespace, checkpoint_ids,
                                   "read checkpoints")

    async def _read_by(self, script: str, thread_id: str, namespace: str,
                       ids: Sequence[str], what: str) -> list[StoredCheckpoint]:
        """The checkpoints a read script returns for ``ids`` of one namespace."""
        keys = self._keys(thread_id)
        reply = await self._run_script(
            script, keys, [sh._utf8(namespace), *(sh._utf8(i) for i in ids)],
            f"{what} of thread {thread_id!r}")
        return await self._complete(keys, self._parse(thread_id, namespace, sh.pairs(reply)))

    async def _list(
        self,
        thread_id: str,
        namespace: str,
        before: str | None,
        limit: int | None,
        metadata: Mapping[str, Any] | None,
    ) -> list[StoredCheckpoint]:
        out: list[StoredCheckpoint] = []
        position = before or ""
        while True:
            want = 0 if limit is None else limit - len(out)
            page, _, resume = await self._read_some(thread_id, namespace, "list", position,
                                                    want, metadata)
            if not metadata:
                return page
            # The script's equality is a pre-filter (Lua numbers are doubles): exact here.
            out.extend(item for item in page if sh.metadata_matches(item.metadata, metadata))
            if limit is not None and len(out) >= limit:
                return out
            if resume:  # the script stopped on its scan budget: continue from there
                position = resume
            elif limit is not None and page and len(page) == want:
                position = page[-1].id  # a full page held false candidates
            else:
                return out

    async def _read_writes(
        self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
    ) -> list[StoredWrite]:
        values = await self._run_script(
            "read_writes", self._keys(thread_id),
            [sh._utf8(namespace), *(sh._utf8(i) for i in checkpoint_ids)],
            f"read pending writes of thread {thread_id!r}")
        out: list[StoredWrite] = []
        for checkpoint_id, value in zip(checkpoint_ids, values, strict=True):
            if value:
                out.extend(sh.unpack_writes(thread_id, namespace, checkpoint_id, value))
        return out

    async def _list_threads(self, prefix: str) -> list[str]:
        low, high = sh.prefix_range(prefix)
        members = await self._command("list threads", "zrangebylex", self._registry, low, high)
        live = await self._live_threads([sh._text(member) for member in members])
        return [thread for thread in live if thread.startswith(prefix)]

    async def _list_namespaces(self, thread_id: str) -> list[str]:
        names = await self._command(f"list namespaces of thread {thread_id!r}", "hkeys",
                                 self._keys(thread_id).meta)
        return [sh._text(name[1:]) for name in names if name[:1] == b"h"]

    async def _read_thread(
        self, thread_id: str
    ) -> tuple[list[StoredCheckpoint], list[StoredWrite]]:
        keys = self._keys(thread_id)
        members, writes = await self._run_script("thread", keys, [],
                                                 f"read thread {thread_id!r}")
        parsed = self._parse_members(thread_id, members)
        out: list[StoredWrite] = []
        for item in parsed:
            if item.writes:
                out.extend(sh.unpack_writes(thread_id, item.stored.namespace, item.stored.id,
                                            item.writes))
        for f, value in sh.pairs(writes):
            namespace, checkpoint_id = sh.split_field(f)
            out.extend(sh.unpack_writes(thread_id, namespace, checkpoint_id, value))
        return await self._complete(keys, parsed), out

    # -- writes --------------------------------------------------------------------------
    async def _store_pieces(self, keys: sh.ThreadKeys, record: bytes, what: str
                            ) -> tuple[str, int, int] | None:
        """Write the pieces of a record too big for one value (before the value that refers
        to them); None when it fits in one value."""
        if len(record) <= self.chunk_bytes:
            return None
        chunked, pieces = sh.split_record(record, self.chunk_bytes)
        names = sh.chunk_fields(chunked[0], chunked[1])
        try:
            for start in range(0, len(pieces), sh.CHUNKS_PER_CALL):
                args: list[Any] = [sh._utf8(keys.thread_id), self._ttl_ms]
                for name, piece in zip(names[start:start + sh.CHUNKS_PER_CALL],
                                       pieces[start:start + sh.CHUNKS_PER_CALL], strict=True):
                    args += [name, piece]
                await self._run_script("pieces", keys, args, what)
        except sh.RedisStoreError:  # refused (out of memory...): no piece is left behind
            await self._drop_pieces(keys, chunked)
            raise
        return chunked

    async def _drop_pieces(self, keys: sh.ThreadKeys, chunked: tuple[str, int, int]) -> None:
        # best effort: the failure being reported matters more than this cleanup
        with contextlib.suppress(Exception):
            await self.client.hdel(keys.chunks, *sh.chunk_fields(chunked[0], chunked[1]))

    async def _insert(self, stored: StoredCheckpoint) -> Any:
        keys = self._keys(stored.thread_id)
        what = (f"store checkpoint {stored.id!r} of thread {stored.thread_id!r} "
                f"(namespace {stored.namespace!r})")
        await self._register(stored.thread_id)
        chunked = await self._store_pieces(keys, stored.record, what)
        value = sh.pack_checkpoint(stored, chunked)
        args: list[Any] = [
            sh._utf8(stored.thread_id), sh._utf8(stored.namespace), sh._utf8(stored.id),
            stored.seq, sh._utf8(stored.parent_id or ""), value, self._ttl_ms,
            self.keep_last or 0, "1" if stored.base_id is None else "0",
            chunked[0] if chunked else "", chunked[1] if chunked else 0,
        ]
        try:
            reply = await self._run_script("insert", keys, args, what)
        except sh.RedisStoreError:
            # Refused (out of memory, read-only...): the script wrote nothing, so its
            # pieces are dropped. After a lost connection the outcome is unknown and the
            # pieces stay (a resent put or delete_thread finds them).
            if chunked:
                await self._drop_pieces(keys, chunked)
            raise
        status = int(reply[0])
        if status == 0:
            if int(reply[1]):  # this put created the thread's keys: (re-)register it
                await self._register(stored.thread_id, force=True)
            return None
        if status == 2:
            return HEAD_MOVED
        parsed = sh.unpack_checkpoint(stored.thread_id, stored.namespace, stored.id, reply[1])
        return (await self._complete(keys, [parsed]))[0]

    async def _insert_writes(self, writes: Sequence[StoredWrite], replace: bool) -> None:
        by_thread: dict[str, dict[tuple[str, str], list[StoredWrite]]] = {}
        for write in writes:
            space = (write.namespace, write.checkpoint_id)
            by_thread.setdefault(write.thread_id, {}).setdefault(space, []).append(write)
        for thread_id, groups in by_thread.items():
            args: list[Any] = [sh._utf8(thread_id), self._ttl_ms, "1" if replace else "0"]
            for (namespace, checkpoint_id), group in groups.items():
                args += [sh._utf8(namespace), sh._utf8(checkpoint_id), sh.pack_writes(group)]
            await self._run_script("writes", self._keys(thread_id), args,
                                   f"store pending writes of thread {thread_id!r}")

    async def _copy_in(
        self, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite]
    ) -> None:
        by_thread: dict[str, tuple[list[StoredCheckpoint], list[StoredWrite]]] = {}
        for item in checkpoints:
            by_thread.setdefault(item.thread_id, ([], []))[0].append(item)
        for write in writes:
            by_thread.setdefault(write.thread_id, ([], []))[1].append(write)
        for thread_id, (items, thread_writes) in by_thread.items():
            keys = self._keys(thread_id)
            what = f"copy checkpoints into thread {thread_id!r}"
            if items:
                await self._register(thread_id)
            batch: list[Any] = []
            size = 0
            for item in items:
                chunked = await self._store_pieces(keys, item.record, what)
                value = sh.pack_checkpoint(item, chunked)
                batch += [sh._utf8(item.namespace), sh._utf8(item.id), item.seq, value]
                size += len(value)
                if size > 8 << 20:
                    await self._copy_batch(keys, batch, [], what)
                    batch, size = [], 0
            grouped: dict[tuple[str, str], list[StoredWrite]] = {}
            for write in thread_writes:
                grouped.setdefault((write.namespace, write.checkpoint_id), []).append(write)
            packed = [x for (namespace, checkpoint_id), group in grouped.items()
                      for x in (sh._utf8(namespace), sh._utf8(checkpoint_id),
                                sh.pack_writes(group))]
            if batch or packed:
                await self._copy_batch(keys, batch, packed, what)

    async def _copy_batch(self, keys: sh.ThreadKeys, batch: list[Any], packed: list[Any],
                          what: str) -> None:
        created = await self._run_script(
            "copy_in", keys, [sh._utf8(keys.thread_id), self._ttl_ms, len(batch) // 4,
                              *batch, *packed], what)
        if int(created) and batch:
            await self._register(keys.thread_id, force=True)

    async def _replace(self, stored: StoredCheckpoint) -> None:
        """Rewrite a checkpoint's record (``delete_checkpoints`` re-encodes survivors)."""
        keys = self._keys(stored.thread_id)
        what = f"rewrite checkpoint {stored.id!r} of thread {stored.thread_id!r}"
        chunked = await self._store_pieces(keys, stored.record, what)
        done = await self._run_script(
            "replace", keys, [self._ttl_ms, sh._utf8(stored.namespace), sh._utf8(stored.id),
                              sh.pack_checkpoint(stored, chunked)], what)
        self._forget_stash(stored.thread_id)
        if not int(done):
            if chunked:
                await self._drop_pieces(keys, chunked)
            raise KeyError(f"checkpoint {stored.id!r} vanished while being rewritten")

    async def _delete_checkpoints(
        self, thread_id: str, namespace: str, ids: Sequence[str]
    ) -> None:
        self._forget_stash(thread_id)
        if ids:
            await self._run_script(
                "delete", self._keys(thread_id),
                [self._ttl_ms, sh._utf8(namespace), *(sh._utf8(i) for i in ids)],
                f"delete checkpoints of thread {thread_id!r}")

    async def _delete_thread(self, thread_id: str) -> None:
        keys = self._keys(thread_id)
        await self._command(f"delete thread {thread_id!r}", "unlink", *keys.keys)
        await self._command("unregister a thread", "zrem", self._registry, sh._utf8(thread_id))
        with self._lock:
            self._registered.pop(thread_id, None)
        self._forget_stash(thread_id)

    async def _archive(self, thread_id: str) -> tuple[int | None, list[StoredCheckpoint]]:
        """Move the live run to the next version, in one script; a resend of the same
        release (dropped connection) returns the version it made."""
        keys = self._keys(thread_id)
        self._forget_stash(thread_id)
        reply = await self._run_script("archive", keys, [self._ttl_ms, sh.new_token()],
                                       f"release thread {thread_id!r}")
        version = int(reply[0])
        if not version:
            return None, []
        return version, await self._complete(keys, self._parse_members(thread_id, reply[1:]))

    async def _versions(self, thread_id: str) -> list[int]:
        names = await self._command(f"list versions of thread {thread_id!r}", "hkeys",
                                 self._keys(thread_id).meta)
        return [int(name[1:]) for name in names if name[:1] == b"V"]

    async def _read_version(
        self, thread_id: str, version: int
    ) -> list[StoredCheckpoint] | None:
        keys = self._keys(thread_id)
        reply = await self._run_script("version", keys, [version],
                                       f"read version {version} of thread {thread_id!r}")
        if not int(reply[0]):
            return None
        return await self._complete(keys, self._parse_members(thread_id, reply[1:]))

    # -- maintenance ---------------------------------------------------------------------
    async def acollect_orphans(self, thread_id: str,
                               older_than: float | dt.timedelta = dt.timedelta(hours=1)) -> int:
        """Drop the pieces of big records that no checkpoint refers to and that are older
        than ``older_than``: left by a put whose connection died between writing its
        pieces and its checkpoint (a put in flight is younger). With ``ttl`` they expire
        with the thread anyway. Returns the number of pieces dropped."""
        sh.check_space(thread_id, "")
        grace = _seconds(older_than, "older_than") or 3600.0
        cutoff = int((time.time() - grace) * 1000)
        return int(await self._run_script("orphans", self._keys(thread_id), [cutoff],
                                          f"collect orphaned pieces of thread {thread_id!r}"))

    async def storage_details(self) -> dict[str, Any]:
        """Threads, keys and the memory they use (``MEMORY USAGE``), for ``savegame
        stats``: the registry names the threads, so no ``SCAN`` or ``KEYS``."""
        threads = await self.alist_threads()
        keys = memory = 0
        for thread_id in threads:
            for key in self._keys(thread_id).keys:
                used = await self._command("measure memory", "memory_usage", key, 0)
                keys += used is not None
                memory += int(used or 0)
        return {"backend": "redis", "key prefix": self.key_prefix, "threads": len(threads),
                "keys": keys, "memory usage": memory}

    async def amemory_usage(self, thread_id: str) -> int:
        """Bytes Redis uses for the thread's keys (``MEMORY USAGE`` summed)."""
        total = 0
        for key in self._keys(thread_id).keys:
            used = await self._command("measure memory", "memory_usage", key, 0)
            total += int(used or 0)
        return total
