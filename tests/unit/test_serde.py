"""Unit and property tests of savegame.savers.serde: exact round trips and refusals."""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import enum
import math
import os
import sys
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import attrs
import msgpack
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from savegame.savers import serde
from savegame.savers.errors import SavegameError, SerializationError
from savegame.savers.serde import Serializer, TypeRegistry, register_type

PARIS = zoneinfo.ZoneInfo("Europe/Paris")

# -- exact equality ----------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Exact equality: same types all the way down, nan == nan, -0.0 != 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, (set, frozenset)):
        if len(a) != len(b):
            return False
        unmatched = list(b)
        for x in a:
            for i, y in enumerate(unmatched):
                if same(x, y):
                    del unmatched[i]
                    break
            else:
                return False
        return True
    if isinstance(a, (dt.datetime, dt.time)):
        return (
            a == b
            and a.fold == b.fold
            and a.tzinfo == b.tzinfo
            and (a.utcoffset() == b.utcoffset() if isinstance(a, dt.datetime) else True)
        )
    return bool(a == b)


def test_same_is_strict() -> None:
    assert same(float("nan"), float("nan"))
    assert not same(0.0, -0.0)
    assert not same((1,), [1])
    assert not same(1, True)
    assert not same({"a": 1}, {"a": 1.0})
    assert same({1, "x"}, {"x", 1})


# -- registered types (a private registry, so the global one is untouched) ---------------

REG = TypeRegistry()
SER = Serializer(registry=REG)


class Color(enum.Enum):
    RED = "red"
    GREEN = (0, 1)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mood(str, enum.Enum):  # StrEnum-like
    HAPPY = "happy"
    SAD = "sad"


@dataclasses.dataclass
class Tool:
    name: str
    args: dict[str, Any]


@dataclasses.dataclass
class Message:
    role: str
    content: str
    tool: Any = None
    at: dt.datetime | None = None
    tags: tuple[str, ...] = ()
    mood: Mood = Mood.HAPPY
    computed: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.computed = len(self.content)


@attrs.define
class Account:
    _secret: int
    name: str = attrs.field(alias="label", default="anon")
    balance: Decimal = Decimal("0")
    opened: dt.date | None = None


class Profile(pydantic.BaseModel):
    user_id: uuid.UUID
    level: Level
    display: str = pydantic.Field(alias="displayName", default="x")
    history: list[Message] = []
    when: dt.datetime | None = None


