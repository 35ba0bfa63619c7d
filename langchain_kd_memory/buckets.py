"""Where `EpisodeStore` keeps each namespace in Chroma: shared buckets, or a collection of its own.

Why: Chroma 1.5 keeps about 2.6 MB of index state per collection that has data, for as long as the
client lives (a server never gives it back), and counting or listing 10,000 collections takes
tens of seconds. One collection per namespace therefore does not scale to many users. Measured
(`benchmarks/bench_scale.py`, 10,000 namespaces x 10 episodes in one process): about 26 GB
extrapolated with a collection each, about 0.4 GB with the layout below.

Collections of a store whose `collection_name` is ``P``:
    * ``P.registry``: one record per namespace, id ``"n:" + namespace``, its metadata saying
      where the namespace lives (``kd_place``: ``"bucket"``, ``"moving"`` or ``"own"``; the bucket
      number ``kd_bucket``; the namespace's tag ``kd_gen``) and what it was created with (the
      embedder's name and dimension, the reward range, ``kd_format`` 2). Vectors are a dummy
      ``[1.0]``. Two more kinds of record live there: ``"s:open"`` (the bucket new namespaces go
      to) and ``"l:" + namespace`` (the lease of a move in progress). While a namespace is
      ``moving``, its record also says where to (``kd_target``: a bucket number, -1 for its own
      collection) and, into a bucket, the records' new tag (``kd_next_gen``).
    * ``P.b.<k>``: bucket collections shared by small namespaces. A record's id is
      ``"<tag>:<episode id>"`` and its metadata carries the namespace (``kd_ns``) and its tag
      (``kd_gen``, 32 hex digits, new each time the namespace is created). Every read and write of
      a namespace in a bucket goes through ``where={"kd_gen": tag}`` (combined with the user's
      filter by ``$and``), so a namespace never sees another's records, and records a deleted
      namespace left behind never reappear in a namespace created later under the same name.
      A new namespace goes to the open bucket if it fits (`BUCKET_CAPACITY` records, and
      fewer than `BUCKET_NAMESPACES` namespaces placed in it by this process), else to the
      next one, which becomes the open bucket. Buckets use ``hnsw.sync_threshold`` 100 (the
      first query of a bucket in a new process: ~20 ms instead of ~160 ms at Chroma's default
      of 1000).
    * ``P.ns.<encoded namespace>`` (or ``P.nh.<sha256>`` when the encoding is too long): a
      namespace's own collection, exactly as in format 1. Records keep their episode ids and
      carry no tag.

A namespace moves to its own collection once it holds `MOVE_AT` (256) records, checked after
each write to a bucket (a namespace whose first write is that large starts in its own
collection). Measured: recall in a 2,000-record bucket costs 1.4-2.8 ms against 0.7-1 ms in an
own collection, up to ~300 records per namespace; at 1,000 it is 5-13x. Namespaces placed in a
bucket while small may all grow: a bucket holding over `CROWDED` (2) x its capacity moves every
namespace of `MOVE_AT` / 8 records or more that writes to it into a bucket with room (new tag,
same protocol as below), so a bucket's size, and the cost of a search in it, stays bounded
however its namespaces grow. Chroma's index keeps the nodes of deleted records (a search in a
2,000-record bucket took 9.0 ms instead of 5.6 ms on a server once 6,000 records had been
deleted there), so a bucket whose moved-out and dropped records outnumber both its records and
half its capacity (counted in its metadata, ``kd_deleted``; checked after a move out of it)
moves all its namespaces to buckets with room and is left empty. Namespaces never move back
from their own collection.

Stores written by format 1 (one collection per namespace, no registry) open and work unchanged:
a namespace with no registry record whose ``P.ns.`` / ``P.nh.`` collection exists (``kd_format``
1) is an own namespace. Nothing is rewritten, and reading writes nothing. `namespaces()` and
whole-store counts list such collections as well as the registry. A store written by this
version cannot be read by older versions (they see only own collections).

Several processes on one Chroma server (the registry is shared, each process caches it):
    * Creating a namespace is an ``add`` of its registry record; Chroma keeps the first record
      of an id and ignores later adds of it, so processes creating the same namespace at once
      all read back and use the first one's placement and tag.
    * A move holds the namespace's lease (an ``add`` of ``"l:" + namespace``, the same
      first-one-wins rule; a lease not refreshed for `LEASE_S` may be taken over by a
      conditional delete). The mover marks the namespace ``moving`` (with its target), copies
      its records there (upsert, then removes records there that the bucket no longer has),
      marks it ``own`` (or ``bucket`` with the new number and tag), then deletes the
      namespace's records from the old bucket.
    * After every write to a bucket (add, upsert, reward update, delete) the writer reads the
      namespace's registry record again. If it is no longer in that bucket with that tag, the
      write is redone where the namespace is now (after waiting while it is ``moving``; a
      waiter takes over a move whose lease expired) and what it wrote in the bucket is deleted.
      A write is acknowledged only after that check. Readers of a ``moving`` namespace read the
      bucket, which keeps every record until the move is complete.
    * A read in a bucket that finds nothing (or misses an id) reads the registry again and
      retries where the namespace is now, so a cached placement never hides a moved namespace.

    Guaranteed: every acknowledged add is stored once and found by every process once no write
    to that namespace is in flight; a reward update or delete acknowledged during a move is
    applied to the moved records. Not guaranteed: while a move or a concurrent write is in
    flight, a reader in another process may miss records that another writer has not
    acknowledged yet, and a reader holding a stale placement may briefly see only a writer's
    not-yet-redone records. Duplicate-id checks are not atomic across processes (a stale
    placement can let a second process add a different episode under an existing id; the copy
    in the namespace's current place wins). A process killed in the middle of a move leaves the
    namespace ``moving``: writes to it wait until a writer takes the lease over (`LEASE_S`,
    60 s), reads keep working. ``count()`` over the whole store counts tagged records of live
    namespaces only, so leftovers of interrupted writes are never counted.

Embedded Chroma evicts HNSW indexes when more collections are open than ``RLIMIT_NOFILE // 5``
(the soft limit when the client starts), and a read of an evicted index then fails ("Nothing
found on disk") or misses records (REPORT limitation 1). `raise_open_file_limit` raises the soft
limit to the hard one; `EpisodeStore` calls it before it creates an embedded client. Pass your
own `PersistentClient` only after calling it. The bucket layout keeps the number of collections
small, so the pool is not reached in normal use; a format-1 store with thousands of namespaces
still can.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import string
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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

STORE_FORMAT = 2
"""Format of the stores this version writes (1: one collection per namespace, no registry)."""
MOVE_AT = 256
"""A namespace moves from its bucket to its own collection once it holds this many records."""
BUCKET_CAPACITY = 2000
"""A bucket stops taking new namespaces once it holds this many records."""
BUCKET_NAMESPACES = 256
"""... or once this process placed this many namespaces in it."""
CROWDED = 2
"""A bucket over CROWDED x capacity moves each namespace of MOVE_AT // 8 records that writes to a
bucket with room."""
LEASE_S = 60.0
"""A move's lease not refreshed for this long may be taken over by another process."""
WAIT_S = 0.05
"""How often a writer waiting for a move reads the registry."""

