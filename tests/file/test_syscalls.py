"""The file store's GIL-holding system calls (``savers/file/_syscalls.py``): the same
results as ``os``/``fcntl``, a lock held elsewhere still waited for, errors as OSError,
and the store working the same with libc unavailable."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from savegame.savers import Checkpoint
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.file import FileSystemSaver, _syscalls

pytestmark = pytest.mark.skipif(_syscalls._CALLS is None, reason="no libc to call")


def test_pwritev_writes_every_piece_at_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    pieces = [b"ab\x00c", b"", b"\x00\x00xyz" * 100]
    fd = os.open(path, os.O_RDWR)
    try:
        assert _syscalls.pwritev(fd, pieces, 4) == sum(map(len, pieces))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123" + b"".join(pieces)


def test_pwritev_leaves_big_or_non_bytes_writes_to_os(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert _syscalls.pwritev(fd, [b"x" * (_syscalls.HOLD_GIL_BYTES + 1)], 0) is None
        assert _syscalls.pwritev(fd, [memoryview(b"x")], 0) is None
        assert _syscalls.pwritev(fd, [], 0) is None
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


def test_errors_are_oserrors_with_the_errno(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as caught:
            _syscalls.pwritev(fd, [b"x"], 0)
        assert caught.value.errno == errno.EBADF
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        _syscalls.lock(fd)  # closed
    with pytest.raises(FileNotFoundError):
        _syscalls.identity(str(tmp_path / "missing"))


def test_identity_is_what_stat_says(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 12345)
    st = os.stat(path)
    assert _syscalls.identity(str(path)) == ((st.st_dev, st.st_ino), 12345)
    os.replace(_write(tmp_path / "g", b"yy"), path)  # another file at the same path
    st = os.stat(path)
    assert _syscalls.identity(str(path)) == ((st.st_dev, st.st_ino), 2)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _hold_lock(path: str, held: Any, release: Any) -> None:
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.set()
    release.wait(30)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def test_a_lock_another_process_holds_is_waited_for_without_holding_the_gil(
        tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    child = context.Process(target=_hold_lock, args=(str(path), held, release))
    child.start()
    try:
        assert held.wait(30)
        fd = os.open(path, os.O_RDWR)
        got = threading.Event()

        def take() -> None:
            _syscalls.lock(fd)
            got.set()

        taker = threading.Thread(target=take)
        taker.start()
        ticks = 0
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # this thread runs while the other waits
            ticks += 1
        assert not got.is_set() and ticks > 1000
        release.set()
        assert got.wait(30)
        taker.join()
        _syscalls.unlock(fd)
        os.close(fd)
    finally:
        release.set()
        child.join(30)


def test_the_store_works_the_same_through_os(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def run(root: Path) -> tuple[list[object], list[object]]:
        with FileSystemSaver(root, durability="os") as saver:
            for step in range(12):
                saved = saver.put(Checkpoint(thread_id="t", state={"n": list(range(step))}))
                assert saved.id is not None
                saver.put_writes("t", saved.id, [PendingWrite("task", 0, "c", step)])
        with FileSystemSaver(root) as saver:  # read back in a fresh saver
            states = [c.state for c in saver.list("t")]
            writes = [w.value for c in saver.list("t") for w in
                      saver.get_writes("t", [c.id or ""])[c.id or ""]]
            return states, writes

    with_libc = run(tmp_path / "a")
    monkeypatch.setattr(_syscalls, "_CALLS", None)
    assert run(tmp_path / "b") == with_libc
    assert with_libc[0][0] == {"n": list(range(11))} and with_libc[1][0] == 11
