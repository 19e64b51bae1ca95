"""The chat workloads on the file store beside the frameworks' own SQLite savers, same run.

Three workloads, each in a fresh temporary directory per run, both durability modes of
``FileSystemSaver`` (``fsync``: every put on stable storage before it returns; ``os``: no
fsync):

- **LangGraph chat** (the graph of ``langgraph_chat.py``: ``START -> chat -> END`` with
  ``add_messages``, a human and an AI message of ~400 characters per turn, 3 checkpoints
  per turn): savegame ``Checkpointer(FileSystemSaver)`` against
  ``langgraph-checkpoint-sqlite``'s ``SqliteSaver`` on a database file (its own set-up:
  WAL journal). *put CPU/turn* = process time inside the checkpointer's ``put`` and
  ``put_writes`` per turn; *get CPU* = ``get_tuple`` of the latest by a new checkpointer
  over the same files (cold) and again by the one that wrote it (warm); *invoke CPU/turn* =
  the whole ``graph.invoke`` (process time: the background thread LangGraph saves from
  included). A ``Checkpointer(MemorySaver)`` row shows what the adapter and the core cost
  without any IO.
- **Burr chat** (the app of ``burr_chat.py``: 200 steps, each appending a ~400-character
  message): savegame ``Persister(FileSystemSaver)`` against Burr's ``SQLitePersister``;
  *save CPU/step* = process time inside ``save``; *load CPU* = ``load`` of the latest by a
  new persister (cold).
- **core chat** (``chat.py``'s ``chat_states``): ``FileSystemSaver.put`` per turn and a
  cold ``get`` of the latest; bytes on disk against the bytes of the records themselves.

Bytes on disk: every file of the store directory (``st_size``; *allocated* adds
``st_blocks`` of files and directories); for SQLite the database file after
``PRAGMA wal_checkpoint(TRUNCATE)`` (plus any ``-wal``/``-journal`` file left). CPU is
process time, the best of ``--repeat`` interleaved runs (the machine is shared).

Run: ``python benchmarks/file_chat.py [--turns 200] [--repeat 3] [--check]``; writes
``benchmarks/results/file-chat.json``. ``--check`` exits 1 when a target of issue #12 is
missed (LangGraph bytes <= 1/40 of SqliteSaver's, Burr bytes <= 1/20 of SQLitePersister's,
put CPU per turn with durability="os" <= SqliteSaver's, core bytes <= 1.3x the records).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard
from burr.core.persistence import SQLitePersister
from burr_chat import run_app
from chat import chat_states
from common import machine
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph_chat import chat_graph, texts

from savegame.adapters.burr import Persister
from savegame.adapters.langgraph import Checkpointer
from savegame.savers import Checkpoint, MemorySaver
from savegame.savers.file import FileSystemSaver

HERE = Path(__file__).resolve().parent
MODES = ("fsync", "os")


# -- measuring ---------------------------------------------------------------------------
def dir_bytes(root: Path) -> tuple[int, int]:
    """(sum of file sizes, allocated bytes of files and directories) under ``root``."""
    size = allocated = os.stat(root).st_blocks * 512
    size = 0
    for directory, dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(directory, name))
            size += st.st_size
            allocated += st.st_blocks * 512
        for name in dirs:
            allocated += os.stat(os.path.join(directory, name)).st_blocks * 512
    return size, allocated


def sqlite_bytes(path: Path) -> tuple[int, int]:
    """(bytes, allocated) of a database file after checkpointing its WAL into it."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = allocated = 0
    for suffix in ("", "-wal", "-journal"):
        other = Path(f"{path}{suffix}")
        if other.exists():
            size += other.stat().st_size
            allocated += other.stat().st_blocks * 512
    return size, allocated


