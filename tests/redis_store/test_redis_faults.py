"""Faults on real servers, single node and 3-node cluster, each on deployments of its own:
a server killed (SIGKILL) mid-run and restarted, the saver's connection killed with
``CLIENT KILL`` while its script waits to run, ``maxmemory 1mb`` with ``noeviction``, a
read-only replica, and a slot moved to another node (MOVED/ASK) while a writer runs. Each
ends in success or one clear error; nothing stored is lost or duplicated."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis_harness
from redis.backoff import ConstantBackoff
from redis.retry import Retry
from redis_harness import Deployment

from savegame.savers import Checkpoint, RedisSaver
from savegame.savers.redis import RedisStoreError, _shared

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=redis_harness.DEPLOYMENTS)
def own(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of this test's own, with AOF fsynced on every write."""
    deployment = redis_harness.start(request.param, tmp_path, aof=True)
    yield deployment
    deployment.close()


def client_of(where: Deployment, **options: Any) -> Any:
    """A client that gives up quickly (the tests decide what to do on errors)."""
    options.setdefault("retry", Retry(ConstantBackoff(0.05), 3))
    options.setdefault("socket_timeout", 5)
    if where.is_cluster:
        return redis.RedisCluster(host="127.0.0.1", port=where.nodes[0].port, **options)
    return redis.Redis(port=where.nodes[0].port, **options)


def node_of(where: Deployment, saver: RedisSaver, thread_id: str) -> redis_harness.Node:
    """The node holding a thread's keys."""
    if not where.is_cluster:
        return where.nodes[0]
    key = saver.keys(thread_id)[0]
    node = where.client.get_node_from_key(key)
    return next(n for n in where.nodes if n.port == int(node.port))


def assert_one_line(saver: RedisSaver, thread_id: str, expected_ids: set[str]) -> None:
    """Exactly the acknowledged checkpoints (plus, at most, ones whose outcome was unknown),
    once each, in one line of parents, every state exact."""
    items = list(RedisSaver(saver.client, key_prefix=saver.key_prefix).list(thread_id))
    ids = [c.id for c in items]
    assert len(ids) == len(set(ids)), "duplicated checkpoints"
    assert expected_ids <= set(ids), f"lost: {sorted(expected_ids - set(ids))}"
    by_id = {c.id: c for c in items}
    for item in items:
        assert item.state == {"i": int(item.id), "pad": "p" * 200}
        assert item.parent_id is None or item.parent_id in by_id
    roots = [c for c in items if c.parent_id is None]
    assert len(roots) == 1


def put_numbered(saver: RedisSaver, thread_id: str, i: int) -> Checkpoint:
    """Checkpoint ``i`` with a fixed id and parent: a resend is a no-op, never a copy."""
    return saver.put(Checkpoint(thread_id, {"i": i, "pad": "p" * 200}, id=f"{i:06d}",
                                parent_id=f"{i - 1:06d}" if i else None))


def test_server_killed_mid_run_and_restarted(own: Deployment) -> None:
    saver = RedisSaver(client_of(own), key_prefix="faults")
    thread = "killed"
    done: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            try:
                put_numbered(saver, thread, i)
            except (redis.ConnectionError, redis.TimeoutError, RedisStoreError,
                    redis.exceptions.ClusterError) as exc:
                errors.append(exc)  # one clear error; this writer tries the same put again
                time.sleep(0.05)
                continue
            done.append(i)
            i += 1

    worker = threading.Thread(target=writer)
    worker.start()
    while len(done) < 30:
        time.sleep(0.01)
    victim = node_of(own, saver, thread)
    victim.kill()
    time.sleep(0.5)
    victim.start()
    deadline = time.monotonic() + 60
    while len(done) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(60)
    assert len(done) >= 60, f"the writer did not recover: {errors[-3:]}"
    assert_one_line(saver, thread, {f"{i:06d}" for i in done})
    assert all(isinstance(e, (redis.RedisError, RedisStoreError)) for e in errors)


