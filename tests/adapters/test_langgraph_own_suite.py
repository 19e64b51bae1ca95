"""LangGraph's own test suite with savegame's Checkpointer in place of InMemorySaver
(issue #10, item 8).

The test suite of the installed ``langgraph`` version is taken from its published source
distribution: ``pip download --no-binary :all: --no-deps langgraph==<version>`` into a
cache directory (``$SAVEGAME_TEST_CACHE``, default ``~/.cache/savegame-tests``), unpacked
there, never copied into this repository. It is run with pytest in subprocesses, with the
plugin ``langgraph_suite/savegame_langgraph_plugin.py`` (``NO_DOCKER=true``: no Postgres
or Redis), once per configuration, all at the same time:

- ``default:inmemory``, ``strict:inmemory``: LangGraph's own checkpointers, the baseline
  (``strict`` = ``LANGGRAPH_STRICT_MSGPACK=true``, LangGraph's strict serializer mode);
- ``default:memory``, ``default:mongomock``, ``default:file``, ``default:redis``,
  ``strict:memory``: savegame's ``Checkpointer`` over ``MemorySaver``, over ``MongoSaver``
  on mongomock, over ``FileSystemSaver`` in a fresh directory and over ``RedisSaver`` on
  the test session's redis-server (a fresh key prefix per checkpointer), wherever their
  suite makes an in-memory checkpointer (their checkpointer fixtures and their own
  ``InMemorySaver()``).

Every test must end the same way (passed, failed, skipped, xfailed...) as in the baseline
of the same mode, except the tests listed with a reason in
``langgraph_suite/exclusions.txt``; an exclusion that no longer matches a difference fails
the test too. The counts are printed (``pytest -s``) and written to
``<cache>/langgraph-suite-last-run.json``.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SUITE = HERE / "langgraph_suite"
EXCLUSIONS = SUITE / "exclusions.txt"
#: (mode, backend) runs; each savegame run is compared with the inmemory run of its mode.
RUNS = [("default", "inmemory"), ("default", "memory"), ("default", "mongomock"),
        ("default", "file"), ("default", "redis"),
        ("strict", "inmemory"), ("strict", "memory")]
#: Modules their conftest and tests import (the 'test' dependency group of langgraph).
TEST_DEPENDENCIES = ["syrupy", "pytest_mock", "redis", "psycopg", "psycopg_pool",
                     "langgraph.checkpoint.sqlite", "langgraph.checkpoint.postgres",
                     "Crypto", "mongomock"]
RUN_TIMEOUT = 420


def cache_dir() -> Path:
    root = os.environ.get("SAVEGAME_TEST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "savegame-tests"


def langgraph_sources(version: str) -> Path:
    """The unpacked sdist of ``langgraph==version`` (downloaded once, then cached)."""
    target = cache_dir() / f"langgraph-{version}"
    if (target / "tests" / "conftest.py").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             "--disable-pip-version-check", "-q", "-d", scratch, f"langgraph=={version}"],
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"pip download of langgraph=={version} failed:\n" \
                                     f"{done.stderr[-3000:]}"
        (archive,) = Path(scratch).glob("langgraph-*.tar.gz")
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(scratch)
        unpacked = Path(scratch) / f"langgraph-{version}"
        assert (unpacked / "tests" / "conftest.py").exists(), "the sdist carries no tests"
        if not (target / "tests" / "conftest.py").exists():
            shutil.rmtree(target, ignore_errors=True)
            unpacked.rename(target)
    return target


@dataclass(frozen=True)
class Exclusion:
    node: str
    scope: str
    reason: str

    def matches(self, node: str, scope: str) -> bool:
        """The node id exactly (ids hold brackets); the scope as a glob."""
        return node == self.node and fnmatch.fnmatchcase(scope, self.scope)


def read_exclusions() -> list[Exclusion]:
    out = []
    for number, line in enumerate(EXCLUSIONS.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split("|", 2)]
        assert len(parts) == 3 and all(parts), f"{EXCLUSIONS.name}:{number}: {line!r}"
        out.append(Exclusion(*parts))
    return out


def start(source: Path, mode: str, backend: str, report: Path, redis_url: str
          ) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_DOCKER": "true", "SAVEGAME_LG_BACKEND": backend,
           "SAVEGAME_LG_REPORT": str(report), "SAVEGAME_LG_REDIS_URL": redis_url,
           "PYTHONPATH": os.pathsep.join([str(SUITE), str(HERE.parent)])}
    env.pop("LANGGRAPH_STRICT_MSGPACK", None)
    if mode == "strict":
        env["LANGGRAPH_STRICT_MSGPACK"] = "true"
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "tests", "-q", "-p", "savegame_langgraph_plugin",
         "-p", "no:cacheprovider", "--timeout", "120", "-W", "ignore::DeprecationWarning"],
        cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_langgraph_own_suite_matches_inmemorysaver(tmp_path: Path, redis_single: Any) -> None:
    missing = [name for name in TEST_DEPENDENCIES if importlib.util.find_spec(name) is None]
    assert not missing, (f"LangGraph's test dependencies are missing: {missing}; "
                         "install them with: pip install -e '.[dev]'")
    version = importlib.metadata.version("langgraph")
    source = langgraph_sources(version)
    began = time.monotonic()
    procs = {(mode, backend): start(source, mode, backend, tmp_path / f"{mode}-{backend}.json",
                                    redis_single.url)
             for mode, backend in RUNS}
    logs = {}
    for key, proc in procs.items():
        try:
            logs[key], _ = proc.communicate(timeout=max(1, RUN_TIMEOUT - (time.monotonic()
                                                                        - began)))
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            pytest.fail(f"LangGraph's suite ({key}) took longer than {RUN_TIMEOUT} s")
    elapsed = time.monotonic() - began
    outcomes: dict[tuple[str, str], dict[str, str]] = {}
    messages: dict[tuple[str, str], dict[str, str]] = {}
    for mode, backend in RUNS:
        report = tmp_path / f"{mode}-{backend}.json"
        log = logs[(mode, backend)][-3000:]
        assert report.exists(), f"{mode}:{backend} wrote no report:\n{log}"
        data = json.loads(report.read_text())
        outcomes[(mode, backend)] = data["outcomes"]
        messages[(mode, backend)] = data["messages"]
        made = data["savegame_checkpointers"]
        assert (made > 0) is (backend != "inmemory"), (mode, backend, made)

    exclusions = read_exclusions()
    used: set[Exclusion] = set()
    unexplained: list[str] = []
    summary: dict[str, dict[str, int]] = {}
    for (mode, backend), seen in outcomes.items():
        summary[f"{mode}:{backend}"] = dict(Counter(seen.values()))
        if backend == "inmemory":
            continue
        baseline = outcomes[(mode, "inmemory")]
        assert len(seen) > 500 and set(seen) == set(baseline), (
            f"{mode}:{backend} ran another set of tests than the baseline")
        for node in sorted(baseline):
            if seen[node] == baseline[node]:
                continue
            scope = f"{mode}:{backend}"
            hit = next((e for e in exclusions if e.matches(node, scope)), None)
            if hit is not None:
                used.add(hit)
                continue
            why = messages[(mode, backend)].get(node, "")[-800:]
            unexplained.append(f"{scope} {node}: InMemorySaver {baseline[node]}, savegame "
                               f"{seen[node]}\n{why}")
    stale = [e for e in exclusions if e not in used and not e.reason.startswith("flaky:")]
    record = {"langgraph": version, "seconds": round(elapsed, 1), "counts": summary,
              "excluded": sorted(f"{e.scope} {e.node}" for e in used)}
    (cache_dir() / "langgraph-suite-last-run.json").write_text(json.dumps(record, indent=1))
    print(f"\nLangGraph {version} own suite, {elapsed:.0f} s:")
    for name, counts in summary.items():
        print(f"  {name:20} {json.dumps(counts, sort_keys=True)}")
    assert not unexplained, "outcomes differ from InMemorySaver's:\n\n" + "\n\n".join(
        unexplained)
    assert not stale, "exclusions that match no difference any more: " + ", ".join(
        f"{e.scope} {e.node}" for e in stale)
