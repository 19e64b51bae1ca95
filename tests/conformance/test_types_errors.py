"""Every supported type round-trips through a saver; every bad input is refused before
anything is stored."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import uuid
import zoneinfo
from decimal import Decimal

import attrs
import pydantic
import pytest
from conformance_support import assert_checkpoint, assert_same

from savegame.savers import Checkpoint, SerializationError, errors
from savegame.savers.serde import register_type

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class ToolCall:
    name: str
    args: dict[str, object]


@dataclasses.dataclass
class Message:
    role: str
    content: str
    tool: object = None
    at: dt.datetime | None = None


@dataclasses.dataclass
class Scored:
    score: float
    label: str
    items: list[int]


@attrs.define
class Point:
    x: int
    y: int
    tags: tuple[str, ...] = ()


class User(pydantic.BaseModel):
    name: str
    age: int
    joined: dt.datetime
    friends: list[str] = []


class Team(pydantic.BaseModel):
    lead: User
    members: list[User]


register_type(Color, name="savegame.conformance.types.Color")
register_type(Level, name="savegame.conformance.types.Level")
register_type(ToolCall, name="savegame.conformance.types.ToolCall")
register_type(Message, name="savegame.conformance.types.Message")
register_type(Scored, name="savegame.conformance.types.Scored")
register_type(Point, name="savegame.conformance.types.Point")
register_type(User, name="savegame.conformance.types.User")
register_type(Team, name="savegame.conformance.types.Team")


class Unregistered:
    def __repr__(self) -> str:
        return "Unregistered()"


@dataclasses.dataclass
class UnregisteredData:
    value: int


def cp(thread: str = "t", **kw: object) -> Checkpoint:
    kw.setdefault("state", {})
    return Checkpoint(thread_id=thread, **kw)  # type: ignore[arg-type]


VALUES = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int64_max": 2**63 - 1,
    "uint64_max": 2**64 - 1,
    "int64_min": -(2**63),
    "big": 2**100,
    "big_negative": -(2**100) - 7,
    "huge": 10**400,
    "float": 1.5,
    "nan": math.nan,
    "inf": math.inf,
    "neg_inf": -math.inf,
    "neg_zero": -0.0,
    "str": "héllo \x00 wörld 🎉",
    "empty_str": "",
    "bytes": b"\x00\xff raw",
    "bytearray": bytearray(b"\x01\x02"),
    "list": [1, "a", None, [2.5]],
    "tuple": (1, ("nested", (2,)), []),
    "empty_tuple": (),
    "int_keys": {1: "one", 2: {3: "three"}, -1: None},
    "mixed_keys": {"a": 1, 2: "b", (1, 2): "tuple key"},
    "set": {1, 2, 3},
    "mixed_set": {1, "a", (2, 3)},
    "frozenset": frozenset({"a", "b"}),
    "empty_set": set(),
    "naive_datetime": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
    "utc_datetime": dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone.utc),
    "offset_datetime": dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5,
                                                                                       minutes=-30))),
    "named_offset_datetime": dt.datetime(2024, 7, 1, tzinfo=dt.timezone(dt.timedelta(hours=2),
                                                                        "CEST")),
    "paris_datetime": dt.datetime(2024, 7, 14, 10, 30, tzinfo=PARIS),
    "paris_fold": dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1),
    "date": dt.date(1969, 7, 20),
    "time": dt.time(23, 59, 1, 5),
    "tz_time": dt.time(8, 0, tzinfo=dt.timezone.utc),
    "paris_time": dt.time(8, 0, tzinfo=PARIS),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": Decimal("3.14159265358979323846264338327950288"),
    "decimal_neg_zero": Decimal("-0.00"),
    "decimal_nan": Decimal("NaN"),
    "enum": Color.RED,
    "enum_int": Color.GREEN,
    "int_enum": Level.HIGH,
    "dataclass": Message("assistant", "hi", ToolCall("search", {"q": "x", "n": (1, 2)}),
                         dt.datetime(2024, 5, 1, tzinfo=PARIS)),
    "dataclass_int_in_float_field": Scored(1, "int score", [1, 2]),
    "attrs": Point(1, 2, ("a", "b")),
    "pydantic": User(name="ada", age=36, joined=dt.datetime(1840, 1, 1, tzinfo=dt.timezone.utc),
                     friends=["charles"]),
    "pydantic_nested": Team(
        lead=User(name="a", age=1, joined=dt.datetime(2020, 1, 1)),
        members=[User(name="b", age=2, joined=dt.datetime(2021, 1, 1, tzinfo=PARIS))],
    ),
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_type_round_trips(api, name):
    state = {"value": VALUES[name], "inside": [VALUES[name]], "keyed": {"k": (VALUES[name],)}}
    put = api.put(cp(state=state))
    assert_same(dict(api.get("t").state), state)
    assert_same(dict(api.list("t")[0].state), state)
    api.saver._cache.clear()
    assert_same(dict(api.get("t", put.id).state), state)


def test_all_types_in_one_state_and_as_deltas(api):
    put = api.put(cp(state=dict(VALUES)))
    follow = dict(VALUES, extra=[Message("user", "more")])
    child = api.put(cp(state=follow))
    api.saver._cache.clear()
    assert_same(dict(api.get("t", put.id).state), dict(VALUES))
    assert_same(dict(api.get("t", child.id).state), follow)
    special = api.get("t", put.id).state
    assert math.isnan(special["nan"])
    assert math.copysign(1.0, special["neg_zero"]) == -1.0
    assert special["paris_datetime"].tzinfo is PARIS or special["paris_datetime"].tzinfo == PARIS


# -- bad input ------------------------------------------------------------------------
def assert_empty(api, thread="t"):
    assert api.get(thread) is None
    assert api.list(thread) == []


def test_unregistered_object_names_path_and_type(api):
    state = {"a": [1, Unregistered()]}
    with pytest.raises(SerializationError) as info:
        api.put(cp(state=state))
    message = str(info.value)
    assert "state['a'][1]" in message
    assert "Unregistered" in message
    assert info.value.path == "state['a'][1]"
    assert "Unregistered" in (info.value.type_name or "")
    assert_empty(api)


def test_unregistered_object_inside_registered_dataclass(api):
    messages = [Message("user", str(i)) for i in range(3)]
    messages.append(Message("assistant", "call", tool=Unregistered()))
    first = api.put(cp(state={"messages": messages[:3]}))
    with pytest.raises(SerializationError) as info:
        api.put(cp(state={"messages": messages}))
    assert "state['messages'][3].tool" in str(info.value)
    assert "Unregistered" in str(info.value)
    assert_checkpoint(api.get("t"), first)
    assert len(api.list("t")) == 1


def test_unregistered_dataclass_and_key(api):
    with pytest.raises(SerializationError) as info:
        api.put(cp(state={"x": {"y": UnregisteredData(1)}}))
    assert "state['x']['y']" in str(info.value)
    assert "UnregisteredData" in str(info.value)
    with pytest.raises(SerializationError) as info:
        api.put(cp(state={"x": {Unregistered(): 1}}))
    assert "Unregistered" in str(info.value)
    assert_empty(api)


@pytest.mark.parametrize("state", [[("a", 1)], "text", None, 42, (("a", 1),)],
                         ids=["list", "str", "none", "int", "tuple"])
def test_state_not_a_mapping(api, state):
    with pytest.raises(SerializationError):
        api.put(cp(state=state))
    assert_empty(api)


@pytest.mark.parametrize(
    "thread", [{"$ne": ""}, 42, None, b"t", ""], ids=["query", "int", "none", "bytes", "empty"])
def test_bad_thread_id(api, thread):
    with pytest.raises((TypeError, ValueError)):
        api.put(Checkpoint(thread_id=thread, state={"x": 1}))  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        api.get(thread)
    with pytest.raises((TypeError, ValueError)):
        api.list(thread)
    with pytest.raises((TypeError, ValueError)):
        api.delete_thread(thread)
    assert api.saver is not None
    # nothing was stored anywhere: a list of every plausible thread is empty
    for name in ("", "t", "42", "None"):
        if name:
            assert_empty(api, name)


@pytest.mark.parametrize("namespace", [None, 1, {"$gt": ""}, b"ns"],
                         ids=["none", "int", "query", "bytes"])
def test_bad_namespace(api, namespace):
    with pytest.raises((TypeError, ValueError)):
        api.put(cp(state={"x": 1}, namespace=namespace))
    with pytest.raises((TypeError, ValueError)):
        api.get("t", namespace=namespace)
    with pytest.raises((TypeError, ValueError)):
        api.list("t", namespace=namespace)
    assert_empty(api)


@pytest.mark.parametrize("field,value", [("id", 5), ("id", ""), ("parent_id", {"$ne": 1}),
                                         ("node_id", 3)])
def test_bad_ids(api, field, value):
    with pytest.raises((TypeError, ValueError)):
        api.put(cp(state={"x": 1}, **{field: value}))
    assert_empty(api)


@pytest.mark.parametrize(
    "metadata",
    [
        {"$where": "1"},
        {"a.b": 1},
        {"nested": {"$gt": 1}},
        {"nested": [{"x.y": 1}]},
        {"": 1},
        {1: "int key"},
        {"when": dt.datetime(2024, 1, 1)},
        {"obj": Unregistered()},
        {"s": {1, 2}},
        {"b": b"bytes"},
        {"big": 2**70},
        ["not", "a", "mapping"],
        None,
    ],
    ids=["dollar", "dot", "nested-dollar", "nested-dot", "empty-key", "int-key", "datetime",
         "object", "set", "bytes", "big-int", "list", "none"],
)
def test_bad_metadata(api, metadata):
    first = api.put(cp(state={"x": 0}))
    with pytest.raises(SerializationError):
        api.put(cp(state={"x": 1}, metadata=metadata))
    assert_checkpoint(api.get("t"), first)
    assert len(api.list("t")) == 1


def test_bad_list_arguments(api):
    api.put(cp(state={"x": 0}))
    with pytest.raises(SerializationError):
        api.list("t", metadata={"$where": "1"})
    with pytest.raises((TypeError, ValueError)):
        api.list("t", limit=-1)
    with pytest.raises((TypeError, ValueError)):
        api.list("t", before=5)


def test_missing_dependency_error_is_an_import_error():
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.MissingDependencyError, errors.SavegameError)
    error = errors.MissingDependencyError("pymongo", "mongodb")
    assert "savegame[mongodb]" in str(error)
    assert "pip install" in str(error)
    try:
        from savegame.savers import MongoSaver
    except errors.MissingDependencyError as exc:
        assert "pip install" in str(exc)
        assert "savegame[mongodb]" in str(exc)
    else:
        assert callable(MongoSaver)


def test_every_error_has_one_base():
    for name in ("ConflictError", "CorruptCheckpointError", "MissingDependencyError",
                 "SerializationError"):
        assert issubclass(getattr(errors, name), errors.SavegameError)
    assert issubclass(errors.SerializationError, TypeError)
