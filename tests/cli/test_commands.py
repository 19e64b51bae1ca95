"""Every ``savegame`` command through the installed console script, against a memory store
(``memory://?load=ARCHIVE``: a store that lives as long as the command), MongoDB
(nx-27017), the file store and Redis (the session's redis-server): exit codes, ``--json``
output parsed, one-line errors on stderr."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import as_json, db_uri, json_lines, ok, run

from savegame.savers import Checkpoint, MemorySaver, open_saver
from savegame.savers.archive import ArchiveWriter
from savegame.savers.checkpoint import PendingWrite
from savegame.savers.serde import Serializer, TypeRegistry

pytest.importorskip("click")
pytest.importorskip("pymongo")

_db = itertools.count()


@dataclass
class Tool:
    name: str
    args: dict[str, Any]


def populate(saver: Any) -> dict[str, Any]:
    """chat-1: 12 checkpoints with a fork at step 4, pending writes, a subgraph namespace;
    chat-2: values of many types and a registered dataclass the CLI has never heard of."""
    registry = TypeRegistry()
    registry.register(Tool, name="app.Tool")
    saver.serializer = Serializer(registry)
    messages: list[dict[str, str]] = []
    ids = []
    for turn in range(11):
        messages = [*messages, {"role": "user", "content": f"question {turn}"}]
        stored = saver.put(Checkpoint("chat-1", {"messages": messages, "turn": turn},
                                      node_id="agent", next_node_id="tools",
                                      metadata={"user": "ada"}))
        ids.append(stored.id)
    fork = saver.put(Checkpoint("chat-1", {"messages": messages[:5], "turn": 99},
                                parent_id=ids[4], node_id="human", next_node_id="agent"))
    saver.put_writes("chat-1", ids[-1], [PendingWrite("task-1", 0, "messages", "pending")])
    saver.put(Checkpoint("chat-1", {"inner": 1}, namespace="sub"))
    saver.put(Checkpoint("chat-2", {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "tags": {"b", "a"}, "blob": b"\x00\x01", "tool": Tool("search", {"q": "zstd"}),
    }))
    saver.put(Checkpoint("other-1", {"n": 1}))
    return {"ids": ids, "fork": fork.id}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    saver = MemorySaver()
    info = populate(saver)
    path = tmp_path_factory.mktemp("archive") / "store.sgar"
    with ArchiveWriter.open(path) as writer:
        for thread in saver.list_threads():
            writer.write_thread(thread, *saver.read_records(thread))
    return path, info


#: The Redis database the CLI tests use (emptied before each): the CLI takes a bare URI.
REDIS_DB = 7


@pytest.fixture(params=["memory", "mongodb", "file", "redis"])
def store(request: pytest.FixtureRequest, archive: tuple[Path, dict[str, Any]],
          tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A store URI holding the data of :func:`populate`, and the ids it made."""
    path, info = archive
    if request.param == "memory":
        yield f"memory://?load={path}", info
        return
    if request.param == "mongodb":
        uri = db_uri(request.getfixturevalue("nx_uri"), f"cli_{next(_db)}")
    elif request.param == "file":
        uri = f"file://{tmp_path / 'store'}"
    else:
        import redis

        port = request.getfixturevalue("redis_single").nodes[0].port
        with redis.Redis(port=port, db=REDIS_DB) as client:
            client.flushdb()
        uri = f"redis://127.0.0.1:{port}/{REDIS_DB}"
    with open_saver(uri) as saver:
        yield uri, populate(saver)


def test_ls(store: tuple[str, dict[str, Any]]) -> None:
    uri, _ = store
    rows = {row["thread"]: row for row in json_lines("ls", "-s", uri)}
    assert set(rows) == {"chat-1", "chat-2", "other-1"}
    assert rows["chat-1"]["checkpoints"] == 13 and rows["chat-1"]["namespaces"] == 2
    assert rows["chat-1"]["writes"] == 1 and rows["chat-1"]["stored_bytes"] > 0
    assert [r["thread"] for r in json_lines("ls", "-s", uri, "--prefix", "chat")] == [
        "chat-1", "chat-2"]
    human = ok("ls", env={"SAVEGAME_URI": uri}).stdout  # the store from the environment
    assert "3 thread(s)" in human and "chat-2" in human and "\x1b[" not in human


def test_history_shows_the_fork(store: tuple[str, dict[str, Any]]) -> None:
    uri, info = store
    entries = json_lines("history", "-s", uri, "chat-1", "--namespace", "")
    assert [e["step"] for e in entries] == [*range(11), 5]
    by_id = {e["id"]: e for e in entries}
    assert by_id[info["ids"][4]]["children"] == 2
    assert by_id[info["fork"]]["parent"] == info["ids"][4]
    # the first checkpoint was a keyframe, rewritten as a reverse record once newer ones came
    assert entries[0]["kind"] in ("keyframe", "reverse")
    assert {e["kind"] for e in entries} >= {"keyframe", "delta"}
    assert all(e["size"] > 0 and e["created_at"].endswith("Z") for e in entries)
    human = ok("history", "-s", uri, "chat-1").stdout
    assert "branch from step 4" in human and "human -> agent" in human
    assert "namespace 'sub'" in human  # every namespace by default


