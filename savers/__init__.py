"""savegame.savers: checkpoint savers with delta-encoded, zstd-compressed storage.

The file, MongoDB and Redis savers are imported lazily, so ``import savegame.savers``
stays light and never needs pymongo or redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BaseSaver
from .checkpoint import Checkpoint, Release, new_checkpoint_id
from .codec import KeyframePolicy
from .errors import (
    ConflictError,
    CorruptCheckpointError,
    MissingDependencyError,
    ParentNotFoundError,
    SavegameError,
    SerializationError,
)
from .memory import MemorySaver, VersionedMemorySaver
from .registry import open_async_saver, open_saver, register_saver
from .serde import Serializer, register_type

if TYPE_CHECKING:
    from .file import AsyncFileSystemSaver as AsyncFileSystemSaver
    from .file import FileSystemSaver as FileSystemSaver
    from .mongodb import AsyncMongoSaver as AsyncMongoSaver
    from .mongodb import MongoSaver as MongoSaver
    from .redis import AsyncRedisSaver as AsyncRedisSaver
    from .redis import RedisSaver as RedisSaver

# MongoSaver, AsyncMongoSaver, RedisSaver and AsyncRedisSaver import lazily (see
# __getattr__), so a star import of this package never needs pymongo or redis-py; import
# them by name.
__all__ = [
    "AsyncFileSystemSaver",
    "BaseSaver",
    "Checkpoint",
    "ConflictError",
    "CorruptCheckpointError",
    "FileSystemSaver",
    "KeyframePolicy",
    "MemorySaver",
    "MissingDependencyError",
    "ParentNotFoundError",
    "Release",
    "SavegameError",
    "SerializationError",
    "Serializer",
    "VersionedMemorySaver",
    "new_checkpoint_id",
    "open_async_saver",
    "open_saver",
    "register_saver",
    "register_type",
]


def __getattr__(name: str) -> Any:
    if name in ("FileSystemSaver", "AsyncFileSystemSaver"):
        from . import file

        return getattr(file, name)
    if name in ("MongoSaver", "AsyncMongoSaver"):
        from . import mongodb

        return getattr(mongodb, name)
    if name in ("RedisSaver", "AsyncRedisSaver"):
        from . import redis

        return getattr(redis, name)
    raise AttributeError(f"module 'savegame.savers' has no attribute {name!r}")
