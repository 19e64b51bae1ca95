"""Burr chat app: savegame's persister against Burr's own MongoDB persister, same backend.

One Burr application alternates a ``human`` and an ``ai`` action, each appending a
~400-character message (random words) to ``chat_history``, and is persisted every step
with ``with_state_persister``. The same app (same seed, same states) runs twice in one
process on one mongomock client: once with ``savegame.adapters.burr.Persister`` over
``MongoSaver`` and once with ``burr.integrations.persisters.b_pymongo.MongoDBBasePersister``
(subclassed here only to skip ``client.append_metadata``, which mongomock lacks, and a
``__del__`` that would close the shared client). Reported per persister:

- stored bytes: the BSON size of every document the persister wrote (``bson.encode``);
- CPU per step (process time of ``app.step()``, persisting included) and CPU per save (the
  persister's ``save`` alone), both means over all steps; each run is repeated and the
  fastest repetition kept.

mongomock has no indexes: every ``find_one`` scans the collection in Python. Burr's
persister does one per save (its duplicate check); savegame's ``MongoSaver`` does two point
reads (the id's existence check and the parent by id), plus a zstd delta against the
parent's state.

Run: ``python benchmarks/burr_chat.py [--steps 200] [--repeat 5] [--json PATH] [--check]``.
``--check`` exits 1 when savegame stores more than 1/20 of Burr's bytes or spends more CPU
per step.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mongomock
from burr.core import ApplicationBuilder, State, action
from burr.core.persistence import BaseStatePersister
from burr.integrations.persisters.b_pymongo import MongoDBBasePersister
from common import bson_bytes, machine, mongomock_client

from savegame.adapters.burr import Persister
from savegame.savers import MongoSaver

HERE = Path(__file__).resolve().parent


class MongomockBurrPersister(MongoDBBasePersister):
    """Burr's MongoDB persister, unchanged except its constructor (no
    ``client.append_metadata``: mongomock has none) and ``__del__`` (it closes the client,
    which both persisters share here)."""

    def __init__(self, client: Any, db_name: str, collection_name: str) -> None:
        self.client = client
        self.db = client[db_name]
        self.collection = self.db[collection_name]
        self.serde_kwargs: dict[str, Any] = {}

    def __del__(self) -> None:
        pass


def message_maker(seed: int) -> Callable[[str], dict[str, str]]:
    rnd = random.Random(seed)
    vocabulary = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz")
                          for _ in range(rnd.randint(2, 9))) for _ in range(3000)]

    def message(role: str) -> dict[str, str]:
        words: list[str] = []
        length = 0
        while length < 400:
            words.append(rnd.choice(vocabulary))
            length += len(words[-1]) + 1
        return {"role": role, "content": " ".join(words)}

    return message


class Timed(BaseStatePersister):
    """Wraps a persister and adds up the process time of its ``save`` calls."""

    def __init__(self, inner: BaseStatePersister) -> None:
        self.inner = inner
        self.save_cpu = 0.0

    def save(self, *args: Any, **kwargs: Any) -> None:
        start = time.process_time()
        self.inner.save(*args, **kwargs)
        self.save_cpu += time.process_time() - start

    def load(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.load(*args, **kwargs)

    def list_app_ids(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.inner.list_app_ids(*args, **kwargs)  # type: ignore[no-any-return]

    def is_initialized(self) -> bool:
        return True


def run_app(persister: BaseStatePersister, steps: int, seed: int) -> dict[str, Any]:
    message = message_maker(seed)

    @action(reads=["chat_history"], writes=["chat_history", "turn"])
    def human(state: State[Any]) -> State[Any]:
        return state.append(chat_history=message("user")).update(turn=state["turn"] + 1)

    @action(reads=["chat_history"], writes=["chat_history"])
    def ai(state: State[Any]) -> State[Any]:
        return state.append(chat_history=message("assistant"))

    timed = Timed(persister)
    app = (
        ApplicationBuilder()
        .with_actions(human=human, ai=ai)
        .with_transitions(("human", "ai"), ("ai", "human"))
        .with_state(chat_history=[], turn=0)
        .with_entrypoint("human")
        .with_identifiers(app_id="chat-app", partition_key="user-1")
        .with_state_persister(timed)
        .build()
    )
    step_cpu = 0.0
    for _ in range(steps):
        start = time.process_time()
        app.step()
        step_cpu += time.process_time() - start
    loaded = persister.load("user-1", "chat-app")
    assert loaded is not None and loaded["sequence_id"] == steps - 1
    assert loaded["state"]["chat_history"] == app.state["chat_history"], "state round-trip"
    final_json = len(json.dumps(app.state.serialize()).encode())
    return {"step_cpu_ms": 1e3 * step_cpu / steps, "save_cpu_ms": 1e3 * timed.save_cpu / steps,
            "final_state_json_bytes": final_json}


def measure(kind: str, steps: int, seed: int) -> dict[str, Any]:
    client = mongomock_client()
    db_name = f"bench_{kind}"
    persister: BaseStatePersister
    if kind == "savegame":
        saver = MongoSaver(client, database=db_name)
        persister = Persister(saver)
        persister.initialize()
        names = [saver.names.checkpoints, saver.names.chunks]
    else:
        persister = MongomockBurrPersister(client, db_name, "burr_state")
        names = ["burr_state"]
    result = run_app(persister, steps, seed)
    stored, documents = bson_bytes(client[db_name], names)
    return {**result, "stored_bytes": stored, "documents": documents}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "burr-chat.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):  # interleaved, fastest repetition kept
        for kind in ("burr", "savegame"):
            result = measure(kind, args.steps, args.seed)
            if kind not in best or result["step_cpu_ms"] < best[kind]["step_cpu_ms"]:
                best[kind] = result
    burr, ours = best["burr"], best["savegame"]
    ratio = burr["stored_bytes"] / ours["stored_bytes"]
    print(f"Burr chat app, {args.steps} steps persisted every step, one mongomock client "
          f"(final state {ours['final_state_json_bytes']:,} B of JSON)")
    print(f"{'persister':<36} {'stored B (BSON)':>15} {'docs':>5} {'CPU/step ms':>11} "
          f"{'CPU/save ms':>11}")
    rows = [("burr b_pymongo MongoDBBasePersister", burr),
            ("savegame Persister(MongoSaver)", ours)]
    for name, r in rows:
        print(f"{name:<36} {r['stored_bytes']:>15,} {r['documents']:>5} "
              f"{r['step_cpu_ms']:>11.3f} {r['save_cpu_ms']:>11.3f}")
    checks = [
        (f"savegame stores <= 1/20 of Burr's bytes (1/{ratio:.1f})", ratio >= 20),
        ("savegame CPU per step <= Burr's", ours["step_cpu_ms"] <= burr["step_cpu_ms"]),
    ]
    for name, ok in checks:
        print(f"  {name}: {'ok' if ok else 'MISSED'}")
    import burr.version
    import zstandard

    info = machine(burr=burr.version.__version__, mongomock=mongomock.__version__,
                   zstandard=zstandard.__version__)
    print(f"measured {info['date']} on {info['platform']}, {info['cpus']} CPUs, Python "
          f"{info['python']}, burr {info['burr']}, mongomock {info['mongomock']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": info, "steps": args.steps, "repeat": args.repeat, "seed": args.seed,
        "bytes_ratio": ratio, "results": best,
        "checks": {name: ok for name, ok in checks},
    }, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
