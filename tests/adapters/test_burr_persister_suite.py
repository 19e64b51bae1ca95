"""What Burr's own persister tests check, in our words, on the savegame persisters (issue
#10, item 9). Burr's published distribution ships no tests; these follow the behaviours its
repository tests for its SQLite, MongoDB, Redis and PostgreSQL persisters and its end-to-end
parallel test: the contract across a new connection, statuses, partitions,
``partition_key=None``, ``copy``, pickling (into another process), fork and resume with a
fresh persister, and parallel sub-applications (``MapStates``) that fail and are resumed.

Backends as in test_burr_conformance.py (sync ``Persister`` over MemorySaver and MongoSaver
on mongomock and nx-27017, ``AsyncPersister`` over MemorySaver and AsyncMongoSaver on
nx-27017).
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mongo_harness
import pytest
import test_burr_harness as harness
from burr.core import ApplicationBuilder, ApplicationContext, GraphBuilder, State, action
from burr.core.action import Result
from burr.core.parallelism import MapStates, RunnableGraph, SubgraphType

from savegame.adapters.burr import AsyncPersister, Persister


@pytest.fixture(params=harness.BACKENDS)
def backend(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
            ) -> Iterator[harness.Backend]:
    yield from harness.make_backend(request, request.param, loop)


def fresh(backend: harness.Backend) -> Any:
    """A persister over a new connection (a new saver object, a new client on MongoDB),
    without ``initialize()``: what another process starts with."""
    saver = backend.factory()
    backend.savers.append(saver)
    return (AsyncPersister if backend.is_async else Persister)(saver)


def call(backend: harness.Backend, value: Any) -> Any:
    return backend.run(value)


# -- the contract across a new connection --------------------------------------------------
def test_contract_holds_across_a_new_connection(backend: harness.Backend) -> None:
    first = backend.persister()
    assert call(backend, first.list_app_ids("pk")) == []
    assert call(backend, first.load("pk", "app")) is None
    call(backend, first.save("pk", "app", 1, "position", State({"key": "value"}), "status"))
    other = fresh(backend)
    assert call(backend, other.is_initialized())
    row = call(backend, other.load("pk", "app"))
    assert row["state"] == State({"key": "value"})
    assert (row["position"], row["status"], row["sequence_id"]) == ("position", "status", 1)
    assert call(backend, other.load("pk", "app", 1))["state"]["key"] == "value"
    assert call(backend, other.load("pk", "app", 2)) is None
    call(backend, other.save("pk", "app2", 1, "position", State({"n": 2}), "completed"))
    assert set(call(backend, first.list_app_ids("pk"))) == {"app", "app2"}


def test_statuses_are_kept_per_row(backend: harness.Backend) -> None:
    persister = backend.persister()
    statuses = ["in_progress", "completed", "failed", "custom-status"]
    for seq, status in enumerate(statuses):
        call(backend, persister.save("pk", "app", seq, f"step{seq}", State({"seq": seq}),
                                     status))
    other = fresh(backend)
    assert [call(backend, other.load("pk", "app", seq))["status"]
            for seq in range(len(statuses))] == statuses
    assert call(backend, other.load("pk", "app"))["status"] == "custom-status"


def test_partitions_keep_apps_apart(backend: harness.Backend) -> None:
    persister = backend.persister()
    for pk in ("tenant-a", "tenant-b"):
        call(backend, persister.save(pk, "shared-id", 0, "a", State({"owner": pk}),
                                     "completed"))
    call(backend, persister.save("tenant-a", "only-a", 0, "a", State({}), "completed"))
    other = fresh(backend)
    assert sorted(call(backend, other.list_app_ids("tenant-a"))) == ["only-a", "shared-id"]
    assert call(backend, other.list_app_ids("tenant-b")) == ["shared-id"]
    for pk in ("tenant-a", "tenant-b"):
        assert call(backend, other.load(pk, "shared-id"))["state"]["owner"] == pk
    assert call(backend, other.load("tenant-b", "only-a")) is None


@pytest.mark.parametrize("method", ["save", "load", "load_seq", "load_latest", "list_app_ids"])
def test_every_method_accepts_partition_key_none(backend: harness.Backend,
                                                 method: str) -> None:
    persister = backend.persister()
    call(backend, persister.save(None, "app", 0, "a", State({"v": 1}), "completed"))
    result = {
        "save": lambda: persister.save(None, "app", 1, "b", State({"v": 2}), "completed"),
        "load": lambda: persister.load(None, "app"),
        "load_seq": lambda: persister.load(None, "app", 0),
        "load_latest": lambda: persister.load(None, None),
        "list_app_ids": lambda: persister.list_app_ids(None),
    }[method]()
    value = call(backend, result)
    if method == "list_app_ids":
        assert value == ["app"]
    elif method != "save":
        assert value["state"]["v"] == 1 and value["partition_key"] is None


# -- copy ------------------------------------------------------------------------------------
def test_copies_share_the_store_from_other_threads(backend: harness.Backend) -> None:
    persister = backend.persister()
    errors: list[BaseException] = []

    def work(index: int) -> None:
        twin = persister.copy()
        try:
            saved = twin.save("pk", f"app{index}", 0, "a", State({"i": index}), "completed")
            if asyncio.iscoroutine(saved):  # AsyncPersister over MemorySaver: any loop
                asyncio.run(saved)
        except BaseException as exc:  # reported below
            errors.append(exc)

    if backend.name in ("async_mongo_nx", "async_redis_cluster"):  # an async client stays
        # on its loop: copies too
        async def all_copies() -> None:
            await asyncio.gather(*(persister.copy().save(
                "pk", f"app{i}", 0, "a", State({"i": i}), "completed") for i in range(8)))

        call(backend, all_copies())
    else:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert sorted(call(backend, persister.list_app_ids("pk"))) == sorted(
        f"app{i}" for i in range(8))
    assert call(backend, fresh(backend).load("pk", "app5"))["state"]["i"] == 5


# -- pickling into another process ------------------------------------------------------------
CHILD = textwrap.dedent("""
    import pickle, sys
    from burr.core import State
    persister = pickle.loads(sys.stdin.buffer.read())
    row = persister.load("pk", "app")
    persister.save("pk", "app", row["sequence_id"] + 1, "child", State({"from": "child"}),
                   "completed")
    print(row["state"]["from"])
    persister.cleanup()
