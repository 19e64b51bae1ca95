"""IO-free parts of the MongoDB savers: document layout, queries, indexes, chunking.

Both savers (``AsyncMongoSaver`` and its generated twin ``MongoSaver``) build every document
and every filter here, so the two read and write exactly the same layout.

Collections (names get the saver's ``prefix``):

``checkpoints``
    one document per live checkpoint (layout below); ``_id`` is a 128-bit hash of
    (thread_id, namespace, checkpoint id), so a retried insert of the same checkpoint is a
    DuplicateKeyError and never a second copy. On a collection sharded on
    ``{thread_id: 1}`` every document of a thread lives on one shard, where ``_id`` and
    the unique (thread_id, ns, seq) index are enforced.
``chunks``
    the pieces of a record too big for one document, written before the head document
    that points at them (``chunks: {token, n, size}``); unreferenced pieces are orphans.
``archive``
    released runs: copies of the checkpoint documents with a ``version`` (1, 2, ...) and
    ``_id`` hashed over (thread_id, namespace, checkpoint id, version).
``releases``
    one marker document per released version, claimed with ``pending: true`` before the
    run is copied and cleared once the live documents are deleted: a release interrupted
    in between is finished, under the same version, by the next one.
``writes``
    pending writes (``put_writes``): ``{_id: hash(thread, ns, cid, task, idx), thread_id,
    ns, cid, task, idx, channel, path, rec}``, indexed on (thread_id, ns, cid). Layout 3
    keeps a checkpoint's writes in its own document (``w`` below) and this collection only
    for writes whose checkpoint is not stored (``put_writes`` before ``put``).
``meta``
    one document ``{_id: "layout", version}``: the layout the store was created with, which
    every saver keeps writing (an older saver may share the store). A store created before
    layout 2 (whose documents have no ``seq``) has none and is read in *legacy* mode: its
    latest checkpoint is found by (seq, cid) order.

Concurrency: ``seq`` numbers the checkpoints of a (thread, namespace) in append order, and
a unique index on (thread_id, ns, seq) makes an insert that takes a seq someone else took
fail (DuplicateKeyError): the compare-and-set that keeps two writers from both appending to
the same latest checkpoint (see ``savers/base.py``). The index is partial (documents with
a ``seq``), so legacy documents need none; it has ``thread_id`` as its prefix, which a
unique index on a sharded collection needs: shard on ``{thread_id: 1}`` (ranged).

Checkpoint document (layout 5; layouts 1 and 2 spell three fields out and keep writes
apart, see :data:`NAMES`; layouts 3 and 4 differ where noted)::

    _id        str           hash of thread_id, ns, cid (+ version in the archive): 96
                             bits as 16 base64url characters (3: 128 bits in 22; 2: 32
                             hex digits); text, not BinData, so every server and
                             emulator matches it
    thread_id  str           every query filters on it (the shard key)
    ns         str           namespace
    cid        str           checkpoint id (time-ordered text: sorting by it is "newest"),
                             a canonical UUID in 22 characters (see :func:`id_value`;
                             4 and before: the id as it is, 36 characters for a UUID)
    p          bin|str|null? parent checkpoint id, absent when it is ``base`` (a delta
                             against its parent: most documents) and null for none
                             where there is a base; 16 bytes (BinData 4) when it is a
                             canonical UUID, as LangGraph's are, else text (3: ``true``
                             where 4 leaves it out, absent for none; 2: ``parent``)
    kf         str?          chain-group label: the keyframe that started the record's
                             chain (from layout 3: absent on that keyframe, whose ``cid``
                             it is); an id as ``cid`` stores it
    base       str?          the record this one is a delta against (absent: keyframe);
                             an id as ``cid`` stores it
    d          int           (layouts 1 and 2: ``depth``, records a read decodes; layout 3
                             reads it from the record's header)
    seq        int           append order within (thread_id, ns); the latest is the
                             highest (absent in legacy documents)
    s          int           step (2: ``step``); absent when it is ``seq - 1`` (a linear
                             thread's checkpoints)
    node, next str?          node_id, next_node_id
    meta       object        metadata as BSON fields: ``list(metadata=...)`` filters on
                             ``meta.<key>`` server-side
    ts         date          created_at; absent where it is the time the checkpoint id
                             states (a UUIDv6 or v7 made at the put, see ``id_time``; 3:
                             always)
    rec        BinData       the record (codec.py), absent when it is chunked
    chunks     object        {token, n, size} when the record is in ``chunks``
    exp        date          expiry (only with ``ttl``): a TTL index deletes the document
    w          array         pending writes, each one BinData (see :func:`write_entry`; 3:
                             ``{t: task id (bin|str, as p), i: index, c: channel, p:
                             task path (absent when empty), r: record}``) (not in the
                             archive: a release deletes the run's writes)
    wn         int           changes of ``w`` after its first (a compare-and-set count)
    fmt        int           layout version (absent = 1); newer layouts are refused
    version    int           (archive only) the released version
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson.binary import UUID_SUBTYPE, Binary

from .. import codec
from ..base import StoredCheckpoint, StoredWrite
from ..checkpoint import id_time
from ..errors import CorruptCheckpointError, SavegameError
from ..known_text import pack_text, unpack_text

__all__ = [
    "CHUNK_BYTES",
    "LAYOUT_VERSION",
    "NAMES",
    "Collections",
    "UnsupportedLayoutError",
    "archive_doc",
    "chunk_docs",
    "from_doc",
    "join_chunks",
    "metadata_filter",
    "metadata_matches",
    "record_id",
    "release_id",
    "to_doc",
    "write_entry",
    "writes_of",
]

LAYOUT_VERSION = 5
#: Records longer than this are split into chunk documents of at most this size, which
#: keeps every document under MongoDB's 16 MiB limit with room for the envelope.
CHUNK_BYTES = 15 << 20


@dataclass(frozen=True, slots=True)
class Names:
    """The field names of a layout that differ between layouts."""

    parent: str
    depth: str
    step: str


#: Layout 3 shortened the fields no query names; queried ones (thread_id, ns, cid, kf,
#: base, seq, meta, ts, exp) keep their names in every layout.
NAMES = {1: Names("parent", "depth", "step"), 2: Names("parent", "depth", "step"),
         3: Names("p", "d", "s"), 4: Names("p", "d", "s"), 5: Names("p", "d", "s")}
#: The layout of the writes collection's documents, which no later layout changed.
LOOSE_LAYOUT = 2


#: A canonical UUID, as ``str(uuid.UUID(...))`` spells one.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid_bytes(value: str) -> bytes | None:
    """The 16 bytes of a canonical UUID's text (None: ``value`` is not one)."""
    if _CANONICAL_UUID.fullmatch(value):
        return bytes.fromhex(value.replace("-", ""))
    return None


