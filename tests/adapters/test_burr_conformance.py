"""Conformance of the savegame Burr persisters: every check of research/burr.md section 8.

Burr publishes no persister test kit; these are the behaviours its builder and its own
persisters rely on, run against ``Persister`` over MemorySaver and MongoSaver (mongomock,
nx-27017) and ``AsyncPersister`` over MemorySaver and AsyncMongoSaver (nx-27017). App-level
checks (13, 14 and the hook duplication of 15) are in test_burr_apps.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import test_burr_harness as harness
from burr.core import State
from burr.core.persistence import AsyncBaseStatePersister, BaseStatePersister
from burr.core.state import FIELD_SERIALIZATION, register_field_serde

from savegame.adapters.burr import AsyncPersister, Persister
from savegame.savers import ConflictError, MemorySaver

FIELDS = {"partition_key", "app_id", "sequence_id", "position", "state", "created_at", "status"}


@pytest.fixture(params=harness.BACKENDS)
def backend(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
            ) -> Iterator[harness.Backend]:
    yield from harness.make_backend(request, request.param, loop)


class Api:
    """A persister's calls, awaited when it is async: one test body for both kinds."""

    def __init__(self, backend: harness.Backend, persister: Any):
        self.backend = backend
        self.p = persister

    def save(self, pk: str | None, app_id: str, seq: int, position: str, state: Any,
             status: str = "completed") -> None:
        if isinstance(state, dict):
            state = State(state)
        self.backend.run(self.p.save(pk, app_id, seq, position, state, status))

    def load(self, pk: str | None, app_id: str | None, seq: int | None = None) -> Any:
        return self.backend.run(self.p.load(pk, app_id, seq))

    def list(self, pk: str | None) -> list[str]:
        return self.backend.run(self.p.list_app_ids(pk))  # type: ignore[no-any-return]

    def initialize(self) -> None:
        self.backend.run(self.p.initialize())

    def is_initialized(self) -> bool:
        return bool(self.backend.run(self.p.is_initialized()))

    def cleanup(self) -> None:
        self.backend.run(self.p.cleanup())


@pytest.fixture
def api(backend: harness.Backend) -> Api:
    return Api(backend, backend.persister())


# -- 1-5: load and save ------------------------------------------------------------------
def test_interfaces(backend: harness.Backend, api: Api) -> None:
    base = AsyncBaseStatePersister if backend.is_async else BaseStatePersister
    assert isinstance(api.p, base)
    assert api.p.is_async() is backend.is_async


def test_1_load_on_empty_store_is_none(api: Api) -> None:
    assert api.load("pk", "nope") is None
    assert api.load("pk", "nope", 0) is None
    assert api.load(None, "nope") is None
    assert api.list("pk") == []


def test_2_save_then_load_returns_seven_fields_of_the_latest(api: Api) -> None:
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    for seq in range(3):
        api.save("pk", "app", seq, f"step{seq}", {"n": seq, "chat": ["hi"] * seq})
    row = api.load("pk", "app")
    assert set(row) == FIELDS
    assert isinstance(row["state"], State)
    assert row["state"].get_all() == {"n": 2, "chat": ["hi", "hi"]}
    assert (row["partition_key"], row["app_id"], row["sequence_id"], row["position"],
            row["status"]) == ("pk", "app", 2, "step2", "completed")
    assert isinstance(row["created_at"], str)
    assert dt.datetime.fromisoformat(row["created_at"]) >= before


def test_2_state_round_trips_json_like_values(api: Api) -> None:
    value = {"s": "é\x00", "i": -(2**62), "f": 1.5, "b": True, "none": None,
             "nested": {"l": [1, [2, {"k": "v"}]], "": "empty key"}, "empty": []}
    api.save("pk", "app", 0, "a", value)
    assert api.load("pk", "app")["state"].get_all() == value


