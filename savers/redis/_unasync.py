"""Generate ``_sync.py`` (RedisSaver) from ``_async.py`` (AsyncRedisSaver).

Run ``python -m savegame.savers.redis._unasync`` after editing ``_async.py``; ``--check``
exits 1 when ``_sync.py`` is out of date (tests/redis_store runs it). The
substitutions below are applied by ``savers/_unasync.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .._unasync import main as _main

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_async.py"
TARGET = HERE / "_sync.py"

SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (r"redis-py's(\s+)asyncio client", r"redis-py's\1client"),
    (r"``redis\.asyncio\.Redis`` or ``redis\.asyncio\.RedisCluster``",
     "``redis.Redis`` or ``redis.RedisCluster``"),
    (r"^from redis\.asyncio import ", "from redis import "),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\bawait ", ""),
    (r"\bAsyncRedisSaver\b", "RedisSaver"),
    (r"\baclose\b", "close"),
    (r"\bamemory_usage\b", "memory_usage"),
    (r"\bacollect_orphans\b", "collect_orphans"),
    (r"\balist_threads\b", "list_threads"),
    (r"^_IS_SYNC = False$", "_IS_SYNC = True"),
)


def main(argv: list[str]) -> int:
    return _main(argv, SOURCE, TARGET, SUBSTITUTIONS, "savegame.savers.redis._unasync")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
