"""Fixtures of the conformance suite: one suite, run unchanged against every saver.

Extension point for new backends (MongoDB and others):

- append the backend's name to ``BACKENDS``;
- add a fixture ``backend_<name>`` that yields a fresh, empty saver and cleans up after
  the test (it may request the ``loop`` fixture: the test's one event loop, which async
  clients must stay on);
- add the name to ``ASYNC_ONLY`` if the saver's sync methods raise TypeError (the "sync"
  API mode and the thread-based tests are then skipped for it, visibly);
- add the name to ``VERSIONED`` if ``release`` archives runs as versions 1, 2, ...;
- add a fixture ``tamper_<name>`` returning an object with ``corrupt(thread_id, namespace,
  checkpoint_id)`` (flip a byte of the stored record), ``remove(thread_id, namespace,
  checkpoint_id)`` (delete the stored record) and ``alter(thread_id, namespace,
  checkpoint_id, **fields)`` (overwrite stored fields: ``base_id``, ``depth``, ``record``),
  used by the corruption tests (they are skipped for a backend without one);
- add a fixture ``sibling_<name>`` returning a second saver over the same storage (as
  another process would open it), used by the tests of writers racing across savers
  (skipped for a backend without one: in-memory stores are private to their saver).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from collections.abc import Iterator
from typing import Any

import file_harness
import mongo_harness
import pytest
import redis_harness

from savegame.savers import MemorySaver, VersionedMemorySaver
from savegame.savers.base import BaseSaver, Call, StoredCheckpoint
from savegame.savers.checkpoint import Checkpoint, Release
from savegame.savers.file import AsyncFileSystemSaver, FileSystemSaver

BACKENDS: list[str] = ["memory", "versioned"]
#: Backends whose sync methods raise TypeError: only the async API mode runs for them.
ASYNC_ONLY: set[str] = set()
#: Backends whose ``release`` archives the run as version 1, 2, 3...
VERSIONED: set[str] = {"versioned"}

# MongoDB savers (fixtures at the end of this file): mongomock, mongomock-motor, the real
# driver on nx-27017, and a real server when SAVEGAME_MONGODB_URI is set.
_MONGO = ["mongo_mongomock", "async_mongo_mongomock_motor", "mongo_nx", "async_mongo_nx",
          "mongo_real", "async_mongo_real"]
BACKENDS += _MONGO
ASYNC_ONLY |= {name for name in _MONGO if name.startswith("async_")}
VERSIONED |= set(_MONGO)
#: Backends that run the volume tests (8 writers x 200 puts, the 1000-step thread) in
#: full by default: the in-process ones. Every other backend runs them at a quarter of
#: their size (mongomock scans every document in Python per query; servers add a round
#: trip per call), and in full with ``--stress``.
FULL_VOLUME: set[str] = {"memory", "versioned"}
#: Backends whose insert cannot check, in the same atomic step, that the parent still
#: exists: a delete_thread racing a writer may leave a checkpoint with a deleted parent
#: there (MongoDB without transactions; documented in the README).
PARENT_CHECK_NOT_ATOMIC: set[str] = set(_MONGO)

# The file store (fixtures at the end of this file): FileSystemSaver and its async-only twin.
BACKENDS += ["file", "async_file"]
ASYNC_ONLY |= {"async_file"}
VERSIONED |= {"file", "async_file"}
# Redis savers (fixtures at the end of this file): RedisSaver and AsyncRedisSaver on a real
# single node and on a real 3-node cluster, and RedisSaver on a valkey-server; release
# archives versions there too.
_REDIS = ["redis", "async_redis", "redis_cluster", "async_redis_cluster", "valkey"]
BACKENDS += _REDIS
ASYNC_ONLY |= {name for name in _REDIS if name.startswith("async_")}
VERSIONED |= set(_REDIS)


# -- backends ------------------------------------------------------------------------
@pytest.fixture
def backend_memory() -> Iterator[MemorySaver]:
    saver = MemorySaver()
    yield saver
    saver.close()


@pytest.fixture
def backend_versioned() -> Iterator[VersionedMemorySaver]:
    saver = VersionedMemorySaver()
    yield saver
    saver.close()


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def saver(request: pytest.FixtureRequest, backend_name: str) -> BaseSaver:
    """A fresh, empty saver of each backend."""
    return request.getfixturevalue("backend_" + backend_name)  # type: ignore[no-any-return]


@pytest.fixture
def is_versioned(backend_name: str) -> bool:
    return backend_name in VERSIONED


@pytest.fixture
def volume(request: pytest.FixtureRequest, backend_name: str) -> float:
    """The share of a volume test's size to run on this backend (see FULL_VOLUME)."""
    full = backend_name in FULL_VOLUME or request.config.getoption("--stress")
    return 1.0 if full else 0.25


