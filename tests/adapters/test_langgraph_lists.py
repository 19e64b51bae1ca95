"""A list channel serialized element by element (savegame.adapters._lists): the bytes are
always LangGraph's serializer's own bytes for the list, whatever edits happen between two
puts, and only the new or changed elements are serialized again."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from savegame.adapters import _lists
from savegame.adapters.langgraph import Checkpointer
from savegame.savers import MemorySaver

SERDE = JsonPlusSerializer()


def whole(value: list[Any]) -> bytes:
    tag, data = SERDE.dumps_typed(value)
    assert tag == "msgpack"
    return data


_texts = st.text(max_size=30)
_ints = st.integers(-(1 << 63), (1 << 63) - 1)  # what MessagePack holds
_items = st.one_of(
    st.builds(lambda text, n: HumanMessage(content=text, id=f"h{n}"), _texts, st.integers()),
    st.builds(lambda text: AIMessage(content=text, additional_kwargs={"k": text}), _texts),
    st.dictionaries(st.text(max_size=5), _ints, max_size=3),
    st.lists(_ints, max_size=3),
    _ints,
    _texts,
)
#: An edit of the list between two puts: a new list object each time, as reducers make.
_edits = st.one_of(
    st.tuples(st.just("append"), _items),
    st.tuples(st.just("insert"), st.integers(0, 1000), _items),
    st.tuples(st.just("replace"), st.integers(0, 1000), _items),
    st.tuples(st.just("delete"), st.integers(0, 1000)),
    st.tuples(st.just("reassign"), st.integers(0, 1000), _texts),  # msg.content = ...
    st.tuples(st.just("mutate"), st.integers(0, 1000), _ints),  # a dict or list item
    st.tuples(st.just("reload")),  # the list as loaded from storage: new objects
)


def apply(value: list[Any], edit: tuple[Any, ...]) -> list[Any]:
    value = list(value)
    kind = edit[0]
    at = edit[1] % (len(value) + 1) if kind not in {"append", "reload"} else 0
    if kind == "append":
        value.append(edit[1])
    elif kind == "insert":
        value.insert(at, edit[2])
    elif value and kind in {"replace", "delete", "reassign", "mutate"}:
        at %= len(value)
        item = value[at]
        if kind == "replace":
            value[at] = edit[2]
        elif kind == "delete":
            del value[at]
        elif kind == "reassign" and isinstance(item, (HumanMessage, AIMessage)):
            item.content = edit[2]
        elif kind == "mutate" and isinstance(item, dict):
            item["m"] = edit[2]
        elif kind == "mutate" and isinstance(item, list):
            item.append(edit[2])
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_items, min_size=_lists.MIN_ITEMS, max_size=30), st.lists(_edits, max_size=12))
def test_split_bytes_are_the_serializers_bytes_after_any_edits(
        start: list[Any], edits: list[tuple[Any, ...]]) -> None:
    value = start
    made = _lists.dump_list(SERDE.dumps_typed, value, None, None)
    assert made is not None and made[0] == whole(value)
    data, split = made
    for edit in edits:
        if edit[0] == "reload":
            value = SERDE.loads_typed(("msgpack", data))
            loaded = _lists.split_loaded(value, data)
            assert loaded is not None
            split = loaded
            continue
        value = apply(value, edit)
        made = _lists.dump_list(SERDE.dumps_typed, value, split, data)
        assert made is not None
        assert made[0] == whole(value), edit
        data, split = made
        assert split.head + split.ends[-1] == len(data) if value else True


def test_only_new_elements_are_serialized_again() -> None:
    calls: list[Any] = []

    def dump(item: Any) -> tuple[str, bytes]:
        calls.append(item)
        return SERDE.dumps_typed(item)

    value = [HumanMessage(content=f"m{i}") for i in range(20)]
    data, split = _lists.dump_list(dump, value, None, None) or pytest.fail("not split")
    calls.clear()
    grown = [*value, AIMessage(content="new")]
    data, split = _lists.dump_list(dump, grown, split, data) or pytest.fail("not split")
    assert calls == [grown[-1]] and data == whole(grown)
    calls.clear()
    grown[3].content = "changed in place"  # a field reassigned: seen
    again = [*grown, HumanMessage(content="next")]
    data, split = _lists.dump_list(dump, again, split, data) or pytest.fail("not split")
    assert calls == again[3:] and data == whole(again)


def test_an_extra_field_set_or_changed_after_the_put_is_seen() -> None:
    """Messages allow extra fields, held outside ``__dict__``: one set on an old message
    (or changed, or deleted) between two puts makes it serialized again."""
    calls: list[Any] = []

    def dump(item: Any) -> tuple[str, bytes]:
        calls.append(item)
        return SERDE.dumps_typed(item)

    value = [HumanMessage(content=f"m{i}") for i in range(12)]
    made = _lists.dump_list(dump, value, None, None) or pytest.fail("not split")
    for step, edit in enumerate(["set", "change", "same", "delete"]):
        if edit == "set":
            value[4].score = 1  # type: ignore[attr-defined]
        elif edit == "change":
            value[4].score = 2  # type: ignore[attr-defined]
        elif edit == "delete":
            del value[4].__pydantic_extra__["score"]
        calls.clear()
        value = [*value, AIMessage(content=f"new {step}")]
        made = _lists.dump_list(dump, value, made[1], made[0]) or pytest.fail("not split")
        assert made[0] == whole(value), edit
        assert calls == (value[-1:] if edit == "same" else value[4:]), edit


class Grid:
    """A field whose == is elementwise (as numpy's): comparing it has no truth value."""

    def __init__(self, cells: list[int]) -> None:
        self.cells = cells

    def __eq__(self, other: object) -> Any:
        raise ValueError("the truth value of a grid is ambiguous")

    __hash__ = None  # type: ignore[assignment]


def test_a_field_that_cannot_be_compared_counts_as_changed() -> None:
    value = [HumanMessage(content=str(i)) for i in range(10)]
    holder = HumanMessage(content="grid")
    holder.__dict__["grid_shape"] = Grid([1])  # a field compared by the snapshot
    value.append(holder)

    def dump(item: Any) -> tuple[str, bytes]:
        return SERDE.dumps_typed(item if item is not holder else HumanMessage(
            content=f"grid {item.__dict__['grid_shape'].cells}"))

    made = _lists.dump_list(dump, value, None, None)
    assert made is not None
    holder.__dict__["grid_shape"] = Grid([2])  # reassigned: unequal, and == raises
    again = _lists.dump_list(dump, [*value, AIMessage(content="x")], made[1], made[0])
    assert again is not None and b"grid [2]" in again[0] and b"grid [1]" not in again[0]


@pytest.mark.parametrize("odd", [None, b"raw", bytearray(b"raw")])
def test_an_element_the_serializer_tags_otherwise_falls_back_to_the_whole_list(odd: Any
                                                                               ) -> None:
    value = [HumanMessage(content=str(i)) for i in range(10)] + [odd]
    assert _lists.dump_list(SERDE.dumps_typed, value, None, None) is None


@pytest.mark.parametrize("data", [b"", b"\x92\x01\x02", b"\x81\x01\x02", b"\x9a\x01",
                                  b"\x91\x01\x02"])
def test_bytes_that_are_not_the_loaded_list_do_not_split(data: bytes) -> None:
    assert _lists.split_loaded([1], data) is None


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def test_a_node_reassigning_an_old_messages_field_is_stored_as_it_is_now() -> None:
    """An old message whose content a node reassigns while another message is added is
    stored with its new content (the element is serialized again, not reused)."""

    def chat(state: State) -> dict[str, Any]:
        messages = state["messages"]
        if len(messages) > 12:
            messages[1].content = "edited"
        return {"messages": [AIMessage(content=f"reply {len(messages)}")]}

    store = MemorySaver()
    graph = StateGraph(State).add_node("chat", chat).add_edge(START, "chat").compile(
        checkpointer=Checkpointer(store))
    config = {"configurable": {"thread_id": "t"}}
    for turn in range(8):
        graph.invoke({"messages": [HumanMessage(content=f"turn {turn}")]}, config)
    store._cache.clear()
    cold = StateGraph(State).add_node("chat", chat).add_edge(START, "chat").compile(
        checkpointer=Checkpointer(store))
    messages = cold.get_state(config).values["messages"]
    assert [m.content for m in messages[:3]] == ["turn 0", "edited", "turn 1"]
    assert len(messages) == 16 and messages[-1].content == "reply 15"


def test_other_serializers_serialize_lists_whole() -> None:
    class Mine(JsonPlusSerializer):
        pass

    assert Checkpointer(MemorySaver(), serde=Mine())._split_lists is False
    checkpointer = Checkpointer(MemorySaver())
    assert checkpointer._split_lists is None  # checked against the whole bytes once


def fresh(data: bytes) -> list[Any]:
    value = SERDE.loads_typed(("msgpack", data))
    assert type(value) is list
    return value


def same_values(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(type(x) is type(y) and x == y
                                    for x, y in zip(a, b, strict=True))


_odd_items = st.builds(  # loads back as another value: a tuple comes back as a list
    lambda n: HumanMessage(content=f"t{n}", additional_kwargs={"pair": (n, n)}), _ints)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_items, _odd_items), min_size=_lists.MIN_ITEMS, max_size=30),
       st.lists(st.one_of(_edits, st.tuples(st.just("append"), _odd_items)), max_size=12),
       st.data())
