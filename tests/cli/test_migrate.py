"""``savegame migrate``: run the peer's saver on a real graph or app, migrate with the
console script, then resume on the peer and on savegame: the next state must match."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
from cli_support import as_json, db_uri, run

pytest.importorskip("langgraph")
pytest.importorskip("burr")
pytest.importorskip("pymongo")

from burr.core import ApplicationBuilder, State, action
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from savegame.adapters.burr import Persister
from savegame.adapters.langgraph import Checkpointer
from savegame.savers import open_saver

TURNS = 50
STEPS = 50


# -- LangGraph ---------------------------------------------------------------------------
class ChatState(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]
    turns: int


def chat(state: ChatState) -> dict[str, Any]:
    last = state["messages"][-1]
    note = ""
    if str(last.content).startswith("ask"):  # human in the loop: leaves pending writes
        note = f" (approved: {interrupt('approve?')})"
    n = len(state["messages"])
    return {"messages": [AIMessage(f"echo {last.content}{note}", id=f"ai-{n}")],
            "turns": state.get("turns", 0) + 1}


def build_graph(checkpointer: Any) -> Any:
    builder = StateGraph(ChatState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    return builder.compile(checkpointer=checkpointer)


def run_chat(graph: Any, thread: str, turns: int) -> None:
    """``turns`` turns; the last one asks for approval and stops at the interrupt."""
    config = {"configurable": {"thread_id": thread}}
    for turn in range(turns):
        text = f"ask {turn}" if turn == turns - 1 else f"turn {turn}"
        graph.invoke({"messages": [HumanMessage(text, id=f"h-{turn}")]}, config)


def snapshot(graph: Any, thread: str) -> tuple[Any, ...]:
    state = graph.get_state({"configurable": {"thread_id": thread}})
    messages = [(type(m).__name__, m.id, m.content) for m in state.values["messages"]]
    interrupts = [i.value for task in state.tasks for i in task.interrupts]
    return messages, state.values.get("turns"), state.next, interrupts, \
        state.metadata.get("step")


def resume(graph: Any, thread: str) -> tuple[Any, ...]:
    config = {"configurable": {"thread_id": thread}}
    graph.invoke(Command(resume="yes"), config)
    graph.invoke({"messages": [HumanMessage("after", id="h-after")]}, config)
    return snapshot(graph, thread)


def test_langgraph_mongodb_50_turns(nx_uri: str) -> None:
    import pymongo
    from langgraph.checkpoint.mongodb import MongoDBSaver

    client: Any = pymongo.MongoClient(nx_uri)
    peer = build_graph(MongoDBSaver(client, db_name="lg_peer"))
    run_chat(peer, "chat-1", TURNS)
    run_chat(peer, "chat-2", 3)
    before = snapshot(peer, "chat-1")
    assert len(before[0]) == 2 * TURNS - 1 and before[3] == ["approve?"]

    target = db_uri(nx_uri, "lg_target")
    report = as_json("migrate", "langgraph-mongodb", nx_uri, "--db", "lg_peer", target)
    peer_count = client["lg_peer"]["checkpoints"].count_documents({})
    assert report["checkpoints"] == peer_count and report["threads"] == 2
    assert report["writes"] == client["lg_peer"]["checkpoint_writes"].count_documents({})
    again = as_json("migrate", "langgraph-mongodb", nx_uri, "--db", "lg_peer", target)
    assert again["checkpoints"] == peer_count  # idempotent: nothing duplicated

    with open_saver(target) as saver:
        ours = build_graph(Checkpointer(saver))
        assert snapshot(ours, "chat-1") == before
        history = list(ours.get_state_history({"configurable": {"thread_id": "chat-1"}}))
        assert len(history) == len(list(peer.get_state_history(
            {"configurable": {"thread_id": "chat-1"}})))
        on_savegame = resume(ours, "chat-1")
    on_peer = resume(peer, "chat-1")
    assert on_savegame == on_peer
    assert on_peer[0][-3:] == [("AIMessage", f"ai-{2 * TURNS - 1}",
                                f"echo ask {TURNS - 1} (approved: yes)"),
                               ("HumanMessage", "h-after", "after"),
                               ("AIMessage", f"ai-{2 * TURNS + 1}", "echo after")]
    client.close()


def test_langgraph_sqlite(tmp_path: Path, nx_uri: str) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = tmp_path / "lg.sqlite"
    connection = sqlite3.connect(path, check_same_thread=False)
    peer = build_graph(SqliteSaver(connection))
    run_chat(peer, "chat-s", 6)
    before = snapshot(peer, "chat-s")
    target = db_uri(nx_uri, "lg_sqlite_target")
    report = as_json("migrate", "langgraph-sqlite", str(path), target)
    assert report["checkpoints"] == connection.execute(
        "SELECT count(*) FROM checkpoints").fetchone()[0]
    with open_saver(target) as saver:
        ours = build_graph(Checkpointer(saver))
        assert snapshot(ours, "chat-s") == before
        on_savegame = resume(ours, "chat-s")
    assert on_savegame == resume(peer, "chat-s")
    connection.close()


def test_langgraph_refuses_a_type_not_allowed(tmp_path: Path) -> None:
    """A checkpoint naming a type outside LangGraph's safe list is refused by name, not
    turned silently into a dict (and nothing is imported)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = tmp_path / "lg.sqlite"
    connection = sqlite3.connect(path, check_same_thread=False)
    SqliteSaver(connection).setup()
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    type_, blob = JsonPlusSerializer().dumps_typed({"v": 4, "id": "x", "ts": "",
                                                    "channel_values": {"c": _Opaque(1)},
                                                    "channel_versions": {"c": 1},
                                                    "versions_seen": {}})
    connection.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                       ("t", "", "1f0-cid", None, type_, blob, b"{}"))
    connection.commit()
    result = run("migrate", "langgraph-sqlite", str(path), "memory://x")
    assert result.returncode == 1
    assert "checkpoint '1f0-cid'" in result.stderr and "--allow" in result.stderr
    assert "test_migrate._Opaque" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # note + one-line error


