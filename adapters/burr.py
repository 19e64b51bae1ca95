"""Apache Burr persisters over savegame savers.

``Persister(saver)`` is a :class:`burr.core.persistence.BaseStatePersister` over a sync saver
(``MemorySaver``, ``MongoSaver``, ...) or a store URI (opened on first use and owned);
``AsyncPersister(saver)`` is an
:class:`~burr.core.persistence.AsyncBaseStatePersister` over any saver through its
``a``-prefixed methods (``AsyncMongoSaver`` natively; blocking savers run their IO in a
worker thread), so it never blocks the event loop.

Mapping onto savegame:

- one savegame **thread per (partition_key, app_id)**, with id
  ``<thread_prefix><partition_key>:<app_id>`` (default prefix ``"burr:"``) where ``%``,
  ``:`` and NUL in either part are percent-escaped. An app's thread id therefore starts with
  ``<thread_prefix><partition_key>:`` and with no other partition's prefix, which makes
  ``list_app_ids(partition_key)`` a ``list_threads(prefix=...)`` call (an index range on
  MongoDB, not a scan);
- ``partition_key=None`` is the same partition as ``""`` in ``save``, ``load`` and
  ``list_app_ids`` (as in Burr's SQLite and PostgreSQL persisters). A loaded row reports the
  partition key the caller passed;
- one **checkpoint per saved row**, id ``f"{sequence_id:020d}"``: zero-padded, so the
  thread's latest checkpoint (greatest id) is the row with the highest ``sequence_id``,
  whatever the order rows were saved in. Sequence ids need not start at 0 or be dense;
- ``position`` is the checkpoint's ``node_id``; ``partition_key``, ``app_id``,
  ``sequence_id`` and ``status`` are its metadata; its ``created_at`` is reported as an
  ISO-8601 string; its state is Burr's own ``State.serialize(**serde_kwargs)`` output,
  read back with ``State.deserialize(..., **serde_kwargs)``. Consecutive rows of an app are
  delta-encoded by the saver, so a growing ``chat_history`` costs about one message a step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from typing import Any, ClassVar, Literal, cast

from savegame.savers._deps import require
from savegame.savers.base import BaseSaver
from savegame.savers.checkpoint import Checkpoint
from savegame.savers.errors import ConflictError
from savegame.savers.registry import saver_factory

require("burr", "burr")

from burr.core.persistence import (  # noqa: E402
    AsyncBaseStatePersister,
    BaseStatePersister,
    PersistedStateData,
)
from burr.core.state import State  # noqa: E402

__all__ = ["AsyncPersister", "Persister", "SaveCallback"]

#: Called after every successful ``save`` with (partition_key, app_id, sequence_id,
#: position). ``AsyncPersister`` awaits it when it returns an awaitable.
SaveCallback = Callable[[str | None, str, int, str], Any]

_SEQUENCE_DIGITS = 20
_MAX_SEQUENCE = 10**_SEQUENCE_DIGITS - 2
#: Suffix of the checkpoint that records a failed row's completion (see ``Persister``).
_COMPLETED_SUFFIX = ".completed"
_STATUSES = ("completed", "failed")
#: Apps whose last saved row a persister remembers (the next row's parent), most recent.
_REMEMBERED_APPS = 4096
_ESCAPES = {"%": "%25", ":": "%3A", "\x00": "%00"}


def _escape(value: str) -> str:
    return "".join(_ESCAPES.get(char, char) for char in value)


def _unescape(value: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(value):
        if value[index] == "%":
            out.append(chr(int(value[index + 1:index + 3], 16)))
            index += 3
        else:
            out.append(value[index])
            index += 1
    return "".join(out)


def _checkpoint_id(sequence_id: int) -> str:
    return f"{sequence_id:0{_SEQUENCE_DIGITS}d}"


def _check_sequence_id(sequence_id: object) -> int:
    if not isinstance(sequence_id, int) or isinstance(sequence_id, bool):
        raise TypeError(f"sequence_id must be an int, got {type(sequence_id).__qualname__}")
    if not 0 <= sequence_id <= _MAX_SEQUENCE:
        raise ValueError(f"sequence_id must be between 0 and {_MAX_SEQUENCE}, got {sequence_id}")
    return sequence_id


def _check_partition_key(partition_key: object) -> str:
    if partition_key is None:
        return ""
    if not isinstance(partition_key, str):
        raise TypeError(
            f"partition_key must be a str or None, got {type(partition_key).__qualname__}"
        )
    return partition_key


def _check_app_id(app_id: object) -> str:
    if not isinstance(app_id, str):
        raise TypeError(f"app_id must be a str, got {type(app_id).__qualname__}")
    if not app_id:
        raise ValueError("app_id must not be empty")
    return app_id


# -- IO operations, run by a sync or an async driver -------------------------------------
@dataclasses.dataclass(frozen=True)
class _Op:
    """One saver call a flow needs; the sync driver calls ``method``, the async driver
    awaits ``"a" + method``."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def run(self, saver: BaseSaver) -> Any:
        result = getattr(saver, self.method)(*self.args, **self.kwargs)
        return list(result) if self.method == "list" else result

    async def arun(self, saver: BaseSaver) -> Any:
        if self.method == "list":
            return [item async for item in saver.alist(*self.args, **self.kwargs)]
        return await getattr(saver, "a" + self.method)(*self.args, **self.kwargs)


