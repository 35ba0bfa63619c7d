"""How an `Episode` is stored as a Chroma record, and the checks of what reads ask for.

A record: the vector is the query embedding, the document is the query, and the metadata holds
the user's keys as given plus reserved ``kd_`` keys: the response text, the reward (absent when
not rated) and a ``kd_rated`` flag, the creation time (ISO string and POSIX timestamp), and the
response embedding (base64 of little-endian float32, returned bit for bit). A `Scope` names and
filters the records of namespaces sharing a bucket (tagged ids and keys: see `layout`). Chroma's
errors become `StoreError` through `chroma_call`.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from chromadb.api.models.Collection import Collection
from chromadb.api.types import validate_where
from chromadb.errors import NotFoundError

from langchain_kd_memory._validate import check_str
from langchain_kd_memory.episodes import MAX_TEXT_LENGTH, RESERVED_METADATA_PREFIX, Episode
from langchain_kd_memory.errors import (
    DuplicateEpisodeError,
    InvalidArgumentError,
    InvalidEpisodeError,
    KDMemoryError,
    StoreError,
)

# Reserved record metadata keys.
RESPONSE_KEY = "kd_response"
REWARD_KEY = "kd_reward"
RATED_KEY = "kd_rated"
CREATED_AT_KEY = "kd_created_at"
CREATED_TS_KEY = "kd_created_ts"
RESPONSE_EMBEDDING_KEY = "kd_response_emb"
NAMESPACE_KEY, TAG_KEY, TAG_LENGTH = "kd_ns", "kd_gen", 32  # records in a bucket

CHROMA_RESERVED_PREFIXES = ("#", "$", "chroma:")
"""Metadata keys Chroma keeps for itself (``#document``, ``$and``, ``chroma:document``)."""

INT64 = (-(2**63), 2**63 - 1)
"""The range of integers Chroma stores in metadata."""


def encode_vector(vector: np.ndarray) -> str:
    """A vector as base64 of little-endian float32 (`decode_vector` reads it back)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def check_search_query(query: object) -> str:
    """Return `query` if it is a usable search text, else raise `InvalidArgumentError`."""
    query = check_str("query", query)
    if len(query) > MAX_TEXT_LENGTH:
        raise InvalidArgumentError(
            f"query is {len(query):,} characters; the limit is {MAX_TEXT_LENGTH:,}: search with "
            "a shorter text (embedders read only the first few hundred tokens)"
        )
    return query


def check_storable(episode: Episode) -> None:
    """Raise `InvalidEpisodeError` if Chroma cannot store the episode's metadata."""
    for key, value in episode.metadata.items():
        if key.startswith(CHROMA_RESERVED_PREFIXES):
            raise InvalidEpisodeError(
                f"metadata key {key!r} of episode {episode.id!r} starts with a prefix Chroma "
                f"reserves ({', '.join(map(repr, CHROMA_RESERVED_PREFIXES))}): rename it"
            )
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            raise InvalidEpisodeError(
                f"metadata[{key!r}] of episode {episode.id!r} does not fit in 64 bits"
            )


def check_ids(ids: object) -> list[str]:
    """`ids` as a list if it is a sequence of non-empty str, else `InvalidArgumentError`."""
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidArgumentError(
            f"ids must be a list of str, got {type(ids).__name__}; wrap a single id in a list"
        )
    for episode_id in ids:
        if not isinstance(episode_id, str) or not episode_id.strip():
            raise InvalidArgumentError(f"every id must be a non-empty str, got {episode_id!r}")
    return list(ids)


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


def check_where(where: object) -> dict[str, Any] | None:
    """A user's `where` filter, checked: valid for Chroma and free of reserved keys."""
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


def rated_where(since_ts: float | None) -> dict[str, Any]:
    """The `where` filter of rated episodes, created at or after `since_ts` if given."""
    rated: dict[str, Any] = {RATED_KEY: True}
    return rated if since_ts is None else {"$and": [rated, {CREATED_TS_KEY: {"$gte": since_ts}}]}


def decode_vector(text: object, episode_id: str, dimension: int) -> np.ndarray:
    """A response embedding as `record_metadata` stored it; `StoreError` if it is corrupt."""
    try:
        vector = np.frombuffer(base64.b64decode(str(text), validate=True), dtype="<f4")
    except ValueError as exc:
        raise StoreError(f"episode {episode_id!r} has a corrupt response embedding") from exc
    if vector.shape != (dimension,):
        raise StoreError(
            f"episode {episode_id!r} has a response embedding of {vector.size} floats, "
            f"expected {dimension}"
        )
    return vector


def record_metadata(episode: Episode, response_vector: np.ndarray) -> dict[str, Any]:
    """The Chroma metadata of an episode's record (the user's keys and the reserved ones)."""
    metadata: dict[str, Any] = dict(episode.metadata)
    metadata[RESPONSE_KEY] = episode.response
    metadata[RATED_KEY] = episode.reward is not None
    if episode.reward is not None:
        metadata[REWARD_KEY] = episode.reward
    metadata[CREATED_AT_KEY] = episode.created_at.isoformat()
    metadata[CREATED_TS_KEY] = episode.created_at.timestamp()
    metadata[RESPONSE_EMBEDDING_KEY] = encode_vector(response_vector)
    return metadata


def episode_of(
    episode_id: str, document: str | None, metadata: Mapping[str, Any], namespace: str
) -> Episode:
    """The episode a record holds; `StoreError` if an EpisodeStore did not write it."""
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


class Gone(StoreError):
    """A collection was deleted (by another process) while this one used it."""


@contextlib.contextmanager
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

    def count(self, where: dict[str, Any] | None = None) -> int:
        """How many of these namespaces' records match `where` (all if None)."""
        if where is None and not self.tagged:
            return self.collection.count()
        return len(self.collection.get(where=self.where(where), include=[])["ids"])  # type: ignore[arg-type]

    def eid(self, chroma_id: str) -> str:
        """The episode id of a record id."""
        return chroma_id[TAG_LENGTH + 1 :] if self.tagged else chroma_id

    def namespace_of(self, chroma_id: str) -> str:
        """The namespace of a record id."""
        return self.owners if isinstance(self.owners, str) else self.owners[chroma_id[:TAG_LENGTH]]

    def chroma_ids(self, episode_ids: Sequence[str]) -> list[str]:
        """The record ids these episode ids would have in any of these namespaces."""
        if isinstance(self.owners, str):
            return list(episode_ids)
        return [f"{tag}:{i}" for tag in self.owners for i in episode_ids]

def unstored(collection: Collection, items: Sequence[tuple[str, Episode]]) -> list[int]:
    """Which (record id, episode) items `collection` does not hold; raise if one differs."""
    ids = [cid for cid, _ in items]
    got = collection.get(ids=ids, include=["documents", "metadatas"])  # type: ignore[list-item]
    stored = dict(zip(got["ids"], zip(got["documents"] or [], got["metadatas"] or [],
                                      strict=True), strict=True))
    for cid, episode in items:
        if cid in stored and episode_of(episode.id, *stored[cid], episode.namespace) != episode:
            raise DuplicateEpisodeError(
                f"episode id {episode.id!r} already exists in namespace {episode.namespace!r} "
                "and differs from the one given; use update_rewards to change its reward, or "
                "delete it first"
            )
    return [row for row, cid in enumerate(ids) if cid not in stored]
