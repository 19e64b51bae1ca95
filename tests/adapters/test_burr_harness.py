"""Backends of the Burr persister tests (imported by test_burr_conformance / test_burr_apps).

A :class:`Backend` makes persisters — sync ``Persister`` or ``AsyncPersister`` — over one
storage, and runs their calls to completion (async ones on the test's event loop), so one
test body drives every persister the same way.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import mongo_harness
import pytest

pytest.importorskip("burr")

from savegame.adapters.burr import AsyncPersister, Persister
from savegame.savers import MemorySaver
from savegame.savers.base import BaseSaver

#: Persister kinds and the storage under them.
BACKENDS = ["memory", "async_memory", "mongomock", "mongo_nx", "async_mongo_nx", "file",
            "async_file", "redis", "async_redis_cluster"]

_memory_stores: dict[str, MemorySaver] = {}
_names = itertools.count()


def memory_store(name: str) -> MemorySaver:
    """A process-wide named MemorySaver: a picklable factory for the memory backends (an
    unpickled persister finds the same store, as a reconnecting one finds its database)."""
    return _memory_stores.setdefault(name, MemorySaver())


_mongomock_clients: dict[str, Any] = {}


def mongomock_store(name: str) -> BaseSaver:
    """A new MongoSaver over the named mongomock client (mongomock clients share nothing,
    so the name stands for the database server)."""
    import mongomock

    from savegame.savers import MongoSaver

    mongo_harness.patch_mongomock()
    client = _mongomock_clients.setdefault(name, mongomock.MongoClient())
    return MongoSaver(client, database=mongo_harness.DATABASE)


def server_saver(uri: str, prefix: str) -> BaseSaver:
    from savegame.savers import MongoSaver

    return MongoSaver(mongo_harness.sync_client(uri), database=mongo_harness.DATABASE,
                      prefix=prefix)


def async_server_saver(uri: str, prefix: str) -> BaseSaver:
    import pymongo

    from savegame.savers import AsyncMongoSaver

    client = pymongo.AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    return AsyncMongoSaver(client, database=mongo_harness.DATABASE, prefix=prefix,
                           owns_client=True)


def redis_saver(url: str, cluster: bool, is_async: bool, prefix: str) -> BaseSaver:
    """A new RedisSaver / AsyncRedisSaver owning a new client (a picklable factory)."""
    from savegame.savers import AsyncRedisSaver, RedisSaver

    cls = AsyncRedisSaver if is_async else RedisSaver
    return cls.from_uri(url, cluster=cluster, key_prefix=prefix)


def require_list_threads(saver_class: type) -> None:
    if not hasattr(saver_class, "_list_threads"):
        pytest.skip(f"{saver_class.__name__} does not implement the _list_threads primitive "
                    "yet (list_app_ids needs list_threads(prefix=...))")


class Backend:
    """Persisters of one kind over one storage."""

    def __init__(self, name: str, factory: Callable[[], BaseSaver], *, is_async: bool,
                 loop: asyncio.AbstractEventLoop):
        self.name = name
        self.factory = factory
        self.is_async = is_async
        self.loop = loop
        self.savers: list[BaseSaver] = []

    def persister(self, **options: Any) -> Any:
        """A new persister instance over this backend's storage (a new saver object over
        the same database for MongoDB), picklable through ``factory``."""
        saver = self.factory()
        self.savers.append(saver)
        cls = AsyncPersister if self.is_async else Persister
        persister = cls(saver, factory=self.factory, **options)
        self.run(persister.initialize())
        return persister

    def run(self, value: Any) -> Any:
        """``value``, awaited on the test's loop when it is awaitable."""
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            return self.loop.run_until_complete(value)
        return value

    def close(self) -> None:
        for saver in self.savers:
            if self.is_async:
                self.loop.run_until_complete(saver.aclose())
            else:
                saver.close()




def make_backend(request: pytest.FixtureRequest, name: str,
                 loop: asyncio.AbstractEventLoop) -> Iterator[Backend]:
    """The backend ``name``, cleaned up after the test."""
    store = f"s{next(_names)}"
    drop: list[Callable[[], None]] = []
    if name in ("memory", "async_memory"):
        factory: Callable[[], BaseSaver] = functools.partial(memory_store, store)
        drop.append(lambda: _memory_stores.pop(store, None) and None)
    elif name in ("file", "async_file"):
        from savegame.savers import AsyncFileSystemSaver, FileSystemSaver

        kind = AsyncFileSystemSaver if name == "async_file" else FileSystemSaver
        factory = functools.partial(kind, str(request.getfixturevalue("tmp_path") / "store"))
    elif name == "mongomock":
        pytest.importorskip("mongomock")
        from savegame.savers import MongoSaver

        require_list_threads(MongoSaver)
        factory = functools.partial(mongomock_store, store)
        drop.append(lambda: _mongomock_clients.pop(store, None) and None)
    elif name == "mongo_nx":
        from savegame.savers import MongoSaver

        require_list_threads(MongoSaver)
        uri = request.getfixturevalue("nx_uri")
        factory = functools.partial(server_saver, uri, mongo_harness.fresh_prefix())
        drop.append(lambda: mongo_harness.drop(factory()))
    elif name == "async_mongo_nx":
        from savegame.savers import AsyncMongoSaver

        require_list_threads(AsyncMongoSaver)
        uri = request.getfixturevalue("nx_uri")
        prefix = mongo_harness.fresh_prefix()
        factory = functools.partial(async_server_saver, uri, prefix)
        drop.append(lambda: mongo_harness.drop(server_saver(uri, prefix)))
    elif name in ("redis", "async_redis_cluster"):  # RedisSaver on one node, async on a cluster
        where = request.getfixturevalue("redis_cluster" if "cluster" in name else "redis_single")
        prefix = f"burr{store}"
        factory = functools.partial(redis_saver, where.url, where.is_cluster,
                                    name.startswith("async_"), prefix)
        drop.append(lambda: where.drop(prefix))
    else:
        raise AssertionError(name)
    backend = Backend(name, factory, is_async=name.startswith("async_"), loop=loop)
    try:
        yield backend
    finally:
        backend.close()
        for action in drop:
            action()
