"""Real LangGraph graphs over Checkpointer: chat with add_messages, human-in-the-loop
resumed through a new Checkpointer (a restart), time travel and forks, a subgraph, a
DeltaChannel graph (history, prune, copy), plus the adapter's own edges (metadata, list
across threads, sync over async-only savers, the event loop, a missing extra)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import langgraph_support as support
import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import _messages_delta_reducer, add_messages
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from savegame.adapters.langgraph import Checkpointer
from savegame.savers import MemorySaver

STORAGES = ["memory", "mongomock", "nx_async", "file", "redis_single", "async_redis_cluster"]


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
            ) -> Iterator[support.Storage]:
    made: support.Storage
    if request.param == "memory":
        made = support.MemoryStorage()
    elif request.param == "mongomock":
        made = support.MongomockStorage()
    elif request.param == "file":
        made = support.FileStorage(request.getfixturevalue("tmp_path") / "store")
    elif "redis" in request.param:  # RedisSaver on one node, AsyncRedisSaver on a cluster
        cluster = request.param.endswith("cluster")
        made = support.RedisStorage(
            request.getfixturevalue("redis_cluster" if cluster else "redis_single"),
            is_async=request.param.startswith("async_"), run=loop.run_until_complete)
    else:
        made = support.NxAsyncStorage(request.getfixturevalue("nx_uri"),
                                      loop.run_until_complete)
    yield made
    made.close()


def config(thread_id: str, **extra: Any) -> Any:
    return {"configurable": {"thread_id": thread_id, **extra}}


class Runner:
    """Runs a compiled graph with invoke/... or, on async-only storage, ainvoke/..."""

    def __init__(self, storage: support.Storage, loop: asyncio.AbstractEventLoop):
        self.is_async = storage.is_async_only
        self.loop = loop

    def invoke(self, graph: Any, value: Any, cfg: Any) -> Any:
        if self.is_async:
            return self.loop.run_until_complete(graph.ainvoke(value, cfg))
        return graph.invoke(value, cfg)

    def get_state(self, graph: Any, cfg: Any, **kw: Any) -> Any:
        if self.is_async:
            return self.loop.run_until_complete(graph.aget_state(cfg, **kw))
        return graph.get_state(cfg, **kw)

    def history(self, graph: Any, cfg: Any) -> list[Any]:
        if self.is_async:
            async def collect() -> list[Any]:
                return [s async for s in graph.aget_state_history(cfg)]
            return self.loop.run_until_complete(collect())
        return list(graph.get_state_history(cfg))

    def update_state(self, graph: Any, cfg: Any, values: Any, **kw: Any) -> Any:
        if self.is_async:
            return self.loop.run_until_complete(graph.aupdate_state(cfg, values, **kw))
        return graph.update_state(cfg, values, **kw)

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)


@pytest.fixture
def runner(storage: support.Storage, loop: asyncio.AbstractEventLoop) -> Runner:
    return Runner(storage, loop)


# -- graphs ---------------------------------------------------------------------------
class ChatState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def chat_graph() -> StateGraph:
    def chat(state: ChatState) -> dict[str, Any]:
        last = state["messages"][-1].content
        return {"messages": [AIMessage(content=f"echo: {last}")]}

    builder = StateGraph(ChatState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    return builder


class ReviewState(TypedDict):
    draft: str
    verdict: str


def review_graph() -> StateGraph:
    def write(state: ReviewState) -> dict[str, Any]:
        return {"draft": state["draft"].upper()}

    def review(state: ReviewState) -> dict[str, Any]:
        answer = interrupt({"question": "approve?", "draft": state["draft"]})
        return {"verdict": f"{answer}:{state['draft']}"}

    builder = StateGraph(ReviewState)
    builder.add_node("write", write)
    builder.add_node("review", review)
    builder.add_edge(START, "write")
    builder.add_edge("write", "review")
    builder.add_edge("review", END)
    return builder


class DeltaState(TypedDict):
    messages: Annotated[list[AnyMessage], DeltaChannel(_messages_delta_reducer,
                                                       snapshot_frequency=3)]


def delta_graph() -> StateGraph:
    def chat(state: DeltaState) -> dict[str, Any]:
        return {"messages": [AIMessage(content=f"#{len(state['messages'])}")]}

    builder = StateGraph(DeltaState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    return builder


# -- tests ----------------------------------------------------------------------------
def test_chat_add_messages(storage: support.Storage, runner: Runner) -> None:
    graph = chat_graph().compile(checkpointer=storage.checkpointer())
    cfg = config("chat-1")
    for turn in range(4):
        out = runner.invoke(graph, {"messages": [HumanMessage(content=f"hi {turn}")]}, cfg)
    assert [m.content for m in out["messages"]][-2:] == ["hi 3", "echo: hi 3"]
    assert len(out["messages"]) == 8
    # a restart reads the same conversation, messages typed as they were
    again = chat_graph().compile(checkpointer=storage.checkpointer())
    state = runner.get_state(again, cfg)
    assert [type(m) for m in state.values["messages"][:2]] == [HumanMessage, AIMessage]
    assert [m.content for m in state.values["messages"]] == [m.content for m in out["messages"]]
    history = runner.history(again, cfg)
    assert len(history) == 4 * 3  # input, loop, and the node's output per turn
    assert history[0].config["configurable"]["checkpoint_id"] == \
        state.config["configurable"]["checkpoint_id"]


def test_human_in_the_loop_resumes_after_restart(
    storage: support.Storage, runner: Runner
) -> None:
    cfg = config("review-1")
    first = review_graph().compile(checkpointer=storage.checkpointer())
    out = runner.invoke(first, {"draft": "hello"}, cfg)
    (pending,) = out["__interrupt__"]
    assert pending.value == {"question": "approve?", "draft": "HELLO"}
    state = runner.get_state(first, cfg)
    assert state.next == ("review",)
    assert state.tasks[0].interrupts[0].value["draft"] == "HELLO"

    # a new process: new Checkpointer (new saver, new client) over the same storage
    restarted = review_graph().compile(checkpointer=storage.checkpointer())
    state = runner.get_state(restarted, cfg)
    assert state.next == ("review",)
    done = runner.invoke(restarted, Command(resume="yes"), cfg)
    assert done == {"draft": "HELLO", "verdict": "yes:HELLO"}
    assert runner.get_state(restarted, cfg).next == ()


def test_time_travel_and_fork(storage: support.Storage, runner: Runner) -> None:
    graph = chat_graph().compile(checkpointer=storage.checkpointer())
    cfg = config("travel-1")
    for turn in range(3):
        runner.invoke(graph, {"messages": [HumanMessage(content=f"q{turn}", id=f"h{turn}")]},
                      cfg)
    history = runner.history(graph, cfg)
    # the checkpoint after turn 0's chat step: two messages
    old = next(s for s in reversed(history) if len(s.values.get("messages", [])) == 2)
    assert old.next == ()
    forked = runner.update_state(graph, old.config,
                                 {"messages": [HumanMessage(content="edited", id="x")]})
    assert forked["configurable"]["checkpoint_id"] != old.config["configurable"]["checkpoint_id"]
    fork_state = runner.get_state(graph, forked)
    assert fork_state.parent_config["configurable"]["checkpoint_id"] == \
        old.config["configurable"]["checkpoint_id"]
    assert [m.content for m in fork_state.values["messages"]] == ["q0", "echo: q0", "edited"]
    out = runner.invoke(graph, {"messages": [HumanMessage(content="again")]}, forked)
    assert [m.content for m in out["messages"]] == [
        "q0", "echo: q0", "edited", "again", "echo: again"]
    # the thread's latest is now the fork's tip; the old branch is still in the history
    latest = runner.get_state(graph, cfg)
    assert latest.values["messages"][-1].content == "echo: again"
    contents = {tuple(m.content for m in s.values.get("messages", []))
                for s in runner.history(graph, cfg)}
    assert ("q0", "echo: q0", "q1", "echo: q1", "q2", "echo: q2") in contents
    # replay from an old checkpoint re-runs from there
    replay = runner.invoke(graph, None, old.parent_config)
    assert [m.content for m in replay["messages"]] == ["q0", "echo: q0"]


def test_subgraph(storage: support.Storage, runner: Runner) -> None:
    class Inner(TypedDict):
        messages: Annotated[list[AnyMessage], add_messages]
        notes: str

    def think(state: Inner) -> dict[str, Any]:
        answer = interrupt("inner question")
        return {"messages": [AIMessage(content=f"inner {answer}")], "notes": "thought"}

    inner = StateGraph(Inner)
    inner.add_node("think", think)
    inner.add_edge(START, "think")
    inner.add_edge("think", END)

    outer = StateGraph(ChatState)
    outer.add_node("inner", inner.compile())
    outer.add_node("after", lambda s: {"messages": [AIMessage(content="outer done")]})
    outer.add_edge(START, "inner")
    outer.add_edge("inner", "after")
    outer.add_edge("after", END)

    cfg = config("sub-1")
    graph = outer.compile(checkpointer=storage.checkpointer())
    out = runner.invoke(graph, {"messages": [HumanMessage(content="start")]}, cfg)
    assert out["__interrupt__"][0].value == "inner question"
    state = runner.get_state(graph, cfg, subgraphs=True)
    (task,) = state.tasks
    assert task.name == "inner" and task.state is not None
    assert task.state.next == ("think",)
    sub_ns = task.state.config["configurable"]["checkpoint_ns"]
    assert sub_ns.startswith("inner:")

    restarted = outer.compile(checkpointer=storage.checkpointer())
    done = runner.invoke(restarted, Command(resume="ok"), cfg)
    assert [m.content for m in done["messages"]] == ["start", "inner ok", "outer done"]
    checkpointer = storage.checkpointer()
    namespaces = runner.run(checkpointer.saver.alist_namespaces("sub-1"))
    assert namespaces[0] == "" and any(ns.startswith("inner:") for ns in namespaces)


def _history_via_base(checkpointer: Checkpointer, runner: Runner, cfg: Any,
                      channels: list[str]) -> Any:
    """LangGraph's default walk (get_tuple per ancestor) as the reference."""
    if runner.is_async:
        return runner.run(BaseCheckpointSaver.aget_delta_channel_history(
            checkpointer, config=cfg, channels=channels))
    return BaseCheckpointSaver.get_delta_channel_history(checkpointer, config=cfg,
                                                         channels=channels)


