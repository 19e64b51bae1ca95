"""A growing list channel serialized without serializing its old elements again.

A chat's ``messages`` channel is a new list at every step that holds the previous step's
message objects plus one or two new ones, and LangGraph's ``JsonPlusSerializer`` spends
~3 us a message on it (pydantic's ``model_dump`` per message): at 200 turns, most of a
put's CPU. MessagePack is concatenative (an array is its header followed by its elements'
encodings), so the list's bytes are the header, the previous bytes of the elements that
are the same objects as before, and the new elements' encodings.

"The same" is the same object (``is``) whose shallow snapshot is equal: a field of a
message reassigned (``msg.content = ...``) is seen and that element serialized again; a
nested value changed in place (``msg.additional_kwargs["k"] = v``) is not. LangGraph's
reducers never change a stored value in place (``add_messages`` copies the list and puts
new message objects in it), and a node that mutates state in place is already outside what
LangGraph checkpoints reliably. IO-free: fed values and bytes, it returns bytes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["MIN_ITEMS", "Split", "array_head", "dump_list", "split_loaded"]

#: Lists shorter than this are serialized whole (nothing much to save).
MIN_ITEMS = 8
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


@dataclass(frozen=True, slots=True)
class Split:
    """A list value as serialized element by element: the elements (kept, so that the same
    object means the same element), their shallow snapshots, and where each element's
    bytes end after the ``head`` bytes of the array header."""

    items: tuple[Any, ...]
    shapes: list[Any]
    ends: list[int]
    head: int


def _shape(item: Any) -> Any:
    """What must stay equal for ``item``'s previous bytes to stay true (shallow)."""
    kind = type(item)
    if kind in _SCALARS:
        return item
    fields = getattr(item, "__dict__", None)
    if fields is not None:  # pydantic models (messages), dataclasses, plain objects
        extra = getattr(item, "__pydantic_extra__", None)
        return (tuple(fields.values()), tuple(extra.items()) if extra else None)
    if kind is dict:
        return tuple(item.items())
    if kind is list or kind is tuple:
        return tuple(item)
    return object()  # unknown (slotted objects, sets): never equal, always serialized again


def _equal(a: Any, b: Any) -> bool:
    """``a == b``, False where comparing raises or is not a truth value (an array field)."""
    try:
        return bool(a == b)
    except Exception:
        return False


def array_head(count: int) -> bytes:
    """The MessagePack header of an array of ``count`` elements."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def dump_list(dump: Callable[[Any], tuple[str, bytes]], value: list[Any],
              previous: Split | None, previous_data: bytes | None
              ) -> tuple[bytes, Split] | None:
    """``value``'s MessagePack bytes, reusing ``previous_data`` (the bytes ``previous``
    describes) for its leading elements that are unchanged, and how they split; None when
    an element does not serialize as MessagePack on its own (``None``, ``bytes``, a pickle
    fallback): the caller serializes the list whole."""
    shapes = [_shape(item) for item in value]
    kept = 0
    if previous is not None and previous_data is not None:
        same = list(map(operator.is_, value, previous.items))
        kept = same.index(False) if False in same else len(same)
        if not _equal(shapes[:kept], previous.shapes[:kept]):
            kept = next((i for i in range(kept) if not _equal(shapes[i], previous.shapes[i])),
                        kept)
    ends = previous.ends[:kept] if previous is not None and kept else []
    at = ends[-1] if ends else 0
    parts: list[bytes | memoryview] = [array_head(len(value))]
    if kept:
        assert previous is not None and previous_data is not None
        parts.append(memoryview(previous_data)[previous.head:previous.head + at])
    for item in value[kept:]:
        try:
            tag, data = dump(item)
        except Exception:  # the whole list's serialization says what is wrong
            return None
        if tag != "msgpack":
            return None
        parts.append(data)
        at += len(data)
        ends.append(at)
    return b"".join(parts), Split(tuple(value), shapes, ends, len(parts[0]))


def split_loaded(value: list[Any], data: bytes) -> Split | None:
    """How ``data``, the stored MessagePack array ``value`` was just loaded from, splits
    into its elements (their ends found by skipping, not decoding, each one), so the next
    put reuses the bytes of the loaded elements it still holds; None when ``data`` is not
    an array of ``len(value)`` elements."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(data) or 1)
    unpacker.feed(data)
    try:
        if unpacker.read_array_header() != len(value):
            return None
        head = unpacker.tell()
        ends = []
        for _ in value:
            unpacker.skip()
            ends.append(unpacker.tell() - head)
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData):
        return None
    if head + (ends[-1] if ends else 0) != len(data):
        return None
    return Split(tuple(value), [_shape(item) for item in value], ends, head)
