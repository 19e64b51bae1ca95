"""The LangGraph Checkpointer as a drop-in for InMemorySaver (issue #10, items 6 and 7;
issue #11, item 3's default serializer): ``list`` without ``checkpoint_ns`` returns every
namespace, sync calls from other threads over an async-only store are served on its event
loop, and the default serializer is strict with a documented way to allow more types."""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import langgraph_support as support
import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from savegame.adapters.langgraph import Checkpointer
from savegame.savers import MemorySaver, MongoSaver


@pytest.fixture(params=["memory", "mongomock", "nx_async"])
def storage(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
            ) -> Iterator[support.Storage]:
    made: support.Storage
    if request.param == "memory":
        made = support.MemoryStorage()
    elif request.param == "mongomock":
        made = support.MongomockStorage()
    else:
        made = support.NxAsyncStorage(request.getfixturevalue("nx_uri"),
                                      loop.run_until_complete)
    yield made
    made.close()


def config(thread_id: str, **extra: Any) -> Any:
    return {"configurable": {"thread_id": thread_id, **extra}}


class ChatState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def nested_graph() -> StateGraph:
    """An outer graph whose node is a subgraph that interrupts (checkpoints in two
    namespaces)."""
    def think(state: ChatState) -> dict[str, Any]:
        answer = interrupt("inner question")
        return {"messages": [AIMessage(content=f"inner {answer}")]}

    inner = StateGraph(ChatState)
    inner.add_node("think", think)
    inner.add_edge(START, "think")
    inner.add_edge("think", END)
    outer = StateGraph(ChatState)
    outer.add_node("inner", inner.compile())
    outer.add_node("after", lambda s: {"messages": [AIMessage(content="outer done")]})
    outer.add_edge(START, "inner")
    outer.add_edge("inner", "after")
    outer.add_edge("after", END)
    return outer


async def _collect(checkpointer: Any, cfg: Any, **kwargs: Any) -> list[Any]:
    return [t async for t in checkpointer.alist(cfg, **kwargs)]


def listed(checkpointer: Any, cfg: Any, is_async: bool, loop: asyncio.AbstractEventLoop,
           **kwargs: Any) -> list[Any]:
    if is_async:
        return loop.run_until_complete(_collect(checkpointer, cfg, **kwargs))
    found = list(checkpointer.list(cfg, **kwargs))
    # the async twin lists the same, in the same order
    assert loop.run_until_complete(_collect(checkpointer, cfg, **kwargs)) == found
    return found


def run_nested(checkpointer: Any, is_async: bool, loop: asyncio.AbstractEventLoop) -> None:
    graph = nested_graph().compile(checkpointer=checkpointer)
    cfg = config("nested")
    for value in ({"messages": [HumanMessage(content="start")]}, Command(resume="ok")):
        if is_async:
            loop.run_until_complete(graph.ainvoke(value, cfg))
        else:
            graph.invoke(value, cfg)


def namespaces(tuples: list[Any]) -> collections.Counter[str]:
    """How many checkpoints each namespace holds (task ids stripped: they differ per run)."""
    return collections.Counter(t.config["configurable"]["checkpoint_ns"].split(":")[0]
                               for t in tuples)


