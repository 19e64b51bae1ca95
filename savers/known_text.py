"""Short forms of the names every checkpoint repeats (IO-free).

Metadata keys, channel names and task paths are the same few words in checkpoint after
checkpoint (LangGraph's ``source``/``loop``/``parents``, ``messages``, ``~__pregel_pull,
<node>``; Burr's ``partition_key``; ...). A store that keeps them beside every record pays
for them thousands of times. ``pack_text`` writes a name that is, or starts with, entry
``i`` of ``KNOWN`` as the byte ``0x80 + i`` followed by the rest: UTF-8 text never starts
with a byte of 0x80-0xBF (a continuation byte), so a packed name can never be mistaken for
text, and text written before this module existed reads back unchanged.

``KNOWN`` is part of the stored format: entries may be appended, never changed or moved.
Packing is deterministic, so two names are equal exactly when their packed forms are
(a server-side filter compares packed forms).
"""

from __future__ import annotations

from typing import Any

__all__ = ["KNOWN", "pack_text", "unpack_text", "pack_names", "unpack_names"]

#: Append only (at most 64 entries): the index of an entry is stored.
KNOWN: tuple[str, ...] = (
    # LangGraph task paths and channels
    "~__pregel_pull, ", "~__pregel_push, ", "branch:to:", "messages", "__start__",
    "__end__", "__interrupt__", "__error__", "__resume__", "__scheduled__", "__return__",
    "__no_writes__",
    # LangGraph metadata
    "source", "loop", "input", "update", "fork", "step", "parents", "writes",
    # Burr metadata
    "partition_key", "app_id", "sequence_id", "status", "completed", "failed",
    # LlamaIndex metadata
    "framework", "workflow", "run_id", "reason", "running", "pending_input", "pending",
    "llamaindex",
)
_LEAD = 0x80
assert len(KNOWN) <= 64
_EXACT = {name: bytes((_LEAD + index,)) for index, name in enumerate(KNOWN)}
#: Entries that also stand for the start of a longer name, longest first.
_PREFIXES = sorted(((name.encode(), index) for index, name in enumerate(KNOWN)
                    if name.endswith((", ", ":"))), key=lambda item: -len(item[0]))
_NAMES = tuple(name.encode() for name in KNOWN)


def pack_text(text: str) -> bytes:
    """``text`` as bytes: its short form when it is or starts with a known name (and that
    is shorter), else its UTF-8 bytes (lone surrogates kept)."""
    exact = _EXACT.get(text)
    if exact is not None and len(text) > 1:
        return exact
    data = text.encode("utf-8", "surrogatepass")
    for prefix, index in _PREFIXES:
        if data.startswith(prefix):
            return bytes((_LEAD + index,)) + data[len(prefix):]
    return data


def unpack_text(data: bytes) -> str:
    """The text ``pack_text`` was given (plain UTF-8 reads as itself); an unknown index
    raises ``ValueError``."""
    if data and 0x80 <= data[0] < 0xC0:
        index = data[0] - _LEAD
        if index >= len(_NAMES):
            raise ValueError(f"unknown short name {data[:1]!r}")
        data = _NAMES[index] + data[1:]
    return data.decode("utf-8", "surrogatepass")


def pack_names(value: Any) -> Any:
    """A JSON-like value (metadata) with every text, keys included, packed."""
    if isinstance(value, str):
        return pack_text(value)
    if isinstance(value, dict):
        return {pack_names(key): pack_names(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [pack_names(item) for item in value]
    return value


def unpack_names(value: Any) -> Any:
    """The inverse of ``pack_names`` for a value read with raw strings as bytes (every
    raw string is text: metadata holds no bytes)."""
    if isinstance(value, bytes):
        return unpack_text(value)
    if isinstance(value, list):
        return [unpack_names(item) for item in value]
    if isinstance(value, dict):
        return {unpack_names(key): unpack_names(item) for key, item in value.items()}
    return value
