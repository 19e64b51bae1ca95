"""Helpers shared by the conformance tests (imported as a plain module: no package)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


def assert_same(actual: Any, expected: Any, path: str = "state") -> None:
    """Deep equality that also checks exact types (a tuple stays a tuple, an int key stays
    an int, 1 is not 1.0), NaNs, signed zeros and the tzinfo of datetimes and times."""
    assert type(actual) is type(expected), (
        f"{path}: type {type(actual).__qualname__} != {type(expected).__qualname__}"
    )
    if isinstance(expected, float):
        if math.isnan(expected):
            assert math.isnan(actual), f"{path}: {actual!r} is not nan"
        else:
            assert actual == expected, f"{path}: {actual!r} != {expected!r}"
            assert math.copysign(1.0, actual) == math.copysign(1.0, expected), (
                f"{path}: sign of {actual!r} != sign of {expected!r}"
            )
    elif isinstance(expected, Decimal):
        assert actual.as_tuple() == expected.as_tuple(), f"{path}: {actual!r} != {expected!r}"
    elif isinstance(expected, dict):
        assert list(actual) == list(expected) or set(actual) == set(expected), (
            f"{path}: keys {list(actual)!r} != {list(expected)!r}"
        )
        for key, value in expected.items():
            match = [k for k in actual if k == key and type(k) is type(key)]
            assert match, f"{path}: key {key!r} ({type(key).__qualname__}) missing"
            assert_same(actual[key], value, f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{index}]")
    elif isinstance(expected, (set, frozenset)):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        for item in expected:
            twin = next(a for a in actual if a == item)
            assert_same(twin, item, f"{path}{{{item!r}}}")
    elif isinstance(expected, (dt.datetime, dt.time)):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None), path
        assert actual.fold == expected.fold, f"{path}: fold differs"
        assert type(actual.tzinfo) is type(expected.tzinfo), (
            f"{path}: tzinfo {actual.tzinfo!r} != {expected.tzinfo!r}"
        )
        assert actual.tzinfo == expected.tzinfo, (
            f"{path}: tzinfo {actual.tzinfo!r} != {expected.tzinfo!r}"
        )
        if isinstance(expected, dt.datetime):
            assert actual.tzname() == expected.tzname(), f"{path}: tzname differs"
            assert actual.utcoffset() == expected.utcoffset(), f"{path}: offset differs"
    elif dataclasses.is_dataclass(expected):
        for field in dataclasses.fields(expected):
            assert_same(
                getattr(actual, field.name), getattr(expected, field.name),
                f"{path}.{field.name}",
            )
    elif hasattr(type(expected), "__attrs_attrs__"):
        for attribute in type(expected).__attrs_attrs__:
            assert_same(
                getattr(actual, attribute.name), getattr(expected, attribute.name),
                f"{path}.{attribute.name}",
            )
    elif hasattr(type(expected), "model_fields"):
        for name in type(expected).model_fields:
            assert_same(getattr(actual, name), getattr(expected, name), f"{path}.{name}")
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
    elif isinstance(expected, Mapping):
        assert dict(actual) == dict(expected), f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def assert_checkpoint(actual: Any, expected: Any) -> None:
    """Two checkpoints are the same: every envelope field equal, states exactly the same."""
    assert actual is not None, "checkpoint missing"
    for name in ("thread_id", "namespace", "id", "parent_id", "step", "node_id",
                 "next_node_id", "created_at"):
        assert getattr(actual, name) == getattr(expected, name), (
            f"{name}: {getattr(actual, name)!r} != {getattr(expected, name)!r}"
        )
    assert dict(actual.metadata) == dict(expected.metadata)
    assert_same(dict(actual.state), dict(expected.state))
