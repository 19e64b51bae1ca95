"""Redis-specific behaviour on a real redis-server (single node, 3-node cluster) and on a
valkey-server: round trips counted with MONITOR, the key layout (hash tags, hostile thread
ids), TTL on every key, deletes that leave no key, memory given back, big states in
pieces, keep_last, release resends, layout versions. The conformance suite covers the
shared contract."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis_harness
from redis_harness import Deployment

from savegame.savers import AsyncRedisSaver, Checkpoint, KeyframePolicy, RedisSaver
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.redis import RedisStoreError, UnsupportedLayoutError, _shared, _unasync

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=redis_harness.ALL_DEPLOYMENTS)
def where(request: pytest.FixtureRequest) -> Deployment:
    return redis_harness.deployment(request, request.param)


@pytest.fixture
def saver(where: Deployment) -> Iterator[RedisSaver]:
    yield from redis_harness.sync_saver(where)


#: ``with opened(where, **options) as saver``: a RedisSaver on a fresh key prefix, dropped after
opened = contextlib.contextmanager(redis_harness.sync_saver)
aopened = contextlib.contextmanager(redis_harness.async_saver)


def chat_state(turns: int) -> dict[str, Any]:
    return {"messages": [f"message {i}: " + "lorem ipsum dolor " * 20 for i in range(turns)],
            "turn": turns}


def thread_keys(where: Deployment, saver: Any) -> list[bytes]:
    return where.keys(f"{saver.key_prefix}:*")


# -- generated code ----------------------------------------------------------------------
def test_sync_saver_is_generated_from_the_async_one() -> None:
    assert _unasync.main(["--check"]) == 0, "run python -m savegame.savers.redis._unasync"


# -- round trips -------------------------------------------------------------------------
class Monitor:
    """MONITOR on every node of a deployment: the commands other clients send between
    ``start`` and ``stop`` (markers are ECHOed through each node, so none is missed).
    Commands a Lua script runs are listed by MONITOR too; they are not round trips and
    are left out."""

    def __init__(self, where: Deployment):
        self.where = where
        self.commands: list[str] = []
        self._threads: list[threading.Thread] = []
        self._ready: list[threading.Event] = []
        self._lock = threading.Lock()
        # marker connections made (HELLO sent) before any monitoring starts
        self._markers = [redis.Redis(port=node.port) for node in where.nodes]
        for client in self._markers:
            client.ping()

    def _watch(self, port: int, ready: threading.Event, marker: str) -> None:
        client = redis.Redis(port=port)
        with client.monitor() as monitor:
            started = False
            for event in monitor.listen():
                command = event["command"]
                if command == f"ECHO {marker}-start":
                    started = True
                    ready.set()
                elif command == f"ECHO {marker}-stop":
                    break
                elif started and event.get("client_type") != "lua" \
                        and not command.startswith("ECHO"):
                    with self._lock:
                        self.commands.append(command.split(" ", 1)[0].upper())
        client.close()

    def start(self) -> None:
        self.marker = f"m{time.monotonic_ns()}"
        for node in self.where.nodes:
            ready = threading.Event()
            thread = threading.Thread(target=self._watch, args=(node.port, ready, self.marker),
                                      daemon=True)
            thread.start()
            deadline = time.monotonic() + 5
            client = self._markers[self.where.nodes.index(node)]
            while not ready.wait(0.05):
                client.echo(f"{self.marker}-start")
                assert time.monotonic() < deadline, "MONITOR did not start"
            self._threads.append(thread)

    def stop(self) -> list[str]:
        for client in self._markers:
            client.echo(f"{self.marker}-stop")
        for thread in self._threads:
            thread.join(5)
        self._threads = []
        return list(self.commands)

    def count(self, action: Any) -> list[str]:
        """The commands ``action()`` sends."""
        self.commands = []
        self.start()
        try:
            action()
        finally:
            commands = self.stop()
        return commands


def test_put_latest_get_and_list_page_are_one_round_trip_each(where: Deployment) -> None:
    """Counted with MONITOR on every node: one EVALSHA per put that writes a delta (after
    the thread's first; a put writing a keyframe also rewrites the previous one as a
    reverse record), per cold or warm latest get, per list page and get by id, and one for
    pending writes."""
    with opened(where) as saver:
        monitor = Monitor(where)
        first = saver.put(Checkpoint("chat", chat_state(1)))  # registers the thread
        parent = first
        puts = []
        for turn in range(2, 40):
            put = lambda turn=turn, parent=parent: puts.append(saver.put(  # noqa: E731
                Checkpoint("chat", chat_state(turn), parent_id=parent.id)))
            if turn % 4:
                put()
            else:  # counted on every fourth put (MONITOR on three nodes takes a while)
                assert monitor.count(put) == ["EVALSHA"]
            parent = puts[-1]
        # parent_id=None reads the latest first: another writer may have appended
        assert monitor.count(lambda: saver.put(Checkpoint("chat", chat_state(40)))) == [
            "EVALSHA", "EVALSHA"]
        cold = RedisSaver(where.client, key_prefix=saver.key_prefix)
        got: list[Any] = []
        assert monitor.count(lambda: got.append(cold.get("chat"))) == ["EVALSHA"]
        assert got[0].state == chat_state(40)
        assert monitor.count(lambda: got.append(cold.get("chat"))) == ["EVALSHA"]  # warm
        for limit in (1, 5, 10):
            fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
            page: list[Any] = []
            commands = monitor.count(lambda f=fresh, n=limit, page=page: page.extend(
                f.list("chat", limit=n)))
            assert commands == ["EVALSHA"], (limit, commands)
            assert [c.state["turn"] for c in page] == list(range(40, 40 - limit, -1))
        fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
        page = []
        older = puts[20].id
        assert monitor.count(lambda: page.extend(fresh.list("chat", before=older, limit=5))) \
            == ["EVALSHA"]
        assert [c.id for c in page] == [c.id for c in reversed(puts[15:20])]
        fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
        by_id: list[Any] = []
        assert monitor.count(lambda: by_id.append(fresh.get("chat", puts[10].id))) == [
            "EVALSHA"]
        assert by_id[0].state == chat_state(12)
        saver.put_writes("chat", parent.id, [PendingWrite("task", 0, "messages", "hi", "")])
        fresh.get_writes("chat", [puts[0].id])  # the server learns the script (EVAL once)
        writes: list[Any] = []
        assert monitor.count(lambda: writes.append(fresh.get_writes("chat", [parent.id]))) \
            == ["EVALSHA"]
        assert writes[0][parent.id][0].value == "hi"


def test_async_saver_round_trips(where: Deployment, loop: asyncio.AbstractEventLoop) -> None:
    with aopened(where, loop) as saver:
        monitor = Monitor(where)
        run = loop.run_until_complete
        parent = run(saver.aput(Checkpoint("chat", chat_state(1))))
        for turn in range(2, 10):
            box: list[Any] = []
            commands = monitor.count(lambda t=turn, p=parent, b=box: b.append(run(saver.aput(
                Checkpoint("chat", chat_state(t), parent_id=p.id)))))
            parent = box[0]
            # a delta: one script; a new keyframe also rewrites the one before it as a
            # reverse record (one more script)
            master = run(saver._read("chat", "", parent.id)).depth == 1
            assert commands == ["EVALSHA"] * (2 if master else 1), (turn, commands)
        fresh = AsyncRedisSaver(saver.client, key_prefix=saver.key_prefix)
        got: list[Any] = []
        assert monitor.count(lambda: got.append(run(fresh.aget("chat")))) == ["EVALSHA"]
        assert got[0].state == chat_state(9)

        async def page() -> list[Checkpoint]:
            other = AsyncRedisSaver(saver.client, key_prefix=saver.key_prefix)
            return [c async for c in other.alist("chat", limit=4)]

        assert monitor.count(lambda: got.append(run(page()))) == ["EVALSHA"]
        assert [c.state["turn"] for c in got[-1]] == [9, 8, 7, 6]


# -- layout: hash tags and hostile thread ids ---------------------------------------------
HOSTILE = ["a{b}c", "}{", "{", "}", "*", "user 42", "日本語スレッド", "tab\tnew\nline",
           "x" * 10_000, "#" + "0" * 32, "plain-id_1.2:3/4@5=6+7", "a{}b", "{x}", ""]


def test_hostile_thread_ids_get_one_tag_each_and_never_collide(
    where: Deployment, saver: RedisSaver
) -> None:
    ids = [t for t in HOSTILE if t] + ["x" * 10_000 + "y", "A{b}c"]
    for index, thread in enumerate(ids):
        saver.put(Checkpoint(thread, {"i": index}, metadata={"i": index}))
    for index, thread in enumerate(ids):
        latest = saver.get(thread)
        assert latest is not None and latest.state == {"i": index} and latest.thread_id == thread
        assert [c.state for c in saver.list(thread)] == [{"i": index}]
    assert saver.list_threads() == sorted(ids)
    tags = set()
    for thread in ids:
        keys = saver.keys(thread)
        tag = _shared.thread_tag(thread)
        assert "{" not in tag and "}" not in tag and len(tag) <= 64
        tags.add(tag)
        for key in keys:  # the first {...} of every key is the thread's tag
            start = key.index("{")
            assert key[start + 1:key.index("}", start)] == tag
        if where.is_cluster:
            slots = {where.client.keyslot(key) for key in keys}
            assert len(slots) == 1
    assert len(tags) == len(ids)
    with pytest.raises(ValueError, match="NUL"):
        saver.put(Checkpoint("a\x00b", {}))
    for thread in ids:
        saver.delete_thread(thread)
    assert thread_keys(where, saver) == []


def test_a_tag_owned_by_another_thread_id_is_refused(saver: RedisSaver, monkeypatch: Any
                                                     ) -> None:
    saver.put(Checkpoint("first", {"n": 1}))
    monkeypatch.setattr(_shared, "thread_tag", lambda thread_id: "first")
    with pytest.raises(RedisStoreError, match="another thread id"):
        saver.put(Checkpoint("second", {"n": 2}))
    monkeypatch.undo()
    assert saver.get("second") is None and saver.get("first").state == {"n": 1}


def test_key_prefix_must_not_hold_braces(where: Deployment) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        RedisSaver(where.client, key_prefix="app{1}")


def test_a_client_decoding_responses_is_refused(redis_single: Deployment) -> None:
    with redis.Redis(port=redis_single.nodes[0].port, decode_responses=True) as client, \
            pytest.raises(ValueError, match="decode_responses"):
        RedisSaver(client)


# -- retention ---------------------------------------------------------------------------
def test_ttl_is_on_every_key_of_the_thread_and_refreshed_by_each_write(
    where: Deployment,
) -> None:
    with opened(where, ttl=30, chunk_bytes=1 << 10) as saver:
        first = saver.put(Checkpoint("t", {"blob": os.urandom(5000)}))  # chunked
        saver.put_writes("t", first.id, [PendingWrite("task", 0, "c", 1, "")])
        saver.put(Checkpoint("t", {"n": 2}, namespace="sub"))
        saver.put_writes("t", "not-yet-stored", [PendingWrite("task", 0, "c", 1, "")])
        keys = [key for key in thread_keys(where, saver) if b"{" in key]
        assert {key.rsplit(b":", 1)[1] for key in keys} == {b"m", b"c", b"w", b"x"}
        ttls = [where.client.pttl(key) for key in keys]
        assert all(25_000 < ttl <= 30_000 for ttl in ttls), ttls
        for key in keys:
            where.client.pexpire(key, 5_000)
        saver.put(Checkpoint("t", {"n": 3}))  # one write refreshes all of them
        assert all(where.client.pttl(key) > 25_000 for key in keys)
        saver.release("t")
        keys = [key for key in thread_keys(where, saver) if b"{" in key]
        assert keys and all(where.client.pttl(key) > 25_000 for key in keys)


def test_a_thread_expires_whole_and_leaves_the_registry(where: Deployment) -> None:
    with opened(where, ttl=0.4) as saver:
        for i in range(5):
            saver.put(Checkpoint("short", {"i": i, "pad": "x" * 300}))
        saver.put(Checkpoint("short", {"i": 9}, namespace="ns"))
        assert saver.list_threads() == ["short"]
        time.sleep(0.9)
        assert [key for key in thread_keys(where, saver) if b"{" in key] == []
        assert saver.get("short") is None and saver.list_threads() == []
        assert thread_keys(where, saver) == []  # the registry entry went lazily


def test_expired_threads_leave_the_registry_without_list_threads(where: Deployment) -> None:
    with opened(where, ttl=0.3) as saver:
        for i in range(20):
            saver.put(Checkpoint(f"old-{i:02d}", {"i": i}))
        time.sleep(0.7)
        other = RedisSaver(where.client, key_prefix=saver.key_prefix, ttl=60)
        for i in range(60):  # registrations sweep the registry a few entries at a time
            other.put(Checkpoint(f"new-{i:02d}", {"i": i}))
        registry = [m.decode() for m in where.client.zrange(f"{saver.key_prefix}:threads",
                                                           0, -1)]
        assert registry == [f"new-{i:02d}" for i in range(60)]


def test_delete_thread_leaves_no_key_and_memory_is_given_back(where: Deployment) -> None:
    node = where.node_clients()
    with opened(where, chunk_bytes=1 << 20) as saver:
        def used() -> int:
            return sum(int(client.info("memory")["used_memory"]) for client in node)

        before = used()
        for thread in ("big-1", "big-2"):
            parent = None
            for step in range(6):
                parent = saver.put(Checkpoint(thread, {"blob": os.urandom(1_500_000),
                                                        "step": step},
                                              parent_id=parent.id if parent else None))
                saver.put_writes(thread, parent.id, [PendingWrite("t", 0, "c", step, "")])
        saver.release("big-2")
        saver.put(Checkpoint("big-2", {"after": True}))
        grown = used() - before
        assert grown > 15_000_000, grown
        assert saver.memory_usage("big-1") > 8_000_000
        saver.delete_thread("big-1")
        saver.delete_thread("big-2")
        assert thread_keys(where, saver) == []
        deadline = time.monotonic() + 5
        while used() - before > grown * 0.05 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert used() - before <= grown * 0.05, (used() - before, grown)


def test_keep_last_drops_whole_old_chains(where: Deployment) -> None:
    policy = KeyframePolicy(max_chain=4)
    with opened(where, keep_last=3, policy=policy) as saver:
        puts = [saver.put(Checkpoint("k", chat_state(i))) for i in range(40)]
        listed = list(saver.list("k"))
        assert 3 <= len(listed) < 40
        assert [c.id for c in listed] == [c.id for c in reversed(puts[-len(listed):])]
        fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
        for item in fresh.list("k"):
            assert item.state == chat_state(item.step)
        assert fresh.get("k").state == chat_state(39)


def test_keyframe_puts_read_older_keyframes_by_id_not_by_scanning(where: Deployment) -> None:
    """A sliding-window state makes most puts keyframes, and each rewrites older ones; the
    chains script (a scan of the namespace, inside Redis) made such puts O(thread length):
    36 ms a put at 4,000 checkpoints. They read the keyframes they rewrite by id (when
    the saver no longer holds their states: it keeps those it rewrote, dropped here)."""
    with opened(where) as saver:
        scripts: list[str] = []
        run = saver._run_script

        def counted(name: str, *args: Any, **kwargs: Any) -> Any:
            scripts.append(name)
            return run(name, *args, **kwargs)

        saver._run_script = counted  # type: ignore[method-assign]
        for j in range(300):
            if j % 5 == 0:
                saver._listed.clear()
            saver.put(Checkpoint("w", {"recent": [f"m{j - k} " + "x" * 200 for k in range(10)]}))
        assert scripts.count("many") > 20 and "chains" not in scripts
        stored, _ = saver._read_thread("w")
        whole = [c for c in stored if c.base_id is None]
        assert len(whole) == 1  # older keyframes were still rewritten against newer ones
        fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
        for item in fresh.list("w"):
            assert item.state["recent"][0] == f"m{item.step} " + "x" * 200


def test_delete_checkpoints_of_the_head_moves_the_latest(saver: RedisSaver) -> None:
    puts = [saver.put(Checkpoint("h", {"i": i})) for i in range(5)]
    saver.delete_checkpoints("h", [puts[-1].id, puts[-2].id])
    latest = saver.get("h")
    assert latest is not None and latest.id == puts[2].id
    after = saver.put(Checkpoint("h", {"i": 5}))
    assert after.parent_id == puts[2].id and saver.get("h").id == after.id


# -- big states --------------------------------------------------------------------------
@pytest.mark.slow
def test_a_100_mb_state_round_trips_in_pieces(where: Deployment) -> None:
    with opened(where) as saver:
        blob = os.urandom(100 << 20)
        stored = saver.put(Checkpoint("huge", {"blob": blob, "n": 1}))
        keys = _shared.ThreadKeys.of(saver.key_prefix, "huge")
        lengths = [len(m) for m in where.client.zrange(keys.records, 0, -1)]
        pieces = where.client.hkeys(keys.chunks)
        assert max(lengths) < 1 << 10 and len(pieces) >= 25  # the head holds no record
        assert max(where.client.hstrlen(keys.chunks, f) for f in pieces) <= _shared.CHUNK_BYTES
        fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
        got = fresh.get("huge")
        assert got is not None and got.id == stored.id and got.state["blob"] == blob
        del got
        fresh.delete_thread("huge")
        assert thread_keys(where, saver) == []


def test_missing_pieces_are_corruption_never_partial_state(saver: RedisSaver,
                                                           where: Deployment) -> None:
    small = RedisSaver(where.client, key_prefix=saver.key_prefix, chunk_bytes=1000)
    stored = small.put(Checkpoint("p", {"blob": os.urandom(5000)}))
    keys = _shared.ThreadKeys.of(saver.key_prefix, "p")
    where.client.hdel(keys.chunks, where.client.hkeys(keys.chunks)[0])
    from savegame.savers import CorruptCheckpointError

    with pytest.raises(CorruptCheckpointError, match="pieces") as info:
        RedisSaver(where.client, key_prefix=saver.key_prefix).get("p", stored.id)
    assert info.value.thread_id == "p" and info.value.checkpoint_id == stored.id


def test_orphaned_pieces_are_collected_once_old_and_referenced_ones_never(
    saver: RedisSaver, where: Deployment
) -> None:
    small = RedisSaver(where.client, key_prefix=saver.key_prefix, chunk_bytes=1000)
    kept = small.put(Checkpoint("o", {"blob": os.urandom(4000)}))
    small.put(Checkpoint("o", {"blob": os.urandom(4000)}))
    small.release("o")  # released pieces stay referenced
    live = small.put(Checkpoint("o", {"blob": os.urandom(4000)}))
    keys = _shared.ThreadKeys.of(saver.key_prefix, "o")
    # a put whose connection died after its pieces: pieces without a checkpoint
    old = f"{int((time.time() - 7200) * 1000):012x}" + "ab" * 6
    young = _shared.new_token()
    where.client.hset(keys.chunks, mapping={f"{old}:0": b"x", f"{old}:1": b"y",
                                            f"{young}:0": b"z"})
    before = len(where.client.hkeys(keys.chunks))
    assert small.collect_orphans("o") == 2  # the young set may be a put in flight
    assert len(where.client.hkeys(keys.chunks)) == before - 2
    fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
    assert len(fresh.get("o", live.id).state["blob"]) == 4000
    assert len(fresh.get_version("o", 1).checkpoints) == 2
    assert kept.id in {c.id for c in fresh.get_version("o", 1).checkpoints}
    assert small.collect_orphans("o", older_than=0.001) == 1


# -- formats and resends -----------------------------------------------------------------
def test_a_newer_layout_is_refused_with_a_clear_error(saver: RedisSaver,
                                                      where: Deployment) -> None:
    stored = saver.put(Checkpoint("f", {"n": 1}))
    keys = _shared.ThreadKeys.of(saver.key_prefix, "f")
    member = redis_harness.member_of(where.client, keys, "", stored.id)
    assert member is not None
    where.client.zrem(keys.records, member)
    head = _shared.field("", stored.id) + b"\0"
    where.client.zadd(keys.records, {head + b"\x63" + member[len(head) + 1:]: 0})  # fmt 99
    with pytest.raises(UnsupportedLayoutError, match="layout 99"):
        RedisSaver(where.client, key_prefix=saver.key_prefix).get("f")


def test_a_resent_release_returns_the_version_it_made(saver: RedisSaver) -> None:
    saver.put(Checkpoint("r", {"n": 1}))
    keys = saver._keys("r")
    first = saver._run_script("archive", keys, [0, "tok"], "release")
    again = saver._run_script("archive", keys, [0, "tok"], "release")
    assert first == again and int(first[0]) == 1
    assert saver.versions("r") == [1]
    assert saver._run_script("archive", keys, [0, "other"], "release") == [0]


def test_a_put_resent_after_a_lost_reply_is_stored_once(where: Deployment) -> None:
    """The insert script ran but its reply was lost: the saver sends it again, finds its
    own checkpoint and reports success; the thread holds one copy."""

    class LosesOneReply:
        def __init__(self, client: Any):
            self.client = client
            self.lost = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

        def evalsha(self, *args: Any) -> Any:
            result = self.client.evalsha(*args)
            if not self.lost and args[0] == _shared.SCRIPTS["insert"].sha:
                self.lost = True
                raise redis.ConnectionError("connection dropped before the reply")
            return result

    with opened(where, chunk_bytes=1000) as saver:
        flaky = RedisSaver(LosesOneReply(where.client), key_prefix=saver.key_prefix,
                           chunk_bytes=1000)
        first = flaky.put(Checkpoint("lost", {"blob": b"a" * 3000 + os.urandom(3000)}))
        assert flaky.client.lost
        second = flaky.put(Checkpoint("lost", {"n": 2}))
        fresh = RedisSaver(where.client, key_prefix=saver.key_prefix)
        assert [c.id for c in fresh.list("lost")] == [second.id, first.id]
        assert fresh.get("lost", first.id).state["blob"][:3000] == b"a" * 3000


# -- constructors ------------------------------------------------------------------------
def test_from_uri_owns_its_client_and_a_given_client_is_never_closed(
    redis_single: Deployment, tmp_path: Any, loop: asyncio.AbstractEventLoop
) -> None:
    prefix = redis_harness.fresh_prefix()
    closed: list[str] = []

    def spy(client: Any, name: str) -> None:
        real = client.close
        client.close = lambda: (closed.append(name), real())[1]

    with RedisSaver.from_uri(redis_single.url, key_prefix=prefix) as owned:
        spy(owned.client, "owned")
        owned.put(Checkpoint("u", {"n": 1}))
    assert closed == ["owned"]
    client = redis.Redis(port=redis_single.nodes[0].port)
    spy(client, "given")
    with RedisSaver(client, key_prefix=prefix) as given:
        assert given.get("u").state == {"n": 1}
    assert closed == ["owned"]  # the caller's client is the caller's to close
    client.close()

    async def main() -> Any:
        async with AsyncRedisSaver.from_uri(redis_single.url, key_prefix=prefix) as saver:
            return (await saver.aget("u")).state

    assert loop.run_until_complete(main()) == {"n": 1}
    redis_single.drop(prefix)


def test_from_uri_over_a_unix_socket(tmp_path: Any) -> None:
    socket_path = tmp_path / "redis.sock"
    node = redis_harness.start_node(tmp_path / "unix", "--unixsocket", str(socket_path),
                                    "--appendonly", "no")
    try:
        with RedisSaver.from_uri(f"unix://{socket_path}") as saver:
            saver.put(Checkpoint("s", {"n": 1}))
            assert saver.get("s").state == {"n": 1}
    finally:
        node.stop()


def test_from_uri_cluster(redis_cluster: Deployment) -> None:
    prefix = redis_harness.fresh_prefix()
    with RedisSaver.from_uri(redis_cluster.url, cluster=True, key_prefix=prefix) as saver:
        for i in range(20):
            saver.put(Checkpoint(f"t{i}", {"i": i}))
        assert saver.list_threads() == sorted(f"t{i}" for i in range(20))
    redis_cluster.drop(prefix)


def test_missing_redis_package_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from savegame.savers import MissingDependencyError\n"
        "try:\n    from savegame.savers import RedisSaver\n"
        "except MissingDependencyError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert "pip install 'savegame[redis]'" in done.stdout, done.stderr
