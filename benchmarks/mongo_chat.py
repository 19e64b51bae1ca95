"""Chat workload on MongoSaver: stored BSON bytes, documents and commands per operation.

Runs the 200-turn chat of ``chat.py`` on MongoSaver over mongomock and over nx-27017 (the
real PyMongo driver against a wire-protocol server started on a free loopback port) and
reports stored BSON bytes (sum of ``bson.encode`` of every document, indexes excluded)
against the information floor (zstd level 3 of the final serialized state), documents per
checkpoint, and the commands one ``put`` (first of a process, then LangGraph-style with the
previous checkpoint as explicit parent, then with the latest as implicit parent) / ``get``
of the latest (warm, cold) / ``list`` sends.

Run: ``python benchmarks/mongo_chat.py [--turns 200] [--no-nx] [--no-mongomock]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import bson
import pymongo
import zstandard
from chat import chat_states
from common import Commands, mongomock_client, nx_server

from savegame.savers import Checkpoint, MongoSaver
from savegame.savers.serde import Serializer


def measure(saver: MongoSaver, commands: Commands | None, turns: int) -> dict[str, Any]:
    states = chat_states(turns)
    floor = len(zstandard.ZstdCompressor(level=3).compress(Serializer().dumps(states[-1])))
    saver.setup()
    per_put: list[int] = []
    start = time.perf_counter()
    latest = None
    for state in states:
        if commands:
            commands.take()
        latest = saver.put(Checkpoint("chat", state, node_id="agent",  # LangGraph-style
                                      parent_id=latest.id if latest else None))
        if commands:
            per_put.append(len(commands.take()))
    put_seconds = time.perf_counter() - start
    assert latest is not None
    docs = list(saver._checkpoints.find({"thread_id": "chat"}))
    stored = sum(len(bson.encode(doc)) for doc in docs)
    result: dict[str, Any] = {
        "checkpoints": turns, "documents": len(docs), "stored_bson_bytes": stored,
        "floor_bytes": floor, "stored_vs_floor": round(stored / floor, 2),
        "put_ms": round(put_seconds / turns * 1e3, 2),
    }
    if commands:
        commands.take()
        saver.get("chat")
        warm = commands.take()
        saver._cache.clear()
        saver.get("chat")
        cold = commands.take()
        listed = list(saver.list("chat"))
        assert len(listed) == turns
        listing = commands.take()
        saver.put(Checkpoint("chat", states[-1], node_id="agent"))  # parent: the latest
        implicit = commands.take()
        result.update({
            "commands_first_put": per_put[0],  # cold cache: the parent is read once
            "commands_per_put": sorted(set(per_put[1:])),  # explicit parent, cached
            "commands_put_implicit_parent": implicit,  # the latest is read first
            "commands_get_latest_warm": warm, "commands_get_latest_cold": cold,
            "commands_list_all": {name: listing.count(name) for name in ("find", "getMore")},
        })
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--no-nx", action="store_true")
    parser.add_argument("--no-mongomock", action="store_true",
                        help="skip mongomock (its scans make 5,000 checkpoints slow)")
    args = parser.parse_args()
    if not args.no_mongomock:
        print("mongomock:", measure(MongoSaver(mongomock_client()), None, args.turns))
    if args.no_nx:
        return
    with nx_server() as uri:
        if uri is None:
            sys.exit("nx-27017 is not installed next to this Python (or pass --no-nx)")
        commands = Commands()
        client: Any = pymongo.MongoClient(uri, event_listeners=[commands])
        print("nx-27017: ", measure(MongoSaver(client), commands, args.turns))
        client.close()


if __name__ == "__main__":
    main()