class Unregistered:
    """Not registered anywhere; module level so pickle can find it."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is Unregistered and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


class UnregisteredEnum(enum.Enum):
    A = 1


for _cls in (Color, Level, Mood, Tool, Message, Account, Profile):
    REG.register(_cls, name=f"test_serde.{_cls.__name__}")


def roundtrip(value: Any, serializer: Serializer = SER) -> Any:
    return serializer.loads(serializer.dumps({"v": value}))["v"]


def assert_roundtrip(value: Any, serializer: Serializer = SER) -> Any:
    back = roundtrip(value, serializer)
    assert same(back, value), (value, back)
    return back


# -- builtins --------------------------------------------------------------------------

SCALARS = [
    None, True, False,
    0, 1, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1, -(2**100), 10**40,
    -(10**40), 2**1000,
    0.0, 1.5, -2.25, math.inf, -math.inf, 1e308, 5e-324,
    "", "hello", "ünïcødé ☃ 日本語 \U0001f600", "\x00nul", "a" * 70000,
    b"", b"\x00\xff" * 10,
]


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: f"{type(v).__name__}:{str(v)[:20]}")
def test_scalar_roundtrip(value: Any) -> None:
    assert_roundtrip(value)


@pytest.mark.parametrize("value", [bytearray(b"abc"), bytearray()], ids=repr)
def test_bytearray_roundtrip(value: bytearray) -> None:
    # msgpack packs bytearray as plain binary even with strict_types: it must be tagged.
    assert_roundtrip(value)
    assert_roundtrip({"a": [1, {"b": value}], "t": (value,), "s": [b"x", value]})


def test_float_specials() -> None:
    assert math.isnan(roundtrip(float("nan")))
    assert roundtrip(math.inf) == math.inf
    assert roundtrip(-math.inf) == -math.inf
    negzero = roundtrip(-0.0)
    assert negzero == 0.0 and math.copysign(1.0, negzero) == -1.0
    assert math.copysign(1.0, roundtrip(0.0)) == 1.0


def stable_repr(value: Any) -> str:
    """``repr`` with sets' members sorted: test ids must not depend on the hash seed (each
    pytest-xdist worker has its own, and all must collect the same ids)."""
    if isinstance(value, (set, frozenset)):
        members = ", ".join(sorted(map(stable_repr, value)))
        return (f"{{{members}}}" if type(value) is set and value
                else f"{type(value).__name__}({{{members}}})" if value
                else f"{type(value).__name__}()")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{stable_repr(k)}: {stable_repr(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(stable_repr, value)) + "]"
    return repr(value)


@pytest.mark.parametrize(
    "value",
    [
        [], (), [[]], ((),), [1, [2, (3, (4, [5]))]], (1, "a", None, (2.5, b"x")),
        ([1], [2]), {}, {"a": 1, "b": [1, 2]}, {1: "a", 2: "b"}, {1: "a", "1": "b"},
        {(1, 2): "t", (): "empty", ("a", (None, 1)): [1]}, {True: 1, None: 2, 2.5: 3},
        {b"k": 1}, {frozenset({1}): 1},
        set(), {1, 2, 3}, {"a", "b"}, {(1, 2), (3,)}, frozenset(), frozenset({1, "a", None}),
        {frozenset({1}), frozenset({2, 3})}, [set(), frozenset()],
    ],
    ids=stable_repr,
)
def test_container_roundtrip(value: Any) -> None:
    assert_roundtrip(value)


def test_dict_key_order_is_kept() -> None:
    value = {"z": 1, "a": 2, 3: 3, (1,): 4}
    assert list(roundtrip(value)) == ["z", "a", 3, (1,)]


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        dt.datetime(1, 1, 1),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(-dt.timedelta(hours=3, microseconds=7))),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=1, microseconds=1))),
        dt.datetime(2024, 7, 1, 12, 0, tzinfo=PARIS),
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS),  # ambiguous, fold=0
        dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),  # ambiguous, fold=1
        dt.datetime(2024, 3, 31, 2, 30, tzinfo=PARIS),  # imaginary
        dt.datetime(2024, 1, 1, fold=1),  # naive with fold
        dt.date(2024, 2, 29), dt.date(1, 1, 1), dt.date(9999, 12, 31),
        dt.time(), dt.time(23, 59, 59, 999999), dt.time(1, 2, 3, fold=1),
        dt.time(12, 0, tzinfo=dt.timezone.utc),
        dt.time(12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-7, microseconds=250))),
        dt.time(12, 0, tzinfo=PARIS),
        dt.timedelta(), dt.timedelta(days=-1, seconds=5), -dt.timedelta(microseconds=1),
        dt.timedelta(days=999999999, seconds=86399, microseconds=999999), dt.timedelta.min,
        uuid.UUID(int=0), uuid.UUID("7624c201-0385-47ab-bdf7-40c2256687c6"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("1.10"), Decimal("-0"), Decimal("0"), Decimal("1E+3"), Decimal("Infinity"),
        Decimal("-Infinity"), Decimal("NaN"), Decimal("-NaN"), Decimal("sNaN"),
        Decimal("1234567890123456789012345678901234567890.000000001"),
    ],
    ids=repr,
)
def test_value_type_roundtrip(value: Any) -> None:
    assert_roundtrip(value)


def test_fold_and_tz_survive() -> None:
    first = dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS)
    second = first.replace(fold=1)
    back1, back2 = roundtrip(first), roundtrip(second)
    assert back2.fold == 1 and back1.fold == 0
    assert back1.utcoffset() == dt.timedelta(hours=2)
    assert back2.utcoffset() == dt.timedelta(hours=1)
    assert back2.tzinfo is PARIS
    assert roundtrip(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)).tzinfo == dt.timezone.utc


def test_decimal_exact() -> None:
    for text in ["NaN", "-0", "1E+3", "1.000", "-1e-30"]:
        back = roundtrip(Decimal(text))
        assert type(back) is Decimal and str(back) == str(Decimal(text))
    assert roundtrip(Decimal("NaN")).is_nan()
    assert roundtrip(Decimal("-0")).is_signed()


def test_negative_timedelta() -> None:
    value = dt.timedelta(days=-3, hours=-4, microseconds=-5)
    assert roundtrip(value) == value


# -- registered types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [Color.RED, Color.GREEN, Level.LOW, Level.HIGH, Mood.SAD], ids=repr
)
def test_enum_roundtrip(value: enum.Enum) -> None:
    back = roundtrip(value)
    assert back is value


def test_int_and_str_enums_keep_their_type() -> None:
    back = roundtrip([Level.HIGH, 2, Mood.HAPPY, "happy"])
    assert [type(x) for x in back] == [Level, int, Mood, str]


def test_dataclass_roundtrip() -> None:
    msg = Message("assistant", "hi", tool=Tool("search", {"q": "x", "n": (1, 2)}),
                  at=dt.datetime(2024, 1, 1, tzinfo=PARIS), tags=("a", "b"), mood=Mood.SAD)
    back = roundtrip(msg)
    assert type(back) is Message and back == msg
    assert type(back.tool) is Tool and type(back.tool.args["n"]) is tuple
    assert back.at.tzinfo is PARIS and back.mood is Mood.SAD and back.computed == 2


def test_dataclass_field_values_are_not_coerced() -> None:
    # Values arrive decoded exactly; annotations must not convert them (bool stays bool,
    # a tuple in a field annotated with a list type stays a tuple, ints stay ints).
    msg = Message(role=True, content="x", tags=[1, 2], tool=1.0)  # type: ignore[arg-type]
    back = roundtrip(msg)
    assert back.role is True and type(back.tags) is list and type(back.tool) is float


def test_attrs_roundtrip_with_alias_and_private_attribute() -> None:
    acct = Account(42, label="alice", balance=Decimal("-0.10"), opened=dt.date(2020, 1, 2))
    back = roundtrip(acct)
    assert type(back) is Account and back == acct
    assert back._secret == 42 and back.name == "alice"
    assert str(back.balance) == "-0.10"


def test_pydantic_roundtrip() -> None:
    profile = Profile(
        user_id=uuid.uuid4(), level=Level.HIGH, displayName="Bob",
        history=[Message("user", "hello")], when=dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc),
    )
    back = roundtrip(profile)
    assert type(back) is Profile and back == profile
    assert back.display == "Bob" and type(back.history[0]) is Message
    assert back.level is Level.HIGH


def test_nesting_everything() -> None:
    value = {
        "messages": [
            Message("user", "hi", tool=Tool("t", {"d": Decimal("1E+3")})),
            Message("assistant", "ok", at=dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS)),
        ],
        "accounts": {(1, "a"): Account(1), frozenset({Color.RED}): [Account(2, label="b")]},
        "profile": Profile(user_id=uuid.UUID(int=5), level=Level.LOW),
        "sets": {Level.LOW, Mood.SAD, Color.GREEN},
        "when": (dt.date(2024, 1, 1), dt.time(1, tzinfo=PARIS), -dt.timedelta(days=1)),
        "blob": b"\x00" * 5,
        "numbers": [2**64, -(2**100), float("nan"), -0.0, math.inf],
    }
    back = roundtrip(value)
    assert same(back, value)


def test_equal_sets_give_equal_bytes() -> None:
    def build(*items: Any) -> set[Any]:
        out: set[Any] = set()
        for item in items:
            out.add(item)
        return out

    cases = [
        ((1, 9, 17, 3), (17, 3, 9, 1)),
        (("a", "b", "c"), ("c", "a", "b")),
        ((1, 9, "x", None), (9, "x", None, 1)),  # unsortable mix; 1 and 9 collide
        ((frozenset({1}), frozenset({2}), frozenset({9})),
         (frozenset({9}), frozenset({2}), frozenset({1}))),
        ((Decimal("NaN"), Decimal(1), Decimal(9)), (Decimal(9), Decimal(1), Decimal("NaN"))),
        ((1.5, math.inf, 9.0, 1.0), (1.0, 9.0, math.inf, 1.5)),
        (((1, "a"), (1, 2), (9, None)), ((9, None), (1, 2), (1, "a"))),
        ((Level.LOW, Level.HIGH, Color.RED), (Color.RED, Level.HIGH, Level.LOW)),
    ]
    for left, right in cases:
        a, b = build(*left), build(*right)
        assert same(a, b)  # (== is not enough: Decimal('NaN') != Decimal('NaN'))
        assert SER.dumps({"v": a}) == SER.dumps({"v": b}), (list(a), list(b))
        assert SER.dumps({"v": frozenset(a)}) == SER.dumps({"v": frozenset(b)})
        assert same(roundtrip(a), a)


def test_register_type_global_decorator() -> None:
    @register_type
    @dataclasses.dataclass
    class LocalPoint:
        x: int
        y: int

    register_type(LocalPoint, name="tests.unit.test_serde.LocalPoint.alias")
    point = LocalPoint(1, 2)
    back = Serializer().loads(Serializer().dumps({"p": point}))["p"]
    assert type(back) is LocalPoint and back == point


def test_register_name_clash_refused() -> None:
    reg = TypeRegistry()

    @dataclasses.dataclass
    class A:
        x: int

    @dataclasses.dataclass
    class B:
        x: int

    reg.register(A, name="same")
    with pytest.raises(ValueError, match="already taken"):
        reg.register(B, name="same")


def test_register_rejects_plain_class_without_hooks() -> None:
    with pytest.raises(TypeError):
        TypeRegistry().register(Unregistered)


def test_custom_hooks() -> None:
    reg = TypeRegistry()
    reg.register(Unregistered, name="unreg", unstructure=lambda o: {"value": o.value},
                 structure=lambda d: Unregistered(d["value"]))
    ser = Serializer(registry=reg)
    assert roundtrip([Unregistered(3)], ser) == [Unregistered(3)]


def test_mapping_state_accepted_and_non_mapping_refused() -> None:
    from types import MappingProxyType

    assert SER.loads(SER.dumps(MappingProxyType({"a": 1}))) == {"a": 1}
    with pytest.raises(SerializationError):
        SER.dumps([1, 2])  # type: ignore[arg-type]


# -- refusals ----------------------------------------------------------------------------


def test_unregistered_object_names_path_and_type() -> None:
    state = {"messages": [Message("user", str(i)) for i in range(5)]}
    state["messages"][3].tool = Unregistered(1)
    with pytest.raises(SerializationError) as info:
        SER.dumps(state)
    err = info.value
    assert "state['messages'][3].tool" in str(err)
    assert "Unregistered" in str(err)
    assert err.path == "state['messages'][3].tool"
    assert err.type_name is not None and "Unregistered" in err.type_name
    assert isinstance(err, SavegameError) and isinstance(err, TypeError)


@pytest.mark.parametrize(
    ("state", "path"),
    [
        ({"a": Unregistered(1)}, "state['a']"),
        ({"a": [1, {"b": (2, Unregistered(1))}]}, "state['a'][1]['b'][1]"),
        ({"a": {5: Unregistered(1)}}, "state['a'][5]"),
        ({"p": Tool("x", {"k": [Unregistered(2)]})}, "state['p'].args['k'][0]"),
    ],
)
def test_unregistered_paths(state: dict[str, Any], path: str) -> None:
    with pytest.raises(SerializationError) as info:
        SER.dumps(state)
    assert info.value.path == path
    assert path in str(info.value)


def test_unregistered_in_attrs_private_field() -> None:
    with pytest.raises(SerializationError) as info:
        SER.dumps({"acct": Account(Unregistered(1))})  # type: ignore[arg-type]
    # The stored key is the init alias ("secret"); either spelling locates the field.
    assert info.value.path in ("state['acct']._secret", "state['acct'].secret")
    assert info.value.path in str(info.value)


def test_unregistered_key_is_refused() -> None:
    with pytest.raises(SerializationError) as info:
        SER.dumps({"a": {Unregistered(1): 1}})
    assert "Unregistered" in str(info.value)


def test_root_name_used_in_path() -> None:
    with pytest.raises(SerializationError) as info:
        SER.dumps({"x": Unregistered(1)}, root="values")
    assert info.value.path == "values['x']"


def test_unregistered_enum_refused() -> None:
    with pytest.raises(SerializationError) as info:
        SER.dumps({"e": [UnregisteredEnum.A]})
    assert info.value.path == "state['e'][0]"
    assert "UnregisteredEnum" in str(info.value)


def test_unsupported_tzinfo_refused() -> None:
    class OddTz(dt.tzinfo):
        def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(0)

    with pytest.raises(SerializationError) as info:
        SER.dumps({"t": dt.datetime(2024, 1, 1, tzinfo=OddTz())})
    assert info.value.path == "state['t']"


def test_loading_unregistered_type_name_refused() -> None:
    data = SER.dumps({"m": Message("user", "x"), "e": Color.RED})
    fresh = Serializer(registry=TypeRegistry())
    with pytest.raises(SerializationError, match="register_type") as info:
        fresh.loads(data)
    assert "test_serde." in str(info.value)


def test_loading_unregistered_enum_name_refused() -> None:
    data = SER.dumps({"e": Color.RED})
    with pytest.raises(SerializationError, match="register_type"):
        Serializer(registry=TypeRegistry()).loads(data)


@pytest.mark.parametrize("tag", [11, 12])  # _ENUM, _OBJECT
@pytest.mark.parametrize("name", ["os.system", "posix.system", "subprocess.Popen",
                                  "savegame_sentinel_never_imported.Thing"])
def test_stored_type_names_never_import(
    tag: int, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(("system", a)))
    real_import = builtins.__import__

    def spy_import(mod: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(("import", mod))
        return real_import(mod, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy_import)
    payload = msgpack.packb([name, "echo pwned"] if tag == 11 else [name, {"command": "id"}])
    data = msgpack.packb({"v": msgpack.ExtType(tag, payload)}, use_bin_type=True)
    with pytest.raises(SerializationError, match="register_type"):
        SER.loads(data)
    monkeypatch.undo()
    assert calls == []
    assert "savegame_sentinel_never_imported" not in sys.modules


def test_unknown_extension_tag_refused() -> None:
    data = msgpack.packb({"v": msgpack.ExtType(99, b"")}, use_bin_type=True)
    with pytest.raises(SerializationError):
        SER.loads(data)


def test_pickle_opt_in_only() -> None:
    picky = Serializer(registry=TypeRegistry(), allow_pickle=True)
    state = {"obj": Unregistered(7), "n": [1, Unregistered(8)]}
    data = picky.dumps(state)
    assert picky.loads(data) == state
    with pytest.raises(SerializationError, match="pickle"):
        Serializer(registry=TypeRegistry()).loads(data)
    with pytest.raises(SerializationError, match="pickle"):
        Serializer().loads(data)


def test_registered_types_win_over_pickle() -> None:
    picky = Serializer(registry=REG, allow_pickle=True)
    data = picky.dumps({"m": Message("a", "b")})
    assert SER.loads(data) == {"m": Message("a", "b")}  # no pickle needed to read it


def test_serializer_default_registry_is_global() -> None:
    assert Serializer().registry is serde.default_registry


# -- property test -----------------------------------------------------------------------

_offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)
)
_tzs = st.one_of(
    st.none(), st.just(dt.timezone.utc), _offsets.map(dt.timezone),
    st.sampled_from([PARIS, zoneinfo.ZoneInfo("America/New_York"), zoneinfo.ZoneInfo("UTC")]),
)

_hashable_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**200), 2**200),
    st.floats(allow_nan=True, allow_infinity=True), st.text(), st.binary(),
    st.datetimes(timezones=_tzs), st.dates(), st.times(timezones=_tzs), st.timedeltas(),
    st.uuids(), st.decimals(allow_nan=True, allow_infinity=True).filter(lambda d: not d.is_snan()),
)
_leaves = st.one_of(
    _hashable_leaves, st.decimals(allow_nan=True), st.binary().map(bytearray)
)

_hashables = st.recursive(
    _hashable_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple), st.frozensets(inner, max_size=4)
    ),
    max_leaves=8,
)

_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(_hashables, inner, max_size=5),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
        st.sets(_hashables, max_size=5),
        st.frozensets(_hashables, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_roundtrip_property(value: Any) -> None:
    data = SER.dumps({"v": value})
    back = SER.loads(data)["v"]
    assert same(back, value)
    assert SER.dumps({"v": back}) == data  # canonical: re-encoding gives the same bytes


@settings(max_examples=100, deadline=None)
@given(st.sets(_hashables, max_size=8))
def test_set_bytes_independent_of_insertion_order(value: set[Any]) -> None:
    rebuilt: set[Any] = set()
    for item in reversed(list(value)):
        rebuilt.add(item)
    assert SER.dumps({"v": value}) == SER.dumps({"v": rebuilt})


def test_register_type_decorator_with_options() -> None:
    @register_type(name="tests.unit.DecoratedWithName")
    @dataclasses.dataclass
    class Decorated:
        a: int

    assert serde.default_registry.entry_named("tests.unit.DecoratedWithName") is not None
    assert Serializer().loads(Serializer().dumps({"d": Decorated(1)})) == {"d": Decorated(1)}


# -- kept packers ------------------------------------------------------------------------
def test_kept_packers_give_the_bytes_of_fresh_ones_after_errors_and_across_threads() -> None:
    """Packers are kept per thread and extension depth: a failed dumps (deep inside
    tuples) leaves nothing behind, nested extensions never share a packer, and every
    thread gets the bytes a fresh serializer gives."""
    import concurrent.futures

    state = {"pairs": [("msgpack", b"\x00" * 300_000), ((1, (2, dt.date(2020, 1, 2))), {3})],
             "when": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=PARIS), "n": 1}
    expected = Serializer().dumps(state)
    ser = Serializer()
    assert ser.dumps(state) == expected
    with pytest.raises(SerializationError, match="pairs"):
        ser.dumps({"pairs": [((1, (2, object())),)]})
    assert ser.dumps(state) == expected  # nothing of the failed call left in a buffer
    big = {"blob": ("x", os.urandom(5 << 20))}  # its packer's buffer is not kept
    assert ser.loads(ser.dumps(big)) == big
    assert ser.dumps(state) == expected
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ser.dumps(state), range(64)))
    assert set(results) == {expected}
    assert same(ser.loads(expected), state)
