"""known_text: packed names read back exactly, never collide with text, stay stable."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langgraph.checkpoint.base.id import uuid6

from savegame.savers.checkpoint import new_checkpoint_id
from savegame.savers.known_text import KNOWN, pack_names, pack_text, unpack_names, unpack_text
from savegame.savers.redis import _shared

# any text, lone surrogates included, and text built from the known names
texts = st.one_of(st.text(), st.builds(lambda a, b: a + b, st.sampled_from(KNOWN), st.text()))


@given(texts)
def test_every_text_reads_back_and_plain_text_is_stored_as_itself(text: str) -> None:
    packed = pack_text(text)
    assert unpack_text(packed) == text
    assert len(packed) <= len(text.encode("utf-8", "surrogatepass"))
    if not any(text.startswith(name) for name in KNOWN):
        assert packed == text.encode("utf-8", "surrogatepass")  # layout-1 text reads as is


@given(texts, texts)
def test_packing_keeps_equality(a: str, b: str) -> None:
    assert (pack_text(a) == pack_text(b)) == (a == b)  # server-side filters compare packed


def test_known_names_take_one_byte_and_prefixes_one_byte_plus_the_rest() -> None:
    assert pack_text("messages") == b"\x83"
    assert pack_text("~__pregel_pull, agent") == b"\x80agent"
    assert pack_text("messagesX") == b"messagesX"  # not a prefix entry: stored as text


def test_the_table_is_append_only() -> None:
    # stored bytes name entries by position: these may never move
    assert KNOWN[:4] == ("~__pregel_pull, ", "~__pregel_push, ", "branch:to:", "messages")
    assert KNOWN[12:14] == ("source", "loop") and KNOWN[33] == "llamaindex"
    assert len(KNOWN) <= 64


def test_an_unknown_index_is_an_error_not_text() -> None:
    with pytest.raises(ValueError, match="unknown short name"):
        unpack_text(bytes((0x80 + 63,)) + b"x")


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | texts,
                    lambda inner: st.lists(inner) | st.dictionaries(texts, inner)))
def test_metadata_reads_back(value: object) -> None:
    import msgpack

    packed = msgpack.packb(pack_names(value), use_bin_type=False)
    assert unpack_names(msgpack.unpackb(packed, raw=True)) == value


def test_times_are_stored_against_the_clock_of_uuid6_and_uuid7_ids() -> None:
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=123000)
    for checkpoint_id in (str(uuid6(clock_seq=3)), new_checkpoint_id()):
        clock = _shared.id_clock_ms(checkpoint_id)  # savegame's ids stay increasing, so
        assert clock is not None and abs(clock - _shared.ms(at)) < 1 << 31  # may run ahead
        packed = _shared._pack_ts(checkpoint_id, at)
        assert isinstance(packed, int)
        assert _shared._unpack_ts(checkpoint_id, packed) == at
    for checkpoint_id in (str(uuid.uuid4()), "step-7", str(uuid.uuid1())):
        assert _shared.id_clock_ms(checkpoint_id) is None
        assert _shared._unpack_ts(checkpoint_id, _shared._pack_ts(checkpoint_id, at)) == at
    far = dt.datetime(1999, 1, 1, tzinfo=dt.timezone.utc)  # an id made long after: absolute
    assert isinstance(_shared._pack_ts(new_checkpoint_id(), far), bytes)
    assert _shared._unpack_ts(new_checkpoint_id(), _shared._pack_ts(new_checkpoint_id(), far)) \
        == far
