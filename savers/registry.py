"""Store URIs: ``open_saver("mongodb://host/appdb")`` builds the saver a URI names.

One table maps each scheme to the *dotted path* of its saver classes (sync and async) and
the extra that brings their driver, in the manner of fsspec's ``known_implementations``:
nothing is imported until a URI of that scheme is opened, and a missing driver raises
:class:`~savegame.savers.errors.MissingDependencyError` with the pip command. Each class
has a ``from_uri(uri, **options)`` constructor. Third-party savers plug in through the
``savegame.savers`` entry-point group (name = scheme, value = ``"module:Class"``; an
``async+<scheme>`` entry names a separate async class), or in-process with
:func:`register_saver`. Only installed distributions and the caller name classes: nothing
is ever imported by a name read from storage.

Built-in schemes:

==========================  ==========================================================
``memory://NAME``           a process-local named store (``memory://`` alone: a fresh
                            one); ``?load=ARCHIVE`` preloads it from an export archive
``mongodb://``,             MongoDB; the database is the URI's path
``mongodb+srv://``          (``mongodb://host/appdb``; default ``savegame``)
``file:///PATH``            the file store (``savegame.savers.file``)
``redis://``, ``rediss://``,  Redis; the database number is the URI's path
``unix://``                 (``redis://host:6379/2``)
==========================  ==========================================================
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import MappingProxyType
from typing import Any

from .base import BaseSaver
from .errors import MissingDependencyError, SavegameError

__all__ = [
    "UnknownSchemeError",
    "as_saver",
    "known_schemes",
    "open_async_saver",
    "open_saver",
    "register_saver",
]

ENTRY_POINT_GROUP = "savegame.savers"


class UnknownSchemeError(SavegameError, ValueError):
    """A URI names a scheme no saver is registered for, or whose saver is unavailable."""


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where the savers of one scheme live: ``"module:Class"`` paths (or classes), and the
    extra that installs their driver (None: nothing beyond savegame)."""

    sync: str | type[BaseSaver]
    asynchronous: str | type[BaseSaver] | None = None
    extra: str | None = None
    #: the module a missing extra makes unimportable (checked to tell a missing driver from
    #: a saver that has not been written yet)
    driver: str | None = None


_MONGODB = _Entry("savegame.savers.mongodb:MongoSaver",
                  "savegame.savers.mongodb:AsyncMongoSaver", "mongodb", "pymongo")
_FILE = _Entry("savegame.savers.file:FileSystemSaver",
               "savegame.savers.file:AsyncFileSystemSaver")
_REDIS = _Entry("savegame.savers.redis:RedisSaver", "savegame.savers.redis:AsyncRedisSaver",
                "redis", "redis")

_BUILTIN: dict[str, _Entry] = {
    "memory": _Entry("savegame.savers.memory:MemorySaver"),
    "mongodb": _MONGODB,
    "mongodb+srv": _MONGODB,
    "file": _FILE,
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
}

_registered: dict[str, _Entry] = {}
_lock = threading.Lock()


def register_saver(
    scheme: str,
    saver: str | type[BaseSaver],
    async_saver: str | type[BaseSaver] | None = None,
    *,
    extra: str | None = None,
    clobber: bool = False,
) -> None:
    """Open ``scheme://`` URIs with ``saver`` (a class or ``"module:Class"``, imported on
    first use), and with ``async_saver`` in :func:`open_async_saver` (default: ``saver``).
    ``extra`` names the savegame extra of its driver. Refuses to replace a registration
    unless ``clobber``; built-in schemes cannot be replaced."""
    scheme = _check_scheme(scheme)
    with _lock:
        if scheme in _BUILTIN or (scheme in _registered and not clobber):
            raise ValueError(f"scheme {scheme!r} is already registered "
                             f"(pass clobber=True to replace a registration)")
        _registered[scheme] = _Entry(saver, async_saver, extra)


def known_schemes() -> Mapping[str, str]:
    """Every scheme :func:`open_saver` knows, with the class path it opens (read-only)."""
    out = {scheme: _name(entry.sync) for scheme, entry in _BUILTIN.items()}
    for point in _entry_points():
        if not point.name.startswith("async+"):
            out.setdefault(point.name, point.value)
    out.update((scheme, _name(entry.sync)) for scheme, entry in _registered.items())
    return MappingProxyType(out)


def open_saver(uri: str, **options: Any) -> BaseSaver:
    """The saver a store URI names, for sync use (its async methods work too): options go
    to the class's ``from_uri``. Close it (``with`` block or ``close()``) when done."""
    return _open(uri, False, options)


def open_async_saver(uri: str, **options: Any) -> BaseSaver:
    """The async twin of :func:`open_saver`: the native async saver where the scheme has
    one (``AsyncMongoSaver`` for ``mongodb://``); use its ``a``-methods and ``aclose``."""
    return _open(uri, True, options)


