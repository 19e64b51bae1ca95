"""Unit and property tests of savegame.savers.codec: records, deltas, keyframe policy."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from savegame.savers import Checkpoint, MemorySaver, codec
from savegame.savers.codec import (
    DELTA,
    FORMAT_VERSION,
    KEYFRAME,
    Base,
    KeyframePolicy,
    RecordError,
    UnsupportedFormatError,
    decode_path,
    encode,
    raw_hash,
    read_header,
)
from savegame.savers.serde import Serializer

SER = Serializer()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORDS = [
    "".join(random.Random(i).choices(_LETTERS, k=random.Random(-i).randint(2, 10)))
    for i in range(3000)
]


def sentence(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def chat_state(rng: random.Random, n: int, chars: int = 400) -> dict[str, Any]:
    return {"messages": [{"role": rng.choice(["user", "assistant"]),
                          "content": sentence(rng, chars)} for _ in range(n)],
            "step": n}


def dumps(state: dict[str, Any]) -> bytes:
    return SER.dumps(state)


def same(a: Any, b: Any) -> bool:
    """Exact equality: types all the way down, nan == nan, -0.0 != 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        pairs = zip(a.items(), b.items(), strict=True)
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in pairs
        )
    return bool(a == b)


def _varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _header_size(data: bytes | bytearray) -> int:
    """Where a record's crc32 ends, read without the codec (format 6: varint fields;
    formats 4 and 5: fixed widths)."""
    kind = data[3] & 0x0F  # format 4 and later keep flags in the high bits
    if 1 <= data[2] <= 5:
        size = (struct.calcsize(">2sBBHI8sI") + (8 if kind != KEYFRAME else 0)
                + struct.calcsize(">IH"))
        if kind == KEYFRAME:
            (count,) = struct.unpack_from(">H", data, size)
            size += 2
            for _ in range(count):
                _, length = struct.unpack_from(">IH", data, size)
                size += 6 + length
        return size + 4
    _, pos = _varint(data, 4)  # depth
    _, pos = _varint(data, pos)  # raw_len
    _, pos = _varint(data, pos + 8)  # index, after raw_hash
    _, pos = _varint(data, pos + (8 if kind != KEYFRAME else 0))  # chain_bytes
    pos += 2  # keyframe_ratio
    if kind == KEYFRAME:
        count, pos = _varint(data, pos)
        for _ in range(count):
            _, pos = _varint(data, pos)
            length, pos = _varint(data, pos)
            pos += length
    return pos + 4


def fix_crc(data: bytes | bytearray) -> bytes:
    """Recompute a record's crc32 so only the deliberate change remains."""
    data = bytearray(data)
    try:
        size = _header_size(data)
    except (IndexError, struct.error):
        return bytes(data)  # a length itself was altered: nothing to fix
    if size > len(data):
        return bytes(data)
    crc = zlib.crc32(bytes(data[size:]), zlib.crc32(bytes(data[: size - 4])))
    data[size - 4: size] = struct.pack(">I", crc)
    return bytes(data)


# -- header ------------------------------------------------------------------------------


def _pair() -> tuple[bytes, codec.EncodedRecord, bytes, codec.EncodedRecord]:
    rng = random.Random(1)
    state = chat_state(rng, 20, 200)
    raw0 = dumps(state)
    key = encode(raw0)
    state["messages"].append({"role": "user", "content": sentence(rng, 200)})
    raw1 = dumps(state)
    delta = encode(raw1, Base(raw0, key.header))
    return raw0, key, raw1, delta


def test_header_roundtrip() -> None:
    raw0, key, raw1, delta = _pair()
    assert key.header.kind == KEYFRAME and key.base == KEYFRAME and key.header.is_keyframe
    assert delta.header.kind == DELTA and delta.base == DELTA
    for raw, rec in ((raw0, key), (raw1, delta)):
        parsed = read_header(rec.data)
        assert parsed == rec.header
        assert parsed.raw_len == len(raw) and parsed.raw_hash == raw_hash(raw)
        assert parsed.size < len(rec.data)
    assert key.header.depth == 1 and key.header.base_hash is None
    assert delta.header.depth == 2 and delta.header.base_hash == raw_hash(raw0)
    assert delta.header.chain_bytes == len(delta.data) - delta.header.size
    assert decode_path([key.data, delta.data]) == [raw0, raw1]
    assert decode_path([delta.data], Base(raw0, key.header)) == [raw1]
    assert len(delta.data) < len(key.data) / 4
    assert delta.header.size <= 32  # format 6's varints: 40 bytes at formats 4-5

