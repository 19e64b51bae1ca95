"""The file store: checkpoints in a directory, one append-only file per thread.

``FileSystemSaver`` (sync, async methods in a worker thread) and ``AsyncFileSystemSaver``
(async-only) read and write the same files. Layout and format: ``_format.py`` and the
README's "How it stores".
"""

from ._format import FORMAT_VERSION
from ._store import AsyncFileSystemSaver, FileFormatError, FileStoreError, FileSystemSaver

__all__ = [
    "FORMAT_VERSION",
    "AsyncFileSystemSaver",
    "FileFormatError",
    "FileStoreError",
    "FileSystemSaver",
]
