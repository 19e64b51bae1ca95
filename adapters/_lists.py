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

Loading runs the same way back (:func:`load_list`): a stored list whose leading elements
have the bytes last made from, or loaded into, objects still held is loaded as those
objects plus the new elements, so resuming a thread does not deserialize its whole
conversation again. An object is only handed out again if it loads back equal from its
bytes (checked once, when its bytes are made) and no field of it was reassigned since.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["MIN_ITEMS", "Split", "array_head", "dump_list", "load_list", "split_loaded"]

#: Lists shorter than this are serialized whole (nothing much to save).
MIN_ITEMS = 8
#: A put checks that its new elements load back equal (so that a later load may hand the
#: objects out again) when it serializes at most this many of them; a list serialized
#: afresh is loaded afresh once.
_CHECK_MAX = 8
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


@dataclass(frozen=True, slots=True)
class Split:
    """A list value as serialized element by element: the elements (kept, so that the same
    object means the same element), their shallow snapshots, where each element's bytes
    end after the ``head`` bytes of the array header, and which elements load back equal
    from their bytes (``exact``: loaded from them, or checked when they were made)."""

    items: tuple[Any, ...]
    shapes: list[Any]
    ends: list[int]
    head: int
    exact: list[bool]


def _shape(item: Any) -> Any:
    """What must stay equal for ``item``'s previous bytes to stay true (shallow)."""
    kind = type(item)
    if kind in _SCALARS:
        return item
    fields = getattr(item, "__dict__", None)
    if fields is not None:  # pydantic models (messages), dataclasses, plain objects
        extra = getattr(item, "__pydantic_extra__", None)
        return (dict(fields), dict(extra)) if extra else dict(fields)
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


_pydantic_extra = operator.attrgetter("__pydantic_extra__")


def _unchanged(items: Sequence[Any], previous: Split, count: int) -> int:
    """How many of the first ``count`` of ``items`` still have the snapshots ``previous``
    took of them. Objects whose fields all sit in their ``__dict__`` (messages: pydantic
    models without extra fields) are compared in one C-level pass of their live
    ``__dict__`` against the snapshot copies, with no snapshot taken again."""
    head, before = items[:count], previous.shapes[:count]
    try:
        if not any(map(_pydantic_extra, head)) and list(map(vars, head)) == before:
            return count
    except Exception:  # not such objects, or a field whose == raises: one by one
        pass
    shapes = [_shape(item) for item in head]
    if _equal(shapes, before):
        return count
    return next((i for i in range(count) if not _equal(shapes[i], before[i])), count)


def array_head(count: int) -> bytes:
    """The MessagePack header of an array of ``count`` elements."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def dump_list(dump: Callable[[Any], tuple[str, bytes]], value: list[Any],
              previous: Split | None, previous_data: bytes | None,
              loads: Callable[[tuple[str, bytes]], Any] | None = None,
              ) -> tuple[bytes, Split] | None:
    """``value``'s MessagePack bytes, reusing ``previous_data`` (the bytes ``previous``
    describes) for its leading elements that are unchanged, and how they split; None when
    an element does not serialize as MessagePack on its own (``None``, ``bytes``, a pickle
    fallback): the caller serializes the list whole. ``loads``: the serializer's loader,
    to mark the new elements that load back equal (see :func:`load_list`)."""
    kept = 0
    if previous is not None and previous_data is not None:
        same = list(map(operator.is_, value, previous.items))
        kept = _unchanged(value, previous, same.index(False) if False in same else len(same))
    shapes = [*previous.shapes[:kept]] if previous is not None and kept else []
    shapes += [_shape(item) for item in value[kept:]]
    ends = previous.ends[:kept] if previous is not None and kept else []
    exact = previous.exact[:kept] if previous is not None and kept else []
    check = loads is not None and len(value) - kept <= _CHECK_MAX
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
        exact.append(check and _loads_back(loads, item, data))
    return b"".join(parts), Split(tuple(value), shapes, ends, len(parts[0]), exact)


def _loads_back(loads: Any, item: Any, data: bytes) -> bool:
    """Does ``data``, made from ``item``, load back as an equal value of the same type?"""
    try:
        back = loads(("msgpack", data))
    except Exception:
        return False
    return type(back) is type(item) and _equal(back, item)


def _read_head(data: bytes) -> tuple[int, int] | None:
    """(element count, header length) of a MessagePack array, None if ``data`` is not one."""
    if not data:
        return None
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big"), 3
    if first == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big"), 5
    return None


def load_list(loads: Callable[[tuple[str, bytes]], Any], data: bytes, previous: Split,
              previous_data: bytes) -> tuple[list[Any], Split] | None:
    """The list stored as ``data``, and how it splits: its leading elements whose bytes
    are those ``previous`` holds (made from or loaded into ``previous.items``, which load
    back equal and whose fields were not reassigned since) are those objects again, the
    rest is loaded. None when ``data`` is not a MessagePack array of loadable elements:
    the caller loads it whole."""
    parsed = _read_head(data)
    if parsed is None:
        return None
    count, head = parsed
    items = previous.items

    def same_bytes(k: int) -> bool:
        end = previous.ends[k - 1]
        return data[head:head + end] == previous_data[previous.head:previous.head + end]

    low, high = 0, min(count, len(items))  # the longest prefix with equal bytes
    if high and not same_bytes(high):
        while low < high - 1:  # invariant: same_bytes(low) (or low == 0), not high
            middle = (low + high) // 2
            low, high = (middle, high) if same_bytes(middle) else (low, middle)
        high = low
    exact = previous.exact[:high]
    kept = exact.index(False) if False in exact else high
    kept = _unchanged(items, previous, kept)
    start = previous.ends[kept - 1] if kept else 0
    rest = Split((), [], [], 0, [])
    if kept < count:
        tail_data = array_head(count - kept) + data[head + start:]
        try:
            tail = loads(("msgpack", tail_data))
        except Exception:
            return None
        loaded = split_loaded(tail, tail_data) if type(tail) is list else None
        if loaded is None:
            return None
        rest = loaded
    value = [*items[:kept], *rest.items]
    return value, Split(tuple(value), [*previous.shapes[:kept], *rest.shapes],
                        [*previous.ends[:kept], *(start + end for end in rest.ends)], head,
                        [*previous.exact[:kept], *rest.exact])


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
    return Split(tuple(value), [_shape(item) for item in value], ends, head,
                 [True] * len(value))
