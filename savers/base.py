"""The saver contract, written once for every backend, sync and async.

Each public operation is a *flow*: a generator that does all the thinking (ids, steps,
parents, delta or keyframe, conflicts, decoding) and yields :class:`Call` objects for the
IO it needs. A backend implements only the primitives those calls name (``_read``,
``_read_latest``, ``_read_chains``, ``_insert``, ``_list``, ``_delete_thread``,
``_archive``, ``_versions``, ``_read_version``), as plain methods or as coroutines, and
optionally ``_read_many`` (checkpoints by id: a keyframe put then reads the keyframes it
re-points without their chains) and ``_replace_many``. The sync driver runs a flow
against plain methods; the async driver awaits coroutine primitives, or runs blocking ones
in a worker thread so the event loop never stalls.

``_insert(stored)`` is the one conditional write, atomic in every backend: it returns the
stored checkpoint when ``stored.id`` is already taken in that (thread, namespace) and writes
nothing; else :data:`HEAD_MOVED` when ``stored.seq`` is already taken there (another
writer appended first), or when ``stored.parent_id`` names a checkpoint that is no longer
there (the thread was deleted meanwhile), and writes nothing; else it stores ``stored`` and
returns ``None``. (MongoDB cannot check the parent in the same atomic step; see its docs.)
``seq`` numbers the checkpoints of a (thread, namespace) in the order they were appended, and
the *latest* checkpoint is the one with the highest ``seq``. A put takes the seq after the
latest it knows, so a put with ``parent_id=None`` ("continue the latest") succeeds only if
nobody appended since it read the latest: on HEAD_MOVED it reads the latest again and
retries, and concurrent writers of one thread never fork it by accident. A put naming its
parent is a deliberate fork when that parent is not the latest; it only retries for a free
seq. Within one saver, puts to one (thread, namespace) take turns (a lock per thread), so
retries only happen between processes or savers, with a jittered backoff.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import datetime as dt
import inspect
import logging
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import (
    AsyncIterator,
    Generator,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from . import codec
from .checkpoint import Checkpoint, PendingWrite, Release, id_time, new_checkpoint_id
from .errors import (
    ConflictError,
    CorruptCheckpointError,
    ParentNotFoundError,
    SavegameError,
    SerializationError,
)
from .serde import Serializer

__all__ = ["HEAD_MOVED", "BaseSaver", "Call", "StoredCheckpoint", "StoredWrite"]

R = TypeVar("R")
_MAX_INT64 = (1 << 63) - 1
_log = logging.getLogger("savegame.savers")


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint as a backend stores it: the envelope fields plus the encoded record.

    ``keyframe_id`` labels the record's chain group (the keyframe that started it: every
    record a read of this one needs carries the same label), ``base_id`` is the record it
    is a delta against (``None`` for a keyframe), ``depth`` bounds the records a read
    decodes, ``seq`` is the checkpoint's position in its (thread, namespace)'s append order
    (1, 2, ...; 0 for records of a layout that had none). Backends store and return these
    values untouched. ``writes`` are the checkpoint's pending writes where the backend
    read them with it (MongoDB's layout 3 keeps them in the checkpoint's document); None
    where it did not.
    """

    thread_id: str
    namespace: str
    id: str
    parent_id: str | None
    step: int
    node_id: str | None
    next_node_id: str | None
    metadata: Mapping[str, Any]
    created_at: dt.datetime
    record: bytes
    keyframe_id: str
    base_id: str | None
    depth: int
    seq: int = 0
    writes: tuple[StoredWrite, ...] | None = dataclasses.field(default=None, compare=False)

    def to_checkpoint(self, state: Mapping[str, Any]) -> Checkpoint:
        return Checkpoint(
            thread_id=self.thread_id, state=state, namespace=self.namespace, id=self.id,
            parent_id=self.parent_id, step=self.step, node_id=self.node_id,
            next_node_id=self.next_node_id, metadata=_copy_json(self.metadata),
            created_at=self.created_at,
        )


@dataclass(frozen=True, slots=True)
class StoredWrite:
    """A pending write as a backend stores it; ``record`` is a keyframe record of the
    serialized value (versioned and checksummed like every state)."""

    thread_id: str
    namespace: str
    checkpoint_id: str
    task_id: str
    index: int
    channel: str
    task_path: str
    record: bytes


class _HeadMoved:
    """What ``_insert`` returns when the seq it was given is taken (see the module doc)."""

    _instance: ClassVar[_HeadMoved | None] = None

    def __new__(cls) -> _HeadMoved:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "HEAD_MOVED"


#: Returned by ``_insert(stored)`` when another checkpoint of the (thread, namespace) already
#: holds ``stored.seq``: another writer appended first.
HEAD_MOVED = _HeadMoved()


@dataclass(frozen=True, slots=True)
class Call:
    """One IO primitive a flow needs: ``getattr(saver, name)(*args)``."""

    name: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class _Emit:
    """A value a listing flow hands to its consumer."""

    value: Any


@dataclass(frozen=True, slots=True)
class _Sleep:
    """A pause a flow asks its driver for (the backoff between put attempts)."""

    seconds: float


Flow = Generator[Any, Any, R]


@dataclass(frozen=True, slots=True)
class _Known:
    """A decoded state: its bytes and its record header (a child may be encoded against
    it), and, when known, the checkpoint as stored with the monotonic time it was seen
    there."""

    raw: bytes
    header: codec.RecordHeader
    stored: StoredCheckpoint | None = None
    seen: float = 0.0

    @property
    def base(self) -> codec.Base:
        return codec.Base(self.raw, self.header)