def test_stated_depth_is_the_headers_unverified() -> None:
    """What a store that keeps no depth beside the record reads before decoding: the
    header's depth; bytes that are no record say 1 (reading them fails, named)."""
    _, key, raw1, delta = _pair()
    deeper = encode(raw1 + b"x", Base(raw1, delta.header))
    for rec in (key, delta, deeper):
        assert codec.stated_depth(rec.data) == read_header(rec.data).depth
    assert codec.stated_depth(deeper.data) == 3
    for bad in (b"", b"SG\x04", b"XX" + delta.data[2:]):
        assert codec.stated_depth(bad) == 1
        with pytest.raises(RecordError):
            read_header(bad)


def test_empty_state_record() -> None:
    raw = dumps({})
    rec = encode(raw)
    assert decode_path([rec.data]) == [raw]
    child = encode(raw, Base(raw, rec.header))
    path = [rec.data, child.data] if child.header.kind != KEYFRAME else [child.data]
    assert decode_path(path)[-1] == raw


def test_read_header_rejects_bad_magic() -> None:
    _, key, _, _ = _pair()
    for bad in (b"XX" + key.data[2:], b"sg" + key.data[2:], b"", b"S", b"SG"):
        with pytest.raises(RecordError):
            read_header(bad)


@pytest.mark.parametrize("which", ["keyframe", "delta"])
def test_read_header_rejects_truncation(which: str) -> None:
    _, key, _, delta = _pair()
    data = key.data if which == "keyframe" else delta.data
    for cut in range(len(data)):
        with pytest.raises(RecordError):
            read_header(data[:cut])
        with pytest.raises(RecordError):
            decode_path([data[:cut]]) if which == "keyframe" else decode_path(
                [key.data, data[:cut]])


@pytest.mark.parametrize("which", ["keyframe", "delta"])
def test_any_flipped_byte_is_detected(which: str) -> None:
    _, key, _, delta = _pair()
    data = key.data if which == "keyframe" else delta.data
    for index in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[index] ^= mask
            with pytest.raises(RecordError):
                read_header(bytes(bad))
            with pytest.raises(RecordError):
                decode_path([bytes(bad)]) if which == "keyframe" else decode_path(
                    [key.data, bytes(bad)])


@pytest.mark.parametrize("which", ["keyframe", "delta"])
def test_higher_format_version_refused(which: str) -> None:
    _, key, _, delta = _pair()
    data = bytearray(key.data if which == "keyframe" else delta.data)
    data[2] = FORMAT_VERSION + 1
    bumped = fix_crc(data)
    with pytest.raises(UnsupportedFormatError, match="upgrade") as info:
        read_header(bumped)
    assert str(FORMAT_VERSION + 1) in str(info.value)
    assert isinstance(info.value, RecordError)
    with pytest.raises(UnsupportedFormatError, match="upgrade"):
        if which == "keyframe":
            decode_path([bumped])
        else:
            decode_path([key.data, bumped])
    # Sanity: fix_crc alone on an unchanged record keeps it valid.
    assert read_header(fix_crc(key.data)) == key.header
    data[2] = 0xFF
    with pytest.raises(UnsupportedFormatError):
        read_header(fix_crc(data))


def test_malformed_header_fields_refused() -> None:
    _, key, _, _ = _pair()
    for index, value in ((2, 0), (3, 7), (4, 0)):  # version 0, kind 7, depth 0
        data = bytearray(key.data)
        data[index] = value
        with pytest.raises(RecordError):
            read_header(fix_crc(data))


@pytest.mark.parametrize("which", ["keyframe", "delta"])
def test_tampered_frame_with_valid_crc_never_gives_wrong_bytes(which: str) -> None:
    raw0, key, raw1, delta = _pair()
    rec, expected = (key, raw0) if which == "keyframe" else (delta, raw1)
    base = None if which == "keyframe" else Base(raw0, key.header)
    for index in range(len(rec.data)):
        bad = bytearray(rec.data)
        bad[index] ^= 0x5A
        if index < 2:
            continue  # magic: covered above
        try:
            out = decode_path([fix_crc(bad)], base)
        except RecordError:
            continue
        assert out == [expected], f"byte {index} altered gave wrong bytes"


