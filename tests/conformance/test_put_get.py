"""put / get: filled fields, exact states, forks, namespaces, idempotent re-puts."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from conformance_support import assert_checkpoint, assert_same

from savegame.savers import Checkpoint, ConflictError


def cp(thread: str = "t", **kw: object) -> Checkpoint:
    kw.setdefault("state", {"n": 0})
    return Checkpoint(thread_id=thread, **kw)  # type: ignore[arg-type]


def test_put_fills_id_step_created_at_parent(api):
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    first = api.put(cp(state={"n": 0}, node_id="a", next_node_id="b", metadata={"k": 1}))
    assert isinstance(first.id, str) and first.id
    assert first.step == 0
    assert first.parent_id is None
    assert first.thread_id == "t" and first.namespace == ""
    assert first.node_id == "a" and first.next_node_id == "b"
    assert dict(first.metadata) == {"k": 1}
    assert isinstance(first.created_at, dt.datetime)
    assert first.created_at.utcoffset() == dt.timedelta(0)
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    assert before <= first.created_at <= after
    assert_same(dict(first.state), {"n": 0})

    second = api.put(cp(state={"n": 1}, node_id="b", next_node_id=None))
    assert second.parent_id == first.id
    assert second.step == 1
    assert second.id > first.id
    assert second.node_id == "b" and second.next_node_id is None
    assert dict(second.metadata) == {}
    assert second.created_at >= first.created_at
    third = api.put(cp(state={"n": 2}))
    assert (third.parent_id, third.step) == (second.id, 2)
    assert third.id > second.id


def test_ids_are_time_ordered(api):
    ids = []
    for index in range(30):
        ids.append(api.put(cp(state={"i": index})).id)
        if index % 10 == 0:
            time.sleep(0.002)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # other threads' puts interleaved keep ids increasing too
    other = api.put(cp("other", state={}))
    assert other.id > ids[-1]


def test_get_returns_exactly_what_was_put(api):
    state = {
        "messages": [{"role": "user", "content": "hi"}, ("tuple", 1)],
        "counts": {1: "one", 2: "two"},
        "pair": (1, 2.5, None),
        "flag": True,
        "nested": {"a": [1, [2, (3,)]], "b": b"\x00bytes"},
    }
    put = api.put(cp(state=state, node_id="n", next_node_id="m", metadata={"source": "x"}))
    got = api.get("t")
    assert_checkpoint(got, put)
    assert_same(dict(got.state), state)
    by_id = api.get("t", put.id)
    assert_checkpoint(by_id, put)
    assert got.state is not state  # a copy, not the caller's object


def test_put_returns_the_state_put(api):
    state = {"a": (1, 2), "b": {3: [4]}}
    put = api.put(cp(state=state))
    assert_same(dict(put.state), state)


def test_get_latest_and_by_id(api):
    puts = [api.put(cp(state={"i": i})) for i in range(5)]
    assert_checkpoint(api.get("t"), puts[-1])
    for put in puts:
        assert_checkpoint(api.get("t", put.id), put)


def test_get_unknown(api):
    assert api.get("nobody") is None
    api.put(cp(state={}))
    assert api.get("t", "0190f0b8-0000-7000-8000-000000000000") is None
    assert api.get("nobody", api.get("t").id) is None
    assert api.get("t", namespace="elsewhere") is None


def test_explicit_id_is_kept(api):
    put = api.put(cp(id="my-own-id", state={"x": 1}))
    assert put.id == "my-own-id"
    assert_checkpoint(api.get("t", "my-own-id"), put)


def test_forks_make_a_tree(api):
    root = api.put(cp(state={"path": "root"}))
    a1 = api.put(cp(state={"path": "a1"}))
    a2 = api.put(cp(state={"path": "a2"}))
    b1 = api.put(cp(state={"path": "b1"}, parent_id=root.id))
    assert (b1.parent_id, b1.step) == (root.id, 1)
    assert b1.id > a2.id
    # the latest is the greatest id: the fork
    assert_checkpoint(api.get("t"), b1)
    # parent_id=None continues from the latest, i.e. the fork's branch
    b2 = api.put(cp(state={"path": "b2"}))
    assert (b2.parent_id, b2.step) == (b1.id, 2)
    # fork of a fork, from the middle of the first branch
    c2 = api.put(cp(state={"path": "c2"}, parent_id=a1.id))
    assert (c2.parent_id, c2.step) == (a1.id, 2)
    for put in (root, a1, a2, b1, b2, c2):
        assert_checkpoint(api.get("t", put.id), put)
    listed = api.list("t")
    assert [c.id for c in listed] == [c2.id, b2.id, b1.id, a2.id, a1.id, root.id]
    for got, put in zip(listed, [c2, b2, b1, a2, a1, root], strict=True):
        assert_checkpoint(got, put)
    assert_checkpoint(api.get("t"), c2)


def test_fork_states_stay_exact_on_long_branches(api):
    """Deltas are against the parent, not the last record written."""
    trunk = [api.put(cp(state={"log": [f"trunk {i}" * 20 for i in range(n)]}))
             for n in range(1, 15)]
    branch = []
    for n in range(1, 10):
        parent = trunk[5] if n == 1 else branch[-1]
        state = {"log": [f"trunk {i}" * 20 for i in range(6)] + [f"branch {j}" * 20
                                                                 for j in range(n)]}
        branch.append(api.put(cp(state=state, parent_id=parent.id)))
    # interleave: extend the trunk again from its tip
    tip = api.put(cp(state={"log": ["tip"]}, parent_id=trunk[-1].id))
    assert tip.step == len(trunk)
    assert branch[-1].step == 6 + len(branch) - 1
    for put in [*trunk, *branch, tip]:
        assert_checkpoint(api.get("t", put.id), put)
    api.saver._cache.clear()
    for put in [*trunk, *branch, tip]:
        assert_checkpoint(api.get("t", put.id), put)


def test_namespaces_are_kept_apart(api):
    root = api.put(cp(state={"where": "root 0"}))
    sub = api.put(cp(state={"where": "sub 0"}, namespace="sub"))
    assert sub.step == 0 and sub.parent_id is None  # not a child of the root namespace
    root1 = api.put(cp(state={"where": "root 1"}))
    assert root1.parent_id == root.id
    sub1 = api.put(cp(state={"where": "sub 1"}, namespace="sub"))
    assert (sub1.parent_id, sub1.step, sub1.namespace) == (sub.id, 1, "sub")

    assert_checkpoint(api.get("t"), root1)
    assert_checkpoint(api.get("t", namespace="sub"), sub1)
    assert api.get("t", sub.id) is None
    assert api.get("t", root.id, namespace="sub") is None
    assert [c.id for c in api.list("t")] == [root1.id, root.id]
    assert [c.id for c in api.list("t", namespace="sub")] == [sub1.id, sub.id]
    assert api.list("t", namespace="other") == []

    api.delete_thread("t")
    assert api.get("t") is None
    assert api.get("t", namespace="sub") is None
    assert api.list("t", namespace="sub") == []


def test_threads_are_kept_apart(api):
    a = api.put(cp("a", state={"who": "a"}))
    b = api.put(cp("b", state={"who": "b"}))
    assert b.step == 0 and b.parent_id is None
    assert_checkpoint(api.get("a"), a)
    assert_checkpoint(api.get("b"), b)
    assert api.get("a", b.id) is None
    api.delete_thread("a")
    assert api.get("a") is None
    assert_checkpoint(api.get("b"), b)


def test_reput_same_content_is_a_noop(api):
    first = api.put(cp(state={"n": 1}, node_id="x", metadata={"m": [1, {"k": "v"}]}))
    second = api.put(cp(state={"n": 2}))
    time.sleep(0.005)
    again = api.put(first)  # the returned checkpoint, put again (a client retry)
    assert_checkpoint(again, first)
    again2 = api.put(cp(id=first.id, state={"n": 1}, node_id="x",
                        metadata={"m": [1, {"k": "v"}]}))
    assert_checkpoint(again2, first)
    assert [c.id for c in api.list("t")] == [second.id, first.id]
    assert_checkpoint(api.get("t"), second)
    assert_checkpoint(api.get("t", first.id), first)


@pytest.mark.parametrize(
    "change",
    [
        {"state": {"n": 99}},
        {"state": {"n": 1, "extra": None}},
        {"metadata": {"m": "other"}},
        {"metadata": {}},
        {"node_id": "y"},
        {"next_node_id": "z"},
    ],
    ids=["state", "state-key", "metadata", "metadata-empty", "node_id", "next_node_id"],
)
def test_reput_different_content_conflicts(api, change):
    fields = {"state": {"n": 1}, "node_id": "x", "metadata": {"m": "v"}}
    first = api.put(cp(**fields))
    latest = api.put(cp(state={"n": 2}))
    with pytest.raises(ConflictError):
        api.put(cp(id=first.id, **{**fields, **change}))
    assert_checkpoint(api.get("t", first.id), first)
    assert_checkpoint(api.get("t"), latest)
    assert [c.id for c in api.list("t")] == [latest.id, first.id]


def test_metadata_is_a_copy(api):
    metadata = {"tags": ["a"], "nested": {"k": 1}}
    put = api.put(cp(state={}, metadata=metadata))
    metadata["tags"].append("b")
    metadata["nested"]["k"] = 2
    got = api.get("t")
    assert dict(got.metadata) == {"tags": ["a"], "nested": {"k": 1}}
    got.metadata["tags"].append("c")  # type: ignore[index]
    assert dict(api.get("t").metadata) == {"tags": ["a"], "nested": {"k": 1}}
    assert dict(api.list("t")[0].metadata) == {"tags": ["a"], "nested": {"k": 1}}
    assert put.id == got.id


def test_reput_with_other_parent_conflicts(api):
    root = api.put(cp(state={"n": 0}))
    a = api.put(cp(state={"n": 1}))
    b = api.put(cp(state={"n": 1}, parent_id=root.id))
    with pytest.raises(ConflictError):
        api.put(cp(id=b.id, state={"n": 1}, parent_id=a.id))
    assert_checkpoint(api.get("t", b.id), b)
    assert_checkpoint(api.put(cp(id=b.id, state={"n": 1}, parent_id=root.id)), b)
