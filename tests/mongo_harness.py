"""Test harness of the MongoDB savers: savers on every tier, and record tampering.

Imported as a plain module (``tests/`` is on ``sys.path`` through ``tests/conftest.py``).
mongomock gaps are worked around here, never in the product.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import pytest

DATABASE = "savegame_test"
_counter = itertools.count()
_sync_clients: dict[str, Any] = {}


def fresh_prefix() -> str:
    return f"t{next(_counter)}_"


def sync_client(uri: str) -> Any:
    """One MongoClient per URI for the whole session (MongoClient is thread-safe)."""
    import pymongo

    if uri not in _sync_clients:
        _sync_clients[uri] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    return _sync_clients[uri]


def close_sync_clients() -> None:
    while _sync_clients:
        _sync_clients.popitem()[1].close()


def stored_id(checkpoint_id: str) -> str:
    """How the current document layout stores a checkpoint id (``cid``, ``base``, ``kf``)."""
    from savegame.savers.mongodb import _shared

    return _shared.id_value(checkpoint_id, _shared.LAYOUT_VERSION)


def read_id(value: str) -> str:
    """The checkpoint id a stored ``cid``, ``base`` or ``kf`` of the current layout names."""
    from savegame.savers.mongodb import _shared

    return _shared.id_text(value, "cid", _shared.LAYOUT_VERSION)


def doc_of(collection: Any, checkpoint: Any) -> Any:
    """The document of a stored checkpoint, read through a sync ``collection``."""
    return collection.find_one({"thread_id": checkpoint.thread_id,
                                "cid": stored_id(checkpoint.id)})


def by_id(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Checkpoint documents by the checkpoint id each stores."""
    return {read_id(doc["cid"]): doc for doc in docs}


class Tamper:
    """``corrupt`` / ``remove`` a stored checkpoint document, through a sync collection."""

    def __init__(self, collection: Any, run: Callable[[Any], Any] = lambda value: value):
        self.collection = collection
        self.run = run

    def _key(self, thread_id: str, namespace: str, checkpoint_id: str) -> dict[str, Any]:
        from savegame.savers.mongodb import _shared

        return _shared.one(thread_id, namespace, checkpoint_id, _shared.LAYOUT_VERSION)

    def corrupt(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        key = self._key(thread_id, namespace, checkpoint_id)
        doc = self.run(self.collection.find_one(key))
        assert doc is not None and "rec" in doc, "no such (unchunked) record"
        record = bytearray(bytes(doc["rec"]))
        record[len(record) // 2] ^= 0x40
        doc["rec"] = bytes(record)
        # delete + insert: nx-27017 0.8 fails replace_one on documents holding bytes
        self.run(self.collection.delete_one(key))
        self.run(self.collection.insert_one(doc))

    def remove(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        result = self.run(self.collection.delete_one(self._key(thread_id, namespace,
                                                               checkpoint_id)))
        assert result.deleted_count == 1

    #: StoredCheckpoint field -> document field
    FIELDS: ClassVar[dict[str, str]] = {"base_id": "base", "depth": "d", "record": "rec",
                                        "keyframe_id": "kf"}

    def alter(self, thread_id: str, namespace: str, checkpoint_id: str, **fields: Any) -> None:
        key = self._key(thread_id, namespace, checkpoint_id)
        doc = self.run(self.collection.find_one(key))
        assert doc is not None, "no such record"
        for name, value in fields.items():
            doc[self.FIELDS[name]] = value
        self.run(self.collection.delete_one(key))
        self.run(self.collection.insert_one(doc))


# -- mongomock gaps ---------------------------------------------------------------------
_patched = False


def patch_mongomock() -> None:
    """mongomock 4.3 gaps: it copies every matching document before applying a cursor's
    limit, so ``find_one(sort=...)`` on a thread of n checkpoints copies n documents (the
    concurrency tests then take minutes): copy only the documents the limit keeps. And its
    bulk builder refuses the ``sort`` keyword pymongo >= 4.11 always passes."""
    global _patched
    if _patched:
        return
    import itertools

    from mongomock.collection import Collection, Cursor

    original = Cursor._compute_results
    original_find_one = Collection.find_one

    def find_one(self: Any, filter: Any = None, *args: Any, **kwargs: Any) -> Any:
        if args or "limit" in kwargs:
            return original_find_one(self, filter, *args, **kwargs)
        return next(iter(self.find(filter, limit=1, **kwargs)), None)

    def compute_results(self: Any, with_limit_and_skip: bool = False) -> Any:
        if with_limit_and_skip and self._limit and not self.collection.codec_options.tz_aware:
            if getattr(self, "_limited_for", None) is not self._factory:
                stop = self._skip + abs(self._limit)
                self._limited = list(itertools.islice(self._factory(), self._skip, stop))
                self._limited_for = self._factory
            return self._limited
        return original(self, with_limit_and_skip)

    Cursor._compute_results = compute_results
    Collection.find_one = find_one

    # pymongo >= 4.11 passes sort= to the bulk builder (mongomock #912, fix PR #933 open)
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_update", "add_replace"):
        method = getattr(BulkOperationBuilder, name)

        def without_sort(self: Any, *args: Any, _method: Any = method, **kwargs: Any) -> Any:
            if kwargs.get("sort") is None:
                kwargs.pop("sort", None)
            return _method(self, *args, **kwargs)

        setattr(BulkOperationBuilder, name, without_sort)
    _patched = True


# -- savers ------------------------------------------------------------------------------
def mongomock_saver(**options: Any) -> Any:
    import mongomock

    patch_mongomock()

    from savegame.savers import MongoSaver

    return MongoSaver(mongomock.MongoClient(), database=DATABASE, **options)


def mongomock_motor_saver(**options: Any) -> Any:
    import mongomock_motor

    patch_mongomock()
    from savegame.savers import AsyncMongoSaver

    return AsyncMongoSaver(mongomock_motor.AsyncMongoMockClient(), database=DATABASE,
                           **options)


def drop(saver: Any, run: Callable[[Any], Any] = lambda value: value) -> None:
    db = saver._checkpoints.database
    for name in saver.names.all():
        run(db.drop_collection(name))


def server_sync_saver(uri: str, **options: Any) -> Iterator[Any]:
    from savegame.savers import MongoSaver

    saver = MongoSaver(sync_client(uri), database=DATABASE, prefix=fresh_prefix(), **options)
    try:
        yield saver
    finally:
        drop(saver)


def server_async_saver(
    uri: str, loop: asyncio.AbstractEventLoop, **options: Any
) -> Iterator[Any]:
    import pymongo

    from savegame.savers import AsyncMongoSaver

    client = pymongo.AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    saver = AsyncMongoSaver(client, database=DATABASE, prefix=fresh_prefix(), **options)
    try:
        yield saver
    finally:
        drop(saver, loop.run_until_complete)
        loop.run_until_complete(client.close())


def server_tamper(uri: str, saver: Any) -> Tamper:
    """Tampers through a sync client, whichever saver wrote the documents."""
    return Tamper(sync_client(uri)[DATABASE][saver.names.checkpoints])


def require_pymongo() -> None:
    pytest.importorskip("pymongo")
