"""A LangGraph graph and a Burr app run in separate processes over one store directory.

``python file_adapter_driver.py FRAMEWORK COMMAND DIR``, one JSON line out:

- ``langgraph ask DIR``: a write -> review graph that pauses at ``interrupt()``;
- ``langgraph resume DIR``: a new process resumes it with ``Command(resume="yes")``;
- ``burr run DIR N``: a chat app persisted every step, N steps;
- ``burr resume DIR N``: a new process loads the app from the directory, N more steps.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def langgraph(command: str, store: str) -> dict[str, Any]:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt
    from typing_extensions import TypedDict

    from savegame.adapters.langgraph import Checkpointer
    from savegame.savers import FileSystemSaver

    class Review(TypedDict):
        draft: str
        verdict: str

    def write(state: Review) -> dict[str, Any]:
        return {"draft": state["draft"].upper()}

    def review(state: Review) -> dict[str, Any]:
        answer = interrupt({"question": "approve?", "draft": state["draft"]})
        return {"verdict": f"{answer}:{state['draft']}"}

    builder = StateGraph(Review)
    builder.add_node("write", write)
    builder.add_node("review", review)
    builder.add_edge(START, "write")
    builder.add_edge("write", "review")
    builder.add_edge("review", END)
    graph = builder.compile(checkpointer=Checkpointer(FileSystemSaver(store)))
    config = {"configurable": {"thread_id": "review-1"}}
    if command == "ask":
        out = graph.invoke({"draft": "hello"}, config)
        return {"interrupt": out["__interrupt__"][0].value}
    before = graph.get_state(config)
    done = graph.invoke(Command(resume="yes"), config)
    return {"next_before": list(before.next), "result": done,
            "history": len(list(graph.get_state_history(config)))}


def burr(command: str, store: str, steps: int) -> dict[str, Any]:
    from burr.core import ApplicationBuilder, State, action

    from savegame.adapters.burr import Persister
    from savegame.savers import FileSystemSaver

    @action(reads=["chat"], writes=["chat", "turn"])
    def human(state: State[Any]) -> State[Any]:
        turn = state["turn"] + 1
        return state.append(chat=f"question {turn}").update(turn=turn)

    @action(reads=["chat"], writes=["chat"])
    def ai(state: State[Any]) -> State[Any]:
        return state.append(chat=f"answer to {state['chat'][-1]}")

    persister = Persister(FileSystemSaver(store))
    persister.initialize()
    app = (
        ApplicationBuilder()
        .with_actions(human=human, ai=ai)
        .with_transitions(("human", "ai"), ("ai", "human"))
        .initialize_from(persister, resume_at_next_action=True,
                         default_state={"chat": [], "turn": 0}, default_entrypoint="human")
        .with_identifiers(app_id="chat-1", partition_key="user-1")
        .with_state_persister(persister)
        .build()
    )
    started_at = app.sequence_id
    for _ in range(steps):
        app.step()
    return {"started_at": started_at, "sequence_id": app.sequence_id,
            "chat": list(app.state["chat"]), "apps": persister.list_app_ids("user-1")}


if __name__ == "__main__":
    framework, command, store, *rest = sys.argv[1:]
    if framework == "langgraph":
        out = langgraph(command, store)
    else:
        out = burr(command, store, int(rest[0]))
    print(json.dumps(out))
