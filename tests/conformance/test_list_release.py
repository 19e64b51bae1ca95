"""list (order, before, limit, metadata filters), release / versions, delete_thread."""

from __future__ import annotations

import pytest
from conformance_support import assert_checkpoint

from savegame.savers import Checkpoint, Release


def cp(thread: str = "t", **kw: object) -> Checkpoint:
    kw.setdefault("state", {"n": 0})
    return Checkpoint(thread_id=thread, **kw)  # type: ignore[arg-type]


@pytest.fixture
def history(api):
    """Ten checkpoints with varied metadata, oldest first."""
    puts = []
    for i in range(10):
        metadata = {
            "source": "loop" if i % 2 else "input",
            "step_kind": i % 3,
            "tags": ["even"] if i % 2 == 0 else ["odd", "x"],
            "info": {"writer": "w", "round": i // 5},
        }
        puts.append(api.put(cp(state={"i": i, "log": list(range(i))}, metadata=metadata)))
    return puts


def ids(items):
    return [c.id for c in items]


def test_list_newest_first_with_full_states(api, history):
    listed = api.list("t")
    assert ids(listed) == ids(reversed(history))
    for got, put in zip(listed, reversed(history), strict=True):
        assert_checkpoint(got, put)


def test_list_unknown_thread(api, history):
    assert api.list("nobody") == []
    assert api.list("nobody", limit=3, metadata={"source": "loop"}) == []


def test_list_before(api, history):
    newest_first = list(reversed(history))
    for index in (0, 3, 9):
        listed = api.list("t", before=newest_first[index].id)
        assert ids(listed) == ids(newest_first[index + 1:])
        for got, put in zip(listed, newest_first[index + 1:], strict=True):
            assert_checkpoint(got, put)
    assert api.list("t", before=history[0].id) == []


def test_list_limit(api, history):
    newest_first = list(reversed(history))
    assert ids(api.list("t", limit=1)) == ids(newest_first[:1])
    assert ids(api.list("t", limit=4)) == ids(newest_first[:4])
    assert ids(api.list("t", limit=100)) == ids(newest_first)
    assert api.list("t", limit=0) == []
    for got, put in zip(api.list("t", limit=3), newest_first, strict=False):
        assert_checkpoint(got, put)


def test_list_metadata_filter(api, history):
    newest_first = list(reversed(history))

    def expect(pred):
        return ids(c for c in newest_first if pred(c.metadata))

    assert ids(api.list("t", metadata={"source": "loop"})) == expect(
        lambda m: m["source"] == "loop")
    assert ids(api.list("t", metadata={"source": "input", "step_kind": 0})) == expect(
        lambda m: m["source"] == "input" and m["step_kind"] == 0)
    assert ids(api.list("t", metadata={"tags": ["odd", "x"]})) == expect(
        lambda m: m["tags"] == ["odd", "x"])
    assert ids(api.list("t", metadata={"info": {"writer": "w", "round": 1}})) == expect(
        lambda m: m["info"]["round"] == 1)
    assert api.list("t", metadata={"source": "nowhere"}) == []
    assert api.list("t", metadata={"absent": 1}) == []
    assert ids(api.list("t", metadata={})) == ids(newest_first)
    for got in api.list("t", metadata={"step_kind": 2}):
        assert_checkpoint(got, next(p for p in history if p.id == got.id))


def test_list_combinations(api, history):
    newest_first = list(reversed(history))
    loops = [c for c in newest_first if c.metadata["source"] == "loop"]
    assert ids(api.list("t", metadata={"source": "loop"}, limit=2)) == ids(loops[:2])
    pivot = newest_first[2]
    older_loops = [c for c in loops if c.id < pivot.id]
    assert ids(api.list("t", metadata={"source": "loop"}, before=pivot.id)) == ids(older_loops)
    assert ids(api.list("t", metadata={"source": "loop"}, before=pivot.id, limit=1)) == ids(
        older_loops[:1])
    assert ids(api.list("t", before=pivot.id, limit=2)) == ids(newest_first[3:5])


def test_release(api, is_versioned):
    first_run = [api.put(cp(state={"run": 1, "i": i})) for i in range(3)]
    sub = api.put(cp(state={"run": 1, "sub": True}, namespace="sub"))
    release = api.release("t")
    assert isinstance(release, Release)
    assert release.thread_id == "t"
    expected = sorted([*first_run, sub], key=lambda c: c.id, reverse=True)
    assert ids(release.checkpoints) == ids(expected)
    for got, put in zip(release.checkpoints, expected, strict=True):
        assert_checkpoint(got, put)

    # the thread starts afresh
    assert api.get("t") is None
    assert api.get("t", namespace="sub") is None
    assert api.list("t") == []
    fresh = api.put(cp(state={"run": 2}))
    assert (fresh.step, fresh.parent_id) == (0, None)
    second_run = [fresh, api.put(cp(state={"run": 2, "i": 1}))]
    release2 = api.release("t")
    assert ids(release2.checkpoints) == ids(reversed(second_run))

    if is_versioned:
        assert (release.version, release2.version) == (1, 2)
        assert api.versions("t") == [1, 2]
        archived = api.get_version("t", 1)
        assert archived is not None and archived.version == 1
        assert archived.thread_id == "t"
        assert ids(archived.checkpoints) == ids(expected)
        for got, put in zip(archived.checkpoints, expected, strict=True):
            assert_checkpoint(got, put)
        archived2 = api.get_version("t", 2)
        assert ids(archived2.checkpoints) == ids(reversed(second_run))
        assert api.get_version("t", 3) is None
        third = api.put(cp(state={"run": 3}))
        assert api.release("t").version == 3
        assert api.versions("t") == [1, 2, 3]
        assert ids(api.get_version("t", 3).checkpoints) == [third.id]
    else:
        assert release.version is None and release2.version is None
        assert api.versions("t") == []
        assert api.get_version("t", 1) is None
    assert api.versions("other") == []


def test_release_keeps_other_threads(api, is_versioned):
    keep = api.put(cp("keep", state={"x": 1}))
    api.put(cp("go", state={"x": 2}))
    api.release("go")
    assert_checkpoint(api.get("keep"), keep)
    assert api.versions("keep") == []


def test_delete_thread(api, is_versioned):
    api.put(cp(state={"a": 1}))
    api.put(cp(state={"a": 2}, namespace="sub"))
    api.release("t")
    api.put(cp(state={"a": 3}))
    other = api.put(cp("other", state={"b": 1}))
    api.delete_thread("t")
    assert api.get("t") is None
    assert api.list("t") == []
    assert api.list("t", namespace="sub") == []
    assert api.versions("t") == []
    assert api.get_version("t", 1) is None
    assert_checkpoint(api.get("other"), other)
    # a deleted thread starts afresh
    again = api.put(cp(state={"a": 4}))
    assert (again.step, again.parent_id) == (0, None)
    if is_versioned:
        assert api.release("t").version == 1


def test_delete_unknown_thread(api):
    api.delete_thread("nobody")
    assert api.get("nobody") is None
    assert api.versions("nobody") == []


def test_metadata_filter_is_type_strict(api):
    """JSON-like equality as every backend (BSON included) sees it: True is not 1, a
    missing key is not None; 1 and 1.0 are the same number."""
    as_bool = api.put(cp(state={"i": 0}, metadata={"flag": True, "n": 1}))
    as_int = api.put(cp(state={"i": 1}, metadata={"flag": 1, "n": 1.0, "k": None}))
    as_list = api.put(cp(state={"i": 2}, metadata={"flag": [True], "n": 2}))
    assert ids(api.list("t", metadata={"flag": True})) == [as_bool.id]
    assert ids(api.list("t", metadata={"flag": 1})) == [as_int.id]
    assert ids(api.list("t", metadata={"flag": [True]})) == [as_list.id]
    assert api.list("t", metadata={"flag": [1]}) == []
    assert ids(api.list("t", metadata={"n": 1})) == [as_int.id, as_bool.id]
    assert ids(api.list("t", metadata={"k": None})) == [as_int.id]


def test_metadata_tuples_come_back_as_lists(api):
    put = api.put(cp(state={}, metadata={"pair": (1, 2), "deep": {"t": ("a",)}}))
    expected = {"pair": [1, 2], "deep": {"t": ["a"]}}
    assert dict(put.metadata) == expected
    assert dict(api.get("t").metadata) == expected
    assert ids(api.list("t", metadata={"pair": [1, 2]})) == [put.id]
    assert ids(api.list("t", metadata={"pair": (1, 2)})) == [put.id]
    # the same metadata written either way is the same checkpoint
    assert api.put(cp(id=put.id, state={}, metadata=expected)).id == put.id


def test_release_of_an_empty_thread(api):
    release = api.release("nobody")
    assert release.thread_id == "nobody"
    assert release.checkpoints == ()
    assert api.get("nobody") is None
    # Nothing ran since the last release: no empty version is archived.
    assert release.version is None, "releasing an empty thread must not create a version"
    assert api.versions("nobody") == []