""")


def test_a_pickled_persister_works_in_another_process(nx_uri: str) -> None:
    import pymongo

    from savegame.savers import MongoSaver

    prefix = mongo_harness.fresh_prefix()
    client: Any = pymongo.MongoClient(nx_uri, serverSelectionTimeoutMS=5000)
    try:
        persister = Persister(MongoSaver(client, database=mongo_harness.DATABASE,
                                         prefix=prefix))
        persister.save("pk", "app", 0, "parent", State({"from": "parent"}), "completed")
        done = subprocess.run([sys.executable, "-c", CHILD], input=pickle.dumps(persister),
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert done.stdout.decode().strip() == "parent"
        row = persister.load("pk", "app")
        assert (row["sequence_id"], row["position"], row["state"]["from"]) == (1, "child",
                                                                               "child")
    finally:
        mongo_harness.drop(MongoSaver(client, database=mongo_harness.DATABASE, prefix=prefix))
        client.close()


# -- fork and resume with a fresh persister ----------------------------------------------------
@action(reads=["n"], writes=["n", "trail"])
def bump(state: State[Any]) -> State[Any]:
    return state.update(n=state["n"] + 1).append(trail=state["n"] + 1)


@action(reads=["n"], writes=["n", "trail"])
async def abump(state: State[Any]) -> State[Any]:
    await asyncio.sleep(0)
    return state.update(n=state["n"] + 1).append(trail=state["n"] + 1)


def counter_app(backend: harness.Backend, persister: Any, app_id: str, **initialize: Any
                ) -> Any:
    builder = (
        ApplicationBuilder()
        .with_actions(bump=abump if backend.is_async else bump)
        .with_transitions(("bump", "bump"))
        .with_identifiers(app_id=app_id, partition_key="pk")
        .initialize_from(persister, resume_at_next_action=True,
                         default_state={"n": 0, "trail": []}, default_entrypoint="bump",
                         **initialize)
        .with_state_persister(persister)
    )
    return backend.run(builder.abuild()) if backend.is_async else builder.build()


def advance(backend: harness.Backend, app: Any, steps: int) -> None:
    for _ in range(steps):
        backend.run(app.astep()) if backend.is_async else app.step()


def test_fork_and_resume_with_fresh_persisters(backend: harness.Backend) -> None:
    advance(backend, counter_app(backend, backend.persister(), "origin"), 5)
    fork = counter_app(backend, fresh(backend), "fork", fork_from_app_id="origin",
                       fork_from_partition_key="pk", fork_from_sequence_id=2)
    assert fork.sequence_id == 2 and fork.state["n"] == 3
    advance(backend, fork, 2)
    resumed = counter_app(backend, fresh(backend), "fork")
    assert resumed.sequence_id == 4 and resumed.state["trail"] == [1, 2, 3, 4, 5]
    advance(backend, resumed, 1)
    reader = fresh(backend)
    assert call(backend, reader.load("pk", "fork"))["state"]["n"] == 6
    assert call(backend, reader.load("pk", "origin"))["state"]["n"] == 5  # untouched
    assert call(backend, reader.list_app_ids("pk")) == ["fork", "origin"]  # newest first


# -- parallel sub-applications (MapStates), failing and resumed --------------------------------
class Flaky(Exception):
    pass


def parallel_app(backend: harness.Backend, persister: Any, app_id: str, runs: dict[str, int],
                 fail_once: set[int]) -> Any:
    """A parent app mapping ``square`` over 6 numbers in sub-applications; the sub-app of
    each number in ``fail_once`` fails at its second step the first time."""
    lock = threading.Lock()

    def note(context: ApplicationContext) -> None:
        with lock:
            runs[context.app_id] = runs.get(context.app_id, 0) + 1

    def maybe_fail(n: int) -> None:
        with lock:
            if n in fail_once:
                fail_once.discard(n)
                raise Flaky(f"sub-app of {n} fails once")

    if backend.is_async:
        @action(reads=["n"], writes=["seen"])
        async def start(state: State[Any], __context: ApplicationContext) -> State[Any]:
            note(__context)
            return state.update(seen=True)

        @action(reads=["n"], writes=["square"])
        async def square(state: State[Any]) -> State[Any]:
            maybe_fail(state["n"])
            return state.update(square=state["n"] ** 2)
    else:
        @action(reads=["n"], writes=["seen"])
        def start(state: State[Any], __context: ApplicationContext) -> State[Any]:
            note(__context)
            return state.update(seen=True)

        @action(reads=["n"], writes=["square"])
        def square(state: State[Any]) -> State[Any]:
            maybe_fail(state["n"])
            return state.update(square=state["n"] ** 2)

    graph = (GraphBuilder().with_actions(start=start, square=square, done=Result("square"))
             .with_transitions(("start", "square"), ("square", "done")).build())

    class Squares(MapStates):
        def states(self, state: State[Any], context: ApplicationContext,
                   inputs: dict[str, Any]) -> Generator[State[Any], None, None]:
            for n in state["numbers"]:
                yield state.update(n=n)

        def action(self, state: State[Any], inputs: dict[str, Any]) -> SubgraphType:
            return RunnableGraph(graph, entrypoint="start", halt_after=["done"])

        def reduce(self, state: State[Any], states: Any) -> Any:
            if not backend.is_async:
                return state.update(squares=sorted(s["square"] for s in states))

            async def gather() -> State[Any]:  # Burr awaits reduce of an async MapStates
                return state.update(squares=sorted([s["square"] async for s in states]))

            return gather()

        def is_async(self) -> bool:  # Burr: async sub-apps run with asyncio.gather
            return backend.is_async

        @property
        def reads(self) -> list[str]:
            return ["numbers"]

        @property
        def writes(self) -> list[str]:
            return ["squares"]

    @action(reads=[], writes=["numbers"])
    def numbers(state: State[Any]) -> State[Any]:
        return state.update(numbers=list(range(1, 7)))

    builder = (
        ApplicationBuilder()
        .with_actions(numbers=numbers, squares=Squares(), final=Result("squares"))
        .with_transitions(("numbers", "squares"), ("squares", "final"))
        .with_identifiers(app_id=app_id, partition_key="pk")
        .initialize_from(persister, resume_at_next_action=True, default_state={},
                         default_entrypoint="numbers")
        .with_state_persister(persister)
    )
    if backend.is_async:
        return backend.run(builder.abuild())
    return builder.with_parallel_executor(lambda: ThreadPoolExecutor(max_workers=4)).build()


def settle(backend: harness.Backend) -> None:
    """Run Burr's leftover sub-application tasks to their end (their errors are theirs);
    the drivers' own background tasks (server monitors) run forever and are left alone."""
    leftovers = [t for t in asyncio.all_tasks(backend.loop)
                 if "/burr/" in getattr(t.get_coro(), "cr_code", settle.__code__).co_filename]
    if leftovers:
        backend.run(asyncio.gather(*leftovers, return_exceptions=True))