# Record metadata in buckets.
NAMESPACE_KEY = "kd_ns"
TAG_KEY = "kd_gen"
TAG_LENGTH = 32

# Collection metadata (own collections and buckets) and registry records.
NAMESPACE_META = "kd_namespace"
EMBEDDER_META = "kd_embedder"
DIMENSION_META = "kd_dimension"
FORMAT_META = "kd_format"
REWARD_LOW_META = "kd_reward_low"
REWARD_HIGH_META = "kd_reward_high"
PLACE_META = "kd_place"
BUCKET_META = "kd_bucket"
TARGET_META = "kd_target"
DELETED_META = "kd_deleted"
NEXT_TAG_META = "kd_next_gen"
OWNER_META = "kd_owner"
TIME_META = "kd_ts"

BUCKET, MOVING, OWN = "bucket", "moving", "own"
_NS, _LEASE, _OPEN = "n:", "l:", "s:open"
_OWN_CONFIG = {"hnsw": {"space": "cosine"}}
_BUCKET_CONFIG = {"hnsw": {"space": "cosine", "sync_threshold": 100, "batch_size": 100}}
_KEPT_CHARACTERS = frozenset(string.ascii_letters + string.digits)
_MAX_CHROMA_NAME = 512
_PAGE = 5000

Range = tuple[float, float] | None


def encode_namespace(namespace: str) -> str:
    """Encode a namespace into Chroma's name alphabet, reversibly and without collisions.

    ASCII letters and digits are kept; every other character becomes ``_hh`` for each byte of
    its UTF-8 encoding (``"user/42"`` -> ``"user_2f42"``, ``"a_b"`` -> ``"a_5fb"``).
    """
    return "".join(
        ch if ch in _KEPT_CHARACTERS else "".join(f"_{b:02x}" for b in ch.encode("utf-8"))
        for ch in namespace
    )


@contextmanager
def chroma_call(action: str) -> Iterator[None]:
    """Turn a Chroma (or transport) failure inside the block into a `StoreError`."""
    try:
        yield
    except KDMemoryError:
        raise
    except Exception as exc:
        raise StoreError(f"Chroma failed to {action}: {type(exc).__name__}: {exc}") from exc


def raise_open_file_limit() -> None:
    """Raise this process's soft limit of open files to the hard limit (POSIX; else nothing).

    Embedded Chroma sizes its cache of HNSW indexes from the soft limit when a client starts,
    and reading an index it evicted fails or misses records; call this before creating a
    ``chromadb.PersistentClient`` yourself.
    """
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (hard, 1 << 20, 65536):
        if target == resource.RLIM_INFINITY or (soft != resource.RLIM_INFINITY and target <= soft):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        logger.debug("raised the soft open-file limit from %s to %s", soft, target)
        return


def _dummies(n: int) -> np.ndarray:
    """Registry records' vectors: Chroma needs one, the registry is never searched."""
    return np.ones((n, 1), dtype=np.float32)


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

    def chroma_ids(self, episode_ids: list[str]) -> list[str]:
        """The record ids these episode ids would have in any of these namespaces."""
        if isinstance(self.owners, str):
            return list(episode_ids)
        return [f"{tag}:{i}" for tag in self.owners for i in episode_ids]