def test_decode_against_wrong_base_fails() -> None:
    rng = random.Random(7)
    state = chat_state(rng, 30, 100)
    raw0 = dumps(state)
    key = encode(raw0)
    state["messages"].append({"role": "user", "content": "one more"})
    raw1 = dumps(state)
    delta = encode(raw1, Base(raw0, key.header))
    assert delta.header.kind == DELTA
    # Same length, one byte changed, anywhere in the base, under the right header: the
    # decoded state's fingerprint check catches it (formats 4-5: zstd's content checksum).
    # (A changed byte the delta never copies from cannot change the output: then the exact
    # bytes come back, never wrong ones.)
    failures = 0
    for index in range(len(raw0)):
        wrong = bytearray(raw0)
        wrong[index] ^= 0x01
        try:
            out = decode_path([delta.data], Base(bytes(wrong), key.header))
        except RecordError:
            failures += 1
            continue
        assert out == [raw1], f"wrong bytes with base byte {index} changed"
    assert failures > len(raw0) * 0.9
    for index in (len(raw0) // 3, len(raw0) // 2, len(raw0) * 2 // 3):
        wrong = bytearray(raw0)
        wrong[index] ^= 0x01
        wrong_raw = bytes(wrong)
        with pytest.raises(RecordError, match="does not match its fingerprint"):
            decode_path([delta.data], Base(wrong_raw, key.header))
        # The wrong base as a record of its own: the base hash catches it.
        wrong_key = encode(wrong_raw)
        with pytest.raises(RecordError, match="base"):
            decode_path([wrong_key.data, delta.data])
        with pytest.raises(RecordError):
            decode_path([delta.data], Base(wrong_raw, wrong_key.header))


def test_delta_without_base_fails() -> None:
    _, _, _, delta = _pair()
    with pytest.raises(RecordError, match="without its base") as info:
        decode_path([delta.data])
    assert info.value.position == 0
    with pytest.raises(RecordError):
        decode_path([delta.data, delta.data])


def test_linkage_and_depth_mismatch_fail() -> None:
    raw0, key, raw1, delta = _pair()
    other = encode(dumps({"other": 1}))
    with pytest.raises(RecordError) as info:
        decode_path([other.data, delta.data])  # delta of another chain
    assert info.value.position == 1
    with pytest.raises(RecordError):
        decode_path([key.data, key.data])  # a keyframe where a delta should be
    with pytest.raises(RecordError, match="depth"):
        decode_path([delta.data], Base(raw0, dataclasses.replace(key.header, depth=2)))
    # Depth forged in the record itself (crc fixed) to go backwards: still refused. (A depth
    # that only grows is a conservative hint: a rewritten base may sit shallower.)
    forged = bytearray(delta.data)
    assert forged[4] == 2  # format 6: depth is the varint after the kind byte
    forged[4] = 1
    with pytest.raises(RecordError, match="depth"):
        decode_path([key.data, fix_crc(forged)])
    # A chain skipping a record.
    state = SER.loads(raw1)
    state["messages"].append({"role": "user", "content": "third"})
    raw2 = dumps(state)
    third = encode(raw2, Base(raw1, delta.header))
    assert third.header.kind == DELTA
    assert decode_path([key.data, delta.data, third.data]) == [raw0, raw1, raw2]
    with pytest.raises(RecordError) as info:
        decode_path([key.data, third.data])
    assert info.value.position == 1


# -- keyframe policy ---------------------------------------------------------------------


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        KeyframePolicy(max_chain=0)
    with pytest.raises(ValueError):
        KeyframePolicy(max_chain=0x10000)


@pytest.mark.parametrize("max_chain", [1, 2, 3, 5, 8, 32])
def test_linear_chain_never_exceeds_max_chain(max_chain: int) -> None:
    policy = KeyframePolicy(max_chain=max_chain)
    rng = random.Random(max_chain)
    state = chat_state(rng, 10, 200)
    nodes: list[tuple[bytes, codec.RecordHeader, bytes, int | None]] = []
    keyframes = 0
    for _ in range(120):
        state["messages"].append({"role": "user", "content": sentence(rng, 200)})
        raw = dumps(state)
        parent = Base(nodes[-1][0], nodes[-1][1]) if nodes else None
        rec = encode(raw, parent, policy, index=keyframes + 1)
        assert 1 <= rec.header.depth <= max_chain
        keyframes += rec.base == KEYFRAME
        nodes.append((raw, rec.header, rec.data,
                      None if rec.base == KEYFRAME else len(nodes) - 1))
        path = [len(nodes) - 1]
        while nodes[path[-1]][3] is not None:
            path.append(nodes[path[-1]][3])  # type: ignore[arg-type]
        path.reverse()
        assert len(path) == rec.header.depth
        assert rec.header.index == keyframes
        assert decode_path([nodes[i][2] for i in path])[-1] == raw
    assert keyframes == -(-120 // max_chain)  # a master exactly when the chain is full


def test_reverse_records_decode_back_from_the_newest_master() -> None:
    """A master rewritten against a newer one (what a growing thread does when its next
    master is written) decodes exactly, costs little, and keeps its forward chain."""
    rng = random.Random(11)
    state = chat_state(rng, 40, 300)
    raw0 = dumps(state)
    master0 = encode(raw0, index=1)
    state["messages"].append({"role": "user", "content": sentence(rng, 300)})
    raw1 = dumps(state)
    child = encode(raw1, Base(raw0, master0.header))
    for _ in range(30):
        state["messages"].append({"role": "user", "content": sentence(rng, 300)})
    raw2 = dumps(state)
    master1 = encode(raw2, index=2, roots=[(1, "m0")])
    assert master1.header.roots == ((1, "m0"),)
    assert read_header(master1.data) == master1.header
    reverse = codec.encode_reverse(raw0, master0.header, Base(raw2, master1.header))
    assert reverse.header.kind == codec.REVERSE and reverse.header.is_root
    assert reverse.header.depth == 1 and reverse.header.index == 1
    assert len(reverse.data) < len(master0.data) / 20
    assert decode_path([master1.data, reverse.data, child.data]) == [raw2, raw0, raw1]
    with pytest.raises(RecordError):  # a reverse record needs a master as its base
        decode_path([master1.data, child.data])
    with pytest.raises(RecordError, match="base"):
        decode_path([master0.data, reverse.data])


def test_repoint_follows_a_fenwick_tree() -> None:
    """Master i ends up pointing to i + lowbit(i): every master reaches the newest in at
    most log2(n) + 1 steps, and each new master rewrites only the current roots."""
    roots: list[tuple[int, str]] = []
    target: dict[int, int] = {}
    rewrites = 0
    for n in range(2, 300):
        members, roots = codec.repoint(roots, (n - 1, f"m{n - 1}"), n)
        for index, _ in members:
            target[index] = n
        rewrites += len(members)
        for i in range(1, n):
            hops, at = 0, i
            while at != n:
                at, hops = target[at], hops + 1
            assert hops <= math.log2(n) + 1, (i, n, hops)
    for i in range(1, 256):  # settled masters point to i + lowbit(i)
        assert target[i] == i + (i & -i) or i + (i & -i) >= 299
    assert rewrites <= 300 * math.log2(300)


def test_scene_cut_becomes_keyframe() -> None:
    rng = random.Random(3)
    raw0 = dumps(chat_state(rng, 50, 300))
    key = encode(raw0)
    # The same shape, entirely new content: a delta would cost as much as a keyframe.
    raw1 = dumps(chat_state(random.Random(99), 50, 300))
    rec = encode(raw1, Base(raw0, key.header), KeyframePolicy())
    assert rec.base == KEYFRAME and rec.header.is_keyframe and rec.header.depth == 1
    # With the scene-cut threshold disabled the delta is kept (so the rule above did it).
    loose = KeyframePolicy(max_delta_ratio=10.0, max_chain_ratio=10.0)
    rec = encode(raw1, Base(raw0, key.header), loose)
    assert rec.base == DELTA


def test_chain_bytes_budget_forces_keyframe() -> None:
    policy = KeyframePolicy(max_chain=1000, max_delta_ratio=1.0, max_chain_ratio=0.5)
    rng = random.Random(5)
    state = chat_state(rng, 5, 300)
    raw = dumps(state)
    prev = encode(raw)
    prev_raw = raw
    kinds = []
    for _ in range(60):
        state["messages"].append({"role": "user", "content": sentence(rng, 300)})
        raw = dumps(state)
        rec = encode(raw, Base(prev_raw, prev.header), policy)
        kinds.append(rec.base)
        assert rec.header.chain_bytes <= 0.5 * rec.header.raw_len * 1.0 or rec.base == KEYFRAME
        prev, prev_raw = rec, raw
    assert KEYFRAME in kinds and DELTA in kinds


def test_no_base_means_keyframe() -> None:
    raw = dumps({"a": 1})
    assert encode(raw, None).base == KEYFRAME


@pytest.mark.slow
@pytest.mark.parametrize("megabytes", [2, 4, 8])
def test_large_base_still_gives_small_delta(megabytes: int) -> None:
    """Guards the large-base compression cliff (research/compression_delta.md §3)."""
    rng = random.Random(megabytes)
    messages = []
    size = 0
    while size < megabytes << 20:
        text = sentence(rng, 400)
        messages.append({"role": "user", "content": text})
        size += len(text) + 10
    state = {"messages": messages}
    raw0 = dumps(state)
    assert len(raw0) >= megabytes << 20
    key = encode(raw0)
    messages.append({"role": "assistant", "content": sentence(rng, 400)})
    raw1 = dumps(state)
    rec = encode(raw1, Base(raw0, key.header))
    assert rec.base != KEYFRAME
    assert len(rec.data) < 0.05 * len(key.data), (len(rec.data), len(key.data))
    assert decode_path([rec.data], Base(raw0, key.header)) == [raw1]


# -- the property test: random histories with forks -------------------------------------

POLICIES = [
    KeyframePolicy(max_chain=1),
    KeyframePolicy(max_chain=2),
    KeyframePolicy(max_chain=3),
    KeyframePolicy(max_chain=3, reverse=False),
    KeyframePolicy(),
    KeyframePolicy(max_chain=8, max_delta_ratio=0.9),
    KeyframePolicy(max_chain=8, max_chain_ratio=0.3),
    KeyframePolicy(max_chain=32),
    KeyframePolicy(max_chain=32, max_delta_ratio=0.05),
    KeyframePolicy(max_chain=32, max_delta_ratio=2.0, max_chain_ratio=50.0),
    KeyframePolicy(max_chain=32, max_chain_ratio=0.1, level=1),
]

OPS = ["append", "append", "append", "edit", "delete", "retype", "replace", "grow"]


def _new_value(rng: random.Random, avoid: type | None) -> Any:
    makers = [
        lambda: rng.randint(-(2**70), 2**70),
        lambda: sentence(rng, rng.randint(0, 60)),
        lambda: [sentence(rng, 20) for _ in range(rng.randint(0, 4))],
        lambda: tuple(rng.randint(0, 9) for _ in range(rng.randint(0, 4))),
        lambda: {sentence(rng, 5): rng.random() for _ in range(rng.randint(0, 3))},
        lambda: None,
        lambda: rng.random() * 10,
        lambda: sentence(rng, 30).encode(),
    ]
    for _ in range(20):
        value = rng.choice(makers)()
        if type(value) is not avoid:
            return value
    return value


def apply_op(op: str, state: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    state = {k: (list(v) if type(v) is list else v) for k, v in state.items()}
    messages = state.get("messages")
    if type(messages) is not list:
        messages = state["messages"] = []
    if op == "append":
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": rng.choice(["user", "tool"]), "content": sentence(rng, 80)})
    elif op == "grow":
        messages.extend({"role": "bulk", "content": sentence(rng, 300)} for _ in range(10))
    elif op == "edit" and messages:
        index = rng.randrange(len(messages))
        messages[index] = {"role": "edited", "content": sentence(rng, rng.randint(0, 200))}
    elif op == "delete":
        keys = [k for k in state if k != "messages"]
        if keys:
            del state[rng.choice(keys)]
        elif messages:
            del messages[rng.randrange(len(messages))]
    elif op == "retype":
        key = rng.choice([*state, f"k{rng.randint(0, 5)}"])
        state[key] = _new_value(rng, type(state.get(key)))
    elif op == "replace":
        state = {f"r{rng.randint(0, 3)}": _new_value(rng, None),
                 "messages": [sentence(rng, 50) for _ in range(rng.randint(0, 5))]}
    return state


@st.composite
def histories(draw: st.DrawFn) -> tuple[KeyframePolicy, int, list[tuple[int | None, str]]]:
    policy = draw(st.sampled_from(POLICIES))
    seed = draw(st.integers(0, 2**32))
    n = draw(st.integers(1, 40))
    steps: list[tuple[int | None, str]] = []
    for i in range(n):
        # None: continue from the latest; an int: fork from that earlier checkpoint.
        parent = draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None
        steps.append((parent, draw(st.sampled_from(OPS))))
    return policy, seed, steps


def build_states(seed: int, steps: list[tuple[int | None, str]]) -> list[tuple[int | None, dict]]:
    """(parent index, state) for every checkpoint; the first has no parent."""
    rng = random.Random(seed)
    out: list[tuple[int | None, dict[str, Any]]] = []
    for i, (parent, op) in enumerate(steps):
        if i == 0:
            out.append((None, apply_op("grow", {"messages": [], "n": 0}, rng)))
            continue
        p = i - 1 if parent is None else parent
        out.append((p, apply_op(op, out[p][1], rng)))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_codec_histories_decode_exactly(
    history: tuple[KeyframePolicy, int, list[tuple[int | None, str]]],
) -> None:
    policy, seed, steps = history
    states = build_states(seed, steps)
    # node: raw, header, record, base index (forward encoding, masters numbered in order)
    nodes: list[tuple[bytes, codec.RecordHeader, bytes, int | None]] = []
    masters: list[int] = []
    for me, (parent, state) in enumerate(states):
        raw = dumps(state)
        base = None if parent is None else Base(nodes[parent][0], nodes[parent][1])
        rec = encode(raw, base, policy, index=len(masters) + 1)
        assert 1 <= rec.header.depth <= policy.max_chain
        assert read_header(rec.data) == rec.header
        assert (rec.base == KEYFRAME) == (rec.header.depth == 1)
        if rec.base == KEYFRAME:
            masters.append(me)
        event(f"record kind {rec.base}")
        if parent is not None and parent != me - 1:
            event("fork")
        nodes.append((raw, rec.header, rec.data, None if rec.base == KEYFRAME else parent))
    # Every master but the newest becomes a reverse record against the next master.
    reverse_base: dict[int, int] = {}
    for older, newer in itertools.pairwise(masters):
        head = nodes[older][1]
        rec = codec.encode_reverse(nodes[older][0], head, Base(nodes[newer][0],
                                                               nodes[newer][1]), policy)
        nodes[older] = (nodes[older][0], rec.header, rec.data, None)
        reverse_base[older] = newer

    for me, (_, state) in enumerate(states):
        path = [me]
        while nodes[path[-1]][3] is not None:
            path.append(nodes[path[-1]][3])  # type: ignore[arg-type]
        assert len(path) == nodes[me][1].depth <= policy.max_chain
        while path[-1] in reverse_base:
            path.append(reverse_base[path[-1]])
        path.reverse()
        raws = decode_path([nodes[i][2] for i in path])
        assert raws == [nodes[i][0] for i in path]
        assert same(SER.loads(raws[-1]), state)
        if len(path) > 1:  # start from a decoded ancestor instead of the newest master
            cut = len(path) // 2
            known = nodes[path[cut - 1]]
            tail = decode_path([nodes[i][2] for i in path[cut:]], Base(known[0], known[1]))
            assert tail[-1] == nodes[me][0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.lists(st.booleans(), min_size=40, max_size=40))
def test_memory_saver_histories_read_back_exactly(
    history: tuple[KeyframePolicy, int, list[tuple[int | None, str]]], clears: list[bool]
) -> None:
    policy, seed, steps = history
    states = build_states(seed, steps)
    saver = MemorySaver(policy=policy)
    ids: list[str] = []
    for me, (parent, state) in enumerate(states):
        forked = parent is not None and parent != me - 1
        if clears[me] and me % 3 == 0:
            saver._cache.clear()  # a writer that lost the parent's bytes
        stored = saver.put(Checkpoint(thread_id="t", state=state,
                                      parent_id=ids[parent] if forked else None))
        assert stored.id is not None
        assert stored.parent_id == (ids[parent] if parent is not None else None)
        ids.append(stored.id)
        assert stored.step == (0 if parent is None else saver.get("t", ids[parent]).step + 1)

    def check_all() -> None:
        for me, (_, state) in enumerate(states):
            got = saver.get("t", ids[me])
            assert got is not None and got.id == ids[me]
            assert same(dict(got.state), state)

    check_all()  # warm cache
    saver._cache.clear()
    check_all()  # cold: every read decodes its chain, then warms the cache
    saver._cache.clear()
    for me in reversed(range(len(states))):  # cold, newest first
        got = saver.get("t", ids[me])
        assert got is not None and same(dict(got.state), states[me][1])
    saver._cache.clear()
    listed = list(saver.list("t"))
    assert [c.id for c in listed] == sorted(ids, reverse=True)
    by_id = {c.id: c for c in listed}
    for me, (_, state) in enumerate(states):
        assert same(dict(by_id[ids[me]].state), state)
    latest = saver.get("t")
    assert latest is not None and latest.id == ids[-1]
    # Forward chains stay within max_chain, and reads walk few reverse records.
    items = saver._threads["t"][""].items
    masters = sum(1 for item in items.values() if item.depth == 1)
    for item in items.values():
        assert 1 <= item.depth <= policy.max_chain
        hops, current = 0, item
        while current.base_id is not None:
            current, hops = items[current.base_id], hops + 1
        assert hops + 1 <= item.depth + math.log2(masters) + 2


# -- splices (format 4) ----------------------------------------------------------------------
def _text_base(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += sentence(rng, 200).encode() + bytes([rng.randrange(256)])
    return bytes(out[:size])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(16 * 1024, 200 * 1024),
       st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace"]),
                          st.floats(0, 1), st.integers(1, 3000)), max_size=8))
def test_splices_round_trip_any_edits(seed: int, size: int,
                                      edits: list[tuple[str, float, int]]) -> None:
    """Whatever the edits (insertions, deletions, replacements anywhere), a delta decodes
    to exactly the new state; small edits are spliced."""
    rng = random.Random(seed)
    base = _text_base(rng, size)
    new = bytearray(base)
    for how, where, length in edits:
        at = int(where * len(new))
        if how == "insert":
            new[at:at] = sentence(rng, length).encode()[:length]
        elif how == "delete":
            del new[at:at + length]
        else:
            new[at:at + length] = bytes(rng.randrange(256) for _ in range(min(length, 64)))
    new_raw = bytes(new)
    parent = encode(base)
    child = encode(new_raw, Base(base, parent.header), KeyframePolicy(max_delta_ratio=10,
                                                                      max_chain_ratio=10))
    assert decode_path([parent.data, child.data]) == [base, new_raw]
    event(f"spliced={child.header.splice}")
    if len(edits) <= 2 and sum(e[2] for e in edits) < 2048:  # small edits: spliced when
        assert child.header.kind == DELTA  # the base is big enough to be worth it
        assert child.header.splice == (size >= codec._SPLICE_MIN_BASE)


def test_a_growing_chat_is_spliced_small_and_reads_back() -> None:
    rng = random.Random(3)
    states = [chat_state(rng, 200)]  # ~90 KB: over the splice threshold
    for _ in range(6):
        states.append({"messages": [*states[-1]["messages"],
                                    {"role": "user", "content": sentence(rng, 400)}],
                       "step": states[-1]["step"] + 1})
    raws = [dumps(s) for s in states]
    records = [encode(raws[0])]
    for raw in raws[1:]:
        records.append(encode(raw, Base(raws[len(records) - 1], records[-1].header),
                              KeyframePolicy(max_chain=10)))
    assert all(r.header.splice for r in records[1:])
    assert all(len(r.data) < 600 for r in records[1:])  # ~400 new characters each
    assert decode_path([r.data for r in records]) == raws
    zstd_only = encode(raws[1], Base(raws[0], records[0].header), KeyframePolicy(splice=False))
    assert not zstd_only.header.splice and decode_path([records[0].data,
                                                        zstd_only.data])[1] == raws[1]


def test_a_splice_against_another_base_of_the_same_fingerprint_fails() -> None:
    """The splice decoder checks its result's XXH3: a base with the right header but other
    bytes (a damaged parent) is an error, never a plausible state."""
    rng = random.Random(5)
    base = _text_base(rng, 80 * 1024)
    new = base[:1000] + b"inserted words here " * 20 + base[1000:]
    parent = encode(base)
    child = encode(new, Base(base, parent.header))
    assert child.header.splice
    other = bytearray(base)
    other[30_000] ^= 1
    with pytest.raises(RecordError, match="fingerprint"):
        decode_path([child.data], Base(bytes(other), parent.header))


def test_format_4_flags_are_checked() -> None:
    rng = random.Random(2)
    key = encode(_text_base(rng, 1000))
    for flags in (0x20 | 0x10, 0x40, 0x80):  # a spliced master; unknown flags
        data = bytearray(key.data)
        data[3] = KEYFRAME | flags
        with pytest.raises(RecordError, match="malformed"):
            read_header(fix_crc(data))
    assert read_header(key.data).xxh3 and not read_header(key.data).splice


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40), st.integers(1, 255))
def test_a_frame_rewritten_past_its_checksum_fails_as_a_record_error(at: int, mask: int) -> None:
    """A record whose checksum was recomputed after its zstd frame was altered (a crafted
    record: a frame header declaring 10^18 bytes made zstandard raise MemoryError) is a
    RecordError, never another exception, and never other bytes."""
    raw = dumps(chat_state(random.Random(4), 20))
    record = encode(raw)
    data = bytearray(record.data)
    position = record.header.size + at
    if position >= len(data):
        return
    data[position] ^= mask
    try:
        out = decode_path([fix_crc(data)])
    except RecordError:
        return
    assert out == [raw]


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 65_537, 3 * 65_536, 200_001])
def test_raw_hash_is_xxh3_64_whatever_the_size(size: int) -> None:
    """States over 64 KiB are hashed in pieces (keeping the GIL): the fingerprint must be
    the one-shot XXH3-64 all the same, or stored records would stop matching."""
    import xxhash

    data = random.Random(size).randbytes(size)
    assert raw_hash(data) == xxhash.xxh3_64_digest(data)


