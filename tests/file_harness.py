"""Test harness of the file store: savers over a directory and tampering with its files.

Imported as a plain module (``tests/`` is on ``sys.path`` through ``tests/conftest.py``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from savegame.savers.file import FileSystemSaver
from savegame.savers.file._index import Entry


def entry(saver: FileSystemSaver, thread_id: str, namespace: str, checkpoint_id: str) -> Entry:
    """Where a checkpoint's frame is in its thread file (through the saver's index)."""
    tf = saver._file(thread_id)
    with tf.mutex:
        index = saver._reading(tf)
        assert index is not None, f"no file for thread {thread_id!r}"
        return index.spaces[namespace].by_id[checkpoint_id]


def flip(path: str, offset: int, mask: int = 0x40) -> None:
    """Flip bits of one byte of a file in place (what a bad disk sector does)."""
    fd = os.open(path, os.O_RDWR)
    try:
        (byte,) = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte ^ mask]), offset)
    finally:
        os.close(fd)


class FileTamper:
    """``corrupt`` flips a byte of a stored record in the file itself; ``remove`` and
    ``alter`` go through the store's own (sync) primitives, as a rewrite of the file
    would leave it."""

    def __init__(self, saver: FileSystemSaver):
        self.saver = saver

    def corrupt(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        found = entry(self.saver, thread_id, namespace, checkpoint_id)
        flip(self.saver.thread_path(thread_id), found.payload_at + found.payload_len // 2)

    def remove(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        FileSystemSaver._delete_checkpoints(self.saver, thread_id, namespace, [checkpoint_id])

    def alter(self, thread_id: str, namespace: str, checkpoint_id: str, **fields: Any) -> None:
        stored = FileSystemSaver._read(self.saver, thread_id, namespace, checkpoint_id)
        assert stored is not None
        FileSystemSaver._replace(self.saver, dataclasses.replace(stored, **fields))


def store_files(root: str) -> list[str]:
    """Every file under the store's directory."""
    return [os.path.join(d, name) for d, _, names in os.walk(root) for name in names]
