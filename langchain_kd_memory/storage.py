"""`EpisodeStore`: episodes in Chroma; small namespaces share bucket collections.

This module, `buckets` (the layout: registry, buckets, own collections, moves, what several
processes may do at once) and `records` (an episode as a Chroma record, checks of filters) are
the only ones that import `chromadb`.

Records (written and read through `records`):
    * One record per episode: the vector is the query embedding, the document is the query,
      and the metadata holds the user's keys as given plus reserved ``kd_`` keys: the response
      text, the reward (absent when not rated) and a ``kd_rated`` flag, the creation time (ISO
      string and POSIX timestamp), and the response embedding (base64 of little-endian float32,
      returned bit for bit; measured: float16 would save ~20% of disk and no time). Query
      vectors come back from Chroma's cosine index within float32 rounding (about 1 ulp). An
      empty response is stored with an all-zero response embedding: nothing is embedded for it.
      In a bucket the record id is ``"<namespace tag>:<episode id>"`` and the metadata also holds
      ``kd_ns`` and ``kd_gen`` (see `buckets`); the episode comes back exactly as stored.
    * Collections use cosine space and no Chroma embedding function (``embedding_function=None``):
      the store always passes vectors it computed, so Chroma's default embedder (which would
      download a model) never runs; if anything asked Chroma to embed, it would raise instead.

Layout (details, measurements and the guarantees across processes in `buckets`):
    * ``{collection_name}.registry`` says where each namespace lives, with the embedder and the
      reward range it was created with. Each process caches it.
    * Namespaces of fewer than `move_at` (256) records share bucket collections
      ``{collection_name}.b.<k>`` of about `bucket_capacity` (2,000) records: 10,000 namespaces of
      10 episodes take ~50 collections, not 10,000 (Chroma keeps ~2.6 MB per collection loaded).
    * A namespace that reaches `move_at` records moves to a collection of its own,
      ``{collection_name}.ns.<encoded namespace>``, as every namespace had in format 1; one that
      keeps growing in a crowded bucket (over twice `bucket_capacity`) moves to a bucket with
      room. Stores written by format 1 open and work unchanged: their collections are own
      namespaces.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from langchain_core.embeddings import Embeddings

from langchain_kd_memory._validate import check_int, check_str, optional
from langchain_kd_memory.buckets import (
    BUCKET_CAPACITY,
    MOVE_AT,
    STORE_FORMAT,
    Layout,
    Place,
    Scope,
    encode_namespace,
    raise_open_file_limit,
)
from langchain_kd_memory.buckets import chroma_call as _chroma
from langchain_kd_memory.embeddings import Embedder, EmbedderIdentity
from langchain_kd_memory.episodes import (
    DEFAULT_NAMESPACE,
    DEFAULT_PERSIST_DIRECTORY,
    Episode,
    TrainingArrays,
    check_reward_in_range,
    validate_namespace,
    validate_reward,
    validate_reward_range,
)
from langchain_kd_memory.errors import (
    DuplicateEpisodeError,
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidEpisodeError,
    StoreError,
)
from langchain_kd_memory.rated import rated_pages, recent_cutoff
from langchain_kd_memory.records import (
    CHROMA_RESERVED_PREFIXES,
    INT64,
    RATED_KEY,
    RESPONSE_EMBEDDING_KEY,
    REWARD_KEY,
    check_ids,
    check_search_query,
    check_where,
    decode_vector,
    episode_of,
    record_metadata,
)

logger = logging.getLogger(__name__)

__all__ = ["STORE_FORMAT", "EpisodeStore", "encode_namespace", "http_client",
           "raise_open_file_limit"]

_T = TypeVar("_T")

_COLLECTION_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{1,61}[a-zA-Z0-9]")
_TRAINING_PAGE = 1024
UNDO_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
"""Waits between attempts to remove what a failed add wrote (Chroma may be restarting)."""


def http_client(host: str, port: int = 8000) -> ClientAPI:
    """A client for a Chroma server (``chroma run``), with telemetry off; pass it as `client=`.

    Raises:
        InvalidArgumentError: If `host` is blank or `port` is not in 1..65535.
        StoreError: If the server cannot be reached.
    """
    check_str("host", host)
    check_int("port", port, low=1, high=65535)
    with _chroma(f"connect to the Chroma server at {host}:{port}"):
        return chromadb.HttpClient(
            host=host, port=port, settings=Settings(anonymized_telemetry=False)
        )


class EpisodeStore:
    """Episodes (query, response, reward, metadata) kept in Chroma, isolated by namespace.

    Queries and responses are embedded once, on `add`; the stored vectors are what search and
    training use afterwards (`training_batches` never calls the embedder). Every public method
    validates its input and leaves the store unchanged when it raises.

    Setup:
        .. code-block:: python

            from langchain_kd_memory import Episode, EpisodeStore

            store = EpisodeStore(persist_directory="./memory")   # embedded, on disk
            # or: EpisodeStore(client=chromadb.HttpClient(host="localhost", port=8000))

    Add:
        .. code-block:: python

            ids = store.add([Episode("How do I reset my password?", "Use the link.", reward=1.0)])
            store.update_reward(ids[0], 0.5)          # metadata only: no re-embedding

    Search:
        .. code-block:: python

            for episode, similarity in store.search("forgot my password", k=3):
                print(round(similarity, 3), episode.reward, episode.response)

    Train:
        .. code-block:: python

            arrays = store.training_arrays()   # query/response embeddings + rewards, rated only

    Concurrency: writes from several threads of one process are serialised by a lock, so none is
    lost. Several processes may share one Chroma server: creating a namespace and moving it to
    its own collection are safe against each other's writes (see `buckets` for exactly what is
    guaranteed). Duplicate-id checks are not atomic across processes, and a namespace with its
    own collection deleted through another store object is only noticed by this one once
    reopened.
    """

    def __init__(
        self,
        collection_name: str = "episodes",
        embeddings: Embeddings | None = None,
        persist_directory: str | None = None,
        client: ClientAPI | None = None,
        reward_range: tuple[float, float] | None = None,
        *,
        move_at: int = MOVE_AT,
        bucket_capacity: int = BUCKET_CAPACITY,
    ) -> None:
        """Open (or create on first write) a store.

        Args:
            collection_name: Prefix of this store's collections: 3-63 characters of
                ``[a-zA-Z0-9_-]``, starting and ending with a letter or digit.
            embeddings: Any LangChain `Embeddings`; the local MiniLM if None.
            persist_directory: Directory of the embedded Chroma database (default
                ``./.kd_memory``); ignored when `client` is given. The soft limit of open files
                is raised to the hard limit first (see `raise_open_file_limit`).
            client: Any chromadb client (e.g. ``chromadb.HttpClient(...)``), used as is.
            reward_range: The lowest and highest possible reward, e.g. ``(0, 1)`` or ``(1, 10)``;
                rewards outside it are refused. It is recorded with each namespace on creation,
                and a namespace keeps the range it was created with: a store opened without a
                range enforces the recorded one, a store declaring another range is refused.
            move_at: A namespace moves from its shared bucket to a collection of its own once
                it holds this many episodes (1: every namespace has its own, as in format 1).
            bucket_capacity: A bucket stops taking new namespaces once it holds this many
                episodes; one holding twice as many moves growing namespaces to a bucket with
                room.

        Raises:
            InvalidArgumentError: If `collection_name`, `embeddings`, `client`, `reward_range`,
                `move_at` or `bucket_capacity` is unusable.
        """
        if not isinstance(collection_name, str) or not _COLLECTION_NAME_RE.fullmatch(
            collection_name
        ):
            raise InvalidArgumentError(
                "collection_name must be 3-63 characters of [a-zA-Z0-9_-] starting and ending "
                f"with a letter or digit, got {collection_name!r}"
            )
        if persist_directory is not None and client is not None:
            raise InvalidArgumentError("pass persist_directory or client, not both")
        self.reward_range = validate_reward_range(reward_range)
        move_at = check_int("move_at", move_at, low=1)
        bucket_capacity = check_int("bucket_capacity", bucket_capacity, low=1)
        self.collection_name = collection_name
        self.embedder = Embedder(embeddings)
        self._identity = self.embedder.identity
        if client is None:
            raise_open_file_limit()
            with _chroma("open the database"):
                client = chromadb.PersistentClient(
                    path=persist_directory or DEFAULT_PERSIST_DIRECTORY,
                    settings=Settings(anonymized_telemetry=False),
                )
        elif not hasattr(client, "get_or_create_collection"):
            raise InvalidArgumentError(
                f"client must be a chromadb client, got {type(client).__name__}"
            )
        self.client: ClientAPI = client
        self._layout = Layout(client, collection_name, self._identity, self.reward_range,
                              move_at, bucket_capacity)
        self._lock = self._layout.lock
        self._max_batch: int | None = None

    def __repr__(self) -> str:
        return f"EpisodeStore(collection_name={self.collection_name!r}, embedder={self._identity})"

    @property
    def embeddings(self) -> Embeddings:
        """The LangChain `Embeddings` this store embeds with."""
        return self.embedder.embeddings

    @property
    def identity(self) -> EmbedderIdentity:
        """Name and dimension of the embedder this store's vectors come from."""
        return self._identity

    @property
    def dimension(self) -> int:
        """Embedding dimension."""
        return self._identity.dimension

    @property
    def layout(self) -> Layout:
        """Where each namespace lives in Chroma (registry, buckets, own collections)."""
        return self._layout

    # ----------------------------------------------------------------- placement

    def _max_batch_size(self) -> int:
        if self._max_batch is None:
            with _chroma("read the maximum batch size"):
                self._max_batch = int(self.client.get_max_batch_size())
        return self._max_batch

    def namespaces(self) -> list[str]:
        """The namespaces that hold (or held) episodes in this store, sorted."""
        return self._layout.namespaces()

    def _scopes(self, namespace: str | None) -> list[Scope]:
        """Where the records of `namespace` (every namespace when None) are."""
        if namespace is None:
            return self._layout.catalog()[1]
        place = self._layout.place(validate_namespace(namespace))
        return [] if place is None else [place.scope]

    def _read(self, namespace: str, read: Callable[[Place], _T], empty: _T) -> _T:
        """`read(place)` of the namespace; `empty` if it does not exist.

        A bucket read that finds nothing reads the registry again: another process may have
        moved the namespace since this one cached where it is.
        """
        place = self._layout.place(namespace)
        if place is None:
            return empty
        result = read(place)
        if place.tag is not None and not result:
            fresh = self._layout.refresh(namespace)
            if fresh is None:
                return empty
            if fresh != place:
                return read(fresh)
        return result

    # ----------------------------------------------------------------- records

    def check_episodes(self, episodes: object) -> list[Episode]:
        """Return `episodes` as a list if `add` would accept them, else raise; nothing is written.

        Checks what `Episode` cannot know: Chroma's limits on metadata, ids repeated within the
        batch, and each reward against its namespace's reward range (the one recorded with its
        collection, else the store's `reward_range`). `add` calls it; call it to refuse a batch
        before paying for its embeddings.

        Raises:
            InvalidEpisodeError: An element is not an `Episode`, or its metadata is unstorable.
            DuplicateEpisodeError: An id repeats within a namespace in the batch.
            InvalidRewardError: A reward lies outside its namespace's reward range.
        """
        if not isinstance(episodes, Sequence) or isinstance(episodes, (str, Episode)):
            raise InvalidEpisodeError(
                f"episodes must be a list of Episode, got {type(episodes).__name__}"
            )
        seen: set[tuple[str, str]] = set()
        for episode in episodes:
            if not isinstance(episode, Episode):
                raise InvalidEpisodeError(
                    f"episodes must be Episode objects, got {type(episode).__name__}"
                )
            for key, value in episode.metadata.items():
                if key.startswith(CHROMA_RESERVED_PREFIXES):
                    raise InvalidEpisodeError(
                        f"metadata key {key!r} of episode {episode.id!r} starts with a prefix "
                        f"Chroma reserves ({', '.join(map(repr, CHROMA_RESERVED_PREFIXES))}): "
                        "rename it"
                    )
                if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
                    raise InvalidEpisodeError(
                        f"metadata[{key!r}] of episode {episode.id!r} does not fit in 64 bits"
                    )
            if (episode.namespace, episode.id) in seen:
                raise DuplicateEpisodeError(
                    f"episode id {episode.id!r} appears twice in namespace "
                    f"{episode.namespace!r} in this batch"
                )
            seen.add((episode.namespace, episode.id))
            if episode.reward is not None:
                check_reward_in_range(episode.reward, self._reward_range(episode.namespace))
        return list(episodes)

    def _reward_range(self, namespace: str) -> tuple[float, float] | None:
        return self._layout.reward_range_of(namespace)

    # ----------------------------------------------------------------- writes

    def add(
        self,
        episodes: Sequence[Episode],
        *,
        query_embeddings: Sequence[Sequence[float]] | np.ndarray | None = None,
        response_embeddings: Sequence[Sequence[float]] | np.ndarray | None = None,
    ) -> list[str]:
        """Store episodes; all of them or, on any error, none.

        Queries and non-empty responses are embedded in one batched call each, unless their
        embeddings are given. An empty response is stored with a zero response embedding.
        An episode already stored with identical fields is skipped (nothing is embedded for it),
        so retrying a failed add with the same `Episode` objects is safe.

        Args:
            episodes: The episodes, possibly of several namespaces.
            query_embeddings: Optional precomputed query embeddings, shape (n, dimension).
            response_embeddings: Optional precomputed response embeddings, shape (n, dimension).

        Returns:
            The ids of the episodes, in order.

        Raises:
            InvalidEpisodeError: If an element is not a valid `Episode`.
            DuplicateEpisodeError: If an id repeats within a namespace, or is stored there with
                other fields.
            EmbeddingDimensionError: If an embedding has the wrong dimension.
            EmbeddingError: If the embedder fails or an embedding is not finite.
            StoreError: If Chroma fails. What this call wrote is removed again; if Chroma is
                unreachable for that too, `error.maybe_stored` lists the ids that may have
                landed, and retrying the same batch completes it without duplicates.
        """
        batch = self.check_episodes(episodes)
        rows = self._unstored(batch, list(range(len(batch))))
        if rows:
            queries, responses = self._vectors(batch, rows, query_embeddings, response_embeddings)
            with self._lock:
                fresh = set(self._unstored(batch, rows))  # another writer may have been first
                keep = [i for i, row in enumerate(rows) if row in fresh]
                self._write(
                    [batch[rows[i]] for i in keep], queries[keep], responses[keep], upsert=False
                )
        logger.debug("added %d of %d episodes (the rest were stored)", len(rows), len(batch))
        return [ep.id for ep in batch]

    def upsert(
        self,
        episodes: Sequence[Episode],
        *,
        query_embeddings: Sequence[Sequence[float]] | np.ndarray | None = None,
        response_embeddings: Sequence[Sequence[float]] | np.ndarray | None = None,
    ) -> list[str]:
        """Store episodes, replacing any stored under the same id in the same namespace.

        Everything is embedded before anything is written, and each episode is replaced in one
        Chroma request: a reader sees the old episode or the new one, never neither. (A batch
        larger than Chroma's maximum batch size takes several requests.)

        Raises:
            InvalidEpisodeError, DuplicateEpisodeError, EmbeddingError, StoreError: As `add`.
        """
        batch = self.check_episodes(episodes)
        rows = list(range(len(batch)))
        queries, responses = self._vectors(batch, rows, query_embeddings, response_embeddings)
        with self._lock:
            self._write(batch, queries, responses, upsert=True)
        return [ep.id for ep in batch]

    def _vectors(
        self, batch: list[Episode], rows: list[int], query_embeddings: object,
        response_embeddings: object,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of `batch[rows]`: the given ones checked, the missing ones embedded."""
        if query_embeddings is None and response_embeddings is None:
            return self.embedder.episodes([batch[r] for r in rows])
        return (
            self.embedder.texts([batch[r].query for r in rows]) if query_embeddings is None
            else self.embedder.check(query_embeddings, len(batch), "query_embeddings")[rows],
            self.embedder.texts([batch[r].response for r in rows]) if response_embeddings is None
            else self.embedder.check(response_embeddings, len(batch), "response_embeddings")[rows],
        )

    def _unstored(self, batch: list[Episode], rows: list[int]) -> list[int]:
        """The rows whose episode is not stored yet; raise if one is stored with other fields."""
        groups: dict[str, list[int]] = {}
        for row in rows:
            groups.setdefault(batch[row].namespace, []).append(row)
        stored: set[int] = set()
        for namespace, ns_rows in groups.items():
            place = self._layout.place(namespace)
            if place is None:
                continue
            by_id = {place.cid(batch[r].id): r for r in ns_rows}
            with _chroma(f"look up ids in namespace {namespace!r}"):
                found = place.collection.get(
                    ids=list(by_id), include=["documents", "metadatas"]  # type: ignore[list-item]
                )
            for chroma_id, document, metadata in zip(
                found["ids"], found["documents"] or [], found["metadatas"] or [], strict=True
            ):
                row = by_id[chroma_id]
                episode_id = batch[row].id
                if episode_of(episode_id, document, metadata, namespace) != batch[row]:
                    raise DuplicateEpisodeError(
                        f"episode id {episode_id!r} already exists in namespace {namespace!r} "
                        "and differs from the one given; use update_rewards to change its "
                        "reward, or delete it first"
                    )
                stored.add(row)
        return [row for row in rows if row not in stored]

    def _put(
        self,
        places: Mapping[str, Place],
        items: list[tuple[Episode, np.ndarray, np.ndarray]],
        upsert: bool,
        attempted: list[tuple[Collection, list[str], list[str]]],
    ) -> None:
        """Write episodes with their vectors where their namespaces are.

        Requests hold at most Chroma's maximum batch size; a bucket takes the rows of all its
        namespaces at once.
        """
        by_collection: dict[str, list[tuple[Place, Episode, np.ndarray, np.ndarray]]] = {}
        for episode, query, response in items:
            place = places[episode.namespace]
            by_collection.setdefault(place.collection.name, []).append(
                (place, episode, query, response)
            )
        step = self._max_batch_size()
        for rows in by_collection.values():
            collection = rows[0][0].collection
            write = collection.upsert if upsert else collection.add
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                ids = [place.cid(ep.id) for place, ep, _, _ in chunk]
                attempted.append((collection, ids, [ep.id for _, ep, _, _ in chunk]))
                names = ", ".join(dict.fromkeys(repr(ep.namespace) for _, ep, _, _ in chunk))
                with _chroma(f"write episodes to namespace {names}"):
                    write(
                        ids=ids,
                        embeddings=np.stack([q for _, _, q, _ in chunk]),
                        documents=[ep.query for _, ep, _, _ in chunk],
                        metadatas=[
                            {**record_metadata(ep, r), **place.tags()}
                            for place, ep, _, r in chunk
                        ],
                    )

    def _write(
        self, batch: list[Episode], queries: np.ndarray, responses: np.ndarray, *, upsert: bool
    ) -> None:
        """Write the rows where their namespaces are, creating new namespaces.

        Then check that no other process moved a namespace meanwhile (the write is redone where
        it is now), and move namespaces that grew past `move_at`.

        On failure of an add, what this call may have written (the failed request included: it
        may have landed) is deleted again, retrying while Chroma is unreachable; the
        `StoreError` raised lists what may remain in `maybe_stored`.
        """
        rows: dict[str, int] = {}
        for episode in batch:
            rows[episode.namespace] = rows.get(episode.namespace, 0) + 1
        items = list(zip(batch, queries, responses, strict=True))
        attempted: list[tuple[Collection, list[str], list[str]]] = []
        created: list[Place] = []
        try:
            places, created = self._layout.places_for_write(rows)
            self._put(places, items, upsert, attempted)
            for _ in range(3):  # each round: namespaces another process moved or deleted
                moved = self._layout.changed(places)
                if not moved:
                    break
                old = {ns: places[ns] for ns in moved}
                for namespace in moved:
                    place = self._layout.settle(namespace, create=True)
                    assert place is not None
                    places[namespace] = place
                self._put(places, [it for it in items if it[0].namespace in old], upsert,
                          attempted)
                for namespace, place in old.items():  # what this call left in the old bucket
                    ids = [place.cid(ep.id) for ep in batch if ep.namespace == namespace]
                    with _chroma(f"remove moved episodes of namespace {namespace!r}"):
                        place.collection.delete(ids=ids)
        except StoreError as exc:
            if upsert:
                raise
            remaining = self._undo(attempted, created)
            if remaining:
                raise StoreError(
                    f"{exc}; {len(remaining)} of its episodes may be stored (Chroma could not "
                    "be reached to remove them): retry add() with the same Episode objects, "
                    "which skips the ones stored, or delete error.maybe_stored",
                    maybe_stored=remaining,
                ) from exc
            raise
        self._layout.maybe_move(list(places.values()))

    def _undo(
        self, attempted: list[tuple[Collection, list[str], list[str]]], created: list[Place]
    ) -> list[str]:
        """Delete the attempted records and emptied new namespaces; return the ids that remain."""
        for delay in UNDO_BACKOFF_S:
            try:
                remaining: list[str] = []
                for collection, ids, episode_ids in attempted:
                    with _chroma("remove the episodes of a failed add"):
                        collection.delete(ids=ids)
                        left = set(collection.get(ids=ids, include=[])["ids"])
                    remaining += [e for i, e in zip(ids, episode_ids, strict=True) if i in left]
                for place in created if not remaining else []:
                    self._layout.forget(place)
                logger.warning("add failed; removed what it had written")
                return list(dict.fromkeys(remaining))
            except Exception as exc:
                logger.warning("could not undo a failed add (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
        logger.error("could not undo a failed add; the store may hold part of it")
        return list(dict.fromkeys(e for _, _, episode_ids in attempted for e in episode_ids))

    def _fetch(
        self, ids: list[str], namespace: object, include: list[str]
    ) -> dict[str, tuple[str, dict[str, Any]]]:
        """Find every id: {id: (namespace, record)}; raise if one is missing."""
        unique = list(dict.fromkeys(ids))
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        if not unique:
            return found
        if namespace is None:
            for scope in self._layout.catalog()[1]:
                self._get_in(scope, unique, include, found)
        else:
            ns = validate_namespace(namespace)
            place = self._layout.place(ns)
            if place is not None:
                self._get_in(place.scope, unique, include, found)
                if len(found) < len(unique) and place.tag is not None:
                    fresh = self._layout.refresh(ns)  # moved by another process?
                    if fresh is not None and fresh != place:
                        found.clear()
                        self._get_in(fresh.scope, unique, include, found)
        missing = [episode_id for episode_id in unique if episode_id not in found]
        if missing:
            where = "this store" if namespace is None else f"namespace {namespace!r}"
            raise EpisodeNotFoundError(f"no episode with id {missing[0]!r} in {where}")
        return found

    def _get_in(
        self,
        scope: Scope,
        episode_ids: list[str],
        include: list[str],
        found: dict[str, tuple[str, dict[str, Any]]],
    ) -> bool:
        """Add the records of `scope` with these episode ids to `found`; whether any was there."""
        chroma_ids = scope.chroma_ids(episode_ids)
        step = self._max_batch_size()
        hit = False
        for start in range(0, len(chroma_ids), step):
            with _chroma(f"get episodes from {scope.collection.name!r}"):
                result = scope.collection.get(
                    ids=chroma_ids[start : start + step], include=include  # type: ignore[arg-type]
                )
            for row, chroma_id in enumerate(result["ids"]):
                hit = True
                episode_id, ns = scope.eid(chroma_id), scope.namespace_of(chroma_id)
                if episode_id in found and found[episode_id][0] != ns:
                    raise InvalidArgumentError(
                        f"episode id {episode_id!r} exists in namespaces {found[episode_id][0]!r} "
                        f"and {ns!r}; pass namespace="
                    )
                record = {key: result[key][row] for key in include}  # type: ignore[literal-required]
                found[episode_id] = (ns, record)
        return hit

    def _apply(self, namespace: str, ids: list[str], change: Callable[[Place], None]) -> None:
        """Run `change(place)` on the namespace's records, and again where it is now.

        A write in a bucket is checked against the registry: if another process moved the
        namespace meanwhile, the change is redone there.
        """
        place = self._layout.place(namespace)
        if place is None:
            raise EpisodeNotFoundError(f"no episode with id {ids[0]!r} in namespace {namespace!r}")
        change(place)
        for _ in range(3):
            if not self._layout.changed({namespace: place}):
                return
            fresh = self._layout.settle(namespace, create=False)
            if fresh is None:
                return  # deleted meanwhile: the episodes went with it
            change(fresh)
            place = fresh
    def get(self, ids: Sequence[str], namespace: str | None = None) -> list[Episode]:
        """The episodes with these ids, in the same order.

        Args:
            ids: Episode ids.
            namespace: Where to look; every namespace of the store if None.

        Raises:
            EpisodeNotFoundError: If an id is not stored (the message names it).
            InvalidArgumentError: If `namespace` is None and an id exists in two namespaces.
        """
        wanted = check_ids(ids)
        found = self._fetch(wanted, namespace, ["documents", "metadatas"])
        return [
            episode_of(i, found[i][1]["documents"], found[i][1]["metadatas"], found[i][0])
            for i in wanted
        ]

    def update_reward(
        self, episode_id: str, reward: float | None, namespace: str | None = None
    ) -> Episode:
        """Set (or, with None, clear) an episode's reward. The stored vectors are untouched.

        Args:
            episode_id: The episode's id.
            reward: A finite number, or None to mark the episode as not rated.
            namespace: Where the episode is; every namespace of the store if None.

        Returns:
            The updated episode.

        Raises:
            InvalidRewardError: If `reward` is not a finite number or None.
            EpisodeNotFoundError: If the episode does not exist.
        """
        return self.update_rewards({episode_id: reward}, namespace)[0]

    def update_rewards(
        self, rewards: Mapping[str, float | None], namespace: str | None = None
    ) -> list[Episode]:
        """Set the rewards of several episodes of one namespace in one request: all or none.

        Args:
            rewards: {episode id: reward, or None to mark it not rated}.
            namespace: Where the episodes are; every namespace of the store if None (they must
                then all be found in one namespace).

        Returns:
            The updated episodes, in the order of `rewards`.

        Raises:
            InvalidRewardError: If a reward is not a finite number or None, or lies outside the
                namespace's reward range (nothing is written).
            EpisodeNotFoundError: If an episode does not exist.
            InvalidArgumentError: If the episodes lie in different namespaces.
        """
        if not isinstance(rewards, Mapping):
            raise InvalidArgumentError(f"rewards must be a dict of id -> reward, got {rewards!r}")
        ids = check_ids(list(rewards))
        values = [validate_reward(rewards[i]) for i in ids]
        with self._lock:
            found = self._fetch(ids, namespace, ["documents", "metadatas"])
            spaces = {found[i][0] for i in ids}
            if len(spaces) > 1:
                raise InvalidArgumentError(
                    f"update_rewards changes one namespace at a time, got {sorted(spaces)}"
                )
            if ids:
                ns = found[ids[0]][0]
                for value in values:
                    if value is not None:
                        check_reward_in_range(value, self._reward_range(ns))
                metadatas = [{REWARD_KEY: v, RATED_KEY: v is not None} for v in values]

                def change(place: Place) -> None:
                    with _chroma(f"update the rewards of {len(ids)} episodes of namespace {ns!r}"):
                        place.collection.update(
                            ids=[place.cid(i) for i in ids], metadatas=metadatas  # type: ignore[arg-type]
                        )

                self._apply(ns, ids, change)
        return [
            dataclasses.replace(
                episode_of(i, found[i][1]["documents"], found[i][1]["metadatas"], found[i][0]),
                reward=value,
            )
            for i, value in zip(ids, values, strict=True)
        ]

    def delete(self, ids: Sequence[str], namespace: str | None = None) -> None:
        """Delete episodes; all of them or, if one is missing, none.

        Raises:
            EpisodeNotFoundError: If an id is not stored.
        """
        wanted = check_ids(ids)
        with self._lock:
            found = self._fetch(wanted, namespace, [])
            by_namespace: dict[str, list[str]] = {}
            for episode_id, (ns, _) in found.items():
                by_namespace.setdefault(ns, []).append(episode_id)
            for ns, ns_ids in by_namespace.items():

                def change(place: Place, ns: str = ns, ns_ids: list[str] = ns_ids) -> None:
                    with _chroma(f"delete episodes from namespace {ns!r}"):
                        place.collection.delete(ids=[place.cid(i) for i in ns_ids])

                self._apply(ns, ns_ids, change)
        logger.debug("deleted %d episodes", len(found))

    def delete_namespace(self, namespace: str) -> int:
        """Delete a namespace and all its episodes.

        Returns:
            How many episodes were deleted (0 if the namespace did not exist).
        """
        namespace = validate_namespace(namespace)
        with self._lock:
            count = self._layout.drop(namespace)
        logger.info("deleted namespace %r (%d episodes)", namespace, count)
        return count

    @staticmethod
    def _count_in(scope: Scope, where: dict[str, Any] | None = None) -> int:
        with _chroma(f"count episodes in {scope.collection.name!r}"):
            if where is None and not scope.tagged:
                return scope.collection.count()
            return len(scope.collection.get(where=scope.where(where), include=[])["ids"])  # type: ignore[arg-type]

    def count(self, namespace: str | None = None) -> int:
        """Number of episodes in `namespace`, or in the whole store when None."""
        if namespace is None:
            return sum(self._count_in(scope) for scope in self._scopes(None))
        ns = validate_namespace(namespace)
        return self._read(ns, lambda place: self._count_in(place.scope), 0)

    def count_rated(self, namespace: str | None = None) -> int:
        """Number of rated episodes in `namespace`, or in the whole store when None."""
        rated = {RATED_KEY: True}
        if namespace is None:
            return sum(self._count_in(scope, rated) for scope in self._scopes(None))
        ns = validate_namespace(namespace)
        return self._read(ns, lambda place: self._count_in(place.scope, rated), 0)

    def vectors(
        self, ids: Sequence[str], namespace: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stored query and response embeddings of these episodes, in order (no embedding).

        Returns:
            Two float32 arrays of shape (len(ids), dimension); an empty response's is zeros.

        Raises:
            EpisodeNotFoundError: If an id is not stored.
        """
        wanted = check_ids(ids)
        found = self._fetch(wanted, namespace, ["embeddings", "metadatas"])
        empty = np.zeros((0, self.dimension), dtype=np.float32)
        if not wanted:
            return empty, empty
        records = [found[i][1] for i in wanted]
        queries = np.stack([np.asarray(r["embeddings"], dtype=np.float32) for r in records])
        responses = np.stack([
            decode_vector(r["metadatas"][RESPONSE_EMBEDDING_KEY], i, self.dimension)
            for i, r in zip(wanted, records, strict=True)
        ])
        return queries, responses

    def list_episodes(
        self, namespace: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Episode]:
        """The episodes of one namespace in storage order, a page at a time (nothing embedded).

        Args:
            namespace: The namespace; "default" if None.
            limit: How many episodes at most; all of them if None.
            offset: How many episodes to skip first.
        """
        ns = DEFAULT_NAMESPACE if namespace is None else validate_namespace(namespace)
        limit = optional(check_int, "limit", limit, low=1)
        offset = check_int("offset", offset, low=0)

        def page(place: Place) -> list[Episode]:
            scope = place.scope
            with _chroma(f"list namespace {ns!r}"):
                got = scope.collection.get(
                    where=scope.where(),  # type: ignore[arg-type]
                    include=["documents", "metadatas"],  # type: ignore[list-item]
                    limit=limit,
                    offset=offset,
                )
            rows = zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
            return [episode_of(scope.eid(i), doc, meta, ns) for i, doc, meta in rows]

        return self._read(ns, page, [])

    # ----------------------------------------------------------------- search

    def search(
        self,
        query: str,
        k: int = 4,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[tuple[Episode, float]]:
        """The `k` episodes whose queries are most similar to `query`.

        Args:
            query: Text to search for.
            k: How many episodes to return at most.
            namespace: Namespace to search; "default" if None.
            where: Optional Chroma filter on *user* metadata, e.g. ``{"topic": "billing"}``
                or ``{"$and": [{"lang": "en"}, {"score": {"$gte": 3}}]}``. Keys with the
                reserved prefix "kd_" are refused, so a filter never silently addresses the
                store's own fields (reward, response, ...).

        Returns:
            (episode, cosine similarity) pairs, most similar first; [] if the namespace is empty
            or does not exist.

        Raises:
            InvalidArgumentError: If `query` is blank, `k` < 1 or `where` is malformed.
        """
        check_search_query(query)
        k, ns, clean_where = self._check_search(k, namespace, where)
        if self._layout.place(ns) is None:
            return []
        matrix = self.embedder.query(query)[None, :]
        return self._read(ns, lambda place: self._query(place, matrix, k, clean_where), [])

    def search_by_vector(
        self,
        embedding: Sequence[float] | np.ndarray,
        k: int = 4,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[tuple[Episode, float]]:
        """Like `search`, for a query that is already embedded (with this store's embedder).

        Raises:
            EmbeddingDimensionError: If `embedding` has the wrong dimension.
            EmbeddingError: If `embedding` is not a finite vector.
        """
        k, ns, clean_where = self._check_search(k, namespace, where)
        matrix = self.embedder.check([embedding], 1, "embedding")
        return self._read(ns, lambda place: self._query(place, matrix, k, clean_where), [])

    @staticmethod
    def _check_search(
        k: object, namespace: object, where: object
    ) -> tuple[int, str, dict[str, Any] | None]:
        return (
            check_int("k", k, low=1),
            DEFAULT_NAMESPACE if namespace is None else validate_namespace(namespace),
            check_where(where),
        )

    def _query(
        self,
        place: Place,
        matrix: np.ndarray,
        k: int,
        where: dict[str, Any] | None,
    ) -> list[tuple[Episode, float]]:
        scope = place.scope
        with _chroma(f"search namespace {place.namespace!r}"):
            result = scope.collection.query(
                query_embeddings=matrix,
                n_results=k,
                where=scope.where(where),  # type: ignore[arg-type]
                include=["documents", "metadatas", "distances"],  # type: ignore[list-item]
            )
        documents = (result["documents"] or [[]])[0]
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        rows = zip(result["ids"][0], documents, metadatas, distances, strict=True)
        return [
            (episode_of(scope.eid(i), doc, meta, place.namespace), 1.0 - float(dist))
            for i, doc, meta, dist in rows
        ]

    # ----------------------------------------------------------------- training data

    def _training_scopes(self, namespace: str | None) -> list[Scope]:
        """Where the rated episodes of `namespace` (every namespace when None) are read from.

        A bucket namespace with no rated episode is looked up again: another process may have
        moved it.
        """
        if namespace is None:
            return self._scopes(None)
        return self._read(
            namespace,
            lambda place: [place.scope] if self._count_in(place.scope, {RATED_KEY: True}) else [],
            [],
        )

    def training_batches(
        self,
        namespace: str | None = None,
        batch_size: int = _TRAINING_PAGE,
        since: datetime | None = None,
    ) -> Iterator[TrainingArrays]:
        """Stream the stored embeddings and rewards of rated episodes, page by page.

        Nothing is embedded: the vectors are the ones stored by `add`. Pages are consistent
        with each other only if no episode is deleted while iterating.

        Args:
            namespace: One namespace, or every namespace of the store if None.
            batch_size: Episodes per batch at most.
            since: Only episodes created at or after this time (naive means UTC).

        Yields:
            `TrainingArrays` of at most `batch_size` rows.
        """
        batch_size = check_int("batch_size", batch_size, low=1)
        if since is not None and not isinstance(since, datetime):
            raise InvalidArgumentError(f"since must be a datetime or None, got {since!r}")
        if namespace is not None:
            namespace = validate_namespace(namespace)
        since_ts = None if since is None else (
            since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        ).timestamp()
        pages = rated_pages(self._training_scopes(namespace), batch_size, since_ts,
                            self.dimension)
        return (arrays for arrays, _ in pages)

    def training_arrays(
        self, namespace: str | None = None, limit: int | None = None
    ) -> TrainingArrays:
        """All rated episodes' stored embeddings and rewards, oldest first.

        Args:
            namespace: One namespace, or every namespace of the store if None.
            limit: Keep only the `limit` most recent episodes (by `created_at`). Only about
                that many records are read, found through a sample of creation times, so the
                cost does not grow with the whole history.

        Returns:
            The arrays (zero rows if nothing is rated).
        """
        if limit is not None:
            limit = check_int("limit", limit, low=1)
        if namespace is not None:
            namespace = validate_namespace(namespace)
        scopes = self._training_scopes(namespace)
        cutoff = None if limit is None else recent_cutoff(scopes, limit)
        pages = list(rated_pages(scopes, _TRAINING_PAGE, cutoff, self.dimension))
        if not pages:
            empty = np.zeros((0, self.dimension), dtype=np.float32)
            return TrainingArrays(empty, empty, np.zeros(0, dtype=np.float32))
        arrays = TrainingArrays.concatenate([p for p, _ in pages])
        order = np.argsort(np.concatenate([t for _, t in pages]), kind="stable")
        return arrays.subset(order if limit is None else order[-limit:])