# -- item 6 ----------------------------------------------------------------------------
def test_6_list_without_checkpoint_ns_returns_every_namespace_like_inmemorysaver(
    storage: support.Storage, loop: asyncio.AbstractEventLoop
) -> None:
    reference = InMemorySaver()
    run_nested(reference, False, loop)
    expected = list(reference.list(config("nested")))

    checkpointer = storage.checkpointer()
    run_nested(checkpointer, storage.is_async_only, loop)
    everything = listed(checkpointer, config("nested"), storage.is_async_only, loop)
    assert namespaces(everything) == namespaces(expected)
    assert set(namespaces(everything)) == {"", "inner"}
    ids = [t.checkpoint["id"] for t in everything]
    assert ids == sorted(ids, reverse=True)  # newest first across namespaces
    # checkpoint_ns="" is the root only; a subgraph namespace is itself only
    root = listed(checkpointer, config("nested", checkpoint_ns=""), storage.is_async_only,
                  loop)
    assert namespaces(root) == {"": namespaces(expected)[""]}
    sub_ns = next(t.config["configurable"]["checkpoint_ns"] for t in everything
                  if t.config["configurable"]["checkpoint_ns"])
    sub = listed(checkpointer, config("nested", checkpoint_ns=sub_ns), storage.is_async_only,
                 loop)
    assert {t.config["configurable"]["checkpoint_ns"] for t in sub} == {sub_ns}
    # limit, before and a checkpoint id apply across the namespaces
    assert [t.checkpoint["id"] for t in listed(
        checkpointer, config("nested"), storage.is_async_only, loop, limit=3)] == ids[:3]
    older = listed(checkpointer, config("nested"), storage.is_async_only, loop,
                   before=everything[1].config)
    assert [t.checkpoint["id"] for t in older] == ids[2:]
    sub_id = sub[0].checkpoint["id"]
    one = listed(checkpointer, config("nested", checkpoint_id=sub_id), storage.is_async_only,
                 loop)
    assert [(t.checkpoint["id"], t.config["configurable"]["checkpoint_ns"]) for t in one] == [
        (sub_id, sub_ns)]


# -- item 7 ----------------------------------------------------------------------------
@pytest.fixture(params=["nx_async", "mongomock_motor"])
def async_checkpointer(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
                       ) -> Iterator[Checkpointer]:
    from savegame.savers import AsyncMongoSaver

    if request.param == "nx_async":
        made = support.NxAsyncStorage(request.getfixturevalue("nx_uri"),
                                      loop.run_until_complete)
        yield made.checkpointer()
        made.close()
    else:
        import mongomock_motor

        yield Checkpointer(AsyncMongoSaver(mongomock_motor.AsyncMongoMockClient()))


