"""LangGraph's own conformance kit (langgraph-checkpoint-conformance) against Checkpointer.

Set-ups: over MemorySaver, over MongoSaver on mongomock, over AsyncMongoSaver through the
real driver on nx-27017, over FileSystemSaver, over RedisSaver on a redis-server and over
AsyncRedisSaver on a 3-node Redis Cluster. Every base and extended capability must be
detected and pass; the validator's report is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import langgraph_support as support
import mongo_harness
import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.report import CapabilityReport, ProgressCallbacks

from savegame.adapters.langgraph import Checkpointer
from savegame.savers import MemorySaver


def check(report: CapabilityReport) -> None:
    report.print_report()
    failures = {name: result.failures for name, result in report.results.items()
                if result.failures}
    assert not failures, failures
    for capability in ALL_CAPABILITIES:
        result = report.results[capability.value]
        assert result.detected, f"{capability.value} not detected"
        assert result.passed is True, f"{capability.value}: {result}"
    assert report.passed_all_base() and report.passed_all()
    assert report.conformance_level() == "FULL"


def test_conformance_memory() -> None:
    @checkpointer_test(name="savegame Checkpointer(MemorySaver)")
    async def factory() -> AsyncIterator[Checkpointer]:
        yield Checkpointer(MemorySaver())

    check(asyncio.run(validate(factory, progress=ProgressCallbacks.default())))


def test_conformance_mongosaver_mongomock() -> None:
    import mongomock

    from savegame.savers import MongoSaver

    support.skip_unless_mongo_ready(MongoSaver)
    mongo_harness.patch_mongomock()

    @checkpointer_test(name="savegame Checkpointer(MongoSaver on mongomock)")
    async def factory() -> AsyncIterator[Checkpointer]:
        with Checkpointer(MongoSaver(mongomock.MongoClient(),
                                     database=mongo_harness.DATABASE)) as checkpointer:
            yield checkpointer

    check(asyncio.run(validate(factory, progress=ProgressCallbacks.default())))


def test_conformance_async_mongosaver_nx(nx_uri: str) -> None:
    import pymongo

    from savegame.savers import AsyncMongoSaver

    support.skip_unless_mongo_ready(AsyncMongoSaver)

    @checkpointer_test(name="savegame Checkpointer(AsyncMongoSaver on nx-27017)")
    async def factory() -> AsyncIterator[Checkpointer]:
        client: Any = pymongo.AsyncMongoClient(nx_uri, serverSelectionTimeoutMS=5000)
        prefix = mongo_harness.fresh_prefix()
        saver = AsyncMongoSaver(client, database=mongo_harness.DATABASE, prefix=prefix)
        try:
            yield Checkpointer(saver)
        finally:
            db = client[mongo_harness.DATABASE]
            for name in await db.list_collection_names():
                if name.startswith(prefix):
                    await db.drop_collection(name)
            await client.close()

    check(asyncio.run(validate(factory, progress=ProgressCallbacks.default())))


def test_conformance_redissaver_single(redis_single: Any) -> None:
    import redis_harness

    from savegame.savers import RedisSaver

    @checkpointer_test(name="savegame Checkpointer(RedisSaver on redis-server)")
    async def factory() -> AsyncIterator[Checkpointer]:
        prefix = redis_harness.fresh_prefix()
        try:
            yield Checkpointer(RedisSaver(redis_single.client, key_prefix=prefix))
        finally:
            redis_single.drop(prefix)

    check(asyncio.run(validate(factory, progress=ProgressCallbacks.default())))


def test_conformance_async_redissaver_cluster(redis_cluster: Any) -> None:
    import redis_harness

    from savegame.savers import AsyncRedisSaver

    @checkpointer_test(name="savegame Checkpointer(AsyncRedisSaver on a 3-node cluster)")
    async def factory() -> AsyncIterator[Checkpointer]:
        prefix = redis_harness.fresh_prefix()
        saver = AsyncRedisSaver(redis_cluster.async_client(), key_prefix=prefix,
                                owns_client=True)
        try:
            yield Checkpointer(saver)
        finally:
            await saver.aclose()
            redis_cluster.drop(prefix)


def test_conformance_file(tmp_path: Any) -> None:
    from savegame.savers import FileSystemSaver

    stores = iter(range(1_000_000))

    @checkpointer_test(name="savegame Checkpointer(FileSystemSaver)")
    async def factory() -> AsyncIterator[Checkpointer]:
        with Checkpointer(FileSystemSaver(tmp_path / f"store{next(stores)}")) as checkpointer:
            yield checkpointer

    check(asyncio.run(validate(factory, progress=ProgressCallbacks.default())))
