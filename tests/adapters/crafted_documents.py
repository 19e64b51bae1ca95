"""Crafted stored documents through every adapter's load path, run in a fresh interpreter.

``python crafted_documents.py ADAPTER STORE MARKERS [URI]``: ADAPTER is ``langgraph``,
``burr`` or ``llamaindex``; STORE ``memory`` or ``nx`` (MongoSaver through the real driver
at URI). Documents are written as an attacker with write access to the store would write
them, then read back through the adapter's public methods by a new adapter object. Every
crafted value tries to *call* something (``os.system``, ``subprocess.run``, a pickle whose
``__reduce__`` runs ``os.system``), each creating a file in MARKERS, or to *import* the
module ``savegame_crafted_trap`` (on ``sys.path``; importing it creates a file in MARKERS).
Load errors are expected and fine. Prints one JSON line: the errors seen per document.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pickle
import sys
import uuid
from typing import Any

TRAP = "savegame_crafted_trap"


def make_saver(store: str, uri: str) -> Any:
    if store == "memory":

        return _Shared.memory
    import pymongo

    from savegame.savers import MongoSaver

    client: Any = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    return MongoSaver(client, database="savegame_crafted", prefix=_Shared.prefix)


class _Shared:
    memory: Any = None
    prefix = f"c{uuid.uuid4().hex[:8]}_"


class Boom:
    """Unpickling this runs ``os.system``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> Any:
        return (os.system, (self.command,))


def attempt(errors: dict[str, str], name: str, call: Any) -> None:
    try:
        result = call()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except Exception as exc:  # a refusal is the expected outcome for most documents
        errors[name] = f"{type(exc).__name__}: {str(exc)[:160]}"


# -- LangGraph ---------------------------------------------------------------------------
def langgraph(store: str, uri: str, markers: str) -> dict[str, str]:
    import ormsgpack
    from langgraph.checkpoint.base import empty_checkpoint

    from savegame.adapters.langgraph import Checkpointer
    from savegame.savers.checkpoint import PendingWrite

    def ext(code: int, payload: Any) -> bytes:
        return ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(payload)))

    crafted: dict[str, tuple[str, bytes]] = {
        "ext0": ("msgpack", ext(0, ("os", "system", f"touch {markers}/lg-ext0"))),
        "ext1": ("msgpack", ext(1, ("os", "system", [f"touch {markers}/lg-ext1"]))),
        "ext2": ("msgpack", ext(2, ("subprocess", "run",
                                    {"args": f"touch {markers}/lg-ext2", "shell": True}))),
        "ext3": ("msgpack", ext(3, ("os", "system", f"touch {markers}/lg-ext3", "__call__"))),
        "ext4": ("msgpack", ext(4, (TRAP, "Evil", {}, None))),
        "ext5": ("msgpack", ext(5, (TRAP, "Evil", {}, None))),
        "trap0": ("msgpack", ext(0, (TRAP, "Evil", "x"))),
        "json": ("json", json.dumps({"lc": 2, "type": "constructor", "id": ["os", "system"],
                                     "args": [f"touch {markers}/lg-json"]}).encode()),
        "json_trap": ("json", json.dumps({"lc": 2, "type": "constructor",
                                          "id": [TRAP, "Evil"]}).encode()),
        "pickle": ("pickle", pickle.dumps(Boom(f"touch {markers}/lg-pickle"))),
    }
    writer = Checkpointer(make_saver(store, uri))
    errors: dict[str, str] = {}
    for name, value in crafted.items():
        thread = f"lg-{name}"
        cfg: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        checkpoint: Any = empty_checkpoint()
        checkpoint["channel_versions"] = {"x": 1}
        record = writer._record(cfg, checkpoint, {"source": "loop", "step": 0},
                                {"x": value})
        # the metadata kept in the state holds (key, value) pairs: one more crafted place
        meta_value = value if value[0] != "msgpack" else (
            "msgpack", ormsgpack.packb(["evil", ormsgpack.Ext(0, ormsgpack.packb(
                ("os", "system", f"touch {markers}/lg-meta-{name}")))]))
        state = {**record.state, "metadata": {"evil": meta_value}}
        writer.saver.put(dataclasses.replace(record, state=state))
        writer.saver.put_writes(thread, checkpoint["id"],
                                [PendingWrite("task", 0, "x", value, "")])
        reader = Checkpointer(make_saver(store, uri))  # a new process would do this
        attempt(errors, f"{name}/get_tuple", lambda r=reader, c=cfg: r.get_tuple(c))
        attempt(errors, f"{name}/list", lambda r=reader, c=cfg: list(r.list(c)))
        attempt(errors, f"{name}/aget_tuple", lambda r=reader, c=cfg: r.aget_tuple(c))
        attempt(errors, f"{name}/history", lambda r=reader, c=cfg: r.get_delta_channel_history(
            config=c, channels=["x"]))
    return errors


