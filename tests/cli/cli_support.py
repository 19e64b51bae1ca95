"""Run the installed ``savegame`` console script the way a person does: a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def savegame_exe() -> str:
    exe = Path(sys.executable).with_name("savegame")
    if exe.exists():
        return str(exe)
    found = shutil.which("savegame")
    if found is None:
        pytest.skip("the savegame console script is not installed (pip install -e '.[cli]')")
    return found


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None,
        timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``savegame ARGS...`` with no terminal (pipes): returns the finished process."""
    environment = {k: v for k, v in os.environ.items() if k != "SAVEGAME_URI"}
    environment.update(env or {})
    return subprocess.run([savegame_exe(), *args], capture_output=True, text=True,
                          env=environment, input=input, timeout=timeout, cwd=cwd)


def ok(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = run(*args, **kwargs)
    assert result.returncode == 0, f"savegame {' '.join(args)}: {result.stderr}"
    return result


def as_json(*args: str, **kwargs: Any) -> Any:
    """One JSON object from ``savegame ARGS... --json``."""
    return json.loads(ok(*args, "--json", **kwargs).stdout)


def json_lines(*args: str, **kwargs: Any) -> list[Any]:
    return [json.loads(line) for line in ok(*args, "--json", **kwargs).stdout.splitlines()]


def db_uri(nx_uri: str, database: str) -> str:
    """The nx-27017 URI with ``database`` as its default database."""
    base, _, query = nx_uri.partition("/?")
    return f"{base}/{database}?{query}"