def test_3_load_a_sequence_id_and_missing_ones(api: Api) -> None:
    for seq in (3, 4, 7):  # need not start at 0, nor be dense
        api.save("pk", "app", seq, f"p{seq}", {"seq": seq})
    for seq in (3, 4, 7):
        row = api.load("pk", "app", seq)
        assert row["sequence_id"] == seq and row["position"] == f"p{seq}"
        assert row["state"]["seq"] == seq
    for seq in (0, 2, 5, 6, 8, 100):
        assert api.load("pk", "app", seq) is None
    assert api.load("pk", "other", 3) is None


def test_4_latest_is_max_sequence_id_not_last_saved(api: Api) -> None:
    for seq in (5, 2, 10, 9, 0):
        api.save("pk", "app", seq, "a", {"seq": seq})
    assert api.load("pk", "app")["sequence_id"] == 10
    api.save("pk", "app", 11, "a", {"seq": 11}, "failed")  # failed rows count
    assert api.load("pk", "app")["sequence_id"] == 11


def test_5_failed_status_round_trips(api: Api) -> None:
    api.save("pk", "app", 0, "ok", {"x": 1})
    api.save("pk", "app", 1, "boom", {"x": 1}, "failed")
    assert api.load("pk", "app")["status"] == "failed"
    assert api.load("pk", "app")["position"] == "boom"
    assert api.load("pk", "app", 0)["status"] == "completed"
    with pytest.raises(TypeError, match="status"):
        api.save("pk", "app", 2, "x", {}, None)  # type: ignore[arg-type]


# -- 6-8: partitions ---------------------------------------------------------------------
def test_6_list_app_ids_is_scoped_by_partition(api: Api) -> None:
    api.save("p1", "shared", 0, "a", {"owner": "p1"})
    api.save("p2", "shared", 0, "a", {"owner": "p2"})
    api.save("p1", "only1", 0, "a", {})
    assert sorted(api.list("p1")) == ["only1", "shared"]
    assert api.list("p2") == ["shared"]
    assert api.list("p3") == []
    assert api.load("p1", "shared")["state"]["owner"] == "p1"
    assert api.load("p2", "shared")["state"]["owner"] == "p2"
    assert api.load("p2", "only1") is None


def test_6_separators_in_keys_never_leak_across_partitions(api: Api) -> None:
    keys = [("a", "b:c"), ("a:b", "c"), ("a%3Ab", "c"), ("a", "b%3Ac"), ("a:", "x"),
            ("", ":"), ("%", "%"), ("a\x00b", "\x00"), ("ünï/\\.$", "app.$x")]
    for index, (pk, app_id) in enumerate(keys):
        api.save(pk, app_id, 0, "a", {"i": index})
    for index, (pk, app_id) in enumerate(keys):
        assert api.load(pk, app_id)["state"]["i"] == index
        expected = sorted(a for p, a in keys if p == pk)
        assert sorted(api.list(pk)) == expected, pk


def test_7_partition_key_none_in_save_load_list(api: Api) -> None:
    api.save(None, "app", 0, "a", {"v": 1})
    row = api.load(None, "app")
    assert row["state"]["v"] == 1 and row["partition_key"] is None
    assert api.load(None, "app", 0)["sequence_id"] == 0
    assert api.list(None) == ["app"]
    # None is the partition "" (as in Burr's SQLite and PostgreSQL persisters)
    assert api.list("") == ["app"]
    assert api.load("", "app")["state"]["v"] == 1
    assert api.list("None") == []


def test_8_load_creates_no_phantom_app_ids(api: Api) -> None:
    for app_id in ("ghost", "ghost2"):
        assert api.load("pk", app_id) is None
        assert api.load("pk", app_id, 3) is None
    assert api.list("pk") == []
    api.save("pk", "real", 0, "a", {})
    assert api.load("pk", "ghost") is None
    assert api.list("pk") == ["real"]


def test_load_without_app_id_is_the_partitions_latest(api: Api) -> None:
    assert api.load("pk", None) is None
    api.save("pk", "app", 0, "a", {})
    assert api.load("pk", None)["app_id"] == "app"