def _uuid_text(raw: bytes) -> str:
    """The canonical text of a UUID's 16 bytes (:func:`_uuid_bytes` undone)."""
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def pack_id(value: str) -> str | Binary:
    """A stored id: a canonical UUID (LangGraph's task and checkpoint ids) as 16 bytes,
    anything else as the text it is. :func:`unpack_id` gives the same text back."""
    raw = _uuid_bytes(value)
    return value if raw is None else Binary(raw, UUID_SUBTYPE)


#: The digits of a packed checkpoint id, in ASCII order, so that packed ids compare as
#: the UUIDs they stand for; and the translation from and to base64's own digits.
_DIGITS = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_DIGITS = bytes.maketrans(_BASE64, _DIGITS)
_FROM_DIGITS = bytes.maketrans(_DIGITS, _BASE64)
#: A packed id: 128 bits in 22 digits, the first holding the top two bits.
_PACKED = re.compile(r"[-012][-0-9A-Z_a-z]{21}")


def id_value(checkpoint_id: str, layout: int) -> str:
    """How ``cid``, ``base`` and ``kf`` store a checkpoint id. From layout 5 a canonical
    UUID (LangGraph's ids and savegame's own) is 22 characters of :data:`_DIGITS` instead of
    36: still text, which every server and emulator matches, ``$graphLookup`` follows and
    ``cid`` sorts on, in the UUIDs' order. Other ids stay as they are, behind a ``~`` where
    they could be read as a packed id (in a thread mixing both kinds, a UUID sorts among
    the others by its 22 digits, not by its 36 characters)."""
    if layout < 5:
        return checkpoint_id
    raw = _uuid_bytes(checkpoint_id)
    if raw is not None:
        return base64.b64encode(b"\0\0" + raw)[2:].translate(_TO_DIGITS).decode("ascii")
    if checkpoint_id.startswith("~") or _PACKED.fullmatch(checkpoint_id):
        return "~" + checkpoint_id
    return checkpoint_id


def id_text(value: Any, field: str, layout: int) -> str:
    """The checkpoint id stored as ``value`` in ``field`` (:func:`id_value` undone)."""
    if not isinstance(value, str):
        raise TypeError(f"field {field!r} is {type(value).__qualname__}, not str")
    if layout < 5:
        return value
    if value.startswith("~"):
        return value[1:]
    if _PACKED.fullmatch(value):
        digits = base64.b64decode(b"AA" + value.encode("ascii").translate(_FROM_DIGITS))
        return _uuid_text(digits[2:])
    return value