_Flow = Generator[_Op, Any, Any]


def _drive(saver: BaseSaver, flow: _Flow) -> Any:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = op.run(saver), None
        except Exception as exc:
            value, error = None, exc


async def _adrive(saver: BaseSaver, flow: _Flow) -> Any:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = await op.arun(saver), None
        except Exception as exc:
            value, error = None, exc


class _Store:
    """The saver a persister and its copies share, or the recipe to (re)create it.

    A saver passed in is the caller's: the persister never closes it. A saver made by
    ``factory`` is owned: ``cleanup()`` closes it and the next use makes a new one, which is
    also what happens after unpickling (only the factory is pickled).
    """

    def __init__(self, saver: BaseSaver | None, factory: Callable[[], BaseSaver] | None):
        if saver is None and factory is None:
            raise TypeError("pass a saver, a factory (a callable returning a saver), or both")
        if saver is not None and not isinstance(saver, BaseSaver):
            raise TypeError(f"saver must be a savegame saver, got {type(saver).__qualname__}")
        if factory is not None and not callable(factory):
            raise TypeError("factory must be a callable returning a saver")
        self.saver = saver
        self.factory = factory
        self.owned = False
        self.initialized = False
        self.lock = threading.Lock()
        #: thread id -> (sequence id, checkpoint id) of the row saved last through this
        #: store: the next row's parent, read by id instead of as the thread's latest.
        self.last: OrderedDict[str, tuple[int, str]] = OrderedDict()

    def remember(self, thread_id: str, sequence_id: int, checkpoint_id: str) -> None:
        with self.lock:
            self.last[thread_id] = (sequence_id, checkpoint_id)
            self.last.move_to_end(thread_id)
            while len(self.last) > _REMEMBERED_APPS:
                self.last.popitem(last=False)

    def get(self) -> BaseSaver:
        with self.lock:
            if self.saver is None:
                assert self.factory is not None
                saver = self.factory()
                if not isinstance(saver, BaseSaver):
                    raise TypeError(
                        f"factory returned {type(saver).__qualname__}, not a savegame saver"
                    )
                self.saver, self.owned = saver, True
            return self.saver

    def take_owned(self) -> BaseSaver | None:
        """Detach the saver if this store made it (to be closed by the caller)."""
        with self.lock:
            if not self.owned or self.saver is None:
                return None
            saver, self.saver, self.owned = self.saver, None, False
            return saver

    def __getstate__(self) -> dict[str, Any]:
        if self.factory is None:
            raise TypeError(
                "a Burr persister built over a saver object cannot be pickled (savers hold "
                "connections and locks): pass factory= (a picklable callable returning the "
                "saver) or use from_uri(), and the unpickled persister reconnects lazily"
            )
        return {"factory": self.factory, "initialized": self.initialized}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None, state["factory"])  # type: ignore[misc]
        self.initialized = state["initialized"]


