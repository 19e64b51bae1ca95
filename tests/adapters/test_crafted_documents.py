"""Documents crafted by someone with write access to the store, read through every
adapter's load path, import and call nothing (issue #11, item 3).

Each case runs ``crafted_documents.py`` in a fresh interpreter (so ``sys.modules`` tells
what was imported) over MemorySaver and over MongoSaver through the real driver on
nx-27017. A crafted value that called what it names would create a marker file; a module
imported by a stored name would create one too (``savegame_crafted_trap`` writes it on
import). Refusals (errors) are the expected outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("crafted_documents.py")


def run_script(adapter: str, store: str, tmp_path: Path, uri: str = "") -> dict[str, Any]:
    markers = tmp_path / "markers"
    markers.mkdir()
    trap_dir = tmp_path / "trap"
    trap_dir.mkdir()
    (trap_dir / "savegame_crafted_trap.py").write_text(
        f"open({str(markers / 'trap-imported')!r}, 'w').close()\n"
        "import pydantic\n"
        "class Evil(pydantic.BaseModel):\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(trap_dir), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(SCRIPT), adapter, store, str(markers), uri],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["markers"] = sorted(path.name for path in markers.iterdir())
    return out


@pytest.mark.parametrize("store", ["memory", "nx"])
@pytest.mark.parametrize("adapter", ["langgraph", "burr", "llamaindex"])
def test_crafted_documents_import_and_call_nothing(adapter: str, store: str,
                                                   tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    uri = request.getfixturevalue("nx_uri") if store == "nx" else ""
    out = run_script(adapter, store, tmp_path, uri)
    assert out["markers"] == [], out
    assert out["trap_imported"] is False, out
    errors = out["errors"]
    if adapter == "burr":  # every crafted row is refused, naming the key path
        assert all("SerializationError" in error and "state['evil']" in error
                   for name, error in errors.items() if not name.endswith("load_partition")), errors
        assert len(errors) == 5 * 4, errors
    if adapter == "llamaindex":
        assert all(f"{name}/pending_input" in errors for name in
                   ("trap", "function", "class", "model")), errors