def test_client_kill_while_the_script_waits_to_run(own: Deployment) -> None:
    """The server is held busy (DEBUG SLEEP) while the saver's insert script waits in its
    socket; then its connection is killed. The kill lands before the script (the script
    never runs) or after it (its reply is lost): a Lua script cannot be interrupted by a
    CLIENT KILL, so there is no halfway. The saver resends; the put succeeds once."""
    client = client_of(own, client_name="saver-under-test")
    saver = RedisSaver(client, key_prefix="faults")
    thread = "client-kill"
    put_numbered(saver, thread, 0)
    node = node_of(own, saver, thread)
    outcomes = []
    for i in range(1, 9):
        assert saver.get(thread) is not None  # the saver holds a connection to the node
        with redis.Redis(port=node.port) as control:
            ids = [c["id"] for c in control.client_list() if c.get("name") == "saver-under-test"]
            assert ids
            sleeper = threading.Thread(target=lambda: redis.Redis(port=node.port).execute_command(
                "DEBUG", "SLEEP", "0.3"))
            sleeper.start()
            time.sleep(0.05)
            result: list[Any] = []
            put = threading.Thread(target=lambda i=i, result=result: result.append(
                _attempt(saver, thread, i)))
            put.start()
            time.sleep(0.05 + 0.02 * (i % 3))
            for client_id in ids:
                with contextlib.suppress(redis.RedisError):
                    control.client_kill_filter(_id=client_id)
            sleeper.join(10)
            put.join(30)
        outcomes.append(result[0])
        if isinstance(result[0], BaseException):  # one clear error: the caller resends
            assert isinstance(result[0], redis.RedisError), result[0]
            put_numbered(saver, thread, i)
    assert_one_line(saver, thread, {f"{i:06d}" for i in range(9)})


def _attempt(saver: RedisSaver, thread: str, i: int) -> Any:
    try:
        return put_numbered(saver, thread, i)
    except redis.RedisError as exc:
        return exc


def test_maxmemory_noeviction_refuses_cleanly_and_loses_nothing(own: Deployment) -> None:
    saver = RedisSaver(client_of(own), key_prefix="faults", chunk_bytes=2000)
    thread = "oom"
    node = node_of(own, saver, thread)
    with redis.Redis(port=node.port) as control:
        used = int(control.info("memory")["used_memory"])
        # 1mb, or 1mb above what the node holds (Redis 7 counts its Lua engine, which
        # grows by a few hundred KB when the saver's scripts first run, in used_memory)
        limit = max(1 << 20, used + (1 << 20))
        control.config_set("maxmemory-policy", "noeviction")
        control.config_set("maxmemory", str(limit))
        stored: list[Checkpoint] = []
        parent = None
        with pytest.raises(RedisStoreError) as info:
            for i in range(10_000):
                state = {"i": i, "blob": bytes(range(256)) * 40 if i % 3 == 0 else b"x" * i}
                parent = saver.put(Checkpoint(thread, state,
                                              parent_id=parent.id if parent else None))
                stored.append(parent)
        message = str(info.value)
        # inside a script Redis 6.2 answers "-OOM command not allowed ..." (a ResponseError),
        # Redis 7 an error redis-py maps to OutOfMemoryError, whose text drops "OOM"
        assert "OOM" in message or "OutOfMemoryError" in message, message
        assert "maxmemory" in message, message
        assert repr(thread) in message, message
        assert len(stored) > 3
        # nothing half-written: no piece without a head, every stored checkpoint exact
        keys = _shared.ThreadKeys.of(saver.key_prefix, thread)
        fresh = RedisSaver(client_of(own), key_prefix="faults")
        listed = list(fresh.list(thread))
        assert [c.id for c in listed] == [c.id for c in reversed(stored)]
        referenced = set()
        for member in own.client.zrange(keys.records, 0, -1):
            _, checkpoint_id, value = _shared.split_member(member)
            parsed = _shared.unpack_checkpoint(thread, "", checkpoint_id, value)
            if parsed.pieces:
                referenced |= set(_shared.chunk_fields(*parsed.pieces[:2]))
        pieces = {f.decode() for f in own.client.hkeys(keys.chunks)}
        assert pieces == referenced, "pieces left without a head"
        control.config_set("maxmemory", "0")
    after = saver.put(Checkpoint(thread, {"after": True}))
    assert after.parent_id == stored[-1].id
    assert len(list(fresh.list(thread))) == len(stored) + 1


