"""Fuzz tier (issue #11): hostile bytes and hostile documents reach the record decoder, the
delta decoder, the state loader and the MongoDB document reader. Each may only raise
CorruptCheckpointError / SerializationError (RecordError inside the codec), never hang
(per-test timeout), never raise anything else, never import a module or call anything a
stored name points at. The crafted cases below stay as a regression corpus.

Hypothesis explores ``FUZZ_EXAMPLES`` cases per property (the environment variable
``SAVEGAME_FUZZ_EXAMPLES`` raises it for a long run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sys
import zlib

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from savegame.savers import (
    Checkpoint,
    CorruptCheckpointError,
    MemorySaver,
    SerializationError,
    codec,
)
from savegame.savers.base import StoredCheckpoint
from savegame.savers.codec import RecordError

pytestmark = pytest.mark.timeout(300)

FUZZ_EXAMPLES = int(os.environ.get("SAVEGAME_FUZZ_EXAMPLES", "300"))
SAFE = (CorruptCheckpointError, SerializationError)
fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def chain_records() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """A keyframe and two deltas of a growing chat state: (records, raws, locations)."""
    rng = random.Random(7)
    saver = MemorySaver()
    states = []
    messages: list[dict[str, str]] = []
    for turn in range(3):
        messages = [*messages, {"role": "user", "content": " ".join(
            rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(60))}]
        states.append({"messages": messages, "turn": turn})
        saver.put(Checkpoint("t", states[-1]))
    items = sorted(saver._threads["t"][""].items.values(), key=lambda s: s.seq)
    raws = [saver.serializer.dumps(s) for s in states]
    return ([i.record for i in items], raws,
            [codec.location("t", "", i.id) for i in items])


RECORDS, RAWS, WHERE = chain_records()


# -- the record and delta decoders ---------------------------------------------------------
@fuzz
@given(st.binary(max_size=400))
@example(b"SG")
@example(b"SG\x02\x01" + b"\x00" * 40)
@example(RECORDS[0][:20])
def test_read_header_of_arbitrary_bytes(data):
    with contextlib.suppress(RecordError):
        codec.read_header(data)


@fuzz
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_decode_path_of_arbitrary_bytes(records):
    with pytest.raises(RecordError):
        codec.decode_path(records)


def mutated(data, original: bytes) -> bytes:
    """``original`` with a byte flipped, cut short, grown, or with bytes inserted."""
    record = bytearray(original)
    how = data.draw(st.sampled_from(["flip", "cut", "grow", "insert"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(record) - 1))
        record[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        record = record[: data.draw(st.integers(0, len(record) - 1))]
    elif how == "grow":
        record += data.draw(st.binary(min_size=1, max_size=20))
    else:
        at = data.draw(st.integers(0, len(record)))
        record[at:at] = data.draw(st.binary(min_size=1, max_size=20))
    return bytes(record)


@fuzz
@given(st.integers(0, 2), st.data())
def test_mutated_records_fail_loudly(position, data):
    """A flipped, cut or grown record never decodes to other bytes."""
    path = [*RECORDS[:position], mutated(data, RECORDS[position])]
    with pytest.raises(RecordError):
        codec.decode_path(path, where=WHERE[: position + 1])


def test_a_delta_against_the_wrong_base_fails():
    with pytest.raises(RecordError):
        codec.decode_path([RECORDS[0], RECORDS[2]], where=[WHERE[0], WHERE[2]])


def _splice_case() -> tuple[bytes, bytes, codec.EncodedRecord]:
    rng = random.Random(11)
    base = b" ".join(rng.choice([b"alpha", b"beta", b"gamma", b"delta"])
                     for _ in range(18000))[:80 * 1024]
    new = base[:500] + b"a new message " * 30 + base[520:]
    return base, new, codec.encode(new, codec.Base(base, codec.encode(base).header))


SPLICE_BASE, SPLICE_NEW, SPLICE = _splice_case()


@fuzz
@given(st.data())
def test_hostile_splice_frames_fail_loudly(data):
    """Any change to a splice frame past the record checksum (a crafted record) decodes to
    the same state or raises RecordError: every bound is checked, nothing else raised."""
    assert SPLICE.header.splice
    frame = SPLICE.data[SPLICE.header.size:]
    if data.draw(st.booleans()):
        frame = mutated(data, frame)
    else:  # a hand-made op table: big moves, lengths, counts
        table = bytearray()
        for value in data.draw(st.lists(st.integers(0, 2**40), max_size=12)):
            codec.put_varint(table, value)
        frame = b"\x00" + zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters.from_level(
                3, write_checksum=1, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
        ).compress(bytes(table))
    try:
        out = codec._unsplice(memoryview(frame), SPLICE_BASE, SPLICE.header, 0)
    except RecordError:
        return
    assert out == SPLICE_NEW


WRITE_STATE = SPLICE_BASE
WRITE_RAW = b"\x81\xa5value" + SPLICE_BASE[5000:5600]
WRITE_WHERE = codec.location("t", "", "c", "task", "0")
WRITE = codec.encode_write(WRITE_RAW, WRITE_STATE, where=WRITE_WHERE).data
WRITE_HEAD = codec.read_header(WRITE, 0, WRITE_WHERE).size


@fuzz
@given(st.data(), st.booleans())
def test_mutated_write_copies_fail_loudly(data, fix):
    """A pending write stored as a copy of its checkpoint's state, flipped, cut or grown
    (with its checksum made right again, as a crafted record would), decodes to the same
    value or raises RecordError."""
    assert codec.write_base(WRITE, WRITE_WHERE) is not None
    record = bytearray(mutated(data, WRITE))
    size = WRITE_HEAD - 4  # a copy's header: prefix, base hash, tail, then its crc32
    if fix and len(record) >= WRITE_HEAD:
        record[size:WRITE_HEAD] = zlib.crc32(
            memoryview(record)[WRITE_HEAD:],
            zlib.crc32(memoryview(record)[:size], zlib.crc32(WRITE_WHERE))).to_bytes(4, "big")
    record = bytes(record)
    try:
        out = codec.decode_write(record, WRITE_STATE, WRITE_WHERE)
    except RecordError:
        return
    assert out == WRITE_RAW


# -- the state loader, through a saver ------------------------------------------------------
def _planted(payload: bytes) -> tuple[MemorySaver, str]:
    """A MemorySaver whose one checkpoint holds ``payload`` as its (valid) record's state."""
    saver = MemorySaver()
    put = saver.put(Checkpoint("t", {"x": 1}))
    space = saver._threads["t"][""]
    stored = space.items[put.id]
    record = codec.encode(payload, where=codec.location("t", "", put.id)).data
    space.items[put.id] = dataclasses.replace(stored, record=record)
    saver._cache.clear()
    assert put.id is not None
    return saver, put.id