def _history(checkpointer: Checkpointer, runner: Runner, cfg: Any, channels: list[str]) -> Any:
    if runner.is_async:
        return runner.run(checkpointer.aget_delta_channel_history(config=cfg,
                                                                  channels=channels))
    return checkpointer.get_delta_channel_history(config=cfg, channels=channels)


def test_delta_channel(storage: support.Storage, runner: Runner) -> None:
    checkpointer = storage.checkpointer()
    graph = delta_graph().compile(checkpointer=checkpointer)
    cfg = config("delta-1")
    for turn in range(7):
        out = runner.invoke(graph, {"messages": [HumanMessage(content=f"m{turn}",
                                                              id=f"h{turn}")]},
                            {**cfg, "metadata": {"run_id": f"run-{turn}"}})
    expected = [m.content for m in out["messages"]]
    assert len(expected) == 14 and expected[-1] == "#13"

    history = runner.history(graph, cfg)
    # snapshots are sparse: most checkpoints store no value for the delta channel
    raw = [s.config for s in history]
    tuples = [runner.run(checkpointer.aget_tuple(c)) for c in raw]
    without = [t for t in tuples if "messages" not in t.checkpoint["channel_values"]
               and "messages" in t.checkpoint["channel_versions"]]
    assert len(without) >= len(tuples) // 2
    # the paged walk returns what LangGraph's default walk returns, for every checkpoint
    for c in raw[::3]:
        ours = _history(checkpointer, runner, c, ["messages"])
        reference = _history_via_base(checkpointer, runner, c, ["messages"])
        assert ours == reference

    # a restart rebuilds the channel
    restarted = delta_graph().compile(checkpointer=storage.checkpointer())
    state = runner.get_state(restarted, cfg)
    assert [m.content for m in state.values["messages"]] == expected

    # copy_thread carries the whole chain and its writes
    runner.run(checkpointer.acopy_thread("delta-1", "delta-copy"))
    copy_state = runner.get_state(restarted, config("delta-copy"))
    assert [m.content for m in copy_state.values["messages"]] == expected

    # prune keeps the latest plus what its delta history needs: same state after
    before = len(history)
    runner.run(checkpointer.aprune(["delta-1"], strategy="keep_latest"))
    kept = runner.history(restarted, cfg)
    assert 1 < len(kept) < before
    state = runner.get_state(storage_graph := delta_graph().compile(
        checkpointer=storage.checkpointer()), cfg)
    assert [m.content for m in state.values["messages"]] == expected
    out = runner.invoke(storage_graph, {"messages": [HumanMessage(content="more")]}, cfg)
    assert [m.content for m in out["messages"]] == [*expected, "more", "#15"]

    # delete_for_runs of the first runs keeps what the survivors' history needs
    runs = {s.metadata.get("run_id") for s in runner.history(restarted, config("delta-copy"))}
    assert len(runs) == 7
    first_runs = [s.metadata["run_id"] for s in reversed(runner.history(
        restarted, config("delta-copy")))][:6]
    runner.run(checkpointer.adelete_for_runs(first_runs))
    copy_state = runner.get_state(restarted, config("delta-copy"))
    assert [m.content for m in copy_state.values["messages"]] == expected


