"""A LangGraph graph, a Burr app and a LlamaIndex workflow stopped in one OS process and
resumed in a new one from the same store directory (the parametrized adapter suites run
the file store in-process too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ADAPTERS = HERE.parent / "adapters"
DRIVER = str(HERE / "file_adapter_driver.py")
LLAMA = str(ADAPTERS / "llamaindex_workflows.py")


def run(*args: str, env: dict[str, str] | None = None, expect: int = 0) -> Any:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert done.returncode == expect, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]) if expect == 0 else None


def test_langgraph_interrupt_resumed_in_a_new_process(tmp_path: Path) -> None:
    pytest.importorskip("langgraph")
    store = str(tmp_path / "store")
    asked = run(DRIVER, "langgraph", "ask", store)
    assert asked == {"interrupt": {"question": "approve?", "draft": "HELLO"}}
    done = run(DRIVER, "langgraph", "resume", store)
    assert done["next_before"] == ["review"]
    assert done["result"] == {"draft": "HELLO", "verdict": "yes:HELLO"}
    assert done["history"] >= 4


def test_burr_app_resumed_in_a_new_process(tmp_path: Path) -> None:
    pytest.importorskip("burr")
    store = str(tmp_path / "store")
    first = run(DRIVER, "burr", "run", store, "3")
    assert (first["started_at"], first["sequence_id"]) == (None, 2)
    second = run(DRIVER, "burr", "resume", store, "3")
    assert (second["started_at"], second["sequence_id"]) == (2, 5)
    assert first["chat"] == ["question 1", "answer to question 1", "question 2"]
    assert second["chat"] == [*first["chat"], "answer to question 2", "question 3",
                              "answer to question 3"]
    assert second["apps"] == ["chat-1"]


@pytest.mark.parametrize("variant", ["input_required", "wait_for_event"])
def test_llamaindex_human_in_the_loop_resumed_in_a_new_process(tmp_path: Path,
                                                                variant: str) -> None:
    pytest.importorskip("workflows")
    uri = (tmp_path / "store").as_uri()
    log = tmp_path / "steps.log"
    env = {"SAVEGAME_TEST_STEP_LOG": str(log)}
    assert run(LLAMA, "ask", uri, "-", "hitl", variant, env=env) == {"asked": True}
    out = run(LLAMA, "answer", uri, "-", "hitl", variant, env=env)
    assert out["result"] == "hello Ada" and out["kind"] == variant
    assert out["pending_after"] is False
    expected = ["ask", "greet"] if variant == "input_required" else ["ask", "ask"]
    assert log.read_text().split() == expected


def test_llamaindex_crash_in_step_two_resumes_in_a_new_process(tmp_path: Path) -> None:
    pytest.importorskip("workflows")
    uri = (tmp_path / "store").as_uri()
    log = tmp_path / "steps.log"
    env = {"SAVEGAME_TEST_STEP_LOG": str(log)}
    crash = {**env, "SAVEGAME_TEST_CRASH_IN_S2": f"{uri}|-|crash"}
    run(LLAMA, "steps", uri, "-", "crash", env=crash, expect=17)
    assert log.read_text().split() == ["s1", "s2"]
    assert run(LLAMA, "resume", uri, "-", "crash", env=env) == {"result": ["one", "two", "three"]}
    assert log.read_text().split() == ["s1", "s2", "s2", "s3"]

    from savegame.savers import FileSystemSaver

    assert [c.node_id for c in FileSystemSaver(tmp_path / "store").list("crash")] == [
        "s3", "s2", "s1"]
