"""Where `EpisodeStore` keeps each namespace in Chroma, and the protocol of every read and write.

`storage` validates and calls this module; `records` says what a record holds. Namespaces share
collections because Chroma keeps ~2.6 MB per loaded collection: 10,000 namespaces of their own
would take ~26 GB (shared: 0.4 GB; BENCHMARKS.md, Scale).

Collections of the store ``P`` (its `collection_name`):
    ``P.registry``  A record per namespace N, id ``"n:" + N``, metadata ``kd_place`` (``bucket``,
        ``moving``, ``own`` or ``deleted``), ``kd_n`` (N's generation: 1, then +1 each time N is
        created again), ``kd_gen`` (N's tag: the first 32 hex digits of the sha256 of N and its
        generation), ``kd_bucket`` (the first 15 hex digits of N's sha256, modulo `buckets`),
        ``kd_embedder``, ``kd_dimension``, reward range, ``kd_format``.
    ``P.b.<k>``  Bucket k, shared: record id ``"<tag>:<episode id>"``, metadata + ``kd_ns``,
        ``kd_gen``. Every read and write in a bucket filters by ``kd_gen``: a namespace never
        sees another's records, nor those of its own earlier generations.
    ``P.ns.<encoded N>`` (``P.nh.<sha256>`` if too long; ``.<n>`` added from generation 2 on)
        N's own collection: episode ids as they are, no tags; collection metadata ``kd_gen``.
    ``P.lease.<tag>.<epoch>``  A promotion's lease and private copy (below). Chroma refuses to
        create, or to rename a collection to, a name that exists: that is the only mutual
        exclusion used, and nothing depends on what Chroma does with an ``add`` of an existing id.

Transitions of N's record, and who makes them (any process, under its `lock`):
    absent/deleted -> bucket, however large N's first write (W1 then promotes it): a writer,
        by an upsert of generation n + 1. Tag and bucket follow from N and n, so creators racing
        write the same record and agree.
    bucket -> moving -> own: a promoter (P2, P4); own is final, and nothing goes back to bucket.
    any -> deleted: `drop` (the record stays, keeping the generation).

Write of N (add, upsert, reward update, delete):
    W1. N's place: cached, else read with the write's other uncached namespaces in one registry
        read; the absent ones are created (add and upsert) in one registry upsert, and one
        found moving is waited for as in W4. N in a bucket and written `move_at` rows at once
        is promoted first (P1-P5 on what it holds), then written in its own collection.
    W2. Write there; adds check ids there first, then upsert, so a redo is harmless.
    W3. Read N's record: the one registry read of a write in the steady state.
    W4. Acknowledged if it still says N is where W2 wrote (same tag; bucket, or own). Else wait
        until no promotion is in flight (taking an expired one over) and redo from W2 there.
    W5. A writer that wrote to N's bucket and finds N own (with the same tag) deletes N's
        records from that bucket, as P5 does: its W2 may have landed after P5.
    Why a promotion loses nothing: a write acknowledged in the bucket had W3 before P2, so W2
        landed before P3 read the bucket; later writes wait for ``own`` and are redone there.
        Why it leaves nothing behind: P5 runs after P4, and so does every W5; a write to the
        bucket that follows P5 is followed by its writer's W5. Bucket records of an own
        namespace are never read, so W5 deleting them is always safe.
    Crash during W2-W5: the write is not acknowledged; what W2 wrote stays (in a bucket after
        P5 it is never read, and `drop` removes it).

Promotion of N (tag T, bucket k) when a writer counts `move_at` records in it:
    P1. Create ``P.lease.T.e``, e = 1, or the next epoch if e was not renewed for `LEASE_S`
        (its holder died or stalls). It is the lease and the private target of the copy.
    P2. N -> moving. Writers now wait (W4); readers keep reading the bucket, which is complete.
    P3. Copy T's records from bucket k into the lease collection (renewing it per chunk).
    P4. Publish: rename the lease collection to N's own name. Chroma refuses it if another
        promoter published first, so a stalled holder's copy is never read. N -> own. (Clocks
        only decide when a lease may be taken over; no step's correctness depends on them.)
    P5. Delete T's records from bucket k and T's lease collections.
    Crash after P1-P3: N stays moving and its writers wait until one takes the lease over
    (after `LEASE_S`) and promotes afresh. After P4: whoever reads N sees the published
    collection (``moving`` with a published collection counts as own) and a writer finishes
    P4-P5. On a failure the holder deletes its copy: the next writer starts again at P1.

Read of N: R1 its place, cached for `PLACE_TTL` s at most; R2 read there (a bucket with
``where kd_gen = T``); R3 a bucket read that finds nothing or misses an id, or a collection gone,
re-reads N's record and reads where N is now.

Drop of N: D1 N -> deleted; D2 delete T's bucket records, N's own collection, T's leases. Each
step is idempotent; what a crash leaves is never read, and dropping N again removes it.

Guaranteed: an acknowledged write is found by every process within `PLACE_TTL` (at once where a
read misses); creators agree on N's place; a promotion publishes one complete copy. Not
guaranteed: duplicate-id checks across processes (the last write wins); readers see writes not
yet acknowledged. Buckets emptied by promotions and drops stay (at most `buckets`): a shared
collection cannot be deleted safely without compare-and-set. A store of format 1 (a collection
per namespace, no registry) is refused until `migrate` (``kd-memory migrate``) registers it;
format 2 opens as it is (the tag and bucket of each namespace are in its record).
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError

from langchain_kd_memory.embeddings import EmbedderIdentity
from langchain_kd_memory.errors import ConfigError, EmbedderMismatchError, StoreError
from langchain_kd_memory.records import NAMESPACE_KEY, TAG_KEY, TAG_LENGTH, Gone, Scope, chroma_call

logger = logging.getLogger(__name__)

STORE_FORMAT = 3
"""Format this version writes (1: a collection per namespace; 2: open buckets and moves)."""
MOVE_AT = 256
"""A namespace is promoted to its own collection once it holds this many records."""
BUCKETS = 64
"""New namespaces are spread over this many buckets."""
LEASE_S = 60.0
"""A promotion's lease not renewed for this long may be taken over."""
PLACE_TTL = 5.0
"""Readers re-read a namespace's registry record once their cached one is this old."""
WAIT_S = 0.05
"""How often a writer waiting for a promotion reads the registry."""

