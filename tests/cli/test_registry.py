"""Store URIs: the registry, the memory:// store, plug-ins and the adapters' URI form."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from savegame.savers import Checkpoint, MemorySaver, MissingDependencyError, open_saver
from savegame.savers.registry import (
    UnknownSchemeError,
    as_saver,
    known_schemes,
    open_async_saver,
    register_saver,
)


def test_memory_names_one_store_per_process() -> None:
    saver = open_saver("memory://reg-a")
    saver.put(Checkpoint("t", {"n": 1}))
    assert open_saver("memory://reg-a") is saver
    assert open_saver("memory://reg-b").get("t") is None
    assert open_saver("memory://").list_threads() == []
    with pytest.raises(ValueError, match="already open"):
        open_saver("memory://reg-a", cache_bytes=1)
    assert open_async_saver("memory://reg-a") is saver


def test_mongodb_uri_names_its_database(nx_uri: str) -> None:
    base = nx_uri.split("/?")[0]
    with open_saver(f"{base}/appdb?directConnection=true") as saver:
        assert type(saver).__name__ == "MongoSaver"
        assert saver._checkpoints.database.name == "appdb"  # type: ignore[attr-defined]
        saver.put(Checkpoint("t", {"n": 1}))
    with open_saver(nx_uri) as saver:
        assert saver._checkpoints.database.name == "savegame"  # type: ignore[attr-defined]
    saver = open_async_saver(nx_uri)
    assert type(saver).__name__ == "AsyncMongoSaver"


def test_unknown_and_missing_schemes_say_what_to_do() -> None:
    with pytest.raises(UnknownSchemeError, match=r"no saver for nosuch://.*entry-point group"):
        open_saver("nosuch://x")
    with pytest.raises(UnknownSchemeError, match="not a store URI"):
        open_saver("/just/a/path")
    # the file saver lands from its own branch: until then a clear error, never a traceback
    try:
        import savegame.savers.file  # noqa: F401
    except ImportError:
        with pytest.raises(UnknownSchemeError, match=r"savegame\.savers\.file"):
            open_saver("file:///tmp/store")
    try:
        import redis  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"pip install 'savegame\[redis\]'"):
            open_saver("redis://localhost:6379/0")
    assert {"memory", "mongodb", "mongodb+srv", "file", "redis", "rediss",
            "unix"} <= set(known_schemes())


def test_register_saver_refuses_silent_override() -> None:
    class Mine(MemorySaver):
        pass

    register_saver("mine-test", Mine)
    assert isinstance(open_saver("mine-test://x"), Mine)
    with pytest.raises(ValueError, match="already registered"):
        register_saver("mine-test", MemorySaver)
    with pytest.raises(ValueError, match="already registered"):
        register_saver("mongodb", MemorySaver, clobber=True)


def test_as_saver() -> None:
    saver = MemorySaver()
    assert as_saver(saver) == (saver, False)
    opened, owned = as_saver("memory://as-saver")
    assert owned and opened is open_saver("memory://as-saver")
    with pytest.raises(TypeError, match="saver or a store URI"):
        as_saver(42)  # type: ignore[arg-type]


PLUGIN = '''
from savegame.savers import MemorySaver

class PlugSaver(MemorySaver):
    @classmethod
    def from_uri(cls, uri, **options):
        saver = cls(**options)
        saver.uri = uri
        return saver
'''


def make_plugin(root: Path) -> Path:
    """A tiny installed distribution (a dist-info beside its package) naming a saver in
    the ``savegame.savers`` entry-point group."""
    (root / "sgplug").mkdir(parents=True)
    (root / "sgplug" / "__init__.py").write_text(PLUGIN)
    info = root / "sgplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sgplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[savegame.savers]\nplug = sgplug:PlugSaver\n")
    (info / "RECORD").write_text("")
    return root


def test_entry_point_plugin(tmp_path: Path) -> None:
    root = make_plugin(tmp_path / "site")
    script = textwrap.dedent("""
        from savegame.savers import Checkpoint, open_saver
        from savegame.savers.registry import known_schemes
        saver = open_saver("plug://somewhere")
        assert type(saver).__name__ == "PlugSaver" and saver.uri == "plug://somewhere"
        saver.put(Checkpoint("t", {"n": 1}))
        assert known_schemes()["plug"] == "sgplug:PlugSaver"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={"PYTHONPATH": str(root), "PATH": ""}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_langgraph_checkpointer_takes_a_uri() -> None:
    pytest.importorskip("langgraph")
    from savegame.adapters.langgraph import Checkpointer

    checkpointer = Checkpointer("memory://lg-uri")
    assert checkpointer.saver is open_saver("memory://lg-uri")
    assert checkpointer._owns_saver


def test_burr_persisters_take_a_uri() -> None:
    pytest.importorskip("burr")
    from burr.core import State

    from savegame.adapters.burr import AsyncPersister, Persister

    persister = Persister("memory://burr-uri")
    persister.save("pk", "app", 0, "start", State({"n": 1}), "completed")
    clone = pickle.loads(pickle.dumps(persister))  # the URI travels, not the saver
    loaded = clone.load("pk", "app")
    assert loaded is not None and loaded["state"]["n"] == 1
    assert AsyncPersister("memory://burr-uri").saver is open_saver("memory://burr-uri")


def test_llamaindex_checkpointer_takes_a_uri() -> None:
    pytest.importorskip("workflows")
    from workflows import Workflow, step
    from workflows.events import StartEvent, StopEvent

    from savegame.adapters.llamaindex import WorkflowCheckpointer

    class Done(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result="done")

    async def main() -> None:
        checkpointer = WorkflowCheckpointer(Done(), "memory://li-uri")
        assert checkpointer.saver is open_saver("memory://li-uri")
        assert await checkpointer.run(thread_id="w") == "done"
        assert (await checkpointer.checkpoints("w"))
        await checkpointer.aclose()

    asyncio.run(main())
