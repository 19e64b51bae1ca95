"""Many writers on one saver (and on two savers over one store), with OS threads and with
asyncio tasks: nothing is lost or duplicated, every state stays exact, and writers that
continue a shared thread never fork it: its history stays one line."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from savegame.savers import Checkpoint
from savegame.savers.checkpoint import PendingWrite

WRITERS = 8
PUTS = 200


def state_of(writer: int, i: int) -> dict[str, object]:
    return {"writer": writer, "i": i, "log": [f"w{writer} step {j}" for j in range(i % 20)]}


def thread_of(shared: bool, writer: int) -> str:
    return "shared" if shared else f"writer-{writer}"


def check(saver, run, shared: bool, results: list[list[Checkpoint]], puts: int = PUTS) -> None:
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

    written = [c for made in results for c in made]
    assert len(written) == WRITERS * puts
    assert len({c.id for c in written}) == len(written), "duplicate ids"
    for made in results:  # each writer's own puts come back in order
        assert [c.id for c in made] == sorted(c.id for c in made)
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
            assert latest.state["i"] == puts - 1
            assert latest.step == puts - 1
    else:
        assert_one_line(list_all("shared"), get("shared"))


def assert_one_line(items: list[Checkpoint], latest: Checkpoint) -> None:
    """No accidental root or fork: one root, every checkpoint the parent of at most one
    other, and the latest is the end of the line."""
    roots = [c for c in items if c.parent_id is None]
    assert len(roots) == 1, f"{len(roots)} roots"
    children: dict[str, int] = {}
    for c in items:
        if c.parent_id is not None:
            children[c.parent_id] = children.get(c.parent_id, 0) + 1
    forks = {parent: n for parent, n in children.items() if n > 1}
    assert not forks, f"{len(forks)} fork points"
    assert latest.step == len(items) - 1 and latest.id not in children


@pytest.mark.parametrize("shared", [False, True], ids=["own-thread", "shared-thread"])
def test_threads(saver, sync_ok, shared, volume):
    puts = int(PUTS * volume)

    def writer(w: int) -> list[Checkpoint]:
        return [saver.put(Checkpoint(thread_of(shared, w), state_of(w, i)))
                for i in range(puts)]

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        results = list(pool.map(writer, range(WRITERS)))
    check(saver, None, shared, results, puts)


@pytest.mark.parametrize("shared", [False, True], ids=["own-thread", "shared-thread"])
def test_tasks(saver, loop, shared, volume):
    puts = int(PUTS * volume)

    async def writer(w: int) -> list[Checkpoint]:
        out = []
        for i in range(puts):
            out.append(await saver.aput(Checkpoint(thread_of(shared, w), state_of(w, i))))
            if i % 10 == 0:
                await asyncio.sleep(0)
        return out

    async def main() -> list[list[Checkpoint]]:
        return list(await asyncio.gather(*(writer(w) for w in range(WRITERS))))

    results = loop.run_until_complete(main())
    check(saver, loop.run_until_complete, shared, results, puts)


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


def test_two_savers_on_one_store_keep_one_line(saver, sibling, loop, async_only):
    """Writers on two savers over one store (as two processes would) continue one thread
    without forking it: every put wins the compare-and-set on the thread's latest."""
    savers = [saver, sibling]
    puts = 60
    if async_only:
        async def writer(w: int) -> list[Checkpoint]:
            own = savers[w % 2]
            return [await own.aput(Checkpoint("shared", state_of(w, i))) for i in range(puts)]

        async def main() -> list[list[Checkpoint]]:
            return list(await asyncio.gather(*(writer(w) for w in range(4))))

        results = loop.run_until_complete(main())

        async def collect() -> list[Checkpoint]:
            return [c async for c in saver.alist("shared")]

        listed = loop.run_until_complete(collect())
        latest = loop.run_until_complete(sibling.aget("shared"))
    else:
        def sync_writer(w: int) -> list[Checkpoint]:
            own = savers[w % 2]
            return [own.put(Checkpoint("shared", state_of(w, i))) for i in range(puts)]

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(sync_writer, range(4)))
        listed = list(saver.list("shared"))
        latest = sibling.get("shared")
    written = {c.id for puts_ in results for c in puts_}
    assert len(written) == 4 * puts and {c.id for c in listed} == written
    assert_one_line(listed, latest)


