"""Stores the stress and crash tiers run against (shared by several OS processes).

Add a store: a fixture ``shared_<name>`` returning a :class:`SharedStore`, and its name
in ``SHARED``."""

from __future__ import annotations

from collections.abc import Iterator

import mongo_harness
import pytest
import redis_harness
from stress_support import SharedStore

SHARED = ["mongo_nx", "file", "redis", "redis_cluster"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "shared" in metafunc.fixturenames:
        metafunc.parametrize("shared_name", SHARED)


@pytest.fixture
def shared(request: pytest.FixtureRequest, shared_name: str) -> Iterator[SharedStore]:
    store: SharedStore = request.getfixturevalue("shared_" + shared_name)
    yield store
    for cleanup in store.cleanup:
        cleanup()


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> int:
    """1 by default; ``--stress`` runs the long tier (about 10x the puts)."""
    return 10 if request.config.getoption("--stress") else 1


@pytest.fixture
def shared_mongo_nx(nx_uri: str) -> SharedStore:
    from savegame.savers import MongoSaver

    prefix = mongo_harness.fresh_prefix()
    params = {"uri": nx_uri, "database": mongo_harness.DATABASE, "prefix": prefix,
              "chunk_bytes": 64 << 10}
    code = ("from savegame.savers import MongoSaver\n"
            "saver = MongoSaver.from_uri(params['uri'], database=params['database'], "
            "prefix=params['prefix'], chunk_bytes=params['chunk_bytes'])\n")

    def open_saver() -> MongoSaver:
        return MongoSaver(mongo_harness.sync_client(nx_uri), database=mongo_harness.DATABASE,
                          prefix=prefix, chunk_bytes=64 << 10)

    store = SharedStore("mongo_nx", code, params, open_saver)
    store.cleanup.append(lambda: mongo_harness.drop(open_saver()))
    return store


@pytest.fixture
def shared_file(tmp_path_factory: pytest.TempPathFactory) -> SharedStore:
    from savegame.savers import FileSystemSaver

    path = str(tmp_path_factory.mktemp("shared-file-store"))
    code = ("from savegame.savers import FileSystemSaver\n"
            "saver = FileSystemSaver(params['path'])\n")
    return SharedStore("file", code, {"path": path}, lambda: FileSystemSaver(path))


def _shared_redis(name: str, where: redis_harness.Deployment) -> SharedStore:
    from savegame.savers import RedisSaver

    prefix = redis_harness.fresh_prefix()
    params = {"url": where.url, "cluster": where.is_cluster, "prefix": prefix,
              "chunk_bytes": 64 << 10}  # the big states of the crash test are chunked
    code = ("from savegame.savers import RedisSaver\n"
            "saver = RedisSaver.from_uri(params['url'], cluster=params['cluster'], "
            "key_prefix=params['prefix'], chunk_bytes=params['chunk_bytes'])\n")
    store = SharedStore(name, code, params, lambda: RedisSaver(
        where.client, key_prefix=prefix, chunk_bytes=64 << 10))
    store.cleanup.append(lambda: where.drop(prefix))
    return store


@pytest.fixture
def shared_redis(redis_single: redis_harness.Deployment) -> SharedStore:
    return _shared_redis("redis", redis_single)


@pytest.fixture
def shared_redis_cluster(redis_cluster: redis_harness.Deployment) -> SharedStore:
    return _shared_redis("redis_cluster", redis_cluster)