def test_a_loaded_list_equals_a_fresh_load_of_its_bytes(
        start: list[Any], edits: list[tuple[Any, ...]], data_: st.DataObject) -> None:
    """Whatever was put and edited since, loading stored bytes against the last split gives
    what the serializer loads from them (equal values of the same types); the split it
    returns describes those bytes, and the next put through it makes the serializer's
    own bytes."""
    value = start
    made = _lists.dump_list(SERDE.dumps_typed, value, None, None, SERDE.loads_typed)
    assert made is not None
    data, split = made
    history = [data]
    for edit in edits:
        if edit[0] == "reload":  # a load of the current or an older stored list
            stored = data_.draw(st.sampled_from(history))
            loaded = _lists.load_list(SERDE.loads_typed, stored, split, data)
            assert loaded is not None
            value, split = loaded
            assert same_values(value, fresh(stored))
            assert split.head + (split.ends[-1] if value else 0) == len(stored)
            data = stored
            continue
        value = apply(value, edit)
        made = _lists.dump_list(SERDE.dumps_typed, value, split, data, SERDE.loads_typed)
        assert made is not None and made[0] == whole(value), edit
        data, split = made
        history.append(data)


def test_a_load_hands_back_the_objects_it_can_and_loads_the_rest() -> None:
    loads_calls: list[bytes] = []

    def loads(typed: tuple[str, bytes]) -> Any:
        loads_calls.append(typed[1])
        return SERDE.loads_typed(typed)

    value = [HumanMessage(content=f"m{i}", id=f"{i}") for i in range(20)]
    data, split = _lists.dump_list(SERDE.dumps_typed, value, None, None, loads) or pytest.fail()
    assert loads_calls == []  # 20 new elements: more than a put checks
    loaded, split = _lists.load_list(loads, data, split, data) or pytest.fail()
    assert all(a is not b for a, b in zip(loaded, value, strict=True))  # unchecked: loaded afresh
    loads_calls.clear()
    grown = [*loaded, AIMessage(content="new", id="n")]
    data, split = _lists.dump_list(SERDE.dumps_typed, grown, split, data, loads) or pytest.fail()
    assert len(loads_calls) == 1  # the new element, checked
    loads_calls.clear()
    stored = whole([*grown, HumanMessage(content="from elsewhere", id="e")])
    again, split = _lists.load_list(loads, stored, split, data) or pytest.fail()
    assert all(a is b for a, b in zip(again[:-1], grown, strict=True))
    assert again[-1].content == "from elsewhere" and len(loads_calls) == 1
    older = whole(grown[:10])  # a fork from an older checkpoint: a prefix
    grown[5].content = "reassigned after the put"  # seen: element 5 on is loaded again
    forked, _ = _lists.load_list(SERDE.loads_typed, older, split, stored) or pytest.fail()
    assert [m.content for m in forked] == [f"m{i}" for i in range(10)]
    assert all(a is b for a, b in zip(forked[:5], grown[:5], strict=True))
    assert forked[5] is not grown[5]


