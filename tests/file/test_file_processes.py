"""The file store across real processes: writers killed with SIGKILL at random moments,
four processes writing the same threads, and a reader in another process while this one
compacts. Real fsync, real locks, real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from file_workers import POLICY, state_of

from savegame.savers import Checkpoint
from savegame.savers.file import FileSystemSaver

HERE = Path(__file__).resolve().parent
WORKERS = str(HERE / "file_workers.py")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def assert_one_line(items: list[Checkpoint]) -> None:
    """One root, no fork, steps follow parents: the history is a line."""
    by_id = {c.id: c for c in items}
    roots = [c for c in items if c.parent_id is None]
    assert len(roots) == 1, f"{len(roots)} roots"
    children = Counter(c.parent_id for c in items if c.parent_id is not None)
    assert not [p for p, n in children.items() if n > 1], "a fork"
    for c in items:
        if c.parent_id is not None:
            assert c.parent_id in by_id, "a parent is missing"
            assert c.step == by_id[c.parent_id].step + 1


class Zygote:
    """``file_workers.py zygote``: forks crash writers on request."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, WORKERS, "zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV)

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "the zygote died"
        return answer.strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        self.proc.wait(10)


class Acks:
    """What the killed writers acknowledged, read from their log (whole lines only)."""

    def __init__(self, path: Path):
        self.path = path
        self.done = 0
        self.puts: dict[str, tuple[str, int, int]] = {}  # id -> (thread, seed, n)
        self.writes: dict[str, int] = {}  # checkpoint id -> value
        self.deleted: set[str] = set()
        self.intent: list[str] = []  # a delete begun, not acknowledged

    def read(self) -> list[str]:
        """New acknowledged puts since the last call."""
        data = self.path.read_bytes() if self.path.exists() else b""
        whole = data[: data.rfind(b"\n") + 1]
        lines = whole[self.done:].decode().splitlines()
        self.done = len(whole)
        new = []
        for line in lines:
            kind, *fields = line.split()
            if kind == "P":
                thread, cid, seed, n = fields
                self.puts[cid] = (thread, int(seed), int(n))
                new.append(cid)
            elif kind == "W":
                self.writes[fields[1]] = int(fields[3])
            elif kind == "d":
                self.intent = fields[0].split(",")
            elif kind == "D":
                self.deleted |= set(fields[0].split(","))
                self.intent = []
        return new


def verify(saver: FileSystemSaver, acks: Acks, ids: list[str]) -> None:
    """Every acknowledged checkpoint in ``ids`` decodes to the state its writer put (unless
    an acknowledged or in-flight delete removed it), with its pending write."""
    for cid in ids:
        thread, seed, n = acks.puts[cid]
        got = saver.get(thread, cid)
        if cid in acks.deleted or cid in acks.intent:
            continue
        assert got is not None, f"acknowledged checkpoint {cid} of {thread} is lost"
        assert got.state == state_of(seed, n), f"checkpoint {cid} decodes to another state"
        if cid in acks.writes:
            (write,) = saver.get_writes(thread, [cid])[cid]
            assert write.value == acks.writes[cid]