def test_prune_delete_and_async_twins() -> None:
    checkpointer = Checkpointer(MemorySaver())
    graph = chat_graph().compile(checkpointer=checkpointer)

    async def scenario() -> None:
        for thread in ("a", "b"):
            await graph.ainvoke({"messages": [HumanMessage(content=thread)]}, config(thread))
        assert len([t async for t in checkpointer.alist(None)]) == 6
        await checkpointer.aprune(["a"], strategy="delete")
        assert [t async for t in checkpointer.alist(config("a"))] == []
        assert len([t async for t in checkpointer.alist(config("b"))]) == 3
        with pytest.raises(ValueError, match="strategy"):
            await checkpointer.aprune(["b"], strategy="nope")

    asyncio.run(scenario())


def test_metadata_filters_and_list_everything() -> None:
    checkpointer = Checkpointer(MemorySaver())
    graph = chat_graph().compile(checkpointer=checkpointer)
    for thread in ("t1", "t2"):
        graph.invoke({"messages": [HumanMessage(content="x")]},
                     {"configurable": {"thread_id": thread, "user": thread, "score": 3},
                      "metadata": {"weird.key": "w"}})
    every = list(checkpointer.list(None))
    assert len(every) == 6
    ids = [t.checkpoint["id"] for t in every]
    assert ids == sorted(ids, reverse=True)
    assert len(list(checkpointer.list(None, limit=4))) == 4
    mine = list(checkpointer.list(config("t1"), filter={"user": "t1", "source": "loop"}))
    assert len(mine) == 2 and all(t.metadata["score"] == 3 for t in mine)
    # a key MongoDB could not store as a field is kept in the state, filtered client-side
    assert mine[0].metadata["weird.key"] == "w"
    assert len(list(checkpointer.list(config("t1"), filter={"weird.key": "w"}))) == 3
    stored = checkpointer.put(config("t3"), {
        "v": 4, "id": "1", "ts": "t", "channel_values": {}, "channel_versions": {},
        "versions_seen": {}, "updated_channels": None}, {"blob": b"\x00", "nested": {"a.b": 1}}, {})
    got = checkpointer.get_tuple(stored)
    assert got is not None and got.metadata == {"blob": b"\x00", "nested": {"a.b": 1}}
    assert len(list(checkpointer.list(config("t3"), filter={"blob": b"\x00"}))) == 1
    assert list(checkpointer.list(config("t1"), filter={"user": "t2"})) == []
    latest = checkpointer.get_tuple(config("t1"))
    assert latest is not None
    one = list(checkpointer.list(config("t1", checkpoint_id=latest.checkpoint["id"])))
    assert [t.checkpoint["id"] for t in one] == [latest.checkpoint["id"]]
    older = list(checkpointer.list(config("t1"), before=latest.config, limit=1))
    assert older[0].checkpoint["id"] < latest.checkpoint["id"]