class CpuMeter:
    """Adds up the CPU time of the calling thread spent in wrapped methods of one object
    (thread time: LangGraph saves checkpoints from a background thread while the graph
    runs on, so process time around a call would count the other thread's work too)."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, obj: Any, *names: str) -> None:
        for name in names:
            method = getattr(obj, name)

            def timed(*args: Any, _method: Callable[..., Any] = method, **kw: Any) -> Any:
                start = time.thread_time()
                try:
                    return _method(*args, **kw)
                finally:
                    self.total += time.thread_time() - start

            setattr(obj, name, timed)


def cpu_of(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    value = fn()
    return time.process_time() - start, value


# -- LangGraph -----------------------------------------------------------------------------
def langgraph_run(kind: str, turns: int, tmp: Path) -> dict[str, Any]:
    config = {"configurable": {"thread_id": "chat"}}
    db = tmp / "langgraph.sqlite"
    conn: sqlite3.Connection | None = None
    memory = MemorySaver()

    def checkpointer() -> Any:
        nonlocal conn
        if kind == "SqliteSaver":
            conn = sqlite3.connect(db, check_same_thread=False)
            return SqliteSaver(conn)
        if kind == "memory":  # the adapter and core alone, no IO: where the CPU goes
            memory._cache.clear()
            return Checkpointer(memory)
        return Checkpointer(FileSystemSaver(tmp / "store", durability=kind))

    saver = checkpointer()
    meter = CpuMeter()
    meter.wrap(saver, "put", "put_writes")
    messages = texts(2 * turns)
    graph = chat_graph(saver, iter(messages[1::2]))
    invoke = 0.0
    wall = time.perf_counter()
    for turn in range(turns):
        spent, out = cpu_of(lambda turn=turn: graph.invoke(
            {"messages": [HumanMessage(content=messages[2 * turn])]}, config))
        invoke += spent
    wall = time.perf_counter() - wall
    assert len(out["messages"]) == 2 * turns and out["messages"][-1].content == messages[-1]
    warm, _ = cpu_of(lambda: saver.get_tuple(config))
    if conn is not None:
        conn.close()
    cold_saver = checkpointer()
    cold, got = cpu_of(lambda: cold_saver.get_tuple(config))
    assert got is not None and len(got.checkpoint["channel_values"]["messages"]) == 2 * turns
    if conn is not None:
        conn.close()
    if kind == "SqliteSaver":
        size, allocated = sqlite_bytes(db)
    elif kind == "memory":
        size = allocated = memory.storage_bytes()
    else:
        size, allocated = dir_bytes(tmp / "store")
    return {"bytes": size, "allocated": allocated, "put_cpu_ms": 1e3 * meter.total / turns,
            "invoke_cpu_ms": 1e3 * invoke / turns, "wall_ms_per_turn": 1e3 * wall / turns,
            "get_cold_cpu_ms": 1e3 * cold, "get_warm_cpu_ms": 1e3 * warm}


# -- Burr ----------------------------------------------------------------------------------
def burr_run(kind: str, steps: int, tmp: Path) -> dict[str, Any]:
    db = tmp / "burr.sqlite"

    def persister() -> Any:
        if kind == "SQLitePersister":
            made: Any = SQLitePersister(str(db))
        else:
            made = Persister(FileSystemSaver(tmp / "store", durability=kind))
        made.initialize()
        return made

    wall = time.perf_counter()
    result = run_app(persister(), steps, seed=7)
    wall = time.perf_counter() - wall
    cold, loaded = cpu_of(lambda: persister().load("user-1", "chat-app"))
    assert loaded is not None and loaded["sequence_id"] == steps - 1
    size, allocated = sqlite_bytes(db) if kind == "SQLitePersister" else dir_bytes(tmp / "store")
    return {"bytes": size, "allocated": allocated, "save_cpu_ms": result["save_cpu_ms"],
            "step_cpu_ms": result["step_cpu_ms"], "wall_ms_per_step": 1e3 * wall / steps,
            "load_cold_cpu_ms": 1e3 * cold}


# -- core ----------------------------------------------------------------------------------
def core_run(kind: str, turns: int, tmp: Path) -> dict[str, Any]:
    states = chat_states(turns)
    saver = FileSystemSaver(tmp / "store", durability=kind)
    put = 0.0
    wall = time.perf_counter()
    for state in states:
        spent, _ = cpu_of(lambda state=state: saver.put(Checkpoint("chat", state,
                                                                   node_id="agent")))
        put += spent
    wall = time.perf_counter() - wall
    records = sum(len(c.record) for c in saver._read_thread("chat")[0])
    cold, got = cpu_of(lambda: FileSystemSaver(tmp / "store").get("chat"))
    assert got is not None and got.state == states[-1]
    size, allocated = dir_bytes(tmp / "store")
    return {"bytes": size, "allocated": allocated, "record_bytes": records,
            "bytes_vs_records": size / records, "allocated_vs_records": allocated / records,
            "put_cpu_ms": 1e3 * put / turns, "wall_ms_per_put": 1e3 * wall / turns,
            "get_cold_cpu_ms": 1e3 * cold}


# -- driver --------------------------------------------------------------------------------
def best_of(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the least CPU on ``key``; bytes are identical across runs."""
    best = min(runs, key=lambda r: r[key])
    out = dict(best)
    out[f"{key}_median"] = statistics.median(r[key] for r in runs)
    return out


