"""LangGraph checkpointer over any savegame saver.

``Checkpointer(saver)`` is a ``langgraph.checkpoint.base.BaseCheckpointSaver`` that keeps
every LangGraph checkpoint as one savegame checkpoint, so a growing ``messages`` channel is
stored delta-encoded and zstd-compressed (about one message per step), in memory or in
MongoDB::

    from langgraph.graph import StateGraph
    from savegame.adapters.langgraph import Checkpointer
    from savegame.savers import MemorySaver

    graph = builder.compile(checkpointer=Checkpointer(MemorySaver()))

Mapping (one savegame checkpoint per LangGraph checkpoint):

- ``thread_id`` -> thread, ``checkpoint_ns`` -> namespace, ``checkpoint["id"]`` -> id, the
  parent config's ``checkpoint_id`` -> ``parent_id`` (kept in the state too, so a checkpoint
  put without a parent is read back without one);
- metadata -> savegame metadata (real fields, filtered server-side by ``list(filter=...)``);
  a key or value that is not JSON-like (or a key with ``.``/``$``) is kept in the state,
  serialized by ``serde``, and filtered client-side;
- the state holds each channel value as LangGraph's own ``serde.dumps_typed`` pair (type
  tag kept), plus ``v``, ``ts``, ``channel_versions``, ``versions_seen``,
  ``updated_channels`` and any unknown checkpoint key. The default ``serde`` is
  :func:`strict_serde`: stored data never makes the checkpointer import or call anything
  outside LangGraph's safe types, :data:`COMMON_TYPES` and ``allowed_types=``.

``put`` follows ``new_versions`` as LangGraph's reference saver does: a channel's value is
the one at its version in ``channel_versions``. A channel in ``new_versions`` takes the
value passed (absent = empty); an unchanged channel missing from ``channel_values`` keeps
the parent's value when the parent holds it at the same version (this is how a
``DeltaChannel`` snapshot stays readable on the following checkpoints); a channel absent
from ``channel_versions`` is never stored, so it never comes back.

Pending writes go through savegame's ``put_writes``/``get_writes``: index
``WRITES_IDX_MAP.get(channel, position)``, regular writes are kept as first stored, a batch
made only of special writes (error, interrupt, scheduled, resume) overwrites.

Sync and async: every method has its twin. Over a saver with blocking IO (``MongoSaver``)
the async methods run the IO in a worker thread (savegame's ``BaseSaver`` does it), so the
event loop never blocks. Over an async-only saver (``AsyncMongoSaver``) a sync method
called from another thread runs on the event loop the async methods work on
(``asyncio.run_coroutine_threadsafe``); on that loop's own thread, or with no such loop
running, it raises ``TypeError`` naming the fix (the async twin, another thread, or
``MongoSaver``).

Extended methods: ``copy_thread`` (every namespace, whole parent chains and their writes,
records copied as stored), ``delete_for_runs``, ``prune`` (``"keep_latest"`` and
``"delete"``) and ``get_next_version`` (integers). Deletions go through savegame's
``delete_checkpoints``, which re-encodes surviving delta records first, so storage chains
are never cut. ``DeltaChannel``: ``prune("keep_latest")`` and ``delete_for_runs`` also
keep, for each surviving checkpoint, the ancestors (and their writes) its delta channels
(the ``counters_since_delta_snapshot`` metadata) need back to their nearest stored value
(snapshot), so ``get_delta_channel_history`` rebuilds the same state after the deletion.
``get_delta_channel_history`` reads the parent chain with paged ``list`` queries and one
``get_writes`` query instead of a ``get_tuple`` per ancestor.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import heapq
import itertools
import random
import threading
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar, cast

from savegame.savers._deps import require

require("langgraph.checkpoint.base", "langgraph")

from langchain_core.runnables import RunnableConfig  # noqa: E402
from langgraph.checkpoint.base import (  # noqa: E402
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.base import Checkpoint as LGCheckpoint  # noqa: E402
from langgraph.checkpoint.serde.base import SerializerProtocol  # noqa: E402
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer  # noqa: E402

from savegame.savers.base import BaseSaver  # noqa: E402
from savegame.savers.checkpoint import Checkpoint, PendingWrite  # noqa: E402
from savegame.savers.registry import as_saver  # noqa: E402

from . import _lists  # noqa: E402

__all__ = ["COMMON_TYPES", "Checkpointer", "strict_serde"]

_T = TypeVar("_T")

#: Classes LangGraph graphs commonly keep in state or pending writes, allowed by the default
#: serializer on top of LangGraph's own safe list (``SAFE_MSGPACK_TYPES``: datetime, UUID,
#: Decimal, paths, the langchain-core messages, ``Document``, and ``langgraph.types``'
#: ``Send``, ``Command``, ``Interrupt``...). Each entry is ``(module, class name)``.
COMMON_TYPES: tuple[tuple[str, str], ...] = (
    ("langchain_core.agents", "AgentAction"),
    ("langchain_core.agents", "AgentActionMessageLog"),
    ("langchain_core.agents", "AgentFinish"),
    ("langchain_core.agents", "AgentStep"),
    ("langchain_core.outputs.generation", "Generation"),
    ("langchain_core.outputs.generation", "GenerationChunk"),
    ("langchain_core.outputs.chat_generation", "ChatGeneration"),
    ("langchain_core.outputs.chat_generation", "ChatGenerationChunk"),
    ("langchain_core.outputs.chat_result", "ChatResult"),
    ("langchain_core.outputs.llm_result", "LLMResult"),
    ("langchain_core.prompt_values", "StringPromptValue"),
    ("langchain_core.prompt_values", "ChatPromptValue"),
    ("langchain_core.prompt_values", "ChatPromptValueConcrete"),
)


def strict_serde(allowed_types: Iterable[type | tuple[str, ...]] = ()) -> JsonPlusSerializer:
    """LangGraph's ``JsonPlusSerializer`` in strict mode: a stored value names a class by
    module and name (LangGraph's msgpack constructor extension), and only LangGraph's safe
    list, :data:`COMMON_TYPES` and ``allowed_types`` (classes, or ``(module, name)``
    tuples) are rebuilt; any other name comes back as its raw stored fields, with nothing
    imported or called. No pickle, and LangGraph's legacy JSON format revives only its safe
    types."""
    extra: builtins.list[tuple[str, ...]] = builtins.list(COMMON_TYPES)
    for entry in allowed_types:
        if isinstance(entry, type):
            extra.append((entry.__module__, entry.__name__))
        elif isinstance(entry, tuple) and len(entry) >= 2 and all(
                isinstance(part, str) for part in entry):
            extra.append(entry)
        else:
            raise TypeError(f"allowed_types entries are classes or (module, name) tuples, "
                            f"got {entry!r}")
    return JsonPlusSerializer(allowed_msgpack_modules=extra, pickle_fallback=False)

_MAX_INT64 = (1 << 63) - 1
#: Checkpoint keys with a place of their own in the stored state.
_KNOWN_KEYS = frozenset(
    {"v", "id", "ts", "channel_values", "channel_versions", "versions_seen", "updated_channels"}
)
_COUNTERS = "counters_since_delta_snapshot"
#: How many (thread, namespace) places keep their last serialized channel values.
_BLOB_PLACES = 64
#: A channel's version, the object it was serialized from, the serialized value, and how a
#: list value splits into its elements' bytes (None: serialized whole).
_Blob = tuple[Any, Any, tuple[str, bytes], _lists.Split | None]
#: The "object" of a carried channel value: never a value LangGraph passes.
_CARRIED: Any = object()


class Checkpointer(BaseCheckpointSaver[int]):
    """A LangGraph checkpointer storing its checkpoints in a savegame saver.

    ``saver`` is any savegame saver (``MemorySaver``, ``VersionedMemorySaver``,
    ``MongoSaver``, ``AsyncMongoSaver``) or a store URI (``"mongodb://host/app"``, opened
    with ``open_saver`` and closed with the checkpointer). ``serde`` is LangGraph's
    serializer for channel values and writes; the default is :func:`strict_serde`
    (``allowed_types``): stored data never makes it import or call anything outside
    LangGraph's safe list, :data:`COMMON_TYPES` and ``allowed_types``. A ``serde`` you pass
    is used as it is. With ``LANGGRAPH_STRICT_MSGPACK=true`` LangGraph itself adds each
    compiled graph's schema types (``with_allowlist``).

    Over ``AsyncMongoSaver`` (async-only) the async methods are native. A sync method
    called from another thread while the event loop the checkpointer works on runs (a
    sync node inside ``astream``, ``await asyncio.to_thread(graph.get_state, config)``)
    is run on that loop with ``asyncio.run_coroutine_threadsafe``, as LangGraph's
    ``AsyncSqliteSaver`` does; called on the loop's own thread (it would deadlock), or with
    no such loop running, it raises ``TypeError`` naming the fix. Over the other savers
    both work, and the async ones never block the event loop on IO.

    ``list`` with a config but no ``checkpoint_ns`` reads every namespace of the thread
    (subgraphs included), newest first, as ``InMemorySaver`` does; ``checkpoint_ns=""``
    reads the root only; ``list(None)`` reads every thread and namespace, newest first.

    Use it as a context manager to close a saver it owns (``from_mongodb_uri``).
    """

    def __init__(
        self,
        saver: BaseSaver | str,
        *,
        serde: SerializerProtocol | None = None,
        allowed_types: Iterable[type | tuple[str, ...]] = (),
        owns_saver: bool = False,
    ) -> None:
        saver, opened = as_saver(saver, what="Checkpointer's saver")  # a store URI: ours
        allowed = builtins.list(allowed_types)
        if serde is not None and allowed:
            raise TypeError("pass allowed_types= or serde=, not both (add types to your own "
                            "serializer with its with_msgpack_allowlist)")
        super().__init__(serde=serde if serde is not None else strict_serde(allowed))
        self.saver = saver
        self._owns_saver = owns_saver or opened
        #: The channel values of the last put per (thread, namespace), serialized: see _values.
        self._blobs: OrderedDict[tuple[str, str], tuple[str, dict[str, _Blob]]] = OrderedDict()
        self._blobs_lock = threading.Lock()
        #: Whether list channels are serialized element by element (see _lists): only with
        #: JsonPlusSerializer itself, once the first list so made equals its own bytes.
        self._split_lists: bool | None = None if type(self.serde) is JsonPlusSerializer else False
        #: The event loop the async methods of an async-only saver last ran on: sync calls
        #: from other threads are run there.
        self._loop: asyncio.AbstractEventLoop | None = None
        if saver._async_only:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()

    # -- constructors and lifecycle ---------------------------------------------------
    @classmethod
    def from_mongodb_uri(
        cls,
        uri: str,
        *,
        database: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        serde: SerializerProtocol | None = None,
        allowed_types: Iterable[type | tuple[str, ...]] = (),
        **saver_options: Any,
    ) -> Checkpointer:
        """A checkpointer over a new ``MongoSaver`` (sync ``MongoClient``) for ``uri``;
        ``with Checkpointer.from_mongodb_uri(uri) as checkpointer:`` closes the client.
        ``saver_options`` go to ``MongoSaver`` (``prefix``, ``ttl``, ``write_concern``...)."""
        from savegame.savers import MongoSaver

        saver = MongoSaver.from_uri(uri, database=database, client_options=client_options,
                                    **saver_options)
        return cls(saver, serde=serde, allowed_types=allowed_types, owns_saver=True)

    @classmethod
    def afrom_mongodb_uri(
        cls,
        uri: str,
        *,
        database: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        serde: SerializerProtocol | None = None,
        allowed_types: Iterable[type | tuple[str, ...]] = (),
        **saver_options: Any,
    ) -> Checkpointer:
        """A checkpointer over a new ``AsyncMongoSaver`` (``AsyncMongoClient``) for ``uri``;
        ``async with Checkpointer.afrom_mongodb_uri(uri) as checkpointer:`` closes the
        client. Run graphs with ``ainvoke``/``astream`` (sync calls from other threads are
        served on the loop)."""
        from savegame.savers import AsyncMongoSaver

        saver = AsyncMongoSaver.from_uri(uri, database=database,
                                         client_options=client_options, **saver_options)
        return cls(saver, serde=serde, allowed_types=allowed_types, owns_saver=True)

    def close(self) -> None:
        """Close the saver if this checkpointer created it."""
        if self._owns_saver:
            self._owns_saver = False
            self.saver.close()

    async def aclose(self) -> None:
        if self._owns_saver:
            self._owns_saver = False
            await self.saver.aclose()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Checkpointer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- versions ---------------------------------------------------------------------
    def get_next_version(self, current: Any, channel: None = None) -> Any:
        """The next channel version: ``None -> 1``, ``n -> n + 1``. A string version (from
        a thread written by another saver, ``"<int>.<fraction>"``) gets the next one in the
        same format, so versions of one thread stay comparable."""
        if current is None:
            return 1
        if isinstance(current, str):
            head = current.split(".", 1)[0]
            return f"{int(head) + 1:032}.{random.random():016}"
        if isinstance(current, float):
            return int(current) + 1
        return cast(int, current) + 1

    # -- sync API ---------------------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        if self.saver._async_only:
            return self._on_loop(lambda: self.aget_tuple(config), "get_tuple")
        thread_id, namespace, checkpoint_id = _target(config)
        found = self.saver.get_with_writes(thread_id, checkpoint_id, namespace=namespace)
        if found is None:
            return None
        return self._tuple(*found, resumed=True)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        if self.saver._async_only:
            yield from self._iterate_on_loop(
                self.alist(config, filter=filter, before=before, limit=limit))
            return
        query = _Query(config, filter, before, limit, self.serde)
        if query.limit == 0:
            return
        if config is None or query.namespace is None:
            threads = [query.thread_id] if config is not None else self.saver.list_threads()
            spaces = [(t, ns) for t in threads for ns in self.saver.list_namespaces(t)]
            streams = [self._list_space(t, ns, query) for t, ns in spaces]
            yield from itertools.islice(heapq.merge(*streams, key=_newest_first), query.limit)
            return
        yield from self._list_space(query.thread_id, query.namespace, query)

    def _list_space(self, thread_id: str, namespace: str, query: _Query) -> Iterator[Any]:
        if query.checkpoint_id is not None:
            one = self.saver.get_with_writes(thread_id, query.checkpoint_id,
                                             namespace=namespace)
            found: Iterable[tuple[Checkpoint, builtins.list[PendingWrite]]] = (
                [one] if one is not None else [])
        else:
            found = self.saver.list_with_writes(
                thread_id, namespace=namespace, before=query.before,
                limit=query.server_limit, metadata=query.server_filter)
        kept = (self._tuple(item, writes) for item, writes in found if query.keeps(item))
        yield from itertools.islice(kept, query.limit)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: LGCheckpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        if self.saver._async_only:
            return self._on_loop(
                lambda: self.aput(config, checkpoint, metadata, new_versions), "put")
        thread_id, namespace, parent_id = _target(config)
        place = (thread_id, namespace)
        with self.saver._putting_checkpoint(thread_id, namespace, str(checkpoint["id"])):
            values, carry, splits = self._values(place, parent_id, checkpoint, new_versions)
            if carry and parent_id is not None:
                parent = self.saver.get(thread_id, parent_id, namespace=namespace)
                _carry_forward(values, carry, parent, checkpoint)
            self.saver.put(self._record(config, checkpoint, metadata, values))
        self._remember(place, checkpoint["id"], checkpoint["channel_versions"],
                       checkpoint["channel_values"], values, splits)
        return _config(thread_id, namespace, checkpoint["id"])

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        if self.saver._async_only:
            return self._on_loop(
                lambda: self.aput_writes(config, writes, task_id, task_path), "put_writes")
        thread_id, namespace, checkpoint_id, items, replace = self._writes(
            config, writes, task_id, task_path)
        if items:
            self.saver.put_writes(thread_id, checkpoint_id, items, namespace=namespace,
                                  replace=replace)

    def delete_thread(self, thread_id: str) -> None:
        if self.saver._async_only:
            return self._on_loop(lambda: self.adelete_thread(thread_id), "delete_thread")
        self.saver.delete_thread(str(thread_id))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (all namespaces, ids and parents kept) and pending write
        of a thread to another thread id; an unknown source copies nothing."""
        if self.saver._async_only:
            return self._on_loop(
                lambda: self.acopy_thread(source_thread_id, target_thread_id), "copy_thread")
        self.saver.copy_thread(str(source_thread_id), str(target_thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata ``run_id`` is one of
        ``run_ids``, in every thread and namespace (one metadata query per thread,
        namespace and run). A checkpoint another surviving checkpoint's ``DeltaChannel``
        history goes through is kept, so no delta channel rebuilds as empty."""
        if self.saver._async_only:
            return self._on_loop(lambda: self.adelete_for_runs(run_ids), "delete_for_runs")
        runs = _run_ids(run_ids)
        if not runs:
            return
        for thread_id in self.saver.list_threads():
            for namespace in self.saver.list_namespaces(thread_id):
                doomed = {_id(c) for run in runs for c in self.saver.list(
                    thread_id, namespace=namespace, metadata={"run_id": run})}
                if doomed:
                    space = builtins.list(self.saver.list(thread_id, namespace=namespace))
                    self._delete(thread_id, namespace, _safe_doomed(space, doomed))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"delete"``: delete the threads. ``"keep_latest"``: keep, per namespace, the
        latest checkpoint and its pending writes, plus the ancestors its ``DeltaChannel``
        values are rebuilt from (back to their nearest snapshot); delete the rest."""
        if self.saver._async_only:
            return self._on_loop(lambda: self.aprune(thread_ids, strategy=strategy), "prune")
        threads = _prune_args(thread_ids, strategy)
        for thread_id in threads:
            if strategy == "delete":
                self.saver.delete_thread(thread_id)
                continue
            for namespace in self.saver.list_namespaces(thread_id):
                space = builtins.list(self.saver.list(thread_id, namespace=namespace))
                self._delete(thread_id, namespace, _prunable(space))

    def _delete(self, thread_id: str, namespace: str, ids: builtins.list[str]) -> None:
        if ids:
            self.saver.delete_checkpoints(thread_id, ids, namespace=namespace)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        if self.saver._async_only:
            return self._on_loop(lambda: self.aget_delta_channel_history(
                config=config, channels=channels), "get_delta_channel_history")
        if not channels:
            return {}
        thread_id, namespace, checkpoint_id = _target(config)
        target = self.saver.get(thread_id, checkpoint_id, namespace=namespace)
        walk = _Walk(target, channels)
        while walk.cursor is not None and walk.remaining:
            page = builtins.list(self.saver.list(thread_id, namespace=namespace,
                                                 before=walk.before, limit=walk.page))
            if not walk.feed(page):
                break
        writes = (self.saver.get_writes(thread_id, walk.visited, namespace=namespace)
                  if walk.visited else {})
        return walk.result(writes, self.serde)

    # -- async API --------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        self._bind_loop()
        thread_id, namespace, checkpoint_id = _target(config)
        found = await self.saver.aget_with_writes(thread_id, checkpoint_id,
                                                  namespace=namespace)
        if found is None:
            return None
        return self._tuple(*found, resumed=True)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        self._bind_loop()
        query = _Query(config, filter, before, limit, self.serde)
        if query.limit == 0:
            return
        if config is None or query.namespace is None:
            tuples: builtins.list[CheckpointTuple] = []
            threads = ([query.thread_id] if config is not None
                       else await self.saver.alist_threads())
            for thread_id in threads:
                for namespace in await self.saver.alist_namespaces(thread_id):
                    tuples += [t async for t in self._alist_space(thread_id, namespace, query)]
            tuples.sort(key=_newest_first)
            for item in itertools.islice(tuples, query.limit):
                yield item
            return
        async for item in self._alist_space(query.thread_id, query.namespace, query):
            yield item

    async def _alist_space(
        self, thread_id: str, namespace: str, query: _Query
    ) -> AsyncIterator[CheckpointTuple]:
        if query.checkpoint_id is not None:
            one = await self.saver.aget_with_writes(thread_id, query.checkpoint_id,
                                                    namespace=namespace)
            found: AsyncIterator[tuple[Checkpoint, builtins.list[PendingWrite]]] = _aiter(
                [one] if one is not None else [])
        else:
            found = self.saver.alist_with_writes(
                thread_id, namespace=namespace, before=query.before,
                limit=query.server_limit, metadata=query.server_filter)
        count = 0
        try:
            async for item, writes in found:
                if query.limit is not None and count >= query.limit:
                    break
                if query.keeps(item):
                    count += 1
                    yield self._tuple(item, writes)
        finally:
            if hasattr(found, "aclose"):
                await found.aclose()

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: LGCheckpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self._bind_loop()
        thread_id, namespace, parent_id = _target(config)
        place = (thread_id, namespace)
        with self.saver._putting_checkpoint(thread_id, namespace, str(checkpoint["id"])):
            values, carry, splits = self._values(place, parent_id, checkpoint, new_versions)
            if carry and parent_id is not None:
                parent = await self.saver.aget(thread_id, parent_id, namespace=namespace)
                _carry_forward(values, carry, parent, checkpoint)
            await self.saver.aput(self._record(config, checkpoint, metadata, values))
        self._remember(place, checkpoint["id"], checkpoint["channel_versions"],
                       checkpoint["channel_values"], values, splits)
        return _config(thread_id, namespace, checkpoint["id"])

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._bind_loop()
        thread_id, namespace, checkpoint_id, items, replace = self._writes(
            config, writes, task_id, task_path)
        if items:
            await self.saver.aput_writes(thread_id, checkpoint_id, items, namespace=namespace,
                                         replace=replace)

    async def adelete_thread(self, thread_id: str) -> None:
        self._bind_loop()
        await self.saver.adelete_thread(str(thread_id))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._bind_loop()
        await self.saver.acopy_thread(str(source_thread_id), str(target_thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._bind_loop()
        runs = _run_ids(run_ids)
        if not runs:
            return
        for thread_id in await self.saver.alist_threads():
            for namespace in await self.saver.alist_namespaces(thread_id):
                doomed: set[str] = set()
                for run in runs:
                    doomed |= {_id(c) async for c in self.saver.alist(
                        thread_id, namespace=namespace, metadata={"run_id": run})}
                if doomed:
                    space = [c async for c in self.saver.alist(thread_id, namespace=namespace)]
                    await self._adelete(thread_id, namespace, _safe_doomed(space, doomed))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._bind_loop()
        threads = _prune_args(thread_ids, strategy)
        for thread_id in threads:
            if strategy == "delete":
                await self.saver.adelete_thread(thread_id)
                continue
            for namespace in await self.saver.alist_namespaces(thread_id):
                space = [c async for c in self.saver.alist(thread_id, namespace=namespace)]
                await self._adelete(thread_id, namespace, _prunable(space))

    async def _adelete(self, thread_id: str, namespace: str, ids: builtins.list[str]) -> None:
        if ids:
            await self.saver.adelete_checkpoints(thread_id, ids, namespace=namespace)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        self._bind_loop()
        if not channels:
            return {}
        thread_id, namespace, checkpoint_id = _target(config)
        target = await self.saver.aget(thread_id, checkpoint_id, namespace=namespace)
        walk = _Walk(target, channels)
        while walk.cursor is not None and walk.remaining:
            page = [c async for c in self.saver.alist(
                thread_id, namespace=namespace, before=walk.before, limit=walk.page)]
            if not walk.feed(page):
                break
        writes = (await self.saver.aget_writes(thread_id, walk.visited, namespace=namespace)
                  if walk.visited else {})
        return walk.result(writes, self.serde)

    # -- conversions --------------------------------------------------------------------
    def _bind_loop(self) -> None:
        """Remember the loop an async-only saver's methods run on (its client is bound to
        it): sync calls from other threads are served there."""
        if self.saver._async_only:
            self._loop = asyncio.get_running_loop()

    def _serving_loop(self, method: str) -> asyncio.AbstractEventLoop:
        name = type(self.saver).__name__
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop.is_closed() or not loop.is_running():
            raise TypeError(
                f"Checkpointer over {name} is async-only and no event loop it works on is "
                f"running, so sync {method}() has nothing to run on: run the graph with its "
                "async methods (ainvoke, astream, aget_state...), call sync methods only "
                "from other threads while that loop runs, or build the Checkpointer over "
                f"the sync twin of {name} (MongoSaver) to use invoke/stream")
        if running is loop:
            raise TypeError(
                f"sync {method}() called on the thread of the event loop that serves this "
                f"Checkpointer over {name}: it would wait forever for the loop it blocks. "
                f"Await the async twin (checkpointer.a{method}(...), graph.ainvoke, "
                "graph.aget_state...) or call it from another thread "
                "(await asyncio.to_thread(...))")
        return loop

    def _on_loop(self, make: Callable[[], Awaitable[_T]], method: str) -> _T:
        """Run an async method on the serving loop from this (other) thread."""
        loop = self._serving_loop(method)
        return _wait(asyncio.run_coroutine_threadsafe(_await(make()), loop), loop, method)

    def _iterate_on_loop(self, items: AsyncIterator[_T]) -> Iterator[_T]:
        loop = self._serving_loop("list")
        try:
            while True:
                future = asyncio.run_coroutine_threadsafe(_next(items), loop)
                try:
                    yield _wait(future, loop, "list")
                except StopAsyncIteration:
                    return
        finally:
            if loop.is_running() and hasattr(items, "aclose"):
                closing = asyncio.run_coroutine_threadsafe(_await(items.aclose()), loop)
                with contextlib.suppress(Exception):
                    _wait(closing, loop, "list")

    def _values(
        self,
        place: tuple[str, str],
        parent_id: str | None,
        checkpoint: LGCheckpoint,
        new_versions: ChannelVersions,
    ) -> tuple[dict[str, tuple[str, bytes]], builtins.list[str],
               dict[str, _lists.Split | None]]:
        """Serialized values of the channels in ``channel_versions``, the unchanged
        channels whose value was not passed (to carry over from the parent), and how the
        list values split into their elements' bytes.

        LangGraph passes every channel's value at every step (InMemorySaver stores only
        the versions that changed), and a chat's message list is most of the state: a
        channel whose version and value object are those this checkpointer last wrote or
        loaded at ``place`` is not serialized again, a list value's leading elements that
        are those it last wrote there are not either (:mod:`._lists`), and an unchanged
        channel not passed is carried from there when that was the parent."""
        given = checkpoint["channel_values"]
        with self._blobs_lock:
            last_id, known = self._blobs.get(place, (None, {}))
        from_parent = parent_id is not None and last_id == parent_id
        values: dict[str, tuple[str, bytes]] = {}
        splits: dict[str, _lists.Split | None] = {}
        carry: builtins.list[str] = []
        for channel, version in checkpoint["channel_versions"].items():
            seen = known.get(channel)
            same = seen is not None and seen[0] == version
            if channel in given:
                value = given[channel]
                if same and seen[1] is value:  # type: ignore[index]
                    values[channel], splits[channel] = seen[2], seen[3]  # type: ignore[index]
                elif (type(value) is list and len(value) >= _lists.MIN_ITEMS
                      and self._split_lists is not False):
                    values[channel] = self._dump_list(value, seen, splits, channel)
                else:
                    values[channel] = _typed(self.serde.dumps_typed(value))
            elif channel not in new_versions:
                if not from_parent:
                    carry.append(channel)
                elif same:  # ``known`` is all the parent holds: nothing else to carry
                    values[channel], splits[channel] = seen[2], seen[3]  # type: ignore[index]
        return values, carry, splits

    def _dump_list(self, value: builtins.list[Any], seen: _Blob | None,
                   splits: dict[str, _lists.Split | None], channel: str
                   ) -> tuple[str, bytes]:
        """A list channel value serialized element by element, reusing the bytes of the
        elements it shares with ``seen`` (the last value written at its place); the
        first list so made is checked against the serializer's own bytes."""
        previous, data = (None, None) if seen is None else (seen[3], seen[2][1])
        made = _lists.dump_list(self.serde.dumps_typed, value, previous, data,
                                self.serde.loads_typed)
        if made is None:
            return _typed(self.serde.dumps_typed(value))
        if self._split_lists is None:
            whole = _typed(self.serde.dumps_typed(value))
            self._split_lists = whole == ("msgpack", made[0])
            if not self._split_lists:
                return whole
        splits[channel] = made[1]
        return ("msgpack", made[0])

    def _remember(self, place: tuple[str, str], checkpoint_id: str,
                  versions: Mapping[str, Any], objects: Mapping[str, Any],
                  values: Mapping[str, tuple[str, bytes]],
                  splits: Mapping[str, _lists.Split | None] | None = None) -> None:
        """Keep the serialized channel values of the checkpoint just written or loaded at
        ``place`` with the objects they came from (see :meth:`_values`)."""
        splits = splits or {}
        entry = {channel: (versions[channel], objects.get(channel, _CARRIED), value,
                           splits.get(channel))
                 for channel, value in values.items() if channel in versions}
        with self._blobs_lock:
            self._blobs.pop(place, None)
            self._blobs[place] = (checkpoint_id, entry)
            while len(self._blobs) > _BLOB_PLACES:
                self._blobs.popitem(last=False)

    def _record(
        self,
        config: RunnableConfig,
        checkpoint: LGCheckpoint,
        metadata: CheckpointMetadata,
        values: dict[str, tuple[str, bytes]],
    ) -> Checkpoint:
        thread_id, namespace, parent_id = _target(config)
        merged = dict(get_checkpoint_metadata(config, metadata))
        queryable: dict[str, Any] = {}
        opaque: dict[str, tuple[str, bytes]] = {}
        for key, value in merged.items():
            plain = _json_like(value)
            if _plain_key(key) and plain is not _NOT_JSON:
                queryable[key] = plain
            else:
                opaque[str(key)] = _typed(self.serde.dumps_typed((key, value)))
        extra = {key: _typed(self.serde.dumps_typed(value))
                 for key, value in checkpoint.items() if key not in _KNOWN_KEYS}
        state: dict[str, Any] = {
            "v": checkpoint["v"],
            "ts": checkpoint["ts"],
            "parent": parent_id,
            "channel_versions": dict(checkpoint["channel_versions"]),
            "versions_seen": {node: dict(seen)
                              for node, seen in checkpoint["versions_seen"].items()},
            "updated_channels": (None if checkpoint.get("updated_channels") is None
                                 else builtins.list(checkpoint["updated_channels"] or ())),
            "extra": extra,
            "metadata": opaque,
            "channel_values": values,
        }
        return Checkpoint(thread_id=thread_id, state=state, namespace=namespace,
                          id=checkpoint["id"], parent_id=parent_id, metadata=queryable)

    def _writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> tuple[str, str, str, builtins.list[PendingWrite], bool]:
        thread_id, namespace, checkpoint_id = _target(config)
        if checkpoint_id is None:
            raise ValueError("put_writes needs config['configurable']['checkpoint_id']")
        items = [
            PendingWrite(task_id, WRITES_IDX_MAP.get(channel, position), channel,
                         _typed(self.serde.dumps_typed(value)), task_path)
            for position, (channel, value) in enumerate(writes)
        ]
        replace = bool(items) and all(channel in WRITES_IDX_MAP for channel, _ in writes)
        return thread_id, namespace, checkpoint_id, items, replace

    def _tuple(self, stored: Checkpoint, writes: Sequence[PendingWrite],
               resumed: bool = False) -> CheckpointTuple:
        """The LangGraph tuple of a stored checkpoint; ``resumed``: the graph is likely to
        continue from it, so its channel values are remembered as serialized (see
        :meth:`_values`), and a list channel's leading elements that are the objects last
        written or loaded at its place are those objects again (see :mod:`._lists`)."""
        state = stored.state
        thread_id, namespace, checkpoint_id = stored.thread_id, stored.namespace, _id(stored)
        versions = dict(state["channel_versions"])
        if not resumed:
            values = {channel: self.serde.loads_typed(value)
                      for channel, value in state["channel_values"].items()}
        else:
            place = (thread_id, namespace)
            typed = {channel: _typed(tuple(value))
                     for channel, value in state["channel_values"].items()}
            known: dict[str, _Blob] = {}
            if self._split_lists:
                with self._blobs_lock:
                    known = self._blobs.get(place, (None, known))[1]
            values, splits = {}, {}
            for channel, (tag, data) in typed.items():
                seen = known.get(channel)
                reused = (_lists.load_list(self.serde.loads_typed, data, seen[3], seen[2][1])
                          if seen is not None and seen[3] is not None and tag == "msgpack"
                          else None)
                if reused is not None:
                    values[channel], splits[channel] = reused
                    continue
                values[channel] = value = self.serde.loads_typed((tag, data))
                if (self._split_lists is not False and tag == "msgpack"
                        and type(value) is list and len(value) >= _lists.MIN_ITEMS
                        and (split := _lists.split_loaded(value, data)) is not None):
                    splits[channel] = split
            self._remember(place, checkpoint_id, versions, values, typed, splits)
        checkpoint: dict[str, Any] = {
            "v": state["v"],
            "id": checkpoint_id,
            "ts": state["ts"],
            "channel_values": values,
            "channel_versions": versions,
            "versions_seen": {node: dict(seen)
                              for node, seen in state["versions_seen"].items()},
            "updated_channels": state["updated_channels"],
        }
        for key, value in state["extra"].items():
            checkpoint[key] = self.serde.loads_typed(value)
        metadata = _metadata(stored, self.serde)
        parent_id = state["parent"]
        return CheckpointTuple(
            config=_config(thread_id, namespace, checkpoint_id),
            checkpoint=cast(LGCheckpoint, checkpoint),
            metadata=cast(CheckpointMetadata, metadata),
            parent_config=_config(thread_id, namespace, parent_id) if parent_id else None,
            pending_writes=[(w.task_id, w.channel, self.serde.loads_typed(w.value))
                            for w in writes],
        )


# -- helpers --------------------------------------------------------------------------
async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


async def _next(items: AsyncIterator[_T]) -> _T:
    return await items.__anext__()


def _wait(future: concurrent.futures.Future[_T], loop: asyncio.AbstractEventLoop,
          method: str) -> _T:
    """The future's result, without hanging if the loop stops before it completes."""
    while True:
        try:
            return future.result(timeout=0.25)
        except concurrent.futures.TimeoutError:
            if not loop.is_running():
                future.cancel()
                raise RuntimeError(f"the event loop serving sync {method}() stopped before "
                                   "the call completed") from None


def _target(config: RunnableConfig) -> tuple[str, str, str | None]:
    configurable = config.get("configurable") or {}
    if "thread_id" not in configurable:
        raise ValueError("config['configurable'] needs a 'thread_id'")
    namespace = configurable.get("checkpoint_ns") or ""
    return str(configurable["thread_id"]), str(namespace), get_checkpoint_id(config) or None


def _config(thread_id: str, namespace: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": namespace,
                             "checkpoint_id": checkpoint_id}}


def _id(stored: Checkpoint) -> str:
    assert stored.id is not None
    return stored.id


def _typed(value: tuple[str, bytes]) -> tuple[str, bytes]:
    tag, data = value
    return (str(tag), bytes(data))


def _newest_first(item: CheckpointTuple) -> tuple[int, ...]:
    """Sort key: greatest checkpoint id first (ids are time-ordered strings)."""
    return tuple(-ord(ch) for ch in item.checkpoint["id"])


async def _aiter(items: Iterable[_T]) -> AsyncIterator[_T]:
    for item in items:
        yield item


def _carry_forward(
    values: dict[str, tuple[str, bytes]],
    carry: Sequence[str],
    parent: Checkpoint | None,
    checkpoint: LGCheckpoint,
) -> None:
    """Take the parent's value of each unchanged channel the caller did not pass, when the
    parent holds it at the same version (what a blob-per-version store would load)."""
    if parent is None:
        return
    stored = parent.state.get("channel_values", {})
    versions = parent.state.get("channel_versions", {})
    for channel in carry:
        same = versions.get(channel) == checkpoint["channel_versions"][channel]
        if same and channel in stored:
            values[channel] = stored[channel]


class _NotJson:
    pass


_NOT_JSON: Any = _NotJson()


def _plain_key(key: object) -> bool:
    return (isinstance(key, str) and bool(key) and not key.startswith("$") and "." not in key
            and "\x00" not in key)


def _json_like(value: Any) -> Any:
    """``value`` as savegame metadata (tuples as lists), or ``_NOT_JSON``."""
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return value if -_MAX_INT64 - 1 <= value <= _MAX_INT64 else _NOT_JSON
    if isinstance(value, (builtins.list, tuple)):
        items = [_json_like(item) for item in value]
        return _NOT_JSON if any(i is _NOT_JSON for i in items) else items
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            plain = _json_like(item)
            if not _plain_key(key) or plain is _NOT_JSON:
                return _NOT_JSON
            out[key] = plain
        return out
    return _NOT_JSON


class _Query:
    """A LangGraph ``list`` query as savegame arguments (plus a client-side rest)."""

    def __init__(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
        serde: SerializerProtocol,
    ) -> None:
        self.serde = serde
        self.thread_id, namespace, self.checkpoint_id = (
            _target(config) if config is not None else ("", "", None))
        given = (config or {}).get("configurable", {}).get("checkpoint_ns")
        #: None: every namespace of the thread (no checkpoint_ns in the config)
        self.namespace: str | None = None if given is None else namespace
        self.before = get_checkpoint_id(before) if before else None
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        self.limit = limit
        self.server_filter: dict[str, Any] | None = None
        self.client_filter: dict[str, Any] = {}
        for key, value in (filter or {}).items():
            plain = _json_like(value)
            if _plain_key(key) and plain is not _NOT_JSON:
                self.server_filter = {**(self.server_filter or {}), key: plain}
            else:
                self.client_filter[key] = value
        self.server_limit = None if self.client_filter else limit

    def keeps(self, item: Checkpoint) -> bool:
        if self.before is not None and _id(item) >= self.before:
            return False
        if self.checkpoint_id is not None and self.server_filter and any(
            item.metadata.get(k, _NOT_JSON) != v for k, v in self.server_filter.items()
        ):
            return False
        if not self.client_filter:
            return True
        metadata = _metadata(item, self.serde)
        return all(k in metadata and metadata[k] == v for k, v in self.client_filter.items())


def _metadata(stored: Checkpoint, serde: SerializerProtocol) -> dict[str, Any]:
    """The LangGraph metadata of a stored checkpoint: queryable fields plus the keys kept
    serialized in the state."""
    metadata: dict[str, Any] = dict(stored.metadata)
    for value in stored.state.get("metadata", {}).values():
        key, item = serde.loads_typed(value)
        metadata[key] = item
    return metadata


def _run_ids(run_ids: Sequence[str]) -> builtins.list[str]:
    if isinstance(run_ids, str):
        raise TypeError("run_ids must be a sequence of run ids, not one str")
    return [str(run) for run in dict.fromkeys(run_ids)]


def _prune_args(thread_ids: Sequence[str], strategy: str) -> builtins.list[str]:
    if strategy not in ("keep_latest", "delete"):
        raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
    if isinstance(thread_ids, str):
        raise TypeError("thread_ids must be a sequence of thread ids, not one str")
    return [str(t) for t in dict.fromkeys(thread_ids)]


def _delta_needs(item: Checkpoint) -> set[str]:
    """Delta channels of ``item`` whose value is rebuilt from ancestors' writes."""
    counters = item.metadata.get(_COUNTERS)
    if not isinstance(counters, Mapping):
        return set()
    state = item.state
    return {channel for channel in counters
            if channel in state["channel_versions"] and channel not in state["channel_values"]}


def _history_ancestors(item: Checkpoint, lookup: Mapping[str, Checkpoint]) -> set[str]:
    """Ancestors of ``item`` (parent chain) that ``get_delta_channel_history`` reads: back
    to the nearest one holding each delta channel's value, or never having written it."""
    needs = _delta_needs(item)
    out: set[str] = set()
    cursor = item.state["parent"]
    while needs and cursor in lookup and cursor not in out:
        ancestor = lookup[cursor]
        out.add(cursor)
        state = ancestor.state
        needs = {c for c in needs if c not in state["channel_values"]
                 and c in state["channel_versions"]}
        cursor = state["parent"]
    return out


def _keep_closure(keep: set[str], lookup: Mapping[str, Checkpoint]) -> set[str]:
    pending = builtins.list(keep)
    while pending:
        item = lookup.get(pending.pop())
        if item is None:
            continue
        for ancestor in _history_ancestors(item, lookup):
            if ancestor not in keep:
                keep.add(ancestor)
                pending.append(ancestor)
    return keep


def _prunable(space: Sequence[Checkpoint]) -> builtins.list[str]:
    """Ids ``prune("keep_latest")`` deletes in one namespace (``space`` newest first)."""
    if not space:
        return []
    lookup = {_id(item): item for item in space}
    keep = _keep_closure({_id(space[0])}, lookup)
    return sorted(set(lookup) - keep)


def _safe_doomed(space: Sequence[Checkpoint], doomed: set[str]) -> builtins.list[str]:
    """``doomed`` less the checkpoints a survivor's delta history goes through."""
    lookup = {_id(item): item for item in space}
    keep = _keep_closure(set(lookup) - doomed, lookup)
    return sorted(doomed - keep)


class _Walk:
    """The parent-chain walk of ``get_delta_channel_history`` over pages of ``list``."""

    def __init__(self, target: Checkpoint | None, channels: Sequence[str]) -> None:
        self.channels = builtins.list(dict.fromkeys(channels))
        self.remaining = set(self.channels)
        self.path: builtins.list[Checkpoint] = []  # ancestors, nearest first
        self.stops: dict[str, int] = {}  # channel -> index in path of its seed
        self.cursor: str | None = target.state["parent"] if target is not None else None
        self.before: str | None = _id(target) if target is not None else None
        steps = 0
        if target is not None:
            counters = target.metadata.get(_COUNTERS)
            if isinstance(counters, Mapping):
                for channel in self.channels:
                    pair = counters.get(channel)
                    if isinstance(pair, (builtins.list, tuple)) and len(pair) == 2:
                        steps = max(steps, int(pair[1]))
        self.page = min(max(steps + 2, 16), 512)

    def feed(self, page: Sequence[Checkpoint]) -> bool:
        """Follow the chain through ``page`` (newest first); False when it ends."""
        for item in page:
            if _id(item) != self.cursor:
                continue
            self.path.append(item)
            values = item.state["channel_values"]
            for channel in builtins.list(self.remaining):
                if channel in values:
                    self.stops[channel] = len(self.path) - 1
                    self.remaining.discard(channel)
            self.cursor = item.state["parent"]
            if self.cursor is None or not self.remaining:
                return False
        if not page or len(page) < self.page:
            return False  # the parent is not stored: the chain ends here
        self.before = _id(page[-1])
        # a parent id past the page's end was not stored: the chain ends there
        return self.cursor is not None and self.cursor < self.before

    @property
    def visited(self) -> builtins.list[str]:
        return [_id(item) for item in self.path]

    def result(
        self, writes: Mapping[str, Sequence[PendingWrite]], serde: SerializerProtocol
    ) -> dict[str, DeltaChannelHistory]:
        out: dict[str, DeltaChannelHistory] = {}
        for channel in self.channels:
            end = self.stops.get(channel, len(self.path) - 1)
            collected: builtins.list[tuple[str, str, Any]] = []
            for item in reversed(self.path[: end + 1]):  # oldest first
                for write in writes.get(_id(item), ()):
                    if write.channel == channel:
                        collected.append((write.task_id, write.channel,
                                          serde.loads_typed(write.value)))
            entry: DeltaChannelHistory = {"writes": collected}
            if channel in self.stops:
                stored = self.path[self.stops[channel]].state["channel_values"][channel]
                entry["seed"] = serde.loads_typed(stored)
            out[channel] = entry
        return out