def test_a_read_only_replica_refuses_writes_clearly_and_serves_reads(tmp_path: Path) -> None:
    master = redis_harness.start_single(tmp_path / "master")
    replica_node = redis_harness.start_node(
        tmp_path / "replica", "--appendonly", "no", "--replicaof", "127.0.0.1",
        str(master.nodes[0].port))
    try:
        writer = RedisSaver(master.client, key_prefix="ro")
        first = writer.put(Checkpoint("t", {"n": 1}))
        replica = RedisSaver(redis.Redis(port=replica_node.port), key_prefix="ro")
        deadline = time.monotonic() + 10
        while replica.get("t") is None:
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
        assert replica.get("t").state == {"n": 1}
        with pytest.raises(RedisStoreError, match=r"ReadOnlyError.*read only replica") as info:
            replica.put(Checkpoint("t", {"n": 2}))
        assert "'t'" in str(info.value)
        assert [c.id for c in writer.list("t")] == [first.id]
    finally:
        replica_node.stop()
        master.close()


def test_a_slot_moved_to_another_node_while_a_writer_runs(tmp_path: Path) -> None:
    """Resharding: the thread's slot migrates to another node (MIGRATE, then SETSLOT NODE)
    while puts continue; redis-py follows ASK/MOVED (and retries TRYAGAIN)."""
    cluster = redis_harness.start_cluster(tmp_path)
    try:
        saver = RedisSaver(client_of(cluster), key_prefix="faults")
        thread = "moving"
        done: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                try:
                    put_numbered(saver, thread, i)
                except (redis.RedisError, RedisStoreError) as exc:
                    errors.append(exc)
                    time.sleep(0.02)
                    continue
                done.append(i)
                i += 1

        worker = threading.Thread(target=writer)
        worker.start()
        while len(done) < 20:
            time.sleep(0.01)
        keys = saver.keys(thread)
        slot = cluster.client.keyslot(keys[0])
        source = node_of(cluster, saver, thread)
        target = next(n for n in cluster.nodes if n is not source)
        clients = {n.port: redis.Redis(port=n.port) for n in cluster.nodes}
        node_id = {port: c.execute_command("CLUSTER", "MYID").decode()
                   for port, c in clients.items()}
        clients[target.port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING",
                                             node_id[source.port])
        clients[source.port].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING",
                                             node_id[target.port])
        while True:  # move the slot's keys a few at a time; writes meet ASK / TRYAGAIN
            time.sleep(0.05)
            present = clients[source.port].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2)
            if not present:
                break
            clients[source.port].execute_command("MIGRATE", "127.0.0.1", target.port, "", 0,
                                                 5000, "KEYS", *present)
        for c in clients.values():
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id[target.port])
        count = len(done)
        deadline = time.monotonic() + 30
        while len(done) < count + 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        worker.join(30)
        assert len(done) >= count + 20, f"no progress after the move: {errors[-3:]}"
        def in_slot(node: redis_harness.Node) -> int:
            return int(clients[node.port].execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))

        assert in_slot(source) == 0 and in_slot(target) >= 2  # meta and checkpoints
        assert_one_line(saver, thread, {f"{i:06d}" for i in done})
        for c in clients.values():
            c.close()
    finally:
        cluster.close()
