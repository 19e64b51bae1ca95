"""Redis savers: ``AsyncRedisSaver`` (source of truth) and ``RedisSaver`` (generated).

Both read and write the same keys and values (see ``_shared.py``), on a single Redis,
Redis Cluster or Valkey, with core commands and Lua only (no modules, no ``KEYS``,
``CONFIG`` or ``MODULE LIST``). Importing this package needs redis-py:
``pip install 'savegame[redis]'``.
"""

from __future__ import annotations

from .._deps import require

require("redis", "redis")

from ._async import AsyncRedisSaver  # noqa: E402
from ._shared import RedisStoreError, UnsupportedLayoutError  # noqa: E402
from ._sync import RedisSaver  # noqa: E402

__all__ = ["AsyncRedisSaver", "RedisSaver", "RedisStoreError", "UnsupportedLayoutError"]
