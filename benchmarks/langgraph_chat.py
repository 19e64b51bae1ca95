"""LangGraph chat: savegame ``Checkpointer`` over ``MongoSaver`` vs ``MongoDBSaver``.

The graph is ``START -> chat -> END`` with ``messages: Annotated[list, add_messages]``; each
turn adds a human and an AI message of ~400 random-word characters (research/langgraph.md
section 10), so a turn writes 3 checkpoints. Both checkpointers run the same turns in the
same process on the same kind of backend:

- stored BSON bytes: sum of ``bson.encode`` of every document of every collection, on
  mongomock (``MongoDBSaver`` needs a ``sort=`` shim there: mongomock's bulk builder does
  not take the ``sort`` argument pymongo 4.20 passes to ``UpdateOne``);
- CPU per turn (``time.process_time`` around ``graph.invoke``, mean over the turns) on
  mongomock (the emulated database's work included), and the client's CPU per turn on
  nx-27017 (the server runs in its own process; the median of rounds alternating the two
  checkpointers after a warm-up, each chat in a fresh database; the ratio shown is the
  median of the rounds' ratios);
- MongoDB commands per ``get_tuple`` / ``put`` / ``put_writes`` / ``list`` while the graph
  runs, and for a cold ``get_tuple`` and a full ``list`` of the thread afterwards, counted
  with a PyMongo ``CommandListener`` through the real driver on nx-27017 (skipped with
  ``--no-nx`` or when nx-27017 is not installed).

Run: ``python benchmarks/langgraph_chat.py [--turns 20 200] [--no-nx] [--check]``; writes
``benchmarks/results/langgraph-chat.json``. ``--check`` exits 1 when a target is missed
(20 turns: at most 1/8 of MongoDBSaver's bytes; 200 turns: 1/60; CPU per turn no worse).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pymongo
from common import Commands, bson_bytes, mongomock_client, nx_server
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.mongodb import MongoDBSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from savegame.adapters.langgraph import Checkpointer
from savegame.savers import MongoSaver

HERE = Path(__file__).resolve().parent
OPS = ("get_tuple", "put", "put_writes", "list")


# -- workload -------------------------------------------------------------------------
class ChatState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def chat_graph(checkpointer: BaseCheckpointSaver[Any], replies: Iterator[str]) -> Any:
    def chat(state: ChatState) -> dict[str, Any]:
        return {"messages": [AIMessage(content=next(replies))]}

    builder = StateGraph(ChatState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    return builder.compile(checkpointer=checkpointer)


def texts(count: int, seed: int = 7) -> list[str]:
    """``count`` messages of ~400 characters of random words."""
    rnd = random.Random(seed)
    vocabulary = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz")
                          for _ in range(rnd.randint(2, 9))) for _ in range(3000)]
    out = []
    for _ in range(count):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < 400:
            words.append(rnd.choice(vocabulary))
        out.append(" ".join(words))
    return out


def run_chat(checkpointer: BaseCheckpointSaver[Any], turns: int, thread: str = "chat"
             ) -> list[float]:
    """Run the chat; returns the CPU seconds of each turn."""
    messages = texts(2 * turns)
    graph = chat_graph(checkpointer, iter(messages[1::2]))
    config = {"configurable": {"thread_id": thread}}
    cpu = []
    for turn in range(turns):
        start = time.process_time()
        out = graph.invoke({"messages": [HumanMessage(content=messages[2 * turn])]}, config)
        cpu.append(time.process_time() - start)
    assert len(out["messages"]) == 2 * turns
    assert out["messages"][-1].content == messages[-1]
    return cpu


# -- backends -------------------------------------------------------------------------
def savegame_checkpointer(client: Any, database: str) -> Checkpointer:
    return Checkpointer(MongoSaver(client, database=database))


def langgraph_checkpointer(client: Any, database: str) -> MongoDBSaver:
    return MongoDBSaver(client, db_name=database)


FACTORIES: dict[str, Callable[[Any, str], BaseCheckpointSaver[Any]]] = {
    "savegame": savegame_checkpointer,
    "MongoDBSaver": langgraph_checkpointer,
}


def measure_mongomock(turns: int) -> dict[str, Any]:
    """Bytes and CPU on mongomock. Both checkpointers first run a 2-turn warm-up; short
    chats are run 5 times, interleaved, and the fastest mean per turn is kept."""
    for factory in FACTORIES.values():
        run_chat(factory(mongomock_client(), "warmup"), 2)
    out: dict[str, Any] = {}
    repeats = 5 if turns <= 50 else 1
    for _ in range(repeats):
        for name, factory in FACTORIES.items():
            client: Any = mongomock_client()
            cpu = run_chat(factory(client, "bench"), turns)
            stored, docs = bson_bytes(client["bench"])
            mean = statistics.fmean(cpu) * 1e3
            if name in out and out[name]["cpu_ms_per_turn"] <= mean:
                continue
            out[name] = {"stored_bson_bytes": stored, "documents": docs,
                         "cpu_ms_per_turn": mean,
                         "cpu_ms_last_tenth": statistics.fmean(cpu[-max(1, turns // 10):]) * 1e3}
    return out


def count_commands(checkpointer: Any, commands: Commands) -> dict[str, list[int]]:
    """Wrap the checkpointer's methods on the instance: commands sent per call."""
    per_op: dict[str, list[int]] = {op: [] for op in OPS}

    def wrap(op: str) -> None:
        method = getattr(checkpointer, op)

        if op == "list":
            def listed(*args: Any, **kwargs: Any) -> Iterator[Any]:
                before = len(commands.names)
                items = list(method(*args, **kwargs))
                per_op[op].append(len(commands.names) - before)
                return iter(items)
            setattr(checkpointer, op, listed)
            return

        def counted(*args: Any, **kwargs: Any) -> Any:
            before = len(commands.names)
            result = method(*args, **kwargs)
            per_op[op].append(len(commands.names) - before)
            return result
        setattr(checkpointer, op, counted)

    for op in OPS:
        wrap(op)
    return per_op