def _ext(code: int, inner: object) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, msgpack.packb(inner, use_bin_type=True)),
                         use_bin_type=True)


def _nested_ext(depth: int) -> bytes:
    data = msgpack.packb([], use_bin_type=True)
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(1, data), use_bin_type=True)
    return msgpack.packb({"v": msgpack.ExtType(1, data)}, use_bin_type=True)


CRAFTED = {
    # a registered-object tag naming a callable: never imported, never called
    "object-os-system": msgpack.packb({"v": msgpack.ExtType(12, msgpack.packb(
        ["os.system", {"command": "touch /tmp/savegame-pwned"}]))}),
    "enum-antigravity": msgpack.packb({"v": msgpack.ExtType(11, msgpack.packb(
        ["antigravity.Fly", 1]))}),
    "pickle": msgpack.packb({"v": msgpack.ExtType(14, b"cos\nsystem\n(S'true'\ntR.")}),
    "unknown-tag": msgpack.packb({"v": msgpack.ExtType(99, b"")}),
    "ext-recursion-bomb": _nested_ext(5000),
    "tuple-of-garbage": msgpack.packb({"v": msgpack.ExtType(1, b"\xc1\xc1")}),
    "datetime-wrong-arity": _ext(5, [1, 2]),
    "zone-name-path": msgpack.packb({"v": msgpack.ExtType(5, msgpack.packb(
        [2024, 1, 1, 0, 0, 0, 0, 0, "../../etc/passwd"]))}),
    "bigint-empty": msgpack.packb({"v": msgpack.ExtType(4, b"")}),
    "not-a-map": msgpack.packb([1, 2, 3]),
    "truncated": msgpack.packb({"v": "x" * 100})[:50],
    "trailing": msgpack.packb({"v": 1}) + b"\x00",
    "huge-length-claim": b"\x81\xa1v\xdb\xff\xff\xff\xff",
    "decimal-garbage": msgpack.packb({"v": msgpack.ExtType(10, b"\xff\xfe")}),
    "uuid-short": msgpack.packb({"v": msgpack.ExtType(9, b"\x01")}),
}


