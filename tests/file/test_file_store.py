"""FileSystemSaver specifics: the on-disk layout, hostile thread ids, torn tails, flipped
bytes, newer formats, durability, space and compaction, a full disk, an unwritable
directory, big states, and the async twin. (The conformance suite covers the contract.)"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import errno
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import file_harness
import pytest

from savegame.savers import (
    Checkpoint,
    CorruptCheckpointError,
    KeyframePolicy,
    MemorySaver,
    SavegameError,
    codec,
)
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.file import (
    AsyncFileSystemSaver,
    FileFormatError,
    FileStoreError,
    FileSystemSaver,
    _format,
    _store,
)

REPO = Path(__file__).resolve().parents[2]


def chat(saver: FileSystemSaver, thread: str, turns: int, **kw: Any) -> list[Checkpoint]:
    messages: list[str] = []
    out = []
    for turn in range(turns):
        messages = [*messages, f"message {turn}: " + "lorem ipsum dolor sit amet " * 6]
        out.append(saver.put(Checkpoint(thread, {"messages": messages, "turn": turn}, **kw)))
    return out


def file_bytes(root: Path) -> int:
    return sum(os.path.getsize(p) for p in file_harness.store_files(str(root)))


# -- layout ------------------------------------------------------------------------------
def test_one_file_per_thread_under_hashed_directories(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path, durability="os")
    chat(saver, "a", 30)
    chat(saver, "a", 5, namespace="sub")
    saver.put_writes("a", str(saver.get("a").id), [PendingWrite("t", 0, "c", 1)])
    chat(saver, "b", 3)
    files = sorted(os.path.relpath(p, tmp_path) for p in file_harness.store_files(str(tmp_path)))
    key_a, key_b = _format.thread_key("a"), _format.thread_key("b")
    assert files == sorted(["threads.sgr", f"t/{key_a[:2]}/{key_a[2:4]}/{key_a}.sgt",
                            f"t/{key_b[:2]}/{key_b[2:4]}/{key_b}.sgt"])
    # every file starts with its format version; a thread file with its real id
    data = Path(saver.thread_path("a")).read_bytes()
    assert data[:4] == b"SGFT" and struct.unpack(">H", data[4:6])[0] == _format.FORMAT_VERSION
    assert _format.read_file_header(data, b"SGFT")[0] == "a"
    assert (tmp_path / "threads.sgr").read_bytes()[:6] == b"SGFR" + struct.pack(">H", 1)


HOSTILE = ["../../etc/passwd", "/", "..", ".", "a/b", "a\\b", "日本語/🙂", "x" * 10_000,
           "\u202e\u0000"[:1], "con", "a" * 16_384, " ", "\n"]


def test_hostile_thread_ids_stay_inside_and_apart(tmp_path: Path) -> None:
    root = tmp_path / "store"
    saver = FileSystemSaver(root, durability="os")
    for i, thread in enumerate(HOSTILE):
        saver.put(Checkpoint(thread, {"i": i}))
    outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
    assert outside == [], "a thread id escaped the store directory"
    names = [os.path.basename(p) for p in file_harness.store_files(str(root))]
    assert all(len(n) == 36 and n.endswith(".sgt") for n in names if n != "threads.sgr")
    fresh = FileSystemSaver(root)
    for i, thread in enumerate(HOSTILE):
        assert fresh.get(thread).state == {"i": i}, repr(thread[:20])
    assert fresh.list_threads() == sorted(HOSTILE)
    # NUL is refused by the core before any IO (ids must survive every store exactly)
    with pytest.raises(ValueError, match="NUL"):
        fresh.put(Checkpoint("a\x00b", {}))


def test_a_hash_collision_is_refused_and_damages_nothing(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    saver = FileSystemSaver(tmp_path, durability="os")
    monkeypatch.setattr(_format, "thread_key", lambda thread_id: "ab" * 16)
    first = saver.put(Checkpoint("one", {"n": 1}))
    before = Path(saver.thread_path("one")).read_bytes()
    with pytest.raises(SavegameError, match="'two' and 'one' hash to the same file"):
        saver.put(Checkpoint("two", {"n": 2}))
    assert Path(saver.thread_path("one")).read_bytes() == before
    assert saver.get("one", first.id).state == {"n": 1}


# -- torn tails and damage ---------------------------------------------------------------
@pytest.mark.parametrize("cut", [1, 10, 23, 24, 30, -1], ids=lambda c: f"cut-{c}")
def test_a_torn_tail_is_ignored_by_readers_and_cut_by_the_next_writer(tmp_path: Path,
                                                                      cut: int) -> None:
    one_frame = KeyframePolicy(reverse=False)  # each put below appends exactly one frame
    saver = FileSystemSaver(tmp_path, policy=one_frame)
    puts = chat(saver, "t", 5)
    path = saver.thread_path("t")
    whole = os.path.getsize(path)
    saver.put(Checkpoint("t", {"messages": ["torn"], "turn": 99}))
    grown = Path(path).read_bytes()
    frame = grown[whole:]
    # the last frame cut at ``cut`` bytes (mid-head, mid-envelope, mid-payload)
    Path(path).write_bytes(grown[: whole + (cut if cut > 0 else len(frame) - 1)])
    torn_size = os.path.getsize(path)
    reader = FileSystemSaver(tmp_path, policy=one_frame)
    assert reader.get("t").id == puts[-1].id and len(list(reader.list("t"))) == 5
    assert os.path.getsize(path) == torn_size, "a reader changed the file"
    nxt = reader.put(Checkpoint("t", {"messages": [], "turn": 6}))
    assert nxt.parent_id == puts[-1].id
    data = Path(path).read_bytes()  # the torn bytes were cut: the new frame follows at once
    head = _format.parse_frame_head(data, whole)
    assert data[:whole] == grown[:whole] and head is not None
    assert whole + head.size == len(data)
    fresh = FileSystemSaver(tmp_path)
    assert [c.id for c in fresh.list("t")] == [nxt.id, *[p.id for p in reversed(puts)]]
    tf = fresh._file("t")
    assert tf.index is not None and tf.index.end == os.path.getsize(path) == tf.seen_size


def test_a_flipped_record_byte_names_file_thread_and_checkpoint(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path)
    puts = chat(saver, "t", 4)
    target = puts[1]
    found = file_harness.entry(saver, "t", "", target.id)
    file_harness.flip(saver.thread_path("t"), found.payload_at + 7)
    fresh = FileSystemSaver(tmp_path)
    with pytest.raises(CorruptCheckpointError) as info:
        fresh.get("t", target.id)
    message = str(info.value)
    assert saver.thread_path("t") in message and "'t'" in message and target.id in message
    assert f"at byte {found.offset} fails its framing checksum" in message
    assert info.value.checkpoint_id == target.id and info.value.thread_id == "t"
    assert fresh.get("t", puts[0].id).state == puts[0].state  # the rest still reads


def test_a_flipped_envelope_or_head_byte_fails_every_read_and_write(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path)
    puts = chat(saver, "t", 4)
    path = saver.thread_path("t")
    target = file_harness.entry(saver, "t", "", puts[1].id)
    for offset in (target.offset + _format.FRAME + 3, target.offset + 9):  # envelope, head
        file_harness.flip(path, offset)
        before = Path(path).read_bytes()
        fresh = FileSystemSaver(tmp_path)
        for read in (lambda s: s.get("t"), lambda s: s.get("t", puts[0].id),
                     lambda s: list(s.list("t")), lambda s: s.put(Checkpoint("t", {"x": 1}))):
            with pytest.raises(CorruptCheckpointError, match="damaged at byte") as info:
                read(fresh)
            assert path in str(info.value) and info.value.thread_id == "t"
        assert Path(path).read_bytes() == before, "a writer appended to a damaged file"
        file_harness.flip(path, offset)  # restored: readable again
        assert FileSystemSaver(tmp_path).get("t").id == puts[-1].id
    file_harness.flip(path, target.offset + 9)
    FileSystemSaver(tmp_path).delete_thread("t")  # a damaged thread can still be deleted
    assert not os.path.exists(path) and FileSystemSaver(tmp_path).list_threads() == []


# -- format versions -----------------------------------------------------------------------
def test_a_thread_file_of_a_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path)
    chat(saver, "t", 3)
    path = Path(saver.thread_path("t"))
    data = bytearray(path.read_bytes())
    data[4:6] = struct.pack(">H", _format.FORMAT_VERSION + 1)
    size = _format.file_header_size(bytes(data))
    assert size is not None
    data[size - 4:size] = struct.pack(">I", _format.zlib.crc32(bytes(data[: size - 4])))
    path.write_bytes(bytes(data))
    fresh = FileSystemSaver(tmp_path)
    for attempt in (lambda: fresh.get("t"), lambda: fresh.put(Checkpoint("t", {"x": 1})),
                    lambda: fresh.delete_thread("t")):
        with pytest.raises(FileFormatError, match=r"newer|version 2.*upgrade"):
            attempt()
    assert path.read_bytes() == bytes(data)


def test_a_store_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    FileSystemSaver(tmp_path).put(Checkpoint("t", {"x": 1}))
    registry = tmp_path / "threads.sgr"
    data = bytearray(registry.read_bytes())
    data[4:6] = struct.pack(">H", 9)
    data[12:16] = struct.pack(">I", _format.zlib.crc32(bytes(data[:12])))
    registry.write_bytes(bytes(data))
    fresh = FileSystemSaver(tmp_path)
    with pytest.raises(FileFormatError, match=r"threads\.sgr.*version 9"):
        fresh.get("t")
    with pytest.raises(FileFormatError):
        fresh.list_threads()


# -- durability ----------------------------------------------------------------------------
@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_durability_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          durability: str) -> None:
    synced: list[str] = []
    real_file, real_dir = _store._sync_file, _store._sync_dir
    monkeypatch.setattr(_store, "_sync_file", lambda fd: (synced.append("file"), real_file(fd)))
    monkeypatch.setattr(_store, "_sync_dir", lambda p: (synced.append("dir"), real_dir(p)))
    saver = FileSystemSaver(tmp_path, durability=durability,  # type: ignore[arg-type]
                            policy=KeyframePolicy(reverse=False))  # one frame per put
    saver.put(Checkpoint("t", {"n": 0}))  # a new file: header, directory entries, record
    first = list(synced)
    synced.clear()
    saver.put(Checkpoint("t", {"n": 1}))  # an append
    if durability == "fsync":
        assert first.count("dir") >= 3 and "file" in first  # t/, t/ab/, t/ab/cd/, the file
        assert synced == ["file"]
    else:
        assert first == [] and synced == []
    assert FileSystemSaver(tmp_path).get("t").state == {"n": 1}
    with pytest.raises(ValueError, match="durability"):
        FileSystemSaver(tmp_path, durability="sometimes")  # type: ignore[arg-type]


# -- space and compaction ------------------------------------------------------------------
def test_bytes_on_disk_within_1_3x_of_the_records_on_the_200_turn_chat(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from chat import chat_states
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    saver = FileSystemSaver(tmp_path, durability="os")
    memory = MemorySaver(policy=saver.policy)  # the same records
    for state in chat_states(200):
        saver.put(Checkpoint("chat", state, node_id="agent"))
        memory.put(Checkpoint("chat", state, node_id="agent"))
    records = sum(len(c.record) for c in saver._read_thread("chat")[0])
    assert records == memory.storage_bytes()
    on_disk = file_bytes(tmp_path)
    allocated = sum(os.stat(p).st_blocks * 512 for p in file_harness.store_files(str(tmp_path)))
    print(f"records {records}, files {on_disk} ({on_disk / records:.3f}x), "
          f"allocated {allocated} ({allocated / records:.3f}x)")
    assert on_disk <= 1.3 * records
    assert allocated <= 1.3 * records


def test_delete_checkpoints_and_delete_thread_reclaim_space(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path, durability="os")
    puts = chat(saver, "t", 60, metadata={"k": 1})
    for put in puts:
        saver.put_writes("t", str(put.id), [PendingWrite("t", 0, "c", "w" * 300)])
    saver.put_writes("t", "no-such-checkpoint", [PendingWrite("t", 0, "c", "orphan")])
    path = saver.thread_path("t")
    before = os.path.getsize(path)
    saver.delete_checkpoints("t", [str(p.id) for p in puts[:40]])
    after = os.path.getsize(path)
    assert after < before * 0.6
    fresh = FileSystemSaver(tmp_path)
    assert [c.id for c in fresh.list("t")] == [p.id for p in reversed(puts[40:])]
    assert fresh.get_writes("t", [str(puts[0].id)])[str(puts[0].id)] == []
    assert fresh.get_writes("t", [str(puts[50].id)])[str(puts[50].id)][0].value == "w" * 300
    # writes of other ids are kept, as MemorySaver keeps them, until their id is deleted
    assert fresh.get_writes("t", ["no-such-checkpoint"])["no-such-checkpoint"][0].value == \
        "orphan"
    saver.delete_checkpoints("t", ["no-such-checkpoint"])
    assert FileSystemSaver(tmp_path).get_writes("t", ["no-such-checkpoint"]) == {
        "no-such-checkpoint": []}
    saver.delete_thread("t")
    assert not os.path.exists(path) and saver.list_threads() == []
    saver.delete_checkpoints("t", ["nothing"])  # no file: nothing to do
    assert not os.path.exists(path)


def test_keep_last_drops_old_chains(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path, durability="os", keep_last=3,
                            policy=KeyframePolicy(max_chain=4))
    puts = chat(saver, "t", 80)
    kept = list(FileSystemSaver(tmp_path).list("t"))
    # the 3 newest, and the rest of the chains they sit in (a few records each)
    assert [c.id for c in kept[:3]] == [p.id for p in puts[:-4:-1]] and len(kept) <= 20
    keep_all = FileSystemSaver(tmp_path / "all", durability="os",
                               policy=KeyframePolicy(max_chain=4))
    chat(keep_all, "t", 80)
    assert os.path.getsize(saver.thread_path("t")) < os.path.getsize(keep_all.thread_path("t")) / 3
    for item in kept:  # every survivor decodes from the file alone
        assert FileSystemSaver(tmp_path).get("t", item.id).state == item.state


def test_ttl_drops_idle_chains_on_write_and_on_vacuum(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path, durability="os", ttl=0.3,
                            policy=KeyframePolicy(max_chain=3))
    old = chat(saver, "t", 12)
    chat(saver, "idle", 4)
    time.sleep(0.4)
    new = saver.put(Checkpoint("t", {"messages": [], "turn": 100}))  # a scene cut: keyframe
    ids = [c.id for c in saver.list("t")]
    assert new.id in ids and old[0].id not in ids
    assert len(ids) < len(old)
    assert saver.list_threads() == ["idle", "t"]
    time.sleep(0.4)
    assert saver.vacuum() == 2  # both threads expired entirely
    assert saver.list_threads() == [] and file_harness.store_files(str(tmp_path / "t")) == []
    assert saver.get("t") is None and saver.get("idle") is None


def test_replaced_frames_are_reclaimed(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path, durability="os")
    (put,) = chat(saver, "t", 1)
    for i in range(600):  # replacing writes leave dead frames behind
        saver.put_writes("t", str(put.id), [PendingWrite("t", 0, "c", "v" * 4000 + str(i))],
                         replace=True)
    assert os.path.getsize(saver.thread_path("t")) < 3 << 20
    assert saver.get_writes("t", [str(put.id)])[str(put.id)][0].value.endswith("599")


def test_an_index_moved_by_a_compaction_equals_a_fresh_scan(tmp_path: Path) -> None:
    """A compaction that only drops replaced frames moves the index's offsets instead of
    scanning the new file: it must describe the file exactly as a scan from nothing does."""
    saver = FileSystemSaver(tmp_path, durability="os")
    compactions = 0

    def counted(*args: Any) -> None:
        nonlocal compactions
        compactions += 1
        compact(*args)

    compact, saver._compact = saver._compact, counted  # type: ignore[method-assign]
    rng = random.Random(7)
    notes: list[str] = []
    for turn in range(200):  # keyframes rewritten as reverse records leave dead frames
        notes = [*notes, f"{rng.getrandbits(800):x}"]
        put = saver.put(Checkpoint("t", {"notes": notes}))
        saver.put_writes("t", str(put.id), [PendingWrite("t", 0, "c", turn)])
        if turn == 120:
            saver.release("t")
    assert compactions >= 3
    tf = saver._file("t")
    with tf.mutex:
        moved = saver._reading(tf)
    assert moved is not None and moved.dead < 32 << 10
    fresh = FileSystemSaver(tmp_path, durability="os")
    tf2 = fresh._file("t")
    with tf2.mutex:
        scanned = fresh._reading(tf2)
    assert scanned is not None
    assert (moved.end, moved.dead, moved.release_frames) == (
        scanned.end, scanned.dead, scanned.release_frames)
    assert moved.spaces == scanned.spaces and moved.versions == scanned.versions
    assert [c.state for c in saver.list("t")] == [c.state for c in fresh.list("t")]


def test_a_writers_index_equals_a_fresh_scan_whatever_the_times_it_was_given(
        tmp_path: Path) -> None:
    """A writer indexes its frames from the checkpoints and writes in hand, not by
    parsing them back: copied-in checkpoints whose times are naive or in another zone
    are indexed as a scan reads them (UTC), and every field matches a fresh scan."""
    saver = FileSystemSaver(tmp_path, durability="os")
    chat(saver, "t", 12)
    source = MemorySaver()
    chat(source, "c", 3)
    stored, writes = source._read_thread("c")
    paris = dt.timezone(dt.timedelta(hours=1))
    times = [dt.datetime(2026, 1, 2, 3, 4, 5, 678901),  # naive: UTC
             dt.datetime(2026, 1, 2, 4, 4, 5, 678901, tzinfo=paris)]
    moved = [dataclasses.replace(item, thread_id="copied", created_at=times[i % 2],
                                 metadata={"k": [1, "two"]})
             for i, item in enumerate(stored)]
    saver._copy_in(moved, [dataclasses.replace(w, thread_id="copied") for w in writes])
    for thread in ("t", "copied"):
        tf = saver._file(thread)
        with tf.mutex:
            written = saver._reading(tf)
        fresh = FileSystemSaver(tmp_path, durability="os")
        tf2 = fresh._file(thread)
        with tf2.mutex:
            scanned = fresh._reading(tf2)
        assert written is not None and scanned is not None
        assert written.spaces == scanned.spaces and written.end == scanned.end
    space = written.spaces[""]
    assert {entry.stored.created_at for entry in space.by_id.values()} == {
        dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)}


# -- list_threads reads the registry only ----------------------------------------------
def test_list_threads_opens_no_thread_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    saver = FileSystemSaver(tmp_path, durability="os")
    for thread in ("app/1", "app/2", "b", "app/10"):
        saver.put(Checkpoint(thread, {}))
    saver.release("b")  # no live checkpoints left: not listed
    fresh = FileSystemSaver(tmp_path)

    def refuse(*args: Any) -> bool:
        raise AssertionError("list_threads opened a thread file")

    monkeypatch.setattr(FileSystemSaver, "_open", refuse)
    assert fresh.list_threads(prefix="app/") == ["app/1", "app/10", "app/2"]
    assert fresh.list_threads() == ["app/1", "app/10", "app/2"]


def test_vacuum_brings_the_registry_in_line_and_a_damaged_entry_loses_only_itself(
    tmp_path: Path
) -> None:
    saver = FileSystemSaver(tmp_path, durability="os")
    for thread in ("a", "b", "c"):
        saver.put(Checkpoint(thread, {}))
    saver.release("b")
    # what a crash between a file's change and its registry entry leaves behind:
    saver._register("b", True)  # released, still listed
    saver._register("ghost", True)  # no file at all
    assert FileSystemSaver(tmp_path).list_threads() == ["a", "b", "c"]  # ghost: no file
    assert saver.vacuum() == 0
    fresh = FileSystemSaver(tmp_path)
    assert fresh.list_threads() == ["a", "c"]
    assert set(fresh._registry_threads) == {"a", "c"}  # the ghost entry is gone too
    # a flipped byte in the registry's first entry loses that entry only
    registry = tmp_path / "threads.sgr"
    first = _format.file_header_size(registry.read_bytes())
    assert first is not None
    file_harness.flip(str(registry), first + _format.FRAME + 2)
    assert FileSystemSaver(tmp_path).list_threads() == ["c"]
    FileSystemSaver(tmp_path).vacuum()  # rebuilt from the thread files
    assert FileSystemSaver(tmp_path).list_threads() == ["a", "c"]


def test_the_registry_is_compacted(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path, durability="os")
    for i in range(700):
        saver.put(Checkpoint(f"t{i}", {}))
        if i % 10:
            saver.delete_thread(f"t{i}")
    registry = os.path.getsize(tmp_path / "threads.sgr")
    assert registry < 700 * 2 * 40, registry
    assert FileSystemSaver(tmp_path).list_threads() == sorted(f"t{i}" for i in range(0, 700, 10))


# -- reads use the index -------------------------------------------------------------------
def test_latest_and_by_id_reads_do_not_read_the_whole_file(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    saver = FileSystemSaver(tmp_path, durability="os", policy=KeyframePolicy(max_chain=8))
    rnd = __import__("random").Random(3)
    puts = [saver.put(Checkpoint("t", {"blob": rnd.randbytes(20_000), "i": i}))
            for i in range(150)]
    size = os.path.getsize(saver.thread_path("t"))
    read: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting)
    fresh = FileSystemSaver(tmp_path)
    assert fresh.get("t").state["i"] == 149
    assert sum(read) < size * 0.1, (sum(read), size)
    read.clear()
    assert fresh.get("t", puts[70].id).state["i"] == 70
    assert sum(read) < size * 0.1


# -- errors: a full disk, a read-only directory, bad arguments --------------------------
def _half_then_disk_full(real: Any) -> Any:
    """A ``_write_all`` that writes half of what it is given, then finds the disk full."""

    def full(fd: int, pieces: Any, offset: int) -> int:
        data = b"".join(bytes(p) for p in pieces)
        real(fd, [data[: len(data) // 2]], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    return full


def test_enospc_during_an_append_stores_nothing_and_damages_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saver = FileSystemSaver(tmp_path)
    puts = chat(saver, "t", 5)
    path = saver.thread_path("t")
    before = Path(path).read_bytes()
    monkeypatch.setattr(_store, "_write_all", _half_then_disk_full(_store._write_all))
    with pytest.raises(FileStoreError) as info:
        saver.put(Checkpoint("t", {"messages": [], "turn": 5}))
    assert info.value.errno == errno.ENOSPC and "'t'" in str(info.value)
    assert path in str(info.value)
    assert Path(path).read_bytes() == before
    monkeypatch.undo()
    assert [c.id for c in FileSystemSaver(tmp_path).list("t")] == [p.id for p in reversed(puts)]
    assert saver.put(Checkpoint("t", {"messages": [], "turn": 5})).parent_id == puts[-1].id



def test_enospc_during_a_rewrite_names_the_checkpoints_and_damages_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saver = FileSystemSaver(tmp_path)
    puts = chat(saver, "t", 3)
    path = saver.thread_path("t")
    before = Path(path).read_bytes()
    stored = [saver._read("t", "", p.id) for p in puts[:2]]
    monkeypatch.setattr(_store, "_write_all", _half_then_disk_full(_store._write_all))
    with pytest.raises(FileStoreError) as info:
        saver._replace_many(stored)  # type: ignore[arg-type]
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "'t'" in message
    assert all(repr(p.id) in message for p in puts[:2])
    assert Path(path).read_bytes() == before
    monkeypatch.undo()
    fresh = FileSystemSaver(tmp_path)
    assert [(c.id, c.state) for c in fresh.list("t")] == [(p.id, p.state) for p in reversed(puts)]

@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Any:
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk(tiny_tmpfs: Path) -> None:
    saver = FileSystemSaver(tiny_tmpfs / "store")
    rnd = __import__("random").Random(5)
    stored = []
    with pytest.raises(FileStoreError) as info:
        for i in range(1000):
            stored.append(saver.put(Checkpoint(f"t{i % 3}", {"blob": rnd.randbytes(9000)})))
    assert info.value.errno == errno.ENOSPC and "No space left" in str(info.value)
    fresh = FileSystemSaver(tiny_tmpfs / "store")
    for put in stored:  # everything acknowledged is intact
        assert fresh.get(put.thread_id, put.id).state == put.state
    fresh.delete_thread("t0")  # space freed: writing works again
    assert fresh.put(Checkpoint("t1", {"after": True})).state == {"after": True}


def test_an_unwritable_directory_is_a_clear_error() -> None:
    """As another user than the store's owner (root drops to nobody in the child)."""
    top = Path(tempfile.mkdtemp(prefix="savegame-ro-"))  # pytest's tmp_path is 0700
    try:
        _unwritable(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _unwritable(top: Path) -> None:
    os.chmod(top, 0o755)
    store = top / "store"
    FileSystemSaver(store).put(Checkpoint("t", {"n": 1}))
    script = (
        "import errno, os, sys\n"
        "from savegame.savers import Checkpoint\n"
        "from savegame.savers.file import FileSystemSaver, FileStoreError\n"
        "root = sys.argv[1]\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534); os.setuid(65534)\n"
        "saver = FileSystemSaver(root)\n"
        "assert saver.get('t').state == {'n': 1}  # a read-only store still reads\n"
        "for thread in ('t', 'new'):\n"
        "    try:\n"
        "        saver.put(Checkpoint(thread, {'n': 2}))\n"
        "    except FileStoreError as exc:\n"
        "        assert exc.errno == errno.EACCES, exc\n"
        "        print(exc)\n"
        "    else:\n"
        "        raise SystemExit('the put succeeded')\n"
    )
    for path in [store, *store.rglob("*")]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    try:
        done = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True,
                              text=True, timeout=60)
    finally:
        for path in [store, *store.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("Permission denied" in line for line in lines)
    assert "thread 't'" in lines[0] and "thread 'new'" in lines[1]
    assert FileSystemSaver(store).get("t").state == {"n": 1}


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        FileSystemSaver(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="ttl"):
        FileSystemSaver(tmp_path, ttl=0)
    for uri in ("mongodb://x/y", "file://host/x", "file://", "file:///x?colour=red"):
        with pytest.raises(ValueError):
            FileSystemSaver.from_uri(uri)


def test_from_uri(tmp_path: Path) -> None:
    target = tmp_path / "with space"
    with FileSystemSaver.from_uri(target.as_uri() + "?durability=os&keep_last=5") as saver:
        assert saver.path == target and saver.durability == "os" and saver.keep_last == 5
        saver.put(Checkpoint("t", {"x": 1}))
    assert FileSystemSaver.from_uri(f"file://{target}").get("t").state == {"x": 1}


def test_lazy_import() -> None:
    code = ("import sys, savegame.savers as s\n"
            "assert 'savegame.savers.file' not in sys.modules\n"
            "assert s.FileSystemSaver.__name__ == 'FileSystemSaver'\n"
            "from savegame.savers import AsyncFileSystemSaver\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


# -- big states ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_200_mb_state_round_trips_with_bounded_extra_memory(tmp_path: Path) -> None:
    blob = os.urandom(200 << 20)
    saver = FileSystemSaver(tmp_path)
    put = saver.put(Checkpoint("big", {"blob": blob, "n": 1}))
    record = saver._read("big", "", str(put.id))
    assert record is not None and len(record.record) > 200 << 20
    # The store itself (framing, checksums, reads) adds little beyond the record: an
    # append copies nothing, a read allocates the record once.
    copy = dataclasses.replace(record, id="copy", parent_id=record.id, keyframe_id="copy",
                               seq=record.seq + 1)
    tracemalloc.start()
    try:
        assert saver._insert(copy) is None
        _, peak_insert = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        again = FileSystemSaver(tmp_path)._read("big", "", "copy")
        _, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert again is not None and again.record == record.record
    assert peak_insert < 16 << 20, peak_insert
    assert peak_read < len(record.record) + (16 << 20), peak_read
    del record, again
    got = FileSystemSaver(tmp_path).get("big", put.id)
    assert got is not None and got.state["blob"] == blob


# -- the async twin ------------------------------------------------------------------------
def test_async_saver_is_async_only_and_shares_the_files(tmp_path: Path,
                                                        loop: asyncio.AbstractEventLoop) -> None:
    saver = AsyncFileSystemSaver(tmp_path)
    with pytest.raises(TypeError, match="async-only"):
        saver.put(Checkpoint("t", {"x": 1}))
    with pytest.raises(TypeError, match="avacuum"):
        saver.vacuum()
    put = loop.run_until_complete(saver.aput(Checkpoint("t", {"x": 2})))
    assert FileSystemSaver(tmp_path).get("t").id == put.id
    assert loop.run_until_complete(saver.avacuum()) == 0


@pytest.mark.parametrize("kind", [FileSystemSaver, AsyncFileSystemSaver])
def test_file_io_never_blocks_the_event_loop(tmp_path: Path, loop: asyncio.AbstractEventLoop,
                                             monkeypatch: pytest.MonkeyPatch, kind: type) -> None:
    real = _store._sync_file

    def slow_sync(fd: int) -> None:
        time.sleep(0.3)  # a slow disk
        real(fd)

    monkeypatch.setattr(_store, "_sync_file", slow_sync)
    saver = kind(tmp_path)

    async def main() -> float:
        lag = 0.0
        stop = False

        async def ticker() -> None:
            nonlocal lag
            while not stop:
                start = time.monotonic()
                await asyncio.sleep(0.01)
                lag = max(lag, time.monotonic() - start - 0.01)

        task = asyncio.ensure_future(ticker())
        await saver.aput(Checkpoint("t", {"x": 1}))
        stop = True
        await task
        return lag

    assert loop.run_until_complete(main()) < 0.2


# -- fork ------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_share_the_parents_lock(tmp_path: Path) -> None:
    """A descriptor inherited through fork shares its flock with the parent: the child must
    open its own, and so wait while the parent writes."""
    saver = FileSystemSaver(tmp_path, durability="os")
    saver.put(Checkpoint("t", {"n": 0}))
    read, write = os.pipe()
    with saver._writing("t", create=False):  # the parent holds the thread's lock
        pid = os.fork()
        if pid == 0:  # the child: the same saver object, inherited
            try:
                start = time.monotonic()
                saver.put(Checkpoint("t", {"n": 1}))
                os.write(write, f"{time.monotonic() - start:.3f}".encode())
            finally:
                os._exit(0)
        time.sleep(0.5)
    os.close(write)
    waited = float(os.read(read, 100) or b"-1")
    os.waitpid(pid, 0)
    assert waited >= 0.4, f"the child wrote after {waited} s, while the parent held the lock"
    assert FileSystemSaver(tmp_path).get("t").state == {"n": 1}


def test_with_a_ttl_keyframes_stay_whole(tmp_path: Path) -> None:
    """The file store expires whole keyframe chains: with a ttl no keyframe becomes a
    reverse record (one could be needed by an older chain a fork keeps alive)."""
    saver = FileSystemSaver(tmp_path, ttl=3600, policy=KeyframePolicy(max_chain=2))
    for i in range(10):
        saver.put(Checkpoint("t", {"n": i, "log": list(range(100 + i))}))
    stored, _ = saver._read_thread("t")
    masters = [item for item in stored if item.depth == 1]
    assert len(masters) >= 4 and all(item.base_id is None for item in masters)


def test_the_file_store_defaults_to_chains_of_8_and_keeps_a_given_policy(tmp_path: Path) -> None:
    assert FileSystemSaver(tmp_path).policy == KeyframePolicy(max_chain=8, level=2)
    assert FileSystemSaver(tmp_path, policy=KeyframePolicy(max_chain=3)).policy.max_chain == 3
    saver = FileSystemSaver(tmp_path / "s", durability="os")
    state: dict[str, Any] = {"log": []}
    for n in range(20):
        state = {"log": [*state["log"], f"entry {n} " + "x" * 200]}
        saver.put(Checkpoint("t", state))
    depths = [c.depth for c in saver._read_thread("t")[0]]
    assert max(depths) == 8 and depths.count(1) <= 3


def test_a_keyframe_rewrites_the_older_ones_in_one_append(tmp_path: Path) -> None:
    saver = FileSystemSaver(tmp_path, durability="os", policy=KeyframePolicy(max_chain=1))
    appends: list[int] = []
    real = saver._append

    def counting(tf: Any, pieces: Any) -> None:
        appends.append(len(pieces) // 2)
        real(tf, pieces)

    saver._append = counting  # type: ignore[method-assign]
    state: dict[str, Any] = {"log": ["y" * 1200]}  # over 1 KiB: keyframes get re-pointed
    most = 0
    for n in range(16):  # every put a keyframe: the Fenwick steps re-point 1 to 4 older ones
        state = {"log": [*state["log"], f"entry {n} " + "x" * 300]}
        appends.clear()
        saver.put(Checkpoint("t", state))
        assert len(appends) <= 2  # the insert, then one append of every rewritten frame
        most = max(most, *appends)
    assert most >= 2
    saver._cache.clear()
    fresh = FileSystemSaver(tmp_path)
    assert fresh.get("t").state == state  # type: ignore[union-attr]
    kinds = [codec.read_header(c.record, 0, codec.location("t", "", c.id)).kind
             for c in fresh._read_thread("t")[0]]
    assert kinds.count(codec.KEYFRAME) == 1 and kinds.count(codec.REVERSE) == 15