def measure(workload: Callable[[str, int, Path], dict[str, Any]], kinds: tuple[str, ...],
            size: int, repeat: int, key: str) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for _ in range(repeat):  # interleaved
        for kind in kinds:
            with tempfile.TemporaryDirectory(prefix="savegame-bench-") as tmp:
                runs[kind].append(workload(kind, size, Path(tmp)))
    return {kind: best_of(items, key) for kind, items in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "file-chat.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    turns = args.turns
    lg = measure(langgraph_run, ("SqliteSaver", *MODES, "memory"), turns, args.repeat,
                 "put_cpu_ms")
    burr = measure(burr_run, ("SQLitePersister", *MODES), turns, args.repeat, "save_cpu_ms")
    core = measure(core_run, MODES, turns, args.repeat, "put_cpu_ms")

    print(f"LangGraph chat, {turns} turns ({3 * turns} checkpoints), CPU = best of "
          f"{args.repeat}")
    print(f"{'checkpointer':<28} {'bytes':>12} {'ratio':>8} {'put CPU ms/turn':>15} "
          f"{'invoke CPU ms':>13} {'wall ms/turn':>12} {'cold get ms':>11} {'warm get ms':>11}")
    base = lg["SqliteSaver"]
    names = {"SqliteSaver": "SqliteSaver", "memory": "savegame MemorySaver (no IO)"}
    for kind, r in lg.items():
        name = names.get(kind, f"savegame file ({kind})")
        ratio = "1" if kind == "SqliteSaver" else f"1/{base['bytes'] / r['bytes']:.1f}"
        print(f"{name:<28} {r['bytes']:>12,} {ratio:>8} {r['put_cpu_ms']:>15.3f} "
              f"{r['invoke_cpu_ms']:>13.3f} {r['wall_ms_per_turn']:>12.2f} "
              f"{r['get_cold_cpu_ms']:>11.2f} {r['get_warm_cpu_ms']:>11.2f}")
    print(f"\nBurr chat, {turns} steps")
    print(f"{'persister':<28} {'bytes':>12} {'ratio':>8} {'save CPU ms':>11} "
          f"{'step CPU ms':>11} {'wall ms/step':>12} {'cold load ms':>12}")
    bbase = burr["SQLitePersister"]
    for kind, r in burr.items():
        name = "SQLitePersister" if kind == "SQLitePersister" else f"savegame file ({kind})"
        ratio = "1" if kind == "SQLitePersister" else f"1/{bbase['bytes'] / r['bytes']:.1f}"
        print(f"{name:<28} {r['bytes']:>12,} {ratio:>8} {r['save_cpu_ms']:>11.3f} "
              f"{r['step_cpu_ms']:>11.3f} {r['wall_ms_per_step']:>12.2f} "
              f"{r['load_cold_cpu_ms']:>12.2f}")
    print(f"\nCore chat, {turns} turns")
    print(f"{'durability':<12} {'records B':>10} {'files B':>10} {'x records':>9} "
          f"{'allocated B':>11} {'x records':>9} {'put CPU ms':>10} {'wall ms/put':>11} "
          f"{'cold get ms':>11}")
    for kind, r in core.items():
        print(f"{kind:<12} {r['record_bytes']:>10,} {r['bytes']:>10,} "
              f"{r['bytes_vs_records']:>9.3f} {r['allocated']:>11,} "
              f"{r['allocated_vs_records']:>9.3f} {r['put_cpu_ms']:>10.3f} "
              f"{r['wall_ms_per_put']:>11.2f} {r['get_cold_cpu_ms']:>11.2f}")

    checks = [
        (f"LangGraph: bytes 1/{base['bytes'] / lg['os']['bytes']:.1f} of SqliteSaver's "
         "(target <= 1/40)", lg["os"]["bytes"] * 40 <= base["bytes"]
         and lg["fsync"]["bytes"] * 40 <= base["bytes"]),
        (f"Burr: bytes 1/{bbase['bytes'] / burr['os']['bytes']:.1f} of SQLitePersister's "
         "(target <= 1/20)", burr["os"]["bytes"] * 20 <= bbase["bytes"]),
        (f"LangGraph: put CPU/turn (os) {lg['os']['put_cpu_ms']:.3f} ms <= SqliteSaver's "
         f"{base['put_cpu_ms']:.3f} ms", lg["os"]["put_cpu_ms"] <= base["put_cpu_ms"]),
        (f"core: bytes on disk {core['fsync']['bytes_vs_records']:.3f}x the records "
         "(target <= 1.3x)", core["fsync"]["bytes_vs_records"] <= 1.3),
    ]
    print()
    for label, ok in checks:
        print(("PASS " if ok else "MISS ") + label)
    from importlib.metadata import version

    info = machine(zstandard=zstandard.__version__, langgraph=version("langgraph"),
                   langgraph_checkpoint_sqlite=version("langgraph-checkpoint-sqlite"),
                   burr=version("apache-burr"), sqlite=sqlite3.sqlite_version)
    print(f"measured {info['date']} on {info['platform']}, {info['cpus']} CPUs, Python "
          f"{info['python']}, SQLite {info['sqlite']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": info, "turns": turns, "repeat": args.repeat,
        "langgraph": lg, "burr": burr, "core": core,
        "checks": {label: ok for label, ok in checks},
    }, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