# -- 9: saving the same key twice --------------------------------------------------------
def test_9_identical_save_is_a_no_op(api: Api) -> None:
    state = {"chat": ["hello"], "__SEQUENCE_ID": 0}
    api.save("pk", "app", 0, "a", state)
    first = api.load("pk", "app")
    api.save("pk", "app", 0, "a", state)
    again = api.load("pk", "app")
    assert again == first  # same created_at: nothing was rewritten
    assert api.list("pk") == ["app"]
    api.save("pk", "app", 1, "b", state, "failed")
    api.save("pk", "app", 1, "b", state, "failed")
    assert api.load("pk", "app")["status"] == "failed"


@pytest.mark.parametrize("change", ["state", "position", "completed_to_failed"])
def test_9_same_key_other_content_is_a_conflict(api: Api, change: str) -> None:
    api.save("pk", "app", 0, "a", {"x": 1})
    other = {
        "state": ("a", {"x": 2}, "completed"),
        "position": ("b", {"x": 1}, "completed"),
        "completed_to_failed": ("a", {"x": 1}, "failed"),
    }[change]
    with pytest.raises(ConflictError, match="sequence_id=0"):
        api.save("pk", "app", 0, *other)
    row = api.load("pk", "app", 0)
    assert (row["position"], row["state"]["x"], row["status"]) == ("a", 1, "completed")


def test_9_a_failed_row_may_be_completed_later_by_the_same_action(api: Api) -> None:
    api.save("pk", "app", 0, "start", {"x": 0})
    api.save("pk", "app", 1, "flaky", {"x": 0}, "failed")
    api.save("pk", "app", 1, "flaky", {"x": 1})  # the retry that succeeded
    api.save("pk", "app", 1, "flaky", {"x": 1})  # saved twice: still a no-op
    for row in (api.load("pk", "app"), api.load("pk", "app", 1)):
        assert (row["sequence_id"], row["status"], row["state"]["x"]) == (1, "completed", 1)
    with pytest.raises(ConflictError):  # completed once: final
        api.save("pk", "app", 1, "flaky", {"x": 2})
    with pytest.raises(ConflictError):  # by another action: a real conflict
        api.save("pk", "app", 0, "start", {"x": 0}, "failed")
        api.save("pk", "app", 0, "other", {"x": 9})
    api.save("pk", "app", 2, "flaky", {"x": 1}, "failed")
    with pytest.raises(ConflictError):
        api.save("pk", "app", 2, "different_action", {"x": 2})
    api.save("pk", "app", 3, "next", {"x": 3})
    assert api.load("pk", "app")["sequence_id"] == 3


# -- 10-11: snapshots and Burr's own keys -------------------------------------------------
def test_10_stored_state_is_a_snapshot(api: Api) -> None:
    chat = ["one"]
    api.save("pk", "app", 0, "a", State({"chat": chat}))
    chat.append("two")
    loaded = api.load("pk", "app")["state"]
    assert loaded["chat"] == ["one"]
    loaded["chat"].append("mutated")
    assert api.load("pk", "app")["state"]["chat"] == ["one"]


def test_11_sequence_id_and_prior_step_round_trip(api: Api) -> None:
    api.save("pk", "app", 4, "respond", {"__SEQUENCE_ID": 4, "__PRIOR_STEP": "respond",
                                         "chat": []})
    state = api.load("pk", "app")["state"]
    assert state["__SEQUENCE_ID"] == 4 and state["__PRIOR_STEP"] == "respond"


# -- 12: pickling, copy, cleanup ---------------------------------------------------------
def test_12_pickled_persister_reconnects_lazily(backend: harness.Backend, api: Api) -> None:
    api.save("pk", "app", 0, "a", {"v": "before"})
    clone = Api(backend, pickle.loads(pickle.dumps(api.p)))
    assert clone.p._store.saver is None  # nothing connected yet
    assert clone.is_initialized()  # initialize() ran before pickling
    assert clone.load("pk", "app")["state"]["v"] == "before"
    clone.save("pk", "app", 1, "b", {"v": "after"})
    assert api.load("pk", "app")["state"]["v"] == "after"
    clone.cleanup()
    assert clone.p._store.saver is None
    assert clone.load("pk", "app", 1)["state"]["v"] == "after"  # reconnects again
    clone.cleanup()