def test_edits_scattered_all_over_a_big_state_fall_back_to_zstd() -> None:
    """A state changed every few hundred bytes would take thousands of splice ops (a
    Python loop each): past the bound the delta is a zstd frame, and decodes the same."""
    rng = random.Random(9)
    base = _text_base(rng, 512 * 1024)
    new = bytearray(base)
    for at in range(1000, len(new) - 10, 300):
        new[at] ^= 0xFF
    new_raw = bytes(new)
    parent = encode(base)
    child = encode(new_raw, Base(base, parent.header), KeyframePolicy(max_delta_ratio=10,
                                                                      max_chain_ratio=10))
    assert child.header.kind == DELTA and not child.header.splice
    assert codec._splice_ops(new_raw, base, 1 << 30) is None  # the op bound, not the budget
    assert decode_path([parent.data, child.data]) == [base, new_raw]


# -- pending writes stored as copies of their checkpoint's state ---------------------------
@given(st.binary(max_size=300), st.binary(min_size=64, max_size=2000),
       st.binary(max_size=300), st.binary(max_size=5000), st.binary(max_size=5000))
@settings(max_examples=150, deadline=None)
def test_a_write_copying_its_state_round_trips(head: bytes, shared: bytes, tail: bytes,
                                               before: bytes, after: bytes) -> None:
    """Whatever a write shares with its checkpoint's state, it decodes to itself with
    that state; a copy needs the state, and the same state."""
    raw, state = head + shared + tail, before + shared + after
    where = codec.location("t", "", "c", "task", "0")
    record = codec.encode_write(raw, state, where=where)
    if record.header.kind == DELTA:
        event("copy")
        assert record.header.splice and codec.write_base(record.data, where) == raw_hash(state)
        assert codec.decode_write(record.data, state, where) == raw
        with pytest.raises(RecordError, match="missing"):
            codec.decode_write(record.data, None, where)
        with pytest.raises(RecordError, match="differs"):
            codec.decode_write(record.data, state + b"!", where)
    else:
        assert record.header.is_keyframe and codec.write_base(record.data, where) is None
        assert codec.decode_write(record.data, None, where) == raw
    with pytest.raises(RecordError):  # bound to its location like every record
        codec.decode_write(record.data, state, codec.location("t", "", "other", "task", "0"))