@dataclass
class _Opaque:
    value: int


# -- Burr --------------------------------------------------------------------------------
@action(reads=["count"], writes=["count"])
def count(state: State) -> State:
    return state.update(count=state["count"] + 1)


@action(reads=["chat_history", "count"], writes=["chat_history"])
def human(state: State) -> State:
    return state.append(chat_history={"role": "user", "content": f"q{state['count']}"})


@action(reads=["chat_history"], writes=["chat_history"])
def ai(state: State) -> State:
    last = state["chat_history"][-1]["content"]
    return state.append(chat_history={"role": "assistant", "content": f"a to {last}"})


def build_app(persister: Any, app_id: str) -> Any:
    return (
        ApplicationBuilder()
        .with_actions(count=count, human=human, ai=ai)
        .with_transitions(("count", "human"), ("human", "ai"), ("ai", "count"))
        .with_identifiers(app_id=app_id, partition_key="user-1")
        .initialize_from(persister, resume_at_next_action=True,
                         default_state={"chat_history": [], "count": 0},
                         default_entrypoint="count")
        .with_state_persister(persister)
        .build()
    )


def burr_state(app: Any) -> tuple[Any, ...]:
    return app.sequence_id, app.get_next_action().name, app.state.get_all()


def burr_resume(persister: Any, app_id: str) -> tuple[Any, ...]:
    if isinstance(persister, Persister):
        persister.initialize()
    app = build_app(persister, app_id)
    loaded = burr_state(app)
    app.step()
    app.step()
    return loaded, burr_state(app)


def test_burr_mongodb_50_steps(nx_uri: str) -> None:
    import pymongo
    from burr.integrations.persisters.b_pymongo import MongoDBBasePersister

    client: Any = pymongo.MongoClient(nx_uri)
    peer = MongoDBBasePersister(client, db_name="burr_peer", collection_name="states")
    app = build_app(peer, "app-1")
    for _ in range(STEPS):
        app.step()
    assert app.sequence_id == STEPS - 1

    target = db_uri(nx_uri, "burr_target")
    report = as_json("migrate", "burr-mongodb", nx_uri, "--db", "burr_peer",
                     "--collection", "states", target)
    assert report == {"source": "burr_peer.states", "apps": 1, "rows": STEPS}
    as_json("migrate", "burr-mongodb", nx_uri, "--db", "burr_peer", "--collection",
            "states", target)  # again: a no-op

    with open_saver(target) as saver:
        on_savegame = burr_resume(Persister(saver), "app-1")
        assert len(list(saver.list("burr:user-1:app-1"))) == STEPS + 2
    on_peer = burr_resume(peer, "app-1")
    assert on_savegame == on_peer
    assert on_peer[0][0] == STEPS - 1 and on_peer[1][0] == STEPS + 1
    del peer  # Burr's persister closes the client in __del__: let it, while Python runs


def test_burr_sqlite(tmp_path: Path, nx_uri: str) -> None:
    from burr.core.persistence import SQLitePersister

    path = tmp_path / "burr.sqlite"
    peer = SQLitePersister(str(path), table_name="burr_state")
    peer.initialize()
    app = build_app(peer, "app-s")
    for _ in range(9):
        app.step()
    target = db_uri(nx_uri, "burr_sqlite_target")
    report = as_json("migrate", "burr-sqlite", str(path), target)
    assert report["rows"] == 9
    with open_saver(target) as saver:
        on_savegame = burr_resume(Persister(saver), "app-s")
    assert on_savegame == burr_resume(peer, "app-s")
