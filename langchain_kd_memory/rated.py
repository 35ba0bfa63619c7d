"""Reading the rated episodes' stored vectors and rewards for training, page by page.

Nothing is embedded: the vectors are those `EpisodeStore.add` stored. `recent_cutoff` finds,
from a sample of creation times, a time after which about `limit` episodes are rated, so that a
capped read costs about `limit` records and not the whole history.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from langchain_kd_memory.episodes import TrainingArrays
from langchain_kd_memory.records import (
    CREATED_TS_KEY,
    RESPONSE_EMBEDDING_KEY,
    REWARD_KEY,
    Scope,
    decode_vector,
    rated_where,
)
from langchain_kd_memory.records import chroma_call as _chroma

RECENT_SAMPLE = 256
"""Creation times sampled to find which episodes are the most recent ones."""


def rated_pages(
    scopes: list[Scope],
    batch_size: int,
    since_ts: float | None,
    dimension: int,
) -> Iterator[tuple[TrainingArrays, np.ndarray]]:
    """Pages of rated episodes with their creation timestamps; never embeds anything.

    `dimension` is the store's: a stored response vector of another size is a `StoreError`.
    """
    for scope in scopes:
        where = scope.where(rated_where(since_ts))
        for offset in itertools.count(0, batch_size):
            with _chroma(f"read training data from {scope.collection.name!r}"):
                page = scope.collection.get(
                    where=where,  # type: ignore[arg-type]
                    include=["embeddings", "metadatas"],  # type: ignore[list-item]
                    limit=batch_size,
                    offset=offset,
                )
            ids = [scope.eid(i) for i in page["ids"]]
            if not ids:
                break
            metadatas = page["metadatas"] or []
            arrays = TrainingArrays(
                np.asarray(page["embeddings"], dtype=np.float32),
                np.stack([
                    decode_vector(m[RESPONSE_EMBEDDING_KEY], i, dimension)
                    for i, m in zip(ids, metadatas, strict=True)
                ]),
                np.array([m[REWARD_KEY] for m in metadatas], dtype=np.float32),
                tuple(ids),
            )
            yield arrays, np.array([m[CREATED_TS_KEY] for m in metadatas], dtype=np.float64)
            if len(ids) < batch_size:
                break


def rated_ids(scopes: list[Scope], since_ts: float | None) -> list[list[str]]:
    """The record ids of the rated episodes in each scope (ids only: nothing else is read)."""
    found = []
    for scope in scopes:
        with _chroma(f"list rated episodes of {scope.collection.name!r}"):
            where = scope.where(rated_where(since_ts))
            found.append(scope.collection.get(where=where, include=[])["ids"])  # type: ignore[arg-type]
    return found


def recent_cutoff(scopes: list[Scope], limit: int) -> float | None:
    """A creation time after which at least `limit` (and not many more) episodes are rated.

    Estimated from the timestamps of a random sample of the rated episodes, then checked
    by counting ids. None means: read everything (few episodes, or no cutoff found).
    """
    ids = rated_ids(scopes, None)
    total = sum(len(v) for v in ids)
    if total <= limit + RECENT_SAMPLE:
        return None
    rng = np.random.default_rng(total)
    pool = [(s, i) for s, scope_ids in enumerate(ids) for i in scope_ids]
    sample: dict[int, list[str]] = {}
    for row in rng.choice(total, size=RECENT_SAMPLE, replace=False):
        sample.setdefault(pool[row][0], []).append(pool[row][1])
    times: list[float] = []
    for s, chroma_ids in sample.items():
        with _chroma(f"sample creation times of {scopes[s].collection.name!r}"):
            got = scopes[s].collection.get(ids=chroma_ids, include=["metadatas"])  # type: ignore[list-item]
        times += [float(m[CREATED_TS_KEY]) for m in got["metadatas"] or []]  # type: ignore[arg-type]
    share = limit / total
    for margin in (1.5, 3.0, 6.0):
        keep = min(1.0, share * margin + 8 / RECENT_SAMPLE)
        if keep >= 1.0:
            return None
        cutoff = float(np.quantile(times, 1.0 - keep))
        if sum(len(v) for v in rated_ids(scopes, cutoff)) >= limit:
            return cutoff
    return None