class _RawCache:
    """Serialized states of recently written or read checkpoints, bounded by bytes.

    It lets "load latest, put next" cost one compression (the parent's bytes are at hand
    for the delta, the master's for rewriting older masters) and lets reads start from a
    cached ancestor.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, str], _Known] = OrderedDict()
        self._spaces: Counter[tuple[str, str]] = Counter()  # entries per (thread, namespace)
        self._size = 0
        self._lock = threading.Lock()

    def knows(self, thread_id: str, namespace: str) -> bool:
        """Does the cache hold any state of this thread and namespace?"""
        return self._spaces[(thread_id, namespace)] > 0

    def _forget(self, key: tuple[str, str, str]) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old.raw)
            self._spaces[key[:2]] -= 1
            if not self._spaces[key[:2]]:
                del self._spaces[key[:2]]

    def get(self, key: tuple[str, str, str]) -> _Known | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[str, str, str], known: _Known) -> None:
        if len(known.raw) > self.max_bytes:
            return
        with self._lock:
            self._forget(key)
            self._items[key] = known
            self._size += len(known.raw)
            self._spaces[key[:2]] += 1
            while self._size > self.max_bytes:
                self._forget(next(iter(self._items)))

    def known_ids(self, thread_id: str, namespace: str, limit: int) -> list[str]:
        """Ids of the thread and namespace held, most recently used first (at most
        ``limit``): where a store's read may stop walking base links."""
        out: list[str] = []
        with self._lock:
            for key in reversed(self._items):
                if key[0] == thread_id and key[1] == namespace:
                    out.append(key[2])
                    if len(out) == limit:
                        break
        return out

    def discard(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._forget(key)

    def drop_thread(self, thread_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == thread_id]:
                self._forget(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._spaces.clear()
            self._size = 0


class _Turns:
    """A lock per (thread, namespace), so one saver's puts to one thread take turns instead
    of racing each other for the same seq: ``threading`` locks for threads, one asyncio
    lock per event loop for tasks. Entries live only while someone holds or waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Any, list[Any]] = {}  # key -> [lock, holders and waiters]

    def _enter(self, key: Any, make: Any) -> list[Any]:
        with self._lock:
            entry = self._held.get(key)
            if entry is None:
                entry = self._held[key] = [make(), 0]
            entry[1] += 1
            return entry

    def _leave(self, key: Any, entry: list[Any]) -> None:
        with self._lock:
            entry[1] -= 1
            if not entry[1]:
                del self._held[key]

    @contextlib.contextmanager
    def hold(self, space: Hashable | None) -> Iterator[None]:
        if space is None:
            yield
            return
        entry = self._enter(space, threading.Lock)
        try:
            with entry[0]:
                yield
        finally:
            self._leave(space, entry)

    @contextlib.asynccontextmanager
    async def ahold(self, space: Hashable | None) -> AsyncIterator[None]:
        if space is None:
            yield
            return
        key = (id(asyncio.get_running_loop()), space)
        entry = self._enter(key, asyncio.Lock)
        try:
            async with entry[0]:
                yield
        finally:
            self._leave(key, entry)


def _checkpoint_key(
    thread_id: object, namespace: object, checkpoint_id: object
) -> tuple[str, str, str] | None:
    """(thread, namespace, id) of the checkpoint ``put_writes`` names, when they are
    well-formed (the flow explains what is wrong otherwise)."""
    if isinstance(thread_id, str) and isinstance(namespace, str) and isinstance(
            checkpoint_id, str):
        return thread_id, namespace, checkpoint_id
    return None


def _writes_turn(key: tuple[str, str, str] | None) -> Hashable:
    """The turn ``put_writes`` calls for one checkpoint take one after the other in a
    saver: a backend merging them into one record (MongoDB's layout 3) then never races
    itself, even on a test double whose updates are not atomic (mongomock)."""
    return None if key is None else ("writes", *key)


def _space_of(checkpoint: object) -> tuple[str, str] | None:
    """The (thread, namespace) a put writes to, when it is well-formed (the flow explains
    what is wrong otherwise)."""
    thread_id = getattr(checkpoint, "thread_id", None)
    namespace = getattr(checkpoint, "namespace", None)
    if isinstance(thread_id, str) and isinstance(namespace, str):
        return thread_id, namespace
    return None


#: States smaller than this stay whole when a newer keyframe comes: their keyframes are as
#: small as a reverse record would be (tiny states are all keyframes: a delta is no smaller),
#: and rewriting them would cost a read and a write per put for nothing.
_REVERSE_MIN_RAW = 1024

#: Checkpoints whose pending writes ``list_with_writes`` fetches with one query, where a
#: store keeps writes apart from their checkpoints.
WRITES_BATCH = 64


class BaseSaver:
    """Public methods of every saver, sync and async, over a few IO primitives.

    ``serializer`` turns state into bytes (default: the registry of ``register_type``),
    ``policy`` decides keyframes, ``cache_bytes`` bounds the per-saver cache of serialized
    states that makes deltas cheap.
    """

    #: True when the primitives block on IO (sync drivers): async methods then run them in
    #: a worker thread. False for in-memory primitives and for coroutine primitives.
    _blocking_io: ClassVar[bool] = False
    #: True when the primitives are coroutines: sync methods are unavailable.
    _async_only: ClassVar[bool] = False
    #: How long (seconds) a state this saver wrote or read may stand in for a read of that
    #: checkpoint (a get by id, or a put naming it as parent). The read guards against the
    #: checkpoint having been deleted or replaced by another process meanwhile; in-memory
    #: savers, which no other process can change, trust their cache for as long as it holds.
    _trust_seconds: ClassVar[float] = 60.0
    #: How many times a put re-reads the latest and tries again when another writer appended
    #: first (``_insert`` returned HEAD_MOVED), before ConflictError; the pause between
    #: attempts grows from ``_backoff[0]`` to at most ``_backoff[1]`` seconds (jittered).
    _head_retries: ClassVar[int] = 64
    #: The saver sets itself up on its first operation (indexes, directories); ``setup()``
    #: where a saver has one only does it earlier. A plug-in saver that needs an explicit
    #: setup says False.
    ready_on_first_use: ClassVar[bool] = True
    _backoff: ClassVar[tuple[float, float]] = (0.001, 0.05)

    def __init__(
        self,
        *,
        serializer: Serializer | None = None,
        policy: codec.KeyframePolicy | None = None,
        cache_bytes: int = 64 << 20,
    ):
        self.serializer = serializer if serializer is not None else Serializer()
        self.policy = policy if policy is not None else codec.KeyframePolicy()
        self._cache = _RawCache(cache_bytes)
        #: states ``list`` (or ``get_writes``) just decoded, for the pending writes stored
        #: as copies of them that a caller reads next (kept apart: a long listing must not
        #: push the states puts continue from out of ``_cache``)
        self._listed = _RawCache(min(cache_bytes, 16 << 20))
        self._putting: Counter[tuple[str, str, str]] = Counter()  # puts running, by id
        self._putting_spaces: Counter[tuple[str, str]] = Counter()  # and by thread
        self._putting_lock = threading.Lock()
        #: notified when a put starts or ends (see :meth:`_writes_wait`)
        self._put_moves = threading.Condition(self._putting_lock)
        self._put_ended: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._turns = _Turns()
        #: the highest seq seen per (thread, namespace): a put naming its parent takes the
        #: next one without reading the latest first (HEAD_MOVED corrects a stale guess)
        self._heads: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._heads_lock = threading.Lock()

    # -- public API, sync ------------------------------------------------------------
    def put(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store ``checkpoint``; returns it with ``id``, ``step``, ``parent_id`` and
        ``created_at`` filled. Re-putting an id with the same content is a no-op; with other
        content it raises :class:`ConflictError`."""
        with self._in_flight(checkpoint), self._turns.hold(_space_of(checkpoint)):
            return self._run(self._put_flow(checkpoint))

    def get(
        self, thread_id: str, checkpoint_id: str | None = None, *, namespace: str = ""
    ) -> Checkpoint | None:
        """One checkpoint, or the thread's latest when ``checkpoint_id`` is None."""
        return self._run(self._get_flow(thread_id, checkpoint_id, namespace))

    def list(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        before: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Iterator[Checkpoint]:
        """Checkpoints of a thread, newest first; ``before`` keeps ids older than the one
        given, ``metadata`` keeps checkpoints whose metadata has those exact values."""
        return self._iterate(self._list_flow(thread_id, namespace, before, limit, metadata))

    def list_with_writes(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        before: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Iterator[tuple[Checkpoint, builtins.list[PendingWrite]]]:
        """``list``, each checkpoint with its pending writes (as ``get_writes`` gives
        them): read with the checkpoints where the store keeps them together, else one
        query per :data:`WRITES_BATCH` checkpoints."""
        return self._iterate(
            self._list_flow(thread_id, namespace, before, limit, metadata, with_writes=True))

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and released version of the thread, all namespaces."""
        self._run(self._delete_flow(thread_id))

    def release(self, thread_id: str) -> Release:
        """Close the thread's current run: versioned savers archive it as the next version,
        others drop it. Returns what was released."""
        return self._run(self._release_flow(thread_id))

    def versions(self, thread_id: str) -> builtins.list[int]:
        """Released versions of the thread, oldest first (empty on unversioned savers)."""
        return self._run(self._versions_flow(thread_id))

    def get_version(self, thread_id: str, version: int) -> Release | None:
        """A released run of the thread, or None when there is no such version."""
        return self._run(self._get_version_flow(thread_id, version))

    def put_writes(
        self,
        thread_id: str,
        checkpoint_id: str,
        writes: Sequence[PendingWrite],
        *,
        namespace: str = "",
        replace: bool = False,
    ) -> None:
        """Attach pending writes to a checkpoint. A write whose ``(task_id, index)`` is
        already stored is kept as it was, unless ``replace`` is true."""
        key = _checkpoint_key(thread_id, namespace, checkpoint_id)
        limit = time.monotonic() + self._queued_put_wait
        with self._putting_lock:
            while (wait := self._writes_wait(key, limit)):
                self._put_moves.wait(wait)  # woken as a put starts or ends
        with self._turns.hold(_writes_turn(key)):
            self._run(
                self._put_writes_flow(thread_id, checkpoint_id, writes, namespace, replace))

    def get_with_writes(
        self, thread_id: str, checkpoint_id: str | None = None, *, namespace: str = ""
    ) -> tuple[Checkpoint, builtins.list[PendingWrite]] | None:
        """``get`` and the checkpoint's pending writes (``get_writes``), in one query where
        the store keeps them together."""
        return self._run(self._get_with_writes_flow(thread_id, checkpoint_id, namespace))

    def get_writes(
        self, thread_id: str, checkpoint_ids: Sequence[str], *, namespace: str = ""
    ) -> dict[str, builtins.list[PendingWrite]]:
        """Pending writes of several checkpoints (one query), each list ordered by
        ``(task_path, task_id, index)``; checkpoints without writes map to ``[]``."""
        return self._run(self._get_writes_flow(thread_id, checkpoint_ids, namespace))

    def list_threads(self, *, prefix: str = "") -> builtins.list[str]:
        """Ids of the threads holding checkpoints, sorted; only those starting with
        ``prefix`` when given (an index range, not a scan, on MongoDB)."""
        return self._run(self._list_threads_flow(prefix))

    def list_namespaces(self, thread_id: str) -> builtins.list[str]:
        """Namespaces of a thread that hold checkpoints, sorted (``""`` is the root)."""
        return self._run(self._list_namespaces_flow(thread_id))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (all namespaces, ids kept) and pending write of a thread to
        another thread id; records are copied as stored, without re-encoding."""
        self._run(self._copy_thread_flow(source_thread_id, target_thread_id))

    def read_records(
        self, thread_id: str
    ) -> tuple[builtins.list[StoredCheckpoint], builtins.list[StoredWrite]]:
        """Every checkpoint and pending write of a thread (all namespaces) exactly as
        stored, records still encoded: what export, copy and verify move and check."""
        return self._run(self._read_records_flow(thread_id))

    def write_records(
        self, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite] = ()
    ) -> None:
        """Store records read from any saver (``read_records``, an export archive) as
        they are: ids, seqs and records kept. Records already stored are skipped, so
        running it again after an interruption completes the copy without duplicates.
        A record whose checksum does not bind it to its place is refused."""
        self._run(self._write_records_flow(checkpoints, writes))

    def delete_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], *, namespace: str = ""
    ) -> None:
        """Delete some checkpoints of a thread and their pending writes. Checkpoints that
        survive but were delta-encoded through a deleted one are re-encoded first, so no
        read ever meets a cut chain, even if this is interrupted halfway."""
        self._run(self._delete_checkpoints_flow(thread_id, checkpoint_ids, namespace))

    # -- public API, async -----------------------------------------------------------
    async def aput(self, checkpoint: Checkpoint) -> Checkpoint:
        with self._in_flight(checkpoint):
            async with self._turns.ahold(_space_of(checkpoint)):
                return await self._arun(self._put_flow(checkpoint))

    async def aget(
        self, thread_id: str, checkpoint_id: str | None = None, *, namespace: str = ""
    ) -> Checkpoint | None:
        return await self._arun(self._get_flow(thread_id, checkpoint_id, namespace))

    async def alist(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        before: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Checkpoint]:
        flow = self._list_flow(thread_id, namespace, before, limit, metadata)
        async for item in self._aiterate(flow):
            yield item

    async def alist_with_writes(
        self,
        thread_id: str,
        *,
        namespace: str = "",
        before: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[tuple[Checkpoint, builtins.list[PendingWrite]]]:
        flow = self._list_flow(thread_id, namespace, before, limit, metadata, with_writes=True)
        async for item in self._aiterate(flow):
            yield item

    async def adelete_thread(self, thread_id: str) -> None:
        await self._arun(self._delete_flow(thread_id))

    async def arelease(self, thread_id: str) -> Release:
        return await self._arun(self._release_flow(thread_id))

    async def aversions(self, thread_id: str) -> builtins.list[int]:
        return await self._arun(self._versions_flow(thread_id))

    async def aget_version(self, thread_id: str, version: int) -> Release | None:
        return await self._arun(self._get_version_flow(thread_id, version))

    async def aput_writes(
        self,
        thread_id: str,
        checkpoint_id: str,
        writes: Sequence[PendingWrite],
        *,
        namespace: str = "",
        replace: bool = False,
    ) -> None:
        key = _checkpoint_key(thread_id, namespace, checkpoint_id)
        limit = time.monotonic() + self._queued_put_wait
        while self._writes_wait(key, limit):
            await asyncio.sleep(0.001)
        async with self._turns.ahold(_writes_turn(key)):
            await self._arun(
                self._put_writes_flow(thread_id, checkpoint_id, writes, namespace, replace))

    async def aget_with_writes(
        self, thread_id: str, checkpoint_id: str | None = None, *, namespace: str = ""
    ) -> tuple[Checkpoint, builtins.list[PendingWrite]] | None:
        return await self._arun(
            self._get_with_writes_flow(thread_id, checkpoint_id, namespace))

    async def aget_writes(
        self, thread_id: str, checkpoint_ids: Sequence[str], *, namespace: str = ""
    ) -> dict[str, builtins.list[PendingWrite]]:
        return await self._arun(self._get_writes_flow(thread_id, checkpoint_ids, namespace))

    async def alist_threads(self, *, prefix: str = "") -> builtins.list[str]:
        return await self._arun(self._list_threads_flow(prefix))

    async def alist_namespaces(self, thread_id: str) -> builtins.list[str]:
        return await self._arun(self._list_namespaces_flow(thread_id))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._arun(self._copy_thread_flow(source_thread_id, target_thread_id))

    async def aread_records(
        self, thread_id: str
    ) -> tuple[builtins.list[StoredCheckpoint], builtins.list[StoredWrite]]:
        return await self._arun(self._read_records_flow(thread_id))

    async def awrite_records(
        self, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite] = ()
    ) -> None:
        await self._arun(self._write_records_flow(checkpoints, writes))

    async def adelete_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], *, namespace: str = ""
    ) -> None:
        await self._arun(self._delete_checkpoints_flow(thread_id, checkpoint_ids, namespace))

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Release resources the saver owns (nothing for in-memory savers)."""

    async def aclose(self) -> None:
        self.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- drivers ---------------------------------------------------------------------
    def _guard(self) -> contextlib.AbstractContextManager[Any]:
        """Held around a whole put/delete/release flow; in-memory savers lock here."""
        return contextlib.nullcontext()

    def _call(self, call: Call) -> Any:
        result = getattr(self, call.name)(*call.args)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"{type(self).__name__} is async-only: use its a-prefixed methods "
                "(aput, aget, alist, ...) or the sync twin of this saver"
            )
        return result

    async def _acall(self, call: Call) -> Any:
        if self._blocking_io:
            return await asyncio.to_thread(self._call, call)
        result = getattr(self, call.name)(*call.args)
        if inspect.isawaitable(result):
            result = await result
        return result

    # A primitive's exception is thrown into the flow at its yield, so a flow can handle
    # it (the best-effort work after a put does); unhandled, it leaves the flow as raised.
    def _drive(self, flow: Flow[R]) -> Generator[Any, None, R]:
        """Run ``flow`` against the sync primitives: yields what it emits, returns its
        result."""
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                step = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value, error = None, None
            if isinstance(step, _Emit):
                yield step.value
            elif isinstance(step, _Sleep):
                time.sleep(step.seconds)
            else:
                try:
                    value = self._call(step)
                except Exception as exc:
                    error = exc

    def _run(self, flow: Flow[R]) -> R:
        with self._guard():
            driver = self._drive(flow)
            try:
                next(driver)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            raise RuntimeError("a flow run for its result emitted a value")

    def _iterate(self, flow: Flow[None]) -> Iterator[Any]:
        yield from self._drive(flow)

    async def _adrive(self, flow: Flow[R], result: builtins.list[Any]) -> AsyncIterator[Any]:
        """The async twin of :meth:`_drive`; the flow's result is appended to ``result``."""
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                step = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                result.append(stop.value)
                return
            value, error = None, None
            if isinstance(step, _Emit):
                yield step.value
            elif isinstance(step, _Sleep):
                await asyncio.sleep(step.seconds)
            else:
                try:
                    value = await self._acall(step)
                except Exception as exc:
                    error = exc

    async def _arun(self, flow: Flow[R]) -> R:
        result: builtins.list[Any] = []
        with self._guard():
            async for _ in self._adrive(flow, result):
                raise RuntimeError("a flow run for its result emitted a value")
        return result[0]  # type: ignore[no-any-return]

    async def _aiterate(self, flow: Flow[None]) -> AsyncIterator[Any]:
        async for item in self._adrive(flow, []):
            yield item

    # -- flows -----------------------------------------------------------------------
    def _put_flow(self, checkpoint: Checkpoint) -> Flow[Checkpoint]:
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"put expects a Checkpoint, got {type(checkpoint).__qualname__}")
        thread_id, namespace = checkpoint.thread_id, checkpoint.namespace
        _check_ids(thread_id, namespace)
        _check_optional_id("id", checkpoint.id)
        _check_optional_id("parent_id", checkpoint.parent_id)
        _check_optional_id("node_id", checkpoint.node_id, allow_empty=True)
        _check_optional_id("next_node_id", checkpoint.next_node_id, allow_empty=True)
        metadata = _check_metadata(checkpoint.metadata)
        raw = self.serializer.dumps(checkpoint.state, root="state")  # before any IO
        digest = codec.raw_hash(raw)

        space = (thread_id, namespace)
        # A re-put of an existing id needs no read first: the insert returns the stored
        # record on a duplicate id, and the comparison below makes it a no-op or a conflict.
        known: _Known | None = None
        if checkpoint.parent_id is None:  # the latest must be read: another writer may
            parent = yield Call("_read_latest", space)  # have appended
            self._saw_head(space, parent)
        else:
            known = self._trusted((thread_id, namespace, checkpoint.parent_id))
            parent = known.stored if known is not None else None
            if parent is None:
                parent = yield Call("_read", (thread_id, namespace, checkpoint.parent_id))
                if parent is None:
                    raise self._no_parent(checkpoint)
        seq = max(parent.seq if parent is not None else 0, self._heads.get(space, 0)) + 1
        encoded_against: object = self  # the parent the current encoding was made against
        for attempt in range(self._head_retries + 1):
            if parent is not encoded_against:  # ids and deltas depend on the parent
                known = known if known is not None else self._known(parent)
                stored, encoded = self._encode_child(checkpoint, metadata, raw, digest,
                                                     parent, known)
                encoded_against = parent
            stored = dataclasses.replace(stored, seq=seq)
            existing = yield Call("_insert", (stored,))
            if existing is not HEAD_MOVED:
                break
            # Another writer appended first: pause (jittered, growing), read the latest
            # again and take the seq after it; "continue the latest" continues the new one,
            # a named parent must still exist.
            low, high = self._backoff
            yield _Sleep(random.uniform(0, min(high, low * 2 ** min(attempt, 16))))
            latest = yield Call("_read_latest", space)
            self._saw_head(space, latest)
            seq = (latest.seq if latest is not None else 0) + 1
            if checkpoint.parent_id is None:
                if (latest.id if latest else None) != (parent.id if parent else None):
                    parent, known = latest, None
            elif (yield Call("_read", (thread_id, namespace, checkpoint.parent_id))) is None:
                raise self._no_parent(checkpoint)
        else:
            raise ConflictError(
                f"thread {thread_id!r} (namespace {namespace!r}) kept advancing under "
                f"{self._head_retries + 1} attempts to append to it"
            )
        if existing is not None:  # the id was taken: a retry, a re-put, or a race
            return self._same_or_conflict(existing, checkpoint, metadata, raw, digest)
        self._saw_head(space, stored)
        written = _Known(raw, encoded.header, stored, time.monotonic())
        self._cache.put((thread_id, namespace, stored.id), written)
        if (encoded.header.is_keyframe and parent is not None and self.policy.reverse
                and len(raw) >= _REVERSE_MIN_RAW and self._reverse_allowed()):
            yield from self._reverse_older_masters(parent, written)
        return stored.to_checkpoint(checkpoint.state)

    def _in_flight(self, checkpoint: Checkpoint) -> contextlib.AbstractContextManager[None]:
        """Mark a put of a named checkpoint as running, from before it waits for its
        thread's turn: see :meth:`_writes_wait`."""
        space = _space_of(checkpoint)
        checkpoint_id = getattr(checkpoint, "id", None)
        if space is None or not isinstance(checkpoint_id, str):
            return contextlib.nullcontext()
        return self._putting_checkpoint(*space, checkpoint_id)

    @contextlib.contextmanager
    def _putting_checkpoint(
        self, thread_id: str, namespace: str, checkpoint_id: str
    ) -> Iterator[None]:
        """Mark a put of this checkpoint as running. Adapters mark it from the start of
        their own put (serializing the state comes first), so writes for the checkpoint
        wait for it from then on; marks nest."""
        space = (thread_id, namespace)
        key = (*space, checkpoint_id)
        with self._putting_lock:
            self._putting[key] += 1
            self._putting_spaces[space] += 1
            self._put_moves.notify_all()
        try:
            yield
        finally:
            with self._putting_lock:
                self._putting[key] -= 1
                if not self._putting[key]:
                    del self._putting[key]
                self._putting_spaces[space] -= 1
                if not self._putting_spaces[space]:
                    del self._putting_spaces[space]
                self._put_ended[space] = time.monotonic()
                self._put_ended.move_to_end(space)
                while len(self._put_ended) > 4096:
                    self._put_ended.popitem(last=False)
                self._put_moves.notify_all()

    #: How long pending writes for a checkpoint this saver does not know wait, after the
    #: thread's running put ended, for a put of it queued behind that one to start, and
    #: at most in all while other puts of the thread run.
    _queued_put_grace: ClassVar[float] = 0.2
    _queued_put_wait: ClassVar[float] = 1.0

    def _writes_wait(self, key: tuple[str, str, str] | None, limit: float) -> float:
        """How long pending writes should wait (0: store them now) so that their
        checkpoint's state is at hand to store them as copies of it (and, on MongoDB, its
        document exists to hold them). LangGraph hands a checkpoint's put and its writes to
        its background threads at once, and that put waits for the thread's previous put:
        writes wait while their checkpoint's put runs; for a checkpoint this saver does not
        know, while another put of the thread runs and a moment after it ends (until
        ``limit``)."""
        if key is None:
            return 0.0
        if key in self._putting:
            return 1.0
        if self._cache.get(key) is not None:
            return 0.0
        now = time.monotonic()
        space = key[:2]
        if space in self._putting_spaces:
            return max(0.0, limit - now)
        ended = self._put_ended.get(space)
        if ended is not None:
            return max(0.0, min(limit, ended + self._queued_put_grace) - now)
        return 0.0

    def _drop_cached(self, thread_id: str) -> None:
        self._cache.drop_thread(thread_id)
        self._listed.drop_thread(thread_id)

    def _reverse_allowed(self) -> bool:
        """May older keyframes become reverse records against newer ones here? Not where
        records expire by chain (a ``ttl`` by keyframe chain, as on MongoDB and in the file
        store): an old chain continued by a fork could outlive the newer keyframe it would
        need. A store whose whole thread expires at once (Redis) may."""
        return getattr(self, "ttl", None) is None or self._ttl_covers_thread

    #: True where a ``ttl`` expires a whole thread at once (see ``_reverse_allowed``).
    _ttl_covers_thread: ClassVar[bool] = False

    def _reverse_older_masters(self, parent: StoredCheckpoint, master: _Known) -> Flow[None]:
        """After writing ``master``: rewrite the masters its Fenwick step names (the
        previous one, the parent's chain's, and the roots that one carried) as reverse
        records against it: one read for the roots not cached, one write (``_replace_many``
        where the store has it). Best effort: the put has succeeded, and a master left
        whole is only bigger, never wrong; each rewrite is atomic and its new base exists."""
        assert master.stored is not None
        thread_id, namespace = parent.thread_id, parent.namespace
        previous = self._cache.get((thread_id, namespace, parent.keyframe_id))
        if previous is None or previous.stored is None or not previous.header.is_keyframe:
            return  # not extending the newest master (a fork from history, or cold)
        members, _ = codec.repoint(previous.header.roots,
                                   (previous.header.index, previous.stored.id),
                                   master.header.index)
        others = sorted({member_id for _, member_id in members} - {previous.stored.id})
        # masters this saver rewrote before are kept with their states (below): no read
        held = {member_id: known for member_id in others
                if (known := self._listed.get((thread_id, namespace, member_id))) is not None
                and known.stored is not None}
        lookup: dict[str, StoredCheckpoint] = {}
        if len(held) < len(others):
            # the masters themselves are enough (each is rewritten against ``master`` and
            # decodes from one cached or listed newer master); a store that can read
            # records by id says so with ``_read_many``, else their chain groups are read
            read = "_read_many" if hasattr(self, "_read_many") else "_read_chains"
            unread = [member_id for member_id in others if member_id not in held]
            try:
                for item in (yield Call(read, (thread_id, namespace, unread))):
                    lookup[item.id] = item
            except Exception as exc:  # a store error: the put stands, the masters stay whole
                _log.warning("thread %r: older keyframes left whole (reading them failed: "
                             "%s: %s)", thread_id, type(exc).__name__, exc)
                return
        prepared = (codec.Dictionary(master.raw, len(master.raw), self.policy.delta_level)
                    if others else None)
        rewritten: builtins.list[StoredCheckpoint] = []
        states: builtins.list[_Known] = []
        for member_id in [previous.stored.id, *others]:
            try:
                if member_id == previous.stored.id:
                    stored, raw = previous.stored, previous.raw
                elif member_id in held:
                    kept = held[member_id]
                    assert kept.stored is not None
                    stored, raw = kept.stored, kept.raw
                else:
                    stored = lookup[member_id]
                    if stored.depth != 1:
                        continue
                    raw = self._decode(stored, lookup, {})
                encoded = codec.encode_reverse(raw, self._header(stored), master.base,
                                               self.policy, where=_location(stored),
                                               dictionary=prepared)
            except (SavegameError, KeyError):
                continue  # vanished, damaged or unreadable: leave it as it is
            rewritten.append(dataclasses.replace(stored, record=encoded.data,
                                                 base_id=master.stored.id, depth=1))
            states.append(_Known(raw, encoded.header, rewritten[-1], time.monotonic()))
        try:
            if hasattr(self, "_replace_many"):
                yield Call("_replace_many", (rewritten,))
            else:
                for stored in rewritten:
                    with contextlib.suppress(KeyError):
                        yield Call("_replace", (stored,))
        except Exception as exc:  # a store error: the put stands, the masters stay whole
            _log.warning("thread %r: older keyframes left whole (rewriting them failed: "
                         "%s: %s)", thread_id, type(exc).__name__, exc)
            for stored in rewritten:
                self._cache.discard((thread_id, namespace, stored.id))
            return
        # The rewritten masters leave the main cache (it serves the live head) for the
        # side cache, where the next master's Fenwick step finds those it names again.
        for known in states:
            assert known.stored is not None
            self._cache.discard((thread_id, namespace, known.stored.id))
            self._listed.put((thread_id, namespace, known.stored.id), known)

    @staticmethod
    def _no_parent(checkpoint: Checkpoint) -> ParentNotFoundError:
        return ParentNotFoundError(
            f"parent checkpoint {checkpoint.parent_id!r} does not exist in thread "
            f"{checkpoint.thread_id!r} (namespace {checkpoint.namespace!r}); put with "
            "parent_id=None to continue the latest checkpoint"
        )

    def _saw_head(self, space: tuple[str, str], latest: StoredCheckpoint | None) -> None:
        """Remember the highest seq seen in ``space`` (bounded: the 4096 newest spaces)."""
        with self._heads_lock:
            if latest is None:
                self._heads.pop(space, None)
            elif latest.seq >= self._heads.get(space, 0):
                self._heads[space] = latest.seq
                self._heads.move_to_end(space)
                while len(self._heads) > 4096:
                    self._heads.popitem(last=False)

    def _encode_child(
        self,
        checkpoint: Checkpoint,
        metadata: dict[str, Any],
        raw: bytes,
        digest: bytes,
        parent: StoredCheckpoint | None,
        known: _Known | None,
    ) -> tuple[StoredCheckpoint, codec.EncodedRecord]:
        """The record of ``checkpoint`` as a child of ``parent`` (a delta when the parent's
        state is at hand in ``known``, else a master numbered after the parent's)."""
        thread_id, namespace = checkpoint.thread_id, checkpoint.namespace
        new_id = checkpoint.id if checkpoint.id is not None else new_checkpoint_id(
            parent.id if parent is not None else None)
        created_at = _created_at(new_id)
        index, roots = 1, builtins.list[codec.Root]()
        if known is not None and parent is not None:
            index = known.header.index + 1
            root = self._cache.get((thread_id, namespace, parent.keyframe_id))
            if root is not None and root.header.is_keyframe and root.stored is not None:
                _, roots = codec.repoint(root.header.roots, (root.header.index,
                                                             root.stored.id), index)
        encoded = codec.encode(raw, known.base if known else None, self.policy,
                               digest=digest, where=codec.location(thread_id, namespace, new_id),
                               index=index, roots=roots)
        delta = encoded.base == codec.DELTA and parent is not None
        stored = StoredCheckpoint(
            thread_id=thread_id,
            namespace=namespace,
            id=new_id,
            parent_id=parent.id if parent is not None else checkpoint.parent_id,
            step=parent.step + 1 if parent is not None else 0,
            node_id=checkpoint.node_id,
            next_node_id=checkpoint.next_node_id,
            metadata=metadata,
            created_at=created_at,
            record=encoded.data,
            keyframe_id=parent.keyframe_id if delta and parent is not None else new_id,
            base_id=parent.id if delta and parent is not None else None,
            depth=encoded.header.depth,
        )
        return stored, encoded

    def _trusted(self, key: tuple[str, str, str]) -> _Known | None:
        """A cached state fresh enough to stand in for a read of its checkpoint."""
        known = self._cache.get(key)
        if known is None or known.stored is None:
            return None
        return known if time.monotonic() - known.seen < self._trust_seconds else None

    def _known(self, stored: StoredCheckpoint | None) -> _Known | None:
        """The cached decoded state of ``stored``, if the cache holds exactly that state."""
        if stored is None:
            return None
        cached = self._cache.get((stored.thread_id, stored.namespace, stored.id))
        if cached is None:
            return None
        try:
            header = self._header(stored)
        except CorruptCheckpointError:
            return None  # a corrupt record must not become a base; the child is a keyframe
        return cached if cached.header.raw_hash == header.raw_hash else None

    def _same_or_conflict(
        self,
        existing: StoredCheckpoint,
        checkpoint: Checkpoint,
        metadata: Mapping[str, Any],
        raw: bytes,
        digest: bytes,
    ) -> Checkpoint:
        header = self._header(existing)
        same = (
            header.raw_hash == (digest if header.xxh3 else codec.content_hash(raw, header))
            and existing.node_id == checkpoint.node_id
            and existing.next_node_id == checkpoint.next_node_id
            and dict(existing.metadata) == dict(metadata)
            and (checkpoint.parent_id is None or checkpoint.parent_id == existing.parent_id)
        )
        if not same:
            raise ConflictError(
                f"checkpoint {existing.id!r} of thread {existing.thread_id!r} "
                f"(namespace {existing.namespace!r}) already exists with different content"
            )
        return existing.to_checkpoint(checkpoint.state)

    def _get_flow(
        self, thread_id: str, checkpoint_id: str | None, namespace: str
    ) -> Flow[Checkpoint | None]:
        found = yield from self._get_read_flow(thread_id, checkpoint_id, namespace)
        return None if found is None else found[0]

    def _get_with_writes_flow(
        self, thread_id: str, checkpoint_id: str | None, namespace: str
    ) -> Flow[tuple[Checkpoint, builtins.list[PendingWrite]] | None]:
        found = yield from self._get_read_flow(thread_id, checkpoint_id, namespace)
        if found is None:
            return None
        checkpoint, stored = found
        assert checkpoint.id is not None
        if stored is not None and stored.writes is not None:  # read with the checkpoint
            items: builtins.list[StoredWrite] = builtins.list(stored.writes)
        else:
            items = yield Call("_read_writes", (thread_id, namespace, [checkpoint.id]))
        loaded = yield from self._load_writes(thread_id, namespace, [checkpoint.id], items)
        return checkpoint, loaded[checkpoint.id]

    def _get_read_flow(
        self, thread_id: str, checkpoint_id: str | None, namespace: str
    ) -> Flow[tuple[Checkpoint, StoredCheckpoint | None] | None]:
        """The checkpoint, and its stored form when it was read (None: known here)."""
        _check_ids(thread_id, namespace)
        _check_optional_id("checkpoint_id", checkpoint_id)
        lookup: dict[str, StoredCheckpoint] = {}
        if checkpoint_id is not None:
            trusted = self._trusted((thread_id, namespace, checkpoint_id))
            if trusted is not None and trusted.stored is not None:  # written or read here
                return (trusted.stored.to_checkpoint(self._loads(trusted.raw, trusted.stored)),
                        None)
            stored = yield Call("_read", (thread_id, namespace, checkpoint_id))
        elif hasattr(self, "_read_latest_chain") and not self._cache.knows(thread_id, namespace):
            # Nothing cached for this thread: fetch the head and its decode path at once.
            found = yield Call("_read_latest_chain", (thread_id, namespace))
            stored = found[0] if found else None
            lookup.update((item.id, item) for item in found or ())
        else:
            stored = yield Call("_read_latest", (thread_id, namespace))
        if stored is None:
            return None
        assert isinstance(stored, StoredCheckpoint)
        cached = self._known(stored)
        if cached is not None:
            raw = cached.raw
        else:
            lookup[stored.id] = stored
            yield from self._fetch_chains(thread_id, namespace, [stored], lookup)
            raw = self._decode(stored, lookup, {}, remember=True)
        return stored.to_checkpoint(self._loads(raw, stored)), stored

    def _list_flow(
        self,
        thread_id: str,
        namespace: str,
        before: str | None,
        limit: int | None,
        metadata: Mapping[str, Any] | None,
        with_writes: bool = False,
    ) -> Flow[None]:
        _check_ids(thread_id, namespace)
        _check_optional_id("before", before)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        if metadata is not None:
            metadata = _check_metadata(metadata)
        if limit == 0:
            return
        items: builtins.list[StoredCheckpoint] = yield Call(
            "_list", (thread_id, namespace, before, limit, metadata)
        )
        lookup = {item.id: item for item in items}
        yield from self._fetch_chains(thread_id, namespace, items, lookup)
        memo: dict[str, bytes] = {}
        chain: str | None = None
        writes: dict[str, builtins.list[StoredWrite]] = {}
        for index, item in enumerate(items):
            if item.keyframe_id != chain:  # keep at most one chain's states in memory
                memo.clear()
                chain = item.keyframe_id
            raw = memo.get(item.id) or self._decode(item, lookup, memo)
            self._listed.put((thread_id, namespace, item.id), _Known(raw, self._header(item)))
            checkpoint = item.to_checkpoint(self._loads(raw, item))
            if not with_writes:
                yield _Emit(checkpoint)
                continue
            if item.writes is None and item.id not in writes:  # not read with it: fetch
                batch = [i.id for i in items[index:index + WRITES_BATCH] if i.writes is None]
                writes = {checkpoint_id: [] for checkpoint_id in batch}
                for write in (yield Call("_read_writes", (thread_id, namespace, batch))):
                    if write.checkpoint_id in writes:
                        writes[write.checkpoint_id].append(write)
            stored = writes.pop(item.id) if item.writes is None else item.writes
            loaded = yield from self._load_writes(thread_id, namespace, [item.id], stored)
            yield _Emit((checkpoint, loaded[item.id]))

    def _put_writes_flow(
        self,
        thread_id: str,
        checkpoint_id: str,
        writes: Sequence[PendingWrite],
        namespace: str,
        replace: bool,
    ) -> Flow[None]:
        _check_ids(thread_id, namespace)
        _check_optional_id("checkpoint_id", checkpoint_id)
        if checkpoint_id is None:
            raise ValueError("put_writes needs a checkpoint_id")
        # The checkpoint's state, if at hand (it usually is: written or read just before),
        # so that a write passing on bytes of it is stored as a copy of them.
        known = self._cache.get((thread_id, namespace, checkpoint_id))
        state = known.raw if known is not None else None
        state_hash = known.header.raw_hash if known is not None and known.header.xxh3 else None
        stored: builtins.list[StoredWrite] = []
        for position, write in enumerate(writes):
            if not isinstance(write, PendingWrite):
                raise TypeError(f"writes[{position}] is {type(write).__qualname__}, "
                                "not a PendingWrite")
            _check_optional_id("task_id", write.task_id)
            if not isinstance(write.index, int) or isinstance(write.index, bool):
                raise TypeError(f"writes[{position}].index must be an int")
            if not isinstance(write.channel, str) or not isinstance(write.task_path, str):
                raise TypeError(f"writes[{position}].channel and .task_path must be str")
            raw = self.serializer.dumps({"value": write.value}, root=f"writes[{position}]")
            item = StoredWrite(thread_id, namespace, checkpoint_id, write.task_id,
                               write.index, write.channel, write.task_path, b"")
            record = codec.encode_write(raw, state, self.policy, state_hash=state_hash,
                                        where=_write_location(item)).data  # before any IO
            stored.append(dataclasses.replace(item, record=record))
        if stored:
            yield Call("_insert_writes", (stored, replace))

    def _get_writes_flow(
        self, thread_id: str, checkpoint_ids: Sequence[str], namespace: str
    ) -> Flow[dict[str, builtins.list[PendingWrite]]]:
        _check_ids(thread_id, namespace)
        if isinstance(checkpoint_ids, str):
            raise TypeError("checkpoint_ids must be a sequence of ids, not one str")
        ids = builtins.list(dict.fromkeys(checkpoint_ids))
        for checkpoint_id in ids:
            _check_optional_id("checkpoint_id", checkpoint_id)
        if not ids:
            return {}
        stored: builtins.list[StoredWrite] = yield Call(
            "_read_writes", (thread_id, namespace, ids)
        )
        return (yield from self._load_writes(thread_id, namespace, ids, stored))

    def _load_writes(
        self, thread_id: str, namespace: str, ids: Sequence[str],
        stored: Sequence[StoredWrite],
    ) -> Flow[dict[str, builtins.list[PendingWrite]]]:
        """The pending writes of ``ids`` from their stored records, each list ordered by
        ``(task_path, task_id, index)``."""
        out: dict[str, builtins.list[PendingWrite]] = {i: [] for i in ids}
        states = yield from self._write_states(thread_id, namespace, stored)
        for item in sorted(stored, key=lambda w: (w.task_path, w.task_id, w.index)):
            if item.checkpoint_id in out:
                out[item.checkpoint_id].append(
                    self._load_write(item, states.get(item.checkpoint_id)))
        return out

    def _write_states(
        self, thread_id: str, namespace: str, writes: Sequence[StoredWrite]
    ) -> Flow[dict[str, bytes]]:
        """The serialized states of the checkpoints whose pending writes are stored as
        copies of them: cached (written, read or listed here), else read with one query
        and decoded."""
        wanted = {checkpoint_id for _, checkpoint_id in _copy_sources(writes)}
        states: dict[str, bytes] = {}
        missing: builtins.list[str] = []
        for checkpoint_id in sorted(wanted):
            key = (thread_id, namespace, checkpoint_id)
            known = self._cache.get(key) or self._listed.get(key)
            if known is not None:
                states[checkpoint_id] = known.raw
            else:
                missing.append(checkpoint_id)
        if missing:
            if hasattr(self, "_read_many"):
                items = yield Call("_read_many", (thread_id, namespace, missing))
            else:  # a store without it: one read each
                items = []
                for checkpoint_id in missing:
                    item = yield Call("_read", (thread_id, namespace, checkpoint_id))
                    if item is not None:
                        items.append(item)
            lookup = {item.id: item for item in items}
            yield from self._fetch_chains(thread_id, namespace, items, lookup)
            memo: dict[str, bytes] = {}
            for item in items:
                states[item.id] = memo.get(item.id) or self._decode(item, lookup, memo)
                self._listed.put((thread_id, namespace, item.id),
                                 _Known(states[item.id], self._header(item)))
        return states

    def _load_write(self, item: StoredWrite, state: bytes | None = None) -> PendingWrite:
        where = dict(thread_id=item.thread_id, namespace=item.namespace,
                     checkpoint_id=item.checkpoint_id)
        try:
            raw = codec.decode_write(item.record, state, _write_location(item))
        except codec.RecordError as exc:
            raise CorruptCheckpointError(
                f"cannot decode pending write ({item.task_id!r}, {item.index}): {exc}", **where
            ) from None
        try:
            value = self.serializer.loads(raw)["value"]
        except SavegameError:
            raise
        except Exception as exc:
            raise CorruptCheckpointError(
                f"pending write ({item.task_id!r}, {item.index}) does not deserialize: {exc}",
                **where,
            ) from None
        return PendingWrite(item.task_id, item.index, item.channel, value, item.task_path)

    def _list_threads_flow(self, prefix: str) -> Flow[builtins.list[str]]:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__qualname__}")
        threads = yield Call("_list_threads", (prefix,))
        return sorted(threads)

    def _list_namespaces_flow(self, thread_id: str) -> Flow[builtins.list[str]]:
        _check_ids(thread_id, "")
        if hasattr(self, "_list_namespaces"):
            namespaces = yield Call("_list_namespaces", (thread_id,))
        else:  # a backend without the primitive: derive it from the whole thread
            checkpoints, _ = yield Call("_read_thread", (thread_id,))
            namespaces = {item.namespace for item in checkpoints}
        return sorted(set(namespaces))

    def _copy_thread_flow(self, source: str, target: str) -> Flow[None]:
        _check_ids(source, "")
        _check_ids(target, "")
        if source == target:
            raise ValueError("copy_thread needs two different thread ids")
        checkpoints, writes = yield Call("_read_thread", (source,))
        # Copies keep their append order; into a namespace that already holds other
        # checkpoints they go after its latest (a re-run of a copy finds its own there).
        offsets: dict[str, int] = {}
        for namespace in sorted({item.namespace for item in checkpoints}):
            latest = yield Call("_read_latest", (target, namespace))
            ours = latest is not None and any(
                item.id == latest.id for item in checkpoints if item.namespace == namespace)
            offsets[namespace] = 0 if latest is None or ours else latest.seq
        yield Call("_copy_in", (
            [_moved(dataclasses.replace(item, thread_id=target,
                                        seq=item.seq + offsets[item.namespace]), item)
             for item in checkpoints],
            [_moved(dataclasses.replace(item, thread_id=target), item) for item in writes],
        ))
        self._drop_cached(target)

    def _read_records_flow(
        self, thread_id: str
    ) -> Flow[tuple[builtins.list[StoredCheckpoint], builtins.list[StoredWrite]]]:
        _check_ids(thread_id, "")
        checkpoints, writes = yield Call("_read_thread", (thread_id,))
        return builtins.list(checkpoints), builtins.list(writes)

    def _write_records_flow(
        self, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite]
    ) -> Flow[None]:
        for item in checkpoints:
            if not isinstance(item, StoredCheckpoint):
                raise TypeError(f"expected StoredCheckpoint, got {type(item).__qualname__}")
            _check_ids(item.thread_id, item.namespace)
            _check_id("checkpoint id", item.id)
            self._header(item)  # the checksum binds the record to (thread, ns, id)
        for write in writes:
            if not isinstance(write, StoredWrite):
                raise TypeError(f"expected StoredWrite, got {type(write).__qualname__}")
            _check_ids(write.thread_id, write.namespace)
            try:
                codec.read_header(write.record, 0, _write_location(write))
            except codec.RecordError as exc:
                raise CorruptCheckpointError(
                    f"pending write ({write.task_id!r}, {write.index}): {exc}",
                    thread_id=write.thread_id, namespace=write.namespace,
                    checkpoint_id=write.checkpoint_id) from None
        if checkpoints or writes:
            yield Call("_copy_in", (builtins.list(checkpoints), builtins.list(writes)))
        for thread_id in {item.thread_id for item in checkpoints}:
            self._drop_cached(thread_id)

    def _delete_checkpoints_flow(
        self, thread_id: str, checkpoint_ids: Sequence[str], namespace: str
    ) -> Flow[None]:
        _check_ids(thread_id, namespace)
        if isinstance(checkpoint_ids, str):
            raise TypeError("checkpoint_ids must be a sequence of ids, not one str")
        doomed = set(checkpoint_ids)
        if not doomed:
            return
        items: builtins.list[StoredCheckpoint] = yield Call(
            "_list", (thread_id, namespace, None, None, None)
        )
        lookup = {item.id: item for item in items}
        # Masters and reverse records first, newest first (each only depends on newer
        # ones), then forward records, parents before children.
        roots = sorted((i for i in items if i.depth == 1), key=lambda i: -i.seq)
        forward = sorted((i for i in items if i.depth != 1), key=lambda i: i.id)
        for item in [*roots, *forward]:
            if item.id in doomed or not self._path_hits(item, lookup, doomed):
                continue
            # Survivor decoded through a doomed record: re-encode it against its surviving
            # (already rewritten) parent, or as a master; never deeper than it was, since
            # its children's depths were counted from it.
            raw = self._decode(item, lookup, {})
            base = None if item.depth == 1 else self._surviving_base(item, lookup, doomed)
            header = self._header(item)
            encoded = codec.encode(raw, base[1].base if base else None, self.policy,
                                   where=_location(item), index=max(1, header.index))
            if encoded.header.depth > item.depth:
                encoded = codec.encode(raw, None, self.policy, where=_location(item),
                                       index=max(1, header.index))
            delta = encoded.base == codec.DELTA and base is not None
            # The chain-group label (keyframe_id) stays: children not yet rewritten are
            # still fetched with this record if the deletion stops halfway.
            rewritten = dataclasses.replace(
                item, record=encoded.data, base_id=base[0].id if delta and base else None,
                depth=encoded.header.depth,
            )
            yield Call("_replace", (rewritten,))
            lookup[item.id] = rewritten
            self._cache.put((thread_id, namespace, item.id),
                            _Known(raw, encoded.header, rewritten, time.monotonic()))
        yield Call("_delete_checkpoints", (thread_id, namespace, sorted(doomed)))
        for checkpoint_id in doomed:
            self._cache.discard((thread_id, namespace, checkpoint_id))
            self._listed.discard((thread_id, namespace, checkpoint_id))

    def _path_hits(
        self, item: StoredCheckpoint, lookup: Mapping[str, StoredCheckpoint], doomed: set[str]
    ) -> bool:
        current = item
        while current.base_id is not None:
            if current.base_id in doomed:
                return True
            parent = lookup.get(current.base_id)
            if parent is None:
                return False
            current = _step_back(item, current, parent)
        return False

    def _surviving_base(
        self, item: StoredCheckpoint, lookup: Mapping[str, StoredCheckpoint], doomed: set[str]
    ) -> tuple[StoredCheckpoint, _Known] | None:
        """The parent of ``item`` when it survives and its state is cached, else None."""
        parent = lookup.get(item.parent_id) if item.parent_id else None
        if parent is None or parent.id in doomed:
            return None
        known = self._known(parent)
        return (parent, known) if known is not None else None

    def _delete_flow(self, thread_id: str) -> Flow[None]:
        _check_ids(thread_id, "")
        yield Call("_delete_thread", (thread_id,))
        self._drop_cached(thread_id)

    def _release_flow(self, thread_id: str) -> Flow[Release]:
        _check_ids(thread_id, "")
        version, items = yield Call("_archive", (thread_id,))
        self._drop_cached(thread_id)
        return Release(thread_id, version, self._decode_all(items))

    def _versions_flow(self, thread_id: str) -> Flow[builtins.list[int]]:
        _check_ids(thread_id, "")
        versions = yield Call("_versions", (thread_id,))
        return sorted(versions)

    def _get_version_flow(self, thread_id: str, version: int) -> Flow[Release | None]:
        _check_ids(thread_id, "")
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError(f"version must be an int, got {type(version).__qualname__}")
        items = yield Call("_read_version", (thread_id, version))
        if items is None:
            return None
        return Release(thread_id, version, self._decode_all(items))

    # -- decoding --------------------------------------------------------------------
    def _header(self, stored: StoredCheckpoint) -> codec.RecordHeader:
        try:
            return codec.read_header(stored.record, 0, _location(stored))
        except codec.RecordError as exc:
            raise _corrupt(stored, str(exc)) from None

    def _missing_chains(
        self, items: Sequence[StoredCheckpoint], lookup: Mapping[str, StoredCheckpoint]
    ) -> set[str]:
        """Labels (``keyframe_id``) of the chains whose records the decode paths of
        ``items`` need and neither ``lookup`` nor the cache holds: a forward record's own
        chain, or the newer master's chain a reverse record points to."""
        missing: set[str] = set()
        for item in items:
            current = item
            while current.base_id is not None:
                if self._cache.get((item.thread_id, item.namespace, current.base_id)):
                    break
                parent = lookup.get(current.base_id)
                if parent is None:
                    missing.add(current.base_id if current.depth == 1 else current.keyframe_id)
                    break
                current = _step_back(item, current, parent)
        return missing

    def _fetch_chains(
        self, thread_id: str, namespace: str, items: Sequence[StoredCheckpoint],
        lookup: dict[str, StoredCheckpoint],
    ) -> Flow[None]:
        """Add to ``lookup`` every record the decode paths of ``items`` need: one query
        per step back along reverse records (none for a path that stays in one chain);
        stops when a query brings nothing new (a cut chain is reported when decoding)."""
        asked: set[str] = set()
        while True:
            missing = self._missing_chains(items, lookup) - asked
            if not missing:
                return
            asked |= missing
            for item in (yield Call("_read_chains", (thread_id, namespace, sorted(missing)))):
                lookup.setdefault(item.id, item)

    def _decode(
        self,
        target: StoredCheckpoint,
        lookup: Mapping[str, StoredCheckpoint],
        memo: dict[str, bytes],
        *,
        remember: bool = False,
    ) -> bytes:
        """The serialized state of ``target``, decoding from the nearest known ancestor.

        ``memo`` maps checkpoint ids to already decoded states and is extended with every
        state decoded here, so decoding a chain newest-first decodes each record once.
        ``remember`` caches the result and its anchor, so a put that follows is a delta.
        """
        path = [target]
        base: _Known | None = None
        current = target
        while current.base_id is not None:
            known = memo.get(current.base_id)
            if known is not None:
                parent = lookup.get(current.base_id)
                if parent is not None:
                    base = _Known(known, self._header(parent))
                    break
            cached = self._cache.get((target.thread_id, target.namespace, current.base_id))
            if cached is not None:
                base = cached
                break
            parent = lookup.get(current.base_id)
            if parent is None:
                raise _corrupt(
                    target, f"the base record {current.base_id!r} of {current.id!r} is missing"
                )
            current = _step_back(target, current, parent)
            path.append(current)
        path.reverse()
        try:
            decoded = codec.decode_records([p.record for p in path],
                                           base.base if base else None,
                                           [_location(p) for p in path])
        except codec.RecordError as exc:
            failed = path[min(exc.position, len(path) - 1)]
            detail = f"record {failed.id!r}: {exc}" if failed is not target else str(exc)
            raise _corrupt(target, detail) from None
        for item, (raw, _) in zip(path, decoded, strict=True):
            memo[item.id] = raw
        if remember:
            self._remember(path, decoded)
        return decoded[-1][0]

    def _remember(
        self, path: Sequence[StoredCheckpoint],
        decoded: Sequence[tuple[bytes, codec.RecordHeader]],
    ) -> None:
        """Cache the decoded tip of ``path`` (a put that follows is a delta against it) and
        the master or reverse record its forward chain starts from (a master written
        after it rewrites that one)."""
        now = time.monotonic()
        for position in range(len(path) - 1, -1, -1):
            item, (raw, header) = path[position], decoded[position]
            if position == len(path) - 1 or header.is_root:
                self._cache.put((item.thread_id, item.namespace, item.id),
                                _Known(raw, header, item, now))
            if header.is_root:
                break

    def _decode_all(self, items: Sequence[StoredCheckpoint]) -> tuple[Checkpoint, ...]:
        """Decode a whole released run (every chain complete), newest first."""
        lookup = {item.id: item for item in items}
        memos: dict[tuple[str, str], dict[str, bytes]] = {}
        out = []
        for item in sorted(items, key=lambda s: (s.namespace, s.keyframe_id, s.depth)):
            memo = memos.setdefault((item.namespace, item.keyframe_id), {})
            raw = memo.get(item.id) or self._decode(item, lookup, memo)
            out.append(item.to_checkpoint(self._loads(raw, item)))
        out.sort(key=lambda c: (c.id or ""), reverse=True)
        return tuple(out)

    def _loads(self, raw: bytes, stored: StoredCheckpoint) -> dict[str, Any]:
        try:
            state = self.serializer.loads(raw)
        except SerializationError as exc:
            raise SerializationError(
                f"{exc} (thread {stored.thread_id!r}, namespace {stored.namespace!r}, "
                f"checkpoint {stored.id!r})",
                path=exc.path, type_name=exc.type_name,
            ) from None
        except SavegameError:
            raise
        except Exception as exc:
            raise _corrupt(stored, f"state bytes do not deserialize: {exc}") from None
        if not isinstance(state, dict):
            raise _corrupt(stored, "stored state is not a mapping")
        return state