def chat_graph() -> StateGraph:
    def chat(state: ChatState) -> dict[str, Any]:
        return {"messages": [AIMessage(content=f"echo: {state['messages'][-1].content}")]}

    builder = StateGraph(ChatState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    return builder


def test_7_sync_calls_from_other_threads_are_served_on_the_loop(
    async_checkpointer: Checkpointer, loop: asyncio.AbstractEventLoop
) -> None:
    graph = chat_graph().compile(checkpointer=async_checkpointer)
    cfg = config("threads")

    async def scenario() -> None:
        await graph.ainvoke({"messages": [HumanMessage(content="hi")]}, cfg)
        state = await asyncio.to_thread(graph.get_state, cfg)
        assert [m.content for m in state.values["messages"]] == ["hi", "echo: hi"]
        history = await asyncio.to_thread(lambda: list(graph.get_state_history(cfg)))
        assert len(history) == 3
        # a sync write from another thread, then read back through the async API
        await asyncio.to_thread(graph.update_state, cfg,
                                {"messages": [HumanMessage(content="edit", id="e")]})
        after = await graph.aget_state(cfg)
        assert after.values["messages"][-1].content == "edit"
        first = await asyncio.to_thread(lambda: next(iter(async_checkpointer.list(cfg))))
        assert first.checkpoint["id"] == after.config["configurable"]["checkpoint_id"]

    loop.run_until_complete(scenario())


def test_7_a_sync_node_invoking_a_subgraph_inside_astream(
    async_checkpointer: Checkpointer, loop: asyncio.AbstractEventLoop
) -> None:
    inner = chat_graph().compile()

    def outer_node(state: ChatState, config: RunnableConfig) -> dict[str, Any]:  # sync
        out = inner.invoke({"messages": state["messages"]}, config)
        return {"messages": [AIMessage(content=f"outer saw {out['messages'][-1].content}")]}

    builder = StateGraph(ChatState)
    builder.add_node("outer", outer_node)
    builder.add_edge(START, "outer")
    builder.add_edge("outer", END)
    graph = builder.compile(checkpointer=async_checkpointer)
    cfg = config("subgraph-sync")

    async def scenario() -> list[Any]:
        return [chunk async for chunk in graph.astream(
            {"messages": [HumanMessage(content="hi")]}, cfg, stream_mode="values")]

    chunks = loop.run_until_complete(scenario())
    assert chunks[-1]["messages"][-1].content == "outer saw echo: hi"
    state = loop.run_until_complete(graph.aget_state(cfg))
    assert state.values["messages"][-1].content == "outer saw echo: hi"


def test_7_a_sync_call_on_the_loop_thread_is_a_clear_error_not_a_deadlock(
    async_checkpointer: Checkpointer, loop: asyncio.AbstractEventLoop
) -> None:
    graph = chat_graph().compile(checkpointer=async_checkpointer)
    cfg = config("same-thread")

    async def scenario() -> None:
        await graph.ainvoke({"messages": [HumanMessage(content="hi")]}, cfg)
        started = time.monotonic()
        with pytest.raises(TypeError, match=r"event loop.*aget_tuple"):
            async_checkpointer.get_tuple(cfg)
        with pytest.raises(TypeError, match="event loop"):
            graph.get_state(cfg)
        with pytest.raises(TypeError, match="event loop"):
            list(async_checkpointer.list(cfg))
        assert time.monotonic() - started < 5

    loop.run_until_complete(scenario())
    # with no loop running at all, sync methods say what to do instead
    with pytest.raises(TypeError, match="ainvoke"):
        async_checkpointer.get_tuple(cfg)


# -- issue #11 item 3: the default serializer -------------------------------------------------
@dataclass
class Note:
    text: str


class NoteState(TypedDict):
    notes: list[Any]


def note_graph() -> StateGraph:
    builder = StateGraph(NoteState)
    builder.add_node("write", lambda s: {"notes": [*s["notes"], Note("kept")]})
    builder.add_edge(START, "write")
    builder.add_edge("write", END)
    return builder


def test_11_3_default_serializer_is_strict_and_allowed_types_add_more() -> None:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from savegame.adapters.langgraph import COMMON_TYPES, strict_serde

    default = Checkpointer(MemorySaver())
    assert isinstance(default.serde, JsonPlusSerializer)
    assert default.serde._allowed_msgpack_modules is not True  # not LangGraph's permissive
    assert default.serde.pickle_fallback is False
    for module, name in COMMON_TYPES:  # every listed class exists
        imported = __import__(module, fromlist=[name])
        assert isinstance(getattr(imported, name), type), (module, name)

    saver = MemorySaver()
    note_graph().compile(checkpointer=Checkpointer(saver)).invoke({"notes": []}, config("n"))
    # a class the checkpointer was not told about comes back as its stored fields
    plain = note_graph().compile(checkpointer=Checkpointer(saver)).get_state(config("n"))
    assert plain.values["notes"] == [{"text": "kept"}]
    # allowed_types= (classes or (module, name)) rebuilds it; messages work out of the box
    for allowed in ([Note], [(Note.__module__, "Note")]):
        typed = note_graph().compile(checkpointer=Checkpointer(saver, allowed_types=allowed))
        assert typed.get_state(config("n")).values["notes"] == [Note("kept")]
    assert strict_serde([Note]).loads_typed(strict_serde().dumps_typed(
        [HumanMessage(content="x")])) == [HumanMessage(content="x")]
    with pytest.raises(TypeError, match="not both"):
        Checkpointer(saver, serde=JsonPlusSerializer(), allowed_types=[Note])
    with pytest.raises(TypeError, match="allowed_types"):
        strict_serde(["Note"])  # type: ignore[list-item]


def test_unchanged_channels_are_not_serialized_again_and_never_go_stale() -> None:
    """The Checkpointer reuses a channel's serialized value when the version and the very
    object are those it last wrote or loaded there; any other value is serialized afresh
    (a fork may reuse a version number with another value), and carried channels come
    from the parent only."""
    saver = Checkpointer(MemorySaver())
    dumped: list[Any] = []
    dumps = saver.serde.dumps_typed

    def counting(value: Any) -> Any:
        dumped.append(value)
        return dumps(value)

    saver.serde.dumps_typed = counting  # type: ignore[method-assign]
    thread = config("cache")
    x, y = ["x"], ["y"]

    def put(parent: Any, cid: str, values: dict[str, Any], versions: dict[str, int],
            new: dict[str, int]) -> Any:
        checkpoint = {"v": 1, "id": cid, "ts": "2026-12-06T00:00:00+00:00",
                      "channel_values": values, "channel_versions": versions,
                      "versions_seen": {}, "updated_channels": None}
        return saver.put(parent, checkpoint, {"step": 0}, new)  # type: ignore[arg-type]

    def stored(cfg: Any) -> dict[str, Any]:
        got = saver.get_tuple(cfg)
        assert got is not None
        return dict(got.checkpoint["channel_values"])

    a = put(thread, "1f0-a", {"m": x, "s": "go"}, {"m": 1, "s": 1}, {"m": 1, "s": 1})
    b = put(a, "1f0-b", {"m": x}, {"m": 1, "s": 1}, {})  # m unchanged, s carried
    assert [v for v in dumped if v in (x, "go")] == [x, "go"]  # x serialized once
    assert stored(b) == {"m": ["x"], "s": "go"}
    dumped.clear()
    # the same version with another object (a fork's version numbers repeat): new bytes
    c = put(a, "1f0-c", {"m": y}, {"m": 1, "s": 1}, {})
    assert dumped == [y] and stored(c) == {"m": ["y"], "s": "go"}
    # the object mutated in place under a new version: new bytes
    y.append("z")
    d = put(c, "1f0-d", {"m": y}, {"m": 2, "s": 1}, {"m": 2})
    assert stored(d) == {"m": ["y", "z"], "s": "go"}
    # a parent this checkpointer did not write last: the carried value is read from it
    e = put(b, "1f0-e", {}, {"m": 1, "s": 1}, {})
    assert stored(e) == {"m": ["x"], "s": "go"}


class ChatOnly(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


@pytest.mark.parametrize("tier", ["mongomock", "nx"])
def test_each_checkpoints_writes_wait_for_its_put_queued_behind_the_previous(
    tier: str, request: pytest.FixtureRequest
) -> None:
    """LangGraph hands a checkpoint's put (queued behind the previous put) and its first
    task's writes to its background threads at once. The writes wait for that put, so
    they find their checkpoint's state (stored as copies of it) and, on MongoDB, its
    document: no write goes to the writes collection and none needs a second command.
    (Before the wait about a quarter of them did.)"""
    import mongo_harness

    if tier == "mongomock":
        saver = mongo_harness.mongomock_saver()
    else:
        saver = MongoSaver(mongo_harness.sync_client(request.getfixturevalue("nx_uri")),
                           database=mongo_harness.DATABASE, prefix=mongo_harness.fresh_prefix())
    slow: collections.Counter[str] = collections.Counter()

    def counting(name: str) -> Any:
        call = getattr(saver, name)

        def counted(*args: Any) -> Any:
            slow[name] += 1
            return call(*args)
        return counted

    for name in ("_merge_writes", "_insert_loose"):
        setattr(saver, name, counting(name))

    def chat(state: ChatOnly) -> dict[str, Any]:
        return {"messages": [AIMessage(content="echo " * 40 + str(len(state["messages"])))]}

    builder = StateGraph(ChatOnly)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    graph = builder.compile(checkpointer=Checkpointer(saver))
    config: RunnableConfig = {"configurable": {"thread_id": "queued"}}
    gc.disable()  # a full collection late in a long test process can stall every thread
    try:  # longer than the wait's grace (CI saw a 0.3 s stall elsewhere)
        for turn in range(40):
            graph.invoke({"messages": [HumanMessage(content=f"question {turn} " * 20)]},
                         config)
    finally:
        gc.enable()
    assert slow == collections.Counter()
    assert saver._writes.count_documents({}) == 0
    state = graph.get_state(config)
    assert len(state.values["messages"]) == 80