def test_show(store: tuple[str, dict[str, Any]]) -> None:
    uri, info = store
    latest = as_json("show", "-s", uri, "chat-1")
    assert latest["id"] == info["fork"] and latest["value"]["turn"] == 99
    last = as_json("show", "-s", uri, "chat-1", info["ids"][-1], "--path", "messages.-1")
    assert last["value"] == {"role": "user", "content": "question 10"}
    assert ok("show", "-s", uri, "chat-1", info["ids"][2], "--path",
              "messages.-1.content").stdout.strip() == '"question 2"'
    # nothing registered in the CLI's process: shown by name, never built or imported
    typed = as_json("show", "-s", uri, "chat-2")["value"]
    assert typed["tool"] == {"$type": "app.Tool", "name": "search", "args": {"q": "zstd"}}
    assert typed["when"] == "2026-01-02T03:04:05+00:00" and sorted(typed["tags"]) == ["a", "b"]
    assert typed["blob"] == {"$bytes": "AAE=", "size": 2}
    missing = run("show", "-s", uri, "chat-1", "no-such-id")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip() == ("savegame: error: thread 'chat-1' (namespace '') has "
                                      "no checkpoint 'no-such-id'")
    bad_path = run("show", "-s", uri, "chat-1", "--path", "messages.77")
    assert bad_path.returncode == 1 and "not an index" in bad_path.stderr


def test_diff(store: tuple[str, dict[str, Any]]) -> None:
    uri, info = store
    report = as_json("diff", "-s", uri, "chat-1", info["ids"][4], info["ids"][6])
    assert report["changes"] == [
        {"path": "messages.5", "change": "added",
         "after": {"role": "user", "content": "question 5"}},
        {"path": "messages.6", "change": "added",
         "after": {"role": "user", "content": "question 6"}},
        {"path": "turn", "change": "changed", "before": 4, "after": 6},
    ]
    human = ok("diff", "-s", uri, "chat-1", info["ids"][4], info["fork"]).stdout
    assert "1 change(s)" in human and "turn" in human


def test_verify_and_stats(store: tuple[str, dict[str, Any]]) -> None:
    uri, _ = store
    report = as_json("verify", "-s", uri)
    assert report == {"ok": True, "threads": 3, "checkpoints": 15, "writes": 1,
                      "damaged": 0, "problems": []}
    assert "OK: 2 thread(s), 14 checkpoint(s)" in ok("verify", "-s", uri, "chat-1",
                                                      "chat-2").stdout
    stats = as_json("stats", "-s", uri)
    assert stats["checkpoints"] == 15 and stats["keyframes"] + stats["deltas"] == 15
    assert stats["raw_bytes"] > stats["stored_bytes"] > 0 and stats["compression_ratio"] > 1
    details = stats["backend"]
    backend = details["backend"]
    assert backend == uri.split(":", 1)[0]
    if backend == "mongodb":
        assert details["checkpoints"]["documents"] == 15
    elif backend == "file":  # three thread files and the registry
        assert details["threads"] == 3 and details["files"] == 4
        assert details["bytes on disk"] > stats["stored_bytes"]
    elif backend == "redis":  # each thread: meta, checkpoints (writes in their values)
        assert details["threads"] == 3 and details["keys"] >= 6
        assert details["memory usage"] > stats["stored_bytes"]
    assert "compression (raw / stored)" in ok("stats", "-s", uri).stdout