def measure_commands(uri: str, turns: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, factory in FACTORIES.items():
        commands = Commands()
        client: Any = pymongo.MongoClient(uri, event_listeners=[commands])
        client.admin.command("ping")  # connected before the run (not counted: HANDSHAKE)
        database = f"cmd_{name.lower()}_{turns}"
        checkpointer = factory(client, database)
        per_op = count_commands(checkpointer, commands)
        run_chat(checkpointer, turns)
        during = {op: dict(sorted(Counter(counts).items())) for op, counts in per_op.items()}
        # after the run, with a new checkpointer (cold caches)
        cold = factory(client, database)
        per_cold = count_commands(cold, commands)
        cold.get_tuple({"configurable": {"thread_id": "chat"}})
        listed = list(cold.list({"configurable": {"thread_id": "chat"}}))
        assert len(listed) == 3 * turns
        out[name] = {
            "during_run": during,
            "get_tuple_cold": per_cold["get_tuple"][0],
            "list_whole_thread": per_cold["list"][0],
        }
        client.drop_database(database)
        client.close()
    for name, rounds in client_cpu(uri, turns).items():
        out[name]["client_cpu_ms_per_turn"] = statistics.median(rounds)
        out[name]["client_cpu_rounds"] = rounds
    return out


def client_cpu(uri: str, turns: int) -> dict[str, list[float]]:
    """Client CPU per turn (ms, mean over a chat's turns) of each checkpointer on nx-27017:
    a 2-turn warm-up each, then rounds that alternate the two, which one goes first
    alternating too (9 rounds for short chats, 5 for long ones: this VM's speed drifts
    within a run), each chat in a database of its own; the caller takes the median."""
    client: Any = pymongo.MongoClient(uri)
    rounds: dict[str, list[float]] = {name: [] for name in FACTORIES}
    try:
        for name, factory in FACTORIES.items():
            run_chat(factory(client, f"warm_{name.lower()}"), 2)
            client.drop_database(f"warm_{name.lower()}")
        for round_ in range(9 if turns <= 50 else 5):
            for name, factory in list(FACTORIES.items())[::-1 if round_ % 2 else 1]:
                database = f"cpu_{name.lower()}_{turns}_{round_}"
                cpu = run_chat(factory(client, database), turns)
                rounds[name].append(statistics.fmean(cpu) * 1e3)
                client.drop_database(database)
    finally:
        client.close()
    return rounds


# -- report ---------------------------------------------------------------------------
def mode(counts: dict[int, int]) -> str:
    if not counts:
        return "-"
    common = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return str(common) if len(counts) == 1 else f"{common} ({min(counts)}-{max(counts)})"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| turns | checkpointer | stored BSON bytes | ratio | CPU ms/turn | "
        "client CPU ms/turn (nx) | cmds get_tuple | cmds put | cmds put_writes | "
        "cmds list (whole thread) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for turns, result in results["runs"].items():
        base = result["mongomock"]["MongoDBSaver"]["stored_bson_bytes"]
        their_rounds = result.get("nx", {}).get("MongoDBSaver", {}).get("client_cpu_rounds")
        for name in FACTORIES:
            mm = result["mongomock"][name]
            cmds = result.get("nx", {}).get(name)
            ratio = "1" if name == "MongoDBSaver" else f"1/{base / mm['stored_bson_bytes']:.1f}"
            if cmds:
                run = cmds["during_run"]
                cpu, rounds = cmds["client_cpu_ms_per_turn"], cmds.get("client_cpu_rounds")
                # the ratio: median of each round's pair (drift in the machine's speed
                # during a run moves both runs of a round alike)
                ratio_cpu = (statistics.median(ours / theirs for ours, theirs
                                               in zip(rounds, their_rounds, strict=True))
                             if rounds and their_rounds and name != "MongoDBSaver" else None)
                cells = [f"{cpu:.2f}" + (f" ({ratio_cpu:.2f}x)" if ratio_cpu else ""),
                         f"{mode(run['get_tuple'])} (cold {cmds['get_tuple_cold']})",
                         mode(run["put"]), mode(run["put_writes"]),
                         str(cmds["list_whole_thread"])]
            else:
                cells = ["-", "-", "-", "-", "-"]
            lines.append(f"| {turns} | {name} | {mm['stored_bson_bytes']:,} | {ratio} | "
                         f"{mm['cpu_ms_per_turn']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(results: dict[str, Any]) -> list[tuple[str, bool]]:
    targets = {20: 8, 200: 60}
    out = []
    for turns, result in results["runs"].items():
        ours = result["mongomock"]["savegame"]
        theirs = result["mongomock"]["MongoDBSaver"]
        ratio = theirs["stored_bson_bytes"] / ours["stored_bson_bytes"]
        if int(turns) in targets:
            need = targets[int(turns)]
            out.append((f"{turns} turns: bytes 1/{ratio:.1f} (target 1/{need})", ratio >= need))
        out.append((f"{turns} turns: CPU/turn {ours['cpu_ms_per_turn']:.2f} ms vs "
                    f"{theirs['cpu_ms_per_turn']:.2f} ms",
                    ours["cpu_ms_per_turn"] <= theirs["cpu_ms_per_turn"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--no-nx", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "langgraph-chat.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, "
                   f"Python {platform.python_version()}",
        "runs": {},
    }
    with (nx_server() if not args.no_nx else _none()) as uri:
        for turns in args.turns:
            run: dict[str, Any] = {"mongomock": measure_mongomock(turns)}
            if uri:
                run["nx"] = measure_commands(uri, turns)
            results["runs"][str(turns)] = run
    print(f"LangGraph chat, {results['date']}, {results['machine']}")
    print(table(results))
    verdicts = checks(results)
    for label, ok in verdicts:
        print(("PASS " if ok else "MISS ") + label)
    results["checks"] = {label: ok for label, ok in verdicts}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.check and not all(ok for _, ok in verdicts):
        sys.exit(1)


@contextmanager
def _none() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
