"""Storage set-ups for the LangGraph adapter tests: each hands out new ``Checkpointer``
instances over the same stored data (a new instance = a process restart: fresh caches, and
fresh clients on MongoDB)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mongo_harness
import pytest

from savegame.adapters.langgraph import Checkpointer
from savegame.savers import MemorySaver

#: The core primitives the adapter needs beyond plain checkpoints.
WRITE_PRIMITIVES = ("_insert_writes", "_read_writes", "_list_threads", "_read_thread",
                    "_copy_in", "_replace", "_delete_checkpoints")


def mongo_ready(saver_class: type) -> bool:
    return all(hasattr(saver_class, name) for name in WRITE_PRIMITIVES)


def skip_unless_mongo_ready(saver_class: type) -> None:
    missing = [name for name in WRITE_PRIMITIVES if not hasattr(saver_class, name)]
    if missing:
        pytest.skip(f"{saver_class.__name__} does not implement the pending-write and thread "
                    f"primitives yet ({', '.join(missing)}): the adapter needs them")


class Storage:
    """One stored data set; ``checkpointer()`` opens a new Checkpointer over it."""

    name = "?"
    is_async_only = False

    def checkpointer(self) -> Checkpointer:
        raise NotImplementedError

    def close(self) -> None:
        pass


class MemoryStorage(Storage):
    name = "memory"

    def __init__(self) -> None:
        self.saver = MemorySaver()

    def checkpointer(self) -> Checkpointer:
        return Checkpointer(self.saver)


class FileStorage(Storage):
    """FileSystemSaver over one directory: every checkpointer gets a new saver (a new
    process would open the same files)."""

    name = "file"

    def __init__(self, path: Any) -> None:
        self.path = path

    def checkpointer(self) -> Checkpointer:
        from savegame.savers import FileSystemSaver

        return Checkpointer(FileSystemSaver(self.path))


class MongomockStorage(Storage):
    """MongoSaver over one mongomock client: every checkpointer gets a new saver."""

    name = "mongomock"

    def __init__(self) -> None:
        import mongomock

        from savegame.savers import MongoSaver

        skip_unless_mongo_ready(MongoSaver)
        mongo_harness.patch_mongomock()
        self.client = mongomock.MongoClient()
        self.prefix = mongo_harness.fresh_prefix()

    def checkpointer(self) -> Checkpointer:
        from savegame.savers import MongoSaver

        return Checkpointer(MongoSaver(self.client, database=mongo_harness.DATABASE,
                                       prefix=self.prefix))


class NxAsyncStorage(Storage):
    """AsyncMongoSaver through the real driver on nx-27017: every checkpointer gets a new
    client (closed by ``close``); used from one event loop per test."""

    name = "nx_async"
    is_async_only = True

    def __init__(self, uri: str, run: Callable[[Any], Any]) -> None:
        from savegame.savers import AsyncMongoSaver

        skip_unless_mongo_ready(AsyncMongoSaver)
        self.uri = uri
        self.run = run
        self.prefix = mongo_harness.fresh_prefix()
        self.clients: list[Any] = []

    def checkpointer(self) -> Checkpointer:
        import pymongo

        from savegame.savers import AsyncMongoSaver

        client = pymongo.AsyncMongoClient(self.uri, serverSelectionTimeoutMS=5000)
        self.clients.append(client)
        return Checkpointer(AsyncMongoSaver(client, database=mongo_harness.DATABASE,
                                            prefix=self.prefix))

    def close(self) -> None:
        for client in self.clients:
            self.run(client.close())




class RedisStorage(Storage):
    """RedisSaver (sync) or AsyncRedisSaver on a real server (single node or cluster):
    every checkpointer gets a new saver over a new client, on one key prefix."""

    def __init__(self, where: Any, *, is_async: bool, run: Callable[[Any], Any]) -> None:
        import redis_harness

        self.where = where
        self.is_async_only = is_async
        self.name = f"{'async_' if is_async else ''}redis_{where.name}"
        self.run = run
        self.prefix = redis_harness.fresh_prefix()
        self.savers: list[Any] = []

    def checkpointer(self) -> Checkpointer:
        from savegame.savers import AsyncRedisSaver, RedisSaver

        cls = AsyncRedisSaver if self.is_async_only else RedisSaver
        client = self.where.async_client() if self.is_async_only else self.where.sync_client()
        saver = cls(client, key_prefix=self.prefix, owns_client=True)
        self.savers.append(saver)
        return Checkpointer(saver)

    def close(self) -> None:
        for saver in self.savers:
            if self.is_async_only:
                self.run(saver.aclose())
            else:
                saver.close()
        self.where.drop(self.prefix)