def _needs_setup(saver: BaseSaver) -> bool:
    return hasattr(saver, "setup") or hasattr(saver, "asetup")


class _Common:
    """What the sync and async persisters share: the mapping onto savegame, as flows."""

    #: open a store URI with ``open_async_saver`` (AsyncPersister) or ``open_saver``
    _async_uri: ClassVar[bool] = False

    def __init__(
        self,
        saver: BaseSaver | str | None = None,
        *,
        factory: Callable[[], BaseSaver] | None = None,
        serde_kwargs: Mapping[str, Any] | None = None,
        on_save: SaveCallback | None = None,
        thread_prefix: str = "burr:",
    ):
        if isinstance(saver, str):  # a store URI: opened on first use, owned, picklable
            if factory is not None:
                raise TypeError("pass a store URI or a factory, not both")
            factory = saver_factory(saver, asynchronous=self._async_uri)
            saver = None
        if not isinstance(thread_prefix, str) or not thread_prefix:
            raise ValueError("thread_prefix must be a non-empty str")
        if on_save is not None and not callable(on_save):
            raise TypeError("on_save must be callable")
        self._store = _Store(saver, factory)
        self.serde_kwargs: dict[str, Any] = dict(serde_kwargs or {})
        self.on_save = on_save
        self.thread_prefix = thread_prefix

    @property
    def saver(self) -> BaseSaver:
        """The saver in use (created by the factory on first use when needed)."""
        return self._store.get()

    def set_serde_kwargs(self, serde_kwargs: Mapping[str, Any]) -> None:
        """Keyword arguments for ``State.serialize`` / ``State.deserialize``."""
        self.serde_kwargs = dict(serde_kwargs)

    def thread_id(self, partition_key: str | None, app_id: str) -> str:
        """The savegame thread holding the rows of ``(partition_key, app_id)``."""
        pk = _check_partition_key(partition_key)
        return f"{self._partition_prefix(pk)}{_escape(_check_app_id(app_id))}"

    def _partition_prefix(self, partition_key: str) -> str:
        return f"{self.thread_prefix}{_escape(partition_key)}:"

    def _copy_into(self, other: _Common) -> None:
        other._store = self._store
        other.serde_kwargs = dict(self.serde_kwargs)
        other.on_save = self.on_save
        other.thread_prefix = self.thread_prefix

    def _is_initialized(self, saver: BaseSaver) -> bool:
        return self._store.initialized or not _needs_setup(saver) or bool(
            getattr(saver, "_ready", False))

    # -- flows -------------------------------------------------------------------------
    def _save_flow(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State[Any],
        status: str,
    ) -> _Flow:
        thread_id = self.thread_id(partition_key, app_id)
        sequence_id = _check_sequence_id(sequence_id)
        if not isinstance(position, str):
            raise TypeError(f"position must be a str, got {type(position).__qualname__}")
        if status not in _STATUSES:
            raise ValueError(f"status must be 'completed' or 'failed', got {status!r}")
        checkpoint_id = _checkpoint_id(sequence_id)
        checkpoint = Checkpoint(
            thread_id=thread_id,
            state=state.serialize(**self.serde_kwargs),
            id=checkpoint_id,
            node_id=position,
            metadata={"partition_key": _check_partition_key(partition_key), "app_id": app_id,
                      "sequence_id": sequence_id, "status": status},
        )
        where = (f"partition_key={partition_key!r}, app_id={app_id!r}, "
                 f"sequence_id={sequence_id}")
        last = self._store.last.get(thread_id)
        if last is not None and last[0] < sequence_id:
            try:  # the usual step: the row saved last here is the parent (a read by id)
                yield _Op("put", (dataclasses.replace(checkpoint, parent_id=last[1]),))
                self._store.remember(thread_id, sequence_id, checkpoint_id)
                return
            except ConflictError:
                pass  # the id exists: compare it below, whatever its parent
        try:
            yield _Op("put", (checkpoint,))
            self._store.remember(thread_id, sequence_id, checkpoint_id)
            return
        except ConflictError as exc:
            if status != "completed":
                raise ConflictError(
                    f"{where} is already saved with different content") from exc
        # A completed row for a sequence id saved as failed: the failed action was re-run
        # (e.g. from the row before it) and completed. Checkpoint ids are immutable, so the
        # completion is a second checkpoint whose id sorts right after the failed one.
        existing = yield _Op("get", (thread_id, checkpoint_id))
        if (existing is None or existing.metadata.get("status") != "failed"
                or existing.node_id != position):
            raise ConflictError(f"{where} is already saved with different content (only a "
                                "failed row may be completed later, by the same action)")
        try:
            yield _Op("put", (dataclasses.replace(
                checkpoint, id=checkpoint_id + _COMPLETED_SUFFIX),))
        except ConflictError as exc:
            raise ConflictError(
                f"{where} was already completed with different content") from exc

    def _load_flow(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None
    ) -> _Flow:
        if app_id is None:  # Burr's Mongo and in-memory persisters: nothing to load
            _check_partition_key(partition_key)
            return None
        thread_id = self.thread_id(partition_key, app_id)
        if sequence_id is None:  # the highest sequence id (not the last saved): the
            items = yield _Op("list", (thread_id,), {"limit": 1})  # greatest checkpoint id
            found = items[0] if items else None
        else:
            sequence_id = _check_sequence_id(sequence_id)
            # The greatest id below the next sequence id: the row, or its completion.
            items = yield _Op("list", (thread_id,), {
                "before": _checkpoint_id(sequence_id + 1), "limit": 1})
            found = items[0] if items else None
            if found is not None and found.metadata.get("sequence_id") != sequence_id:
                found = None
        if found is None:
            return None
        return self._row(partition_key, app_id, found)

    def _row(self, partition_key: str | None, app_id: str, found: Checkpoint) -> PersistedStateData:
        created_at = found.created_at.isoformat() if found.created_at is not None else ""
        return PersistedStateData(
            partition_key=cast(str, partition_key),
            app_id=app_id,
            sequence_id=int(found.metadata["sequence_id"]),
            position=found.node_id or "",
            state=State.deserialize(dict(found.state), **_load_kwargs(self.serde_kwargs)),
            created_at=created_at,
            status=str(found.metadata["status"]),
        )

    def _list_flow(self, partition_key: str | None) -> _Flow:
        prefix = self._partition_prefix(_check_partition_key(partition_key))
        threads = yield _Op("list_threads", (), {"prefix": prefix})
        return [_unescape(thread[len(prefix):]) for thread in threads]