def unpack_id(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID):  # a client with uuidRepresentation="standard"
        return str(value)
    if isinstance(value, bytes) and len(value) == 16:
        return _uuid_text(bytes(value))
    raise TypeError(f"field {field!r} is {type(value).__qualname__}, not an id")


class UnsupportedLayoutError(SavegameError):
    """A document was written by a newer savegame (a newer document layout)."""


@dataclass(frozen=True, slots=True)
class Collections:
    """Collection names of one saver."""

    checkpoints: str
    chunks: str
    archive: str
    releases: str
    writes: str
    meta: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Collections:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__qualname__}")
        return cls(prefix + "checkpoints", prefix + "chunks", prefix + "archive",
                   prefix + "releases", prefix + "writes", prefix + "meta")

    def all(self) -> tuple[str, ...]:
        return (self.checkpoints, self.chunks, self.archive, self.releases, self.writes,
                self.meta)


def _digest(*parts: str | int) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = str(part).encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def _hash(*parts: str | int) -> str:
    return _digest(*parts).hex()


def record_id(thread_id: str, namespace: str, checkpoint_id: str, layout: int) -> str:
    """``_id`` of a live checkpoint document: 32 hex digits up to layout 2, 22 base64url
    characters in layout 3 (the same 128 bits), 16 from layout 4 (96 of them: ids are
    unique within a collection, where 2^48 documents give even odds of one collision)."""
    digest = _digest("c", thread_id, namespace, checkpoint_id)
    if layout >= 4:
        return base64.urlsafe_b64encode(digest[:12]).decode("ascii")
    if layout >= 3:
        return base64.urlsafe_b64encode(digest)[:22].decode("ascii")
    return digest.hex()


def archive_id(thread_id: str, namespace: str, checkpoint_id: str, version: int) -> str:
    """``_id`` of an archived checkpoint document."""
    return _hash("a", thread_id, namespace, checkpoint_id, version)


def release_id(thread_id: str, version: int) -> str:
    """``_id`` of a release marker: allocating a version is inserting it."""
    return _hash("r", thread_id, version)


def new_token() -> str:
    """A fresh chunk-set token: each put attempt writes its own chunks."""
    return os.urandom(12).hex()


