"""Stress and crash tiers over stores that several processes share (issue #11).

Writers in several OS processes, each with several threads, continue one thread with
``parent_id=None``: nothing acknowledged is lost, no id is duplicated, the history stays
one line (no accidental root, no fork), every parent exists. Then the same with writers
SIGKILLed at random moments mid-put (big states chunked across documents included):
every acknowledged checkpoint still decodes and the invariants hold. ``--stress`` runs
the long tier.
"""

from __future__ import annotations

import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from stress_support import acknowledged, check_thread, writer_process

from savegame.savers import Checkpoint

pytestmark = pytest.mark.timeout(900)


def test_processes_and_threads_continue_one_line(shared, scale):
    processes, threads, puts = (4, 8, 125) if scale > 1 else (3, 2, 25)
    jobs = [{"name": f"p{p}", "thread": "shared", "threads": threads, "puts": puts}
            for p in range(processes)]
    children = [writer_process(shared, job) for job in jobs]
    acked = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-2000:]
        acked += acknowledged(out)
    assert len(acked) == sum(job["threads"] * job["puts"] for job in jobs)
    items = check_thread(shared.open(), "shared", acked, complete=True)
    print(f"\n{shared.name}: {len(jobs)} processes x {threads} threads x "
          f"{jobs[0]['puts']} puts = {len(items)} checkpoints, one line, 0 lost, "
          "0 duplicated, 0 accidental roots")


def test_many_threads_of_one_process_continue_one_line(shared, scale):
    threads, puts = (32, 500) if scale > 1 else (8, 25)
    saver = shared.open()

    def writer(w: int) -> list[tuple[str, str, int]]:
        return [(saver.put(Checkpoint("threads", {"w": f"t{w}", "i": i})).id, f"t{w}", i)
                for i in range(puts)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        acked = [put for puts_ in pool.map(writer, range(threads)) for put in puts_]
    items = check_thread(shared.open(), "threads", acked, complete=True)
    print(f"\n{shared.name}: {threads} threads x {puts} puts = {len(items)} checkpoints, "
          "one line")


def test_writers_killed_mid_put_lose_nothing_acknowledged(shared, scale):
    rng = random.Random(1234)
    kills = 12 * scale
    acked = []
    for round_ in range(kills):
        job = {"name": f"k{round_}", "thread": "killed", "threads": 2, "puts": 10_000,
               "big_every": 7, "big_bytes": 150_000}
        child = writer_process(shared, job)
        time.sleep(rng.uniform(0.3, 1.2))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        acked += acknowledged(out)
    assert acked, "no writer got a put acknowledged before its kill"
    items = check_thread(shared.open(), "killed", acked, complete=False)
    print(f"\n{shared.name}: {kills} writers SIGKILLed mid-put; {len(acked)} acknowledged "
          f"puts all decode; {len(items)} stored, one line")
