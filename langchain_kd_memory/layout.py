"""Where `EpisodeStore` keeps each namespace in Chroma, and the protocol every read and write follows.

This module owns the layout: where a namespace lives, how a write lands and is verified, how a
namespace is promoted to a collection of its own, and how a reader copes with a promotion in
flight. `EpisodeStore` (`storage`) validates and calls it; `records` says what a record holds.

Why buckets: Chroma keeps ~2.6 MB of index per loaded collection, so one collection per namespace
took ~26 GB at 10,000 namespaces; sharing collections took 0.4 GB (BENCHMARKS.md, Scale).

Collections of a store whose `collection_name` is ``P``:
    ``P.registry``  One record per namespace, id ``"n:" + namespace`` (vector: a dummy
        ``[1.0]``), metadata: ``kd_place`` (``bucket``, ``moving``, ``own`` or ``deleted``),
        ``kd_gen`` (the namespace's tag: 32 hex digits of sha256 of namespace and generation),
        ``kd_n`` (the generation: 1 when first created, +1 each time it is created again),
        ``kd_bucket`` (its bucket: sha256 of the namespace modulo `buckets`, fixed at creation),
        and what it was created with (``kd_embedder``, ``kd_dimension``, ``kd_reward_low`` /
        ``kd_reward_high``, ``kd_format`` 3).
    ``P.b.<k>``  Bucket k, shared by namespaces: a record's id is ``"<tag>:<episode id>"`` and
        its metadata adds ``kd_ns`` (the namespace) and ``kd_gen`` (the tag). Every read and
        write of a namespace in a bucket filters by ``kd_gen`` (``$and`` with the user's filter),
        so a namespace never sees another's records, nor those of an earlier generation.
    ``P.ns.<encoded namespace>`` (``P.nh.<sha256>`` if too long; ``.<n>`` appended from
        generation 2 on)  A namespace's own collection: episode ids as they are, no tags.
    ``P.lease.<tag>.<epoch>``  While a namespace is promoted: the mover's lease (no records;
        metadata ``kd_owner``, ``kd_ts``). Chroma refuses to create a collection whose name
        exists, so exactly one process holds each epoch.

States of a namespace (its registry record) and who changes them:
    absent / deleted -> bucket, or own if its first write holds `move_at` records: any writer,
        by an upsert of generation n + 1. Tag and bucket are functions of the namespace and the
        generation, so processes creating it at once write the same record and agree; nothing
        here depends on what Chroma does with an ``add`` of an existing id.
    bucket -> moving -> own: only the holder of the lease (promotion, below).
    moving -> bucket: the lease holder, when its promotion fails.
    any -> deleted: `drop` (the record stays as a tombstone keeping the generation).
    Namespaces never leave their own collection.

Write (add, upsert, reward update, delete) of namespace N, in one process under `lock`:
    W1. N's place: cached, else read from the registry (created if absent, for add and upsert).
    W2. Write there (adds are upserts of ids checked absent before; redoing one is harmless).
    W3. Read N's registry record (the only registry read of a write in the steady state).
    W4. If it says N is where W2 wrote (same tag, not moving): acknowledged. Else wait while N
        moves (taking the lease over if it expired), then redo from W2 where N is now.
    A write that is acknowledged survives a promotion: W3 saw ``bucket`` before the mover marked
    N ``moving`` (P2), so W2 landed before the copy (P3) read the bucket.
    Crash before W4: the write is not acknowledged and may or may not be there (an `add` is
    undone when it fails with the process alive; retrying the same episodes stores each once).

Promotion of N (tag T, bucket k) once it holds `move_at` records, by a writer of N:
    P1. Lease: create ``P.lease.T.1`` (or, if that epoch exists and was not renewed for
        `LEASE_S`, the next epoch). Before each of P2-P4 the holder renews its epoch and checks
        that the next one does not exist (fencing: a holder whose lease was taken over stops).
    P2. N -> moving. Writers now wait; readers keep reading the bucket, which is complete.
    P3. Copy N's bucket records to its own collection (upserts), and delete records there that
        the bucket no longer has (left by an earlier attempt).
    P4. N -> own (on failure in P2-P4: N -> bucket, writers redo there).
    P5. Delete N's records from bucket k, then the lease collections of T; an emptied bucket is
        deleted (its writers get NotFound and re-read the registry: W4).
    Crash after P1: the lease expires after `LEASE_S`. After P2 or P3: N stays ``moving`` and
    its writers wait until one takes the lease over and finishes from P3. After P4: records of
    T stay in bucket k; never read once places are re-read (`PLACE_TTL`), removed by `drop`.

Read of N (search, get, list, count, training data):
    R1. N's place, cached for at most `PLACE_TTL` seconds.
    R2. Read it (in a bucket: ``where kd_gen = T``; a ``moving`` bucket is complete).
    R3. A bucket read that finds nothing or misses an id, or a collection that is gone, re-reads
        N's registry record and reads again where N is now.

Drop of N: D1 N -> deleted (generation kept), D2 delete T's bucket records, N's own
collection and T's leases (each idempotent; a crash leaves records nobody reads; dropping again
removes them).

Guaranteed: an acknowledged write is in N's place and found by every process within
`PLACE_TTL` (at once if a read there misses); concurrent creators of a namespace agree on its
place; one lease holder per epoch. Not guaranteed: a lease holder that stalls for over
`LEASE_S` between its check and its next request can race the process that took over (the
usual limit of leases; Chroma has no compare-and-set); duplicate-id checks are not atomic
across processes (the last write wins); readers of a namespace being written may miss writes
not acknowledged yet. Stores of format 1 (a collection per namespace, no registry) are refused
until `migrate` (``kd-memory migrate``) registers their collections; format 2 opens as is.

"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError

from langchain_kd_memory.embeddings import EmbedderIdentity
from langchain_kd_memory.errors import (
    ConfigError,
    EmbedderMismatchError,
    KDMemoryError,
    StoreError,
)

logger = logging.getLogger(__name__)

STORE_FORMAT = 3
"""Format this version writes (1: a collection per namespace; 2: open buckets, add-based leases)."""
MOVE_AT = 256
"""A namespace is promoted from its bucket to its own collection once it holds this many records."""
BUCKETS = 64
"""New namespaces are spread over this many buckets."""
LEASE_S = 60.0
"""A lease not renewed for this long may be taken over."""
PLACE_TTL = 5.0
"""Readers re-read a namespace's registry record once their cached one is this old."""
WAIT_S = 0.05
"""How often a writer waiting for a promotion reads the registry."""