def to_doc(
    stored: StoredCheckpoint,
    *,
    layout: int = LAYOUT_VERSION,
    expire_at: dt.datetime | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    writes: Sequence[StoredWrite] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The head document of ``stored`` in ``layout`` and the chunk documents to write
    before it; ``writes`` (layout 3) are its pending writes, stored in it."""
    names = NAMES[layout]
    doc: dict[str, Any] = {
        "_id": record_id(stored.thread_id, stored.namespace, stored.id, layout),
        "thread_id": stored.thread_id,
        "ns": stored.namespace,
        "cid": id_value(stored.id, layout),
        "seq": stored.seq,
    }
    if layout < 4 or _millis(id_time(stored.id)) != _millis(stored.created_at):
        doc["ts"] = stored.created_at
    if layout < 3 or stored.keyframe_id != stored.id:  # (3: a keyframe's label is itself)
        doc["kf"] = id_value(stored.keyframe_id, layout)
    if layout < 3:  # (layout 3: the record's header says it)
        doc[names.depth] = stored.depth
    if layout < 3 or not stored.seq or stored.step != stored.seq - 1:
        doc[names.step] = stored.step  # (layout 3: a linear thread's step is its seq - 1)
    if layout >= 4:
        if stored.parent_id != stored.base_id:
            doc[names.parent] = None if stored.parent_id is None else pack_id(stored.parent_id)
    elif stored.parent_id is not None:
        doc[names.parent] = _parent_value(stored, layout)
    if stored.base_id is not None:
        doc["base"] = id_value(stored.base_id, layout)
    if stored.node_id is not None:
        doc["node"] = stored.node_id
    if stored.next_node_id is not None:
        doc["next"] = stored.next_node_id
    if stored.metadata:
        doc["meta"] = dict(stored.metadata)
    if expire_at is not None:
        doc["exp"] = expire_at
    record = stored.record
    chunks: list[dict[str, Any]] = []
    if len(record) > chunk_bytes:
        token = new_token()
        chunks = chunk_docs(stored.thread_id, token, record, stored.created_at, chunk_bytes)
        doc["chunks"] = {"token": token, "n": len(chunks), "size": len(record)}
    else:
        doc["rec"] = record
    if writes:
        doc["w"] = [write_entry(write, layout) for write in writes]
    return doc, chunks


def rewrite_update(doc: Mapping[str, Any], layout: int) -> dict[str, Any]:
    """The update that gives an existing checkpoint document the record fields of ``doc``
    (its record, chain label, base and depth), removing those ``doc`` lacks."""
    names = NAMES[layout]  # and the parent, which layout 3 may spell as "it is the base"
    fields = {key: doc[key] for key in ("kf", names.depth, "rec", "chunks", "base",
                                        names.parent) if key in doc}
    unset = {key: "" for key in ("rec", "chunks", "base", "kf", names.parent)
             if key not in doc}
    update: dict[str, Any] = {"$set": fields}
    if unset:
        update["$unset"] = unset
    return update


def chunk_docs(
    thread_id: str, token: str, record: bytes, created_at: dt.datetime, chunk_bytes: int
) -> list[dict[str, Any]]:
    view = memoryview(record)
    return [
        {
            "_id": f"{token}:{index}",
            "thread_id": thread_id,
            "token": token,
            "i": index,
            "ts": created_at,
            "data": bytes(view[start:start + chunk_bytes]),
        }
        for index, start in enumerate(range(0, len(record), chunk_bytes))
    ]


def archive_doc(doc: Mapping[str, Any], version: int) -> dict[str, Any]:
    """The archived copy of a live checkpoint document, as ``version``."""
    out = {key: value for key, value in doc.items() if key not in ("_id", "w", "wn")}
    out["_id"] = archive_id(doc["thread_id"], doc["ns"], doc["cid"], version)
    out["version"] = version
    return out


def chunk_token(doc: Mapping[str, Any]) -> str | None:
    """The token of a chunked record's pieces (None: the record is inline, or the
    document is too damaged to say; :func:`from_doc` then explains)."""
    chunks = doc.get("chunks")
    token = chunks.get("token") if isinstance(chunks, Mapping) else None
    return token if isinstance(token, str) else None


def join_chunks(
    doc: Mapping[str, Any], pieces: Sequence[Mapping[str, Any]], layout: int
) -> bytes:
    """The record of a chunked head document from its chunk documents (any order).

    A missing or short piece is a :class:`CorruptCheckpointError`, never partial state.
    """
    chunks = doc["chunks"]
    count, size = _typed(chunks, "n", int), _typed(chunks, "size", int)
    ordered = sorted(pieces, key=lambda piece: _typed(piece, "i", int))
    data = b"".join(bytes(_typed(piece, "data", bytes)) for piece in ordered)
    if [piece["i"] for piece in ordered] != list(range(count)) or len(data) != size:
        raise CorruptCheckpointError(
            f"cannot decode checkpoint: {len(ordered)} of {count} chunks of its record "
            "are stored", thread_id=doc["thread_id"], namespace=doc["ns"],
            checkpoint_id=_shown_id(doc, layout),
        )
    return data


def _utc(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"created_at is {type(value).__qualname__}, not a date")
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


LAYOUT_DOC_ID = "layout"


def check_store_layout(doc: Mapping[str, Any] | None) -> None:
    """Refuse a store whose ``meta`` layout document names a newer layout."""
    version = 1 if doc is None else doc.get("version")
    if not isinstance(version, int) or version > LAYOUT_VERSION:
        raise UnsupportedLayoutError(
            f"this store was created with document layout {version!r}; this savegame "
            f"reads layout {LAYOUT_VERSION} and older: upgrade savegame to use it"
        )


def check_layout(doc: Mapping[str, Any]) -> None:
    version = doc.get("fmt", 1)
    if not isinstance(version, int) or version > LAYOUT_VERSION:
        raise UnsupportedLayoutError(
            f"checkpoint {doc.get('cid')!r} of thread {doc.get('thread_id')!r} was written "
            f"with document layout {version!r}; this savegame reads layout "
            f"{LAYOUT_VERSION} and older: upgrade savegame to read it"
        )


def from_doc(
    doc: Mapping[str, Any],
    pieces: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    layout: int = LAYOUT_VERSION,
    *,
    writes: bool = True,
) -> StoredCheckpoint:
    """The StoredCheckpoint of a head document of ``layout`` (``pieces``: chunk documents
    by token, for a chunked record; ``writes``: it was read with its pending writes, see
    :func:`without_writes`). A document whose fields have the wrong types is a
    CorruptCheckpointError, never a stray error."""
    check_layout(doc)
    names = NAMES[layout]
    try:
        if "chunks" in doc:
            token = chunk_token(doc)
            record = join_chunks(doc, (pieces or {}).get(token or "", []), layout)
        else:  # mongomock hands back bson.Binary
            record = bytes(_typed(doc, "rec", bytes))
        metadata = doc.get("meta") or {}
        if not isinstance(metadata, Mapping):
            raise TypeError("meta is not an object")
        checkpoint_id = id_text(doc["cid"], "cid", layout)
        base_id = doc.get("base")
        return StoredCheckpoint(
            thread_id=_typed(doc, "thread_id", str),
            namespace=_typed(doc, "ns", str),
            id=checkpoint_id,
            parent_id=_parent(doc, names.parent, layout, base_id),
            step=(_typed(doc, names.step, int) if names.step in doc or layout < 3
                  else _typed(doc, "seq", int) - 1),
            node_id=_typed(doc, "node", str, optional=True),
            next_node_id=_typed(doc, "next", str, optional=True),
            metadata=dict(metadata),
            created_at=(_utc(doc["ts"]) if "ts" in doc or layout < 4
                        else _stated_time(checkpoint_id)),
            record=record,
            keyframe_id=id_text(label_of(doc, layout), _label_field(doc, layout), layout),
            base_id=None if base_id is None else id_text(base_id, "base", layout),
            depth=(_typed(doc, names.depth, int) if names.depth in doc or layout < 3
                   else codec.stated_depth(record)),
            seq=_typed(doc, "seq", int, optional=True) or 0,
            writes=(tuple(writes_of(doc, layout))
                    if writes and layout >= 3 and "version" not in doc else None),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_doc(doc, exc, layout) from None


def _parent_value(stored: StoredCheckpoint, layout: int) -> str | Binary | bool:
    """How ``stored``'s parent id is written: layout 3 spells a parent that is the
    record's base as ``true`` and packs UUIDs."""
    assert stored.parent_id is not None
    if layout < 3:
        return stored.parent_id
    return True if stored.parent_id == stored.base_id else pack_id(stored.parent_id)


