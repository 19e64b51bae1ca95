"""Stores that several OS processes can share, for the stress and crash tiers.

Each store is a :class:`SharedStore`: ``code`` is Python source a child process runs to
open a saver named ``saver`` (the parameters arrive as the dict ``params``), ``open`` opens
the same store in the test process. New stores (file, Redis) add a fixture in conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from savegame.savers import Checkpoint


@dataclass
class SharedStore:
    name: str
    code: str
    params: dict[str, Any]
    open: Callable[[], Any]
    cleanup: list[Callable[[], None]] = field(default_factory=list)


WRITER = r"""
import json, os, sys, threading
from savegame.savers import Checkpoint
params = json.loads(os.environ["STRESS_PARAMS"])
{code}
job = json.loads(sys.argv[1])
lock = threading.Lock()

def state(w, i):
    size = job.get("big_every") and i % job["big_every"] == 0
    blob = os.urandom(job.get("big_bytes", 0)) if size else b""
    return {{"w": w, "i": i, "log": [f"w{{w}} step {{j}}" for j in range(i % 30)], "blob": blob}}

def run(w):
    for i in range(job["puts"]):
        put = saver.put(Checkpoint(job["thread"], state(w, i), metadata={{"w": w}}))
        with lock:
            sys.stdout.write(json.dumps([put.id, w, i]) + "\n")
            sys.stdout.flush()

threads = [threading.Thread(target=run, args=(f"{{job['name']}}.{{t}}",))
           for t in range(job["threads"])]
for t in threads: t.start()
for t in threads: t.join()
saver.close()
"""


def writer_process(store: SharedStore, job: dict[str, Any]) -> subprocess.Popen[str]:
    """A child process that puts ``job["puts"]`` checkpoints from each of
    ``job["threads"]`` threads and prints ``[id, writer, i]`` for each acknowledged put."""
    env = dict(os.environ, STRESS_PARAMS=json.dumps(store.params))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER.format(code=store.code), json.dumps(job)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def acknowledged(output: str) -> list[tuple[str, str, int]]:
    """The puts a writer printed, ignoring a line cut by a kill."""
    out = []
    for line in output.splitlines():
        try:
            checkpoint_id, writer, i = json.loads(line)
        except ValueError:
            continue
        out.append((checkpoint_id, writer, i))
    return out


def check_thread(saver: Any, thread: str, acked: list[tuple[str, str, int]],
                 *, complete: bool) -> list[Checkpoint]:
    """Invariants of a thread many writers continued: every acknowledged put is there with
    its exact state, ids are unique, one root, no fork, every parent exists, and the latest
    is the end of the line. ``complete``: nothing but acknowledged puts may be stored."""
    saver._cache.clear()
    items = list(saver.list(thread))
    by_id = {c.id: c for c in items}
    assert len(by_id) == len(items), "duplicate ids"
    for checkpoint_id, writer, i in acked:
        got = by_id.get(checkpoint_id)
        assert got is not None, f"acknowledged put {checkpoint_id} ({writer}, {i}) was lost"
        assert (got.state["w"], got.state["i"]) == (writer, i)
    if complete:
        assert len(items) == len(acked), "a put that was not acknowledged was stored"
    roots = [c for c in items if c.parent_id is None]
    assert len(roots) == (1 if items else 0), f"{len(roots)} roots"
    parents = [c.parent_id for c in items if c.parent_id is not None]
    assert len(parents) == len(set(parents)), "a fork nobody asked for"
    assert all(p in by_id for p in parents), "a parent does not exist"
    if items:
        latest = saver.get(thread)
        assert latest is not None and latest.step == len(items) - 1
        assert latest.id not in set(parents)
    return items