def _load_safely(payload: bytes) -> None:
    saver, checkpoint_id = _planted(payload)
    before = set(sys.modules)
    try:
        got = saver.get("t", checkpoint_id)
        assert got is not None and isinstance(got.state, dict)
    except SAFE:
        pass
    assert set(sys.modules) - before == set(), "loading imported a module"


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_states_import_and_call_nothing(name, tmp_path):
    _load_safely(CRAFTED[name])
    assert not __import__("os").path.exists("/tmp/savegame-pwned")


@fuzz
@given(st.binary(max_size=300))
def test_arbitrary_state_bytes(payload):
    _load_safely(payload)


def _packed(value: object) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return b"\xc1"


@fuzz
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    | st.builds(lambda code, value: msgpack.ExtType(code, _packed(value)),
                st.integers(0, 20), inner),
    max_leaves=12))
def test_arbitrary_msgpack_with_our_extension_tags(value):
    try:
        payload = msgpack.packb({"v": value}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # not packable: nothing to load
        return
    _load_safely(payload)


# -- hostile stored envelopes (memory) and documents (MongoDB) -------------------------------
_FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.text(max_size=6),
                          st.binary(max_size=6), st.lists(st.integers(-5, 5), max_size=2))


_ENVELOPE = {  # values of the right type (stores check types when they parse documents)
    "base_id": st.none() | st.text(max_size=40),
    "keyframe_id": st.text(max_size=40),
    "parent_id": st.none() | st.text(max_size=40),
    "depth": st.integers(-3, 70000),
    "record": st.binary(max_size=200),
}


@fuzz
@given(st.sampled_from(sorted(_ENVELOPE)).flatmap(
    lambda field: st.tuples(st.just(field), _ENVELOPE[field])))
def test_hostile_envelope_fields(change):
    field, value = change
    saver = MemorySaver()
    first = saver.put(Checkpoint("t", {"log": list(range(50))}))
    second = saver.put(Checkpoint("t", {"log": list(range(51))}))
    space = saver._threads["t"][""]
    stored: StoredCheckpoint = space.items[second.id]
    space.items[second.id] = dataclasses.replace(stored, **{field: value})
    saver._cache.clear()
    for read in (lambda: saver.get("t", second.id), lambda: saver.get("t"),
                 lambda: list(saver.list("t")), lambda: saver.get("t", first.id)):
        with contextlib.suppress(SAFE):
            read()


@settings(max_examples=FUZZ_EXAMPLES // 3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(
    st.sampled_from(["ns", "cid", "kf", "base", "d", "seq", "s", "ts", "rec", "meta",
                     "chunks", "p", "node", "fmt", "w"]),
    _FIELD_VALUES | st.dictionaries(st.sampled_from(["token", "n", "size"]), _FIELD_VALUES),
    max_size=8))
def test_hostile_mongodb_documents(fields):
    import mongo_harness

    saver = mongo_harness.mongomock_saver()
    put = saver.put(Checkpoint("t", {"n": 1}))
    doc = saver._checkpoints.find_one({"thread_id": "t"})
    doc.update(fields)
    saver._checkpoints.delete_many({})
    saver._checkpoints.insert_one(doc)
    saver._cache.clear()
    from savegame.savers.mongodb import UnsupportedLayoutError

    for read in (lambda: saver.get("t"), lambda: saver.get("t", put.id),
                 lambda: list(saver.list("t")), lambda: saver.list_threads(),
                 lambda: saver.get_writes("t", [put.id])):
        try:
            read()
        except (*SAFE, UnsupportedLayoutError):
            pass