def test_12_copy_shares_the_storage(api: Api, backend: harness.Backend) -> None:
    seen: list[tuple[Any, ...]] = []
    api.p.on_save = lambda *args: seen.append(args)
    twin = Api(backend, api.p.copy())
    assert type(twin.p) is type(api.p) and twin.p is not api.p
    twin.save("pk", "app", 0, "a", {"v": 1})
    assert api.load("pk", "app")["state"]["v"] == 1
    assert twin.is_initialized()
    assert seen == [("pk", "app", 0, "a")]


def test_12_a_persister_over_a_saver_object_does_not_pickle() -> None:
    with pytest.raises(TypeError, match="factory"):
        pickle.dumps(Persister(MemorySaver()))


def test_12_cleanup_closes_only_an_owned_saver() -> None:
    saver = MemorySaver()
    closed: list[str] = []
    saver.close = lambda: closed.append("given")  # type: ignore[method-assign]
    with Persister(saver) as persister:
        persister.save(None, "app", 0, "a", State({}), "completed")
    assert closed == [] and persister.saver is saver

    made: list[MemorySaver] = []

    def factory() -> MemorySaver:
        made.append(MemorySaver())
        made[-1].close = lambda: closed.append("owned")  # type: ignore[method-assign]
        return made[-1]

    with Persister(factory=factory) as persister:
        persister.save(None, "app", 0, "a", State({}), "completed")
    assert closed == ["owned"] and len(made) == 1
    assert persister.load(None, "app") is None  # a new store: the factory made a fresh one
    assert len(made) == 2


def test_12_async_cleanup_and_context_manager(loop: asyncio.AbstractEventLoop) -> None:
    closed: list[str] = []

    def factory() -> MemorySaver:
        saver = MemorySaver()

        async def aclose() -> None:
            closed.append("owned")

        saver.aclose = aclose  # type: ignore[method-assign]
        return saver

    async def main() -> None:
        async with AsyncPersister(factory=factory) as persister:
            await persister.save(None, "app", 0, "a", State({"v": 1}), "completed")
            assert (await persister.load(None, "app"))["state"]["v"] == 1

    loop.run_until_complete(main())
    assert closed == ["owned"]


# -- 15: initialize, serde, callbacks ----------------------------------------------------
def test_15_initialize_is_idempotent_and_honest(backend: harness.Backend) -> None:
    fresh = Api(backend, (AsyncPersister if backend.is_async else Persister)(
        factory=backend.factory))
    # every savegame saver is ready on first use (MongoDB ones create their indexes then)
    assert fresh.is_initialized() is True
    fresh.initialize()
    fresh.initialize()
    assert fresh.is_initialized()
    fresh.save("pk", "app", 0, "a", {})
    fresh.cleanup()


def test_15_serde_kwargs_and_field_serde_are_honoured(backend: harness.Backend) -> None:
    field = f"when_{backend.name}"
    calls: list[dict[str, Any]] = []

    def ser(value: dt.date, **kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"iso": value.isoformat(), "tag": kwargs.get("tag")}

    def deser(value: dict[str, Any], **kwargs: Any) -> dt.date:
        calls.append(kwargs)
        assert value["tag"] == kwargs.get("tag")
        return dt.date.fromisoformat(value["iso"])

    register_field_serde(field, ser, deser)
    try:
        api = Api(backend, backend.persister(serde_kwargs={"tag": "T"}))
        api.save("pk", "app", 0, "a", {field: dt.date(2024, 2, 29), "plain": 1})
        state = api.load("pk", "app")["state"]
        assert state[field] == dt.date(2024, 2, 29) and state["plain"] == 1
        # loading adds Burr's pydantic allowlist (empty: no module named by a row imports)
        assert calls == [{"tag": "T"}, {"tag": "T", "allowlist": []}]
        api.p.set_serde_kwargs({"tag": "U"})
        api.save("pk", "app", 1, "a", {field: dt.date(2024, 3, 1)})
        assert api.load("pk", "app")["state"][field] == dt.date(2024, 3, 1)
    finally:
        FIELD_SERIALIZATION.pop(field, None)