def test_put_follows_new_versions() -> None:
    checkpointer = Checkpointer(MemorySaver())
    base = {"v": 4, "ts": "2026-01-01T00:00:00+00:00", "versions_seen": {},
            "updated_channels": None, "pending_sends": []}
    first = checkpointer.put(config("nv"), {**base, "id": "1", "channel_values": {
        "a": 1, "b": "kept"}, "channel_versions": {"a": 1, "b": 1}}, {}, {"a": 1, "b": 1})
    # b unchanged and not passed: carried over; c new but not passed: empty;
    # d not in channel_versions: never stored
    second = checkpointer.put(first, {**base, "id": "2", "channel_values": {"a": 2, "d": 9},
                                      "channel_versions": {"a": 2, "b": 1, "c": 1}},
                              {"source": "loop", "step": 1}, {"a": 2, "c": 1})
    got = checkpointer.get_tuple(second)
    assert got is not None
    assert got.checkpoint["channel_values"] == {"a": 2, "b": "kept"}
    assert got.checkpoint["pending_sends"] == []
    assert got.parent_config is not None
    assert got.parent_config["configurable"]["checkpoint_id"] == "1"
    root = checkpointer.get_tuple(first)
    assert root is not None and root.parent_config is None


def test_writes_order_and_special_overwrite() -> None:
    checkpointer = Checkpointer(MemorySaver())
    stored = checkpointer.put(config("w"), {
        "v": 4, "id": "1", "ts": "t", "channel_values": {}, "channel_versions": {},
        "versions_seen": {}, "updated_channels": None}, {}, {})
    checkpointer.put_writes(stored, [("x", 1), ("y", 2)], "task-b", task_path="~b")
    checkpointer.put_writes(stored, [("x", 0)], "task-a", task_path="~a")
    checkpointer.put_writes(stored, [("x", 99)], "task-a", task_path="~a")  # regular: kept
    checkpointer.put_writes(stored, [("__interrupt__", "first")], "task-a", task_path="~a")
    checkpointer.put_writes(stored, [("__interrupt__", "second")], "task-a", task_path="~a")
    got = checkpointer.get_tuple(stored)
    assert got is not None
    assert got.pending_writes == [("task-a", "__interrupt__", "second"), ("task-a", "x", 0),
                                  ("task-b", "x", 1), ("task-b", "y", 2)]


