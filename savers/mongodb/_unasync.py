"""Generate ``_sync.py`` (MongoSaver) from ``_async.py`` (AsyncMongoSaver).

Run ``python -m savegame.savers.mongodb._unasync`` after editing ``_async.py``;
``--check`` exits 1 when ``_sync.py`` is out of date (tests/mongodb runs it). The
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


def main(argv: list[str]) -> int:
    return _main(argv, SOURCE, TARGET, SUBSTITUTIONS, "savegame.savers.mongodb._unasync")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
