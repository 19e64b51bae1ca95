"""Real Burr applications on the savegame persisters (research/burr.md section 8, checks 13,
14, 15): a chat app persisted every step, resumed from a new persister instance, forked, an
action that fails and is resumed, and a persister registered twice (hook duplication).

Sync backends run sync apps (``build`` / ``step``), async backends async apps (``abuild`` /
``astep``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import test_burr_harness as harness
from burr.core import Application, ApplicationBuilder, State, action
from burr.core.persistence import PersisterHook, PersisterHookAsync

REPLY = "a fairly long assistant reply that repeats itself " * 3


@pytest.fixture(params=harness.BACKENDS)
def backend(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
            ) -> Iterator[harness.Backend]:
    yield from harness.make_backend(request, request.param, loop)


class Flaky:
    """Makes the ``tool`` action raise while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False


def _human(state: State[Any]) -> State[Any]:
    turn = state["turn"] + 1
    return state.append(chat={"role": "user", "content": f"question {turn}"}).update(turn=turn)


def _ai(state: State[Any]) -> State[Any]:
    question = state["chat"][-1]["content"]
    return state.append(chat={"role": "assistant", "content": f"{question}: {REPLY}"})


def _tool(state: State[Any], flaky: Flaky) -> State[Any]:
    if flaky.failing:
        raise RuntimeError("tool is down")
    return state.update(tool_calls=state["tool_calls"] + 1)


def actions(backend: harness.Backend, flaky: Flaky) -> dict[str, Any]:
    """human -> ai -> tool -> human ..., sync or async like the backend's persister."""
    if backend.is_async:
        @action(reads=["turn"], writes=["chat", "turn"])
        async def human(state: State[Any]) -> State[Any]:
            await asyncio.sleep(0)
            return _human(state)

        @action(reads=["chat"], writes=["chat"])
        async def ai(state: State[Any]) -> State[Any]:
            await asyncio.sleep(0)
            return _ai(state)

        @action(reads=["tool_calls"], writes=["tool_calls"])
        async def tool(state: State[Any]) -> State[Any]:
            await asyncio.sleep(0)
            return _tool(state, flaky)
    else:
        @action(reads=["turn"], writes=["chat", "turn"])
        def human(state: State[Any]) -> State[Any]:
            return _human(state)

        @action(reads=["chat"], writes=["chat"])
        def ai(state: State[Any]) -> State[Any]:
            return _ai(state)

        @action(reads=["tool_calls"], writes=["tool_calls"])
        def tool(state: State[Any]) -> State[Any]:
            return _tool(state, flaky)

    return {"human": human, "ai": ai, "tool": tool}


DEFAULT_STATE = {"chat": [], "turn": 0, "tool_calls": 0}


def build(backend: harness.Backend, persister: Any, app_id: str, *, pk: str | None = "user",
          flaky: Flaky | None = None, hooks: tuple[Any, ...] = (), sequence_id: int | None = None,
          **initialize: Any) -> Application[Any]:
    builder = (
        ApplicationBuilder()
        .with_actions(**actions(backend, flaky or Flaky()))
        .with_transitions(("human", "ai"), ("ai", "tool"), ("tool", "human"))
        .with_identifiers(app_id=app_id, partition_key=pk, sequence_id=sequence_id)
        .initialize_from(persister, resume_at_next_action=True, default_state=DEFAULT_STATE,
                         default_entrypoint="human", **initialize)
        .with_state_persister(persister)
    )
    if hooks:
        builder = builder.with_hooks(*hooks)
    app: Application[Any] = backend.run(builder.abuild()) if backend.is_async else builder.build()
    return app


def steps(backend: harness.Backend, app: Application[Any], count: int) -> None:
    for _ in range(count):
        backend.run(app.astep()) if backend.is_async else app.step()


def rows(backend: harness.Backend, persister: Any, app_id: str, pk: str | None = "user"
         ) -> dict[int, tuple[str, str]]:
    """sequence_id -> (position, status) of the app's saved rows (probing 0..40)."""
    out = {}
    for seq in range(40):
        row = backend.run(persister.load(pk, app_id, seq))
        if row is not None:
            out[seq] = (row["position"], row["status"])
    return out


def test_chat_app_resumes_from_a_new_persister_instance(backend: harness.Backend) -> None:
    persister = backend.persister()
    app = build(backend, persister, "chat")
    assert app.sequence_id is None
    steps(backend, app, 5)
    saved = rows(backend, persister, "chat")
    assert list(saved) == [0, 1, 2, 3, 4]
    assert [position for position, _ in saved.values()] == ["human", "ai", "tool", "human",
                                                            "ai"]
    assert backend.run(persister.list_app_ids("user")) == ["chat"]

    fresh = backend.persister()  # a new process would start like this
    resumed = build(backend, fresh, "chat")
    assert resumed.sequence_id == 4
    assert resumed.get_next_action().name == "tool"
    assert resumed.state["chat"] == app.state["chat"]
    steps(backend, resumed, 4)
    latest = backend.run(fresh.load("user", "chat"))
    assert (latest["sequence_id"], latest["position"]) == (8, "tool")
    state = latest["state"]
    assert state["__SEQUENCE_ID"] == 8 and state["__PRIOR_STEP"] == "tool"
    assert [m["content"] for m in state["chat"] if m["role"] == "user"] == [
        "question 1", "question 2", "question 3"]
    assert len(state["chat"]) == 6 and state["tool_calls"] == 3


