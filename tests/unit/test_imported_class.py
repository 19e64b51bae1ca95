"""``imported_class``: resolves already-loaded subclasses of an expected base, imports nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from savegame.savers.serde import imported_class


class Base:
    class Nested:
        pass


class Child(Base):
    class Inner(Base):
        pass


def test_resolves_loaded_subclasses_by_their_own_name() -> None:
    assert imported_class(f"{__name__}.Child", Base) is Child
    assert imported_class(f"{__name__}.Child.Inner", Base) is Child.Inner
    assert imported_class(f"{__name__}.Base", Base) is Base


def test_refuses_what_is_not_a_subclass_of_the_base() -> None:
    assert imported_class(f"{__name__}.Base.Nested", Base) is None  # a class, other kind
    assert imported_class("os.system", object) is None  # a function
    assert imported_class("subprocess.Popen", Base) is None
    assert imported_class(f"{__name__}.imported_class", object) is None


def test_refuses_malformed_names_and_aliases() -> None:
    for name in ("", "Child", ".Child", f"{__name__}.", f"{__name__}..Child",
                 f"{__name__}.<locals>.X", 3, None):
        assert imported_class(name, Base) is None
    # collections.abc.Mapping lives in typing as an alias: a name it does not carry
    import collections.abc

    assert imported_class("typing.Mapping", object) is None
    assert imported_class("collections.abc.Mapping", object) is collections.abc.Mapping


def test_never_imports_and_never_runs_module_getattr() -> None:
    code = textwrap.dedent("""
        import json, sys, types
        from savegame.savers.serde import imported_class
        lazy = types.ModuleType("lazy_mod")
        calls = []
        def __getattr__(name):
            calls.append(name)
            raise AttributeError(name)
        lazy.__getattr__ = __getattr__
        sys.modules["lazy_mod"] = lazy
        assert imported_class("savegame_never_imported_mod.Thing", object) is None
        assert imported_class("json.decoder.JSONDecoder", object) is not None
        assert imported_class("lazy_mod.Thing", object) is None
        assert calls == [], calls
        assert "savegame_never_imported_mod" not in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