@pytest.fixture
def async_only(backend_name: str) -> bool:
    return backend_name in ASYNC_ONLY


@pytest.fixture
def parent_check_atomic(backend_name: str) -> bool:
    return backend_name not in PARENT_CHECK_NOT_ATOMIC


@pytest.fixture
def sync_ok(backend_name: str) -> None:
    """Skip (visibly) a test that drives the sync API or OS threads on an async-only saver."""
    if backend_name in ASYNC_ONLY:
        pytest.skip(f"{backend_name} is async-only: its sync methods raise TypeError")


# -- the uniform API facade ----------------------------------------------------------
class SyncApi:
    """The saver's sync methods."""

    mode = "sync"

    def __init__(self, saver: BaseSaver):
        self.saver = saver

    def put(self, checkpoint: Checkpoint) -> Checkpoint:
        return self.saver.put(checkpoint)

    def get(
        self, thread_id: str, id: str | None = None, namespace: str = ""
    ) -> Checkpoint | None:
        return self.saver.get(thread_id, id, namespace=namespace)

    def list(self, thread_id: str, **kw: Any) -> builtins.list[Checkpoint]:
        return builtins.list(self.saver.list(thread_id, **kw))

    def delete_thread(self, thread_id: str) -> None:
        self.saver.delete_thread(thread_id)

    def release(self, thread_id: str) -> Release:
        return self.saver.release(thread_id)

    def versions(self, thread_id: str) -> builtins.list[int]:
        return self.saver.versions(thread_id)

    def get_version(self, thread_id: str, version: int) -> Release | None:
        return self.saver.get_version(thread_id, version)

    def stored(self, thread_id: str, checkpoint_id: str, namespace: str = "") -> StoredCheckpoint:
        """The backend's stored record (through the ``_read`` IO primitive)."""
        item = self.saver._call(Call("_read", (thread_id, namespace, checkpoint_id)))
        assert isinstance(item, StoredCheckpoint), item
        return item


class AsyncApi:
    """The saver's a-methods, each run to completion on the test's one event loop."""

    mode = "async"

    def __init__(self, saver: BaseSaver, loop: asyncio.AbstractEventLoop):
        self.saver = saver
        self.loop = loop

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def put(self, checkpoint: Checkpoint) -> Checkpoint:
        return self.run(self.saver.aput(checkpoint))  # type: ignore[no-any-return]

    def get(
        self, thread_id: str, id: str | None = None, namespace: str = ""
    ) -> Checkpoint | None:
        return self.run(self.saver.aget(thread_id, id, namespace=namespace))  # type: ignore[no-any-return]

    def list(self, thread_id: str, **kw: Any) -> builtins.list[Checkpoint]:
        async def collect() -> builtins.list[Checkpoint]:
            return [item async for item in self.saver.alist(thread_id, **kw)]

        return self.run(collect())  # type: ignore[no-any-return]

    def delete_thread(self, thread_id: str) -> None:
        self.run(self.saver.adelete_thread(thread_id))

    def release(self, thread_id: str) -> Release:
        return self.run(self.saver.arelease(thread_id))  # type: ignore[no-any-return]

    def versions(self, thread_id: str) -> builtins.list[int]:
        return self.run(self.saver.aversions(thread_id))  # type: ignore[no-any-return]

    def get_version(self, thread_id: str, version: int) -> Release | None:
        return self.run(self.saver.aget_version(thread_id, version))  # type: ignore[no-any-return]

    def stored(self, thread_id: str, checkpoint_id: str, namespace: str = "") -> StoredCheckpoint:
        item = self.run(self.saver._acall(Call("_read", (thread_id, namespace, checkpoint_id))))
        assert isinstance(item, StoredCheckpoint), item
        return item