NAMESPACE_META, EMBEDDER_META, DIMENSION_META = "kd_namespace", "kd_embedder", "kd_dimension"
FORMAT_META, REWARD_LOW_META, REWARD_HIGH_META = "kd_format", "kd_reward_low", "kd_reward_high"
PLACE_META, BUCKET_META, GENERATION_META, TIME_META = "kd_place", "kd_bucket", "kd_n", "kd_ts"
BUCKET, MOVING, OWN, DELETED = "bucket", "moving", "own", "deleted"

_NS = "n:"
_OWN_CONFIG = {"hnsw": {"space": "cosine"}}
# sync_threshold 100: the first query of a bucket in a new process takes ~20 ms, not ~160 ms
_BUCKET_CONFIG = {"hnsw": {"space": "cosine", "sync_threshold": 100, "batch_size": 100}}
_KEPT_CHARACTERS = frozenset(string.ascii_letters + string.digits)
_PAGE = 5000

Range = tuple[float, float] | None
Rows = list[tuple["Place", Any]]
_T = TypeVar("_T")


def encode_namespace(namespace: str) -> str:
    """Encode a namespace into Chroma's name alphabet, reversibly and without collisions.

    ASCII letters and digits are kept; every other character becomes ``_hh`` for each byte of
    its UTF-8 encoding (``"user/42"`` -> ``"user_2f42"``, ``"a_b"`` -> ``"a_5fb"``).
    """
    return "".join(ch if ch in _KEPT_CHARACTERS else
                   "".join(f"_{b:02x}" for b in ch.encode("utf-8")) for ch in namespace)


