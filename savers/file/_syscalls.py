"""Short system calls made without releasing the GIL.

Python's ``os`` and ``fcntl`` functions release the GIL around every system call, so that
other threads run while one blocks. For a call that takes a few microseconds (an
uncontended ``flock``, a ``pwritev`` into the page cache) the hand-over costs more than the
call: a saver called from a background thread while another thread computes (LangGraph
saves from one while its graph runs on) pays for each hand-over and back. Measured beside
a busy Python thread: lock, 500-byte write and unlock cost 74-94 us of the writer's CPU
through ``fcntl``/``os`` and 4-6 us through these; alone, 2.8 us and 5.2 us.

So these call libc through ``ctypes.PyDLL``, which keeps the GIL, and only where the call
cannot block for long: a lock is first tried without waiting (a lock another process holds
is waited for with ``fcntl.flock``, releasing the GIL), and writes over
:data:`HOLD_GIL_BYTES` go through ``os``. Where libc cannot be loaded (or lacks a
function) every call goes through ``os``/``fcntl`` as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Sequence
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the file store refuses to start there
    fcntl = None  # type: ignore[assignment]

__all__ = ["HOLD_GIL_BYTES", "identity", "lock", "pwritev", "unlock"]

#: Writes up to this size hold the GIL (a page-cache copy of 256 KiB takes ~20-50 us).
HOLD_GIL_BYTES = 256 << 10
_MAX_IOV = 512


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_char_p), ("iov_len", ctypes.c_size_t)]


def _libc() -> tuple[Any, Any, Any] | None:
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        flock, pwritev = libc.flock, libc.pwritev
    except (OSError, AttributeError):  # pragma: no cover - no libc symbols to call
        return None
    flock.argtypes = [ctypes.c_int, ctypes.c_int]
    flock.restype = ctypes.c_int
    pwritev.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_int,
                        ctypes.c_longlong]
    pwritev.restype = ctypes.c_ssize_t
    statx = getattr(libc, "statx", None)  # Linux (glibc 2.28+, musl 1.2.5+); not macOS
    if statx is not None:
        statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                          ctypes.c_char_p]
        statx.restype = ctypes.c_int
    return flock, pwritev, statx


_CALLS = _libc() if fcntl is not None else None

# struct statx is the same on every Linux architecture: (offset, format) of the fields read
_STATX_SIZE = 256
_STATX_MASK = 0x100 | 0x200  # STATX_INO | STATX_SIZE
_AT_FDCWD = -100
_STATX_FIELDS = struct.Struct("=I28xQQ88xII")  # mask; ino @32, size @40; dev @136, @140


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


def lock(fd: int) -> None:
    """Take an exclusive ``flock`` on ``fd``, waiting (GIL released) only if it is held."""
    if _CALLS is not None:
        while _CALLS[0](fd, fcntl.LOCK_EX | fcntl.LOCK_NB) != 0:
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code not in (errno.EWOULDBLOCK, errno.EAGAIN):
                _raise("flock")
            break
        else:
            return
    fcntl.flock(fd, fcntl.LOCK_EX)


def unlock(fd: int) -> None:
    """Release the ``flock`` on ``fd`` (never waits)."""
    if _CALLS is None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    while _CALLS[0](fd, fcntl.LOCK_UN) != 0:
        if ctypes.get_errno() != errno.EINTR:
            _raise("flock")


def pwritev(fd: int, pieces: Sequence[bytes | memoryview], offset: int) -> int | None:
    """Write ``pieces`` at ``offset`` holding the GIL; returns the bytes written (possibly
    fewer than all, as ``pwritev``), or None when this call is not for them (too big, not
    all ``bytes``, or no libc) and the caller should use ``os``."""
    if _CALLS is None or not 0 < len(pieces) <= _MAX_IOV:
        return None
    total = 0
    for piece in pieces:
        if type(piece) is not bytes:
            return None
        total += len(piece)
    if total > HOLD_GIL_BYTES:
        return None
    vector = (_IOVec * len(pieces))()
    for slot, piece in zip(vector, pieces, strict=True):
        slot.iov_base = piece  # (a pointer into the bytes object, kept alive by vector)
        slot.iov_len = len(piece)
    while True:
        written: int = _CALLS[1](fd, vector, len(pieces), offset)
        if written >= 0:
            return written
        if ctypes.get_errno() != errno.EINTR:
            _raise("pwritev")


def identity(path: str) -> tuple[tuple[int, int], int]:
    """((device, inode), size) of the file at ``path``, as ``os.stat`` gives them
    (``FileNotFoundError`` when there is none): one path lookup, holding the GIL where
    ``statx`` can be called."""
    statx = _CALLS[2] if _CALLS is not None else None
    if statx is not None:
        buffer = ctypes.create_string_buffer(_STATX_SIZE)
        name = os.fsencode(path)
        while statx(_AT_FDCWD, name, 0, _STATX_MASK, buffer) != 0:
            if ctypes.get_errno() != errno.EINTR:
                _raise(f"statx {path!r}")
        mask, inode, size, major, minor = _STATX_FIELDS.unpack_from(buffer.raw)
        if mask & _STATX_MASK == _STATX_MASK:
            return (os.makedev(major, minor), inode), size
    st = os.stat(path)
    return (st.st_dev, st.st_ino), st.st_size
