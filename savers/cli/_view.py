"""States as plain JSON-like views, for people: nothing stored is ever turned into an object.

savegame's msgpack extensions become readable values (datetimes as ISO text, sets as
lists, custom types as ``{"$type": name, ...fields}`` without looking the name up);
LangGraph channel values (``(tag, bytes)`` pairs its serializer wrote) are parsed the same
way, with LangGraph's constructor extensions shown as ``{"$type": "module.Name", ...}`` and
never imported; pickles are shown as their size, never loaded.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Mapping
from typing import Any

import msgpack

from .. import serde
from ..serde import Serializer

__all__ = ["ViewSerializer", "dig", "to_json", "view_state"]


class ViewSerializer(Serializer):
    """A serializer whose ``loads`` builds views (see the module doc); for reading only."""

    def loads(self, data: bytes) -> Any:
        return view_state(_unpack(data))


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext, strict_map_key=False, raw=False)


def _ext(code: int, data: bytes) -> Any:
    if code in (serde._TUPLE, serde._SET, serde._FROZENSET):
        return list(_unpack(data))
    if code == serde._BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == serde._DATETIME:
        y, mo, d, h, mi, s, us, fold, tz = _unpack(data)
        value = dt.datetime(y, mo, d, h, mi, s, us, fold=fold)
        return value.isoformat() + _tz_text(tz)
    if code == serde._DATE:
        return dt.date(*_unpack(data)).isoformat()
    if code == serde._TIME:
        h, mi, s, us, fold, tz = _unpack(data)
        return dt.time(h, mi, s, us, fold=fold).isoformat() + _tz_text(tz)
    if code == serde._TIMEDELTA:
        days, seconds, micros = _unpack(data)
        return {"$timedelta": dt.timedelta(days, seconds, micros).total_seconds()}
    if code == serde._UUID:
        return str(uuid.UUID(bytes=data))
    if code == serde._DECIMAL:
        return str(decimal.Decimal(data.decode()))
    if code == serde._BYTEARRAY:
        return bytes(data)
    if code == serde._ENUM:
        name, value = _unpack(data)
        return {"$enum": name, "value": value}
    if code == serde._OBJECT:
        name, fields = _unpack(data)
        return {"$type": name, **(fields if isinstance(fields, dict) else {"fields": fields})}
    if code == serde._PICKLE:
        return {"$pickle": f"{len(data)} bytes, not loaded"}
    return {"$ext": code, "size": len(data)}


def _tz_text(tz: Any) -> str:
    if tz is None:
        return ""
    if isinstance(tz, str):
        return f"[{tz}]"
    seconds = tz[0]
    sign = "+" if seconds >= 0 else "-"
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


# -- LangGraph ---------------------------------------------------------------------------
_LG_TAGS = {"msgpack", "json", "null", "bytes", "bytearray", "pickle"}


def view_state(state: Any) -> Any:
    """The view of a decoded state: a LangGraph checkpoint's channel values and other
    ``(tag, bytes)`` pairs are parsed in place."""
    if isinstance(state, dict) and "channel_values" in state and "channel_versions" in state:
        out = dict(state)
        values = state.get("channel_values")
        if isinstance(values, dict):
            out["channel_values"] = {key: _lg_value(value) for key, value in values.items()}
        for name in ("extra", "metadata"):
            if isinstance(state.get(name), dict):
                out[name] = {key: _lg_value(value) for key, value in state[name].items()}
        return out
    return state


def _lg_value(value: Any) -> Any:
    if not (isinstance(value, list) and len(value) == 2 and value[0] in _LG_TAGS
            and isinstance(value[1], bytes)):
        return value
    tag, data = value
    try:
        if tag == "null":
            return None
        if tag in ("bytes", "bytearray"):
            return data
        if tag == "json":
            return json.loads(data)
        if tag == "msgpack":
            return msgpack.unpackb(data, ext_hook=_lg_ext, strict_map_key=False, raw=False)
    except Exception as exc:  # shown, not raised: a view must never hide the rest
        return {"$undecodable": tag, "error": str(exc), "size": len(data)}
    return {"$pickle": f"{len(data)} bytes, not loaded"}


def _lg_ext(code: int, data: bytes) -> Any:
    """LangGraph's msgpack extensions (``jsonplus.py``): 0-5 name a constructor by module
    and name with its arguments; shown, never imported or called."""
    try:
        parts = msgpack.unpackb(data, ext_hook=_lg_ext, strict_map_key=False, raw=False)
    except Exception:
        return {"$ext": code, "size": len(data)}
    if code in (0, 1, 2, 3, 4, 5) and isinstance(parts, list) and len(parts) >= 3:
        name = f"{parts[0]}.{parts[1]}"
        args = parts[2]
        if isinstance(args, dict):
            return {"$type": name, **args}
        return {"$type": name, "args": args}
    if code == 7 and isinstance(parts, list) and parts:
        return {"$delta_snapshot": parts[0] if len(parts) == 1 else parts}
    return {"$ext": code, "value": parts}


# -- paths and JSON ----------------------------------------------------------------------
def dig(view: Any, path: str) -> Any:
    """``messages.-1.content`` in a view: dict keys, list indexes (negative from the end).
    On a LangGraph checkpoint a path may start at a channel name (``messages``)."""
    if not path:
        return view
    parts = path.split(".")
    if (isinstance(view, dict) and parts[0] not in view
            and isinstance(view.get("channel_values"), dict)
            and parts[0] in view["channel_values"]):
        view = view["channel_values"]
    current = view
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the state"
        if isinstance(current, Mapping):
            if part not in current:
                raise KeyError(f"{where} has no key {part!r} (keys: "
                               f"{', '.join(map(str, list(current)[:12]))})")
            current = current[part]
        elif isinstance(current, list):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                raise KeyError(f"{where} is a list of {len(current)}; {part!r} is not an "
                               "index in it") from None
        else:
            raise KeyError(f"{where} is a {type(current).__name__}, not a mapping or list")
    return current


def to_json(value: Any) -> Any:
    """A view made JSON-safe: bytes as ``{"$bytes": base64, "size": n}``, keys as text."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else json.dumps(to_json(k)): to_json(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode(), "size": len(value)}
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value
