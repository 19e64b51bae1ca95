"""The built wheel holds every module, the extras are declared, and imports stay light."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"savers": "savegame/savers", "adapters": "savegame/adapters"}
EXTRAS = {"mongodb", "motor", "langgraph", "burr", "llamaindex", "cli", "all", "dev"}
CORE = {"zstandard", "msgpack", "cattrs", "xxhash"}


def _build_deps_installed() -> bool:
    """Are pyproject's build requirements (setuptools>=69, wheel) in this interpreter?"""
    try:
        setuptools_version = metadata.version("setuptools")
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return int(setuptools_version.split(".")[0]) >= 69


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the wheel from a snapshot of the sources (the working tree stays untouched)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out)]
    if _build_deps_installed():
        command.append("--no-isolation")  # a few seconds instead of a fresh venv
    result = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("savegame-*.whl"))
    assert len(wheels) == 1, wheels
    return src, wheels[0]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_wheel_holds_every_module(built: tuple[Path, Path]) -> None:
    src, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{target}/{path.relative_to(src / folder).as_posix()}"
        for folder, target in PACKAGES.items()
        for path in (src / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert expected, "no modules found"
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    for target in PACKAGES.values():
        assert f"{target}/py.typed" in names
        assert f"{target}/__init__.py" in names
    assert not any(n.startswith(("savers/", "adapters/", "tests/")) for n in names)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_wheel_metadata(built: tuple[Path, Path]) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(meta_name).decode())
    assert meta["Name"] == "savegame"
    extras = set(meta.get_all("Provides-Extra") or [])
    assert extras >= EXTRAS, EXTRAS - extras
    core = set()
    for requirement in meta.get_all("Requires-Dist") or []:
        if "extra ==" in requirement:
            continue
        name = requirement.split(";")[0].strip()
        for sep in "<>=!~[ (":
            name = name.split(sep)[0]
        core.add(name.lower())
    assert core == CORE


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_does_not_pull_pymongo() -> None:
    out = _python(
        "import sys\n"
        "import savegame.savers\n"
        "from savegame.savers import *\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pymongo', 'motor', 'bson', 'langgraph', 'burr', 'llama_index')))\n"
    )
    assert out.strip() == "[]"


def test_public_names_import() -> None:
    out = _python(
        "from savegame.savers import (Checkpoint, MemorySaver, VersionedMemorySaver, Release,\n"
        "    register_type, SavegameError, SerializationError, ConflictError,\n"
        "    CorruptCheckpointError, MissingDependencyError)\n"
        "from savegame.savers import errors, serde\n"
        "from savegame.savers.errors import (SavegameError as E0, SerializationError as E1,\n"
        "    ConflictError as E2, CorruptCheckpointError as E3, MissingDependencyError as E4)\n"
        "from savegame.savers.serde import register_type as rt\n"
        "assert (SavegameError, SerializationError, ConflictError, CorruptCheckpointError,\n"
        "        MissingDependencyError) == (E0, E1, E2, E3, E4)\n"
        "assert register_type is rt\n"
        "for e in (E1, E2, E3, E4):\n"
        "    assert issubclass(e, E0)\n"
        "assert issubclass(E4, ImportError)\n"
        "import savegame.savers as s\n"
        "for name in s.__all__:\n"
        "    getattr(s, name)\n"
        "print('ok')\n"
    )
    assert out.strip() == "ok"