def test_partition_key_none_app(backend: harness.Backend) -> None:
    persister = backend.persister()
    steps(backend, build(backend, persister, "anon", pk=None), 3)
    resumed = build(backend, backend.persister(), "anon", pk=None)
    assert resumed.sequence_id == 2 and resumed.get_next_action().name == "human"
    assert backend.run(persister.list_app_ids(None)) == ["anon"]


def test_fork_from_app_id_and_sequence_id(backend: harness.Backend) -> None:
    persister = backend.persister()
    steps(backend, build(backend, persister, "parent"), 6)

    fork = build(backend, persister, "fork", fork_from_app_id="parent",
                 fork_from_partition_key="user", fork_from_sequence_id=3)
    assert fork.sequence_id == 3 and fork.get_next_action().name == "ai"
    assert fork.parent_pointer is not None and fork.parent_pointer.sequence_id == 3
    steps(backend, fork, 2)
    assert rows(backend, persister, "fork") == {4: ("ai", "completed"), 5: ("tool", "completed")}
    assert list(rows(backend, persister, "parent")) == [0, 1, 2, 3, 4, 5]  # untouched

    # fork_from_partition_key defaults to None, not to the new app's partition key
    latest_fork = build(backend, persister, "fork2", fork_from_app_id="parent",
                        fork_from_partition_key="user")
    assert latest_fork.sequence_id == 5 and latest_fork.get_next_action().name == "human"
    steps(backend, latest_fork, 1)
    assert rows(backend, persister, "fork2") == {6: ("human", "completed")}
    assert sorted(backend.run(persister.list_app_ids("user"))) == ["fork", "fork2", "parent"]

    # the fork resumes on its own, from its own rows
    again = build(backend, backend.persister(), "fork")
    assert again.sequence_id == 5 and again.get_next_action().name == "human"


def test_failed_action_is_saved_then_resumed(backend: harness.Backend) -> None:
    persister = backend.persister()
    flaky = Flaky()
    app = build(backend, persister, "crashy", flaky=flaky)
    steps(backend, app, 2)  # human, ai
    flaky.failing = True
    with pytest.raises(RuntimeError, match="tool is down"):
        steps(backend, app, 1)
    failed = backend.run(persister.load("user", "crashy"))
    assert (failed["sequence_id"], failed["position"], failed["status"]) == (2, "tool", "failed")
    assert failed["state"]["tool_calls"] == 0  # the state before the action ran

    flaky.failing = False
    resumed = build(backend, backend.persister(), "crashy", flaky=flaky)
    assert resumed.sequence_id == 2 and resumed.get_next_action().name == "tool"
    steps(backend, resumed, 2)
    assert rows(backend, persister, "crashy") == {
        0: ("human", "completed"), 1: ("ai", "completed"), 2: ("tool", "failed"),
        3: ("tool", "completed"), 4: ("human", "completed")}
    assert backend.run(persister.load("user", "crashy"))["state"]["tool_calls"] == 1


def test_failed_step_retried_from_the_row_before_completes_it(backend: harness.Backend) -> None:
    persister = backend.persister()
    flaky = Flaky()
    steps(backend, build(backend, persister, "retry", flaky=flaky), 2)
    flaky.failing = True
    with pytest.raises(RuntimeError):
        steps(backend, build(backend, persister, "retry", flaky=flaky), 1)
    flaky.failing = False
    # re-run sequence id 2 from row 1: a completed row for the id saved as failed
    retry = build(backend, backend.persister(), "retry", flaky=flaky, sequence_id=1)
    assert retry.sequence_id == 1 and retry.get_next_action().name == "tool"
    steps(backend, retry, 1)
    row = backend.run(persister.load("user", "retry", 2))
    assert (row["position"], row["status"], row["state"]["tool_calls"]) == ("tool", "completed", 1)
    assert backend.run(persister.load("user", "retry"))["status"] == "completed"


def test_persister_registered_twice_saves_each_step_once(backend: harness.Backend) -> None:
    persister = backend.persister()
    calls: list[int] = []
    persister.on_save = lambda pk, app_id, seq, position: calls.append(seq)
    hook = PersisterHookAsync(persister) if backend.is_async else PersisterHook(persister)
    app = build(backend, persister, "twice", hooks=(hook,))
    steps(backend, app, 3)
    assert calls == [0, 0, 1, 1, 2, 2]  # every step saved twice, without error
    assert list(rows(backend, persister, "twice")) == [0, 1, 2]
    assert backend.run(persister.list_app_ids("user")) == ["twice"]


def test_many_apps_in_one_partition(backend: harness.Backend) -> None:
    persister = backend.persister()
    app_ids = [f"app:{uuid.uuid4()}" for _ in range(3)]
    for app_id in app_ids:
        steps(backend, build(backend, persister, app_id), 2)
    assert sorted(backend.run(persister.list_app_ids("user"))) == sorted(app_ids)
    assert backend.run(persister.list_app_ids("someone-else")) == []