def _parent(doc: Mapping[str, Any], field: str, layout: int, base: Any) -> str | None:
    """The parent id (``base``: the document's ``base`` as stored)."""
    if layout >= 4 and field not in doc:  # the parent is the record's base, if any
        return None if base is None else id_text(base, "base", layout)
    value = doc.get(field)
    if value is None:
        return None
    if value is True:  # layout 3: the parent is the record's base
        return id_text(doc["base"], "base", layout)
    return unpack_id(value, field)


def _millis(value: dt.datetime | None) -> int | None:
    """Milliseconds since the epoch (what a BSON date keeps); a naive value is UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - _EPOCH) // _MILLISECOND


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MILLISECOND = dt.timedelta(milliseconds=1)


def _stated_time(checkpoint_id: str) -> dt.datetime:
    """``created_at`` of a layout-4 document that leaves ``ts`` out: its id's time."""
    stated = id_time(checkpoint_id)
    if stated is None:
        raise KeyError("'ts' (and the checkpoint id states no time)")
    return stated


def _typed(doc: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    value = doc.get(key) if optional else doc[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"field {key!r} is {type(value).__qualname__}, not {kind.__name__}")
    return value


def _bad_doc(doc: Mapping[str, Any], exc: Exception, layout: int) -> CorruptCheckpointError:
    def text(key: str) -> str | None:
        value = doc.get(key)
        return value if isinstance(value, str) else None

    detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
    return CorruptCheckpointError(
        f"cannot decode checkpoint: its document is malformed ({detail})",
        thread_id=text("thread_id") or "?", namespace=text("ns"),
        checkpoint_id=_shown_id(doc, layout),
    )


def _shown_id(doc: Mapping[str, Any], layout: int) -> str | None:
    """The checkpoint id of a document, for an error about it (None: unreadable)."""
    try:
        return id_text(doc.get("cid"), "cid", layout)
    except (TypeError, ValueError):
        return None


def release_doc(thread_id: str, version: int, count: int) -> dict[str, Any]:
    """The marker claiming ``version``: ``pending`` until the run is archived and gone."""
    return {"_id": release_id(thread_id, version), "thread_id": thread_id,
            "version": version, "ts": utcnow(), "count": count, "pending": True}


def released(thread_id: str) -> dict[str, Any]:
    """Markers of finished releases (a pending one is finished by the next release)."""
    return {"thread_id": thread_id, "pending": {"$ne": True}}


def utcnow() -> dt.datetime:
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def only_duplicates(details: Mapping[str, Any]) -> bool:
    """True when a bulk write failed only on documents that already exist."""
    errors = details.get("writeErrors") or []
    return bool(errors) and not details.get("writeConcernErrors") and all(
        error.get("code") == 11000 for error in errors)


def check_space(thread_id: object, namespace: object) -> None:
    """The same checks as the base flows, for the saver's own public methods."""
    if not isinstance(thread_id, str) or not thread_id:
        raise TypeError(f"thread_id must be a non-empty str, got {thread_id!r}")
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__qualname__}")