def states(uri: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every checkpoint of a store, decoded, by thread and namespace."""
    from savegame.savers.cli._view import ViewSerializer

    out = {}
    with open_saver(uri, serializer=ViewSerializer()) as saver:
        for thread in saver.list_threads():
            for namespace in saver.list_namespaces(thread):
                out[f"{thread}/{namespace}"] = [
                    (c.id, c.parent_id, c.step, c.node_id, dict(c.metadata),
                     json.dumps(c.state, default=repr, sort_keys=True))
                    for c in saver.list(thread, namespace=namespace)]
    return out


def test_export_import_copy(store: tuple[str, dict[str, Any]], tmp_path: Path,
                            nx_uri: str) -> None:
    uri, _ = store
    target = tmp_path / "out.sgar"
    exported = as_json("export", "-s", uri, "-o", str(target))
    assert exported["checkpoints"] == 15 and exported["writes"] == 1 and target.exists()
    assert not target.with_name("out.sgar.partial").exists()

    into = db_uri(nx_uri, f"cli_{next(_db)}")
    assert as_json("import", "-s", into, str(target))["checkpoints"] == 15
    assert as_json("import", "-s", into, str(target))["checkpoints"] == 15  # idempotent
    assert as_json("verify", "-s", into)["ok"]
    assert states(into) == states(uri)

    copied_to = db_uri(nx_uri, f"cli_{next(_db)}")
    lines = json_lines("copy", uri, copied_to)
    assert sum(line["copied"] for line in lines) == 15
    again = json_lines("copy", uri, copied_to)
    assert sum(line["copied"] for line in again) == 0
    assert sum(line["already_there"] for line in again) == 15
    assert states(copied_to) == states(uri)
    # the same thread with other content in the target is refused, naming it
    with open_saver(copied_to) as saver:
        saver.put(Checkpoint("other-1", {"n": 2}))
    for clash in (run("copy", uri, copied_to, "other-1"),
                  run("import", "-s", copied_to, str(target))):
        assert clash.returncode == 1
        assert "thread 'other-1' already exists in the target with other content" in \
            clash.stderr


def test_prune_and_delete(store: tuple[str, dict[str, Any]]) -> None:
    uri, _ = store
    dry = as_json("prune", "-s", uri, "chat-1", "--keep-last", "3", "--dry-run")
    assert dry["deleted"] == 9 and dry["namespaces"] == {"": 9, "sub": 0}
    pruned = as_json("prune", "-s", uri, "chat-1", "--keep-last", "3", "-n", "")
    assert pruned["deleted"] == 9
    refused = run("delete", "-s", uri, "chat-2")  # no terminal, no --yes
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if not line.startswith("note:")]
    assert len(errors) == 1 and "--yes" in errors[0]
    deleted = as_json("delete", "-s", uri, "chat-2", "--yes")
    assert deleted["deleted_checkpoints"] == 1
    if uri.startswith("memory"):  # a memory store lives as long as the command
        assert "discarded" in run("delete", "-s", uri, "chat-2", "--yes").stderr
        return
    assert as_json("verify", "-s", uri)["ok"]  # survivors were re-encoded, chains intact
    rows = {row["thread"]: row for row in json_lines("ls", "-s", uri)}
    assert set(rows) == {"chat-1", "other-1"} and rows["chat-1"]["checkpoints"] == 4
    gone = run("show", "-s", uri, "chat-2")
    assert gone.returncode == 1 and "thread 'chat-2'" in gone.stderr


def test_errors_are_one_line(tmp_path: Path) -> None:
    for args, status, text in [
        (("ls",), 2, "Missing option '-s' / '--store'"),
        (("ls", "-s", "nosuch://x"), 1, "no saver for nosuch:// URIs"),
        (("ls", "-s", "not-a-uri"), 1, "not a store URI"),
        (("ls", "-s", f"memory://?load={tmp_path / 'none.sgar'}"), 1, "No such file"),
        (("frobnicate",), 2, "No such command 'frobnicate'"),
        (("import", "-s", "memory://", str(tmp_path)), 2, "is a directory"),
    ]:
        result = run(*args)
        assert result.returncode == status, (args, result.stderr)
        assert result.stdout == ""
        lines = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("savegame: error: ")
        assert text in lines[0], lines[0]


def test_damaged_archives_import_nothing(archive: tuple[Path, dict[str, Any]],
                                        tmp_path: Path) -> None:
    path, _ = archive
    data = path.read_bytes()
    flipped = tmp_path / "flipped.sgar"
    flipped.write_bytes(data[:400] + bytes([data[400] ^ 1]) + data[401:])
    truncated = tmp_path / "truncated.sgar"
    truncated.write_bytes(data[:-30])
    for damaged, message in [(flipped, "fails its checksum"), (truncated, "truncated")]:
        result = run("import", "-s", "memory://", str(damaged))
        assert result.returncode == 1 and message in result.stderr
        result = run("ls", "-s", f"memory://?load={damaged}")
        assert result.returncode == 1 and result.stdout == ""
    not_archive = tmp_path / "text.sgar"
    not_archive.write_text("hello")
    assert "not a savegame archive" in run("import", "-s", "memory://",
                                           str(not_archive)).stderr


def test_help_lists_every_command() -> None:
    text = ok("--help").stdout
    for command in ("ls", "history", "show", "diff", "verify", "stats", "export", "import",
                    "copy", "prune", "delete", "migrate"):
        assert f"  {command} " in text or f"  {command}\n" in text, command
    migrate = ok("migrate", "--help").stdout
    for source in ("langgraph-mongodb", "langgraph-sqlite", "burr-mongodb", "burr-sqlite"):
        assert source in migrate