@dataclass(frozen=True)
class Place:
    """Where one namespace lives now."""

    namespace: str
    collection: Collection
    tag: str | None  # its records' tag in a bucket; None in an own collection
    state: str
    reward_range: Range
    registered: bool = True  # False: a format-1 collection with no registry record
    bucket: int = -1  # the bucket's number; -1 in an own collection

    @property
    def scope(self) -> Scope:
        """The namespace's records as a `Scope`."""
        owners: Mapping[str, str] | str = (
            self.namespace if self.tag is None else {self.tag: self.namespace}
        )
        return Scope(self.collection, owners)

    def cid(self, episode_id: str) -> str:
        """The record id of an episode of this namespace."""
        return episode_id if self.tag is None else f"{self.tag}:{episode_id}"

    def tags(self) -> dict[str, Any]:
        """The metadata a record of this namespace carries besides the episode's."""
        return {} if self.tag is None else {NAMESPACE_KEY: self.namespace, TAG_KEY: self.tag}

    def same(self, record: Mapping[str, Any] | None) -> bool:
        """Whether `record` (from the registry) still says this namespace is here, not moving."""
        if record is None:
            return not self.registered
        if self.tag is None:
            return record.get(PLACE_META) == OWN
        return (
            record.get(TAG_KEY) == self.tag
            and record.get(PLACE_META) == BUCKET
            and record.get(BUCKET_META) == self.bucket
        )