# Record metadata in buckets, collection metadata, registry records.
NAMESPACE_KEY, TAG_KEY, TAG_LENGTH = "kd_ns", "kd_gen", 32
NAMESPACE_META, EMBEDDER_META, DIMENSION_META = "kd_namespace", "kd_embedder", "kd_dimension"
FORMAT_META, REWARD_LOW_META, REWARD_HIGH_META = "kd_format", "kd_reward_low", "kd_reward_high"
PLACE_META, BUCKET_META, GENERATION_META = "kd_place", "kd_bucket", "kd_n"
OWNER_META, TIME_META = "kd_owner", "kd_ts"
BUCKET, MOVING, OWN, DELETED = "bucket", "moving", "own", "deleted"

_NS = "n:"
_OWN_CONFIG = {"hnsw": {"space": "cosine"}}
# sync_threshold 100: the first query of a bucket in a new process takes ~20 ms, not ~160 ms
_BUCKET_CONFIG = {"hnsw": {"space": "cosine", "sync_threshold": 100, "batch_size": 100}}
_KEPT_CHARACTERS = frozenset(string.ascii_letters + string.digits)
_MAX_CHROMA_NAME = 512
_PAGE = 5000
_ROUNDS = 4

Range = tuple[float, float] | None
_T = TypeVar("_T")
Rows = list[tuple["Place", Any]]


class Gone(StoreError):
    """A collection was deleted (by another process) while this one used it."""


def encode_namespace(namespace: str) -> str:
    """Encode a namespace into Chroma's name alphabet, reversibly and without collisions.

    ASCII letters and digits are kept; every other character becomes ``_hh`` for each byte of
    its UTF-8 encoding (``"user/42"`` -> ``"user_2f42"``, ``"a_b"`` -> ``"a_5fb"``).
    """
    return "".join(
        ch if ch in _KEPT_CHARACTERS else "".join(f"_{b:02x}" for b in ch.encode("utf-8"))
        for ch in namespace
    )


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).hexdigest()


@contextmanager
def chroma_call(action: str) -> Iterator[None]:
    """Turn a Chroma (or transport) failure inside the block into a `StoreError` (`Gone`)."""
    try:
        yield
    except KDMemoryError:
        raise
    except NotFoundError as exc:
        raise Gone(f"Chroma failed to {action}: a collection was deleted meanwhile: {exc}") from exc
    except Exception as exc:
        raise StoreError(f"Chroma failed to {action}: {type(exc).__name__}: {exc}") from exc


def show_range(reward_range: Range) -> str:
    """A reward range as the error messages show it."""
    return "none" if reward_range is None else f"[{reward_range[0]}, {reward_range[1]}]"


