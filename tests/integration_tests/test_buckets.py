"""Guarantees of the bucket layout (`langchain_kd_memory.buckets`), against real Chroma.

* Namespaces sharing a bucket never see each other's records, through any read or write.
* A namespace that reaches `move_at` records moves to a collection of its own and keeps every
  record, id, field and vector; stores that cached the old place find it.
* Namespaces that grow in a crowded bucket move to a bucket with room, the same way; a move a
  killed process left half-done is finished by the next writer.
* A namespace deleted and created again starts empty, even if records of the old one remain.
* A format-1 store (one collection per namespace, no registry) opens, reads unchanged and
  takes writes.
* Processes creating the same namespace at once agree on one place; every write lands.

Every namespace holds the same questions (same vectors), so similarity alone would mix them.
The embedder is a cheap deterministic one: a text's vector comes from its hash.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.api import ClientAPI
from chromadb.config import Settings
from langchain_core.embeddings import Embeddings

from langchain_kd_memory.embeddings import EmbedderIdentity
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import (
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidRewardError,
)
from langchain_kd_memory.storage import EpisodeStore, encode_namespace

DIM = 384
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)
_numbers = itertools.count()


class TextVectors(Embeddings):
    """A unit vector per text, drawn from a generator seeded by the text's hash."""

    identity = EmbedderIdentity("test-text-vectors", DIM)

    @staticmethod
    def vector(text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        row = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return [float(x) for x in row / np.linalg.norm(row)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.vector(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.vector(text)


def new_name() -> str:
    return f"bk{next(_numbers):03d}{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_store(chroma_client: ClientAPI) -> Any:
    def make(name: str | None = None, **kwargs: Any) -> EpisodeStore:
        return EpisodeStore(name or new_name(), embeddings=TextVectors(), client=chroma_client,
                            **kwargs)

    return make


def raw_collections(store: EpisodeStore) -> dict[str, Any]:
    return {
        c.name: store.client.get_collection(c.name, embedding_function=None)
        for c in store.client.list_collections()
        if c.name.startswith(f"{store.collection_name}.")
    }


def raw_state(client: ClientAPI, prefix: str) -> dict[str, Any]:
    """Every collection of `prefix` with its metadata and records, byte for byte."""
    state: dict[str, Any] = {}
    for listed in client.list_collections():
        if not listed.name.startswith(f"{prefix}."):
            continue
        raw = client.get_collection(listed.name, embedding_function=None)
        got = raw.get(include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
        state[listed.name] = (
            raw.metadata, got["ids"], got["documents"], got["metadatas"],
            np.asarray(got["embeddings"], dtype=np.float32).tobytes(),
        )
    return state


def registry_records(store: EpisodeStore) -> dict[str, dict[str, Any]]:
    registry = store.client.get_collection(f"{store.collection_name}.registry",
                                           embedding_function=None)
    got = registry.get(include=["metadatas"])  # type: ignore[list-item]
    return dict(zip(got["ids"], got["metadatas"], strict=True))


def episodes_of(namespace: str, count: int, start: int = 0) -> list[Episode]:
    """The same questions in every namespace; answers, metadata and rewards name the owner."""
    return [
        Episode(f"question {j}", f"{namespace} answer {j}",
                reward=None if j % 4 == 3 else (j % 4) / 3,
                metadata={"owner": namespace, "j": j}, namespace=namespace, id=f"e{j}",
                created_at=T0 + timedelta(minutes=j))
        for j in range(start, start + count)
    ]


# ---------------------------------------------------------------- sharing a bucket

SHARED = ["user/1", "user/10", "user_2f1", "user.1", "user", *[f"u{i}" for i in range(25)]]


def test_namespaces_sharing_a_bucket_never_see_each_other(make_store: Any) -> None:
    store = make_store()
    for namespace in SHARED:
        store.add(episodes_of(namespace, 4))
    name = store.collection_name
    assert sorted(raw_collections(store)) == [f"{name}.b.0", f"{name}.registry"]
    places = {ns: store.layout.place(ns) for ns in SHARED}
    assert {p.collection.name for p in places.values()} == {f"{name}.b.0"}
    assert len({p.tag for p in places.values()}) == len(SHARED)

    assert store.count() == 4 * len(SHARED) and store.count_rated() == 3 * len(SHARED)
    ids = [f"e{j}" for j in range(4)]
    for namespace in SHARED:
        assert store.count(namespace) == 4 and store.count_rated(namespace) == 3
        assert store.get(ids, namespace=namespace) == episodes_of(namespace, 4)
        assert sorted(e.id for e in store.list_episodes(namespace)) == ids
        assert {e.namespace for e in store.list_episodes(namespace)} == {namespace}
        hits = store.search("question 0", k=50, namespace=namespace)
        assert len(hits) == 4 and {e.response.split()[0] for e, _ in hits} == {namespace}
        filtered = store.search("question 0", k=50, namespace=namespace, where={"j": 2})
        assert [(e.namespace, e.id) for e, _ in filtered] == [(namespace, "e2")]
        assert len(store.training_arrays(namespace)) == 3
        queries, _ = store.vectors(ids, namespace=namespace)
        np.testing.assert_allclose(queries[0], TextVectors.vector("question 0"), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="exists in namespaces"):
        store.get(["e0"])  # ambiguous without a namespace

    # Writes touch their namespace only.
    store.update_rewards({"e3": 1.0, "e0": None}, namespace="user/1")
    assert store.get(["e3", "e0"], namespace="user/1")[0].reward == 1.0
    assert store.get(["e3", "e0"], namespace="user/1")[1].reward is None
    for namespace in SHARED[1:]:
        assert store.get(["e0", "e3"], namespace=namespace) == [
            episodes_of(namespace, 4)[0], episodes_of(namespace, 4)[3]
        ]
        assert store.count_rated(namespace) == 3
    store.delete(["e1"], namespace="user/10")
    assert store.count("user/10") == 3
    with pytest.raises(EpisodeNotFoundError):
        store.get(["e1"], namespace="user/10")
    assert store.get(["e1"], namespace="user/1")[0].response == "user/1 answer 1"
    assert store.delete_namespace("user.1") == 4
    assert "user.1" not in store.namespaces()
    for namespace in SHARED:
        if namespace not in ("user/10", "user.1"):
            assert store.count(namespace) == 4
    assert store.count() == 4 * len(SHARED) - 5

    # In the bucket, each record carries the tag of the namespace it belongs to.
    records = registry_records(store)
    tags = {m["kd_gen"]: i[2:] for i, m in records.items() if i.startswith("n:")}
    got = raw_collections(store)[f"{name}.b.0"].get(include=["metadatas"])
    for chroma_id, meta in zip(got["ids"], got["metadatas"], strict=True):
        assert chroma_id.startswith(meta["kd_gen"] + ":")
        assert tags[meta["kd_gen"]] == meta["kd_ns"] == meta["owner"]


def test_a_full_bucket_opens_the_next_one(make_store: Any) -> None:
    store = make_store(bucket_capacity=10)
    for i in range(6):
        store.add(episodes_of(f"n{i}", 4))
    buckets = {store.layout.place(f"n{i}").collection.name for i in range(6)}
    assert len(buckets) >= 2
    for i in range(6):
        assert store.get([f"e{j}" for j in range(4)], namespace=f"n{i}") == episodes_of(f"n{i}", 4)
    assert store.count() == 24


# ---------------------------------------------------------------- moving out


def test_a_namespace_moves_at_the_threshold_and_keeps_everything(make_store: Any) -> None:
    store = make_store(move_at=20)
    name = store.collection_name
    store.add(episodes_of("small", 12))
    store.add(episodes_of("big", 19))
    before = store.layout.place("big")
    assert before.tag is not None and before.collection.name == f"{name}.b.0"
    old_vectors = store.vectors([f"e{j}" for j in range(19)], namespace="big")
    stale = make_store(name, move_at=20)  # another process, which cached the bucket place
    assert stale.count("big") == 19

    store.add(episodes_of("big", 1, start=19))  # the 20th record: the namespace moves
    after = store.layout.place("big")
    assert after.tag is None and after.collection.name == f"{name}.ns.big"
    assert store.layout.moves == 1
    ids = [f"e{j}" for j in range(20)]
    raw = raw_collections(store)
    own = raw[f"{name}.ns.big"].get(include=["metadatas"])
    assert sorted(own["ids"]) == sorted(ids)  # episode ids, untagged
    assert not any("kd_ns" in m or "kd_gen" in m for m in own["metadatas"])
    assert raw[f"{name}.b.0"].get(where={"kd_ns": "big"})["ids"] == []
    assert len(raw[f"{name}.b.0"].get(where={"kd_ns": "small"})["ids"]) == 12
    assert registry_records(store)["n:big"]["kd_place"] == "own"

    assert store.get(ids, namespace="big") == episodes_of("big", 20)
    queries, responses = store.vectors(ids[:19], namespace="big")
    np.testing.assert_allclose(queries, old_vectors[0], atol=1e-6)
    assert responses.tobytes() == old_vectors[1].tobytes()
    assert store.get([f"e{j}" for j in range(12)], namespace="small") == episodes_of("small", 12)
    assert store.count() == 32

    # The store that cached the bucket place finds the moved namespace, and writes there.
    assert stale.count("big") == 20
    assert stale.get(ids, namespace="big") == episodes_of("big", 20)
    stale.add(episodes_of("big", 1, start=20))
    stale.update_rewards({"e0": 1.0}, namespace="big")
    assert raw[f"{name}.b.0"].get(where={"kd_ns": "big"})["ids"] == []
    assert store.count("big") == 21 and store.get(["e0"], namespace="big")[0].reward == 1.0
    reopened = make_store(name, move_at=20)
    assert reopened.namespaces() == ["big", "small"] and reopened.count() == 33


def test_a_namespace_whose_first_write_is_large_starts_in_its_own_collection(
    make_store: Any,
) -> None:
    store = make_store(move_at=20)
    store.add(episodes_of("bulk", 25))
    assert store.layout.place("bulk").tag is None
    assert sorted(raw_collections(store)) == [
        f"{store.collection_name}.ns.bulk", f"{store.collection_name}.registry"
    ]
    assert store.count("bulk") == 25 and store.layout.moves == 0


def test_namespaces_growing_in_a_crowded_bucket_move_to_buckets_with_room(
    make_store: Any,
) -> None:
    """Five namespaces placed in bucket 0 while small grow to 12 records each: a bucket over
    2 x capacity (40) sends each writer of 8 records or more to a bucket with room. (Before:
    bucket 0 grew to 60 and nothing moved.)"""
    store = make_store(move_at=64, bucket_capacity=20)
    name = store.collection_name
    names = [f"grow{i}" for i in range(5)]
    for ns in names:
        store.add(episodes_of(ns, 4))
    assert {store.layout.place(ns).collection.name for ns in names} == {f"{name}.b.0"}
    first_tags = {ns: store.layout.place(ns).tag for ns in names}
    stale = make_store(name, move_at=64, bucket_capacity=20)
    assert [stale.count(ns) for ns in names] == [4] * 5  # caches bucket 0 as their place
    for j in range(4, 12):
        for ns in names:
            store.add(episodes_of(ns, 1, start=j))

    raw = raw_collections(store)
    assert not [c for c in raw if ".ns." in c or ".nh." in c]  # no namespace got its own
    sizes = {c: raw[c].count() for c in raw if ".b." in c}
    assert max(sizes.values()) <= 40 and sum(sizes.values()) == 60, sizes
    assert store.layout.moves >= 1
    records = registry_records(store)
    moved = [ns for ns in names if records[f"n:{ns}"]["kd_bucket"] != 0]
    assert moved
    for ns in moved:
        place = store.layout.place(ns)
        assert place.tag == records[f"n:{ns}"]["kd_gen"] != first_tags[ns]  # a new tag
        assert raw[f"{name}.b.0"].get(where={"kd_ns": ns})["ids"] == []
        ids = place.collection.get(where={"kd_ns": ns})["ids"]
        assert sorted(ids) == sorted(f"{place.tag}:e{j}" for j in range(12))
    for ns in names:
        assert store.get([f"e{j}" for j in range(12)], namespace=ns) == episodes_of(ns, 12)
        hits = store.search_by_vector(TextVectors.vector("question 3"), k=20, namespace=ns)
        assert {ep.metadata["owner"] for ep, _ in hits} == {ns} and len(hits) == 12
    assert store.count() == 60

    # A store that cached the old place reads and writes where the namespace is now.
    ns = moved[0]
    assert stale.get([f"e{j}" for j in range(12)], namespace=ns) == episodes_of(ns, 12)
    stale.add(episodes_of(ns, 1, start=12))
    stale.update_rewards({"e0": 1.0}, namespace=ns)
    assert store.count(ns) == 13 and store.get(["e0"], namespace=ns)[0].reward == 1.0
    assert raw[f"{name}.b.0"].get(where={"kd_ns": ns})["ids"] == []
    assert make_store(name, move_at=64, bucket_capacity=20).count() == 61


def test_a_bucket_with_more_deleted_than_live_records_moves_its_namespaces_out(
    make_store: Any,
) -> None:
    """Two namespaces of a bucket move to their own collections (20 records deleted there, 6
    left, capacity 30): the bucket's index keeps the deleted nodes, so its last two namespaces
    move to a fresh bucket, keeping every record, and new namespaces never go back to it."""
    store = make_store(move_at=10, bucket_capacity=30)
    name = store.collection_name
    stale = make_store(name, move_at=10, bucket_capacity=30)
    for ns, count in [("stay0", 3), ("stay1", 3), ("big0", 9), ("big1", 9)]:
        store.add(episodes_of(ns, count))
    assert [stale.count(ns) for ns in ("stay0", "stay1")] == [3, 3]  # caches bucket 0
    store.add(episodes_of("big0", 1, start=9))  # moves out: 10 deleted (< 15), 14 left
    assert store.layout.place("stay0").bucket == 0
    store.add(episodes_of("big1", 1, start=9))  # moves out: 20 deleted, 6 left: rebuild

    raw = raw_collections(store)
    assert raw[f"{name}.b.0"].count() == 0
    assert raw[f"{name}.b.0"].metadata["kd_deleted"] == 26
    records = registry_records(store)
    for ns in ("stay0", "stay1"):
        assert records[f"n:{ns}"]["kd_bucket"] == 1 and records[f"n:{ns}"]["kd_place"] == "bucket"
        assert store.get(["e0", "e1", "e2"], namespace=ns) == episodes_of(ns, 3)
        assert stale.get(["e0", "e1", "e2"], namespace=ns) == episodes_of(ns, 3)
    for ns in ("big0", "big1"):
        assert store.layout.place(ns).tag is None and store.count(ns) == 10
    assert raw[f"{name}.b.1"].count() == 6 and store.count() == 26
    store.add(episodes_of("later", 2))
    assert store.layout.place("later").bucket == 1


def test_a_move_left_half_done_by_a_killed_process_is_finished_by_the_next_writer(
    make_store: Any,
) -> None:
    """The registry says ``moving`` to bucket 1 with a new tag, the mover's lease expired, and
    bucket 1 holds part of the copy plus a record deleted since: the next writer finishes it."""
    store = make_store()
    name = store.collection_name
    store.add(episodes_of("half", 6))
    old_tag = store.layout.place("half").tag
    new_tag = uuid.uuid4().hex
    registry = store.client.get_collection(f"{name}.registry", embedding_function=None)
    registry.update(ids=["n:half"], metadatas=[
        {"kd_place": "moving", "kd_target": 1, "kd_next_gen": new_tag}
    ])
    registry.add(ids=["l:half"], embeddings=[[1.0]],
                 metadatas=[{"kd_owner": "dead", "kd_ts": 0.0}])  # expired long ago
    target = store.layout._bucket(1, create=True)
    source = store.client.get_collection(f"{name}.b.0", embedding_function=None)
    copied = source.get(ids=[f"{old_tag}:e0", f"{old_tag}:e1"],
                        include=["embeddings", "documents", "metadatas"])
    target.add(ids=[f"{new_tag}:e0", f"{new_tag}:gone"],
               embeddings=[copied["embeddings"][0], copied["embeddings"][1]],
               documents=copied["documents"],
               metadatas=[{**m, "kd_gen": new_tag} for m in copied["metadatas"]])

    writer = make_store(name)  # a fresh process: no cached place
    writer.add(episodes_of("half", 1, start=6))
    record = registry_records(writer)["n:half"]
    assert (record["kd_place"], record["kd_bucket"], record["kd_gen"]) == ("bucket", 1, new_tag)
    assert "l:half" not in registry_records(writer)
    assert sorted(target.get(where={"kd_ns": "half"})["ids"]) == sorted(
        f"{new_tag}:e{j}" for j in range(7)
    )
    assert source.get(where={"kd_ns": "half"})["ids"] == []
    assert writer.get([f"e{j}" for j in range(7)], namespace="half") == episodes_of("half", 7)
    assert store.get([f"e{j}" for j in range(7)], namespace="half") == episodes_of("half", 7)
    assert store.count() == writer.count() == 7


# ---------------------------------------------------------------- delete, then create again


@pytest.mark.parametrize("move_at", [256, 3])
def test_a_namespace_deleted_and_created_again_starts_empty(
    make_store: Any, move_at: int
) -> None:
    """In a bucket (256) and after a move to its own collection (3)."""
    store = make_store(move_at=move_at)
    store.add(episodes_of("victim", 4))
    store.add(episodes_of("other", 2))
    old_place = store.layout.place("victim")
    assert (old_place.tag is None) == (move_at == 3)
    bucket = store.layout.place("other").collection
    left = bucket.get(where={"kd_ns": "victim"},
                      include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
    assert store.delete_namespace("victim") == 4

    new = Episode("a new question", "new answer", namespace="victim", id="e0")
    store.add([new])
    place = store.layout.place("victim")
    assert place.tag is not None and place.tag != old_place.tag
    if left["ids"]:  # what an interrupted delete could leave in the bucket
        bucket.add(ids=left["ids"], embeddings=left["embeddings"], documents=left["documents"],
                   metadatas=left["metadatas"])
    for reader in (store, make_store(store.collection_name, move_at=move_at)):
        assert reader.count("victim") == 1 and reader.count_rated("victim") == 0
        assert reader.get(["e0"], namespace="victim") == [new]
        with pytest.raises(EpisodeNotFoundError):
            reader.get(["e1"], namespace="victim")
        assert reader.list_episodes("victim") == [new]
        hits = reader.search("question 1", k=10, namespace="victim")
        assert [e for e, _ in hits] == [new]
        assert len(reader.training_arrays("victim")) == 0
        assert reader.count() == 3


# ---------------------------------------------------------------- format 1


def _b64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def write_format_1_store(client: ClientAPI, prefix: str) -> dict[str, list[Episode]]:
    """A store as the previous version wrote it: a collection per namespace, no registry."""
    embed = TextVectors()
    stored: dict[str, list[Episode]] = {}
    for namespace, reward_range in (("user/1", (0.0, 1.0)), ("alice", None)):
        meta: dict[str, Any] = {"kd_namespace": namespace, "kd_embedder": embed.identity.name,
                                "kd_dimension": DIM, "kd_format": 1}
        if reward_range is not None:
            meta["kd_reward_low"], meta["kd_reward_high"] = reward_range
        collection = client.get_or_create_collection(
            f"{prefix}.ns.{encode_namespace(namespace)}",
            configuration={"hnsw": {"space": "cosine"}},  # type: ignore[arg-type]
            metadata=meta, embedding_function=None,
        )
        episodes = episodes_of(namespace, 5)
        records = []
        for episode in episodes:
            record: dict[str, Any] = {**episode.metadata, "kd_response": episode.response,
                                      "kd_rated": episode.reward is not None,
                                      "kd_created_at": episode.created_at.isoformat(),
                                      "kd_created_ts": episode.created_at.timestamp(),
                                      "kd_response_emb": _b64(embed.vector(episode.response))}
            if episode.reward is not None:
                record["kd_reward"] = episode.reward
            records.append(record)
        collection.add(ids=[e.id for e in episodes],
                       embeddings=np.array([embed.vector(e.query) for e in episodes]),
                       documents=[e.query for e in episodes], metadatas=records)
        stored[namespace] = episodes
    return stored


def test_a_format_1_store_opens_reads_unchanged_and_takes_writes(
    chroma_client: ClientAPI, make_store: Any
) -> None:
    prefix = new_name()
    stored = write_format_1_store(chroma_client, prefix)
    before = raw_state(chroma_client, prefix)
    store = make_store(prefix)
    ids = [f"e{j}" for j in range(5)]
    assert store.namespaces() == ["alice", "user/1"]
    assert store.count() == 10 and store.count_rated() == 8
    for namespace, episodes in stored.items():
        assert store.count(namespace) == 5
        assert store.get(ids, namespace=namespace) == episodes
        assert sorted(e.id for e in store.list_episodes(namespace)) == ids
        hits = store.search("question 2", k=2, namespace=namespace)
        assert hits[0][0] == episodes[2] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        arrays = store.training_arrays(namespace)
        assert sorted(arrays.ids) == ["e0", "e1", "e2", "e4"]
        _, responses = store.vectors(ids, namespace=namespace)
        assert responses.tobytes() == np.array(
            [TextVectors.vector(e.response) for e in episodes], dtype=np.float32).tobytes()
        assert store.layout.place(namespace).tag is None
    assert len(store.training_arrays()) == 8
    with pytest.raises(InvalidRewardError):  # the range recorded with the collection holds
        store.update_reward("e0", 5.0, namespace="user/1")
    assert raw_state(chroma_client, prefix) == before  # reading wrote nothing, no registry

    # Writes: an old namespace stays in its collection, a new one goes to a bucket.
    store.add(episodes_of("user/1", 1, start=5))
    store.update_reward("e0", 0.5, namespace="alice")
    store.add(episodes_of("bob", 2))
    raw = raw_collections(store)
    assert len(raw[f"{prefix}.ns.user_2f1"].get()["ids"]) == 6
    assert "n:user/1" not in registry_records(store)
    assert store.layout.place("bob").tag is not None
    reopened = make_store(prefix)
    assert reopened.namespaces() == ["alice", "bob", "user/1"] and reopened.count() == 13
    assert reopened.get(["e0"], namespace="alice")[0].reward == 0.5
    assert reopened.delete_namespace("alice") == 5
    assert f"{prefix}.ns.alice" not in raw_collections(reopened)
    assert reopened.namespaces() == ["bob", "user/1"] and reopened.count() == 8


# ---------------------------------------------------------------- several processes


def test_a_process_that_loses_the_race_to_create_a_namespace_uses_the_winners(
    make_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process B looked the namespace up before process A registered it (so B's first read of
    the registry finds nothing): B must adopt A's place and tag, and both writes must land."""
    first = make_store()
    second = make_store(first.collection_name)
    layout = second.layout
    real_records, real_create, creating = layout.records, layout._create, []

    def records(names: list[str]) -> dict[str, dict[str, Any]]:
        # before it registers the namespace, `second` reads the registry as it was before
        # `first` registered it
        return real_records(names) if creating else {}

    def create(rows: Any) -> Any:
        creating.append(True)
        return real_create(rows)

    monkeypatch.setattr(layout, "records", records)
    monkeypatch.setattr(layout, "_create", create)
    first.add(episodes_of("shared", 1))
    second.add(episodes_of("shared", 1, start=1))
    assert creating  # `second` did try to register the namespace
    assert second.layout.place("shared").tag == first.layout.place("shared").tag
    assert [i for i in registry_records(first) if i.startswith("n:")] == ["n:shared"]
    for store in (first, second):
        assert store.get(["e0", "e1"], namespace="shared") == episodes_of("shared", 2)
        assert store.count() == 2


CHILD = """
import json, sys, time
from pathlib import Path

index, host, port, go, prefix = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                  Path(sys.argv[4]), sys.argv[5])
sys.path.insert(0, sys.argv[6])
options = json.loads(sys.argv[7])
import chromadb
from chromadb.config import Settings
from test_buckets import TextVectors, episodes_of
from langchain_kd_memory.storage import EpisodeStore

client = chromadb.HttpClient(host=host, port=port, settings=Settings(anonymized_telemetry=False))
store = EpisodeStore(prefix, embeddings=TextVectors(), client=client, **options)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
for rnd in range(6):
    for n in range(8):
        (episode,) = episodes_of(f"ns{n}", 1, start=index * 100 + rnd)  # all in one order
        store.add([episode])
print(json.dumps(store.layout.moves), flush=True)
"""


@pytest.mark.server
@pytest.mark.parametrize("to_own", [True, False], ids=["to-own-collections", "between-buckets"])
def test_processes_creating_and_moving_the_same_namespaces_agree(
    chroma_server: tuple[str, int], tmp_path: Path, to_own: bool
) -> None:
    """Three processes write, one episode at a time and in the same order, to the same 8 new
    namespaces: they create each namespace at about the same time, and each namespace gets 18
    episodes and moves while the others keep writing to it: to its own collection at 12, or
    (bucket capacity 12) out of crowded buckets into buckets with room. (Fails with the create
    race unfixed, and with the move lease always granted.)"""
    options = {"move_at": 12} if to_own else {"move_at": 64, "bucket_capacity": 12}
    host, port = chroma_server
    prefix, go = new_name(), tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(i), host, str(port), str(go), prefix,
             str(Path(__file__).parent), json.dumps(options)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(3)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr
    go.touch()
    outputs = [child.communicate(timeout=600) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    moves = sum(json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)

    settings = Settings(anonymized_telemetry=False)
    client = chromadb.HttpClient(host=host, port=port, settings=settings)
    store = EpisodeStore(prefix, embeddings=TextVectors(), client=client, **options)
    namespaces = [f"ns{n}" for n in range(8)]
    if to_own:
        assert moves == 8  # each namespace moved once, by one process
    else:
        assert moves >= 1
    assert store.namespaces() == namespaces
    assert sorted(i for i in registry_records(store) if i.startswith("n:")) == [
        f"n:{ns}" for ns in namespaces
    ]
    for namespace in namespaces:
        place = store.layout.place(namespace)
        assert (place.tag is None) == to_own, namespace
        expected = sorted(f"e{p * 100 + r}" for p in range(3) for r in range(6))
        assert sorted(e.id for e in store.list_episodes(namespace)) == expected
        assert store.get(expected, namespace=namespace) == [
            episodes_of(namespace, 1, start=int(i[1:]))[0] for i in expected
        ]
    assert store.count() == 8 * 18
    if not to_own:  # every record once, under its namespace's current tag
        tags = {store.layout.place(ns).tag: ns for ns in namespaces}
        for raw in raw_collections(store).values():
            if raw.name.endswith(".registry"):
                continue
            for meta in raw.get(include=["metadatas"])["metadatas"]:
                assert meta["kd_gen"] in tags
        assert sum(c.count() for n, c in raw_collections(store).items() if ".b." in n) == 144