@pytest.mark.parametrize("data", [b"", b"\x81\x01\x02", b"\xc0", b"\x92\xc1\xc1"])
def test_bytes_that_are_not_a_list_are_loaded_whole(data: bytes) -> None:
    value = [HumanMessage(content=str(i)) for i in range(10)]
    made = _lists.dump_list(SERDE.dumps_typed, value, None, None, SERDE.loads_typed)
    assert made is not None
    assert _lists.load_list(SERDE.loads_typed, data, made[1], made[0]) is None


def test_a_run_sees_the_stored_messages_not_a_callers_edit_of_the_last_output() -> None:
    """Resuming reuses the message objects of the last run: a message of its output whose
    field the caller reassigned is loaded from storage again, as LangGraph's own savers
    would load it."""
    seen: list[str] = []

    def chat(state: State) -> dict[str, Any]:
        seen.append(state["messages"][0].content)
        return {"messages": [AIMessage(content=f"reply {len(state['messages'])}")]}

    graph = StateGraph(State).add_node("chat", chat).add_edge(START, "chat").compile(
        checkpointer=Checkpointer(MemorySaver()))
    config = {"configurable": {"thread_id": "t"}}
    for turn in range(6):
        out = graph.invoke({"messages": [HumanMessage(content=f"turn {turn}")]}, config)
    out["messages"][0].content = "edited by the caller"
    graph.invoke({"messages": [HumanMessage(content="turn 6")]}, config)
    assert seen[-1] == "turn 0"
    state = graph.get_state(config).values["messages"]
    assert [m.content for m in state[:2]] == ["turn 0", "reply 1"] and len(state) == 14
