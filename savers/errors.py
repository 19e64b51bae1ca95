"""Every error savegame raises, under one base class."""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "CorruptCheckpointError",
    "MissingDependencyError",
    "ParentNotFoundError",
    "SavegameError",
    "SerializationError",
]


class SavegameError(Exception):
    """Base class of every savegame error."""


class SerializationError(SavegameError, TypeError):
    """A value cannot be turned into bytes, or stored bytes name a type we refuse to load.

    ``path`` is the key path of the offending value (``state['messages'][3].tool``) and
    ``type_name`` its type, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, type_name: str | None = None):
        super().__init__(message)
        self.path = path
        self.type_name = type_name


class ConflictError(SavegameError):
    """A checkpoint id was put again with different content."""


class ParentNotFoundError(SavegameError, LookupError):
    """A put named a parent checkpoint that does not exist (never stored, or deleted)."""


class CorruptCheckpointError(SavegameError):
    """A stored record cannot be decoded exactly; never returned as empty or partial state."""

    def __init__(
        self,
        message: str,
        *,
        thread_id: str | None = None,
        namespace: str | None = None,
        checkpoint_id: str | None = None,
    ):
        where = f"thread {thread_id!r}, namespace {namespace!r}, checkpoint {checkpoint_id!r}"
        super().__init__(f"{message} ({where})" if thread_id is not None else message)
        self.thread_id = thread_id
        self.namespace = namespace
        self.checkpoint_id = checkpoint_id


class MissingDependencyError(SavegameError, ImportError):
    """An optional extra is not installed; the message gives the pip command."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'savegame[{extra}]'"
        )
        self.package = package
        self.extra = extra