def _refuse_foreign(name: str, stored: Mapping[str, Any], namespace: str | None) -> None:
    """Raise unless an EpisodeStore made collection `name` for `namespace` (None: a bucket)."""
    if stored.get(NAMESPACE_META) != namespace or EMBEDDER_META not in stored:
        raise StoreError(f"Chroma collection {name!r} was not created by an EpisodeStore for "
                         "this namespace; use another collection_name")


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).hexdigest()


def _show(reward_range: Range) -> str:
    return "none" if reward_range is None else f"[{reward_range[0]}, {reward_range[1]}]"


@dataclass(frozen=True)
class Place:
    """Where one namespace lives, as its registry record said at `read_at` (monotonic)."""

    namespace: str
    collection: Collection
    tag: str
    bucket: int | None  # None: its own collection
    reward_range: Range
    moving: bool = False  # its record says moving: writers wait (W4) until it is own
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
        """Whether `record`, read after a write here, acknowledges it (W4)."""
        return record is not None and record.get(TAG_KEY) == self.tag and record.get(
            PLACE_META) == (OWN if self.bucket is None else BUCKET)


class Layout:
    """The registry, buckets and own collections of one store; caches places in-process.

    Writes (`write`, `undo`, `drop`, `migrate`) must be made under `lock`.
    """

    def __init__(self, client: ClientAPI, prefix: str, identity: EmbedderIdentity,
                 reward_range: Range, move_at: int = MOVE_AT, buckets: int = BUCKETS) -> None:
        self.client, self.prefix, self.identity = client, prefix, identity
        self.reward_range, self.move_at, self.buckets = reward_range, move_at, buckets
        self.lock = threading.RLock()
        self.moves = 0  # promotions this process published
        self._places: dict[str, Place] = {}
        self._sizes: dict[str, int] = {}  # bucket namespaces: records last counted + written since
        self._collections: dict[str, Collection] = {}
        self._registry: Collection | None = None
        self._format_checked = False
        self._max_batch = 0

    # ----------------------------------------------------------------- names and collections

    def own_name(self, namespace: str, record: Mapping[str, Any] | None = None) -> str:
        """The name of N's own collection in the generation of its `record` (None: the first)."""
        generation = 1 if record is None else int(record.get(GENERATION_META, 1))
        suffix = "" if generation <= 1 else f".{generation}"
        name = f"{self.prefix}.ns.{encode_namespace(namespace)}{suffix}"
        return name if len(name) <= 512 else f"{self.prefix}.nh.{_digest(namespace)}{suffix}"

    def _lease_name(self, tag: str, epoch: int) -> str:
        return f"{self.prefix}.lease.{tag}.{epoch}"

    def max_batch(self) -> int:
        """Chroma's maximum number of records per request."""
        if not self._max_batch:
            with chroma_call("read the maximum batch size"):
                self._max_batch = int(self.client.get_max_batch_size())
        return self._max_batch

    def _check_embedder(self, what: str, meta: Mapping[str, Any]) -> None:
        stored = EmbedderIdentity(str(meta.get(EMBEDDER_META)), int(meta.get(DIMENSION_META, 0)))
        if stored != self.identity:
            raise EmbedderMismatchError(
                f"{what} of store {self.prefix!r} holds vectors from {stored}, but this store "
                f"embeds with {self.identity}; open it with the same embedder or use another "
                "collection_name")

    def _checked(self, namespace: str, meta: Mapping[str, Any]) -> Range:
        """The recorded reward range, after checking the embedder and the declared range."""
        self._check_embedder(f"namespace {namespace!r}", meta)
        low, high = meta.get(REWARD_LOW_META), meta.get(REWARD_HIGH_META)
        recorded = None if low is None or high is None else (float(low), float(high))
        if self.reward_range is not None and recorded != self.reward_range:
            raise ConfigError(
                f"namespace {namespace!r} of store {self.prefix!r} was created with reward_range "
                f"{_show(recorded)}, but this store declares {_show(self.reward_range)}; open it "
                "with the same reward_range (or none)")
        return recorded

    def _meta(self, reward_range: Range, **extra: Any) -> dict[str, Any]:
        meta = {EMBEDDER_META: self.identity.name, DIMENSION_META: self.identity.dimension,
                FORMAT_META: STORE_FORMAT, **extra}
        if reward_range is not None:
            meta[REWARD_LOW_META], meta[REWARD_HIGH_META] = reward_range
        return meta

    def registry(self, create: bool = False) -> Collection | None:
        """The registry collection (None if it does not exist and `create` is False).

        Raises:
            StoreError: If the store has format-1 collections and no registry (`migrate`).
        """
        name = f"{self.prefix}.registry"
        with chroma_call(f"open the namespace registry {name!r}"):
            if self._registry is None:
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
                    if create:
                        self._registry = self.client.get_or_create_collection(
                            name, configuration=_OWN_CONFIG,  # type: ignore[arg-type]
                            metadata={FORMAT_META: STORE_FORMAT}, embedding_function=None)
        return self._registry

    def _collection(self, name: str, meta: dict[str, Any]) -> Collection:
        """A bucket or own collection, created if missing (cached until found gone)."""
        collection = self._collections.get(name)
        if collection is None:
            with chroma_call(f"open collection {name!r}"):
                collection = self.client.get_or_create_collection(
                    name, configuration=_OWN_CONFIG if NAMESPACE_META in meta  # type: ignore[arg-type]
                    else _BUCKET_CONFIG, metadata=meta, embedding_function=None)
            stored = collection.metadata or {}
            _refuse_foreign(name, stored, meta.get(NAMESPACE_META))
            self._check_embedder(f"collection {name!r}", stored)
            self._collections[name] = collection
        return collection

    # ----------------------------------------------------------------- registry and places

    def records(self, namespaces: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The registry records of these namespaces, the deleted ones included."""
        registry = self.registry()
        if registry is None or not namespaces:
            return {}
        with chroma_call("read the namespace registry"):
            got = registry.get(ids=[_NS + ns for ns in namespaces], include=["metadatas"])  # type: ignore[list-item]
        return {i[len(_NS) :]: dict(m or {})
                for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)}

    def _live(self, include: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every live namespace with its record (empty unless `include` has "metadatas")."""
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
        """N's place as its live registry `record` says (moving and published: N's own)."""
        reward_range, tag = self._checked(namespace, record), str(record[TAG_KEY])
        moving = record[PLACE_META] == MOVING
        published = self._published(namespace, record) if moving else None
        if record[PLACE_META] == OWN or published is not None:
            name = self.own_name(namespace, record)
            collection = published or self._collection(
                name, self._meta(reward_range, **{NAMESPACE_META: namespace, TAG_KEY: tag}))
            return Place(namespace, collection, tag, None, reward_range, moving)
        return Place(namespace, self._bucket(record), tag, int(record[BUCKET_META]), reward_range,
                     moving)

    def _bucket(self, record: Mapping[str, Any]) -> Collection:
        return self._collection(f"{self.prefix}.b.{record[BUCKET_META]}", self._meta(None))

    def place(self, namespace: str, max_age: float | None = None) -> Place | None:
        """`places` of one namespace."""
        return self.places([namespace], max_age)[namespace]

    def places(self, namespaces: Iterable[str], max_age: float | None = None,
               create: bool = False,
               created: list[Place] | None = None) -> dict[str, Place | None]:
        """Where each namespace lives (None: absent), from one registry read at most.

        A cached place is used unless it is older than `max_age` s. With `create`, the absent
        ones are created in one registry upsert (and added to `created`).
        """
        now, wanted = time.monotonic(), list(dict.fromkeys(namespaces))
        fresh = [ns for ns in wanted if ns not in self._places
                 or max_age is not None and now - self._places[ns].read_at >= max_age]
        records = self.records(fresh)
        absent: dict[str, Mapping[str, Any]] = {}
        for namespace in fresh:
            record = records.get(namespace, {})
            if record.get(PLACE_META) in (None, DELETED):
                self._places.pop(namespace, None)
                absent[namespace] = record
            else:
                self._places[namespace] = self._place_of(namespace, record)
        if create and absent:
            new = self._create(absent)
            if created is not None:
                created += new
        return {ns: self._places.get(ns) for ns in wanted}

    def _set_place(self, namespace: str, place: str) -> None:
        """Write N's `kd_place` (P2, P4, D1): after reading N's record, so the registry exists."""
        registry = self.registry()
        assert registry is not None
        registry.update(ids=[_NS + namespace], metadatas=[{PLACE_META: place}])

    def _create(self, new: Mapping[str, Mapping[str, Any]]) -> list[Place]:
        """Register each namespace of `new` ({namespace: old record}) anew, in a bucket."""
        registry = self.registry(create=True)
        assert registry is not None
        records = {}
        for namespace, old in new.items():
            generation = int(old.get(GENERATION_META, 0)) + 1
            records[namespace] = self._meta(self.reward_range, **{
                GENERATION_META: generation, TAG_KEY: _digest(namespace, generation)[:TAG_LENGTH],
                PLACE_META: BUCKET,
                BUCKET_META: int(_digest(namespace)[:15], 16) % self.buckets})
        # their collections first: one may be refused
        places = {ns: self._place_of(ns, record) for ns, record in records.items()}
        with chroma_call(f"register namespace(s) {', '.join(map(repr, records))}"):
            registry.upsert(ids=[_NS + ns for ns in records], metadatas=list(records.values()),
                            embeddings=np.ones((len(records), 1), dtype=np.float32))
        self._sizes.update(dict.fromkeys(places, 0))
        self._places.update(places)
        return list(places.values())

    # ----------------------------------------------------------------- writes

    def write(self, rows: Mapping[str, Sequence[Any]], op: Callable[[Collection, Rows], object],
              *, create: bool, action: str, created: list[Place] | None = None) -> None:
        """W1-W5: `op(collection, [(place, row), ...])` on the rows of each namespace.

        `op` gets at most `max_batch` rows, of one collection. With `create`, missing namespaces
        are created (and appended to `created`); without, the rows of a namespace deleted
        meanwhile are dropped (they went with it).
        """
        placed = self.places(rows, None, create, created).items()  # W1
        places = {namespace: place for namespace, place in placed if place is not None}
        waiting = [namespace for namespace, place in places.items() if place.moving]
        for namespace, found in places.items():  # W1: N written move_at rows at once moves first
            if (found.bucket is not None and not found.moving
                    and len(rows[namespace]) >= self.move_at):
                self._promote_logged(namespace)
                waiting.append(namespace)
        for attempt in range(4):
            for namespace in waiting:  # W4, or W1 of a namespace found moving
                was, place = places.pop(namespace), self._settle(namespace, create, created)
                if place is not None:
                    places[namespace] = place
                    if (attempt and place.bucket is None and was.bucket is not None
                            and place.tag == was.tag):
                        self._sweep(was)  # W5: it wrote to the bucket
            gone = self._apply(places, rows, op, action)  # W2
            records = self.records([ns for ns in places if ns not in gone])  # W3
            waiting = [ns for ns in places if ns in gone or not places[ns].holds(records.get(ns))]
            for namespace in places.keys() - set(waiting):
                self._places[namespace] = replace(places[namespace], read_at=time.monotonic())
            if not waiting:
                return self._grow(rows)
        raise StoreError(f"Chroma failed to {action}: the namespaces kept moving; try again")

    def _sweep(self, bucketed: Place) -> None:
        """W5: delete what a write left in the bucket of a namespace promoted since (after P5)."""
        try:
            with chroma_call(f"clear the bucket of promoted namespace {bucketed.namespace!r}"):
                bucketed.collection.delete(where={TAG_KEY: bucketed.tag})
        except StoreError as exc:
            logger.warning("records of %r stay in its old bucket: %s", bucketed.namespace, exc)

    def _apply(self, places: Mapping[str, Place], rows: Mapping[str, Sequence[Any]],
               op: Callable[[Collection, Rows], object], action: str) -> set[str]:
        """W2, per collection and chunk; returns the namespaces whose collection was gone."""
        by_collection: dict[str, Rows] = {}
        for namespace, place in places.items():
            by_collection.setdefault(place.collection.name, []).extend(
                (place, row) for row in rows[namespace])
        gone: set[str] = set()
        for pairs in by_collection.values():
            names = ", ".join(dict.fromkeys(repr(place.namespace) for place, _ in pairs))
            try:
                for start in range(0, len(pairs), self.max_batch()):
                    with chroma_call(f"{action} in namespace {names}"):
                        op(pairs[0][0].collection, pairs[start : start + self.max_batch()])
            except Gone:
                self._collections.pop(pairs[0][0].collection.name, None)
                gone.update(place.namespace for place, _ in pairs)
        return gone

    def _settle(self, namespace: str, create: bool,
                created: list[Place] | None) -> Place | None:
        """`places` of N once no promotion of it is in flight (waits; takes an expired one over)."""
        deadline = time.monotonic() + 3 * LEASE_S
        while True:
            place = self.places([namespace], 0, create, created)[namespace]
            if place is None or not place.moving:
                return place
            if not self._promote(namespace) and time.monotonic() > deadline:
                raise StoreError(f"namespace {namespace!r} has been moving for over "
                                 f"{3 * LEASE_S:.0f} s; try again later")
            time.sleep(WAIT_S)

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
        for place in created if not remaining else []:
            with chroma_call(f"remove the empty namespace {place.namespace!r}"):
                if not place.collection.get(where=place.scope.where(), include=[], limit=1)["ids"]:  # type: ignore[arg-type]
                    registry = self.registry()
                    assert registry is not None
                    registry.delete(ids=[_NS + place.namespace])  # a later creator reuses the tag
                    self._places.pop(place.namespace, None)
        return remaining

    # ----------------------------------------------------------------- promotion

    def _grow(self, rows: Mapping[str, Sequence[Any]]) -> None:
        """Promote the bucket namespaces written that hold `move_at` records (failures logged).

        A namespace is counted when this process's estimate (last count + rows written since)
        reaches `move_at` or a multiple of `move_at` // 4, so that other processes' writes count.
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
                        size = place.scope.count()
                except StoreError as exc:
                    logger.warning("namespace %r stays in its bucket: %s", namespace, exc)
                else:
                    if size >= self.move_at:
                        self._promote_logged(namespace)
            self._sizes[namespace] = size

    def _promote_logged(self, namespace: str) -> None:
        """`_promote`, a failure logged: N stays in its bucket, and a later write tries again."""
        try:
            self._promote(namespace)
        except StoreError as exc:
            logger.warning("namespace %r stays in its bucket: %s", namespace, exc)

    def _lease(self, tag: str, meta: dict[str, Any]) -> Collection | None:
        """P1: the lease collection of `tag`; None if another process holds it."""
        epoch, owner = 1, uuid.uuid4().hex
        for _ in range(16):
            name = self._lease_name(tag, epoch)
            with contextlib.suppress(Exception):  # refused if the epoch exists: one holder each
                return self.client.create_collection(
                    name, configuration=_OWN_CONFIG,  # type: ignore[arg-type]
                    metadata={**meta, "kd_owner": owner, TIME_META: time.time()},
                    embedding_function=None)
            try:
                with chroma_call(f"read the lease {name!r}"):
                    held = self.client.get_collection(name, embedding_function=None)
            except Gone:
                continue  # released meanwhile
            if time.time() - float((held.metadata or {}).get(TIME_META, 0.0)) < LEASE_S:
                return None
            epoch += 1  # expired: the next epoch takes it over
        return None

    def _release(self, tag: str) -> None:
        """P5: delete the lease collections of `tag` (epochs 1 up to the first missing)."""
        for epoch in itertools.count(1):
            try:
                self.client.delete_collection(self._lease_name(tag, epoch))
            except Exception as exc:  # NotFound: done; else left for `drop`
                if not isinstance(exc, NotFoundError):
                    logger.warning("could not remove a lease of %s: %s", tag, exc)
                return

    def _published(self, namespace: str, record: Mapping[str, Any],
                   clear: bool = False) -> Collection | None:
        """N's own collection if a promotion of this generation published it (P4), else None.

        With `clear`, N's collection of that name and another tag (format 2's unfinished move)
        is deleted, so that the promotion can publish; one an EpisodeStore did not make for N
        is refused, never deleted.
        """
        name = self.own_name(namespace, record)
        with contextlib.suppress(Gone), chroma_call(f"look for {name!r}"):
            collection = self.client.get_collection(name, embedding_function=None)
            stored = collection.metadata or {}
            if stored.get(TAG_KEY) == record[TAG_KEY]:
                return collection
            if clear:
                _refuse_foreign(name, stored, namespace)
                self.client.delete_collection(name)
        return None

    def _promote(self, namespace: str) -> bool:
        """P1-P5 for a bucket (or moving) namespace; False if another process holds the lease."""
        record = self.records([namespace]).get(namespace)
        if record is None or record[PLACE_META] not in (BUCKET, MOVING):
            return True
        tag, started = str(record[TAG_KEY]), time.perf_counter()
        own = self._published(namespace, record, clear=True)
        if own is None:
            meta = self._meta(self._checked(namespace, record),
                              **{NAMESPACE_META: namespace, TAG_KEY: tag})
            lease = self._lease(tag, meta)
            if lease is None:
                return False
            try:
                with chroma_call(f"promote namespace {namespace!r}"):
                    self._set_place(namespace, MOVING)  # P2
                    copied = self._copy(self._bucket(record), tag, lease)  # P3
                    lease.modify(name=self.own_name(namespace, record), metadata=meta)  # P4
                own = lease
                self.moves += 1
                logger.info("promoted namespace %r (%d records) to %r in %.2f s", namespace,
                            copied, own.name, time.perf_counter() - started)
            except StoreError as exc:
                with contextlib.suppress(Exception):  # a private copy: nobody else reads it
                    self.client.delete_collection(lease.name)
                logger.warning("promoting %r failed (%s); a writer will take it over",
                               namespace, exc)
                own = self._published(namespace, record)
        if own is not None:
            self._finish(namespace, record, own)
        return True

    def _copy(self, bucket: Collection, tag: str, lease: Collection) -> int:
        """P3: copy the records tagged `tag` into the lease collection, renewing it per chunk."""
        got = bucket.get(where={TAG_KEY: tag}, include=["embeddings", "documents", "metadatas"])  # type: ignore[list-item]
        ids = [i[TAG_LENGTH + 1 :] for i in got["ids"]]
        metadatas = [{k: v for k, v in (m or {}).items() if k not in (NAMESPACE_KEY, TAG_KEY)}
                     for m in got["metadatas"] or []]
        for start in range(0, len(ids), self.max_batch()):
            lease.modify(metadata={**(lease.metadata or {}), TIME_META: time.time()})  # renew
            end = start + self.max_batch()
            lease.upsert(ids=ids[start:end], embeddings=got["embeddings"][start:end],  # type: ignore[index]
                         documents=(got["documents"] or [])[start:end],
                         metadatas=metadatas[start:end])  # type: ignore[arg-type]
        return len(ids)

    def _finish(self, namespace: str, record: Mapping[str, Any], own: Collection) -> None:
        """P4 in the registry and P5: by the publisher, or whoever finds them undone."""
        tag = str(record[TAG_KEY])
        try:
            with chroma_call(f"finish the promotion of {namespace!r}"):
                now = self.records([namespace]).get(namespace, {})
                if now.get(TAG_KEY) != tag or now[PLACE_META] == DELETED:  # deleted meanwhile:
                    self.client.delete_collection(own.name)  # forget the copy
                    return
                self._set_place(namespace, OWN)
                self._collections[own.name] = own
                self._places[namespace] = Place(namespace, own, tag, None,
                                                self._checked(namespace, now))
                self._bucket(now).delete(where={TAG_KEY: tag})
            self._release(tag)
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
            self._collections.pop(place.collection.name, None)
            place, result = None, empty  # type: ignore[assignment]
        fresh = self.place(namespace, max_age=0)
        if fresh is None:
            return empty
        return result if fresh == place else read(fresh)

    def scopes(self) -> list[Scope]:
        """Where the records of every live namespace are (records checked)."""
        buckets: dict[int, tuple[Collection, dict[str, str]]] = {}
        owns: list[Scope] = []
        for namespace, record in self._live(["metadatas"]):
            place = self._place_of(namespace, record)
            if place.bucket is None:
                owns.append(place.scope)
            else:
                buckets.setdefault(place.bucket, (place.collection, {}))[1][place.tag] = namespace
        return [Scope(*buckets[n]) for n in sorted(buckets)] + owns

    def namespaces(self) -> list[str]:
        """Every live namespace of the store, sorted."""
        return sorted(namespace for namespace, _ in self._live([]))

    # ----------------------------------------------------------------- drop and migrate

    def drop(self, namespace: str) -> int:
        """D1, D2: delete a namespace and its records; how many records it had."""
        record = self.records([namespace]).get(namespace)
        if record is None:
            return 0
        place = None if record[PLACE_META] == DELETED else self._place_of(namespace, record)
        tag = str(record[TAG_KEY])
        with chroma_call(f"delete namespace {namespace!r}"):
            count = 0 if place is None else place.scope.count()
            self._set_place(namespace, DELETED)  # D1
            self._places.pop(namespace, None)
            self._sizes.pop(namespace, None)
            bucket = f"{self.prefix}.b.{record.get(BUCKET_META, 0)}"
            own = self.own_name(namespace, record)
            with contextlib.suppress(NotFoundError):  # D2
                self.client.get_collection(bucket, embedding_function=None).delete(
                    where={TAG_KEY: tag})
            with contextlib.suppress(NotFoundError):
                self.client.delete_collection(own)
            self._collections.pop(own, None)
        self._release(tag)
        return count

    def format_1_namespaces(self) -> dict[str, Collection]:
        """{namespace: collection} of this store's format-1 collections (not registered)."""
        found: dict[str, Collection] = {}
        for offset in itertools.count(0, 100):
            with chroma_call("list collections"):
                listed = self.client.list_collections(limit=100, offset=offset)
            for collection in listed:
                meta = collection.metadata or {}
                namespace = meta.get(NAMESPACE_META)
                if (isinstance(namespace, str) and self.own_name(namespace) == collection.name
                        and meta.get(FORMAT_META) not in (2, STORE_FORMAT)):
                    found[namespace] = collection
            if len(listed) < 100:
                break
        return found

    def migrate(self) -> list[str]:
        """Register this store's format-1 collections as own namespaces (nothing is copied)."""
        legacy = self.format_1_namespaces()
        self._format_checked = True
        registry = self.registry(create=True)
        assert registry is not None
        for namespace, collection in legacy.items():
            meta = {**(collection.metadata or {}), FORMAT_META: STORE_FORMAT,
                    TAG_KEY: _digest(namespace, 1)[:TAG_LENGTH]}
            record = {k: v for k, v in meta.items() if k != NAMESPACE_META}
            with chroma_call(f"register namespace {namespace!r}"):
                registry.upsert(ids=[_NS + namespace], embeddings=np.ones((1, 1), dtype=np.float32),
                                metadatas=[{**record, GENERATION_META: 1, PLACE_META: OWN,
                                            BUCKET_META: 0}])
                collection.modify(metadata=meta)
        return sorted(legacy)
