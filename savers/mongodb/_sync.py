# GENERATED from _async.py by `python -m savegame.savers.mongodb._unasync`: do not edit.
"""MongoSaver: checkpoints in MongoDB through PyMongo's MongoClient.

``_async.py`` is the source of truth: ``_sync.py`` (``MongoSaver``) is generated from it by
``python -m savegame.savers.mongodb._unasync``; ``_IS_SYNC`` flips in the copy. The
document layout, filters and indexes live in ``_shared.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import MongoClient, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    WriteConcernError,
)

from .._options import seconds as _seconds
from ..base import HEAD_MOVED, BaseSaver, StoredCheckpoint, StoredWrite
from . import _shared as sh

__all__ = ["MongoSaver"]

_IS_SYNC = True
_TRANSIENT = (ConnectionFailure, WriteConcernError)


def _resolve(value: Any) -> Any:
    """``await`` what PyMongo's async API returns as an awaitable and Motor does not."""
    if inspect.isawaitable(value):
        return value
    return value


class MongoSaver(BaseSaver):
    """Checkpoints in MongoDB, one document per checkpoint (layout: ``_shared.py``).

    ``client`` is a ``pymongo.MongoClient``; the saver does no IO
    until first used, then creates its indexes once (``setup`` does it explicitly).

    - ``database``, ``prefix``: where the collections live (``<prefix>checkpoints``,
      ``<prefix>chunks``, ``<prefix>archive``, ``<prefix>releases``, ``<prefix>writes``,
      ``<prefix>meta``);
    - ``write_concern``: a ``pymongo.WriteConcern`` for every write (default: the client's);
    - ``ttl`` (seconds or timedelta): a delta chain is deleted by a TTL index once its newest
      checkpoint is older than ``ttl``; a keyframe never expires before a delta that needs it;
    - ``keep_last``: when a thread starts a new keyframe chain, whole chains holding none of
      its ``keep_last`` newest checkpoints (per namespace) are deleted;
    - ``chunk_bytes``: records longer than this are split into chunk documents;
    - ``orphan_grace``: chunks older than this without a head document are collected by
      ``setup`` and ``collect_orphans``;
    - ``retries``: a write that failed on a dropped connection, a primary step-down or a
      write-concern error is sent again this many times (idempotent: same ``_id``).
    Other keyword arguments (``serializer``, ``policy``, ``cache_bytes``) go to BaseSaver.
    """

    _blocking_io = _IS_SYNC
    _async_only = not _IS_SYNC

    def __init__(
        self,
        client: Any,
        *,
        database: str = "savegame",
        prefix: str = "",
        write_concern: Any = None,
        ttl: float | dt.timedelta | None = None,
        keep_last: int | None = None,
        chunk_bytes: int = sh.CHUNK_BYTES,
        orphan_grace: float | dt.timedelta = dt.timedelta(hours=1),
        retries: int = 2,
        owns_client: bool = False,
        **options: Any,
    ):
        super().__init__(**options)
        if not isinstance(database, str) or not database:
            raise TypeError("database must be a non-empty str")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
        if not isinstance(chunk_bytes, int) or not 1 <= chunk_bytes <= sh.CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be between 1 and {sh.CHUNK_BYTES}")
        self.client = client
        self.names = sh.Collections.with_prefix(prefix)
        self.ttl = _seconds(ttl, "ttl")
        self.keep_last = keep_last
        self.chunk_bytes = chunk_bytes
        self.orphan_grace = _seconds(orphan_grace, "orphan_grace") or 3600.0
        self.retries = max(0, int(retries))
        self._owns_client = owns_client
        db = client[database]
        extra = {} if write_concern is None else {"write_concern": write_concern}
        self._checkpoints = db.get_collection(self.names.checkpoints, **extra)
        self._chunks = db.get_collection(self.names.chunks, **extra)
        self._archive_coll = db.get_collection(self.names.archive, **extra)
        self._releases = db.get_collection(self.names.releases, **extra)
        self._writes = db.get_collection(self.names.writes, **extra)
        self._meta = db.get_collection(self.names.meta, **extra)
        self._ready = False
        #: The store's document layout (``_shared``), known once set up: a store keeps the
        #: layout it was created with, which this saver reads and writes.
        self._layout = sh.LAYOUT_VERSION
        #: Does the server run the one-command latest read ($graphLookup)? None: not yet
        #: known; the first failure that is not about size turns it off for this saver.
        self._chain_stage: bool | None = None
        self._bumped: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()  # for _bumped and _loose
        #: Checkpoints (thread, ns, id) whose pending writes this saver put before the
        #: checkpoint was stored (layout 3): its put moves them into its document.
        self._loose: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        database: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> MongoSaver:
        """A saver owning a new client for ``uri``; use it as a context manager (or call
        ``close``) to close the client. ``database`` defaults to the URI's, else
        ``"savegame"``."""
        client: Any = MongoClient(uri, **dict(client_options or {}))
        if database is None:
            database = client.get_default_database(default="savegame").name
        return cls(client, database=database, owns_client=True, **options)

    def close(self) -> None:
        """Close the client if this saver created it (``from_uri``)."""
        if self._owns_client:
            self._owns_client = False
            _resolve(self.client.close())

    # -- setup and maintenance ---------------------------------------------------------
    def setup(self) -> None:
        """Create the indexes (idempotent) and collect orphaned chunks; done lazily on
        first use."""
        layout = self._meta.find_one({"_id": sh.LAYOUT_DOC_ID})
        if layout is None and self._checkpoints.find_one({}, {"_id": 1}) is None:
            with contextlib.suppress(DuplicateKeyError):  # a new store starts at this layout
                self._meta.insert_one({"_id": sh.LAYOUT_DOC_ID,
                                             "version": sh.LAYOUT_VERSION})
            layout = self._meta.find_one({"_id": sh.LAYOUT_DOC_ID})
        sh.check_store_layout(layout)
        self._layout = 1 if layout is None else int(layout["version"])
        for attr, keys, index_options in sh.INDEXES:
            self._collection(attr).create_index(keys, **index_options)
        if self.ttl is not None:
            for attr, keys, index_options in sh.TTL_INDEXES:
                self._collection(attr).create_index(keys, **index_options)
        self._ready = True
        self.collect_orphans()

    def collect_orphans(self, older_than: float | dt.timedelta | None = None) -> int:
        """Delete chunks no checkpoint refers to (left by a put that failed between its
        chunks and its head document) once older than ``older_than`` (default: the
        saver's ``orphan_grace``). Returns the number of chunk documents deleted."""
        grace = _seconds(older_than, "older_than") or self.orphan_grace
        cutoff = sh.utcnow() - dt.timedelta(seconds=grace)
        by_thread: dict[str, set[str]] = {}
        for piece in self._chunks.find({"ts": {"$lt": cutoff}}, {"thread_id": 1,
                                                                       "token": 1}):
            by_thread.setdefault(piece["thread_id"], set()).add(piece["token"])
        removed = 0
        for thread_id, tokens in by_thread.items():
            used: set[str] = set()
            query = {"thread_id": thread_id, "chunks.token": {"$in": sorted(tokens)}}
            for collection in (self._checkpoints, self._archive_coll):
                for doc in collection.find(query, {"chunks": 1}):
                    used.add(doc["chunks"]["token"])
            dead = sorted(tokens - used)
            if dead:
                result = self._chunks.delete_many(
                    {"thread_id": thread_id, "token": {"$in": dead}})
                removed += int(result.deleted_count)
        return removed

    def prune(self, thread_id: str, namespace: str = "") -> int:
        """Apply ``keep_last`` to one thread and namespace now; returns documents deleted."""
        sh.check_space(thread_id, namespace)
        if self.keep_last is None:
            return 0
        self._ensure_setup()
        return self._prune(thread_id, namespace, self.keep_last)

    def _prune(self, thread_id: str, namespace: str, keep: int) -> int:
        newest = [doc for doc in self._checkpoints.find(
            sh.space(thread_id, namespace), {"cid": 1, "kf": 1}, sort=[("cid", -1)],
            limit=keep)]
        if len(newest) < keep:
            return 0
        kept = {sh.label_of(doc, self._layout) for doc in newest}
        query = sh.space(thread_id, namespace)
        query["cid"] = {"$lt": newest[-1]["cid"]}
        doomed = [sh.id_text(doc["cid"], "cid", self._layout)
                  for doc in self._checkpoints.find(query, {"cid": 1, "kf": 1})
                  if sh.label_of(doc, self._layout) not in kept]
        if not doomed:
            return 0
        result = self._checkpoints.delete_many(
            sh.ids_filter(thread_id, namespace, doomed, self._layout))
        # and their pending writes (a crash in between leaves writes nobody reads)
        self._writes.delete_many(
            sh.ids_filter(thread_id, namespace, doomed, sh.LOOSE_LAYOUT))
        return int(result.deleted_count)

    def storage_details(self) -> dict[str, Any]:
        """Documents (and, where the server reports them, bytes) per collection, for
        ``savegame stats``."""
        self._ensure_setup()
        details: dict[str, Any] = {"backend": "mongodb",
                                   "database": self._checkpoints.database.name}
        for attr in ("checkpoints", "chunks", "archive", "releases", "writes"):
            collection = self._collection(attr)
            entry = {"documents": int(collection.count_documents({}))}
            try:
                info = self._checkpoints.database.command("collStats", collection.name)
            except Exception:  # not every server or emulator has collStats
                info = {}
            for key, name in (("size", "bytes"), ("storageSize", "storage bytes"),
                              ("totalIndexSize", "index bytes")):
                if key in info:
                    entry[name] = int(info[key])
            details[collection.name] = entry
        return details

    def _collection(self, name: str) -> Any:
        return {"checkpoints": self._checkpoints, "chunks": self._chunks,
                "archive": self._archive_coll, "releases": self._releases,
                "writes": self._writes, "meta": self._meta}[name]

    def _ensure_setup(self) -> None:
        if not self._ready:
            self.setup()

    # -- primitives ----------------------------------------------------------------------
    def _complete(
        self, docs: Sequence[Mapping[str, Any]], writes: bool = True
    ) -> list[StoredCheckpoint]:
        """StoredCheckpoints of head documents of one thread, fetching chunked records in
        one query (``writes``: the documents were read with their pending writes)."""
        tokens = sh.tokens_of(docs)
        pieces: dict[str, list[Mapping[str, Any]]] = {}
        if tokens:
            query = {"thread_id": docs[0]["thread_id"], "token": {"$in": tokens}}
            for piece in self._chunks.find(query):
                pieces.setdefault(piece["token"], []).append(piece)
        out = []
        for doc in docs:
            out.append(sh.from_doc(doc, pieces, self._layout, writes=writes))
        return out

    def _read(
        self, thread_id: str, namespace: str, checkpoint_id: str
    ) -> StoredCheckpoint | None:
        self._ensure_setup()
        doc = self._checkpoints.find_one(
            sh.one(thread_id, namespace, checkpoint_id, self._layout))
        return None if doc is None else (self._complete([doc]))[0]

    def _read_latest(self, thread_id: str, namespace: str) -> StoredCheckpoint | None:
        self._ensure_setup()
        doc = self._checkpoints.find_one(
            sh.latest_query(thread_id, namespace, self._layout < 2), sort=sh.LATEST_ORDER)
        return None if doc is None else (self._complete([doc]))[0]

    def _read_latest_chain(
        self, thread_id: str, namespace: str
    ) -> list[StoredCheckpoint] | None:
        """The latest checkpoint and the records of its decode path, in one aggregate
        (``$graphLookup`` from the head's base back to its keyframe, within the thread and
        namespace); chunked records cost one more query. Where the server lacks the stage
        the head alone is returned and the core reads its chain as a second command."""
        self._ensure_setup()
        if self._chain_stage is not False:
            pipeline = sh.latest_chain_pipeline(self.names.checkpoints, thread_id, namespace,
                                                self._layout < 2, self.policy.max_chain + 32)
            try:
                cursor = _resolve(self._checkpoints.aggregate(pipeline))
                docs = [doc for doc in cursor]
            except OperationFailure as exc:
                if self._chain_stage is None and not sh.too_large(exc):
                    self._chain_stage = False  # unsupported here: two commands from now on
            else:
                self._chain_stage = True
                if not docs:
                    return None
                head = dict(docs[0])
                path = head.pop("path", None) or []
                return self._complete([head, *path])
        found = self._read_latest(thread_id, namespace)
        return None if found is None else [found]

    def _read_chains(
        self, thread_id: str, namespace: str, keyframe_ids: Sequence[str]
    ) -> list[StoredCheckpoint]:
        return self._find(
            sh.chains_filter(thread_id, namespace, keyframe_ids, self._layout), writes=False)

    def _read_many(
        self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
    ) -> list[StoredCheckpoint]:
        """The stored checkpoints among ``checkpoint_ids`` (not their chain groups)."""
        return self._find(
            sh.ids_filter(thread_id, namespace, checkpoint_ids, self._layout), writes=False)

    def _find(self, query: dict[str, Any], writes: bool) -> list[StoredCheckpoint]:
        """Checkpoint documents (``writes``: with their pending writes, else without
        fetching them)."""
        self._ensure_setup()
        cursor = self._checkpoints.find(query, None if writes else sh.without_writes(self._layout),
                                        batch_size=1000)
        return self._complete([doc for doc in cursor], writes)

    def _list(
        self,
        thread_id: str,
        namespace: str,
        before: str | None,
        limit: int | None,
        metadata: Mapping[str, Any] | None,
    ) -> list[StoredCheckpoint]:
        self._ensure_setup()
        query = sh.list_filter(thread_id, namespace, before, metadata, self._layout)
        docs: list[Mapping[str, Any]] = []
        if not metadata:
            cursor = self._checkpoints.find(query, sort=[("cid", -1)], limit=limit or 0)
            docs = [doc for doc in cursor]
        else:  # the server pre-filters; exact equality is checked here
            cursor = self._checkpoints.find(query, sort=[("cid", -1)],
                                            batch_size=max(limit or 0, 16))
            try:
                for doc in cursor:
                    if sh.metadata_matches(doc.get("meta") or {}, metadata):
                        docs.append(doc)
                        if limit is not None and len(docs) >= limit:
                            break
            finally:
                _resolve(cursor.close())
        return self._complete(docs)

    def _insert(self, stored: StoredCheckpoint) -> Any:
        self._ensure_setup()
        expire_at = None
        if self.ttl is not None:
            expire_at = stored.created_at + dt.timedelta(seconds=self.ttl)
        doc, chunks = sh.to_doc(stored, layout=self._layout, expire_at=expire_at,
                                chunk_bytes=self.chunk_bytes)
        if chunks:  # every piece is stored before the head that makes them visible
            self._with_retries(self._insert_chunks, chunks)
        try:
            self._with_retries(self._checkpoints.insert_one, doc)
        except DuplicateKeyError:
            # Its id is taken (a retry, a re-put, a race) or its seq is (someone appended
            # first: the unique (thread_id, ns, seq) index). The stored id tells which.
            if chunks:
                self._chunks.delete_many({"thread_id": stored.thread_id,
                                                "token": sh.chunk_token(doc)})
            existing = self._read(stored.thread_id, stored.namespace, stored.id)
            if existing is None:
                return HEAD_MOVED
            self._adopt_loose(stored.thread_id, stored.namespace, stored.id, True)
            return existing
        self._adopt_loose(stored.thread_id, stored.namespace, stored.id, True)
        if self.ttl is not None and stored.base_id is not None:
            self._extend_chain(stored)
        if self.keep_last is not None and stored.base_id is None:
            self._prune(stored.thread_id, stored.namespace, self.keep_last)
        return None

    def _insert_chunks(self, chunks: list[dict[str, Any]]) -> None:
        try:
            self._chunks.insert_many(chunks, ordered=False)
        except BulkWriteError as exc:  # a retry: pieces already stored are fine
            if not sh.only_duplicates(exc.details):
                raise

    def _with_retries(self, write: Any, argument: Any) -> None:
        """Send ``write(argument)`` again after a transient failure; a resent insert of a
        document the server did apply comes back as DuplicateKeyError."""
        attempt = 0
        while True:
            try:
                write(argument)
                return
            except _TRANSIENT:
                attempt += 1
                if attempt > self.retries:
                    raise

    def _write_expiry(self) -> dt.datetime | None:
        """When new pending writes expire: no earlier than their checkpoint, whose chain
        expires at most ``1.1 * ttl`` after its last extension (which is in the past)."""
        if self.ttl is None:
            return None
        return sh.utcnow() + dt.timedelta(seconds=1.1 * self.ttl)

    def _extend_chain(self, stored: StoredCheckpoint) -> None:
        """Keep every record of the chain alive at least as long as the newest one.

        The chain's documents expire ``1.1 * ttl`` after the last extension, and this saver
        extends again once ``0.1 * ttl`` has passed, so a new document (expiring ``ttl``
        after its write) never outlives the records it needs.
        """
        assert self.ttl is not None
        key = (stored.thread_id, stored.namespace, stored.keyframe_id)
        now = time.time()
        with self._lock:
            last = self._bumped.get(key)
            if last is not None and now - last < 0.1 * self.ttl:
                return
            self._bumped[key] = now
            self._bumped.move_to_end(key)
            while len(self._bumped) > 4096:
                self._bumped.popitem(last=False)
        expire_at = stored.created_at + dt.timedelta(seconds=1.1 * self.ttl)
        query = sh.chains_filter(stored.thread_id, stored.namespace, [stored.keyframe_id],
                                 self._layout)
        earlier = {**query, "exp": {"$lt": expire_at}}  # only ever later ($max, portably)
        self._checkpoints.update_many(earlier, {"$set": {"exp": expire_at}})
        if self._layout < 3:  # the chain's pending writes live as long (3: in its documents)
            chain = [doc["cid"] for doc in self._checkpoints.find(query, {"cid": 1})]
            later = sh.ids_filter(stored.thread_id, stored.namespace, chain, sh.LOOSE_LAYOUT)
            later["exp"] = {"$lt": expire_at}
            self._writes.update_many(later, {"$set": {"exp": expire_at}})

    def _delete_thread(self, thread_id: str) -> None:
        self._ensure_setup()
        for collection in (self._checkpoints, self._writes, self._archive_coll,
                           self._releases, self._chunks):
            collection.delete_many({"thread_id": thread_id})

    def _insert_docs(
        self, collection: Any, docs: Sequence[Mapping[str, Any]]
    ) -> set[int]:
        """Insert documents, keeping those that already exist (idempotent, unordered);
        returns the positions of those that did."""
        if docs:
            try:
                collection.insert_many(list(docs), ordered=False)
            except BulkWriteError as exc:
                if not sh.only_duplicates(exc.details):
                    raise
                return {int(error["index"]) for error in exc.details["writeErrors"]}
        return set()

    def _insert_writes(self, writes: Sequence[StoredWrite], replace: bool) -> None:
        self._ensure_setup()
        if self._layout < 3:
            self._insert_loose(writes, replace)
            return
        by_checkpoint: dict[tuple[str, str, str], list[StoredWrite]] = {}
        for write in writes:
            key = (write.thread_id, write.namespace, write.checkpoint_id)
            by_checkpoint.setdefault(key, []).append(write)
        for key, group in by_checkpoint.items():
            if not self._embed_writes(group, replace):
                self._insert_loose(group, replace)
                self._adopt_loose(*key)  # its put may have landed meanwhile

    def _insert_loose(self, writes: Sequence[StoredWrite], replace: bool) -> None:
        """Pending writes as documents of the writes collection (layout 2, or layout 3's
        writes whose checkpoint is not stored)."""
        expire_at = self._write_expiry()
        docs = [sh.write_doc(write, expire_at) for write in writes]
        if replace:  # one bulk command of upserts; the filter names thread_id
            self._writes.bulk_write([
                UpdateOne({"_id": doc["_id"], "thread_id": doc["thread_id"]},
                          {"$set": {k: v for k, v in doc.items() if k != "_id"}},
                          upsert=True)
                for doc in docs
            ], ordered=False)
        else:  # a write already stored for (task, index) is kept
            self._insert_docs(self._writes, docs)

    def _embed_writes(self, writes: Sequence[StoredWrite], replace: bool) -> bool:
        """Store one checkpoint's pending writes in its document (layout 3); False when
        the checkpoint is not stored yet (LangGraph may hand a checkpoint's writes to one
        thread before its put, queued behind the previous put, reaches this saver): the
        writes collection keeps them, and this saver's put of it moves them in.

        The usual call gives a checkpoint its first writes: one update, conditional on it
        having none (a resend after a lost reply changes nothing)."""
        first = writes[0]
        key = (first.thread_id, first.namespace, first.checkpoint_id)
        entries = [sh.write_entry(write, self._layout) for write in writes]
        result = self._checkpoints.update_one(
            {**sh.one(*key, self._layout), "w": {"$exists": False}}, {"$set": {"w": entries}})
        if result.matched_count:
            return True
        with self._lock:  # before looking: a put storing it meanwhile moves them in
            self._loose[key] = None
            while len(self._loose) > 4096:
                self._loose.popitem(last=False)
        if self._merge_writes(key, entries, replace):
            with self._lock:
                self._loose.pop(key, None)
            return True
        return False

    def _merge_writes(
        self, key: tuple[str, str, str], entries: list[sh.Entry], replace: bool
    ) -> bool:
        """Add ``entries`` to a checkpoint document's writes; False when there is none.

        The document's writes are read, merged and set on condition that their change
        count ``wn`` is still what was read, else read again (an array ``$push`` and array
        equality are not on every server that speaks the protocol)."""
        where = sh.one(*key, self._layout)
        while True:
            doc = self._checkpoints.find_one(where, {"w": 1, "wn": 1})
            if doc is None:
                return False
            # (a binary entry may come back as bson.Binary, which equals no bytes)
            stored = [bytes(entry) if isinstance(entry, bytes) else entry
                      for entry in doc.get("w") or []]
            merged = {sh.entry_key(entry): entry for entry in stored}
            for entry in entries:
                identity = sh.entry_key(entry)
                if replace or identity not in merged:
                    merged[identity] = entry
            if list(merged.values()) == stored:
                return True
            count = doc.get("wn")
            unchanged = {**where, "wn": count if count is not None else {"$exists": False}}
            result = self._checkpoints.update_one(
                unchanged, {"$set": {"w": list(merged.values()), "wn": (count or 1) + 1}})
            if result.matched_count:
                return True

    def _adopt_loose(
        self, thread_id: str, namespace: str, checkpoint_id: str, if_marked: bool = False
    ) -> None:
        """Move pending writes put before the checkpoint was stored into its document
        (writes put into the document since win over them); ``if_marked``: only those
        this saver put (the put path, which must not query for every checkpoint)."""
        key = (thread_id, namespace, checkpoint_id)
        if if_marked and key not in self._loose:
            return
        docs = [doc for doc in self._writes.find(
            sh.ids_filter(thread_id, namespace, [checkpoint_id], sh.LOOSE_LAYOUT))]
        if docs and not self._merge_writes(
                key, [sh.write_entry(sh.from_write_doc(doc), self._layout) for doc in docs],
                False):
            return
        if docs:
            self._writes.delete_many(
                {"thread_id": thread_id, "_id": {"$in": [doc["_id"] for doc in docs]}})
        with self._lock:
            self._loose.pop(key, None)

    def _read_writes(
        self, thread_id: str, namespace: str, checkpoint_ids: Sequence[str]
    ) -> list[StoredWrite]:
        self._ensure_setup()
        loose = sh.ids_filter(thread_id, namespace, checkpoint_ids, sh.LOOSE_LAYOUT)
        if self._layout < 3:
            return [sh.from_write_doc(doc) for doc in self._writes.find(loose)]
        out: list[StoredWrite] = []
        found: set[str] = set()
        for doc in self._checkpoints.find(
                sh.ids_filter(thread_id, namespace, checkpoint_ids, self._layout),
                {"thread_id": 1, "ns": 1, "cid": 1, "w": 1}):
            writes = sh.writes_of(doc, self._layout)
            found.add(sh.id_text(doc["cid"], "cid", self._layout))
            out.extend(writes)
        absent = [cid for cid in checkpoint_ids if cid not in found]
        if absent:  # writes put for a checkpoint that is not stored
            loose["cid"] = {"$in": absent}
            out.extend([sh.from_write_doc(doc) for doc in self._writes.find(loose)])
        return out

    def _list_threads(self, prefix: str) -> list[str]:
        self._ensure_setup()
        threads = self._checkpoints.distinct(
            "thread_id", {"thread_id": sh.prefix_range(prefix)})
        return [thread for thread in threads if thread.startswith(prefix)]

    def _list_namespaces(self, thread_id: str) -> list[str]:
        self._ensure_setup()
        return list(self._checkpoints.distinct("ns", {"thread_id": thread_id}))

    def _read_thread(
        self, thread_id: str
    ) -> tuple[list[StoredCheckpoint], list[StoredWrite]]:
        self._ensure_setup()
        docs = [doc for doc in self._checkpoints.find({"thread_id": thread_id},
                                                            batch_size=1000)]
        writes = [write for doc in docs for write in sh.writes_of(doc, self._layout)]
        writes += [sh.from_write_doc(doc)
                   for doc in self._writes.find({"thread_id": thread_id})]
        return self._complete(docs), writes

    def _copy_in(
        self, checkpoints: Sequence[StoredCheckpoint], writes: Sequence[StoredWrite]
    ) -> None:
        self._ensure_setup()
        heads = []
        expire_at = None
        if self.ttl is not None:  # a copy lives ttl from now, whole chains together
            expire_at = sh.utcnow() + dt.timedelta(seconds=self.ttl)
        embedded: dict[tuple[str, str], list[StoredWrite]] = {}
        loose = list(writes)
        if self._layout >= 3:  # in their checkpoint's document where it is copied too
            copied = {(stored.namespace, stored.id) for stored in checkpoints}
            loose = []
            for write in writes:
                key = (write.namespace, write.checkpoint_id)
                if key in copied:
                    embedded.setdefault(key, []).append(write)
                else:
                    loose.append(write)
        for stored in checkpoints:
            doc, chunks = sh.to_doc(stored, layout=self._layout, expire_at=expire_at,
                                    chunk_bytes=self.chunk_bytes,
                                    writes=embedded.get((stored.namespace, stored.id), ()))
            if chunks:
                self._insert_chunks(chunks)
            heads.append(doc)
        for position in self._insert_docs(self._checkpoints, heads):
            # already there (a resumed copy): its writes join the stored document's
            head = heads[position]
            loose.extend(embedded.get(
                (head["ns"], sh.id_text(head["cid"], "cid", self._layout)), ()))
        if self._layout >= 3:
            if loose:
                self._insert_writes(loose, False)
        else:
            self._insert_docs(self._writes, [sh.write_doc(write, expire_at)
                                                   for write in loose])

    def _replace(self, stored: StoredCheckpoint) -> None:
        """Rewrite a checkpoint's record (``delete_checkpoints`` re-encodes survivors)."""
        self._ensure_setup()
        query, update = self._rewrite(stored)
        result = self._checkpoints.update_one(query, update)
        if result.matched_count != 1:
            raise KeyError(f"checkpoint {stored.id!r} vanished while being rewritten")

    def _replace_many(self, items: Sequence[StoredCheckpoint]) -> None:
        """Rewrite several records in one bulk command (a new master's reverse records);
        a record that vanished meanwhile is skipped."""
        self._ensure_setup()
        rewrites = [self._rewrite(stored) for stored in items]
        if len(rewrites) == 1:  # the common case: the previous keyframe alone
            self._checkpoints.update_one(*rewrites[0])
        elif rewrites:
            self._checkpoints.bulk_write([UpdateOne(*r) for r in rewrites],
                                               ordered=False)

    def _rewrite(self, stored: StoredCheckpoint) -> tuple[dict[str, Any], dict[str, Any]]:
        """The filter and update that rewrite ``stored``'s record, its chunks written
        first."""
        doc, chunks = sh.to_doc(stored, layout=self._layout, chunk_bytes=self.chunk_bytes)
        if chunks:
            self._insert_chunks(chunks)
        return (sh.one(stored.thread_id, stored.namespace, stored.id, self._layout),
                sh.rewrite_update(doc, self._layout))

    def _delete_checkpoints(
        self, thread_id: str, namespace: str, ids: Sequence[str]
    ) -> None:
        self._ensure_setup()
        self._checkpoints.delete_many(sh.ids_filter(thread_id, namespace, ids,
                                                          self._layout))
        self._writes.delete_many(sh.ids_filter(thread_id, namespace, ids,
                                                     sh.LOOSE_LAYOUT))
        # chunks of deleted records become orphans: collect_orphans removes them

    def _archive(self, thread_id: str) -> tuple[int | None, list[StoredCheckpoint]]:
        """Archive the live run as the next version, resumably.

        The version is claimed first by a release marker flagged ``pending``; archive
        ``_id``s are deterministic per (checkpoint, version), so a release interrupted
        after its claim (crash, dropped connection) is finished by the next one under the
        same version: documents already copied are kept, nothing is archived twice. The
        marker loses its flag last; ``versions`` and ``get_version`` skip pending ones.
        """
        self._ensure_setup()
        docs = [doc for doc in self._checkpoints.find({"thread_id": thread_id},
                                                            batch_size=1000)]
        self._writes.delete_many({"thread_id": thread_id})
        last = self._releases.find_one({"thread_id": thread_id},
                                             sort=[("version", -1)])
        resumed = last is not None and bool(last.get("pending"))
        if not docs and not resumed:
            return None, []  # nothing ran since the last release: no empty version
        if resumed:
            assert last is not None
            version = int(last["version"])
        else:
            version = 1 if last is None else int(last["version"]) + 1
            try:
                self._releases.insert_one(sh.release_doc(thread_id, version, len(docs)))
            except DuplicateKeyError:  # a concurrent release claimed it: finish it together
                resumed = True
        self._insert_docs(self._archive_coll,
                                [sh.archive_doc(doc, version) for doc in docs])
        if docs:
            self._checkpoints.delete_many(
                {"thread_id": thread_id, "_id": {"$in": [doc["_id"] for doc in docs]}})
        if resumed:  # the run is what the interrupted attempt(s) archived, plus docs
            docs = [doc for doc in self._archive_coll.find(
                {"thread_id": thread_id, "version": version}, batch_size=1000)]
        self._releases.update_one(
            {"_id": sh.release_id(thread_id, version), "thread_id": thread_id},
            {"$set": {"count": len(docs)}, "$unset": {"pending": ""}})
        return version, self._complete(docs)

    def _versions(self, thread_id: str) -> list[int]:
        self._ensure_setup()
        return [int(doc["version"]) for doc in self._releases.find(
            sh.released(thread_id), {"version": 1})]

    def _read_version(
        self, thread_id: str, version: int
    ) -> list[StoredCheckpoint] | None:
        self._ensure_setup()
        marker = self._releases.find_one(
            {"_id": sh.release_id(thread_id, version), **sh.released(thread_id)})
        if marker is None:
            return None
        docs = [doc for doc in self._archive_coll.find(
            {"thread_id": thread_id, "version": version})]
        return self._complete(docs)
