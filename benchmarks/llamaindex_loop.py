"""A long LlamaIndex workflow checkpointed at every step: savegame versus the usual recipe.

The workflow loops ``--iterations`` times (200 by default); each iteration is one step that
appends a ~400-character record (random words) to a list in ``ctx.store``. Every completed
step is checkpointed, by:

- ``savegame`` — ``savegame.adapters.llamaindex.WorkflowCheckpointer`` (delta + zstd);
- ``full JSON`` — the recipe of the LlamaIndex docs: ``json.dumps(handler.ctx.to_dict())`` of
  every step, taken from the same ``StepStateChanged`` events, stored as is.

on two backends: in memory (``MemorySaver`` versus a dict of JSON strings; bytes = encoded
records / UTF-8 JSON) and MongoDB on mongomock (``MongoSaver`` versus one BSON document per
step holding the ``to_dict()``; bytes = BSON size of every stored document, indexes aside).

CPU is process CPU per step: ``store`` is the time spent storing a snapshot once it is taken
(savegame: ``aput``, serialization + delta + zstd + insert; recipe: ``json.dumps`` + insert),
``run`` the whole run divided by the steps, next to a run that takes no checkpoint at all.
Both take the same ``to_dict()`` per step, whose cost grows with the run's ticks.

Run: ``python benchmarks/llamaindex_loop.py [--iterations 200] [--json PATH] [--check]``;
``--check`` exits 1 when savegame stores more than 1/20 of the recipe's bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import bson_bytes, mongomock_client
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StepState, StepStateChanged, StopEvent

from savegame.adapters.llamaindex import WorkflowCheckpointer
from savegame.savers import MemorySaver

HERE = Path(__file__).resolve().parent
WORDS = [
    "".join(random.Random(seed).choice("abcdefghijklmnopqrstuvwxyz")
            for _ in range(random.Random(seed + 1).randint(2, 10)))
    for seed in range(2000)
]


def record(i: int) -> dict[str, Any]:
    rng = random.Random(i)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < 400:
        words.append(rng.choice(WORDS))
    return {"i": i, "role": "assistant" if i % 2 else "user", "text": " ".join(words)[:400]}


class LoopStart(StartEvent):
    iterations: int


class Next(Event):
    i: int


class Loop(Workflow):
    @step
    async def grow(self, ctx: Context, ev: LoopStart | Next) -> Next | StopEvent:
        if isinstance(ev, LoopStart):
            await ctx.store.set("iterations", ev.iterations)
            i = 0
        else:
            i = ev.i
        records = await ctx.store.get("records", default=[])
        await ctx.store.set("records", [*records, record(i)])
        total = await ctx.store.get("iterations")
        return Next(i=i + 1) if i + 1 < total else StopEvent(result=i + 1)


# -- the recipe -----------------------------------------------------------------------
async def run_recipe(iterations: int, store: Callable[[int, dict[str, Any]], None]
                     ) -> dict[str, float]:
    handler = Loop(timeout=None).run(iterations=iterations)
    steps = 0
    store_cpu = 0.0
    async for event in handler.stream_events(expose_internal=True):
        if isinstance(event, StepStateChanged) and event.step_state == StepState.NOT_RUNNING:
            snapshot = handler.ctx.to_dict()
            start = time.process_time()
            store(steps, snapshot)
            store_cpu += time.process_time() - start
            steps += 1
    assert await handler == iterations
    return {"steps": steps, "store_cpu": store_cpu}


async def run_plain(iterations: int) -> dict[str, float]:
    handler = Loop(timeout=None).run(iterations=iterations)
    async for _ in handler.stream_events(expose_internal=True):
        pass
    assert await handler == iterations
    return {"steps": iterations, "store_cpu": 0.0}


async def run_savegame(iterations: int, saver: Any) -> dict[str, float]:
    timings = {"store_cpu": 0.0, "steps": 0}
    put = saver.aput

    async def timed_put(checkpoint: Any) -> Any:
        start = time.process_time()
        try:
            return await put(checkpoint)
        finally:
            timings["store_cpu"] += time.process_time() - start
            timings["steps"] += 1

    saver.aput = timed_put  # instance attribute: counts exactly the checkpointer's puts
    checkpointer = WorkflowCheckpointer(Loop(timeout=None), saver)
    result = await checkpointer.run(thread_id="loop", iterations=iterations)
    assert result == iterations
    return timings


def measure(job: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
    start = time.process_time()
    out = asyncio.run(job())
    out["run_cpu"] = time.process_time() - start
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "llamaindex-loop.json")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--no-mongo", action="store_true", help="skip the mongomock rows")
    args = parser.parse_args()
    n = args.iterations

    rows: list[dict[str, Any]] = []
    plain = measure(lambda: run_plain(n))

    def row(backend: str, method: str, stored: int, timing: dict[str, float]) -> None:
        steps = timing["steps"]
        rows.append({
            "backend": backend, "method": method, "steps": steps, "stored_bytes": stored,
            "bytes_per_step": stored / steps,
            "store_cpu_ms_per_step": 1000 * timing["store_cpu"] / steps,
            "run_cpu_ms_per_step": 1000 * timing["run_cpu"] / steps,
            "plain_run_cpu_ms_per_step": 1000 * plain["run_cpu"] / plain["steps"],
        })

    texts: dict[int, str] = {}

    def keep_json(i: int, snapshot: dict[str, Any]) -> None:
        texts[i] = json.dumps(snapshot)

    recipe = measure(lambda: run_recipe(n, keep_json))
    row("memory", "full to_dict() JSON", sum(len(t.encode()) for t in texts.values()), recipe)
    saver = MemorySaver()
    ours = measure(lambda: run_savegame(n, saver))
    row("memory", "savegame MemorySaver", saver.storage_bytes(), ours)

    if not args.no_mongo:

        from savegame.savers import MongoSaver

        client: Any = mongomock_client()
        docs = client["recipe"]["contexts"]

        def keep_bson(i: int, snapshot: dict[str, Any]) -> None:
            docs.insert_one({"thread_id": "loop", "step": i, "ctx": snapshot})

        recipe = measure(lambda: run_recipe(n, keep_bson))
        row("mongomock", "full to_dict() BSON doc", bson_bytes(client["recipe"])[0], recipe)
        mongo_saver = MongoSaver(client, database="savegame")
        ours = measure(lambda: run_savegame(n, mongo_saver))
        row("mongomock", "savegame MongoSaver", bson_bytes(client["savegame"])[0], ours)

    print(f"LlamaIndex loop, {n} iterations of a ~400-character record, one checkpoint per step")
    header = ("backend", "method", "stored bytes", "bytes/step", "store ms/step",
              "run ms/step", "ratio")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    ratios: list[float] = []
    for r in rows:
        base = next(x for x in rows if x["backend"] == r["backend"])
        ratio = r["stored_bytes"] / base["stored_bytes"]
        r["ratio_to_recipe"] = ratio
        if r is not base:
            ratios.append(ratio)
        print(f"| {r['backend']} | {r['method']} | {r['stored_bytes']:,} | "
              f"{r['bytes_per_step']:,.0f} | {r['store_cpu_ms_per_step']:.2f} | "
              f"{r['run_cpu_ms_per_step']:.1f} | 1/{1 / ratio:.0f} |")
    print(f"(a run without checkpoints: {rows[0]['plain_run_cpu_ms_per_step']:.1f} ms/step; "
          "both recipes take the same to_dict() per step)")

    out = {
        "benchmark": "llamaindex_loop", "iterations": n,
        "date": dt.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor()},
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.check and any(ratio > 1 / 20 for ratio in ratios):
        print("FAIL: savegame stores more than 1/20 of the full-snapshot recipe's bytes")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