@pytest.fixture(params=["sync", "async"])
def api(
    request: pytest.FixtureRequest,
    saver: BaseSaver,
    backend_name: str,
    loop: asyncio.AbstractEventLoop,
) -> SyncApi | AsyncApi:
    """A uniform facade over the saver, once through its sync and once through its async
    methods."""
    if request.param == "sync":
        if backend_name in ASYNC_ONLY:
            pytest.skip(f"{backend_name} is async-only: its sync methods raise TypeError")
        return SyncApi(saver)
    return AsyncApi(saver, loop)


# -- tampering with stored records ---------------------------------------------------
class MemoryTamper:
    """Alters the records of a MemorySaver / VersionedMemorySaver in place."""

    def __init__(self, saver: MemorySaver):
        self.saver = saver

    def corrupt(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        space = self.saver._threads[thread_id][namespace]
        stored = space.items[checkpoint_id]
        record = bytearray(stored.record)
        record[len(record) // 2] ^= 0x40
        space.items[checkpoint_id] = dataclasses.replace(stored, record=bytes(record))

    def alter(self, thread_id: str, namespace: str, checkpoint_id: str, **fields: Any) -> None:
        space = self.saver._threads[thread_id][namespace]
        space.items[checkpoint_id] = dataclasses.replace(space.items[checkpoint_id], **fields)

    def remove(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        space = self.saver._threads[thread_id][namespace]
        stored = space.items.pop(checkpoint_id)
        space.ids.remove(checkpoint_id)
        space.chains[stored.keyframe_id].remove(checkpoint_id)
        del space.seqs[stored.seq]
        if space.head == checkpoint_id:
            space.head = space.seqs[max(space.seqs)] if space.seqs else None


@pytest.fixture
def tamper_memory(backend_memory: MemorySaver) -> MemoryTamper:
    return MemoryTamper(backend_memory)


@pytest.fixture
def tamper_versioned(backend_versioned: VersionedMemorySaver) -> MemoryTamper:
    return MemoryTamper(backend_versioned)


@pytest.fixture
def tamper(request: pytest.FixtureRequest, backend_name: str, saver: BaseSaver) -> Any:
    """``corrupt`` / ``remove`` / ``alter`` a stored record of the test's saver."""
    try:
        return request.getfixturevalue("tamper_" + backend_name)
    except pytest.FixtureLookupError:
        pytest.skip(f"no tamper_{backend_name} fixture: cannot alter its stored records")


@pytest.fixture
def sibling(request: pytest.FixtureRequest, backend_name: str, saver: BaseSaver) -> Any:
    """A second saver over the test saver's storage (another process's view of it)."""
    try:
        return request.getfixturevalue("sibling_" + backend_name)
    except pytest.FixtureLookupError:
        pytest.skip(f"no sibling_{backend_name} fixture: its storage is private to a saver")


# -- MongoDB: mongomock, mongomock-motor, nx-27017 (real driver) and a real server -------
# The savers come from tests/mongo_harness.py, shared with tests/mongodb/.
# Their names are in BACKENDS / ASYNC_ONLY / VERSIONED above.


@pytest.fixture
def backend_mongo_mongomock() -> Iterator[Any]:
    pytest.importorskip("mongomock")
    saver = mongo_harness.mongomock_saver()
    yield saver
    saver.close()


@pytest.fixture
def backend_async_mongo_mongomock_motor(loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    pytest.importorskip("mongomock_motor")
    saver = mongo_harness.mongomock_motor_saver()
    yield saver
    loop.run_until_complete(saver.aclose())


@pytest.fixture
def backend_mongo_nx(nx_uri: str) -> Iterator[Any]:
    yield from mongo_harness.server_sync_saver(nx_uri)


@pytest.fixture
def backend_async_mongo_nx(nx_uri: str, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    yield from mongo_harness.server_async_saver(nx_uri, loop)


@pytest.fixture
def backend_mongo_real(real_mongodb_uri: str) -> Iterator[Any]:
    yield from mongo_harness.server_sync_saver(real_mongodb_uri)


@pytest.fixture
def backend_async_mongo_real(
    real_mongodb_uri: str, loop: asyncio.AbstractEventLoop
) -> Iterator[Any]:
    yield from mongo_harness.server_async_saver(real_mongodb_uri, loop)


@pytest.fixture
def tamper_mongo_mongomock(backend_mongo_mongomock: Any) -> mongo_harness.Tamper:
    return mongo_harness.Tamper(backend_mongo_mongomock._checkpoints)


@pytest.fixture
def tamper_async_mongo_mongomock_motor(
    backend_async_mongo_mongomock_motor: Any, loop: asyncio.AbstractEventLoop
) -> mongo_harness.Tamper:
    return mongo_harness.Tamper(backend_async_mongo_mongomock_motor._checkpoints,
                                loop.run_until_complete)


@pytest.fixture
def tamper_mongo_nx(nx_uri: str, backend_mongo_nx: Any) -> mongo_harness.Tamper:
    return mongo_harness.server_tamper(nx_uri, backend_mongo_nx)


@pytest.fixture
def tamper_async_mongo_nx(nx_uri: str, backend_async_mongo_nx: Any) -> mongo_harness.Tamper:
    return mongo_harness.server_tamper(nx_uri, backend_async_mongo_nx)


@pytest.fixture
def tamper_mongo_real(real_mongodb_uri: str, backend_mongo_real: Any) -> mongo_harness.Tamper:
    return mongo_harness.server_tamper(real_mongodb_uri, backend_mongo_real)


@pytest.fixture
def tamper_async_mongo_real(
    real_mongodb_uri: str, backend_async_mongo_real: Any
) -> mongo_harness.Tamper:
    return mongo_harness.server_tamper(real_mongodb_uri, backend_async_mongo_real)


def _sibling_of(saver: Any) -> Any:
    """A saver of the same class over the same client, database and collections."""
    return type(saver)(saver.client, database=saver._checkpoints.database.name,
                       prefix=saver.names.checkpoints[: -len("checkpoints")])


@pytest.fixture
def sibling_mongo_mongomock(backend_mongo_mongomock: Any) -> Any:
    return _sibling_of(backend_mongo_mongomock)


@pytest.fixture
def sibling_async_mongo_mongomock_motor(backend_async_mongo_mongomock_motor: Any) -> Any:
    return _sibling_of(backend_async_mongo_mongomock_motor)


@pytest.fixture
def sibling_mongo_nx(backend_mongo_nx: Any) -> Any:
    return _sibling_of(backend_mongo_nx)


@pytest.fixture
def sibling_async_mongo_nx(backend_async_mongo_nx: Any) -> Any:
    return _sibling_of(backend_async_mongo_nx)


@pytest.fixture
def sibling_mongo_real(backend_mongo_real: Any) -> Any:
    return _sibling_of(backend_mongo_real)


@pytest.fixture
def sibling_async_mongo_real(backend_async_mongo_real: Any) -> Any:
    return _sibling_of(backend_async_mongo_real)


# -- the file store: a fresh directory per test ------------------------------------------
@pytest.fixture
def backend_file(tmp_path: Any) -> Iterator[FileSystemSaver]:
    saver = FileSystemSaver(tmp_path / "store")
    yield saver
    saver.close()


@pytest.fixture
def backend_async_file(tmp_path: Any) -> Iterator[AsyncFileSystemSaver]:
    saver = AsyncFileSystemSaver(tmp_path / "store", durability="os")  # both modes covered
    yield saver
    saver.close()


@pytest.fixture
def tamper_file(backend_file: FileSystemSaver) -> file_harness.FileTamper:
    return file_harness.FileTamper(backend_file)


@pytest.fixture
def tamper_async_file(backend_async_file: AsyncFileSystemSaver) -> file_harness.FileTamper:
    return file_harness.FileTamper(backend_async_file)


@pytest.fixture
def sibling_file(backend_file: FileSystemSaver) -> FileSystemSaver:
    return FileSystemSaver(backend_file.path)


@pytest.fixture
def sibling_async_file(backend_async_file: AsyncFileSystemSaver) -> AsyncFileSystemSaver:
    return AsyncFileSystemSaver(backend_async_file.path, durability="os")


# -- Redis: RedisSaver and AsyncRedisSaver on a real single node and a 3-node cluster -------
# Servers come from tests/redis_harness.py (started once per session); names in BACKENDS.


@pytest.fixture
def backend_redis(redis_single: Any) -> Iterator[Any]:
    yield from redis_harness.sync_saver(redis_single)


@pytest.fixture
def backend_async_redis(redis_single: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    yield from redis_harness.async_saver(redis_single, loop)


@pytest.fixture
def backend_redis_cluster(redis_cluster: Any) -> Iterator[Any]:
    yield from redis_harness.sync_saver(redis_cluster)


@pytest.fixture
def backend_async_redis_cluster(
    redis_cluster: Any, loop: asyncio.AbstractEventLoop
) -> Iterator[Any]:
    yield from redis_harness.async_saver(redis_cluster, loop)


@pytest.fixture
def backend_valkey(valkey_single: Any) -> Iterator[Any]:
    yield from redis_harness.sync_saver(valkey_single)


@pytest.fixture
def tamper_valkey(valkey_single: Any, backend_valkey: Any) -> redis_harness.Tamper:
    return redis_harness.Tamper(valkey_single, backend_valkey)


@pytest.fixture
def sibling_valkey(backend_valkey: Any) -> Any:
    return _redis_sibling(backend_valkey)


@pytest.fixture
def tamper_redis(redis_single: Any, backend_redis: Any) -> redis_harness.Tamper:
    return redis_harness.Tamper(redis_single, backend_redis)


@pytest.fixture
def tamper_async_redis(redis_single: Any, backend_async_redis: Any) -> redis_harness.Tamper:
    return redis_harness.Tamper(redis_single, backend_async_redis)


@pytest.fixture
def tamper_redis_cluster(redis_cluster: Any, backend_redis_cluster: Any
                         ) -> redis_harness.Tamper:
    return redis_harness.Tamper(redis_cluster, backend_redis_cluster)


@pytest.fixture
def tamper_async_redis_cluster(redis_cluster: Any, backend_async_redis_cluster: Any
                               ) -> redis_harness.Tamper:
    return redis_harness.Tamper(redis_cluster, backend_async_redis_cluster)


def _redis_sibling(saver: Any) -> Any:
    """A saver of the same class over the same client and key prefix."""
    return type(saver)(saver.client, key_prefix=saver.key_prefix)


@pytest.fixture
def sibling_redis(backend_redis: Any) -> Any:
    return _redis_sibling(backend_redis)


@pytest.fixture
def sibling_async_redis(backend_async_redis: Any) -> Any:
    return _redis_sibling(backend_async_redis)


@pytest.fixture
def sibling_redis_cluster(backend_redis_cluster: Any) -> Any:
    return _redis_sibling(backend_redis_cluster)


@pytest.fixture
def sibling_async_redis_cluster(backend_async_redis_cluster: Any) -> Any:
    return _redis_sibling(backend_async_redis_cluster)