# -- Burr ----------------------------------------------------------------------------------
def burr(store: str, uri: str, markers: str) -> dict[str, str]:
    from burr.integrations.serde.pickle import register_type_to_pickle

    from savegame.adapters.burr import AsyncPersister, Persister
    from savegame.savers import Checkpoint

    register_type_to_pickle(Boom)  # Burr's "pickle" deserializer is live in this process
    crafted = {
        "trap": {"__burr_serde__": "pydantic", "__pydantic_class": f"{TRAP}.Evil"},
        "function": {"__burr_serde__": "pydantic", "__pydantic_class": "os.system"},
        "class": {"__burr_serde__": "pydantic", "__pydantic_class": "subprocess.Popen"},
        "nested": {"list": [{"deep": {"__burr_serde__": "pydantic",
                                      "__pydantic_class": f"{TRAP}.Evil"}}]},
        "pickle": {"__burr_serde__": "pickle",
                   "value": pickle.dumps(Boom(f"touch {markers}/burr-pickle"))},
    }
    saver = make_saver(store, uri)
    errors: dict[str, str] = {}
    for name, value in crafted.items():
        thread = Persister(saver).thread_id("pk", name)
        saver.put(Checkpoint(thread, {"ok": 1, "evil": value}, id="0" * 20, node_id="a",
                             metadata={"partition_key": "pk", "app_id": name,
                                       "sequence_id": 0, "status": "completed"}))
        reader = Persister(make_saver(store, uri))
        attempt(errors, f"{name}/load", lambda r=reader, n=name: r.load("pk", n))
        attempt(errors, f"{name}/load_seq", lambda r=reader, n=name: r.load("pk", n, 0))
        attempt(errors, f"{name}/load_partition", lambda r=reader: r.load("pk", None))
        areader = AsyncPersister(make_saver(store, uri))
        attempt(errors, f"{name}/aload", lambda r=areader, n=name: r.load("pk", n))
    return errors


# -- LlamaIndex ------------------------------------------------------------------------------
def llamaindex(store: str, uri: str, markers: str) -> dict[str, str]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import llamaindex_workflows as lw

    from savegame.adapters.llamaindex import WorkflowCheckpointer
    from savegame.savers import Checkpoint, MemorySaver

    async def snapshot() -> dict[str, Any]:
        """A real checkpoint taken while step s2 is in progress."""
        scratch = MemorySaver()
        handler = WorkflowCheckpointer(lw.ThreeSteps(), scratch).run(thread_id="real")
        seen = 0
        async for _ in handler.stream_events(expose_internal=True):
            seen += 1
            if seen == 3:
                break
        latest = scratch.get("real")
        await handler.cancel_run()
        assert latest is not None
        return json.loads(json.dumps(latest.state))

    real = asyncio.run(snapshot())
    names = {"trap": f"{TRAP}.Evil", "function": "os.system", "class": "subprocess.Popen",
             "model": "pydantic.BaseModel"}
    saver = make_saver(store, uri)
    errors: dict[str, str] = {}
    for name, qualified in names.items():
        payload = json.dumps({"__is_pydantic": True, "value": {"n": 1},
                              "qualified_name": qualified})
        component = json.dumps({"__is_component": True, "value": {},
                                "qualified_name": qualified})
        context = json.loads(json.dumps(real["context"]))
        context["state"]["state_data"]["_data"]["items"] = payload
        context["state"]["state_data"]["_data"]["other"] = component
        context["workers"]["s2"]["in_progress"][0]["event"] = payload
        context["workers"]["s2"]["in_progress"][0]["last_exception"] = {
            "exception_type": qualified, "exception_message": "x"}
        thread = f"li-{name}"
        saver.put(Checkpoint(thread, {"context": context, "prompt": payload}, node_id="s1",
                             metadata={"framework": "llamaindex", "pending_input": True,
                                       "running": True, "pending": [
                                           {"kind": "input_required", "step": "s1",
                                            "waiter_id": None, "expects": None}]}))
        reader = WorkflowCheckpointer(lw.ThreeSteps(), make_saver(store, uri))

        async def resume(r: Any = reader, t: str = thread) -> Any:
            handler = await r.resume(t)
            return await asyncio.wait_for(handler, 20)

        attempt(errors, f"{name}/pending_input", lambda r=reader, t=thread: r.pending_input(t))
        attempt(errors, f"{name}/resume", resume)
        attempt(errors, f"{name}/respond", lambda r=reader, t=thread: r.respond(
            t, lw.Answer(answer="x")))
    return errors


def main(argv: list[str]) -> None:
    adapter, store, markers, *rest = argv
    uri = rest[0] if rest else ""
    if store == "memory":
        from savegame.savers import MemorySaver

        _Shared.memory = MemorySaver()
    errors = {"langgraph": langgraph, "burr": burr, "llamaindex": llamaindex}[adapter](
        store, uri, markers)
    imported = TRAP in sys.modules
    print(json.dumps({"errors": errors, "trap_imported": imported}))


if __name__ == "__main__":
    main(sys.argv[1:])
