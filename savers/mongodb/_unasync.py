"""Generate ``_sync.py`` (MongoSaver) from ``_async.py`` (AsyncMongoSaver).

Run ``python -m savegame.savers.mongodb._unasync`` after editing ``_async.py``;
``--check`` exits 1 when ``_sync.py`` is out of date (tests/mongodb runs it). A few regex
substitutions in the style of httpcore's ``scripts/unasync.py``: every one must be used,
so a rename in the source cannot silently leave a stale name in the copy.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_async.py"
TARGET = HERE / "_sync.py"

HEADER = (
    "# GENERATED from _async.py by `python -m savegame.savers.mongodb._unasync`: do not edit.\n"
)

SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (r"PyMongo's async API \(or a Motor client\)", "PyMongo's MongoClient"),
    (r"a ``pymongo.AsyncMongoClient`` \(or a Motor client\)", "a ``pymongo.MongoClient``"),
    (r"\basync def\b", "def"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bAsyncMongoClient\b", "MongoClient"),
    (r"\bAsyncMongoSaver\b", "MongoSaver"),
    (r"\basetup\b", "setup"),
    (r"\bacollect_orphans\b", "collect_orphans"),
    (r"\baprune\b", "prune"),
    (r"\baclose\b", "close"),
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
            print(f"{TARGET} is out of date: run python -m savegame.savers.mongodb._unasync")
            return 1
        return 0
    TARGET.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
