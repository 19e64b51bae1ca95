"""A saver whose IO primitives are coroutines is async-only: its sync methods raise
TypeError (before storing anything) and its a-methods work, even with primitives that
really suspend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from savegame.savers import Checkpoint, VersionedMemorySaver

PRIMITIVES = ("_read", "_read_latest", "_read_chains", "_insert", "_list", "_delete_thread",
              "_archive", "_versions", "_read_version")


class CoroutineSaver(VersionedMemorySaver):
    """The versioned memory saver behind coroutine primitives that yield to the loop."""

    _async_only = True


def _wrap(name: str) -> Any:
    sync = getattr(VersionedMemorySaver, name)

    async def primitive(self: CoroutineSaver, *args: Any) -> Any:
        await asyncio.sleep(0)
        return sync(self, *args)

    primitive.__name__ = name
    return primitive


for _name in PRIMITIVES:
    setattr(CoroutineSaver, _name, _wrap(_name))


def test_sync_methods_raise_type_error():
    saver = CoroutineSaver()
    with pytest.raises(TypeError, match="async-only"):
        saver.put(Checkpoint("t", {"x": 1}))
    with pytest.raises(TypeError):
        saver.get("t")
    with pytest.raises(TypeError):
        list(saver.list("t"))
    with pytest.raises(TypeError):
        saver.release("t")
    assert saver._threads == {}


def test_async_methods_work(loop):
    saver = CoroutineSaver()

    async def main() -> None:
        first = await saver.aput(Checkpoint("t", {"x": 1}))
        second = await saver.aput(Checkpoint("t", {"x": 2}))
        assert second.parent_id == first.id and second.step == 1
        assert (await saver.aget("t")).state == {"x": 2}
        assert [c.id async for c in saver.alist("t")] == [second.id, first.id]
        release = await saver.arelease("t")
        assert release.version == 1 and len(release.checkpoints) == 2
        assert await saver.aversions("t") == [1]
        assert (await saver.aget_version("t", 1)).checkpoints[0].state == {"x": 2}
        await saver.adelete_thread("t")
        assert await saver.aversions("t") == []

    loop.run_until_complete(main())


def test_concurrent_tasks_with_suspending_primitives(loop):
    saver = CoroutineSaver()

    async def writer(w: int) -> list[str]:
        ids = []
        for i in range(50):
            put = await saver.aput(Checkpoint("shared", {"w": w, "i": i}))
            ids.append(put.id)
        return ids

    async def main() -> list[list[str]]:
        return list(await asyncio.gather(*(writer(w) for w in range(8))))

    written = [i for ids in loop.run_until_complete(main()) for i in ids]
    assert len(set(written)) == 400

    async def collect() -> list[Checkpoint]:
        return [c async for c in saver.alist("shared")]

    listed = loop.run_until_complete(collect())
    assert {c.id for c in listed} == set(written)
    by_id = {c.id: c for c in listed}
    for item in listed:
        if item.parent_id is None:
            assert item.step == 0
        else:
            assert item.step == by_id[item.parent_id].step + 1
