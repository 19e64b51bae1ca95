"""MongoDB savers: ``AsyncMongoSaver`` (source of truth) and ``MongoSaver`` (generated).

Both read and write the same collections and document layout (see ``_shared.py``).
Importing this package needs pymongo: ``pip install 'savegame[mongodb]'``.
"""

from __future__ import annotations

from .._deps import require

require("pymongo", "mongodb")

from ._async import AsyncMongoSaver  # noqa: E402
from ._shared import UnsupportedLayoutError  # noqa: E402
from ._sync import MongoSaver  # noqa: E402

__all__ = ["AsyncMongoSaver", "MongoSaver", "UnsupportedLayoutError"]
