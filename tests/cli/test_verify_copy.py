"""``savegame verify`` finds every corrupted record; ``savegame copy`` of 10,000 checkpoints,
killed halfway and run again, ends with identical threads."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mongo_harness
import pytest
from cli_support import as_json, db_uri, json_lines, run, savegame_exe

from savegame.savers import Checkpoint, MemorySaver, open_saver
from savegame.savers.archive import ArchiveWriter, load_archive
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.maintenance import verify_thread

pytest.importorskip("click")
pymongo = pytest.importorskip("pymongo")


def chat_store(saver: Any, threads: int, turns: int, *, writes: bool = False) -> None:
    """Chat-like threads: a growing message list (deltas), keyframes every so often."""
    for t in range(threads):
        messages: list[str] = []
        thread = f"thread-{t:03d}"
        for turn in range(turns):
            messages.append(f"message {turn} of {thread}: " + "lorem ipsum " * (turn % 5))
            stored = saver.put(Checkpoint(thread, {"messages": messages[-30:], "turn": turn},
                                          node_id="agent", next_node_id="tools"))
        if writes:
            saver.put_writes(thread, stored.id, [PendingWrite("task", 0, "messages", turn)])


def flip(record: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(record))
    return record[:position] + bytes([record[position] ^ rng.randrange(1, 256)]) + \
        record[position + 1:]


def test_verify_finds_every_flipped_byte_on_mongodb(nx_uri: str) -> None:
    uri = db_uri(nx_uri, "verify50")
    with open_saver(uri) as saver:
        chat_store(saver, threads=5, turns=40)
    client: Any = pymongo.MongoClient(nx_uri)
    collection = client["verify50"]["checkpoints"]
    docs = list(collection.find({}, {"thread_id": 1, "cid": 1, "rec": 1}))
    assert len(docs) == 200
    rng = random.Random(15)
    victims = rng.sample(docs, 50)
    for doc in victims:  # delete + insert: nx-27017 0.8 fails replace_one on bytes
        full = collection.find_one({"_id": doc["_id"]})
        full["rec"] = flip(bytes(full["rec"]), rng)
        collection.delete_one({"_id": doc["_id"]})
        collection.insert_one(full)
    client.close()

    result = run("verify", "-s", uri, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not report["ok"] and report["checkpoints"] == 200
    corrupt = {(p["thread_id"], p["checkpoint_id"]) for p in report["problems"]
               if p["kind"] == "corrupt"}
    flipped = {(doc["thread_id"], mongo_harness.read_id(doc["cid"])) for doc in victims}
    assert corrupt == flipped  # 50 of 50 found, and nothing sound called corrupt
    others = [p for p in report["problems"] if p["kind"] != "corrupt"]
    assert all(p["kind"] == "chain" and "is decoded from record" in p["message"]
               for p in others)  # their deltas, named as depending on a corrupt record
    print(f"\nverify: {len(corrupt & flipped)} of {len(flipped)} flipped records reported "
          f"corrupt, {len(corrupt - flipped)} sound ones called corrupt, {len(others)} "
          "deltas reported as decoded from a corrupt record")
    human = run("verify", "-s", uri)
    assert human.returncode == 1
    assert "DAMAGED" in human.stdout
    assert mongo_harness.read_id(victims[0]["cid"]) in human.stdout


def test_verify_finds_every_flipped_byte_in_memory() -> None:
    saver = MemorySaver()
    chat_store(saver, threads=2, turns=40, writes=True)
    spaces = [space for spaces in saver._threads.values() for space in spaces.values()]
    items = [item for space in spaces for item in space.items.values()]
    rng = random.Random(7)
    victims = rng.sample(items, 50)
    for item in victims:
        space = saver._threads[item.thread_id][item.namespace]
        space.items[item.id] = type(item)(**{**_fields(item),
                                             "record": flip(item.record, rng)})
    found = set()
    for thread in saver.list_threads():
        _, _, problems = verify_thread(saver, thread)
        found |= {(p.thread_id, p.checkpoint_id) for p in problems if p.kind == "corrupt"}
    assert found == {(item.thread_id, item.id) for item in victims}


def _envelope(item: Any) -> tuple[Any, ...]:
    return (item.id, item.parent_id, item.step, item.seq, item.node_id, item.next_node_id,
            dict(item.metadata), item.created_at, bytes(item.record), item.keyframe_id,
            item.base_id, item.depth)


def _fields(item: Any) -> dict[str, Any]:
    return {name: getattr(item, name) for name in item.__dataclass_fields__}


@pytest.mark.slow
def test_copy_10000_checkpoints_interrupted_and_resumed(tmp_path: Path, nx_uri: str) -> None:
    begun = time.monotonic()
    source = MemorySaver()
    chat_store(source, threads=50, turns=200, writes=True)
    print(f"\nsource written in {time.monotonic() - begun:.1f} s")
    archive = tmp_path / "10k.sgar"
    with ArchiveWriter.open(archive) as writer:
        for thread in source.list_threads():
            writer.write_thread(thread, *source.read_records(thread))
    src_uri = f"memory://?load={archive}"
    dst_uri = db_uri(nx_uri, "copy10k")
    client: Any = pymongo.MongoClient(nx_uri)
    target = client["copy10k"]["checkpoints"]

    started = time.monotonic()
    process = subprocess.Popen([savegame_exe(), "copy", src_uri, dst_uri, "--batch", "64"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while target.estimated_document_count() < 2100 and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)  # no clean-up of any kind: a crash
    process.wait(30)
    interrupted_at = target.count_documents({})
    timings = {"killed": time.monotonic() - started}
    assert process.returncode == -signal.SIGKILL
    assert 0 < interrupted_at < 10_000, interrupted_at

    lines = json_lines("copy", src_uri, dst_uri, "--batch", "64")
    copied = sum(line["copied"] for line in lines)
    already = sum(line["already_there"] for line in lines)
    assert (copied, already) == (10_000 - interrupted_at, interrupted_at)
    assert target.count_documents({}) == 10_000
    assert target.count_documents({"w": {"$exists": True}}) == 50  # in their checkpoints
    assert client["copy10k"]["writes"].count_documents({}) == 0
    resumed = time.monotonic() - started
    timings["resumed"] = resumed

    report = as_json("verify", "-s", dst_uri)
    timings["verified"] = time.monotonic() - started
    assert report["ok"] and report["checkpoints"] == 10_000 and report["writes"] == 50
    again = json_lines("copy", src_uri, dst_uri)  # a third run: nothing left to do
    assert sum(line["copied"] for line in again) == 0

    expected = MemorySaver()
    load_archive(expected, archive)
    with open_saver(dst_uri) as copy:
        assert copy.list_threads() == expected.list_threads()
        for thread in expected.list_threads():
            # decoded states, newest first
            mine = [(c.id, c.parent_id, c.step, c.state) for c in expected.list(thread)]
            theirs = [(c.id, c.parent_id, c.step, c.state) for c in copy.list(thread)]
            assert mine == theirs, thread
            # and the stored envelopes (seq decides the latest) and pending writes
            ours, our_writes = expected.read_records(thread)
            copied, copied_writes = copy.read_records(thread)
            assert sorted(map(_envelope, ours)) == sorted(map(_envelope, copied)), thread
            assert sorted(our_writes, key=repr) == sorted(copied_writes, key=repr), thread
    client.close()
    timings["compared"] = time.monotonic() - started
    print(f"\n10,000-checkpoint copy: killed at {interrupted_at} "
          f"({interrupted_at % 200} into a thread), resumed; seconds since start: "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_copy_thread_resumes_inside_a_thread() -> None:
    """Whatever part of a thread reached the target (any subset of its records), a second
    copy writes exactly the rest."""
    from savegame.savers.maintenance import CopyConflictError, copy_thread

    source = MemorySaver()
    chat_store(source, threads=1, turns=60, writes=True)
    records, writes = source.read_records("thread-000")
    rng = random.Random(3)
    for part in (records[:37], rng.sample(records, 23), records[-1:]):
        target = MemorySaver()
        target.write_records(part, writes[:0])
        result = copy_thread(source, target, "thread-000", batch=7)
        assert (result.copied, result.present) == (60 - len(part), len(part))
        assert result.writes_copied == 1
        assert [c.state for c in target.list("thread-000")] == [
            c.state for c in source.list("thread-000")]
        assert target.get("thread-000").id == source.get("thread-000").id
    other = MemorySaver()
    other.put(Checkpoint("thread-000", {"mine": True}))
    with pytest.raises(CopyConflictError, match="thread 'thread-000' already exists"):
        copy_thread(source, other, "thread-000")
    assert len(list(other.list("thread-000"))) == 1  # nothing written


def test_verify_names_a_checkpoint_with_missing_chunks(nx_uri: str) -> None:
    uri = db_uri(nx_uri, "verify_chunks")
    with open_saver(uri, chunk_bytes=1000) as saver:
        big = saver.put(Checkpoint("big", {"blob": random.Random(1).randbytes(5000)}))
        saver.put(Checkpoint("small", {"n": 1}))
    client: Any = pymongo.MongoClient(nx_uri)
    chunks = client["verify_chunks"]["chunks"]
    assert chunks.count_documents({"thread_id": "big"}) >= 5
    chunks.delete_one({"thread_id": "big"})
    client.close()
    result = run("verify", "-s", uri, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [(p["thread_id"], p["checkpoint_id"], p["kind"]) for p in report["problems"]] == [
        ("big", big.id, "unreadable")]
    assert "chunks of its record are stored" in report["problems"][0]["message"]


def test_the_command_names_its_extra_when_click_is_missing() -> None:
    script = ("import sys; sys.modules['click'] = None\n"
              "from savegame.savers.cli import main\nmain(['--help'])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == ("savegame: error: 'click' is not installed; install it "
                                     "with: pip install 'savegame[cli]'")