def test_a_write_is_a_copy_only_where_it_shares_a_long_run() -> None:
    rng = random.Random(5)
    state = _text_base(rng, 200 * 1024)
    message = state[150_000:150_400]
    copied = codec.encode_write(b"\x81\xa5value" + message, state)
    assert copied.header.kind == DELTA and len(copied.data) < 80
    assert codec.encode_write(state[:40], state).header.is_keyframe  # too short to copy
    assert codec.encode_write(message, None).header.is_keyframe  # no state at hand


def test_a_long_write_copying_nothing_is_compressed_against_its_states_first_bytes() -> None:
    """A new message shares words with the conversation: with the state's first 8 KiB as
    zstd dictionary it takes less than alone, and, like a copy, needs that state."""
    rng = random.Random(5)
    state = _text_base(rng, 200 * 1024)
    words = state[:8192].split()
    random.Random(6).shuffle(words)
    fresh = b" ".join(words)[:600]  # the conversation's words, in a new order
    assert codec._copy_ops(fresh, state) is None
    record = codec.encode_write(fresh, state)
    alone = encode(fresh)
    assert record.header.kind == DELTA and record.header.splice
    assert len(record.data) < 0.8 * len(alone.data)
    assert codec.decode_write(record.data, state) == fresh
    assert codec.write_base(record.data) == raw_hash(state)
    with pytest.raises(RecordError, match="missing"):
        codec.decode_write(record.data, None)
    short = fresh[:100]  # too short to be worth a dictionary
    assert codec.encode_write(short, state).header.is_keyframe


