"""`EpisodeStore`: episodes in Chroma, isolated by namespace.

`EpisodeStore` validates what it is given and delegates: `records` says how an episode is stored
as a Chroma record, `layout` where each namespace lives and the protocol every read and write
follows (also across processes sharing a Chroma server), `rated` reads training data. These four
are the only modules that import `chromadb`.

``namespace=None`` means the store's namespace, "default", in every method; the methods that can
span every namespace take ``all_namespaces=True`` instead.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from langchain_core.embeddings import Embeddings

from langchain_kd_memory._validate import check_int, check_str, optional
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
from langchain_kd_memory.layout import BUCKETS, MOVE_AT, Layout, Place
from langchain_kd_memory.layout import encode_namespace as encode_namespace
from langchain_kd_memory.rated import rated_pages, recent_cutoff
from langchain_kd_memory.records import (
    RATED_KEY,
    RESPONSE_EMBEDDING_KEY,
    REWARD_KEY,
    Scope,
    check_ids,
    check_search_query,
    check_storable,
    check_where,
    decode_vector,
    episode_of,
    record_metadata,
    unstored,
)
from langchain_kd_memory.records import chroma_call as _chroma

logger = logging.getLogger(__name__)

__all__ = ["EpisodeStore", "encode_namespace", "http_client", "raise_open_file_limit"]

_COLLECTION_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{1,61}[a-zA-Z0-9]")
_TRAINING_PAGE = 1024
UNDO_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
"""Waits between attempts to remove what a failed add wrote (Chroma may be restarting)."""

Found = dict[str, tuple[str, dict[str, Any]]]  # episode id -> (namespace, record)
Vectors = Sequence[Sequence[float]] | np.ndarray | None


def http_client(host: str, port: int = 8000) -> ClientAPI:
    """A client for a Chroma server (``chroma run``), with telemetry off; pass it as `client=`.

    Raises:
        InvalidArgumentError: If `host` is blank or `port` is not in 1..65535.
        StoreError: If the server cannot be reached.
    """
    check_str("host", host)
    check_int("port", port, low=1, high=65535)
    with _chroma(f"connect to the Chroma server at {host}:{port}"):
        return chromadb.HttpClient(host=host, port=port,
                                   settings=Settings(anonymized_telemetry=False))


def raise_open_file_limit() -> None:
    """Raise this process's soft limit of open files to the hard limit (POSIX; else nothing).

    Embedded Chroma keeps ``RLIMIT_NOFILE // 5`` HNSW indexes open, as the limit was when its
    client started, and a read of an index it evicted fails or misses records: call this before
    creating a ``chromadb.PersistentClient`` yourself.
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
            return
        except (ValueError, OSError):
            continue


