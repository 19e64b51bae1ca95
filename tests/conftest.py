"""Fixtures shared by several test directories (kept small)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true",
                     help="run the long stress tier (about 10x the writers' puts, the "
                          "conformance volume tests in full on every backend)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nx_command() -> list[str] | None:
    exe = Path(sys.executable).with_name("nx-27017")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("nx-27017")
    return [found] if found else None


@pytest.fixture(scope="session")
def nx_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mongodb://`` URI of an nx-27017 server (MongoDB wire protocol on SQLite) started
    for this test session on a free loopback port, with its own pid and log files."""
    command = _nx_command()
    if command is None:
        pytest.skip("nx-27017 is not installed (pip install 'savegame[dev]')")
    pytest.importorskip("pymongo")
    import pymongo

    workdir = tmp_path_factory.mktemp("nx27017")
    port = _free_port()
    log = workdir / "nx.log"
    process = subprocess.Popen(
        [*command, "--db", "memory", "--host", "127.0.0.1", "-p", str(port),
         "--pid-file", str(workdir / "nx.pid"), "--log-file", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=workdir,
    )
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with {process.returncode}: "
                                   f"{log.read_text() if log.exists() else ''}")
            try:
                with pymongo.MongoClient(uri, serverSelectionTimeoutMS=300) as client:
                    client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def real_mongodb_uri() -> str:
    """``SAVEGAME_MONGODB_URI``, or a visible skip when it is not set."""
    uri = os.environ.get("SAVEGAME_MONGODB_URI")
    if not uri:
        pytest.skip("SAVEGAME_MONGODB_URI is not set: the real-MongoDB tier is skipped")
    return uri


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The test's one event loop (also the current one): every async call of a test runs on
    it, since async MongoDB clients must stay on the loop they started on."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()



# Real redis-server deployments (single node, 3-node cluster) and a valkey-server, one of
# each per session.
from redis_harness import redis_cluster, redis_single, valkey_single  # noqa: E402, F401