def test_a_stale_writer_continues_the_latest(api, sibling):
    """A saver that last saw an older checkpoint still appends to the newest one."""
    first = api.put(Checkpoint("t", {"n": 1}))
    if api.mode == "sync":
        assert sibling.get("t").id == first.id
        second = sibling.put(Checkpoint("t", {"n": 2}))
    else:
        assert api.run(sibling.aget("t")).id == first.id
        second = api.run(sibling.aput(Checkpoint("t", {"n": 2})))
    third = api.put(Checkpoint("t", {"n": 3}))
    assert third.parent_id == second.id and third.step == 2
    # an explicit older parent is a deliberate fork, and still allowed
    fork = api.put(Checkpoint("t", {"n": 4}, parent_id=first.id))
    assert fork.step == 1 and api.get("t").id == fork.id


def test_delete_thread_racing_writers_leaves_a_consistent_thread(
        saver, sync_ok, backend_name, parent_check_atomic):
    """Writers continue a thread while another caller deletes it again and again: at the
    end the thread is gone or every checkpoint's parent exists (no chain hangs off a
    deleted parent)."""
    if not parent_check_atomic:
        pytest.skip(f"{backend_name}: the insert cannot check its parent atomically")
    stop = False

    def writer(w: int) -> int:
        done = 0
        while not stop:
            saver.put(Checkpoint("raced", state_of(w, done)))
            done += 1
        return done

    def deleter() -> None:
        for _ in range(30):
            saver.delete_thread("raced")

    with ThreadPoolExecutor(max_workers=4) as pool:
        writers = [pool.submit(writer, w) for w in range(3)]
        pool.submit(deleter).result()
        stop = True
        assert all(f.result() > 0 for f in writers)
    items = {c.id: c for c in saver.list("raced")}
    for item in items.values():
        assert item.parent_id is None or item.parent_id in items, "dangling parent"
    if items:
        assert_one_line(list(items.values()), saver.get("raced"))


def _pending_for(writer: int) -> list[PendingWrite]:
    return [PendingWrite(f"task-{writer}-{i}", i % 2, "c", f"w{writer} #{i}")
            for i in range(12)]


def _expected_writes() -> list[tuple[str, int, object]]:
    return sorted((w.task_id, w.index, w.value) for writer in range(WRITERS)
                  for w in _pending_for(writer))


def test_threads_writing_to_one_checkpoint_lose_nothing(saver, sync_ok):
    """Pending writes of many tasks land on one checkpoint at once (a superstep of
    parallel nodes): every one is kept, whatever the store merges them into."""
    target = saver.put(Checkpoint("fan-out", {"n": 1}))

    def writer(w: int) -> None:
        for write in _pending_for(w):
            saver.put_writes("fan-out", target.id, [write])

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(writer, range(WRITERS)))
    saver._cache.clear()
    got = saver.get_writes("fan-out", [target.id])[target.id]
    assert sorted((w.task_id, w.index, w.value) for w in got) == _expected_writes()


def test_tasks_and_a_second_saver_writing_to_one_checkpoint_lose_nothing(saver, sibling,
                                                                         loop, backend_name):
    if backend_name == "mongo_mongomock":
        pytest.skip("mongomock's updates are not atomic: two savers' threads can both match "
                    "a document and one update overwrites the other (every server is atomic "
                    "per document; within one saver put_writes take turns)")
    target = loop.run_until_complete(saver.aput(Checkpoint("fan-out", {"n": 1})))

    async def writer(w: int) -> None:
        for write in _pending_for(w):
            await (saver if w % 2 else sibling).aput_writes("fan-out", target.id, [write])
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(writer(w) for w in range(WRITERS)))

    loop.run_until_complete(main())
    got = loop.run_until_complete(sibling.aget_writes("fan-out", [target.id]))[target.id]
    assert sorted((w.task_id, w.index, w.value) for w in got) == _expected_writes()
