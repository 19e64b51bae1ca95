"""Helpers the benchmark scripts share: MongoDB command counting, an nx-27017 server on a
free port, the BSON size of stored documents and the facts of the machine measured on.

Not a benchmark: the scripts import it as ``common`` (``python benchmarks/<name>.py`` puts
this folder on ``sys.path``). PyMongo is imported only where needed, so the scripts that
run without the ``mongodb`` extra (``chat.py``, ``llamaindex_loop.py --no-mongo``) still do.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    from pymongo import monitoring

    _CommandListener: type = monitoring.CommandListener
except ImportError:  # no pymongo: Commands cannot be used, the rest still can
    _CommandListener = object

#: Commands the driver sends on its own (handshake, monitoring) or once per collection
#: (index set-up): not counted.
HANDSHAKE = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo",
                       "buildinfo", "listIndexes", "createIndexes"})


class Commands(_CommandListener):  # type: ignore[misc]
    """A PyMongo ``CommandListener`` recording the names of the commands started, except
    the ``HANDSHAKE`` ones."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: Any) -> None:
        if event.command_name not in HANDSHAKE:
            self.names.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass

    def take(self) -> list[str]:
        """The names recorded since the last ``take``, and forget them."""
        out, self.names = self.names, []
        return out


def free_port() -> int:
    """A TCP port free on the loopback interface (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def nx_server(timeout: float = 10.0) -> Iterator[str | None]:
    """Start nx-27017 (in memory) on a free loopback port, with its pid and log files in a
    temporary folder, wait until it answers ``ping`` and yield its URI; yield None when the
    ``nx-27017`` executable is not installed next to this Python. Stopped at exit."""
    exe = Path(sys.executable).with_name("nx-27017")
    if not exe.exists():
        yield None
        return
    import pymongo

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [str(exe), "--db", "memory", "--host", "127.0.0.1", "-p", str(port),
             "--pid-file", f"{tmp}/nx.pid", "--log-file", f"{tmp}/nx.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
            client: Any = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
            try:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        client.admin.command("ping")
                        break
                    except pymongo.errors.PyMongoError:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise
                        time.sleep(0.1)
            finally:
                client.close()
            yield uri
        finally:
            proc.terminate()
            proc.wait(10)


def bson_bytes(database: Any, names: Iterable[str] | None = None) -> tuple[int, int]:
    """(BSON bytes, documents) of every document of the named collections of ``database``
    (all of its collections when ``names`` is None); indexes aside."""
    import bson

    total = count = 0
    for name in database.list_collection_names() if names is None else names:
        for doc in database[name].find({}):
            total += len(bson.encode(doc))
            count += 1
    return total, count


def machine(**versions: str) -> dict[str, Any]:
    """Date, Python, platform, processor and CPU count, then ``versions`` (package name to
    version) in the order given."""
    return {
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        **versions,
    }


def mongomock_client() -> Any:
    """A mongomock client whose bulk updates take pymongo 4.20's ``sort=None`` (mongomock
    4.3 refuses the argument; the savers' bulk rewrites and MongoDBSaver's upserts pass
    it): the emulator's gap, shimmed here, never in the product."""
    import mongomock
    from mongomock.collection import BulkOperationBuilder

    original = BulkOperationBuilder.add_update
    if not getattr(original, "_sort_shim", False):
        def add_update(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
            if sort is not None:
                raise NotImplementedError("mongomock bulk updates cannot sort")
            return original(self, *args, **kwargs)

        add_update._sort_shim = True  # type: ignore[attr-defined]
        BulkOperationBuilder.add_update = add_update  # type: ignore[method-assign]
    return mongomock.MongoClient()