class EpisodeStore:
    """Episodes (query, response, reward, metadata) kept in Chroma, isolated by namespace.

    Queries and responses are embedded once, on `add`; search and training use the stored
    vectors. Every public method validates its input and leaves the store unchanged when it
    raises. Threads of one process are serialised by a lock; what several processes sharing a
    Chroma server are guaranteed is written at the top of `langchain_kd_memory.layout`.

    Setup, add, search, train:
        .. code-block:: python

            from langchain_kd_memory import Episode, EpisodeStore

            store = EpisodeStore(persist_directory="./memory")   # embedded, on disk
            # or: EpisodeStore(client=chromadb.HttpClient(host="localhost", port=8000))
            ids = store.add([Episode("How do I reset my password?", "Use the link.", reward=1.0)])
            store.update_reward(ids[0], 0.5)          # metadata only: no re-embedding
            for episode, similarity in store.search("forgot my password", k=3):
                print(round(similarity, 3), episode.reward, episode.response)
            arrays = store.training_arrays()   # query/response embeddings + rewards, rated only
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
        buckets: int = BUCKETS,
    ) -> None:
        """Open (or create on first write) a store.

        Args:
            collection_name: Prefix of this store's collections: 3-63 characters of
                ``[a-zA-Z0-9_-]``, starting and ending with a letter or digit.
            embeddings: Any LangChain `Embeddings`; the local MiniLM if None.
            persist_directory: The embedded Chroma database (default ``./.kd_memory``; see
                `raise_open_file_limit`); not with `client`.
            client: Any chromadb client (e.g. ``chromadb.HttpClient(...)``), used as is.
            reward_range: The lowest and highest possible reward, e.g. ``(0, 1)``. Each
                namespace keeps the range it was created with; a store declaring another one
                is refused.
            move_at: A namespace moves from its shared bucket to a collection of its own once
                it holds this many episodes (1: every namespace has its own).
            buckets: New namespaces are spread over this many shared collections by a hash of
                their name; raise it beyond ~150,000 episodes in small namespaces (a search in
                a bucket slows as it grows: BENCHMARKS.md, Scale).

        Raises:
            InvalidArgumentError: If an argument is unusable.
        """
        if not (isinstance(collection_name, str)
                and _COLLECTION_NAME_RE.fullmatch(collection_name)):
            raise InvalidArgumentError(
                "collection_name must be 3-63 characters of [a-zA-Z0-9_-] starting and ending "
                f"with a letter or digit, got {collection_name!r}"
            )
        if persist_directory is not None and client is not None:
            raise InvalidArgumentError("pass persist_directory or client, not both")
        self.reward_range = validate_reward_range(reward_range)
        self.collection_name = collection_name
        self.embedder = Embedder(embeddings)
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
        self._layout = Layout(client, collection_name, self.embedder.identity, self.reward_range,
                              check_int("move_at", move_at, low=1),
                              check_int("buckets", buckets, low=1))
        self._lock = self._layout.lock

    def __repr__(self) -> str:
        return f"EpisodeStore(collection_name={self.collection_name!r}, embedder={self.identity})"

    @property
    def embeddings(self) -> Embeddings:
        """The LangChain `Embeddings` this store embeds with."""
        return self.embedder.embeddings

    @property
    def identity(self) -> EmbedderIdentity:
        """Name and dimension of the embedder this store's vectors come from."""
        return self.embedder.identity

    @property
    def dimension(self) -> int:
        """Embedding dimension."""
        return self.identity.dimension

    @property
    def layout(self) -> Layout:
        """Where each namespace lives in Chroma (registry, buckets, own collections)."""
        return self._layout

    def namespaces(self) -> list[str]:
        """The namespaces of this store, sorted."""
        return self._layout.namespaces()

    def migrate(self) -> list[str]:
        """Register the collections of a store written by version 1 (a collection per namespace).

        Run it once (``kd-memory migrate``); nothing is copied. Returns the namespaces registered.
        """
        with self._lock:
            return self._layout.migrate()

    @staticmethod
    def _target(namespace: object, all_namespaces: object) -> str | None:
        """The namespace a call is about ("default" for None); None means every namespace."""
        if all_namespaces not in (True, False):
            raise InvalidArgumentError(f"all_namespaces must be a bool, got {all_namespaces!r}")
        if all_namespaces and namespace is not None:
            raise InvalidArgumentError("pass a namespace or all_namespaces=True, not both")
        if all_namespaces:
            return None
        return DEFAULT_NAMESPACE if namespace is None else validate_namespace(namespace)

    # ----------------------------------------------------------------- writes

    def check_episodes(self, episodes: object) -> list[Episode]:
        """Return `episodes` as a list if `add` would accept them, else raise; nothing is written.

        Checks Chroma's limits on metadata, ids repeated within a namespace, and rewards against
        their namespace's reward range: call it to refuse a batch before paying for embeddings.

        Raises:
            InvalidEpisodeError: An element is not an `Episode`, or its metadata is unstorable.
            DuplicateEpisodeError: An id repeats within a namespace in the batch.
            InvalidRewardError: A reward lies outside its namespace's reward range.
        """
        return self._check(episodes, every=False)[0]

    def _check(self, episodes: object,
               every: bool) -> tuple[list[Episode], dict[str, Place | None]]:
        """`check_episodes`, and where the namespaces of the batch (`every`) or its rated are."""
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
            check_storable(episode)
            if (episode.namespace, episode.id) in seen:
                raise DuplicateEpisodeError(
                    f"episode id {episode.id!r} appears twice in namespace "
                    f"{episode.namespace!r} in this batch"
                )
            seen.add((episode.namespace, episode.id))
        places = self._layout.places(
            episode.namespace for episode in episodes if every or episode.reward is not None)
        for episode in episodes:
            if episode.reward is not None:
                check_reward_in_range(episode.reward, self._reward_range(places[episode.namespace]))
        return list(episodes), places

    def _reward_range(self, place: Place | None) -> tuple[float, float] | None:
        """The reward range recorded at `place`, or the store's for a namespace not created."""
        return self.reward_range if place is None else place.reward_range

    def add(self, episodes: Sequence[Episode], *, query_embeddings: Vectors = None,
            response_embeddings: Vectors = None) -> list[str]:
        """Store episodes, all of them or none; returns their ids.

        Queries and non-empty responses are embedded in one batched call each, unless their
        embeddings are given (shape (n, dimension)); an empty response gets a zero vector. An
        episode stored already with identical fields is skipped (nothing is embedded for it), so
        retrying a failed add with the same `Episode` objects is safe.

        Raises:
            InvalidEpisodeError: If an element is not a valid `Episode`.
            DuplicateEpisodeError: If an id repeats within a namespace, or is stored there with
                other fields.
            EmbeddingDimensionError, EmbeddingError: If the embedder fails or an embedding has
                the wrong shape or is not finite.
            StoreError: If Chroma fails. What this call wrote is removed again; if Chroma is
                unreachable for that too, `error.maybe_stored` lists the ids that may have
                landed, and retrying the same batch completes it without duplicates.
        """
        embed = query_embeddings is None or response_embeddings is None
        batch, places = self._check(episodes, every=embed)
        rows = self._unstored(batch, places) if embed else list(range(len(batch)))
        if rows:
            queries, responses = self._vectors(batch, rows, query_embeddings, response_embeddings)
            with self._lock:
                self._write([batch[r] for r in rows], queries, responses, upsert=False)
        return [ep.id for ep in batch]

    def upsert(self, episodes: Sequence[Episode], *, query_embeddings: Vectors = None,
               response_embeddings: Vectors = None) -> list[str]:
        """Like `add`, but replacing episodes stored under the same id (atomically each)."""
        batch = self.check_episodes(episodes)
        rows = list(range(len(batch)))
        queries, responses = self._vectors(batch, rows, query_embeddings, response_embeddings)
        with self._lock:
            self._write(batch, queries, responses, upsert=True)
        return [ep.id for ep in batch]

    def _vectors(self, batch: list[Episode], rows: list[int], query_embeddings: Vectors,
                 response_embeddings: Vectors) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of `batch[rows]`: the given ones checked, the missing ones embedded."""
        if query_embeddings is None and response_embeddings is None:
            return self.embedder.episodes([batch[r] for r in rows])
        return (
            self.embedder.texts([batch[r].query for r in rows]) if query_embeddings is None
            else self.embedder.check(query_embeddings, len(batch), "query_embeddings")[rows],
            self.embedder.texts([batch[r].response for r in rows]) if response_embeddings is None
            else self.embedder.check(response_embeddings, len(batch), "response_embeddings")[rows],
        )

    def _unstored(self, batch: list[Episode], places: Mapping[str, Place | None]) -> list[int]:
        """The rows of `batch` not stored yet where their namespaces are (`places`)."""
        by_collection: dict[str, list[tuple[int, Place, Episode]]] = {}
        for row, episode in enumerate(batch):
            place = places[episode.namespace]
            if place is not None:
                by_collection.setdefault(place.collection.name, []).append((row, place, episode))
        stored: set[int] = set()
        for items in by_collection.values():
            with _chroma(f"look up ids in {items[0][1].collection.name!r}"):
                new = unstored(items[0][1].collection, [(p.cid(ep.id), ep) for _, p, ep in items])
            stored.update(item[0] for i, item in enumerate(items) if i not in new)
        return [row for row in range(len(batch)) if row not in stored]

    def _write(self, batch: list[Episode], queries: np.ndarray, responses: np.ndarray, *,
               upsert: bool) -> None:
        """Write the rows where their namespaces are (`Layout.write`); an add is all or none.

        When an add fails, what it may have written (the failed request included) is deleted,
        retrying while Chroma is unreachable; the `StoreError` lists what may remain.
        """
        rows: dict[str, list[tuple[Episode, np.ndarray, np.ndarray]]] = {}
        for item in zip(batch, queries, responses, strict=True):
            rows.setdefault(item[0].namespace, []).append(item)
        written: list[tuple[Collection, list[str], list[str]]] = []
        created: list[Place] = []

        def put(collection: Collection, pairs: list[tuple[Place, Any]]) -> None:
            if not upsert:  # checked where the namespace is now, a redone write included
                pairs = [pairs[i] for i in unstored(collection, [(p.cid(it[0].id), it[0])
                                                                 for p, it in pairs])]
            if pairs:
                ids = [place.cid(episode.id) for place, (episode, _, _) in pairs]
                written.append((collection, ids, [episode.id for _, (episode, _, _) in pairs]))
                collection.upsert(
                    ids=ids, embeddings=np.stack([q for _, (_, q, _) in pairs]),
                    documents=[episode.query for _, (episode, _, _) in pairs],
                    metadatas=[{**record_metadata(episode, r), **place.tags()}
                               for place, (episode, _, r) in pairs],
                )

        try:
            self._layout.write(rows, put, create=True, action="write episodes", created=created)
        except (StoreError, DuplicateEpisodeError) as exc:
            if upsert:
                raise
            remaining = self._undo(written, created)
            if remaining and isinstance(exc, StoreError):
                raise StoreError(
                    f"{exc}; {len(remaining)} of its episodes may be stored (Chroma could not "
                    "be reached to remove them): retry add() with the same Episode objects, "
                    "which skips the ones stored, or delete error.maybe_stored",
                    maybe_stored=remaining,
                ) from exc
            raise

    def _undo(self, written: list[tuple[Collection, list[str], list[str]]],
              created: list[Place]) -> list[str]:
        """`Layout.undo` until Chroma answers; the episode ids that may remain."""
        left = {cid for _, cids, _ in written for cid in cids}
        for delay in UNDO_BACKOFF_S:
            try:
                left = set(self._layout.undo([(c, cids) for c, cids, _ in written], created))
                logger.warning("add failed; removed what it had written")
                break
            except StoreError as exc:
                logger.warning("could not undo a failed add (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
        return list(dict.fromkeys(eid for _, cids, eids in written
                                  for cid, eid in zip(cids, eids, strict=True) if cid in left))

    def update_reward(self, episode_id: str, reward: float | None, namespace: str | None = None,
                      *, all_namespaces: bool = False) -> Episode:
        """Set (or, with None, clear) an episode's reward: `update_rewards` of one episode."""
        return self.update_rewards({episode_id: reward}, namespace,
                                   all_namespaces=all_namespaces)[0]

    def update_rewards(self, rewards: Mapping[str, float | None], namespace: str | None = None,
                       *, all_namespaces: bool = False) -> list[Episode]:
        """Set the rewards ({id: reward, or None: not rated}) of episodes of one namespace.

        All or none, of any number; the stored vectors are untouched. Looks in `namespace`
        ("default" if None), or in every namespace with `all_namespaces` (they must share one).
        Returns the updated episodes, in the order of `rewards`.

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
        target = self._target(namespace, all_namespaces)
        with self._lock:
            found = self._fetch(ids, target, ["documents", "metadatas"])
            spaces = sorted({found[i][0] for i in ids})
            if len(spaces) > 1:
                raise InvalidArgumentError(
                    f"update_rewards changes one namespace at a time, got {spaces}"
                )
            for ns in spaces:
                reward_range = self._reward_range(self._layout.place(ns))
                for value in values:
                    if value is not None:
                        check_reward_in_range(value, reward_range)
                metadatas = [{REWARD_KEY: v, RATED_KEY: v is not None} for v in values]
                self._layout.write(
                    {ns: list(zip(ids, metadatas, strict=True))},
                    lambda c, pairs: c.update(ids=[p.cid(i) for p, (i, _) in pairs],
                                              metadatas=[m for _, (_, m) in pairs]),
                    create=False, action=f"update the rewards of {len(ids)} episodes",
                )
        return [dataclasses.replace(episode, reward=value)
                for episode, value in zip(self._episodes(found, ids), values, strict=True)]

    def delete(self, ids: Sequence[str], namespace: str | None = None, *,
               all_namespaces: bool = False) -> None:
        """Delete episodes of `namespace` ("default" if None; any with `all_namespaces`).

        Raises:
            EpisodeNotFoundError: If an id is not stored (then nothing is deleted).
        """
        wanted = check_ids(ids)
        target = self._target(namespace, all_namespaces)
        with self._lock:
            found = self._fetch(wanted, target, [])
            by_namespace: dict[str, list[str]] = {}
            for episode_id, (ns, _) in found.items():
                by_namespace.setdefault(ns, []).append(episode_id)
            self._layout.write(
                by_namespace, lambda c, pairs: c.delete(ids=[p.cid(i) for p, i in pairs]),
                create=False, action="delete episodes",
            )

    def delete_namespace(self, namespace: str) -> int:
        """Delete a namespace and all its episodes; how many there were (0 if none)."""
        namespace = validate_namespace(namespace)
        with self._lock:
            count = self._layout.drop(namespace)
        logger.info("deleted namespace %r (%d episodes)", namespace, count)
        return count

    # ----------------------------------------------------------------- reads

    def _fetch(self, ids: list[str], namespace: str | None, include: list[str]) -> Found:
        """Find every id in `namespace` (every namespace if None); raise if one is missing."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}
        if namespace is None:
            found: Found = {}
            for scope in self._layout.scopes():
                self._get_in(scope, unique, include, found)
        else:
            found = self._layout.read(
                namespace, lambda place: self._get_in(place.scope, unique, include, {}), {},
                complete=lambda got: len(got) == len(unique),
            )
        missing = [episode_id for episode_id in unique if episode_id not in found]
        if missing:
            where = "this store" if namespace is None else f"namespace {namespace!r}"
            raise EpisodeNotFoundError(f"no episode with id {missing[0]!r} in {where}")
        return found

    def _get_in(self, scope: Scope, episode_ids: list[str], include: list[str],
                found: Found) -> Found:
        """Add the records of `scope` with these episode ids to `found` (chunked); return it."""
        chroma_ids = scope.chroma_ids(episode_ids)
        step = self._layout.max_batch()
        for start in range(0, len(chroma_ids), step):
            with _chroma(f"get episodes from {scope.collection.name!r}"):
                got = scope.collection.get(ids=chroma_ids[start : start + step],
                                           include=include)  # type: ignore[arg-type]
            for row, chroma_id in enumerate(got["ids"]):
                episode_id, ns = scope.eid(chroma_id), scope.namespace_of(chroma_id)
                if episode_id in found and found[episode_id][0] != ns:
                    raise InvalidArgumentError(
                        f"episode id {episode_id!r} exists in namespaces {found[episode_id][0]!r} "
                        f"and {ns!r}; pass namespace="
                    )
                found[episode_id] = (ns, {key: got[key][row] for key in include})  # type: ignore[literal-required]
        return found

    def get(self, ids: Sequence[str], namespace: str | None = None, *,
            all_namespaces: bool = False) -> list[Episode]:
        """The episodes with these ids, in order, from `namespace` ("default" if None) or any.

        Raises:
            EpisodeNotFoundError: If an id is not stored (the message names it).
            InvalidArgumentError: With `all_namespaces`, if an id exists in two namespaces.
        """
        wanted = check_ids(ids)
        found = self._fetch(wanted, self._target(namespace, all_namespaces),
                            ["documents", "metadatas"])
        return self._episodes(found, wanted)

    @staticmethod
    def _episodes(found: Found, ids: list[str]) -> list[Episode]:
        """The episodes of `ids` from what `_fetch` found with their documents and metadatas."""
        return [episode_of(i, found[i][1]["documents"], found[i][1]["metadatas"], found[i][0])
                for i in ids]

    def count(self, namespace: str | None = None, *, all_namespaces: bool = False) -> int:
        """Number of episodes in `namespace` ("default" if None), or in every namespace."""
        return self._count(self._target(namespace, all_namespaces), None)

    def count_rated(self, namespace: str | None = None, *, all_namespaces: bool = False) -> int:
        """Number of rated episodes in `namespace` ("default" if None), or in every namespace."""
        return self._count(self._target(namespace, all_namespaces), {RATED_KEY: True})

    @staticmethod
    def _count_in(scope: Scope, where: dict[str, Any] | None) -> int:
        with _chroma(f"count episodes in {scope.collection.name!r}"):
            return scope.count(where)

    def _count(self, namespace: str | None, where: dict[str, Any] | None) -> int:
        if namespace is None:
            return sum(self._count_in(scope, where) for scope in self._layout.scopes())
        return self._layout.read(namespace, lambda place: self._count_in(place.scope, where), 0)

    def vectors(self, ids: Sequence[str], namespace: str | None = None, *,
                all_namespaces: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The stored query and response embeddings of these episodes (no embedding).

        Two float32 arrays of shape (len(ids), dimension); an empty response's is zeros.
        `EpisodeNotFoundError` if an id is not stored.
        """
        wanted = check_ids(ids)
        found = self._fetch(wanted, self._target(namespace, all_namespaces),
                            ["embeddings", "metadatas"])
        if not wanted:
            empty = np.zeros((0, self.dimension), dtype=np.float32)
            return empty, empty
        records = [found[i][1] for i in wanted]
        return (
            np.stack([np.asarray(r["embeddings"], dtype=np.float32) for r in records]),
            np.stack([decode_vector(r["metadatas"][RESPONSE_EMBEDDING_KEY], i, self.dimension)
                      for i, r in zip(wanted, records, strict=True)]),
        )

    def list_episodes(self, namespace: str | None = None, *, limit: int | None = None,
                      offset: int = 0) -> list[Episode]:
        """The episodes of `namespace` ("default" if None) in storage order, paged.

        `limit` of them (all if None) after skipping `offset`.
        """
        ns = str(self._target(namespace, False))
        limit = optional(check_int, "limit", limit, low=1)
        offset = check_int("offset", offset, low=0)

        def page(place: Place) -> list[Episode]:
            scope = place.scope
            with _chroma(f"list namespace {ns!r}"):
                got = scope.collection.get(where=scope.where(), limit=limit, offset=offset,  # type: ignore[arg-type]
                                           include=["documents", "metadatas"])  # type: ignore[list-item]
            rows = zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
            return [episode_of(scope.eid(i), doc, meta, ns) for i, doc, meta in rows]

        return self._layout.read(ns, page, [])

    # ----------------------------------------------------------------- search

    def search(self, query: str, k: int = 4, namespace: str | None = None,
               where: Mapping[str, Any] | None = None) -> list[tuple[Episode, float]]:
        """The (episode, cosine similarity) pairs of the `k` queries most similar to `query`.

        Args:
            query: Text to search for.
            k: How many episodes to return at most.
            namespace: Namespace to search; "default" if None (absent or empty: []).
            where: Optional Chroma filter on *user* metadata, e.g. ``{"topic": "billing"}``
                or ``{"$and": [{"lang": "en"}, {"score": {"$gte": 3}}]}``; keys with the
                reserved prefix "kd_" (the store's own fields) are refused.

        Raises:
            InvalidArgumentError: If `query` is blank, `k` < 1 or `where` is malformed.
        """
        check_search_query(query)
        if self._layout.place(self._check_search(k, namespace, where)[1]) is None:
            return []  # nothing to embed the query for
        return self.search_by_vector(self.embedder.query(query), k, namespace, where)

    def search_by_vector(self, embedding: Sequence[float] | np.ndarray, k: int = 4,
                         namespace: str | None = None,
                         where: Mapping[str, Any] | None = None) -> list[tuple[Episode, float]]:
        """Like `search`, for a query that is already embedded (with this store's embedder).

        Raises:
            EmbeddingDimensionError: If `embedding` has the wrong dimension.
            EmbeddingError: If `embedding` is not a finite vector.
        """
        k, ns, clean_where = self._check_search(k, namespace, where)
        matrix = self.embedder.check([embedding], 1, "embedding")

        def query(place: Place) -> list[tuple[Episode, float]]:
            scope = place.scope
            with _chroma(f"search namespace {ns!r}"):
                got = scope.collection.query(
                    query_embeddings=matrix, n_results=k, where=scope.where(clean_where),  # type: ignore[arg-type]
                    include=["documents", "metadatas", "distances"],  # type: ignore[list-item]
                )
            rows = zip(got["ids"][0], (got["documents"] or [[]])[0],
                       (got["metadatas"] or [[]])[0], (got["distances"] or [[]])[0], strict=True)
            return [(episode_of(scope.eid(i), doc, meta, ns), 1.0 - float(dist))
                    for i, doc, meta, dist in rows]

        return self._layout.read(ns, query, [])

    def _check_search(self, k: object, namespace: object,
                      where: object) -> tuple[int, str, dict[str, Any] | None]:
        return check_int("k", k, low=1), str(self._target(namespace, False)), check_where(where)

    # ----------------------------------------------------------------- training data

    def _training_scopes(self, namespace: str | None) -> list[Scope]:
        """Where the rated episodes of `namespace` (every namespace when None) are read from."""
        if namespace is None:
            return self._layout.scopes()
        rated = {RATED_KEY: True}
        return self._layout.read(
            namespace, lambda place: [place.scope] if self._count_in(place.scope, rated) else [],
            [])

    def training_batches(self, namespace: str | None = None, batch_size: int = _TRAINING_PAGE,
                         since: datetime | None = None, *,
                         all_namespaces: bool = False) -> Iterator[TrainingArrays]:
        """Stream the stored embeddings and rewards of rated episodes, `batch_size` at a time.

        Of `namespace` ("default" if None) or every namespace, created at or after `since`
        (naive: UTC) if given. Pages are consistent only if nothing is deleted meanwhile.
        """
        batch_size = check_int("batch_size", batch_size, low=1)
        if since is not None and not isinstance(since, datetime):
            raise InvalidArgumentError(f"since must be a datetime or None, got {since!r}")
        scopes = self._training_scopes(self._target(namespace, all_namespaces))
        since_ts = None if since is None else (
            since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        ).timestamp()
        return (arrays for arrays, _ in rated_pages(scopes, batch_size, since_ts, self.dimension))

    def training_arrays(self, namespace: str | None = None, limit: int | None = None, *,
                        all_namespaces: bool = False) -> TrainingArrays:
        """The rated episodes' stored embeddings and rewards, oldest first (maybe zero rows).

        Of `namespace` ("default" if None) or every namespace; with `limit`, the `limit` most
        recent (by `created_at`), reading only about that many records.
        """
        limit = optional(check_int, "limit", limit, low=1)
        scopes = self._training_scopes(self._target(namespace, all_namespaces))
        cutoff = None if limit is None else recent_cutoff(scopes, limit)
        pages = list(rated_pages(scopes, _TRAINING_PAGE, cutoff, self.dimension))
        if not pages:
            empty = np.zeros((0, self.dimension), dtype=np.float32)
            return TrainingArrays(empty, empty, np.zeros(0, dtype=np.float32))
        arrays = TrainingArrays.concatenate([p for p, _ in pages])
        order = np.argsort(np.concatenate([t for _, t in pages]), kind="stable")
        return arrays.subset(order if limit is None else order[-limit:])