def test_get_next_version() -> None:
    checkpointer = Checkpointer(MemorySaver())
    assert checkpointer.get_next_version(None, None) == 1
    assert checkpointer.get_next_version(41, None) == 42
    later = checkpointer.get_next_version(f"{7:032}.{0.5:016}", None)
    assert isinstance(later, str) and later > f"{7:032}.{0.9:016}"


def test_sync_over_async_only_saver_is_refused_clearly() -> None:
    import mongomock_motor

    from savegame.savers import AsyncMongoSaver

    checkpointer = Checkpointer(AsyncMongoSaver(mongomock_motor.AsyncMongoMockClient()))
    graph = chat_graph().compile(checkpointer=checkpointer)
    with pytest.raises(TypeError, match=r"async-only.*MongoSaver"):
        graph.invoke({"messages": [HumanMessage(content="x")]}, config("s"))
    with pytest.raises(TypeError, match="ainvoke"):
        checkpointer.get_tuple(config("s"))


def test_async_methods_do_not_block_the_event_loop() -> None:
    class SlowSaver(MemorySaver):
        _blocking_io = True  # like MongoSaver: primitives run in a worker thread

        def _guard(self) -> Any:  # each primitive locks on its own (no flow-wide lock)
            return contextlib.nullcontext()

        def _read_latest(self, thread_id: str, namespace: str) -> Any:
            time.sleep(0.3)
            return super()._read_latest(thread_id, namespace)

    checkpointer = Checkpointer(SlowSaver())

    async def scenario() -> int:
        ticks = 0
        main = threading.get_ident()
        seen: set[int] = set()

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                seen.add(threading.get_ident())
                ticks += 1

        task = asyncio.create_task(ticker())
        assert await checkpointer.aget_tuple(config("slow")) is None
        task.cancel()
        assert seen == {main}
        return ticks

    assert asyncio.run(scenario()) >= 10


def test_missing_langgraph_raises_missing_dependency(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "langgraph" or name.startswith("langgraph."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None
        sys.meta_path.insert(0, Block())
        from savegame.savers import MissingDependencyError
        try:
            import savegame.adapters.langgraph
        except MissingDependencyError as exc:
            assert "savegame[langgraph]" in str(exc), str(exc)
            print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.stdout.strip() == "ok", done.stderr