@pytest.mark.parametrize("kills", [
    30,
    pytest.param(250, marks=pytest.mark.slow),
], ids=lambda k: f"{k}-kills")
def test_sigkill_at_random_points_loses_no_acknowledged_checkpoint(tmp_path: Path, kills: int
                                                                  ) -> None:
    store = str(tmp_path / "store")
    acks = Acks(tmp_path / "acks.log")
    zygote = Zygote()
    reader = FileSystemSaver(store, policy=POLICY)
    rnd = random.Random(kills)
    torn = 0
    try:
        for kill in range(kills):
            pid = int(zygote.ask(f"fork {store} {acks.path} {kill}"))
            time.sleep(rnd.uniform(0.002, 0.06))
            os.kill(pid, signal.SIGKILL)
            status = int(zygote.ask(f"wait {pid}"))
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                f"writer {kill} exited on its own ({status}): it failed")
            # a torn tail is ignored by readers (and cut by the next writer)
            new = acks.read()
            for thread in ("main", "gc"):
                tf = reader._file(thread)
                with tf.mutex:
                    if reader._reading(tf) is not None and tf.index is not None:
                        torn += tf.seen_size > tf.index.end
            verify(reader, acks, new)
            if acks.intent:  # a delete in flight at the kill: all of it or none of it
                present = [reader.get("gc", cid) is not None for cid in acks.intent]
                assert len(set(present)) == 1, "a compaction was applied halfway"
                if not any(present):
                    acks.deleted |= set(acks.intent)
                acks.intent = []
    finally:
        zygote.close()
    # A fresh process's view: everything acknowledged, one line of history on "main".
    fresh = FileSystemSaver(store, policy=POLICY)
    verify(fresh, acks, list(acks.puts))
    main = list(fresh.list("main"))
    assert_one_line(main)
    assert {c.id for c in main} >= {cid for cid, (t, _, _) in acks.puts.items() if t == "main"}
    # the next writer cuts any torn tail
    fresh.put(Checkpoint("main", {"after": True}))
    tf = fresh._file("main")
    assert tf.index is not None and os.path.getsize(tf.path) == tf.index.end
    puts = sum(1 for t, _, _ in acks.puts.values() if t == "main")
    print(f"{kills} kills: {len(acks.puts)} acknowledged puts ({puts} on main), "
          f"{len(acks.deleted)} deleted, torn tails seen after {torn} kills")
    assert puts > kills // 2, "the writers barely wrote anything before being killed"
    assert torn >= kills // 10, "the writers that tear a write left no torn tail"


def test_four_processes_250_puts_each_on_shared_threads(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    procs = [subprocess.Popen([sys.executable, WORKERS, "writer", store, str(seed), "250", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ENV) for seed in range(4)]
    results: list[dict[str, Any]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    written = [tuple(p) for r in results for p in r["puts"]]
    assert len(written) == 1000
    ids = [p[1] for p in written]
    assert len(set(ids)) == 1000, "duplicate ids"
    saver = FileSystemSaver(store)
    assert saver.list_threads() == ["shared-0", "shared-1"]
    for thread in ("shared-0", "shared-1"):
        listed = list(saver.list(thread))
        mine = {p[1] for p in written if p[0] == thread}
        assert {c.id for c in listed} == mine, "lost or foreign checkpoints"
        assert_one_line(listed)  # writers continuing the latest never fork the thread
        by_id = {c.id: c for c in listed}
        for _, cid, parent, step, n in (p for p in written if p[0] == thread):
            assert (by_id[cid].parent_id, by_id[cid].step) == (parent, step)
            assert by_id[cid].state["n"] == n
        latest = saver.get(thread)
        assert latest is not None and latest.step == 499


def test_a_reader_in_another_process_survives_compactions(tmp_path: Path) -> None:
    """This process appends, deletes checkpoints and lets keep_last drop chains (each an
    atomic rewrite of the file) while another process reads the same threads."""
    store = str(tmp_path / "store")
    saver = FileSystemSaver(store, durability="os", keep_last=6, policy=POLICY)
    for n in range(4):
        saver.put(Checkpoint("a", state_of(1, n)))
    reader = subprocess.Popen([sys.executable, WORKERS, "reader", store, "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    n = 4
    compactions = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        put = saver.put(Checkpoint("a", state_of(1, n)))
        saver.put(Checkpoint("b", state_of(2, n)))
        n += 1
        if n % 5 == 0:
            older = [c.id for c in saver.list("b")][3:5]
            saver.delete_checkpoints("b", older)
            compactions += 1
        assert put.step == n - 1
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["reads"] > 50
    assert compactions > 5
    assert len(list(saver.list("a"))) <= 6 + POLICY.max_chain  # keep_last reclaimed chains