def write_doc(write: StoredWrite, expire_at: dt.datetime | None = None) -> dict[str, Any]:
    """The document of one pending write (``expire_at``: with a ``ttl``)."""
    doc = {
        "_id": _hash("w", write.thread_id, write.namespace, write.checkpoint_id,
                     write.task_id, write.index),
        "thread_id": write.thread_id, "ns": write.namespace, "cid": write.checkpoint_id,
        "task": write.task_id, "idx": write.index, "channel": write.channel,
        "path": write.task_path, "rec": write.record,
    }
    if expire_at is not None:
        doc["exp"] = expire_at
    return doc


Entry = dict[str, Any] | bytes


def write_entry(write: StoredWrite, layout: int) -> Entry:
    """A pending write inside its checkpoint's document. Layout 4: one binary value (a
    document of five fields costs ~60 bytes of names, types and lengths; this ~25)::

        varint zigzag(index) | varint 0, 16 bytes of a canonical UUID task id
                                 (or varint 1 + n, n bytes of UTF-8)
        | varint n, n bytes of channel | varint n, n bytes of task path (both
        ``known_text.pack_text``) | the record (the rest)

    Layout 3: ``{t, i, c, p, r}`` (see the module's docstring)."""
    if layout < 4:
        entry: dict[str, Any] = {"t": pack_id(write.task_id), "i": write.index,
                                 "c": write.channel}
        if write.task_path:
            entry["p"] = write.task_path
        entry["r"] = write.record
        return entry
    out = bytearray()
    codec.put_varint(out, write.index * 2 if write.index >= 0 else -write.index * 2 - 1)
    task = pack_id(write.task_id)
    data = bytes(task) if isinstance(task, Binary) else task.encode("utf-8", "surrogatepass")
    codec.put_varint(out, 0 if isinstance(task, Binary) else len(data) + 1)
    out += data
    for text in (write.channel, write.task_path):
        data = pack_text(text)
        codec.put_varint(out, len(data))
        out += data
    out += write.record
    return bytes(out)


def _read_entry(entry: bytes) -> tuple[str, int, str, str, bytes]:
    """(task id, index, channel, task path, record) of a layout-4 entry; ValueError (or
    UnicodeDecodeError) when it is malformed."""
    view = memoryview(entry)
    zigzag, pos = codec.get_varint(view, 0)
    index = zigzag >> 1 if not zigzag & 1 else -((zigzag + 1) >> 1)
    size, pos = codec.get_varint(view, pos)
    length = 16 if size == 0 else size - 1
    if pos + length > len(entry):
        raise ValueError("a pending write's entry is truncated")
    raw = entry[pos:pos + length]
    task = _uuid_text(raw) if size == 0 else raw.decode("utf-8", "surrogatepass")
    pos += length
    texts = []
    for _ in range(2):
        length, pos = codec.get_varint(view, pos)
        if pos + length > len(entry):
            raise ValueError("a pending write's entry is truncated")
        texts.append(unpack_text(entry[pos:pos + length]))
        pos += length
    return task, index, texts[0], texts[1], entry[pos:]


def entry_key(entry: Any) -> tuple[str, Any]:
    """What makes a stored write unique within its checkpoint: (task, index)."""
    if isinstance(entry, bytes):
        try:
            task, index, _, _, _ = _read_entry(bytes(entry))
        except (ValueError, UnicodeDecodeError):
            return "", entry  # a damaged entry is kept as it is (reading it fails, named)
        return task, index
    return unpack_id(entry.get("t"), "w.t"), entry.get("i")


def writes_of(doc: Mapping[str, Any], layout: int) -> list[StoredWrite]:
    """The pending writes stored in a checkpoint document (layout 3 and later)."""
    entries = doc.get("w") or []
    try:
        if not isinstance(entries, list):
            raise TypeError(f"field 'w' is {type(entries).__qualname__}, not an array")
        thread_id, namespace = _typed(doc, "thread_id", str), _typed(doc, "ns", str)
        checkpoint_id = id_text(doc["cid"], "cid", layout)
        out = []
        for entry in entries:
            if isinstance(entry, bytes):  # layout 4
                task, index, channel, path, record = _read_entry(bytes(entry))
            elif isinstance(entry, Mapping):
                task, index = unpack_id(entry["t"], "w.t"), _typed(entry, "i", int)
                channel = _typed(entry, "c", str)
                path = _typed(entry, "p", str, optional=True) or ""
                record = bytes(_typed(entry, "r", bytes))
            else:
                raise TypeError(f"a pending write is {type(entry).__qualname__}")
            out.append(StoredWrite(thread_id=thread_id, namespace=namespace,
                                   checkpoint_id=checkpoint_id, task_id=task, index=index,
                                   channel=channel, task_path=path, record=record))
        return out
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_doc(doc, exc, layout) from None


