"""Generate a sync saver module from its async source (``mongodb/``, ``redis/``).

A few regex substitutions in the style of httpcore's ``scripts/unasync.py``; every one must
be used, so a rename in the source cannot silently leave a stale name in the copy. Each
package's ``_unasync.py`` lists its substitutions and calls :func:`main`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


def generate(source: str, substitutions: Sequence[tuple[str, str]], header: str) -> str:
    out = source
    for pattern, replacement in substitutions:
        out, count = re.subn(pattern, replacement, out, flags=re.MULTILINE)
        if count == 0:
            raise ValueError(f"unused substitution {pattern!r}: update _unasync.py")
    return header + out


def main(argv: Sequence[str], source: Path, target: Path,
         substitutions: Sequence[tuple[str, str]], module: str) -> int:
    """Write ``target`` from ``source``; with ``--check``, exit 1 when it is out of date."""
    header = f"# GENERATED from {source.name} by `python -m {module}`: do not edit.\n"
    expected = generate(source.read_text(encoding="utf-8"), substitutions, header)
    if "--check" in argv:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != expected:
            print(f"{target} is out of date: run python -m {module}")
            return 1
        return 0
    target.write_text(expected, encoding="utf-8")
    return 0