def test_parallel_sub_applications_fail_and_resume_from_their_rows(
    backend: harness.Backend,
) -> None:
    runs: dict[str, int] = {}
    fail_once = {2, 5}
    final: Any = None
    attempts = 0
    while final is None:
        attempts += 1
        assert attempts <= 4, "the parallel app never finished"
        app = parallel_app(backend, fresh(backend), "parent", runs, fail_once)
        try:
            if backend.is_async:
                *_, final = backend.run(app.arun(halt_after=["final"]))
            else:
                *_, final = app.run(halt_after=["final"])
        except Flaky:
            if backend.is_async:  # Burr's gather leaves the sibling sub-apps running: let
                settle(backend)  # them finish saving, as a process retrying later would see
            continue
    assert final["squares"] == [1, 4, 9, 16, 25, 36]
    assert attempts >= 2 and not fail_once
    # each sub-application ran its first step once: restarts resumed from its own rows
    assert len(runs) == 6 and set(runs.values()) == {1}, runs
    apps = call(backend, fresh(backend).list_app_ids("pk"))
    assert "parent" in apps and set(runs) <= set(apps)
    for sub_app in runs:
        row = call(backend, fresh(backend).load("pk", sub_app))
        assert row["position"] == "done" and row["state"]["square"] == row["state"]["n"] ** 2