def from_write_doc(doc: Mapping[str, Any]) -> StoredWrite:
    check_layout(doc)
    try:
        return StoredWrite(
            thread_id=_typed(doc, "thread_id", str), namespace=_typed(doc, "ns", str),
            checkpoint_id=_typed(doc, "cid", str), task_id=_typed(doc, "task", str),
            index=_typed(doc, "idx", int), channel=_typed(doc, "channel", str),
            task_path=_typed(doc, "path", str), record=bytes(_typed(doc, "rec", bytes)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_doc(doc, exc, LOOSE_LAYOUT) from None


def prefix_range(prefix: str) -> dict[str, Any]:
    """A ``thread_id`` condition selecting ids that start with ``prefix``: an index range
    (BSON compares strings by UTF-8 bytes, which is code point order)."""
    if not prefix:
        return {"$type": "string"}
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return {"$gte": prefix}
    following = last + 1 if not 0xD800 <= last + 1 <= 0xDFFF else 0xE000
    return {"$gte": prefix, "$lt": prefix[:-1] + chr(following)}


# -- queries ---------------------------------------------------------------------------
def one(thread_id: str, namespace: str, checkpoint_id: str, layout: int) -> dict[str, Any]:
    return {"_id": record_id(thread_id, namespace, checkpoint_id, layout),
            "thread_id": thread_id}


def space(thread_id: str, namespace: str) -> dict[str, Any]:
    return {"thread_id": thread_id, "ns": namespace}


def list_filter(
    thread_id: str, namespace: str, before: str | None, metadata: Mapping[str, Any] | None,
    layout: int,
) -> dict[str, Any]:
    query = space(thread_id, namespace)
    if before is not None:
        query["cid"] = {"$lt": id_value(before, layout)}
    if metadata:
        query.update(metadata_filter(metadata))
    return query


def metadata_filter(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side pre-filter for ``list(metadata=...)``.

    Scalars compare on ``meta.<key>``; nested objects compare leaf by leaf on dotted paths
    (whole-object equality in MongoDB depends on field order). List values are left to
    :func:`metadata_matches` (MongoDB's equality on arrays also matches arrays holding the
    value). The pre-filter may keep too much, never too little.
    """
    query: dict[str, Any] = {}

    def walk(path: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{path}.{key}", item)
        elif isinstance(value, bool) or value is None or isinstance(value, (str, int, float)):
            query[path] = value
        # lists: checked client-side

    for key, value in metadata.items():
        walk(f"meta.{key}", value)
    return query


def metadata_matches(stored: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    """Exact equality on each wanted key, as MemorySaver does."""
    if not wanted:
        return True
    return all(key in stored and _same(stored[key], value) for key, value in wanted.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def without_writes(layout: int) -> dict[str, int] | None:
    """The projection of checkpoint reads that need no pending writes (decode chains,
    the states writes copy from), which layout 3 keeps in the documents: every other
    field, named (nx-27017 answered ``{w: 0, wn: 0}`` with bare ``_id``s part way
    through the conformance suite)."""
    if layout < 3:
        return None
    names = NAMES[layout]
    fields = ("thread_id", "ns", "cid", names.parent, "kf", "base", names.depth, "seq",
              names.step, "node", "next", "meta", "ts", "rec", "chunks", "exp", "fmt",
              "version")
    return dict.fromkeys(fields, 1)


def chains_filter(
    thread_id: str, namespace: str, keyframe_ids: Iterable[str], layout: int
) -> dict[str, Any]:
    """The documents of the chain groups labelled ``keyframe_ids``. Layout 3 leaves the
    label out of the keyframe it names (its ``cid``): each branch of the ``$or`` is served
    by an index of its own."""
    labels = sorted({id_value(label, layout) for label in keyframe_ids})
    if layout < 3:
        return {"thread_id": thread_id, "ns": namespace, "kf": {"$in": labels}}
    return {"$or": [
        {"thread_id": thread_id, "ns": namespace, "kf": {"$in": labels}},
        {"thread_id": thread_id, "ns": namespace, "cid": {"$in": labels},
         "kf": {"$exists": False}},
    ]}


def _label_field(doc: Mapping[str, Any], layout: int) -> str:
    """The field holding a checkpoint document's chain-group label: ``kf``, which layout
    3 leaves out of the keyframe it names (its ``cid`` then)."""
    return "kf" if "kf" in doc or layout < 3 else "cid"


def label_of(doc: Mapping[str, Any], layout: int) -> Any:
    """The chain-group label of a checkpoint document."""
    return doc[_label_field(doc, layout)]


def ids_filter(
    thread_id: str, namespace: str, checkpoint_ids: Iterable[str], layout: int
) -> dict[str, Any]:
    """The documents of ``checkpoint_ids``, of a collection whose documents are in
    ``layout`` (the writes collection's: :data:`LOOSE_LAYOUT`)."""
    ids = sorted({id_value(checkpoint_id, layout) for checkpoint_id in checkpoint_ids})
    return {"thread_id": thread_id, "ns": namespace, "cid": {"$in": ids}}


def latest_query(thread_id: str, namespace: str, legacy: bool) -> dict[str, Any]:
    """Filter of the latest-checkpoint read (sort: :data:`LATEST_ORDER`). Naming ``seq``
    lets the partial unique index on (thread_id, ns, seq) serve it; a legacy store also
    holds documents without one."""
    query = space(thread_id, namespace)
    if not legacy:
        query["seq"] = {"$exists": True}
    return query


#: The order whose first document is the latest checkpoint.
LATEST_ORDER = [("seq", -1), ("cid", -1)]


def latest_chain_pipeline(
    collection: str, thread_id: str, namespace: str, legacy: bool, max_depth: int
) -> list[Any]:
    """The latest checkpoint of a thread and namespace with its decode path under ``path``:
    the records its ``base`` links lead to, found within the same thread and namespace,
    at most ``max_depth`` hops (a damaged chain that loops cannot make the server walk
    further; a longer path comes back short and the reader fetches the rest)."""
    return [
        {"$match": latest_query(thread_id, namespace, legacy)},
        {"$sort": dict(LATEST_ORDER)},
        {"$limit": 1},
        {"$graphLookup": {
            "from": collection, "startWith": "$base", "connectFromField": "base",
            "connectToField": "cid", "as": "path", "maxDepth": max(0, max_depth - 1),
            "restrictSearchWithMatch": space(thread_id, namespace),
        }},
    ]


#: Server errors about a result or stage too big (BSONObjectTooLarge, the aggregate's
#: document size and memory limits): the stage works, this read falls back once.
_SIZE_ERRORS = frozenset({10334, 17419, 4568, 146, 292})


def too_large(exc: Exception) -> bool:
    return getattr(exc, "code", None) in _SIZE_ERRORS


def tokens_of(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({token for doc in docs if (token := chunk_token(doc)) is not None})


# -- indexes ---------------------------------------------------------------------------
Index = tuple[str, list[tuple[str, int]], dict[str, Any]]

#: (collection attribute, keys, options). Every query filters on thread_id first.
INDEXES: tuple[Index, ...] = (
    ("checkpoints", [("thread_id", 1), ("ns", 1), ("cid", -1)], {"name": "thread_ns_cid"}),
    ("checkpoints", [("thread_id", 1), ("ns", 1), ("kf", 1)], {"name": "thread_ns_kf"}),
    ("checkpoints", [("thread_id", 1), ("ns", 1), ("seq", -1)],
     {"name": "thread_ns_seq", "unique": True,
      "partialFilterExpression": {"seq": {"$exists": True}}}),
    ("chunks", [("thread_id", 1), ("token", 1), ("i", 1)], {"name": "thread_token_i"}),
    ("chunks", [("ts", 1)], {"name": "ts"}),
    ("archive", [("thread_id", 1), ("version", 1), ("ns", 1), ("cid", -1)],
     {"name": "thread_version_ns_cid"}),
    ("releases", [("thread_id", 1), ("version", 1)], {"name": "thread_version"}),
    ("writes", [("thread_id", 1), ("ns", 1), ("cid", 1)], {"name": "thread_ns_cid"}),
)
#: With a ``ttl``: checkpoints and pending writes are deleted once past their ``exp``.
TTL_INDEXES: tuple[Index, ...] = (
    ("checkpoints", [("exp", 1)], {"name": "exp_ttl", "expireAfterSeconds": 0}),
    ("writes", [("exp", 1)], {"name": "exp_ttl", "expireAfterSeconds": 0}),
)
