"""Processes for the file store's crash and multi-process tests.

``python file_workers.py COMMAND ...``:

- ``zygote``: imports savegame once, then reads lines from stdin: ``fork STORE ACKLOG SEED``
  forks a crash writer (see :func:`crash_writer`) and prints its pid; ``wait PID`` reaps
  it and prints its wait status; ``exit`` ends. Forking from a warm single-threaded
  process lets a test kill hundreds of real writer processes in seconds.
- ``writer STORE SEED PUTS THREADS``: PUTS puts continuing the latest checkpoint of the
  THREADS shared threads (round robin), then one JSON line of what it stored.
- ``reader STORE SECONDS``: reads the store's threads again and again (latest, by id,
  whole lists) while other processes write and compact, checking every state; prints one
  JSON line with the number of reads.

States are a pure function of (seed, n) (:func:`state_of`), so a test can check every
acknowledged checkpoint without being told its content.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any

from savegame.savers import Checkpoint, KeyframePolicy
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.file import FileSystemSaver

#: Small chains: keyframes, anchors and deltas all occur within a few dozen puts.
POLICY = KeyframePolicy(max_chain=8)


def state_of(seed: int, n: int) -> dict[str, Any]:
    """The state a writer puts as its ``n``-th checkpoint: some text shared between
    neighbours (so deltas happen) and a blob of 1 KB..1 MB (so appends take a while)."""
    rnd = random.Random(seed * 1_000_003 + n)
    big = rnd.random() < 0.06
    blob = rnd.randbytes(rnd.randint(200_000, 1_000_000) if big else rnd.randint(100, 4000))
    return {"seed": seed, "n": n, "log": [f"entry {i} of {seed}" for i in range(n % 50)],
            "blob": blob}


def _ack(fd: int, *fields: object) -> None:
    os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())


def tear_a_write(rnd: random.Random) -> None:
    """Make one of the next file writes stop after a random prefix and SIGKILL this
    process there: a torn frame (head, envelope or payload cut) for sure, where a kill
    from outside mostly lands between writes."""
    from savegame.savers.file import _store

    real = _store._write_all
    countdown = rnd.randint(1, 6)

    def write_all(fd: int, pieces: Any, offset: int) -> int:
        nonlocal countdown
        countdown -= 1
        if countdown:
            return real(fd, pieces, offset)
        data = b"".join(bytes(p) for p in pieces)
        real(fd, [data[: rnd.randint(1, max(1, len(data) - 1))]], offset)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    _store._write_all = write_all  # type: ignore[assignment]


def crash_writer(store: str, acklog: str, seed: int) -> None:
    """Write until killed: puts continuing thread ``main``, pending writes beside them,
    and on thread ``gc`` puts and deletions (compactions). A line is appended to
    ``acklog`` only after the operation returned: ``P thread id seed n`` (put),
    ``W thread id seed n`` (pending write), ``d id,...`` before and ``D id,...`` after a
    delete_checkpoints. Every third writer tears one of its writes (:func:`tear_a_write`)."""
    rnd = random.Random(seed)
    if seed % 3 == 0:
        tear_a_write(rnd)
    saver = FileSystemSaver(store, durability="fsync", policy=POLICY)
    ack = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    gc_ids: list[str] = []
    n = 0
    while True:
        roll = rnd.random()
        n += 1
        if roll < 0.6:
            put = saver.put(Checkpoint("main", state_of(seed, n), node_id=f"w{seed}"))
            _ack(ack, "P", "main", put.id, seed, n)
            if rnd.random() < 0.3:
                saver.put_writes("main", str(put.id), [PendingWrite("task", 0, "c", n)])
                _ack(ack, "W", "main", put.id, seed, n)
        elif roll < 0.9 or len(gc_ids) < 4:
            put = saver.put(Checkpoint("gc", state_of(seed, n)))
            gc_ids.append(str(put.id))
            _ack(ack, "P", "gc", put.id, seed, n)
        else:
            doomed = gc_ids[:2]
            _ack(ack, "d", ",".join(doomed))
            saver.delete_checkpoints("gc", doomed)
            _ack(ack, "D", ",".join(doomed))
            del gc_ids[:2]


def zygote() -> None:
    for line in sys.stdin:
        command, *args = line.split()
        if command == "fork":
            store, acklog, seed = args
            pid = os.fork()
            if pid == 0:  # the writer: never returns
                try:
                    crash_writer(store, acklog, int(seed))
                finally:
                    os._exit(3)
            print(pid, flush=True)
        elif command == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(status, flush=True)
        else:
            return


def writer(store: str, seed: int, puts: int, threads: int) -> None:
    saver = FileSystemSaver(store)
    out = []
    for n in range(puts):
        thread = f"shared-{n % threads}"
        put = saver.put(Checkpoint(thread, {"seed": seed, "n": n, "pad": "x" * (n % 300)}))
        out.append([thread, put.id, put.parent_id, put.step, n])
    print(json.dumps({"seed": seed, "puts": out}))


def reader(store: str, seconds: float) -> None:
    """Read while others write and compact: every state must decode and be the state its
    writer put (``{"seed", "n", ...}`` from :func:`state_of`)."""
    saver = FileSystemSaver(store)
    reads = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for thread in saver.list_threads():
            listed = list(saver.list(thread))
            latest = saver.get(thread)
            for item in [*listed, *([latest] if latest else [])]:
                expected = state_of(item.state["seed"], item.state["n"])
                assert item.state == expected, (thread, item.id)
                reads += 1
            for item in listed[::7]:
                saver._cache.clear()  # a real read of the file each time
                got = saver.get(thread, item.id)
                if got is not None:  # deleted meanwhile is fine; wrong is not
                    assert got.state == state_of(got.state["seed"], got.state["n"])
                    reads += 1
    print(json.dumps({"reads": reads}))


if __name__ == "__main__":
    name, *rest = sys.argv[1:]
    if name == "zygote":
        zygote()
    elif name == "writer":
        writer(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    elif name == "reader":
        reader(rest[0], float(rest[1]))
    else:
        raise SystemExit(f"unknown command {name!r}")
