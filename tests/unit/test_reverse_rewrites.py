"""Rewriting older keyframes as reverse records is best effort after a put has succeeded:
a store error there leaves them whole (bigger, never wrong), is logged, and the put
stands."""

from __future__ import annotations

import logging

import pytest

from savegame.savers import Checkpoint, KeyframePolicy, MemorySaver
from savegame.savers.maintenance import verify_thread


class FailingRewrites(MemorySaver):
    def _replace(self, stored):  # type: ignore[no-untyped-def]
        raise OSError("disk on fire")


def test_a_failed_rewrite_keeps_the_put_and_is_logged(caplog: pytest.LogCaptureFixture):
    saver = FailingRewrites(policy=KeyframePolicy(max_chain=2))
    with caplog.at_level(logging.WARNING, logger="savegame.savers"):
        puts = [saver.put(Checkpoint("t", {"n": i, "log": list(range(600 + i))}))
                for i in range(6)]
    assert [p.step for p in puts] == list(range(6))
    assert "older keyframes left whole" in caplog.text and "disk on fire" in caplog.text
    items = saver._threads["t"][""].items.values()
    masters = [item for item in items if item.depth == 1]
    assert len(masters) == 3 and all(item.base_id is None for item in masters)
    saver._cache.clear()
    for i, put in enumerate(puts):
        assert saver.get("t", put.id).state["n"] == i


def test_rewrites_keep_every_checkpoint_readable_and_only_the_newest_whole():
    saver = MemorySaver(policy=KeyframePolicy(max_chain=2))
    puts = [saver.put(Checkpoint("t", {"n": i, "log": list(range(600 + i))}))
            for i in range(40)]
    items = saver._threads["t"][""].items.values()
    whole = [item for item in items if item.depth == 1 and item.base_id is None]
    assert len(whole) == 1 and whole[0].seq == max(item.seq for item in items
                                                    if item.depth == 1)
    saver._cache.clear()
    for i, put in enumerate(puts):
        assert saver.get("t", put.id).state["log"] == list(range(600 + i))


class CountingReads(MemorySaver):
    reads = 0

    def _read_many(self, thread_id, namespace, checkpoint_ids):  # type: ignore[no-untyped-def]
        type(self).reads += 1
        return super()._read_many(thread_id, namespace, checkpoint_ids)


def test_a_writer_rewrites_the_masters_it_rewrote_before_without_reading_them():
    """The masters a new master's Fenwick step names again were rewritten by this saver
    before: their states are kept aside, so a chat's puts read nothing, and every record
    still decodes to its state (cold, and through ``verify``)."""
    saver = CountingReads(policy=KeyframePolicy(max_chain=2))
    puts = [saver.put(Checkpoint("t", {"n": i, "log": list(range(600 + i))}))
            for i in range(44)]
    assert CountingReads.reads == 0
    items = saver._threads["t"][""].items.values()
    assert sum(item.depth == 1 and item.base_id is not None for item in items) > 15
    saver._listed.clear()  # the states kept aside are gone (evicted): read them again
    more = [saver.put(Checkpoint("t", {"n": i, "log": list(range(600 + i))}))
            for i in range(44, 64)]
    assert CountingReads.reads > 0
    saver._cache.clear()
    saver._listed.clear()
    for i, put in enumerate(puts + more):
        assert saver.get("t", put.id).state["log"] == list(range(600 + i))
    assert verify_thread(saver, "t")[2] == []