def strip_tags(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A bucket record's metadata as an own collection stores it."""
    return {k: v for k, v in metadata.items() if k not in (NAMESPACE_KEY, TAG_KEY)}


class Layout:
    """The registry, buckets and own collections of one store; caches placements in-process.

    Writes (creating namespaces, moves, deletes) must be made under `lock`.
    """

    def __init__(
        self,
        client: ClientAPI,
        prefix: str,
        identity: EmbedderIdentity,
        reward_range: Range,
        move_at: int,
        bucket_capacity: int,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.identity = identity
        self.reward_range = reward_range
        self.move_at = move_at
        self.bucket_capacity = bucket_capacity
        self.lock = threading.RLock()
        self._places: dict[str, Place] = {}
        self._registry: Collection | None = None
        self._buckets: dict[int, Collection] = {}
        self._open: int | None = None
        self._placed: dict[int, int] = {}  # namespaces placed per bucket (registry + this process)
        self.moves = 0

    # ----------------------------------------------------------------- names

    def own_name(self, namespace: str) -> str:
        """The name of a namespace's own collection."""
        name = f"{self.prefix}.ns.{encode_namespace(namespace)}"
        if len(name) <= _MAX_CHROMA_NAME:
            return name
        digest = hashlib.sha256(namespace.encode("utf-8")).hexdigest()
        return f"{self.prefix}.nh.{digest}"

    def _is_own_name(self, name: str) -> bool:
        return name.startswith((f"{self.prefix}.ns.", f"{self.prefix}.nh."))

    # ----------------------------------------------------------------- checks

    def _mismatch(self, namespace: str, stored: EmbedderIdentity) -> EmbedderMismatchError:
        return EmbedderMismatchError(
            f"namespace {namespace!r} of store {self.prefix!r} holds vectors from {stored}, but "
            f"this store embeds with {self.identity}; open it with the same embedder or use "
            "another collection_name"
        )

    def _checked(self, namespace: str, meta: Mapping[str, Any]) -> Range:
        """The recorded reward range, after checking the embedder and the declared range."""
        stored = EmbedderIdentity(str(meta[EMBEDDER_META]), int(meta[DIMENSION_META]))
        if stored != self.identity:
            raise self._mismatch(namespace, stored)
        low, high = meta.get(REWARD_LOW_META), meta.get(REWARD_HIGH_META)
        recorded = None if low is None or high is None else (float(low), float(high))
        if self.reward_range is not None and recorded != self.reward_range:
            raise ConfigError(
                f"namespace {namespace!r} of store {self.prefix!r} was created with "
                f"reward_range {show_range(recorded)}, but this store declares "
                f"{show_range(self.reward_range)}; open it with the same reward_range (or none)"
            )
        return recorded

    def _check_own(self, collection: Collection, namespace: str) -> Range:
        meta = collection.metadata or {}
        if meta.get(NAMESPACE_META) != namespace or EMBEDDER_META not in meta:
            raise StoreError(
                f"Chroma collection {collection.name!r} was not created by an EpisodeStore for "
                f"namespace {namespace!r}; use another collection_name"
            )
        return self._checked(namespace, meta)

    def _identity_meta(self, namespace: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            EMBEDDER_META: self.identity.name,
            DIMENSION_META: self.identity.dimension,
            FORMAT_META: STORE_FORMAT,
        }
        if namespace is not None:
            meta[NAMESPACE_META] = namespace
        if self.reward_range is not None:
            meta[REWARD_LOW_META], meta[REWARD_HIGH_META] = self.reward_range
        return meta

    # ----------------------------------------------------------------- collections

    def registry(self, create: bool = False) -> Collection | None:
        """The registry collection (None if it does not exist and `create` is False)."""
        if self._registry is None:
            name = f"{self.prefix}.registry"
            with chroma_call(f"open the namespace registry {name!r}"):
                if create:
                    self._registry = self.client.get_or_create_collection(
                        name,
                        configuration=_OWN_CONFIG,  # type: ignore[arg-type]
                        metadata={FORMAT_META: STORE_FORMAT},
                        embedding_function=None,
                    )
                else:
                    try:
                        self._registry = self.client.get_collection(name, embedding_function=None)
                    except NotFoundError:
                        return None
        return self._registry

    def _bucket_name(self, number: int) -> str:
        return f"{self.prefix}.b.{number}"

    def _bucket_now(self, number: int) -> Collection:
        """Bucket `number` read anew: its metadata as stored now, not as this process cached it."""
        return self.client.get_collection(self._bucket_name(number), embedding_function=None)

    def _bucket(self, number: int, create: bool) -> Collection | None:
        bucket = self._buckets.get(number)
        if bucket is None:
            name = self._bucket_name(number)
            with chroma_call(f"open bucket {name!r}"):
                if create:
                    bucket = self.client.get_or_create_collection(
                        name,
                        configuration=_BUCKET_CONFIG,  # type: ignore[arg-type]
                        metadata={**self._identity_meta(), BUCKET_META: number},
                        embedding_function=None,
                    )
                else:
                    try:
                        bucket = self.client.get_collection(name, embedding_function=None)
                    except NotFoundError:
                        return None
            self._buckets[number] = bucket
        return bucket

    def _own(self, namespace: str, create: bool, reward_range: Range) -> Collection | None:
        name = self.own_name(namespace)
        with chroma_call(f"open collection {name!r}"):
            if create:
                meta = {**self._identity_meta(namespace)}
                if reward_range is not None:
                    meta[REWARD_LOW_META], meta[REWARD_HIGH_META] = reward_range
                collection = self.client.get_or_create_collection(
                    name, configuration=_OWN_CONFIG,  # type: ignore[arg-type]
                    metadata=meta, embedding_function=None,
                )
            else:
                try:
                    collection = self.client.get_collection(name, embedding_function=None)
                except NotFoundError:
                    return None
        self._check_own(collection, namespace)
        return collection

    # ----------------------------------------------------------------- registry records

    def records(self, namespaces: list[str]) -> dict[str, dict[str, Any]]:
        """The registry records of these namespaces (those that have one), read now."""
        registry = self.registry()
        if registry is None or not namespaces:
            return {}
        with chroma_call("read the namespace registry"):
            got = registry.get(ids=[_NS + ns for ns in namespaces], include=["metadatas"])  # type: ignore[list-item]
        return {
            i[len(_NS) :]: dict(m or {})
            for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)
        }

    def all_records(self) -> dict[str, dict[str, Any]]:
        """Every namespace's registry record."""
        registry = self.registry()
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while registry is not None:
            with chroma_call("read the namespace registry"):
                page = registry.get(include=["metadatas"], limit=_PAGE, offset=offset)  # type: ignore[list-item]
            for i, m in zip(page["ids"], page["metadatas"] or [], strict=True):
                if i.startswith(_NS):
                    found[i[len(_NS) :]] = dict(m or {})
            if len(page["ids"]) < _PAGE:
                break
            offset += _PAGE
        return found

    def _place_of(self, namespace: str, record: Mapping[str, Any], create: bool) -> Place | None:
        reward_range = self._checked(namespace, record)
        if record.get(PLACE_META) == OWN:
            own = self._own(namespace, create, reward_range)
            if own is None:  # deleted half-way, or by hand: an empty namespace
                return None
            return Place(namespace, own, None, OWN, reward_range)
        number = int(record[BUCKET_META])
        bucket = self._bucket(number, create)
        if bucket is None:
            return None
        return Place(namespace, bucket, str(record[TAG_KEY]), str(record[PLACE_META]),
                     reward_range, bucket=number)

    def _legacy(self, namespace: str) -> Place | None:
        """A format-1 own collection of a namespace with no registry record, if there is one."""
        collection = self._own(namespace, False, None)
        if collection is None or (collection.metadata or {}).get(FORMAT_META) == STORE_FORMAT:
            return None  # none, or an unfinished move's copy: not a namespace of its own
        reward_range = self._check_own(collection, namespace)
        return Place(namespace, collection, None, OWN, reward_range, registered=False)

    def legacy_namespaces(self) -> dict[str, str]:
        """{namespace: collection name} of the format-1 own collections in the database."""
        found: dict[str, str] = {}
        page, offset = 100, 0
        while True:
            with chroma_call("list collections"):
                listed = self.client.list_collections(limit=page, offset=offset)
            for collection in listed:
                meta = collection.metadata or {}
                namespace = meta.get(NAMESPACE_META)
                if (
                    self._is_own_name(collection.name)
                    and isinstance(namespace, str)
                    and meta.get(FORMAT_META) != STORE_FORMAT
                    and self.own_name(namespace) == collection.name
                ):
                    found[namespace] = collection.name
            if len(listed) < page:
                return found
            offset += page

    # ----------------------------------------------------------------- placement

    def place(self, namespace: str) -> Place | None:
        """Where the namespace lives (cached in the process), or None if it does not exist."""
        cached = self._places.get(namespace)
        return cached if cached is not None else self.refresh(namespace)

    def refresh(self, namespace: str, create: bool = False) -> Place | None:
        """Read where the namespace lives now, and cache it."""
        record = self.records([namespace]).get(namespace)
        place = (
            self._place_of(namespace, record, create) if record is not None
            else self._legacy(namespace)
        )
        if place is None:
            self._places.pop(namespace, None)
        else:
            self._places[namespace] = place
        return place

    def reward_range_of(self, namespace: str) -> Range:
        """The namespace's recorded reward range, or the store's if it does not exist."""
        place = self.place(namespace)
        return self.reward_range if place is None else place.reward_range

    def places_for_write(self, rows: Mapping[str, int]) -> tuple[dict[str, Place], list[Place]]:
        """Places of these namespaces (value: rows about to be written), creating missing ones.

        A namespace that is ``moving`` is waited for. Returns the places and those this call
        created (which an undo removes again if they stay empty).
        """
        places: dict[str, Place] = {}
        missing = []
        for namespace in rows:
            cached = self._places.get(namespace)
            if cached is not None and cached.state != MOVING:
                places[namespace] = cached
            else:
                missing.append(namespace)
        records = self.records(missing)
        new = []
        for namespace in missing:
            record = records.get(namespace)
            if record is not None and record.get(PLACE_META) == MOVING:
                place = self.settle(namespace, create=True)
            elif record is not None:
                place = self._place_of(namespace, record, create=True)
            else:
                place = self._legacy(namespace)
            if place is None:
                new.append(namespace)
            else:
                places[namespace] = self._places[namespace] = place
        created: list[Place] = []
        if new:
            # another process may create some of them first: use its places, undo none of them
            made, created = self._create({ns: rows[ns] for ns in new})
            places.update(made)
        return places, created

    def _open_bucket(self, registry: Collection) -> int:
        if self._open is None:
            with chroma_call("read the open bucket"):
                got = registry.get(ids=[_OPEN], include=["metadatas"])  # type: ignore[list-item]
            meta: dict[str, Any] = dict((got["metadatas"] or [{}])[0] or {}) if got["ids"] else {}
            self._open = int(meta.get(BUCKET_META, 0))
        return self._open

    def _placed_in(self, registry: Collection, number: int) -> int:
        if number not in self._placed:
            where = {"$and": [{BUCKET_META: number}, {PLACE_META: {"$ne": OWN}}]}
            with chroma_call("count the namespaces of a bucket"):
                ids = registry.get(where=where, include=[])["ids"]  # type: ignore[arg-type]
            self._placed[number] = sum(i.startswith(_NS) for i in ids)
        return self._placed[number]

    def _room(
        self, registry: Collection, count: int, sizes: dict[int, int], avoid: int = -1
    ) -> int | None:
        """The open bucket, or the first after it, that can take a namespace of `count` records.

        None if that bucket holds another embedder's vectors (not shared). `sizes` caches bucket
        counts for one caller.
        """
        start = number = self._open_bucket(registry)
        while True:
            bucket = self._bucket(number, create=True)
            assert bucket is not None
            meta = bucket.metadata or {}
            if (meta.get(EMBEDDER_META), meta.get(DIMENSION_META)) != (
                self.identity.name, self.identity.dimension
            ):
                return None
            if number not in sizes:
                with chroma_call(f"count bucket {bucket.name!r}"):
                    sizes[number] = bucket.count()
            fits = sizes[number] == 0 or sizes[number] + count <= self.bucket_capacity
            if number != avoid and fits and self._placed_in(registry, number) < BUCKET_NAMESPACES:
                sizes[number] += count
                self._placed[number] += 1
                break
            number += 1
        if number != start:
            self._open = number
            with chroma_call("record the open bucket"):
                registry.upsert(ids=[_OPEN], embeddings=_dummies(1),
                                metadatas=[{BUCKET_META: number}])
        return number

    def _assign(self, registry: Collection, rows: Mapping[str, int]) -> dict[str, int | None]:
        """A bucket number for each new namespace, or None for a collection of its own."""
        sizes: dict[int, int] = {}
        return {
            namespace: None if count >= self.move_at else self._room(registry, count, sizes)
            for namespace, count in rows.items()
        }

    def _create(self, rows: Mapping[str, int]) -> tuple[dict[str, Place], list[Place]]:
        """Register new namespaces.

        Returns the place of every one of them (another process may have registered some
        first: its placement wins) and those this process created.
        """
        registry = self.registry(create=True)
        assert registry is not None
        assigned = self._assign(registry, rows)
        tags = {ns: uuid.uuid4().hex for ns in rows}
        metadatas = []
        for namespace in rows:
            number = assigned[namespace]
            meta = {**self._identity_meta(), TAG_KEY: tags[namespace],
                    PLACE_META: OWN if number is None else BUCKET, BUCKET_META: number or 0}
            metadatas.append(meta)
        with chroma_call("register new namespaces"):
            # add keeps an existing record: another process that created one first wins
            registry.add(ids=[_NS + ns for ns in rows], embeddings=_dummies(len(rows)),
                         metadatas=metadatas)  # type: ignore[arg-type]
        records = self.records(list(rows))
        places: dict[str, Place] = {}
        created = []
        for namespace in rows:
            record = records.get(namespace)
            place = None if record is None else self._place_of(namespace, record, create=True)
            if place is None or record is None:
                raise StoreError(
                    f"namespace {namespace!r} was deleted by another process while this one "
                    "created it; try again"
                )
            self._places[namespace] = places[namespace] = place
            if record.get(TAG_KEY) == tags[namespace]:
                created.append(place)
        return places, created

    def forget(self, place: Place) -> None:
        """Remove a namespace this process created if it is still empty (undo of a failed add)."""
        self._places.pop(place.namespace, None)
        registry = self.registry()
        with chroma_call(f"remove the empty namespace {place.namespace!r}"):
            if place.tag is None:
                if place.collection.count() == 0:
                    self.client.delete_collection(place.collection.name)
                    if registry is not None:
                        registry.delete(ids=[_NS + place.namespace])
            elif not place.collection.get(where=place.scope.where(), include=[], limit=1)["ids"]:  # type: ignore[arg-type]
                if registry is not None:
                    registry.delete(ids=[_NS + place.namespace], where={TAG_KEY: place.tag})

    # ----------------------------------------------------------------- other processes

    def settle(self, namespace: str, create: bool) -> Place | None:
        """Where a namespace is once no move of it is in progress (waits; may take a move over).

        Returns None if the namespace does not exist and `create` is False.
        """
        deadline = time.monotonic() + 3 * LEASE_S
        while True:
            record = self.records([namespace]).get(namespace)
            if record is not None and record.get(PLACE_META) == MOVING:
                token = self._lease(namespace)
                if token is not None:  # the mover died: finish its move
                    try:
                        self._move_leased(namespace, token)
                    finally:
                        self._release(namespace, token)
                    continue
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"namespace {namespace!r} has been moving for over {3 * LEASE_S:.0f} s"
                    )
                time.sleep(WAIT_S)
                continue
            if record is None:
                self._places.pop(namespace, None)
                place = self._legacy(namespace)
                if place is None and create:
                    place = self._create({namespace: 1})[0][namespace]
                return place
            place = self._place_of(namespace, record, create=True)
            if place is not None:
                self._places[namespace] = place
            return place

    def changed(self, written: Mapping[str, Place]) -> list[str]:
        """The namespaces written in a bucket whose registry record no longer says so."""
        bucketed = [ns for ns, place in written.items() if place.tag is not None]
        records = self.records(bucketed)
        moved = [ns for ns in bucketed if not written[ns].same(records.get(ns))]
        for namespace in moved:
            self._places.pop(namespace, None)
        return moved

    # ----------------------------------------------------------------- moves

    def _lease(self, namespace: str) -> str | None:
        """Take the namespace's move lease; its token, or None if another process holds it."""
        registry = self.registry(create=True)
        assert registry is not None
        token = uuid.uuid4().hex
        lease = _LEASE + namespace
        with chroma_call(f"take the move lease of namespace {namespace!r}"):
            for _ in range(2):
                registry.add(ids=[lease], embeddings=_dummies(1),
                             metadatas=[{OWNER_META: token, TIME_META: time.time()}])
                got = registry.get(ids=[lease], include=["metadatas"])  # type: ignore[list-item]
                if not got["ids"]:
                    continue  # released in between: try again
                meta: dict[str, Any] = dict((got["metadatas"] or [{}])[0] or {})
                if meta.get(OWNER_META) == token:
                    return token
                if time.time() - float(meta.get(TIME_META, 0.0)) < LEASE_S:
                    return None
                # expired: remove it only if it is still that holder's, then try once more
                registry.delete(ids=[lease], where={OWNER_META: meta[OWNER_META]})
        return None

    def _renew(self, namespace: str) -> None:
        registry = self.registry()
        assert registry is not None
        with chroma_call(f"renew the move lease of namespace {namespace!r}"):
            registry.update(ids=[_LEASE + namespace], metadatas=[{TIME_META: time.time()}])

    def _release(self, namespace: str, token: str) -> None:
        registry = self.registry()
        try:
            if registry is not None:
                registry.delete(ids=[_LEASE + namespace], where={OWNER_META: token})
        except Exception as exc:  # it expires on its own
            logger.warning("could not release the move lease of %r: %s", namespace, exc)

    def move(self, namespace: str, to: int | None = None) -> bool:
        """Move a bucket namespace to bucket `to`, or to its own collection if None.

        False if another process holds the namespace's move lease.
        """
        token = self._lease(namespace)
        if token is None:
            return False
        try:
            self._move_leased(namespace, token, to)
        finally:
            self._release(namespace, token)
        return True

    def _move_leased(self, namespace: str, token: str, to: int | None = None) -> None:
        """The move, under the lease; a namespace already ``moving`` goes where it was going.

        Into another bucket, the records get a new tag (recorded before the copy), so what a
        writer with a stale place removes after redoing its write is never the moved copy.
        """
        registry = self.registry()
        assert registry is not None
        record = self.records([namespace]).get(namespace)
        if record is None or record.get(PLACE_META) == OWN:
            return
        tag, reward_range = str(record[TAG_KEY]), self._checked(namespace, record)
        number, new_tag = int(record[BUCKET_META]), uuid.uuid4().hex
        if record.get(PLACE_META) == MOVING:  # a move that its process did not finish
            target = int(record.get(TARGET_META, -1))
            to, new_tag = (None if target < 0 else target), str(record.get(NEXT_TAG_META, new_tag))
        if to == number:
            return
        started = time.perf_counter()
        bucket = self._bucket(number, create=True)
        assert bucket is not None
        key = [_NS + namespace]
        with chroma_call(f"mark namespace {namespace!r} as moving"):
            registry.update(ids=key, metadatas=[{
                PLACE_META: MOVING, TARGET_META: -1 if to is None else to, NEXT_TAG_META: new_tag,
            }])
        try:
            target_collection = (
                self._own(namespace, True, reward_range) if to is None
                else self._bucket(to, create=True)
            )
            assert target_collection is not None
            with chroma_call(f"move namespace {namespace!r} to {target_collection.name!r}"):
                rows = bucket.get(
                    where={TAG_KEY: tag},
                    include=["embeddings", "documents", "metadatas"],  # type: ignore[list-item]
                )
                ids = [i[TAG_LENGTH + 1 :] for i in rows["ids"]]
                metadatas = [strip_tags(m or {}) for m in rows["metadatas"] or []]
                there: dict[str, Any] | None = None  # the target's records of this namespace
                if to is not None:
                    there = {TAG_KEY: new_tag}
                    ids = [f"{new_tag}:{i}" for i in ids]
                    metadatas = [{**m, **there, NAMESPACE_KEY: namespace} for m in metadatas]
                present = set(target_collection.get(where=there, include=[])["ids"])  # type: ignore[arg-type]
                step = int(self.client.get_max_batch_size())
                for start in range(0, len(ids), step):
                    end = start + step
                    target_collection.upsert(
                        ids=ids[start:end], embeddings=rows["embeddings"][start:end],  # type: ignore[index]
                        documents=(rows["documents"] or [])[start:end],
                        metadatas=metadatas[start:end],  # type: ignore[arg-type]
                    )
                    self._renew(namespace)
                stale = present - set(ids)
                if stale:  # an earlier, interrupted move copied records deleted since
                    target_collection.delete(ids=sorted(stale))
                if self.records([namespace]).get(namespace, {}).get(TAG_KEY) != tag:
                    raise StoreError(f"namespace {namespace!r} was deleted during its move")
                done: dict[str, Any] = (
                    {PLACE_META: OWN} if to is None
                    else {PLACE_META: BUCKET, BUCKET_META: to, TAG_KEY: new_tag}
                )
                registry.update(ids=key, metadatas=[done])
        except Exception:
            try:
                registry.update(ids=key, metadatas=[{PLACE_META: BUCKET}])
            except Exception as exc:  # a writer takes the move over once the lease expires
                logger.warning("could not undo the move of %r: %s", namespace, exc)
            raise
        self._places[namespace] = (
            Place(namespace, target_collection, None, OWN, reward_range) if to is None
            else Place(namespace, target_collection, new_tag, BUCKET, reward_range, bucket=to)
        )
        self.moves += 1
        try:
            bucket.delete(where={TAG_KEY: tag})
            self._count_deleted(number, len(ids))
        except Exception as exc:  # tagged leftovers: never read, never counted
            logger.warning("moved %r but could not clear its bucket records: %s", namespace, exc)
        logger.info("moved namespace %r (%d records) to %r in %.2f s", namespace, len(ids),
                    target_collection.name, time.perf_counter() - started)

    def maybe_move(self, written: list[Place]) -> None:
        """Move the written bucket namespaces that grew (failures are logged).

        One of `move_at` records or more goes to its own collection; one of `move_at` // 8 or
        more in a bucket holding over `CROWDED` x `bucket_capacity` records goes to a bucket
        with room.
        """
        by_bucket: dict[int, list[Place]] = {}
        for place in written:
            if place.tag is not None and place.state == BUCKET:
                by_bucket.setdefault(place.bucket, []).append(place)
        for number, places in by_bucket.items():
            bucket = places[0].collection
            scope = Scope(bucket, {p.tag: p.namespace for p in places if p.tag})
            try:
                with chroma_call(f"count the namespaces written in {bucket.name!r}"):
                    ids = bucket.get(where=scope.where(), include=[])["ids"]  # type: ignore[arg-type]
                    sizes = collections.Counter(i[:TAG_LENGTH] for i in ids)
                    total: int | None = None
                    moved_out = False
                    for place in places:
                        size = sizes[str(place.tag)]
                        if size >= self.move_at:
                            moved_out |= self.move(place.namespace)
                            continue
                        if size < self.move_at // 8:
                            continue
                        if total is None:
                            total = bucket.count()
                        if total > CROWDED * self.bucket_capacity:
                            registry = self.registry()
                            assert registry is not None
                            # room for it to double: it is growing
                            to = self._room(registry, 2 * size, {}, avoid=number)
                            if to is not None and self.move(place.namespace, to):
                                total -= size
                                moved_out = True
                if moved_out:
                    self._maybe_rebuild(number)
            except StoreError as exc:
                logger.warning("a namespace move failed; it stays in its bucket: %s", exc)

    def _count_deleted(self, number: int, deleted: int) -> None:
        """Add to a bucket's count of deleted records (approximate if processes race)."""
        if number < 0 or deleted <= 0:
            return
        bucket = self._bucket_now(number)
        meta = dict(bucket.metadata or {})
        meta[DELETED_META] = int(meta.get(DELETED_META, 0)) + deleted
        bucket.modify(metadata=meta)

    def _maybe_rebuild(self, number: int) -> None:
        """Move every namespace of a bucket with too many deleted records to buckets with room.

        The emptied bucket is left in place (a process that cached a place in it finds nothing
        there and looks the namespace up again) and never takes namespaces again: new ones go to
        the open bucket or later ones, and it is before them.
        """
        with chroma_call(f"read bucket {number}"):
            bucket = self._bucket_now(number)
            deleted = int((bucket.metadata or {}).get(DELETED_META, 0))
            live = bucket.count()
        if live == 0 or deleted <= max(live, self.bucket_capacity // 2):
            return
        registry = self.registry()
        assert registry is not None
        where = {"$and": [{BUCKET_META: number}, {PLACE_META: BUCKET}]}
        with chroma_call(f"list the namespaces of bucket {number}"):
            got = registry.get(where=where, include=["metadatas"])  # type: ignore[arg-type,list-item]
            ids = bucket.get(include=[])["ids"]
        sizes = collections.Counter(i[:TAG_LENGTH] for i in ids)
        room: dict[int, int] = {}
        logger.info("rebuilding bucket %d (%d records, %d deleted)", number, live, deleted)
        for key, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
            if not key.startswith(_NS) or meta is None:
                continue
            to = self._room(registry, sizes[str(meta.get(TAG_KEY))], room, avoid=number)
            if to is not None:
                self.move(key[len(_NS) :], to)

    # ----------------------------------------------------------------- deletion and listing

    def drop(self, namespace: str) -> int:
        """Delete a namespace and its records; how many records it had."""
        place = self.settle(namespace, create=False)
        self._places.pop(namespace, None)
        if place is None:
            return 0
        registry = self.registry()
        key = [_NS + namespace]
        with chroma_call(f"delete namespace {namespace!r}"):
            if place.tag is None:
                count = place.collection.count()
                self.client.delete_collection(place.collection.name)
                if registry is not None and place.registered:
                    registry.delete(ids=key)
                return count
            count = len(place.collection.get(where=place.scope.where(), include=[])["ids"])  # type: ignore[arg-type]
            assert registry is not None
            registry.delete(ids=key, where={TAG_KEY: place.tag})
            place.collection.delete(where=place.scope.where())  # type: ignore[arg-type]
            self._count_deleted(place.bucket, count)
            copy = self._own_copy(namespace)
            if copy is not None:  # what an interrupted move copied
                self.client.delete_collection(copy.name)
        return count

    def _own_copy(self, namespace: str) -> Collection | None:
        try:
            collection = self.client.get_collection(self.own_name(namespace),
                                                    embedding_function=None)
        except NotFoundError:
            return None
        meta = collection.metadata or {}
        mine = meta.get(FORMAT_META) == STORE_FORMAT and meta.get(NAMESPACE_META) == namespace
        return collection if mine else None

    def catalog(self) -> tuple[list[str], list[Scope]]:
        """Every namespace of the store, and the scopes holding their records (checked)."""
        buckets: dict[int, dict[str, str]] = {}
        owns: list[tuple[str, Range]] = []
        records = self.all_records()
        for namespace, record in records.items():
            reward_range = self._checked(namespace, record)
            if record.get(PLACE_META) == OWN:
                owns.append((namespace, reward_range))
            else:
                number = int(record[BUCKET_META])
                buckets.setdefault(number, {})[str(record[TAG_KEY])] = namespace
        scopes: list[Scope] = []
        for number, owners in sorted(buckets.items()):
            bucket = self._bucket(number, create=False)
            if bucket is not None:
                scopes.append(Scope(bucket, owners))
        for namespace, reward_range in owns:
            own = self._own(namespace, False, reward_range)
            if own is not None:
                scopes.append(Scope(own, namespace))
        legacy = [ns for ns in self.legacy_namespaces() if ns not in records]
        for namespace in legacy:
            place = self._legacy(namespace)
            if place is not None:
                scopes.append(place.scope)
        return sorted([*records, *legacy]), scopes

    def namespaces(self) -> list[str]:
        """Every namespace of the store, sorted (registry and format-1 collections)."""
        registry = self.registry()
        found: set[str] = set()
        offset = 0
        while registry is not None:
            with chroma_call("list the namespace registry"):
                ids = registry.get(include=[], limit=_PAGE, offset=offset)["ids"]
            found.update(i[len(_NS) :] for i in ids if i.startswith(_NS))
            if len(ids) < _PAGE:
                break
            offset += _PAGE
        found.update(self.legacy_namespaces())
        return sorted(found)