class Persister(_Common, BaseStatePersister):
    """A Burr state persister over a sync savegame saver.

    ``Persister(saver)`` uses the saver given (the caller closes it);
    ``Persister(factory=make_saver)`` creates the saver on first use and owns it:
    ``cleanup()`` (or leaving a ``with`` block) closes it, and the next use reconnects.
    Only persisters with a factory pickle (the factory is pickled, never the saver; the
    unpickled persister reconnects lazily). ``from_uri`` makes one over ``MongoSaver``.
    ``copy()`` shares the saver (savers are thread-safe), as Burr's parallel sub-apps need.

    - ``serde_kwargs``: passed to ``State.serialize`` / ``State.deserialize``;
    - ``on_save``: called after every successful save with (partition_key, app_id,
      sequence_id, position);
    - ``thread_prefix``: the start of every thread id this persister writes.

    **Saving twice.** Saving the same (partition_key, app_id, sequence_id) again with the
    same position, status and state is a no-op, so a persister registered both as a
    persister and as a hook neither fails nor duplicates a row. Any other content raises
    :class:`~savegame.savers.ConflictError`, with one exception: a row saved as
    ``failed`` may later be saved as ``completed`` by the same action (position). That is
    what re-running a failed step from the row before it produces, and refusing it would
    leave the app unable to record the retry that succeeded; the reverse (completed, then
    failed) or a different action is refused, as a real conflict. Checkpoint ids are
    immutable, so the completion is stored as a second checkpoint, id
    ``<sequence id>.completed``, which sorts right after the failed row and before the next
    sequence id: ``load`` at that sequence id (or the latest) returns the completed row,
    and the failed one stays in the saver's history.

    ``is_initialized()`` is true once ``initialize()`` ran (on this persister, a copy, or
    before pickling), once the saver has set itself up on first use, or when the saver
    needs no setup (in-memory savers). ``initialize()`` creates the saver's indexes
    (idempotent; MongoDB). Burr's builder refuses an uninitialized persister, so call
    ``initialize()`` once, as with Burr's SQLite persister.

    ``load(partition_key, None)`` returns ``None`` (as Burr's MongoDB and in-memory
    persisters do).
    """

    def __init__(
        self,
        saver: BaseSaver | str | None = None,
        *,
        factory: Callable[[], BaseSaver] | None = None,
        serde_kwargs: Mapping[str, Any] | None = None,
        on_save: SaveCallback | None = None,
        thread_prefix: str = "burr:",
    ):
        if saver is not None and getattr(saver, "_async_only", False):
            raise TypeError(f"{type(saver).__name__} is async-only: use AsyncPersister")
        super().__init__(saver, factory=factory, serde_kwargs=serde_kwargs, on_save=on_save,
                         thread_prefix=thread_prefix)

    @classmethod
    def from_uri(cls, uri: str, *, thread_prefix: str = "burr:",
                 serde_kwargs: Mapping[str, Any] | None = None,
                 on_save: SaveCallback | None = None, **saver_options: Any) -> Persister:
        """A picklable persister over a ``MongoSaver.from_uri(uri, **saver_options)`` it
        creates on first use and owns."""
        import functools

        from savegame.savers.mongodb import MongoSaver

        return cls(factory=functools.partial(MongoSaver.from_uri, uri, **saver_options),
                   thread_prefix=thread_prefix, serde_kwargs=serde_kwargs, on_save=on_save)

    # -- Burr's interface --------------------------------------------------------------
    def initialize(self) -> None:
        saver = self.saver
        setup = getattr(saver, "setup", None)
        if setup is not None:
            setup()
        self._store.initialized = True

    def is_initialized(self) -> bool:
        return self._is_initialized(self.saver)

    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State[Any],
        status: Literal["completed", "failed"],
        **kwargs: Any,
    ) -> None:
        _drive(self.saver, self._save_flow(partition_key, app_id, sequence_id, position,
                                           state, status))
        if self.on_save is not None:
            self.on_save(partition_key, app_id, sequence_id, position)

    def load(
        self,
        partition_key: str | None,
        app_id: str | None,
        sequence_id: int | None = None,
        **kwargs: Any,
    ) -> PersistedStateData | None:
        return cast("PersistedStateData | None",
                    _drive(self.saver, self._load_flow(partition_key, app_id, sequence_id)))

    def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        return cast("list[str]", _drive(self.saver, self._list_flow(partition_key)))

    # -- lifecycle ---------------------------------------------------------------------
    def copy(self) -> Persister:
        other = Persister.__new__(Persister)
        self._copy_into(other)
        return other

    def cleanup(self) -> None:
        """Close the saver if this persister created it (a later use reconnects)."""
        saver = self._store.take_owned()
        if saver is not None:
            saver.close()

    def __enter__(self) -> Persister:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class AsyncPersister(_Common, AsyncBaseStatePersister):
    """A Burr async state persister over any savegame saver, through its ``a``-methods.

    Same mapping, options and save semantics as :class:`Persister` (read its docstring):
    identical re-saves are no-ops, a failed row may later be completed by the same action,
    anything else is a :class:`~savegame.savers.ConflictError`. Over ``AsyncMongoSaver``
    every call is a native coroutine; over a blocking saver (``MongoSaver``) the IO runs in
    a worker thread. ``on_save`` may be a plain function or a coroutine function.
    ``cleanup()`` is a coroutine; use ``async with`` for the context manager.
    """

    _async_uri = True

    @classmethod
    def from_uri(cls, uri: str, *, thread_prefix: str = "burr:",
                 serde_kwargs: Mapping[str, Any] | None = None,
                 on_save: SaveCallback | None = None, **saver_options: Any) -> AsyncPersister:
        """A picklable persister over an ``AsyncMongoSaver.from_uri(uri, **saver_options)``
        it creates on first use and owns."""
        import functools

        from savegame.savers.mongodb import AsyncMongoSaver

        return cls(factory=functools.partial(AsyncMongoSaver.from_uri, uri, **saver_options),
                   thread_prefix=thread_prefix, serde_kwargs=serde_kwargs, on_save=on_save)

    # -- Burr's interface --------------------------------------------------------------
    async def initialize(self) -> None:
        saver = self.saver
        asetup = getattr(saver, "asetup", None)
        if asetup is not None:
            await asetup()
        elif getattr(saver, "setup", None) is not None:
            await asyncio.to_thread(saver.setup)  # type: ignore[attr-defined]
        self._store.initialized = True

    async def is_initialized(self) -> bool:
        return self._is_initialized(self.saver)

    async def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State[Any],
        status: Literal["completed", "failed"],
        **kwargs: Any,
    ) -> None:
        await _adrive(self.saver, self._save_flow(partition_key, app_id, sequence_id,
                                                  position, state, status))
        if self.on_save is not None:
            result = self.on_save(partition_key, app_id, sequence_id, position)
            if inspect.isawaitable(result):
                await result

    async def load(
        self,
        partition_key: str | None,
        app_id: str | None,
        sequence_id: int | None = None,
        **kwargs: Any,
    ) -> PersistedStateData | None:
        flow = self._load_flow(partition_key, app_id, sequence_id)
        return cast("PersistedStateData | None", await _adrive(self.saver, flow))

    async def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        return cast("list[str]", await _adrive(self.saver, self._list_flow(partition_key)))

    # -- lifecycle ---------------------------------------------------------------------
    def copy(self) -> AsyncPersister:
        other = AsyncPersister.__new__(AsyncPersister)
        self._copy_into(other)
        return other

    async def cleanup(self) -> None:
        """Close the saver if this persister created it (a later use reconnects)."""
        saver = self._store.take_owned()
        if saver is not None:
            await saver.aclose()

    async def __aenter__(self) -> AsyncPersister:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cleanup()


def _load_kwargs(serde_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Deserialization never imports a module named by stored data unless allowed: Burr's
    pydantic plugin imports the class a row names, so without an allowlist of the caller's
    (``serde_kwargs={"allowlist": [...]}`` or Burr's ``set_allowlist``) it gets an empty one,
    and a row holding a pydantic model fails with Burr's "not in the allowlist" error."""
    if "allowlist" in serde_kwargs:
        return serde_kwargs
    try:
        from burr.integrations.serde import pydantic as pydantic_serde
    except ImportError:  # no pydantic: Burr's plugin is not registered, nothing to guard
        return serde_kwargs
    global_allowlist = getattr(pydantic_serde, "_global_allowlist", None)
    return {**serde_kwargs, "allowlist": [] if global_allowlist is None else global_allowlist}