class Scope:
    """Records of one or more namespaces in one collection: how to filter and name them."""

    __slots__ = ("collection", "owners")

    def __init__(self, collection: Collection, owners: Mapping[str, str] | str) -> None:
        self.collection = collection
        self.owners = owners  # bucket: {tag: namespace}; own collection: its namespace

    @property
    def tagged(self) -> bool:
        """Whether the records live in a bucket (tagged ids, filtered reads)."""
        return not isinstance(self.owners, str)

    def where(self, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The `where` of these namespaces' records, and `extra` if given."""
        if isinstance(self.owners, str):
            return extra
        tags = list(self.owners)
        tag: dict[str, Any] = {TAG_KEY: tags[0] if len(tags) == 1 else {"$in": tags}}
        return tag if extra is None else {"$and": [tag, extra]}

    def eid(self, chroma_id: str) -> str:
        """The episode id of a record id."""
        return chroma_id[TAG_LENGTH + 1 :] if self.tagged else chroma_id

    def namespace_of(self, chroma_id: str) -> str:
        """The namespace of a record id."""
        if isinstance(self.owners, str):
            return self.owners
        return self.owners[chroma_id[:TAG_LENGTH]]

    def chroma_ids(self, episode_ids: Sequence[str]) -> list[str]:
        """The record ids these episode ids would have in any of these namespaces."""
        if isinstance(self.owners, str):
            return list(episode_ids)
        return [f"{tag}:{i}" for tag in self.owners for i in episode_ids]


@dataclass(frozen=True)
class Place:
    """Where one namespace lives, as its registry record said at `read_at` (monotonic)."""

    namespace: str
    collection: Collection
    tag: str
    bucket: int | None  # None: its own collection
    state: str  # BUCKET, MOVING or OWN
    reward_range: Range
    generation: int
    read_at: float = field(default_factory=time.monotonic, compare=False)

    @property
    def scope(self) -> Scope:
        """The namespace's records as a `Scope`."""
        own = self.bucket is None
        return Scope(self.collection, self.namespace if own else {self.tag: self.namespace})

    def cid(self, episode_id: str) -> str:
        """The record id of an episode of this namespace."""
        return episode_id if self.bucket is None else f"{self.tag}:{episode_id}"

    def tags(self) -> dict[str, Any]:
        """The metadata a record of this namespace carries besides the episode's."""
        return {} if self.bucket is None else {NAMESPACE_KEY: self.namespace, TAG_KEY: self.tag}

    def holds(self, record: Mapping[str, Any] | None) -> bool:
        """Whether `record` (read after a write here) says the namespace is still here (W4)."""
        if record is None or record.get(TAG_KEY) != self.tag:
            return False
        place = record.get(PLACE_META)
        return place == OWN if self.bucket is None else place == BUCKET


class Layout:
    """The registry, buckets and own collections of one store; caches places in-process.

    Writes (`write`, `undo`, `drop`, `migrate`) must be made under `lock`.
    """

    def __init__(self, client: ClientAPI, prefix: str, identity: EmbedderIdentity,
                 reward_range: Range, move_at: int = MOVE_AT, buckets: int = BUCKETS) -> None:
        self.client = client
        self.prefix = prefix
        self.identity = identity
        self.reward_range = reward_range
        self.move_at = move_at
        self.buckets = buckets
        self.lock = threading.RLock()
        self.moves = 0
        self._places: dict[str, Place] = {}
        self._sizes: dict[str, int] = {}  # bucket namespaces: records last counted + written since
        self._collections: dict[str, Collection] = {}
        self._registry: Collection | None = None
        self._format_checked = False
        self._max_batch: int | None = None

    # ----------------------------------------------------------------- names, checks, collections

    def own_name(self, namespace: str, generation: int = 1) -> str:
        """The name of a namespace's own collection in that generation."""
        suffix = "" if generation <= 1 else f".{generation}"
        name = f"{self.prefix}.ns.{encode_namespace(namespace)}{suffix}"
        return name if len(name) <= _MAX_CHROMA_NAME else f"{self.prefix}.nh.{_digest(namespace)}{suffix}"

    def _lease_name(self, tag: str, epoch: int) -> str:
        return f"{self.prefix}.lease.{tag}.{epoch}"

    def max_batch(self) -> int:
        """Chroma's maximum number of records per request."""
        if self._max_batch is None:
            with chroma_call("read the maximum batch size"):
                self._max_batch = int(self.client.get_max_batch_size())
        return self._max_batch

    def _checked(self, namespace: str, meta: Mapping[str, Any]) -> Range:
        """The recorded reward range, after checking the embedder and the declared range."""
        stored = EmbedderIdentity(str(meta.get(EMBEDDER_META)), int(meta.get(DIMENSION_META, 0)))
        if stored != self.identity:
            raise EmbedderMismatchError(
                f"namespace {namespace!r} of store {self.prefix!r} holds vectors from {stored}, "
                f"but this store embeds with {self.identity}; open it with the same embedder or "
                "use another collection_name"
            )
        low, high = meta.get(REWARD_LOW_META), meta.get(REWARD_HIGH_META)
        recorded = None if low is None or high is None else (float(low), float(high))
        if self.reward_range is not None and recorded != self.reward_range:
            raise ConfigError(
                f"namespace {namespace!r} of store {self.prefix!r} was created with "
                f"reward_range {show_range(recorded)}, but this store declares "
                f"{show_range(self.reward_range)}; open it with the same reward_range (or none)"
            )
        return recorded

    def _identity_meta(self, reward_range: Range) -> dict[str, Any]:
        meta: dict[str, Any] = {EMBEDDER_META: self.identity.name,
                                DIMENSION_META: self.identity.dimension, FORMAT_META: STORE_FORMAT}
        if reward_range is not None:
            meta[REWARD_LOW_META], meta[REWARD_HIGH_META] = reward_range
        return meta

    def registry(self, create: bool = False) -> Collection | None:
        """The registry collection (None if it does not exist and `create` is False).

        Raises:
            StoreError: If the store has format-1 collections and no registry (`migrate`).
        """
        if self._registry is None:
            name = f"{self.prefix}.registry"
            with chroma_call(f"open the namespace registry {name!r}"):
                try:
                    self._registry = self.client.get_collection(name, embedding_function=None)
                except NotFoundError:
                    if not self._format_checked and self.format_1_namespaces():
                        raise StoreError(
                            f"store {self.prefix!r} was written by an earlier version (a "
                            "collection per namespace): run `kd-memory migrate --collection "
                            f"{self.prefix}` (or EpisodeStore.migrate()) once, then open it"
                        ) from None
                    self._format_checked = True
                    if not create:
                        return None
                    self._registry = self.client.get_or_create_collection(
                        name, configuration=_OWN_CONFIG,  # type: ignore[arg-type]
                        metadata={FORMAT_META: STORE_FORMAT}, embedding_function=None)
        return self._registry

    def _collection(self, name: str, meta: dict[str, Any], bucket: bool) -> Collection:
        """A bucket or own collection, created if missing (cached; dropped from cache if gone)."""
        collection = self._collections.get(name)
        if collection is None:
            with chroma_call(f"open collection {name!r}"):
                collection = self.client.get_or_create_collection(
                    name, configuration=_BUCKET_CONFIG if bucket else _OWN_CONFIG,  # type: ignore[arg-type]
                    metadata=meta, embedding_function=None)
            stored = collection.metadata or {}
            if stored.get(NAMESPACE_META) != meta.get(NAMESPACE_META) or EMBEDDER_META not in stored:
                raise StoreError(f"Chroma collection {name!r} was not created by an EpisodeStore "
                                 "for this namespace; use another collection_name")
            if (stored[EMBEDDER_META], stored.get(DIMENSION_META)) != (
                    self.identity.name, self.identity.dimension):
                raise EmbedderMismatchError(
                    f"collection {name!r} holds vectors from {stored[EMBEDDER_META]}, but this "
                    f"store embeds with {self.identity}; use another collection_name")
            self._collections[name] = collection
        return collection

    def _bucket(self, number: int) -> Collection:
        return self._collection(f"{self.prefix}.b.{number}", self._identity_meta(None), True)

    def _own(self, namespace: str, record: Mapping[str, Any], reward_range: Range) -> Collection:
        meta = {**self._identity_meta(reward_range), NAMESPACE_META: namespace,
                TAG_KEY: record[TAG_KEY]}
        name = self.own_name(namespace, int(record.get(GENERATION_META, 1)))
        return self._collection(name, meta, False)

    def _forget(self, collection: Collection) -> None:
        self._collections.pop(collection.name, None)

    # ----------------------------------------------------------------- registry and places

    def _get(self, namespaces: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Registry records of these namespaces as stored (deleted ones included)."""
        registry = self.registry()
        if registry is None or not namespaces:
            return {}
        with chroma_call("read the namespace registry"):
            got = registry.get(ids=[_NS + ns for ns in namespaces], include=["metadatas"])  # type: ignore[list-item]
        return {i[len(_NS) :]: dict(m or {})
                for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)}

    def records(self, namespaces: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The registry records of these namespaces that are live (not absent or deleted)."""
        return {ns: r for ns, r in self._get(namespaces).items() if r.get(PLACE_META) != DELETED}

    def _live(self, include: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every live namespace's id-less record (metadata only if `include` asks), paged."""
        registry, offset = self.registry(), 0
        while registry is not None:
            with chroma_call("read the namespace registry"):
                page = registry.get(where={PLACE_META: {"$ne": DELETED}},  # type: ignore[dict-item]
                                    include=include, limit=_PAGE, offset=offset)  # type: ignore[arg-type]
            metadatas = page["metadatas"] or [{}] * len(page["ids"])
            yield from ((i[len(_NS) :], dict(m or {}))
                        for i, m in zip(page["ids"], metadatas, strict=True) if i.startswith(_NS))
            if len(page["ids"]) < _PAGE:
                return
            offset += _PAGE

    def _place_of(self, namespace: str, record: Mapping[str, Any]) -> Place:
        reward_range = self._checked(namespace, record)
        generation = int(record.get(GENERATION_META, 1))
        tag, state = str(record[TAG_KEY]), str(record[PLACE_META])
        published = self._published(namespace, record) if state == MOVING else None
        if state == OWN or published is not None:  # (moving and published: P4 half-recorded)
            collection = published or self._own(namespace, record, reward_range)
            return Place(namespace, collection, tag, None, OWN, reward_range, generation)
        number = int(record[BUCKET_META])
        return Place(namespace, self._bucket(number), tag, number, state, reward_range, generation)

    def _cache(self, namespace: str, record: Mapping[str, Any] | None) -> Place | None:
        if record is None or record.get(PLACE_META) == DELETED:
            self._places.pop(namespace, None)
            return None
        place = self._places[namespace] = self._place_of(namespace, record)
        return place

    def place(self, namespace: str, max_age: float | None = None) -> Place | None:
        """Where the namespace lives (cached; re-read if older than `max_age` s); None: absent."""
        cached = self._places.get(namespace)
        if cached is not None and (max_age is None or time.monotonic() - cached.read_at < max_age):
            return cached
        return self.refresh(namespace)

    def refresh(self, namespace: str) -> Place | None:
        """Read where the namespace lives now, and cache it."""
        return self._cache(namespace, self._get([namespace]).get(namespace))

    def reward_range_of(self, namespace: str) -> Range:
        """The namespace's recorded reward range, or the store's if it does not exist."""
        place = self.place(namespace)
        return self.reward_range if place is None else place.reward_range

    def _create(self, namespace: str, rows: int, old: Mapping[str, Any]) -> Place:
        """Register the namespace's next generation (the same record from every creator)."""
        registry = self.registry(create=True)
        assert registry is not None
        generation = int(old.get(GENERATION_META, 0)) + 1
        record = {**self._identity_meta(self.reward_range), GENERATION_META: generation,
                  TAG_KEY: _digest(namespace, generation)[:TAG_LENGTH],
                  PLACE_META: OWN if rows >= self.move_at else BUCKET,
                  BUCKET_META: int(_digest(namespace)[:15], 16) % self.buckets}
        place = self._place_of(namespace, record)  # its collection first: it may be refused
        with chroma_call(f"register namespace {namespace!r}"):
            registry.upsert(ids=[_NS + namespace], embeddings=np.ones((1, 1), dtype=np.float32),
                            metadatas=[record])
        self._sizes[namespace] = 0
        self._places[namespace] = place
        return place

    # ----------------------------------------------------------------- the write protocol

    def write(self, rows: Mapping[str, Sequence[Any]], op: Callable[[Collection, Rows], None],
              *, create: bool, action: str, created: list[Place] | None = None) -> None:
        """W1-W4: run `op(collection, [(place, row), ...])` on the rows of each namespace.

        `op` gets at most `max_batch` rows at once, those of one collection together. With
        `create`, missing namespaces are created (and appended to `created`); without, the rows
        of a namespace deleted meanwhile are dropped (they went with it).
        """
        created = [] if created is None else created
        places: dict[str, Place] = {}
        for namespace in rows:  # W1
            cached = self._places.get(namespace)
            place = cached if cached is not None and cached.state != MOVING else self._settle(
                namespace, create, len(rows[namespace]), created)
            if place is not None:
                places[namespace] = place
        for _ in range(_ROUNDS):
            gone = self._apply(places, rows, op, action)  # W2
            records = self._get([ns for ns in places if ns not in gone])  # W3
            now = time.monotonic()
            for namespace, place in places.items():
                if namespace not in gone and place.holds(records.get(namespace)):
                    self._places[namespace] = replace(place, read_at=now)
            moved = [ns for ns in places if ns in gone or not places[ns].holds(records.get(ns))]
            if not moved:
                self._grow(rows)
                return
            places = {}
            for namespace in moved:  # W4
                place = self._settle(namespace, create, len(rows[namespace]), created)
                if place is not None:
                    places[namespace] = place
        raise StoreError(f"Chroma failed to {action}: the namespaces kept moving; try again")

    def _apply(self, places: Mapping[str, Place], rows: Mapping[str, Sequence[Any]],
               op: Callable[[Collection, Rows], None], action: str) -> set[str]:
        """W2: `op` per collection and chunk; returns the namespaces whose collection was gone."""
        by_collection: dict[str, Rows] = {}
        for namespace, place in places.items():
            by_collection.setdefault(place.collection.name, []).extend(
                (place, row) for row in rows[namespace])
        gone: set[str] = set()
        step = self.max_batch()
        for pairs in by_collection.values():
            names = ", ".join(dict.fromkeys(repr(place.namespace) for place, _ in pairs))
            try:
                for start in range(0, len(pairs), step):
                    with chroma_call(f"{action} in namespace {names}"):
                        op(pairs[0][0].collection, pairs[start : start + step])
            except Gone:
                self._forget(pairs[0][0].collection)
                gone.update(place.namespace for place, _ in pairs)
        return gone

    def _settle(self, namespace: str, create: bool, rows: int,
                created: list[Place]) -> Place | None:
        """N's place once no promotion of it is in flight (waits; takes an expired one over)."""
        deadline = time.monotonic() + 3 * LEASE_S
        for attempt in itertools.count():
            if attempt:
                time.sleep(WAIT_S)
            record = self._get([namespace]).get(namespace, {})
            state = record.get(PLACE_META)
            if state in (None, DELETED):
                self._places.pop(namespace, None)
                if not create:
                    return None
                created.append(self._create(namespace, rows, record))
                return created[-1]
            if state != MOVING:
                return self._cache(namespace, record)
            if not self._promote(namespace) and time.monotonic() > deadline:
                raise StoreError(f"namespace {namespace!r} has been moving for over "
                                 f"{3 * LEASE_S:.0f} s; try again later")
        raise AssertionError("unreachable")

    def undo(self, written: Sequence[tuple[Collection, list[str]]],
             created: Sequence[Place]) -> list[str]:
        """Delete the records of a failed add, and the namespaces it created if left empty.

        Returns the record ids still there. Raises `StoreError` if Chroma fails.
        """
        remaining: list[str] = []
        for collection, ids in written:
            with chroma_call("remove the episodes of a failed add"):
                collection.delete(ids=ids)
                remaining += collection.get(ids=ids, include=[])["ids"]
        registry = self.registry()
        for place in created if registry is not None and not remaining else []:
            with chroma_call(f"remove the empty namespace {place.namespace!r}"):
                if not place.collection.get(where=place.scope.where(), include=[], limit=1)["ids"]:  # type: ignore[arg-type]
                    registry.delete(ids=[_NS + place.namespace])  # its next creator reuses the tag
                    self._places.pop(place.namespace, None)
        return remaining

    # ----------------------------------------------------------------- promotion

    def _grow(self, rows: Mapping[str, Sequence[Any]]) -> None:
        """Promote the written bucket namespaces that reached `move_at` (failures are logged).

        A namespace is counted when this process's estimate (last count + rows written since)
        reaches `move_at` or a multiple of `move_at` // 4, so other processes' writes count too.
        """
        quarter = max(1, self.move_at // 4)
        for namespace, written in rows.items():
            place = self._places.get(namespace)
            if place is None or place.bucket is None:
                continue
            known = self._sizes.get(namespace)
            size = (known or 0) + len(written)
            if known is None or size >= self.move_at or size // quarter > known // quarter:
                try:
                    with chroma_call(f"count namespace {namespace!r}"):
                        where = place.scope.where()
                        size = len(place.collection.get(where=where, include=[])["ids"])  # type: ignore[arg-type]
                    if size >= self.move_at:
                        self._promote(namespace)
                except StoreError as exc:
                    logger.warning("namespace %r stays in its bucket: %s", namespace, exc)
            self._sizes[namespace] = size

    def _lease(self, tag: str, meta: dict[str, Any]) -> Collection | None:
        """P1: a private collection for the copy, which is the lease; None if another holds it."""
        epoch, token = 1, uuid.uuid4().hex
        for _ in range(16):
            name = self._lease_name(tag, epoch)
            try:  # Chroma refuses a name that exists: one holder per epoch
                return self.client.create_collection(
                    name, configuration=_OWN_CONFIG,  # type: ignore[arg-type]
                    metadata={**meta, OWNER_META: token, TIME_META: time.time()},
                    embedding_function=None)
            except Exception:
                pass
            try:
                held = self.client.get_collection(name, embedding_function=None)
            except NotFoundError:
                continue  # released meanwhile
            except Exception as exc:
                raise StoreError(f"Chroma failed to read the lease {name!r}: {exc}") from exc
            if time.time() - float((held.metadata or {}).get(TIME_META, 0.0)) < LEASE_S:
                return None
            epoch += 1  # expired: take the next epoch
        return None

    def _release(self, tag: str) -> None:
        """Delete the lease collections of `tag` (epochs 1 up to the first missing)."""
        for epoch in itertools.count(1):
            name = self._lease_name(tag, epoch)
            try:
                self.client.delete_collection(name)
            except NotFoundError:
                return
            except Exception as exc:  # left for `drop`
                logger.warning("could not remove the lease %r: %s", name, exc)
                return

    def _published(self, namespace: str, record: Mapping[str, Any],
                   clear: bool = False) -> Collection | None:
        """The namespace's own collection if a promotion published it (P4), else None.

        With `clear`, a collection of that name without the namespace's tag (left by a move of
        format 2) is deleted, so that the promotion can publish.
        """
        name = self.own_name(namespace, int(record.get(GENERATION_META, 1)))
        try:
            with chroma_call(f"look for {name!r}"):
                collection = self.client.get_collection(name, embedding_function=None)
                if (collection.metadata or {}).get(TAG_KEY) == record[TAG_KEY]:
                    return collection
                if clear:
                    self.client.delete_collection(name)
        except Gone:
            pass
        return None

    def _promote(self, namespace: str) -> bool:
        """P1-P5 for a bucket (or ``moving``) namespace; False if another process holds the lease."""
        record = self.records([namespace]).get(namespace)
        if record is None or record[PLACE_META] not in (BUCKET, MOVING):
            return True
        tag, started = str(record[TAG_KEY]), time.perf_counter()
        own = self._published(namespace, record, clear=True)
        if own is None:
            meta = {**self._identity_meta(self._checked(namespace, record)),
                    NAMESPACE_META: namespace, TAG_KEY: tag}
            lease = self._lease(tag, meta)
            if lease is None:
                return False
            registry = self.registry()
            assert registry is not None
            try:
                with chroma_call(f"promote namespace {namespace!r}"):
                    registry.update(ids=[_NS + namespace], metadatas=[{PLACE_META: MOVING}])  # P2
                    copied = self._copy(self._bucket(int(record[BUCKET_META])), tag, lease)  # P3
                    lease.modify(  # P4: Chroma refuses it if another process published first
                        name=self.own_name(namespace, int(record.get(GENERATION_META, 1))),
                        metadata=meta)
            except StoreError as exc:
                with contextlib.suppress(Exception):  # a private copy: nobody else reads it
                    self.client.delete_collection(lease.name)
                logger.warning("promoting %r failed (%s); a writer will take it over", namespace,
                               exc)
                own = self._published(namespace, record)
                if own is not None:
                    self._finish(namespace, record, own)
                return True
            own = lease
            self.moves += 1
            logger.info("promoted namespace %r (%d records) to %r in %.2f s", namespace, copied,
                        own.name, time.perf_counter() - started)
        self._finish(namespace, record, own)
        return True

    def _copy(self, bucket: Collection, tag: str, lease: Collection) -> int:
        """P3: copy the records tagged `tag` into the lease collection, renewing it per chunk."""
        got = bucket.get(where={TAG_KEY: tag},
                         include=["embeddings", "documents", "metadatas"])  # type: ignore[list-item]
        ids = [i[TAG_LENGTH + 1 :] for i in got["ids"]]
        metadatas = [{k: v for k, v in (m or {}).items() if k not in (NAMESPACE_KEY, TAG_KEY)}
                     for m in got["metadatas"] or []]
        step = self.max_batch()
        for start in range(0, len(ids), step):
            lease.modify(metadata={**(lease.metadata or {}), TIME_META: time.time()})  # renew
            end = start + step
            lease.upsert(
                ids=ids[start:end], embeddings=got["embeddings"][start:end],  # type: ignore[index]
                documents=(got["documents"] or [])[start:end],
                metadatas=metadatas[start:end])  # type: ignore[arg-type]
        return len(ids)

    def _finish(self, namespace: str, record: Mapping[str, Any], own: Collection) -> None:
        """P4 in the registry and P5, by the publisher or whoever finds the work undone."""
        registry = self.registry()
        assert registry is not None
        try:
            with chroma_call(f"finish the promotion of {namespace!r}"):
                now = self.records([namespace]).get(namespace, {})
                if now.get(TAG_KEY) != record[TAG_KEY]:
                    return  # deleted meanwhile: the published collection is never read
                registry.update(ids=[_NS + namespace], metadatas=[{PLACE_META: OWN}])
                self._collections[own.name] = own
                self._places[namespace] = self._place_of(namespace, {**now, PLACE_META: OWN})
                self._bucket(int(record[BUCKET_META])).delete(where={TAG_KEY: record[TAG_KEY]})
            self._release(str(record[TAG_KEY]))
        except StoreError as exc:  # whoever reads the namespace next finishes it
            logger.warning("promoted %r; the rest is left to the next writer: %s", namespace, exc)

    # ----------------------------------------------------------------- reads

    def read(self, namespace: str, read: Callable[[Place], _T], empty: _T,
             complete: Callable[[_T], bool] = bool) -> _T:
        """R1-R3: `read(place)` of the namespace; `empty` if it does not exist."""
        place = self.place(namespace, max_age=PLACE_TTL)
        if place is None:
            return empty
        try:
            result = read(place)
            if place.bucket is None or complete(result):
                return result
        except Gone:
            self._forget(place.collection)
            place, result = None, empty  # type: ignore[assignment]
        fresh = self.refresh(namespace)
        if fresh is None:
            return empty
        return result if fresh == place else read(fresh)

    def scopes(self) -> list[Scope]:
        """Where the records of every live namespace are (records checked)."""
        buckets: dict[int, dict[str, str]] = {}
        owns: list[Scope] = []
        for namespace, record in self._live(["metadatas"]):
            place = self._place_of(namespace, record)
            if place.bucket is None:
                owns.append(place.scope)
            else:
                buckets.setdefault(place.bucket, {})[place.tag] = namespace
        return [Scope(self._bucket(n), owners) for n, owners in sorted(buckets.items())] + owns

    def namespaces(self) -> list[str]:
        """Every live namespace of the store, sorted."""
        return sorted(namespace for namespace, _ in self._live([]))

    # ----------------------------------------------------------------- drop and migrate

    def drop(self, namespace: str) -> int:
        """D1, D2: delete a namespace and its records; how many records it had."""
        record = self._get([namespace]).get(namespace)
        if record is None:
            return 0
        place = self._cache(namespace, record)
        self._sizes.pop(namespace, None)
        tag, generation = str(record[TAG_KEY]), int(record.get(GENERATION_META, 1))
        with chroma_call(f"delete namespace {namespace!r}"):
            count = 0 if place is None else len(
                place.collection.get(where=place.scope.where(), include=[])["ids"])  # type: ignore[arg-type]
            registry = self.registry()
            assert registry is not None
            registry.update(ids=[_NS + namespace], metadatas=[{PLACE_META: DELETED}])  # D1
            self._places.pop(namespace, None)
            try:  # D2
                self.client.get_collection(f"{self.prefix}.b.{record.get(BUCKET_META, 0)}",
                                           embedding_function=None).delete(where={TAG_KEY: tag})
            except NotFoundError:
                pass
            try:
                self.client.delete_collection(self.own_name(namespace, generation))
            except NotFoundError:
                pass
            self._collections.pop(self.own_name(namespace, generation), None)
        self._release(tag)
        return count

    def format_1_namespaces(self) -> dict[str, Collection]:
        """{namespace: collection} of this store's format-1 collections (not registered yet)."""
        found: dict[str, Collection] = {}
        offset, page = 0, 100
        while True:
            with chroma_call("list collections"):
                listed = self.client.list_collections(limit=page, offset=offset)
            for collection in listed:
                meta = collection.metadata or {}
                namespace = meta.get(NAMESPACE_META)
                if (isinstance(namespace, str) and self.own_name(namespace) == collection.name
                        and meta.get(FORMAT_META) not in (2, STORE_FORMAT)):
                    found[namespace] = collection
            if len(listed) < page:
                return found
            offset += page

    def migrate(self) -> list[str]:
        """Register this store's format-1 collections as own namespaces; their names.

        Nothing is copied: each collection stays as it is and gets a registry record.
        """
        legacy = self.format_1_namespaces()
        self._format_checked = True
        registry = self.registry(create=True)
        assert registry is not None
        for namespace, collection in legacy.items():
            meta = dict(collection.metadata or {})
            self._checked(namespace, meta)
            record = {k: v for k, v in meta.items() if k != NAMESPACE_META}
            record.update({FORMAT_META: STORE_FORMAT, GENERATION_META: 1, PLACE_META: OWN,
                           BUCKET_META: 0, TAG_KEY: _digest(namespace, 1)[:TAG_LENGTH]})
            with chroma_call(f"register namespace {namespace!r}"):
                registry.upsert(ids=[_NS + namespace], metadatas=[record],
                                embeddings=np.ones((1, 1), dtype=np.float32))
                collection.modify(metadata={**meta, FORMAT_META: STORE_FORMAT})
        return sorted(legacy)

