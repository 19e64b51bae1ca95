"""The ``savegame`` command: inspect, verify, export, copy and migrate checkpoint stores.

Installed with ``pip install 'savegame[cli]'`` (click and rich); ``savegame --help`` lists
the commands. Importing this package needs neither: :func:`main` checks for them first and
names the extra to install.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .._deps import require
from ..errors import MissingDependencyError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``savegame`` console script."""
    try:
        require("click", "cli")
        require("rich", "cli")
    except MissingDependencyError as exc:
        print(f"savegame: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    from ._app import run

    run(argv)
