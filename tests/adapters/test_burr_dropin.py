"""The Burr persisters as a drop-in for Burr's own (issue #10, items 1-5, and the pickle
opt-in of issue #11, item 3): a new process over an existing store, any status string,
pickling over a MongoDB client, listing and loading like Burr's SQLite persister, and
loading pydantic models and pickle rows safely.

Backends as in test_burr_conformance.py: ``Persister`` over MemorySaver, MongoSaver on
mongomock and on nx-27017 (real driver); ``AsyncPersister`` over MemorySaver and
AsyncMongoSaver on nx-27017.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongo_harness
import pydantic
import pytest
import test_burr_harness as harness
from burr.core import ApplicationBuilder, State, action

from savegame.adapters.burr import AsyncPersister, Persister
from savegame.savers import MemorySaver, SerializationError


@pytest.fixture(params=harness.BACKENDS)
def backend(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
            ) -> Iterator[harness.Backend]:
    yield from harness.make_backend(request, request.param, loop)


def new_persister(backend: harness.Backend, **options: Any) -> Any:
    """What a new process does: a new saver object over the store, a new persister, no
    ``initialize()`` call."""
    saver = backend.factory()
    backend.savers.append(saver)
    return (AsyncPersister if backend.is_async else Persister)(saver, **options)


def save(backend: harness.Backend, persister: Any, pk: str | None, app_id: str, seq: int,
         state: dict[str, Any], status: str = "completed", position: str = "step") -> None:
    backend.run(persister.save(pk, app_id, seq, position, State(state), status))


@action(reads=["n"], writes=["n"])
def count(state: State[Any]) -> State[Any]:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["n"])
async def acount(state: State[Any]) -> State[Any]:
    await asyncio.sleep(0)
    return state.update(n=state["n"] + 1)


def build(backend: harness.Backend, persister: Any, app_id: str) -> Any:
    builder = (
        ApplicationBuilder()
        .with_actions(count=acount if backend.is_async else count)
        .with_transitions(("count", "count"))
        .with_identifiers(app_id=app_id, partition_key="pk")
        .initialize_from(persister, resume_at_next_action=True, default_state={"n": 0},
                         default_entrypoint="count")
        .with_state_persister(persister)
    )
    return backend.run(builder.abuild()) if backend.is_async else builder.build()


# -- item 1: is_initialized over an existing store ----------------------------------------
def test_1_a_new_process_over_a_set_up_store_is_initialized(backend: harness.Backend) -> None:
    writer = backend.persister()  # the first process: initialize(), run an app
    app = build(backend, writer, "app")
    for _ in range(3):
        backend.run(app.astep()) if backend.is_async else app.step()

    fresh = new_persister(backend)  # a new process: no initialize() on this object
    assert backend.run(fresh.is_initialized()) is True
    resumed = build(backend, fresh, "app")  # Burr's builder checks is_initialized()
    assert resumed.sequence_id == 2 and resumed.state["n"] == 3
    backend.run(resumed.astep()) if backend.is_async else resumed.step()
    assert backend.run(fresh.load("pk", "app"))["state"]["n"] == 4
    backend.run(fresh.initialize())  # still idempotent
    assert backend.run(fresh.is_initialized()) is True


def test_1_a_store_nobody_set_up_sets_itself_up_on_first_use(backend: harness.Backend) -> None:
    fresh = new_persister(backend)
    assert backend.run(fresh.is_initialized()) is True
    app = build(backend, fresh, "first")
    backend.run(app.astep()) if backend.is_async else app.step()
    assert backend.run(fresh.load("pk", "first"))["sequence_id"] == 0


# -- item 2: any status string --------------------------------------------------------------
@pytest.mark.parametrize("status", ["in_progress", "running", "", "Ünïcode ☃", "failed"])
def test_2_any_status_is_stored_and_returned_as_given(backend: harness.Backend,
                                                      status: str) -> None:
    persister = backend.persister()
    save(backend, persister, "pk", "app", 0, {"x": 1}, status)
    assert backend.run(persister.load("pk", "app"))["status"] == status
    assert backend.run(persister.load("pk", "app", 0))["status"] == status
    save(backend, persister, "pk", "app", 0, {"x": 1}, status)  # identical: a no-op


# -- item 4: listing and loading like Burr's SQLite persister --------------------------------
def test_4_list_app_ids_is_newest_first_and_load_without_app_id_is_the_latest(
    backend: harness.Backend,
) -> None:
    persister = backend.persister()
    assert backend.run(persister.load("pk", None)) is None
    for app_id, seq in (("b", 0), ("a", 0), ("c", 0), ("b", 1), ("other-pk", 0)):
        pk = "pk" if app_id != "other-pk" else "elsewhere"
        save(backend, persister, pk, app_id, seq, {"app": app_id, "seq": seq})
        time.sleep(0.005)  # created_at has millisecond precision
    assert backend.run(persister.list_app_ids("pk")) == ["b", "c", "a"]
    latest = backend.run(persister.load("pk", None))
    assert (latest["app_id"], latest["sequence_id"], latest["state"]["seq"]) == ("b", 1, 1)
    assert latest["partition_key"] == "pk"
    assert backend.run(persister.load("elsewhere", None))["app_id"] == "other-pk"
    assert backend.run(persister.load("nobody", None)) is None
    # a new process lists and loads the same
    fresh = new_persister(backend)
    assert backend.run(fresh.list_app_ids("pk")) == ["b", "c", "a"]
    assert backend.run(fresh.load("pk", None))["app_id"] == "b"


def test_4_partition_key_none_lists_and_loads_its_latest(backend: harness.Backend) -> None:
    persister = backend.persister()
    save(backend, persister, None, "first", 0, {"v": 1})
    time.sleep(0.005)
    save(backend, persister, None, "second", 0, {"v": 2})
    assert backend.run(persister.list_app_ids(None)) == ["second", "first"]
    latest = backend.run(persister.load(None, None))
    assert latest["app_id"] == "second" and latest["partition_key"] is None


# -- item 3: pickling ---------------------------------------------------------------------
def test_3_persister_over_a_mongo_client_pickles_and_reconnects(nx_uri: str) -> None:
    import pymongo

    from savegame.savers import MongoSaver

    prefix = mongo_harness.fresh_prefix()
    client: Any = pymongo.MongoClient(nx_uri, serverSelectionTimeoutMS=5000,
                                      appname="burr-pickle")
    try:
        persister = Persister(MongoSaver(client, database=mongo_harness.DATABASE,
                                         prefix=prefix, retries=3))
        persister.save("pk", "app", 0, "a", State({"v": "before"}), "completed")
        data = pickle.dumps(persister)
        clone = pickle.loads(data)
        assert clone.saver is not persister.saver
        assert clone.saver.client is not client  # its own client, same address/options
        assert clone.saver.client.options.pool_options.metadata["application"]["name"] \
            == "burr-pickle"
        assert clone.saver.retries == 3
        assert clone.load("pk", "app")["state"]["v"] == "before"
        clone.save("pk", "app", 1, "b", State({"v": "after"}), "completed")
        assert persister.load("pk", "app")["state"]["v"] == "after"
        assert clone.is_initialized()
        assert pickle.loads(pickle.dumps(clone)).load("pk", "app", 1) is not None
        clone.cleanup()  # closes the client the clone made, not the caller's
        assert persister.load("pk", "app", 0) is not None
    finally:
        mongo_harness.drop(MongoSaver(client, database=mongo_harness.DATABASE, prefix=prefix))
        client.close()


def test_3_async_persister_over_an_async_mongo_client_pickles(
    nx_uri: str, loop: asyncio.AbstractEventLoop
) -> None:
    import pymongo

    from savegame.savers import AsyncMongoSaver, MongoSaver

    prefix = mongo_harness.fresh_prefix()

    async def main() -> None:
        client: Any = pymongo.AsyncMongoClient(nx_uri, serverSelectionTimeoutMS=5000)
        try:
            persister = AsyncPersister(AsyncMongoSaver(
                client, database=mongo_harness.DATABASE, prefix=prefix))
            await persister.save("pk", "app", 0, "a", State({"v": 1}), "completed")
            clone = pickle.loads(pickle.dumps(persister))
            assert await clone.is_initialized()
            assert (await clone.load("pk", "app"))["state"]["v"] == 1
            await clone.save("pk", "app", 1, "b", State({"v": 2}), "completed")
            assert (await persister.load("pk", "app"))["state"]["v"] == 2
            await clone.cleanup()
        finally:
            await client.close()

    try:
        loop.run_until_complete(main())
    finally:
        mongo_harness.drop(MongoSaver(mongo_harness.sync_client(nx_uri),
                                      database=mongo_harness.DATABASE, prefix=prefix))


def test_3_persister_over_an_in_memory_store_says_why_it_does_not_pickle() -> None:
    import mongomock

    from savegame.savers import MongoSaver

    for persister in (Persister(MemorySaver()), AsyncPersister(MemorySaver()),
                      Persister(MongoSaver(mongomock.MongoClient()))):
        with pytest.raises(TypeError) as info:
            pickle.dumps(persister)
        message = str(info.value)
        assert "in-memory" in message or "in this process" in message, message
        assert "factory=" in message and "MongoSaver" in message, message


# -- item 5: pydantic models in a state, and pickle rows -----------------------------------
class Profile(pydantic.BaseModel):
    name: str
    tags: list[str] = []


def test_5_a_pydantic_model_the_program_imported_loads_without_configuration(
    backend: harness.Backend,
) -> None:
    persister = backend.persister()
    save(backend, persister, "pk", "app", 0, {"profile": Profile(name="ada", tags=["x"])})
    row = backend.run(new_persister(backend).load("pk", "app"))
    assert row["state"]["profile"] == Profile(name="ada", tags=["x"])


def forge(saver: Any, run: Any, value: dict[str, Any]) -> None:
    """Store a row whose field ``evil`` holds ``value``, as if written by an attacker with
    access to the database (a state is Burr's serialized dict)."""
    persister = Persister(MemorySaver())  # only for the thread id and metadata layout
    from savegame.savers import Checkpoint

    run(saver.aput(Checkpoint(
        persister.thread_id("pk", "forged"), {"ok": 1, "evil": value},
        id="0" * 20, node_id="start",
        metadata={"partition_key": "pk", "app_id": "forged", "sequence_id": 0,
                  "status": "completed"})))


@pytest.mark.parametrize("name", ["savegame_never_imported_burr.Evil", "subprocess.Popen",
                                  "os.system", f"{__name__}.forge"])
def test_5_a_row_naming_another_class_is_refused_and_nothing_is_imported(
    backend: harness.Backend, name: str
) -> None:
    saver = backend.factory()
    backend.savers.append(saver)
    forge(saver, backend.run, {"__burr_serde__": "pydantic", "__pydantic_class": name})
    persister = new_persister(backend)
    with pytest.raises(SerializationError, match=r"app_id='forged'.*state\['evil'\]") as info:
        backend.run(persister.load("pk", "forged"))
    assert info.value.path == "state['evil']"
    assert "savegame_never_imported_burr" not in sys.modules


def test_11_3_pickle_rows_are_refused_unless_the_user_opts_in(backend: harness.Backend,
                                                              tmp_path: Path) -> None:
    from burr.integrations.serde.pickle import register_type_to_pickle

    marker = tmp_path / "pickle-ran"

    class Boom:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    saver = backend.factory()
    backend.savers.append(saver)
    register_type_to_pickle(Boom)  # Burr's deserializer for "pickle" rows is now live
    forge(saver, backend.run, {"__burr_serde__": "pickle", "value": pickle.dumps(Boom())})
    with pytest.raises(SerializationError, match=r"pickle.*allow_pickle=True"):
        backend.run(new_persister(backend).load("pk", "forged"))
    assert not marker.exists()
    # a user who trusts the store opts in, and Burr's pickle path runs as Burr's does
    row = backend.run(new_persister(backend, allow_pickle=True).load("pk", "forged"))
    assert row is not None and marker.exists()


PYDANTIC_APP = textwrap.dedent('''
    """A Burr app whose state holds a pydantic model, run in two processes."""
    import sys

    import pydantic
    from burr.core import ApplicationBuilder, State, action

    from savegame.adapters.burr import Persister
    from savegame.savers import MongoSaver


    class Profile(pydantic.BaseModel):
        name: str
        visits: int


    @action(reads=["profile"], writes=["profile"])
    def visit(state: State) -> State:
        profile = state["profile"]
        assert isinstance(profile, Profile), type(profile)
        return state.update(profile=Profile(name=profile.name, visits=profile.visits + 1))


    def main(uri: str, database: str, prefix: str, steps: int) -> None:
        import pymongo

        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        persister = Persister(MongoSaver(client, database=database, prefix=prefix))
        app = (
            ApplicationBuilder()
            .with_actions(visit=visit)
            .with_transitions(("visit", "visit"))
            .with_identifiers(app_id="profile-app", partition_key="pk")
            .initialize_from(persister, resume_at_next_action=True,
                             default_state={"profile": Profile(name="ada", visits=0)},
                             default_entrypoint="visit")
            .with_state_persister(persister)
            .build()
        )
        for _ in range(steps):
            app.step()
        print(app.state["profile"].visits, type(app.state["profile"]).__name__)
        client.close()


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
''')


def test_5_a_pydantic_state_app_resumes_in_a_fresh_process(nx_uri: str, tmp_path: Path) -> None:
    from savegame.savers import MongoSaver

    script = tmp_path / "pydantic_app.py"
    script.write_text(PYDANTIC_APP)
    prefix = mongo_harness.fresh_prefix()
    args = [sys.executable, str(script), nx_uri,
            mongo_harness.DATABASE, prefix]
    try:
        for steps, expected in ((2, "2 Profile"), (3, "5 Profile")):
            done = subprocess.run([*args, str(steps)], capture_output=True, text=True,
                                  timeout=120, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
            assert done.stdout.strip() == expected
            assert "SecurityWarning" not in done.stderr  # no import by a stored name
    finally:
        mongo_harness.drop(MongoSaver(mongo_harness.sync_client(nx_uri),
                                      database=mongo_harness.DATABASE, prefix=prefix))