_S = TypeVar("_S", bound=BaseSaver)


_Item = TypeVar("_Item", StoredCheckpoint, StoredWrite)


def _location(stored: StoredCheckpoint) -> bytes:
    """Where a checkpoint's record is bound to sit (see ``codec.location``)."""
    return codec.location(stored.thread_id, stored.namespace, stored.id)


def _write_location(write: StoredWrite) -> bytes:
    return codec.location(write.thread_id, write.namespace, write.checkpoint_id,
                          write.task_id, str(write.index))


def _copy_sources(writes: Iterable[StoredWrite]) -> set[tuple[str, str]]:
    """(namespace, checkpoint id) of the checkpoints whose states these pending writes are
    stored as copies of (a write whose record does not read is left to its decoder to
    report)."""
    sources: set[tuple[str, str]] = set()
    for write in writes:
        with contextlib.suppress(codec.RecordError):
            if codec.write_base(write.record, _write_location(write)) is not None:
                sources.add((write.namespace, write.checkpoint_id))
    return sources


def _moved(item: _Item, source: _Item) -> _Item:
    """``item`` (a copy of ``source`` at another place) with its record bound to its place."""
    where = _location if isinstance(item, StoredCheckpoint) else _write_location
    try:
        record = codec.rebind(item.record, where(source), where(item))
    except codec.RecordError as exc:
        if isinstance(source, StoredCheckpoint):
            raise _corrupt(source, str(exc)) from None
        raise CorruptCheckpointError(
            f"cannot copy pending write ({source.task_id!r}, {source.index}): {exc}",
            thread_id=source.thread_id, namespace=source.namespace,
            checkpoint_id=source.checkpoint_id,
        ) from None
    return dataclasses.replace(item, record=record)


