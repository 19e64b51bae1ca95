"""Workflows of the LlamaIndex adapter tests, and a driver run in subprocesses.

Imported as ``llamaindex_workflows`` by the tests and by the subprocesses (this folder on
``sys.path`` in both), so event classes resolve under the same qualified name everywhere.

Driver: ``python llamaindex_workflows.py COMMAND URI DATABASE THREAD [ARG]`` (URI: MongoDB,
or ``file:///dir`` for the file store) with COMMAND
``ask`` (start a human-in-the-loop run, exit once it waits), ``answer`` (answer it in this
new process), ``steps`` (run the 3-step workflow, possibly crashing in step 2) or
``resume``; a last argument ``plain`` builds the checkpointer with no ``allowed_types``.
Results are printed as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)

#: File to which each step invocation appends its name (counts runs across processes).
STEP_LOG = "SAVEGAME_TEST_STEP_LOG"
#: "URI|DATABASE|THREAD": step ``s2`` kills its process halfway, once step 1 is checkpointed.
CRASH_IN_S2 = "SAVEGAME_TEST_CRASH_IN_S2"


def _log(name: str) -> None:
    path = os.environ.get(STEP_LOG)
    if path:
        with open(path, "a") as handle:
            handle.write(name + "\n")


def open_saver(uri: str, database: str) -> Any:
    """A saver owning a new client: FileSystemSaver for ``file://`` (``database`` ignored),
    RedisSaver for ``redis://`` and ``rediscluster://`` (a Redis Cluster; ``database`` = key
    prefix), else MongoSaver (``database``); ``close()`` releases it."""
    if uri.startswith("file:"):
        from savegame.savers import FileSystemSaver

        return FileSystemSaver.from_uri(uri)
    if uri.startswith(("redis://", "rediscluster://")):
        from savegame.savers import RedisSaver

        cluster = uri.startswith("rediscluster://")
        return RedisSaver.from_uri(uri.replace("rediscluster://", "redis://", 1),
                                   cluster=cluster, key_prefix=database)
    from savegame.savers import MongoSaver

    return MongoSaver.from_uri(uri, database=database,
                               client_options={"serverSelectionTimeoutMS": 5000})


async def _until_checkpointed(step_name: str) -> None:
    """Wait until the crash thread's latest checkpoint is ``step_name``'s."""
    uri, database, thread = os.environ[CRASH_IN_S2].split("|")
    saver = open_saver(uri, database)
    try:
        for _ in range(500):
            latest = await saver.aget(thread)
            if latest is not None and latest.node_id == step_name:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no checkpoint of {step_name} in time")
    finally:
        saver.close()


class FirstDone(Event):
    n: int


class SecondDone(Event):
    n: int


class ThreeSteps(Workflow):
    """Three steps, each appending to ``ctx.store['items']``."""

    @step
    async def s1(self, ctx: Context, ev: StartEvent) -> FirstDone:
        _log("s1")
        await ctx.store.set("items", ["one"])
        return FirstDone(n=1)

    @step
    async def s2(self, ctx: Context, ev: FirstDone) -> SecondDone:
        _log("s2")
        items = await ctx.store.get("items")
        await asyncio.sleep(0.05)
        if os.environ.get(CRASH_IN_S2):
            await _until_checkpointed("s1")  # checkpoints are written beside the next step
            os._exit(17)  # a crash: no cleanup, no last words
        await ctx.store.set("items", [*items, "two"])
        return SecondDone(n=2)

    @step
    async def s3(self, ctx: Context, ev: SecondDone) -> StopEvent:
        _log("s3")
        items = await ctx.store.get("items")
        await ctx.store.set("items", [*items, "three"])
        return StopEvent(result=[*items, "three"])


class Ask(InputRequiredEvent):
    question: str


class Answer(HumanResponseEvent):
    answer: str


class AskWorkflow(Workflow):
    """Human in the loop by returning an ``InputRequiredEvent``."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> Ask:
        _log("ask")
        await ctx.store.set("asked", True)
        return Ask(question="What is your name?")

    @step
    async def greet(self, ctx: Context, ev: Answer) -> StopEvent:
        _log("greet")
        return StopEvent(result=f"hello {ev.answer}")


class WaitWorkflow(Workflow):
    """Human in the loop with ``ctx.wait_for_event`` (the step re-runs on the answer)."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        _log("ask")
        await ctx.store.set("asked", True)
        answer = await ctx.wait_for_event(
            Answer, waiter_event=Ask(question="What is your name?"), waiter_id="name",
            timeout=None,
        )
        return StopEvent(result=f"hello {answer.answer}")


HITL = {"input_required": AskWorkflow, "wait_for_event": WaitWorkflow}
# Events a step waits for are not in its signature: a checkpointer must be told of them,
# since restoring a snapshot never imports a class by a stored name.
HITL_TYPES: dict[str, tuple[type, ...]] = {"input_required": (), "wait_for_event": (Ask, Answer)}


async def _drive(command: str, uri: str, database: str, thread: str, arg: str,
                 plain: bool = False) -> Any:
    from savegame.adapters.llamaindex import WorkflowCheckpointer

    saver = open_saver(uri, database)
    # plain: no configuration at all (the events a step waits for resolve as imported)
    types = () if plain else HITL_TYPES.get(arg, ())
    try:
        if command == "ask":
            checkpointer = WorkflowCheckpointer(HITL[arg](), saver, allowed_types=types)
            handler = checkpointer.run(thread_id=thread)
            async for event in handler.stream_events():
                if isinstance(event, Ask):
                    break
            # seeing the prompt means its checkpoint is written: no waiting
            assert await checkpointer.pending_input(thread) is not None
            return {"asked": True}  # the process ends here with the run still waiting
        if command == "answer":
            checkpointer = WorkflowCheckpointer(HITL[arg](), saver, allowed_types=types)
            pending = await checkpointer.pending_input(thread)
            assert pending is not None
            handler = await checkpointer.respond(thread, Answer(answer="Ada"))
            result = await handler
            return {
                "kind": pending.kind,
                "prompt": pending.prompt.question if isinstance(pending.prompt, Ask) else None,
                "expects": list(pending.expects), "result": result,
                "pending_after": await checkpointer.pending_input(thread) is not None,
            }
        checkpointer = WorkflowCheckpointer(ThreeSteps(), saver)
        if command == "steps":
            handler = checkpointer.run(thread_id=thread)
        else:
            handler = await checkpointer.resume(thread)
        return {"result": await handler}
    finally:
        saver.close()


def main(argv: list[str]) -> None:
    command, uri, database, thread, *rest = argv
    out = asyncio.run(_drive(command, uri, database, thread, rest[0] if rest else "",
                             plain="plain" in rest[1:]))
    print(json.dumps(out))


if __name__ == "__main__":
    # Run the module imported under its own name, so events are llamaindex_workflows.Ask
    # (not __main__.Ask) in every process.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import llamaindex_workflows

    llamaindex_workflows.main(sys.argv[1:])
