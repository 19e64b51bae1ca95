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
  ``sequence_id`` and ``status`` (any string) are its metadata; its ``created_at`` is reported as an
  ISO-8601 string; its state is Burr's own ``State.serialize(**serde_kwargs)`` output,
  read back with ``State.deserialize(..., **serde_kwargs)``. Consecutive rows of an app are
  delta-encoded by the saver, so a growing ``chat_history`` costs about one message a step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import inspect
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, ClassVar, Literal, cast

from savegame.savers._deps import require
from savegame.savers.base import BaseSaver
from savegame.savers.checkpoint import Checkpoint
from savegame.savers.errors import ConflictError, SerializationError
from savegame.savers.registry import saver_factory
from savegame.savers.serde import Serializer, default_registry, imported_class

require("burr", "burr")

from burr.core.persistence import (  # noqa: E402
    AsyncBaseStatePersister,
    BaseStatePersister,
    PersistedStateData,
)
from burr.core.serde import KEY as _SERDE_KEY  # noqa: E402
from burr.core.state import State  # noqa: E402

__all__ = ["AsyncPersister", "Persister", "SaveCallback"]

#: Called after every successful ``save`` with (partition_key, app_id, sequence_id,
#: position). ``AsyncPersister`` awaits it when it returns an awaitable.
SaveCallback = Callable[[str | None, str, int, str], Any]

_SEQUENCE_DIGITS = 20
_MAX_SEQUENCE = 10**_SEQUENCE_DIGITS - 2
#: Suffix of the checkpoint that records a failed row's completion (see ``Persister``).
_COMPLETED_SUFFIX = ".completed"
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
        factory = self.factory
        if factory is None:
            assert self.saver is not None
            factory = _reconnect_recipe(self.saver)
        return {"factory": factory, "initialized": self.initialized}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None, state["factory"])  # type: ignore[misc]
        self.initialized = state["initialized"]


_IN_PROCESS = (
    "a Burr persister over {what} cannot be pickled: its data lives in this process, so "
    "an unpickled copy (in a worker process of a parallel sub-application, say) would "
    "hold a separate, empty store and the apps would not be shared. Use a store other "
    "processes reach (MongoSaver / AsyncMongoSaver over a pymongo client), or pass "
    "factory= (a picklable callable returning the saver) or use from_uri()"
)


def _reconnect_recipe(saver: BaseSaver) -> Callable[[], BaseSaver]:
    """A picklable callable making a saver like ``saver`` over a new client with the same
    address and options (as Burr's MongoDB persister reconnects when unpickled)."""
    try:
        from savegame.savers.mongodb import AsyncMongoSaver, MongoSaver
    except ImportError:  # no pymongo: only in-memory savers exist
        raise TypeError(_IN_PROCESS.format(what=f"an in-memory {type(saver).__name__}")
                        ) from None
    if not isinstance(saver, (MongoSaver, AsyncMongoSaver)):
        raise TypeError(_IN_PROCESS.format(what=f"an in-memory {type(saver).__name__}"))
    client = saver.client
    client_kwargs = getattr(client, "_init_kwargs", None)
    if type(client).__module__.split(".")[0] != "pymongo" or not isinstance(client_kwargs,
                                                                               dict):
        if type(client).__module__.split(".")[0] == "mongomock":
            raise TypeError(_IN_PROCESS.format(what="a mongomock client"))
        raise TypeError(
            f"a Burr persister over a {type(client).__module__}.{type(client).__name__} "
            "client cannot be pickled (only pymongo.MongoClient and AsyncMongoClient can "
            "be reconnected from their address and options): pass factory= (a picklable "
            "callable returning the saver) or use from_uri()")
    serializer = saver.serializer
    if type(serializer) is not Serializer or serializer.registry is not default_registry:
        raise TypeError("a Burr persister over a saver with its own serializer cannot be "
                        "pickled: pass factory= (a picklable callable returning the saver)")
    checkpoints = saver._checkpoints
    options: dict[str, Any] = {
        "database": checkpoints.database.name,
        "prefix": saver.names.checkpoints[: -len("checkpoints")],
        "ttl": saver.ttl, "keep_last": saver.keep_last, "chunk_bytes": saver.chunk_bytes,
        "orphan_grace": saver.orphan_grace, "retries": saver.retries,
        "policy": saver.policy, "cache_bytes": saver._cache.max_bytes,
    }
    if serializer.allow_pickle:
        options["serializer"] = functools.partial(Serializer, allow_pickle=True)
    if checkpoints.write_concern != client.write_concern:
        options["write_concern"] = checkpoints.write_concern
    recipe = functools.partial(_reconnect, isinstance(saver, AsyncMongoSaver),
                               dict(client_kwargs), options)
    try:
        pickle.dumps(recipe)
    except Exception as exc:
        raise TypeError(
            f"a Burr persister over {type(saver).__name__} cannot be pickled: the client's "
            f"options do not pickle ({exc}); pass factory= (a picklable callable returning "
            "the saver)") from exc
    return recipe