def _step_back(
    target: StoredCheckpoint, current: StoredCheckpoint, base: StoredCheckpoint
) -> StoredCheckpoint:
    """One step from ``current`` to its base record on ``target``'s decode path. Along a
    forward chain depth falls strictly toward its master (depth 1); from there reverse
    records lead only to newer masters (depth 1, higher seq). So every walk ends, even
    over stored records that name themselves or each other as bases."""
    if current.depth == 1:  # a reverse record: its base is a newer master
        if base.depth != 1 or base.seq <= current.seq:
            raise _corrupt(target, f"record {current.id!r} names base {base.id!r}, which is "
                                   "not a newer master: the record chain loops or is damaged")
    elif base.depth >= current.depth:
        raise _corrupt(target, f"record {current.id!r} names base {base.id!r}, which is not "
                               "shallower: the record chain loops or is damaged")
    return base


def _corrupt(stored: StoredCheckpoint, message: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"cannot decode checkpoint: {message}",
        thread_id=stored.thread_id, namespace=stored.namespace, checkpoint_id=stored.id,
    )


def _now() -> dt.datetime:
    """UTC now, truncated to milliseconds (what BSON dates keep), so every saver agrees."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


#: How old the time a new checkpoint's id states may be to stand for its ``created_at``.
_ID_TIME_SLACK = dt.timedelta(minutes=1)


def _created_at(checkpoint_id: str) -> dt.datetime:
    """A new checkpoint's ``created_at``: the time its id states (:func:`id_time`) when
    that is within the last minute, else now. A time-ordered id is made a moment before
    its put (by this saver, or by LangGraph as its UUIDv6), so the two agree and a store
    may derive the time from the id instead of storing it again (MongoDB's layout 4)."""
    now = _now()
    stated = id_time(checkpoint_id)
    if stated is not None and now - _ID_TIME_SLACK <= stated <= now:
        return stated
    return now


#: The longest id (thread, namespace, checkpoint, node, task) a saver accepts, in characters.
MAX_ID_LENGTH = 16_384


def _check_ids(thread_id: object, namespace: object) -> None:
    _check_id("thread_id", thread_id)
    _check_id("namespace", namespace, allow_empty=True)


def _check_optional_id(name: str, value: object, *, allow_empty: bool = False) -> None:
    if value is not None:
        _check_id(name, value, allow_empty=allow_empty)


def _check_id(name: str, value: object, *, allow_empty: bool = False) -> None:
    """Ids are text every store keeps exactly: no NUL (C strings and SQLite-backed servers
    cut there), valid Unicode (no lone surrogates, which UTF-8 cannot hold), bounded length."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__qualname__}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{name} is {len(value)} characters long; ids may have at most "
                         f"{MAX_ID_LENGTH}")
    if "\x00" in value:
        raise ValueError(f"{name} {value[:80]!r} holds a NUL character, which stores cannot "
                         "keep exactly")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} {value[:80]!r} is not valid Unicode (a lone surrogate); "
                         "ids must encode as UTF-8") from None


def _check_metadata(metadata: object) -> dict[str, Any]:
    """Metadata is small JSON-like data every backend can store and filter on."""
    if not isinstance(metadata, Mapping):
        raise SerializationError(
            f"metadata must be a mapping, got {type(metadata).__qualname__}",
            path="metadata", type_name=type(metadata).__qualname__,
        )
    checked: dict[str, Any] = _check_json_like(metadata, "metadata")
    return checked


def _copy_json(value: Any) -> Any:
    """A deep copy of checked metadata, so neither the caller's objects nor the ones a
    saver hands out alias what the saver stores."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _check_json_like(value: object, path: str) -> Any:
    """Check ``value`` is JSON-like and return a deep copy of it, with tuples as lists and
    mappings as dicts (what every backend, BSON included, gives back)."""
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        if not -_MAX_INT64 - 1 <= value <= _MAX_INT64:
            raise SerializationError(f"{path} does not fit in 64 bits", path=path, type_name="int")
        return value
    if isinstance(value, (list, tuple)):
        return [_check_json_like(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key or key.startswith("$") or "." in key \
                    or "\x00" in key:
                raise SerializationError(
                    f"{path} has key {key!r}: metadata keys must be non-empty str without "
                    "'.', NUL or a leading '$'",
                    path=f"{path}[{key!r}]", type_name=type(key).__qualname__,
                )
            out[key] = _check_json_like(item, f"{path}[{key!r}]")
        return out
    raise SerializationError(
        f"{path} holds {type(value).__qualname__}; metadata must be JSON-like "
        "(None, bool, int, float, str, list, dict)",
        path=path, type_name=type(value).__qualname__,
    )