def test_a_write_is_searched_for_at_the_start_and_the_end_of_a_big_state() -> None:
    """The search is bounded (256 KiB at either end): a copy from the middle of a big
    state is not looked for, and the write is stored whole, still decoding."""
    rng = random.Random(8)
    state = _text_base(rng, 1024 * 1024)
    for at, copy in ((1000, True), (len(state) - 2000, True), (500 * 1024, False)):
        record = codec.encode_write(state[at:at + 600], state)
        assert (len(record.data) < 80) is copy  # else compressed against the first 8 KiB
        assert codec.decode_write(record.data, state) == state[at:at + 600]


def test_every_record_is_written_in_format_6(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masters, deltas and pending writes (copies, splices, whole) all carry format 6; a
    savegame reading format 5 refuses each with "upgrade" instead of calling it damaged."""
    state = _text_base(random.Random(3), 100 * 1024)
    copy = codec.encode_write(state[2000:2600], state)
    alone = codec.encode_write(b"nothing in common", state)
    master = encode(state)
    delta = encode(state + b"more", Base(state, master.header))
    records = (copy, alone, master, delta)
    assert {record.header.version for record in records} == {6}
    assert codec.decode_write(copy.data, state) == state[2000:2600]
    monkeypatch.setattr(codec, "FORMAT_VERSION", 5)
    for record in records:
        with pytest.raises(codec.UnsupportedFormatError, match="upgrade savegame"):
            read_header(record.data)


def test_threads_compressing_at_once_each_get_their_own_frames() -> None:
    """Small inputs share idle compressors across threads: threads compressing at once
    never share one (a zstd context used by two threads at a time garbles both frames)."""
    import concurrent.futures

    rnd = random.Random(5)
    inputs = [bytes(rnd.choice(b"abcdefgh ") for _ in range(rnd.randint(200, 60_000)))
              for _ in range(64)]
    alone = [codec.encode(raw).data for raw in inputs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            together = list(pool.map(lambda raw: codec.encode(raw).data, inputs))
            assert together == alone
    assert [codec.decode_path([data]) for data in together] == [[raw] for raw in inputs]