def as_saver(
    saver_or_uri: BaseSaver | str, *, asynchronous: bool = False, what: str = "saver"
) -> tuple[BaseSaver, bool]:
    """``(saver, owned)`` for what an adapter was given: a saver is used as it is (the
    caller closes it); a URI is opened here and ``owned`` is True (the adapter closes it)."""
    if isinstance(saver_or_uri, str):
        opener = open_async_saver if asynchronous else open_saver
        return opener(saver_or_uri), True
    if not isinstance(saver_or_uri, BaseSaver):
        raise TypeError(f"{what} must be a savegame saver or a store URI, "
                        f"got {type(saver_or_uri).__qualname__}")
    return saver_or_uri, False


def saver_factory(uri: str, *, asynchronous: bool = False) -> Callable[[], BaseSaver]:
    """A picklable callable opening ``uri`` (for adapters that reconnect lazily)."""
    return functools.partial(open_async_saver if asynchronous else open_saver, uri)


# -- internals ---------------------------------------------------------------------------
def _check_scheme(scheme: str) -> str:
    if not isinstance(scheme, str) or not scheme or not (scheme[0].isalpha() and all(
            c.isalnum() or c in "+-." for c in scheme)):
        raise ValueError(f"not a URI scheme: {scheme!r}")
    return scheme.lower()


def scheme_of(uri: str) -> str:
    """The scheme of a store URI, lower-cased (``"mongodb"`` for ``mongodb://...``)."""
    if not isinstance(uri, str):
        raise TypeError(f"a store URI must be a str, got {type(uri).__qualname__}")
    head, sep, _ = uri.partition("://")
    if not sep:
        raise UnknownSchemeError(
            f"not a store URI: {_redact(uri)!r} (expected scheme://..., e.g. memory://, "
            "mongodb://host/db, file:///path, redis://host/0)")
    try:
        return _check_scheme(head)
    except ValueError:
        raise UnknownSchemeError(f"not a store URI: {_redact(uri)!r}") from None


def _redact(uri: str) -> str:
    """The URI without its password, for error messages."""
    head, sep, rest = uri.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return uri
    userinfo, _, host = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{head}://{user}:***@{host}"


@functools.lru_cache(maxsize=1)
def _entry_points() -> tuple[metadata.EntryPoint, ...]:
    return tuple(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_for(scheme: str) -> _Entry | None:
    if scheme in _BUILTIN:
        return _BUILTIN[scheme]
    with _lock:
        if scheme in _registered:
            return _registered[scheme]
    points = {point.name: point for point in _entry_points()}
    if scheme not in points:
        _entry_points.cache_clear()  # a distribution installed since the last look
        points = {point.name: point for point in _entry_points()}
    if scheme in points:
        async_point = points.get(f"async+{scheme}")
        return _Entry(points[scheme].value, async_point.value if async_point else None)
    return None


def _name(target: str | type[BaseSaver]) -> str:
    return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def _load(target: str | type[BaseSaver], scheme: str, entry: _Entry) -> type[BaseSaver]:
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except MissingDependencyError:
        raise
    except ImportError as exc:
        if entry.driver is not None and entry.extra is not None:
            try:
                importlib.import_module(entry.driver)
            except ImportError:
                raise MissingDependencyError(entry.driver, entry.extra) from exc
        if exc.name is not None and module_name.startswith(exc.name):
            raise UnknownSchemeError(
                f"{scheme}:// stores need {module_name}, which this savegame does not have "
                "(that saver has not landed in this version, or its plug-in is not installed)"
            ) from exc
        raise
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseSaver)):
        raise UnknownSchemeError(f"{scheme}:// is registered as {target!r}, "
                                 "which is not a savegame saver class")
    return cls


def _open(uri: str, asynchronous: bool, options: dict[str, Any]) -> BaseSaver:
    scheme = scheme_of(uri)
    entry = _entry_for(scheme)
    if entry is None:
        known = ", ".join(f"{s}://" for s in sorted(known_schemes()))
        raise UnknownSchemeError(f"no saver for {scheme}:// URIs (known: {known}; plug-ins "
                                 f"register in the {ENTRY_POINT_GROUP!r} entry-point group)")
    target = entry.asynchronous if asynchronous and entry.asynchronous else entry.sync
    cls = _load(target, scheme, entry)
    from_uri = getattr(cls, "from_uri", None)
    if from_uri is None:
        raise UnknownSchemeError(f"{cls.__qualname__} has no from_uri(uri, **options)")
    saver = from_uri(uri, **options)
    if not isinstance(saver, BaseSaver):
        raise UnknownSchemeError(f"{cls.__qualname__}.from_uri returned "
                                 f"{type(saver).__qualname__}, not a saver")
    return saver
