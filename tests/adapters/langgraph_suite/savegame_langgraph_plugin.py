"""pytest plugin that runs LangGraph's own test suite with savegame's Checkpointer.

Loaded with ``-p savegame_langgraph_plugin`` by ``test_langgraph_own_suite.py``, in a
pytest process whose working directory is the unpacked ``langgraph`` source distribution
(``NO_DOCKER=true``: no Postgres, no Redis). Environment:

- ``SAVEGAME_LG_BACKEND``: ``inmemory`` (LangGraph's own checkpointers, the baseline),
  ``memory`` (savegame ``Checkpointer(MemorySaver())``), ``mongomock``
  (``Checkpointer(MongoSaver(mongomock client))``), ``file`` (``FileSystemSaver`` in a new
  directory) or ``redis`` (``RedisSaver`` with a new key prefix on the redis-server at
  ``SAVEGAME_LG_REDIS_URL``, which the orchestrator starts);
- ``SAVEGAME_LG_REPORT``: where to write ``{node id: outcome}`` as JSON.

What it changes (nothing for the baseline):

- their conftest builds every ``sync_checkpointer`` / ``async_checkpointer`` of the
  ``memory`` parametrization with ``tests.conftest._checkpointer_memory``: replaced by one
  yielding a savegame ``Checkpointer`` (with the same ``serde`` their conftest passes);
- tests that build ``InMemorySaver()`` / ``MemorySaver()`` themselves find, under those
  names in their module, a ``Checkpointer`` subclass taking the same keyword arguments.

Which tests run (the same selection for every backend): every test using the checkpointer
fixtures with the ``memory`` parametrization (the other checkpointers, SQLite, are not
run), and every test whose function mentions ``MemorySaver``; the rest of their suite
never touches a checkpointer and is deselected.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

BACKEND = os.environ.get("SAVEGAME_LG_BACKEND", "inmemory")
REPORT = os.environ.get("SAVEGAME_LG_REPORT")
_FIXTURES = ("sync_checkpointer", "async_checkpointer")
_outcomes: dict[str, str] = {}
_messages: dict[str, str] = {}
_made = [0]  # savegame checkpointers built (the orchestrator checks the patch took)


def _new_saver() -> Any:
    if BACKEND == "memory":
        from savegame.savers import MemorySaver

        return MemorySaver()
    if BACKEND == "mongomock":
        import mongo_harness
        import mongomock

        from savegame.savers import MongoSaver

        mongo_harness.patch_mongomock()
        return MongoSaver(mongomock.MongoClient(), database="langgraph_suite")
    if BACKEND == "file":
        import tempfile

        from savegame.savers import FileSystemSaver

        return FileSystemSaver(tempfile.mkdtemp(prefix="savegame-lg-suite-"), durability="os")
    if BACKEND == "redis":
        import secrets

        import redis

        from savegame.savers import RedisSaver

        client = redis.Redis.from_url(os.environ["SAVEGAME_LG_REDIS_URL"])
        # not uuid4: some of their tests patch it to a deterministic sequence
        return RedisSaver(client, key_prefix=f"lgsuite-{secrets.token_hex(6)}")
    raise ValueError(f"unknown SAVEGAME_LG_BACKEND {BACKEND!r}")


def _checkpointer_class() -> type:
    from savegame.adapters.langgraph import Checkpointer

    class SavegameCheckpointer(Checkpointer):
        """``InMemorySaver``'s constructor (``serde=``, ``factory=`` ignored) over a new
        savegame store."""

        def __init__(self, *, serde: Any = None, factory: Any = None) -> None:
            super().__init__(_new_saver(), serde=serde)
            _made[0] += 1

    SavegameCheckpointer.__name__ = SavegameCheckpointer.__qualname__ = "InMemorySaver"
    return SavegameCheckpointer


def _relevant(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    uses = [name for name in _FIXTURES if name in getattr(item, "fixturenames", ())]
    if uses:
        return all(callspec is not None and callspec.params.get(name) == "memory"
                   for name in uses)
    function = getattr(item, "function", None)
    if function is None:
        return False
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return "MemorySaver" in source


def _patch(items: list[pytest.Item]) -> None:
    from langgraph.checkpoint import memory

    replacement = _checkpointer_class()
    conftest = sys.modules["tests.conftest"]
    uses_strict = getattr(sys.modules.get("tests.conftest_checkpointer"), "STRICT_MSGPACK",
                          False)

    @contextlib.contextmanager
    def _checkpointer_memory() -> Iterator[Any]:
        if uses_strict:
            from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

            yield replacement(serde=JsonPlusSerializer(allowed_msgpack_modules=None))
        else:
            yield replacement()

    conftest._checkpointer_memory = _checkpointer_memory  # type: ignore[attr-defined]
    originals = {memory.InMemorySaver, memory.MemorySaver}
    for module in {item.module for item in items if getattr(item, "module", None)}:
        for name in ("InMemorySaver", "MemorySaver"):
            if getattr(module, name, None) in originals:
                setattr(module, name, replacement)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    keep = [item for item in items if _relevant(item)]
    dropped = [item for item in items if not _relevant(item)]
    items[:] = keep
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    if BACKEND != "inmemory":
        _patch(keep)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = report.nodeid
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        if _outcomes.get(node) != "error":
            _outcomes[node] = outcome
    elif report.failed:
        _outcomes[node] = "error"
    elif report.skipped and report.when == "setup":
        _outcomes[node] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    if report.failed and node not in _messages:
        _messages[node] = str(getattr(report, "longreprtext", ""))[-1500:]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REPORT:
        with open(REPORT, "w") as handle:
            json.dump({"backend": BACKEND, "outcomes": _outcomes, "messages": _messages,
                       "savegame_checkpointers": _made[0]}, handle, indent=0, sort_keys=True)
