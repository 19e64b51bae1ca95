"""Chat workload on the file store (the default) and in memory: stored bytes, read cost
and CPU, against baselines.

A chat appends a user and an assistant message (~400 characters each, random words) every
turn to a growing ``messages`` list, and changes a few small keys. For each store and size
it reports:

- stored bytes (``file``: every byte of the store directory's files, framing and registry
  included; ``memory``: the encoded records), the information floor (zstd level 3 of the
  final state alone) and the naive store (zstd level 3 of the full state at every step);
- records decoded by a ``get`` of the latest with nothing cached, and the most any cold
  read of any checkpoint decodes (following base links, reverse records included);
- CPU per ``put`` (mean over the last tenth of the run, where the state is near its final
  size) and per ``get`` of the latest with a cold cache (``file``: a new saver over the
  directory, as a new process) and with a warm one, each next to the CPU of serializing +
  compressing the final state once, measured in the same run.

The file store runs with its default ``durability="fsync"``: CPU is process time, so the
wait for the disk is not in it (``benchmarks/file_chat.py`` shows wall time too).

Run: ``python benchmarks/chat.py [--store file memory] [--turns 20 200 1000 5000]
[--check]``; writes ``benchmarks/results/chat-<store>.json``. ``--check`` exits 1 when a
target (issues #2, #12 and #14) is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard
from common import machine

from savegame.savers import Checkpoint, FileSystemSaver, KeyframePolicy, MemorySaver
from savegame.savers.base import BaseSaver
from savegame.savers.serde import Serializer

HERE = Path(__file__).resolve().parent


def chat_states(turns: int, seed: int = 7) -> list[dict[str, Any]]:
    """The state after each turn: the message list grows by two ~400-character messages."""
    rnd = random.Random(seed)
    vocabulary = [
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
        for _ in range(3000)
    ]

    def message(index: int, role: str) -> dict[str, Any]:
        words: list[str] = []
        length = 0
        while length < 400:
            word = rnd.choice(vocabulary)
            words.append(word)
            length += len(word) + 1
        return {"id": f"msg-{index}", "role": role, "content": " ".join(words)}

    messages: list[dict[str, Any]] = []
    states = []
    for turn in range(turns):
        messages = [*messages, message(2 * turn, "user"), message(2 * turn + 1, "assistant")]
        states.append({
            "messages": messages,
            "turn": turn,
            "tokens_used": 137 * turn + rnd.randint(0, 99),
            "last_node": rnd.choice(["agent", "tools", "summarize"]),
            "scratch": {"retries": turn % 3, "mood": rnd.choice(["ok", "busy"])},
        })
    return states


def best_cpu(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def run(turns: int, policy: KeyframePolicy | None, store: str = "file") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="savegame-chat-") as tmp:
        return _run(turns, policy, store, tmp)


def _run(turns: int, policy: KeyframePolicy | None, store: str, tmp: str) -> dict[str, Any]:
    states = chat_states(turns)
    serializer = Serializer()
    level3 = zstandard.ZstdCompressor(level=3)
    final_raw = serializer.dumps(states[-1])
    floor = len(level3.compress(final_raw))
    naive = sum(len(level3.compress(serializer.dumps(s))) for s in states)

    def make() -> BaseSaver:
        options = {} if policy is None else {"policy": policy}  # None: the store's default
        if store == "memory":
            return MemorySaver(**options)
        return FileSystemSaver(tmp, **options)

    saver: Any = make()
    put_cpu: list[float] = []
    latest = None
    for state in states:
        start = time.process_time()
        latest = saver.put(Checkpoint("chat", state, node_id="agent"))
        put_cpu.append(time.process_time() - start)
    assert latest is not None and latest.id is not None
    stored = saver.storage_bytes()
    items = {item.id: item for item in saver._read_thread("chat")[0]}
    records = sum(len(item.record) for item in items.values())

    def records_read(item: Any) -> int:
        count = 1
        while item.base_id is not None:
            item, count = items[item.base_id], count + 1
        return count

    reads = [records_read(item) for item in items.values()]
    latest_reads = records_read(items[latest.id])

    final = states[-1]
    repeat = 5 if turns >= 1000 else 15
    baseline = best_cpu(lambda: level3.compress(serializer.dumps(final)), repeat)

    def cold_get() -> None:
        if store == "memory":
            saver._cache.clear()
            got = saver.get("chat")
        else:  # a new process: nothing cached, the file's index not yet built
            got = make().get("chat")
        assert got is not None

    def warm_get() -> None:
        got = saver.get("chat")
        assert got is not None

    got = saver.get("chat")
    assert got is not None and got.state == final, "latest state does not round-trip"
    cold = best_cpu(cold_get, repeat)
    warm = best_cpu(warm_get, repeat)
    tail = put_cpu[-max(1, turns // 10):]
    put_mean = statistics.fmean(tail)
    return {
        "store": store,
        "turns": turns,
        "policy": dataclasses.asdict(saver.policy),
        "checkpoints": len(states),
        "final_state_bytes": len(final_raw),
        "stored_bytes": stored,
        "record_bytes": records,
        "floor_bytes": floor,
        "naive_bytes": naive,
        "stored_vs_floor": stored / floor,
        "stored_vs_naive": stored / naive,
        "masters": sum(1 for item in items.values() if item.depth == 1),
        "records_per_get_latest": latest_reads,
        "records_per_get_max": max(reads),
        "baseline_cpu_ms": baseline * 1e3,
        "put_cpu_ms": put_mean * 1e3,
        "get_cold_cpu_ms": cold * 1e3,
        "get_warm_cpu_ms": warm * 1e3,
        "put_vs_baseline": put_mean / baseline,
        "get_cold_vs_baseline": cold / baseline,
    }


def checks(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """The targets (issues #2, #12 and #14) that apply at this size."""
    out = [("any cold read decodes <= 20 records", result["records_per_get_max"] <= 20)]
    if result["store"] == "file" and result["turns"] >= 200:  # below, a few KiB of
        out.append(("bytes on disk <= 1.3x the records",  # replaced frames wait for
                    result["stored_bytes"] <= 1.3 * result["record_bytes"]))  # compaction
    if result["turns"] == 200:
        out.append(("stored <= 5x floor", result["stored_vs_floor"] <= 5))
        out.append(("stored <= 5% of naive", result["stored_vs_naive"] <= 0.05))
    if result["turns"] >= 1000:
        out.append(("put CPU <= 3x baseline", result["put_vs_baseline"] <= 3))
        out.append(("cold get CPU <= 5x baseline", result["get_cold_vs_baseline"] <= 5))
    if result["turns"] == 1000 and result["store"] == "memory":
        out.append(("stored <= 2.5x floor", result["stored_vs_floor"] <= 2.5))
    if result["turns"] == 5000 and result["store"] == "memory":
        out.append(("stored <= 3x floor", result["stored_vs_floor"] <= 3))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", nargs="+", choices=["file", "memory"],
                        default=["file", "memory"])
    parser.add_argument("--turns", type=int, nargs="+", default=[20, 200, 1000, 5000])
    parser.add_argument("--max-chain", type=int, default=None,
                        help="records per chain (default: each store's own policy)")
    parser.add_argument("--json-dir", type=Path, default=HERE / "results")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    policy = None if args.max_chain is None else KeyframePolicy(max_chain=args.max_chain)

    results = [run(turns, policy, store) for store in args.store for turns in args.turns]
    header = (f"{'store':>6} {'turns':>6} {'state B':>10} {'stored B':>10} {'floor B':>9} "
              f"{'naive B':>11} {'x floor':>7} {'% naive':>7} {'mastr':>5} {'reads':>5} "
              f"{'put ms':>7} {'get ms':>7} {'warm ms':>7} {'base ms':>7} {'put x':>5} "
              f"{'get x':>5}")
    print("Chat workload: FileSystemSaver (bytes = its files on disk; cold get = a new saver) "
          "and MemorySaver (bytes = records)")
    print("(CPU: process time; x = ratio to serialize+compress the final state once)")
    print(header)
    for r in results:
        print(f"{r['store']:>6} {r['turns']:>6} {r['final_state_bytes']:>10,} "
              f"{r['stored_bytes']:>10,} "
              f"{r['floor_bytes']:>9,} {r['naive_bytes']:>11,} {r['stored_vs_floor']:>7.2f} "
              f"{100 * r['stored_vs_naive']:>6.2f}% {r['masters']:>5} "
              f"{r['records_per_get_max']:>5} {r['put_cpu_ms']:>7.2f} "
              f"{r['get_cold_cpu_ms']:>7.2f} {r['get_warm_cpu_ms']:>7.2f} "
              f"{r['baseline_cpu_ms']:>7.2f} {r['put_vs_baseline']:>5.2f} "
              f"{r['get_cold_vs_baseline']:>5.2f}")
    failed = []
    for r in results:
        for name, ok in checks(r):
            print(f"  {r['store']} {r['turns']:>5} turns: {name}: {'ok' if ok else 'MISSED'}")
            if not ok:
                failed.append(f"{r['store']} {r['turns']} turns: {name}")
    info = machine(zstandard=zstandard.__version__)
    print(f"measured {info['date']} on {info['platform']}, {info['cpus']} CPUs, "
          f"Python {info['python']}, zstandard {info['zstandard']}")
    args.json_dir.mkdir(parents=True, exist_ok=True)
    for store in args.store:
        path = args.json_dir / f"chat-{store}.json"
        mine = [r for r in results if r["store"] == store]
        path.write_text(json.dumps({"machine": info, "policy": mine[0]["policy"],
                                    "results": mine}, indent=2) + "\n")
        print(f"wrote {path}")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
