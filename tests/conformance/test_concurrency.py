"""Many writers on one saver, with OS threads and with asyncio tasks: nothing is lost or
duplicated, every state stays exact."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from savegame.savers import Checkpoint

WRITERS = 8
PUTS = 200


def state_of(writer: int, i: int) -> dict[str, object]:
    return {"writer": writer, "i": i, "log": [f"w{writer} step {j}" for j in range(i % 20)]}


def thread_of(shared: bool, writer: int) -> str:
    return "shared" if shared else f"writer-{writer}"


def check(saver, run, shared: bool, results: list[list[Checkpoint]]) -> None:
    """Verify through the sync methods, or through the a-methods when ``run`` (the loop's
    run_until_complete) is given."""
    if run is None:
        list_all = lambda thread: list(saver.list(thread))  # noqa: E731
        get = saver.get
    else:
        async def collect(thread: str) -> list[Checkpoint]:
            return [c async for c in saver.alist(thread)]

        list_all = lambda thread: run(collect(thread))  # noqa: E731
        get = lambda thread, id=None: run(saver.aget(thread, id))  # noqa: E731

    written = [c for puts in results for c in puts]
    assert len(written) == WRITERS * PUTS
    assert len({c.id for c in written}) == len(written), "duplicate ids"
    for puts in results:  # each writer's own puts come back in order
        assert [c.id for c in puts] == sorted(c.id for c in puts)
    threads = {thread_of(shared, w) for w in range(WRITERS)}
    listed = [c for thread in sorted(threads) for c in list_all(thread)]
    assert len(listed) == len(written), "lost or duplicated checkpoints"
    assert {c.id for c in listed} == {c.id for c in written}
    by_id = {c.id: c for c in written}
    for got in listed:
        put = by_id[got.id]
        assert got.thread_id == put.thread_id
        assert dict(got.state) == state_of(got.state["writer"], got.state["i"])
        assert dict(got.state) == dict(put.state)
        assert got.step == put.step and got.parent_id == put.parent_id
    saver._cache.clear()
    for put in written[:: 37]:
        assert dict(get(put.thread_id, put.id).state) == dict(put.state)
    for thread in threads:
        # steps are consistent with parents: the tree is intact
        items = {c.id: c for c in list_all(thread)}
        for item in items.values():
            if item.parent_id is None:
                assert item.step == 0
            else:
                assert item.step == items[item.parent_id].step + 1
    if not shared:
        for w in range(WRITERS):
            latest = get(thread_of(False, w))
            assert latest.state["i"] == PUTS - 1
            assert latest.step == PUTS - 1


@pytest.mark.parametrize("shared", [False, True], ids=["own-thread", "shared-thread"])
def test_threads(saver, sync_ok, shared):

    def writer(w: int) -> list[Checkpoint]:
        return [saver.put(Checkpoint(thread_of(shared, w), state_of(w, i)))
                for i in range(PUTS)]

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        results = list(pool.map(writer, range(WRITERS)))
    check(saver, None, shared, results)


@pytest.mark.parametrize("shared", [False, True], ids=["own-thread", "shared-thread"])
def test_tasks(saver, loop, shared):

    async def writer(w: int) -> list[Checkpoint]:
        out = []
        for i in range(PUTS):
            out.append(await saver.aput(Checkpoint(thread_of(shared, w), state_of(w, i))))
            if i % 10 == 0:
                await asyncio.sleep(0)
        return out

    async def main() -> list[list[Checkpoint]]:
        return list(await asyncio.gather(*(writer(w) for w in range(WRITERS))))

    results = loop.run_until_complete(main())
    check(saver, loop.run_until_complete, shared, results)


def test_tasks_mixed_reads_and_writes(api, loop):
    """Readers listing and getting while writers put, on one loop."""
    saver = api.saver

    async def writer(w: int) -> None:
        for i in range(50):
            await saver.aput(Checkpoint("mixed", state_of(w, i), metadata={"w": w}))

    async def reader() -> int:
        seen = 0
        for _ in range(20):
            items = [c async for c in saver.alist("mixed", limit=5)]
            for item in items:
                assert dict(item.state) == state_of(item.state["writer"], item.state["i"])
            latest = await saver.aget("mixed")
            if latest is not None:
                assert dict(latest.state) == state_of(latest.state["writer"],
                                                      latest.state["i"])
            seen += len(items)
            await asyncio.sleep(0)
        return seen

    async def main() -> None:
        await asyncio.gather(*(writer(w) for w in range(4)), reader(), reader())

    loop.run_until_complete(main())
    assert len(api.list("mixed")) == 200
    assert len(api.list("mixed", metadata={"w": 3})) == 50