def test_15_on_save_gets_every_save(backend: harness.Backend) -> None:
    seen: list[tuple[Any, ...]] = []

    if backend.is_async:
        async def on_save(*args: Any) -> None:
            await asyncio.sleep(0)
            seen.append(args)
    else:
        def on_save(*args: Any) -> None:
            seen.append(args)

    api = Api(backend, backend.persister(on_save=on_save))
    api.save(None, "app", 0, "first", {})
    api.save("pk", "app", 1, "second", {}, "failed")
    assert seen == [(None, "app", 0, "first"), ("pk", "app", 1, "second")]
    with pytest.raises(ConflictError):
        api.save("pk", "app", 1, "other", {})
    assert len(seen) == 2  # not called for a save that failed


# -- delta encoding, arguments, thread ids -----------------------------------------------
def test_chat_history_is_delta_encoded() -> None:
    saver = MemorySaver()
    persister = Persister(saver)
    message = {"role": "assistant", "content": "x" * 200}
    sizes = []
    for seq in range(60):
        chat = [dict(message, content=f"{seq}:{message['content']}") for _ in range(seq + 1)]
        persister.save("pk", "chat", seq, "respond", State({"chat": chat}), "completed")
        sizes.append(saver.storage_bytes())
    growth = (sizes[-1] - sizes[9]) / 50
    state_bytes = len(str(chat))
    assert growth < state_bytes / 20, (growth, state_bytes)


def test_bad_arguments_are_refused() -> None:
    persister = Persister(MemorySaver())
    state = State({})
    with pytest.raises(TypeError):
        persister.save(None, "app", "0", "a", state, "completed")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        persister.save(None, "app", True, "a", state, "completed")
    with pytest.raises(ValueError):
        persister.save(None, "app", -1, "a", state, "completed")
    with pytest.raises(ValueError):
        persister.save(None, "", 0, "a", state, "completed")
    with pytest.raises(TypeError):
        persister.save(3, "app", 0, "a", state, "completed")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Persister()
    with pytest.raises(TypeError, match="async-only"):
        from savegame.savers.base import BaseSaver

        class AsyncOnly(MemorySaver):
            _async_only = True

        Persister(AsyncOnly())
    assert isinstance(MemorySaver(), BaseSaver)


def test_thread_ids_are_readable_and_prefixed() -> None:
    persister = Persister(MemorySaver(), thread_prefix="apps/")
    assert persister.thread_id("tenant", "app-1") == "apps/tenant:app-1"
    assert persister.thread_id(None, "a:b%") == "apps/:a%3Ab%25"
    persister.save("tenant", "app-1", 0, "a", State({}), "completed")
    assert persister.saver.list_threads() == ["apps/tenant:app-1"]
    assert persister.saver.get("apps/tenant:app-1").id == "0" * 20  # type: ignore[union-attr]


def test_missing_burr_raises_missing_dependency_error() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["burr"] = None
        from savegame.savers import MissingDependencyError
        try:
            import savegame.adapters.burr
        except MissingDependencyError as exc:
            assert "savegame[burr]" in str(exc), exc
            print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_two_writers_of_one_app_agree(backend: harness.Backend, api: Api) -> None:
    """A persister remembers the row it saved last as the next row's parent; a row another
    writer stored meanwhile (with another parent) still compares by content."""
    other = Api(backend, backend.persister())
    api.save("pk", "app", 0, "a", {"v": 0})
    other.save("pk", "app", 1, "b", {"v": 1})
    other.save("pk", "app", 2, "c", {"v": 2})
    api.save("pk", "app", 2, "c", {"v": 2})  # identical: a no-op whatever its parent
    with pytest.raises(ConflictError):
        api.save("pk", "app", 2, "c", {"v": 3})
    api.save("pk", "app", 3, "d", {"v": 3})
    assert [api.load("pk", "app", seq)["state"]["v"] for seq in range(4)] == [0, 1, 2, 3]
    assert other.load("pk", "app")["sequence_id"] == 3
