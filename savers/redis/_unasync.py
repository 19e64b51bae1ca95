"""Generate ``_sync.py`` (RedisSaver) from ``_async.py`` (AsyncRedisSaver).

Run ``python -m savegame.savers.redis._unasync`` after editing ``_async.py``; ``--check``
exits 1 when ``_sync.py`` is out of date (tests/redis runs it). A few regex substitutions
in the style of httpcore's ``scripts/unasync.py``: every one must be used, so a rename in
the source cannot silently leave a stale name in the copy.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_async.py"
TARGET = HERE / "_sync.py"

HEADER = (
    "# GENERATED from _async.py by `python -m savegame.savers.redis._unasync`: do not edit.\n"
)

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
    (r"^_IS_SYNC = False$", "_IS_SYNC = True"),
)


def generate(source: str) -> str:
    out = source
    for pattern, replacement in SUBSTITUTIONS:
        out, count = re.subn(pattern, replacement, out, flags=re.MULTILINE)
        if count == 0:
            raise ValueError(f"unused substitution {pattern!r}: update _unasync.py")
    return HEADER + out


def main(argv: list[str]) -> int:
    expected = generate(SOURCE.read_text(encoding="utf-8"))
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != expected:
            print(f"{TARGET} is out of date: run python -m savegame.savers.redis._unasync")
            return 1
        return 0
    TARGET.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
