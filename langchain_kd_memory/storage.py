"""`EpisodeStore`: episodes in Chroma, one collection per namespace.

This is the only module that imports `chromadb`.

Layout:
    * One Chroma collection per namespace, named ``{collection_name}.ns.{encoded namespace}``.
      The encoding keeps ASCII letters and digits and writes every other UTF-8 byte as ``_hh``,
      so it is reversible and two namespaces never share a collection. A namespace whose
      encoding would exceed Chroma's 512-character limit is named
      ``{collection_name}.nh.{sha256 of the namespace}``. The original namespace and the
      embedder's identity live in the collection metadata.
    * One record per episode: the vector is the query embedding, the document is the query,
      and the metadata holds the user's keys as given plus reserved ``kd_`` keys: the response
      text, the reward (absent when not rated) and a ``kd_rated`` flag, the creation time (ISO
      string and POSIX timestamp), and the response embedding (base64 of little-endian float32,
      returned bit for bit; measured: float16 would save ~20% of disk and no time). Query
      vectors come back from Chroma's cosine index within float32 rounding (about 1 ulp). An
      empty response is stored with an all-zero response embedding: nothing is embedded for it.
    * Collections use cosine space and no Chroma embedding function (``embedding_function=None``):
      the store always passes vectors it computed, so Chroma's default embedder (which would
      download a model) never runs; if anything asked Chroma to embed, it would raise instead.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import string
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import validate_where
from chromadb.config import Settings
from chromadb.errors import NotFoundError
from langchain_core.embeddings import Embeddings

from langchain_kd_memory._validate import check_int, check_str, optional
from langchain_kd_memory.embeddings import Embedder, EmbedderIdentity
from langchain_kd_memory.episodes import (
    DEFAULT_NAMESPACE,
    DEFAULT_PERSIST_DIRECTORY,
    MAX_TEXT_LENGTH,
    RESERVED_METADATA_PREFIX,
    Episode,
    TrainingArrays,
    check_reward_in_range,
    validate_namespace,
    validate_reward,
    validate_reward_range,
)
from langchain_kd_memory.errors import (
    ConfigError,
    DuplicateEpisodeError,
    EmbedderMismatchError,
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidEpisodeError,
    KDMemoryError,
    StoreError,
)

logger = logging.getLogger(__name__)

STORE_FORMAT = 1

# Reserved record metadata keys.
RESPONSE_KEY = "kd_response"
REWARD_KEY = "kd_reward"
RATED_KEY = "kd_rated"
CREATED_AT_KEY = "kd_created_at"
CREATED_TS_KEY = "kd_created_ts"
RESPONSE_EMBEDDING_KEY = "kd_response_emb"

# Collection metadata keys.
_NAMESPACE_META = "kd_namespace"
_EMBEDDER_META = "kd_embedder"
_DIMENSION_META = "kd_dimension"
_FORMAT_META = "kd_format"
_REWARD_LOW_META = "kd_reward_low"
_REWARD_HIGH_META = "kd_reward_high"

CHROMA_RESERVED_PREFIXES = ("#", "$", "chroma:")
"""Metadata keys Chroma keeps for itself (``#document``, ``$and``, ``chroma:document``)."""

_COLLECTION_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{1,61}[a-zA-Z0-9]")
_KEPT_CHARACTERS = frozenset(string.ascii_letters + string.digits)
_MAX_CHROMA_NAME = 512
_INT64 = (-(2**63), 2**63 - 1)
_TRAINING_PAGE = 1024
RECENT_SAMPLE = 256
"""Creation times sampled to find which episodes are the most recent ones."""
UNDO_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
"""Waits between attempts to remove what a failed add wrote (Chroma may be restarting)."""


def encode_namespace(namespace: str) -> str:
    """Encode a namespace into Chroma's name alphabet, reversibly and without collisions.

    ASCII letters and digits are kept; every other character becomes ``_hh`` for each byte of
    its UTF-8 encoding (``"user/42"`` -> ``"user_2f42"``, ``"a_b"`` -> ``"a_5fb"``).
    """
    return "".join(
        ch if ch in _KEPT_CHARACTERS else "".join(f"_{b:02x}" for b in ch.encode("utf-8"))
        for ch in namespace
    )


def _encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


@contextmanager
def _chroma(action: str) -> Iterator[None]:
    """Turn a Chroma (or transport) failure inside the block into a `StoreError`."""
    try:
        yield
    except KDMemoryError:
        raise
    except Exception as exc:
        raise StoreError(f"Chroma failed to {action}: {type(exc).__name__}: {exc}") from exc


def _show_range(reward_range: tuple[float, float] | None) -> str:
    return "none" if reward_range is None else f"[{reward_range[0]}, {reward_range[1]}]"


def check_search_query(query: object) -> str:
    """Return `query` if it is a usable search text, else raise `InvalidArgumentError`."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidArgumentError(f"query must be a non-empty str, got {query!r}")
    if len(query) > MAX_TEXT_LENGTH:
        raise InvalidArgumentError(
            f"query is {len(query):,} characters; the limit is {MAX_TEXT_LENGTH:,}: search with "
            "a shorter text (embedders read only the first few hundred tokens)"
        )
    return query


def _check_ids(ids: object) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidArgumentError(
            f"ids must be a list of str, got {type(ids).__name__}; wrap a single id in a list"
        )
    for episode_id in ids:
        if not isinstance(episode_id, str) or not episode_id.strip():
            raise InvalidArgumentError(f"every id must be a non-empty str, got {episode_id!r}")
    return list(ids)


_check_namespace = validate_namespace


def _reject_reserved_keys(node: object) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith((RESERVED_METADATA_PREFIX, "#", "chroma:")):
                raise InvalidArgumentError(
                    f"where filters address user metadata only; {key!r} uses a reserved "
                    f"prefix ({RESERVED_METADATA_PREFIX!r} is the store's, '#' and 'chroma:' "
                    "Chroma's)"
                )
            _reject_reserved_keys(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _reject_reserved_keys(item)


def _check_where(where: object) -> dict[str, Any] | None:
    if where is None:
        return None
    if not isinstance(where, Mapping) or not where:
        raise InvalidArgumentError(f"where must be a non-empty dict or None, got {where!r}")
    _reject_reserved_keys(where)
    try:
        validate_where(dict(where))  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidArgumentError(f"invalid where filter: {exc}") from exc
    return dict(where)


def _rated_where(since_ts: float | None) -> dict[str, Any]:
    """The `where` filter of rated episodes, created at or after `since_ts` if given."""
    rated: dict[str, Any] = {RATED_KEY: True}
    return rated if since_ts is None else {"$and": [rated, {CREATED_TS_KEY: {"$gte": since_ts}}]}


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
    """Episodes (query, response, reward, metadata) kept in Chroma, one collection per namespace.

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
    lost. Duplicate-id checks are not atomic across processes sharing one Chroma server, and a
    namespace deleted through another store object is only noticed by this one once reopened.
    """

    def __init__(
        self,
        collection_name: str = "episodes",
        embeddings: Embeddings | None = None,
        persist_directory: str | None = None,
        client: ClientAPI | None = None,
        reward_range: tuple[float, float] | None = None,
    ) -> None:
        """Open (or create on first write) a store.

        Args:
            collection_name: Prefix of this store's collections: 3-63 characters of
                ``[a-zA-Z0-9_-]``, starting and ending with a letter or digit.
            embeddings: Any LangChain `Embeddings`; the local MiniLM if None.
            persist_directory: Directory of the embedded Chroma database (default
                ``./.kd_memory``); ignored when `client` is given.
            client: Any chromadb client (e.g. ``chromadb.HttpClient(...)``), used as is.
            reward_range: The lowest and highest possible reward, e.g. ``(0, 1)`` or ``(1, 10)``;
                rewards outside it are refused. It is recorded in the metadata of each
                namespace's collection on creation, and a namespace keeps the range it was
                created with: a store opened without a range enforces the recorded one, a
                store declaring another range is refused.

        Raises:
            InvalidArgumentError: If `collection_name`, `embeddings`, `client` or
                `reward_range` is unusable.
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
        self.collection_name = collection_name
        self.embedder = Embedder(embeddings)
        self._identity = self.embedder.identity
        if client is None:
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
        self._collections: dict[str, Collection] = {}
        self._ranges: dict[str, tuple[float, float] | None] = {}
        self._max_batch: int | None = None
        self._lock = threading.RLock()

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

    # ----------------------------------------------------------------- collections

    def _chroma_name(self, namespace: str) -> str:
        name = f"{self.collection_name}.ns.{encode_namespace(namespace)}"
        if len(name) <= _MAX_CHROMA_NAME:
            return name
        digest = hashlib.sha256(namespace.encode("utf-8")).hexdigest()
        return f"{self.collection_name}.nh.{digest}"

    def _is_own_name(self, name: str) -> bool:
        return name.startswith((f"{self.collection_name}.ns.", f"{self.collection_name}.nh."))

    def _check_collection(self, collection: Collection, namespace: str) -> None:
        meta = collection.metadata or {}
        if meta.get(_NAMESPACE_META) != namespace or _EMBEDDER_META not in meta:
            raise StoreError(
                f"Chroma collection {collection.name!r} was not created by an EpisodeStore for "
                f"namespace {namespace!r}; use another collection_name"
            )
        stored = EmbedderIdentity(str(meta[_EMBEDDER_META]), int(meta[_DIMENSION_META]))
        if stored != self._identity:
            raise EmbedderMismatchError(
                f"namespace {namespace!r} of store {self.collection_name!r} holds vectors from "
                f"{stored}, but this store embeds with {self._identity}; open it with the same "
                "embedder or use another collection_name"
            )
        low, high = meta.get(_REWARD_LOW_META), meta.get(_REWARD_HIGH_META)
        recorded = None if low is None or high is None else (float(low), float(high))
        if self.reward_range is not None and recorded != self.reward_range:
            raise ConfigError(
                f"namespace {namespace!r} of store {self.collection_name!r} was created with "
                f"reward_range {_show_range(recorded)}, but this store declares "
                f"{_show_range(self.reward_range)}; open it with the same reward_range (or none)"
            )
        self._ranges[namespace] = recorded

    def _collection(self, namespace: str, create: bool = False) -> Collection | None:
        """The namespace's collection (created if `create`), or None if it does not exist."""
        cached = self._collections.get(namespace)  # no lock: readers must not queue behind writes
        if cached is not None:
            return cached
        with self._lock:
            cached = self._collections.get(namespace)
            if cached is not None:
                return cached
            name = self._chroma_name(namespace)
            with _chroma(f"open collection {name!r}"):
                if create:
                    metadata: dict[str, Any] = {
                        _NAMESPACE_META: namespace,
                        _EMBEDDER_META: self._identity.name,
                        _DIMENSION_META: self._identity.dimension,
                        _FORMAT_META: STORE_FORMAT,
                    }
                    if self.reward_range is not None:
                        metadata[_REWARD_LOW_META], metadata[_REWARD_HIGH_META] = (
                            self.reward_range
                        )
                    collection = self.client.get_or_create_collection(
                        name,
                        configuration={"hnsw": {"space": "cosine"}},
                        metadata=metadata,
                        embedding_function=None,
                    )
                else:
                    try:
                        collection = self.client.get_collection(name, embedding_function=None)
                    except NotFoundError:
                        return None
            self._check_collection(collection, namespace)
            if create:
                logger.debug("opened collection %s for namespace %r", name, namespace)
            self._collections[namespace] = collection
            return collection

    def _max_batch_size(self) -> int:
        if self._max_batch is None:
            with _chroma("read the maximum batch size"):
                self._max_batch = int(self.client.get_max_batch_size())
        return self._max_batch

    def namespaces(self) -> list[str]:
        """The namespaces that hold (or held) episodes in this store, sorted."""
        found: list[str] = []
        page = 100
        offset = 0
        while True:
            with _chroma("list collections"):
                collections = self.client.list_collections(limit=page, offset=offset)
            for collection in collections:
                namespace = (collection.metadata or {}).get(_NAMESPACE_META)
                if (
                    self._is_own_name(collection.name)
                    and isinstance(namespace, str)
                    and self._chroma_name(namespace) == collection.name
                ):
                    found.append(namespace)
            if len(collections) < page:
                return sorted(found)
            offset += page

    def _resolve_namespaces(self, namespace: object) -> list[str]:
        """`[namespace]`, or every namespace of the store when it is None."""
        return self.namespaces() if namespace is None else [_check_namespace(namespace)]

    # ----------------------------------------------------------------- vectors

    def _decode_vector(self, text: object, episode_id: str) -> np.ndarray:
        try:
            vector = np.frombuffer(base64.b64decode(str(text), validate=True), dtype="<f4")
        except ValueError as exc:
            raise StoreError(f"episode {episode_id!r} has a corrupt response embedding") from exc
        if vector.shape != (self.dimension,):
            raise StoreError(
                f"episode {episode_id!r} has a response embedding of {vector.size} floats, "
                f"expected {self.dimension}"
            )
        return vector

    # ----------------------------------------------------------------- records

    @staticmethod
    def _record_metadata(episode: Episode, response_vector: np.ndarray) -> dict[str, Any]:
        metadata: dict[str, Any] = dict(episode.metadata)
        metadata[RESPONSE_KEY] = episode.response
        metadata[RATED_KEY] = episode.reward is not None
        if episode.reward is not None:
            metadata[REWARD_KEY] = episode.reward
        metadata[CREATED_AT_KEY] = episode.created_at.isoformat()
        metadata[CREATED_TS_KEY] = episode.created_at.timestamp()
        metadata[RESPONSE_EMBEDDING_KEY] = _encode_vector(response_vector)
        return metadata

    @staticmethod
    def _episode(
        episode_id: str, document: str | None, metadata: Mapping[str, Any], namespace: str
    ) -> Episode:
        if document is None or RESPONSE_KEY not in metadata or CREATED_AT_KEY not in metadata:
            raise StoreError(
                f"record {episode_id!r} in namespace {namespace!r} was not written by an "
                "EpisodeStore"
            )
        return Episode(
            query=document,
            response=str(metadata[RESPONSE_KEY]),
            reward=metadata.get(REWARD_KEY),
            metadata={
                k: v for k, v in metadata.items() if not k.startswith(RESERVED_METADATA_PREFIX)
            },
            namespace=namespace,
            id=episode_id,
            created_at=datetime.fromisoformat(str(metadata[CREATED_AT_KEY])),
        )

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
                if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
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
        if self._collection(namespace) is None:  # opening it reads the recorded range
            return self.reward_range
        return self._ranges.get(namespace)

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
            collection = self._collection(namespace)
            if collection is None:
                continue
            by_id = {batch[r].id: r for r in ns_rows}
            with _chroma(f"look up ids in namespace {namespace!r}"):
                found = collection.get(
                    ids=list(by_id), include=["documents", "metadatas"]  # type: ignore[list-item]
                )
            for episode_id, document, metadata in zip(
                found["ids"], found["documents"] or [], found["metadatas"] or [], strict=True
            ):
                row = by_id[episode_id]
                if self._episode(episode_id, document, metadata, namespace) != batch[row]:
                    raise DuplicateEpisodeError(
                        f"episode id {episode_id!r} already exists in namespace {namespace!r} "
                        "and differs from the one given; use update_reward to change its "
                        "reward, or delete it first"
                    )
                stored.add(row)
        return [row for row in rows if row not in stored]

    def _write(
        self, batch: list[Episode], queries: np.ndarray, responses: np.ndarray, *, upsert: bool
    ) -> None:
        """Write the rows, grouped by namespace, in requests of Chroma's maximum batch size.

        On failure of an add, what this call may have written (the failed request included: it
        may have landed) is deleted again, retrying while Chroma is unreachable; the
        `StoreError` raised lists what may remain in `maybe_stored`.
        """
        groups: dict[str, list[int]] = {}
        for row, episode in enumerate(batch):
            groups.setdefault(episode.namespace, []).append(row)
        step = self._max_batch_size()
        attempted: list[tuple[Collection, list[str]]] = []
        created: list[str] = []
        try:
            for namespace, rows in groups.items():
                if self._collection(namespace) is None:
                    created.append(namespace)
                collection = self._collection(namespace, create=True)
                assert collection is not None
                write = collection.upsert if upsert else collection.add
                for start in range(0, len(rows), step):
                    chunk = rows[start : start + step]
                    ids = [batch[r].id for r in chunk]
                    attempted.append((collection, ids))
                    with _chroma(f"write episodes to namespace {namespace!r}"):
                        write(
                            ids=ids,
                            embeddings=queries[chunk],
                            documents=[batch[r].query for r in chunk],
                            metadatas=[
                                self._record_metadata(batch[r], responses[r]) for r in chunk
                            ],
                        )
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

    def _undo(self, attempted: list[tuple[Collection, list[str]]], created: list[str]) -> list[str]:
        """Delete the attempted ids and emptied new collections; return the ids that remain."""
        for delay in UNDO_BACKOFF_S:
            try:
                remaining: list[str] = []
                for collection, ids in attempted:
                    with _chroma("remove the episodes of a failed add"):
                        collection.delete(ids=ids)
                        remaining += collection.get(ids=ids, include=[])["ids"]
                for namespace in created if not remaining else []:
                    new = self._collections.get(namespace)
                    if new is not None and new.count() == 0:
                        self._drop_collection(namespace)
                logger.warning("add failed; removed what it had written")
                return remaining
            except Exception as exc:
                logger.warning("could not undo a failed add (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
        logger.error("could not undo a failed add; the store may hold part of it")
        return [episode_id for _, ids in attempted for episode_id in ids]

    def _drop_collection(self, namespace: str) -> None:
        self._collections.pop(namespace, None)
        with _chroma(f"delete the collection of namespace {namespace!r}"):
            self.client.delete_collection(self._chroma_name(namespace))

    def _fetch(
        self, ids: list[str], namespace: object, include: list[str]
    ) -> dict[str, tuple[str, Collection, dict[str, Any]]]:
        """Find every id: {id: (namespace, collection, record)}; raise if one is missing."""
        unique = list(dict.fromkeys(ids))
        found: dict[str, tuple[str, Collection, dict[str, Any]]] = {}
        for ns in self._resolve_namespaces(namespace):
            collection = self._collection(ns)
            if collection is None or not unique:
                continue
            with _chroma(f"get episodes from namespace {ns!r}"):
                result = collection.get(ids=unique, include=include)  # type: ignore[arg-type]
            for row, episode_id in enumerate(result["ids"]):
                if episode_id in found:
                    raise InvalidArgumentError(
                        f"episode id {episode_id!r} exists in namespaces {found[episode_id][0]!r} "
                        f"and {ns!r}; pass namespace="
                    )
                record = {key: result[key][row] for key in include}  # type: ignore[literal-required]
                found[episode_id] = (ns, collection, record)
        missing = [episode_id for episode_id in unique if episode_id not in found]
        if missing:
            where = "this store" if namespace is None else f"namespace {namespace!r}"
            raise EpisodeNotFoundError(f"no episode with id {missing[0]!r} in {where}")
        return found

    def get(self, ids: Sequence[str], namespace: str | None = None) -> list[Episode]:
        """The episodes with these ids, in the same order.

        Args:
            ids: Episode ids.
            namespace: Where to look; every namespace of the store if None.

        Raises:
            EpisodeNotFoundError: If an id is not stored (the message names it).
            InvalidArgumentError: If `namespace` is None and an id exists in two namespaces.
        """
        wanted = _check_ids(ids)
        found = self._fetch(wanted, namespace, ["documents", "metadatas"])
        return [
            self._episode(i, found[i][2]["documents"], found[i][2]["metadatas"], found[i][0])
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
        ids = _check_ids(list(rewards))
        values = [validate_reward(rewards[i]) for i in ids]
        with self._lock:
            found = self._fetch(ids, namespace, ["documents", "metadatas"])
            spaces = {found[i][0] for i in ids}
            if len(spaces) > 1:
                raise InvalidArgumentError(
                    f"update_rewards changes one namespace at a time, got {sorted(spaces)}"
                )
            for value in values:
                if value is not None:
                    check_reward_in_range(value, self._reward_range(found[ids[0]][0]))
            if ids:
                ns, collection, _ = found[ids[0]]
                with _chroma(f"update the rewards of {len(ids)} episodes of namespace {ns!r}"):
                    collection.update(
                        ids=ids,
                        metadatas=[{REWARD_KEY: v, RATED_KEY: v is not None} for v in values],
                    )
        return [
            dataclasses.replace(
                self._episode(i, found[i][2]["documents"], found[i][2]["metadatas"], found[i][0]),
                reward=value,
            )
            for i, value in zip(ids, values, strict=True)
        ]

    def delete(self, ids: Sequence[str], namespace: str | None = None) -> None:
        """Delete episodes; all of them or, if one is missing, none.

        Raises:
            EpisodeNotFoundError: If an id is not stored.
        """
        wanted = _check_ids(ids)
        with self._lock:
            found = self._fetch(wanted, namespace, [])
            by_namespace: dict[str, tuple[Collection, list[str]]] = {}
            for episode_id, (ns, collection, _) in found.items():
                by_namespace.setdefault(ns, (collection, []))[1].append(episode_id)
            for ns, (collection, ns_ids) in by_namespace.items():
                with _chroma(f"delete episodes from namespace {ns!r}"):
                    collection.delete(ids=ns_ids)
        logger.debug("deleted %d episodes", len(found))

    def delete_namespace(self, namespace: str) -> int:
        """Delete a namespace and all its episodes.

        Returns:
            How many episodes were deleted (0 if the namespace did not exist).
        """
        namespace = _check_namespace(namespace)
        with self._lock:
            collection = self._collection(namespace)
            if collection is None:
                return 0
            with _chroma(f"count namespace {namespace!r}"):
                count = collection.count()
            self._drop_collection(namespace)
        logger.info("deleted namespace %r (%d episodes)", namespace, count)
        return count

    def count(self, namespace: str | None = None) -> int:
        """Number of episodes in `namespace`, or in the whole store when None."""
        total = 0
        for ns in self._resolve_namespaces(namespace):
            collection = self._collection(ns)
            if collection is not None:
                with _chroma(f"count namespace {ns!r}"):
                    total += collection.count()
        return total

    def count_rated(self, namespace: str | None = None) -> int:
        """Number of rated episodes in `namespace`, or in the whole store when None."""
        total = 0
        for ns in self._resolve_namespaces(namespace):
            collection = self._collection(ns)
            if collection is not None:
                with _chroma(f"count rated episodes of namespace {ns!r}"):
                    total += len(collection.get(where={RATED_KEY: True}, include=[])["ids"])
        return total

    def vectors(
        self, ids: Sequence[str], namespace: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stored query and response embeddings of these episodes, in order (no embedding).

        Returns:
            Two float32 arrays of shape (len(ids), dimension); an empty response's is zeros.

        Raises:
            EpisodeNotFoundError: If an id is not stored.
        """
        wanted = _check_ids(ids)
        found = self._fetch(wanted, namespace, ["embeddings", "metadatas"])
        empty = np.zeros((0, self.dimension), dtype=np.float32)
        if not wanted:
            return empty, empty
        records = [found[i][2] for i in wanted]
        queries = np.stack([np.asarray(r["embeddings"], dtype=np.float32) for r in records])
        responses = np.stack([
            self._decode_vector(r["metadatas"][RESPONSE_EMBEDDING_KEY], i)
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
        ns = DEFAULT_NAMESPACE if namespace is None else _check_namespace(namespace)
        limit = optional(check_int, "limit", limit, low=1)
        offset = check_int("offset", offset, low=0)
        collection = self._collection(ns)
        if collection is None:
            return []
        with _chroma(f"list namespace {ns!r}"):
            page = collection.get(
                include=["documents", "metadatas"],  # type: ignore[list-item]
                limit=limit,
                offset=offset,
            )
        rows = zip(page["ids"], page["documents"] or [], page["metadatas"] or [], strict=True)
        return [self._episode(i, doc, meta, ns) for i, doc, meta in rows]

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
        collection = self._collection(ns)
        if collection is None:
            return []
        return self._query(collection, ns, self.embedder.query(query)[None, :], k, clean_where)

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
        collection = self._collection(ns)
        if collection is None:
            return []
        return self._query(collection, ns, matrix, k, clean_where)

    @staticmethod
    def _check_search(
        k: object, namespace: object, where: object
    ) -> tuple[int, str, dict[str, Any] | None]:
        return (
            check_int("k", k, low=1),
            DEFAULT_NAMESPACE if namespace is None else _check_namespace(namespace),
            _check_where(where),
        )

    def _query(
        self,
        collection: Collection,
        namespace: str,
        matrix: np.ndarray,
        k: int,
        where: dict[str, Any] | None,
    ) -> list[tuple[Episode, float]]:
        with _chroma(f"search namespace {namespace!r}"):
            result = collection.query(
                query_embeddings=matrix,
                n_results=k,
                where=where,
                include=["documents", "metadatas", "distances"],  # type: ignore[list-item]
            )
        documents = (result["documents"] or [[]])[0]
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        rows = zip(result["ids"][0], documents, metadatas, distances, strict=True)
        return [
            (self._episode(i, doc, meta, namespace), 1.0 - float(dist))
            for i, doc, meta, dist in rows
        ]

    # ----------------------------------------------------------------- training data

    def _rated_pages(
        self, namespaces: list[str], batch_size: int, since_ts: float | None
    ) -> Iterator[tuple[TrainingArrays, np.ndarray]]:
        """Pages of rated episodes with their creation timestamps; never embeds anything."""
        where = _rated_where(since_ts)
        for ns in namespaces:
            collection = self._collection(ns)
            offset = 0
            while collection is not None:
                with _chroma(f"read training data from namespace {ns!r}"):
                    page = collection.get(
                        where=where,  # type: ignore[arg-type]
                        include=["embeddings", "metadatas"],  # type: ignore[list-item]
                        limit=batch_size,
                        offset=offset,
                    )
                ids = page["ids"]
                if not ids:
                    break
                metadatas = page["metadatas"] or []
                arrays = TrainingArrays(
                    np.asarray(page["embeddings"], dtype=np.float32),
                    np.stack([
                        self._decode_vector(m[RESPONSE_EMBEDDING_KEY], i)
                        for i, m in zip(ids, metadatas, strict=True)
                    ]),
                    np.array([m[REWARD_KEY] for m in metadatas], dtype=np.float32),
                    tuple(ids),
                )
                yield arrays, np.array([m[CREATED_TS_KEY] for m in metadatas], dtype=np.float64)
                if len(ids) < batch_size:
                    break
                offset += len(ids)

    def _rated_ids(self, namespaces: list[str], since_ts: float | None) -> dict[str, list[str]]:
        """The ids of the rated episodes of each namespace (ids only: nothing else is read)."""
        found: dict[str, list[str]] = {}
        for ns in namespaces:
            collection = self._collection(ns)
            if collection is not None:
                with _chroma(f"list rated episodes of namespace {ns!r}"):
                    where = _rated_where(since_ts)
                    found[ns] = collection.get(where=where, include=[])["ids"]  # type: ignore[arg-type]
        return found

    def _recent_cutoff(self, namespaces: list[str], limit: int) -> float | None:
        """A creation time after which at least `limit` (and not many more) episodes are rated.

        Estimated from the timestamps of a random sample of the rated episodes, then checked
        by counting ids. None means: read everything (few episodes, or no cutoff found).
        """
        ids = self._rated_ids(namespaces, None)
        total = sum(len(v) for v in ids.values())
        if total <= limit + RECENT_SAMPLE:
            return None
        rng = np.random.default_rng(total)
        pool = [(ns, i) for ns, ns_ids in ids.items() for i in ns_ids]
        sample: dict[str, list[str]] = {}
        for row in rng.choice(total, size=RECENT_SAMPLE, replace=False):
            sample.setdefault(pool[row][0], []).append(pool[row][1])
        times: list[float] = []
        for ns, ns_ids in sample.items():
            collection = self._collection(ns)
            assert collection is not None
            with _chroma(f"sample creation times of namespace {ns!r}"):
                got = collection.get(ids=ns_ids, include=["metadatas"])  # type: ignore[list-item]
            times += [float(m[CREATED_TS_KEY]) for m in got["metadatas"] or []]  # type: ignore[arg-type]
        share = limit / total
        for margin in (1.5, 3.0, 6.0):
            keep = min(1.0, share * margin + 8 / RECENT_SAMPLE)
            if keep >= 1.0:
                return None
            cutoff = float(np.quantile(times, 1.0 - keep))
            if sum(len(v) for v in self._rated_ids(namespaces, cutoff).values()) >= limit:
                return cutoff
        return None

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
            _check_namespace(namespace)
        since_ts = None if since is None else (
            since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        ).timestamp()
        pages = self._rated_pages(self._resolve_namespaces(namespace), batch_size, since_ts)
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
        namespaces = self._resolve_namespaces(namespace)
        cutoff = None if limit is None else self._recent_cutoff(namespaces, limit)
        pages = list(self._rated_pages(namespaces, _TRAINING_PAGE, cutoff))
        if not pages:
            empty = np.zeros((0, self.dimension), dtype=np.float32)
            return TrainingArrays(empty, empty, np.zeros(0, dtype=np.float32))
        arrays = TrainingArrays.concatenate([p for p, _ in pages])
        order = np.argsort(np.concatenate([t for _, t in pages]), kind="stable")
        return arrays.subset(order if limit is None else order[-limit:])