def _reconnect(is_async: bool, client_kwargs: dict[str, Any], options: dict[str, Any]
               ) -> BaseSaver:
    """A new client from ``client_kwargs`` and a saver over it that owns it."""
    import pymongo

    from savegame.savers.mongodb import AsyncMongoSaver, MongoSaver

    options = dict(options)
    make_serializer = options.pop("serializer", None)
    if make_serializer is not None:
        options["serializer"] = make_serializer()
    if is_async:
        return AsyncMongoSaver(pymongo.AsyncMongoClient(**client_kwargs), owns_client=True,
                               **options)
    return MongoSaver(pymongo.MongoClient(**client_kwargs), owns_client=True, **options)


def _ready_on_first_use(saver: BaseSaver) -> bool:
    """True for savers that need no setup (in memory) and for savers that set themselves
    up on their first operation (the MongoDB savers create their indexes then, the file
    store its directory): every savegame saver says so (``BaseSaver.ready_on_first_use``)."""
    needs_setup = hasattr(saver, "setup") or hasattr(saver, "asetup")
    return not needs_setup or bool(getattr(saver, "ready_on_first_use", False))


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
        allow_pickle: bool = False,
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
        self.allow_pickle = bool(allow_pickle)

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
        other.allow_pickle = self.allow_pickle

    def _is_initialized(self, saver: BaseSaver) -> bool:
        return self._store.initialized or _ready_on_first_use(saver) or bool(
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
        if not isinstance(status, str):
            raise TypeError(f"status must be a str, got {type(status).__qualname__}")
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
        if app_id is None:  # the partition's latest row, as Burr's SQLite persister
            apps = yield from self._apps_flow(partition_key)
            if not apps:
                return None
            _, app_id, found = apps[0]
            if sequence_id is None:
                return self._row(partition_key, app_id, found)
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
        where = (f"partition_key={partition_key!r}, app_id={app_id!r}, "
                 f"sequence_id={found.metadata.get('sequence_id')!r}")
        state = dict(found.state)
        kwargs = _load_kwargs(state, self.serde_kwargs, self.allow_pickle, where)
        return PersistedStateData(
            partition_key=cast(str, partition_key),
            app_id=app_id,
            sequence_id=int(found.metadata["sequence_id"]),
            position=found.node_id or "",
            state=State.deserialize(state, **kwargs),
            created_at=created_at,
            status=str(found.metadata["status"]),
        )

    def _apps_flow(self, partition_key: str | None) -> _Flow:
        """(created_at, app_id, latest row) of every app of the partition, newest first:
        the app whose latest row was saved last comes first (ties by app id)."""
        prefix = self._partition_prefix(_check_partition_key(partition_key))
        threads = yield _Op("list_threads", (), {"prefix": prefix})
        apps: list[tuple[dt.datetime, str, Checkpoint]] = []
        for thread in threads:
            rows = yield _Op("list", (thread,), {"limit": 1})  # the highest sequence id
            latest = rows[0] if rows else None
            if latest is not None:
                when = latest.created_at or dt.datetime.min.replace(tzinfo=dt.timezone.utc)
                apps.append((when, _unescape(thread[len(prefix):]), latest))
        apps.sort(key=lambda app: app[1])
        apps.sort(key=lambda app: app[0], reverse=True)
        return apps

    def _list_flow(self, partition_key: str | None) -> _Flow:
        apps = yield from self._apps_flow(partition_key)
        return [app_id for _, app_id, _ in apps]


class Persister(_Common, BaseStatePersister):
    """A Burr state persister over a sync savegame saver.

    ``Persister(saver)`` uses the saver given (the caller closes it);
    ``Persister(factory=make_saver)`` creates the saver on first use and owns it:
    ``cleanup()`` (or leaving a ``with`` block) closes it, and the next use reconnects.
    ``from_uri`` makes one over ``MongoSaver``. ``copy()`` shares the saver (savers are
    thread-safe), as Burr's parallel sub-apps need.

    **Pickling** (Burr pickles persisters for sub-applications run in other processes):
    a persister with a factory pickles the factory; one over a ``MongoSaver`` /
    ``AsyncMongoSaver`` built on a pymongo client pickles the client's address and options
    (credentials included: treat the pickle as a secret) and the saver's options, and the
    unpickled persister connects a client of its own on first use (closed by
    ``cleanup()``), as Burr's MongoDB persister does. A persister over a store that lives
    in this process (``MemorySaver``, a mongomock client) refuses to pickle with
    ``TypeError`` saying why: the copy would hold a separate, empty store.

    - ``serde_kwargs``: passed to ``State.serialize`` / ``State.deserialize``;
    - ``on_save``: called after every successful save with (partition_key, app_id,
      sequence_id, position);
    - ``thread_prefix``: the start of every thread id this persister writes;
    - ``allow_pickle``: let Burr unpickle rows written for classes given to its
      ``register_type_to_pickle`` (refused by default: unpickling runs code chosen by
      whoever wrote the row).

    **Loading safely.** A row is loaded with Burr's ``State.deserialize``; a pydantic model
    in it loads when the program has already imported its class (a ``BaseModel``
    subclass, found without importing anything) or when its module is in the caller's
    allowlist (``serde_kwargs={"allowlist": [...]}`` or Burr's ``set_allowlist``, which
    let Burr import it); any other class named by a row, and a pickled value without
    ``allow_pickle``, raise :class:`~savegame.savers.SerializationError` naming the row and
    the key path.

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

    ``is_initialized()`` is true for every savegame saver: in-memory savers need no setup
    and the MongoDB savers set themselves up (create their indexes, idempotently) on
    their first operation, so a new process over a store another process set up, or over
    a new one, passes Burr's builder check without calling ``initialize()``.
    ``initialize()`` still creates the indexes eagerly (idempotent).

    **Listing and loading like Burr's SQLite persister:** any ``status`` string is stored
    and returned as given; ``list_app_ids(partition_key)`` returns the partition's apps
    newest first (by the time their latest row was saved; one read per app);
    ``load(partition_key, None)`` returns the latest row of the partition's newest app
    (``None`` for an empty partition).
    """

    def __init__(
        self,
        saver: BaseSaver | str | None = None,
        *,
        factory: Callable[[], BaseSaver] | None = None,
        serde_kwargs: Mapping[str, Any] | None = None,
        on_save: SaveCallback | None = None,
        thread_prefix: str = "burr:",
        allow_pickle: bool = False,
    ):
        if saver is not None and getattr(saver, "_async_only", False):
            raise TypeError(f"{type(saver).__name__} is async-only: use AsyncPersister")
        super().__init__(saver, factory=factory, serde_kwargs=serde_kwargs, on_save=on_save,
                         thread_prefix=thread_prefix, allow_pickle=allow_pickle)

    @classmethod
    def from_uri(cls, uri: str, *, thread_prefix: str = "burr:",
                 serde_kwargs: Mapping[str, Any] | None = None,
                 on_save: SaveCallback | None = None, allow_pickle: bool = False,
                 **saver_options: Any) -> Persister:
        """A picklable persister over a ``MongoSaver.from_uri(uri, **saver_options)`` it
        creates on first use and owns."""
        from savegame.savers.mongodb import MongoSaver

        return cls(factory=functools.partial(MongoSaver.from_uri, uri, **saver_options),
                   thread_prefix=thread_prefix, serde_kwargs=serde_kwargs, on_save=on_save,
                   allow_pickle=allow_pickle)

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
                 on_save: SaveCallback | None = None, allow_pickle: bool = False,
                 **saver_options: Any) -> AsyncPersister:
        """A picklable persister over an ``AsyncMongoSaver.from_uri(uri, **saver_options)``
        it creates on first use and owns."""
        from savegame.savers.mongodb import AsyncMongoSaver

        return cls(factory=functools.partial(AsyncMongoSaver.from_uri, uri, **saver_options),
                   thread_prefix=thread_prefix, serde_kwargs=serde_kwargs, on_save=on_save,
                   allow_pickle=allow_pickle)

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


def _load_kwargs(state: Mapping[str, Any], serde_kwargs: dict[str, Any], allow_pickle: bool,
                 where: str) -> dict[str, Any]:
    """The keyword arguments for ``State.deserialize`` of one stored row, after checking
    that Burr will neither import a module nor unpickle anything the caller did not allow.

    Burr's deserializers dispatch on the ``__burr_serde__`` key of any dict in the state:

    - ``"pydantic"`` rows name their class; Burr's plugin imports the module named there
      unless it is outside an allowlist. The allowlist given here is the caller's
      (``serde_kwargs={"allowlist": [...]}`` or Burr's ``set_allowlist``) plus the module of
      every class named in this row that the program **has already imported** and that
      is a ``pydantic.BaseModel`` subclass (resolved by ``imported_class``: no import, no
      ``getattr``). Importing an already loaded module runs nothing, so such classes load
      with no configuration. Any other named class raises ``SerializationError`` naming
      the row and the key path; nothing is imported.
    - ``"pickle"`` rows (written for classes given to Burr's ``register_type_to_pickle``)
      are unpickled by Burr, which runs whatever the bytes say: refused with
      ``SerializationError`` unless the persister was built with ``allow_pickle=True``.
    """
    user = serde_kwargs.get("allowlist")
    if user is None:
        pydantic_serde: Any
        try:
            from burr.integrations.serde import pydantic as pydantic_serde
        except ImportError:  # no pydantic: Burr's plugin is not registered
            pydantic_serde = None
        user = getattr(pydantic_serde, "_global_allowlist", None)
    allowlist: list[str] = list(user or [])
    for path, tagged in _tagged(state, "state"):
        kind = tagged[_SERDE_KEY]
        if kind == "pickle" and not allow_pickle:
            raise SerializationError(
                f"cannot load {where}: {path} is a pickled value (Burr's "
                "register_type_to_pickle), and unpickling runs code chosen by whoever "
                "wrote the row; build the persister with allow_pickle=True if you trust "
                "the store", path=path, type_name="pickle")
        if kind != "pydantic":
            continue
        name = tagged.get("__pydantic_class")
        module = name.rsplit(".", 1)[0] if isinstance(name, str) else ""
        if any(module == allowed or module.startswith(allowed + ".") for allowed in allowlist):
            continue
        if isinstance(name, str) and imported_class(name, _pydantic_base()) is not None:
            allowlist.append(module)
            continue
        raise SerializationError(
            f"cannot load {where}: {path} names pydantic class {name!r}, which is not a "
            "pydantic model this program has imported; import it before loading, or allow "
            "its module with serde_kwargs={'allowlist': [...]} (Burr then imports it)",
            path=path, type_name=name if isinstance(name, str) else None)
    return {**serde_kwargs, "allowlist": allowlist}


def _pydantic_base() -> type:
    try:
        import pydantic
    except ImportError:  # no pydantic: no model can be loaded
        return _NoModel
    return pydantic.BaseModel


class _NoModel:
    pass


def _tagged(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every dict under ``value`` that carries Burr's ``__burr_serde__`` key, with its key
    path (the whole tree: Burr's deserializers may recurse into what they rebuild)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            if _SERDE_KEY in item:
                yield where, item
            stack.extend((f"{where}[{key!r}]", child) for key, child in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
