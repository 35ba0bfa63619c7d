"""Guarantees of the layout (`langchain_kd_memory.layout`), against real Chroma.

* Namespaces sharing a bucket never see each other's records, through any read or write.
* New namespaces go to the bucket a hash of their name picks, the same in every process.
* A namespace that reaches `move_at` records is promoted to a collection of its own and keeps
  every record, id, field and vector; stores that cached the old place find it; a promotion a
  killed process left half-done is finished by the next writer.
* A lease taken over fences its old holder: it stops, and never renews the new holder's lease.
* A namespace deleted and created again starts empty, even if records of the old one remain.
* A format-1 store (one collection per namespace, no registry) is refused until migrated; then
  it reads unchanged and takes writes.
* Processes creating the same namespace at once agree on one place, whatever Chroma does with
  an ``add`` of an existing id (ignore it, raise, or overwrite), and whatever the size of their
  first writes; every write lands once.
* A write in the steady state reads the registry once.

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
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from chromadb.errors import DuplicateIDError
from langchain_core.embeddings import Embeddings

from langchain_kd_memory import layout as layout_module
from langchain_kd_memory.embeddings import EmbedderIdentity
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import (
    DuplicateEpisodeError,
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidRewardError,
    StoreError,
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
        for c in store.client.list_collections(limit=100_000)
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


@pytest.mark.slow
def test_namespaces_sharing_a_bucket_never_see_each_other(make_store: Any) -> None:
    store = make_store(buckets=1)
    for namespace in SHARED:
        store.add(episodes_of(namespace, 4))
    name = store.collection_name
    assert sorted(raw_collections(store)) == [f"{name}.b.0", f"{name}.registry"]
    places = {ns: store.layout.place(ns) for ns in SHARED}
    assert {p.collection.name for p in places.values()} == {f"{name}.b.0"}
    assert len({p.tag for p in places.values()}) == len(SHARED)

    assert store.count(all_namespaces=True) == 4 * len(SHARED)
    assert store.count_rated(all_namespaces=True) == 3 * len(SHARED)
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
        store.get(["e0"], all_namespaces=True)  # ambiguous without a namespace

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
    assert store.count(all_namespaces=True) == 4 * len(SHARED) - 5

    # In the bucket, each record carries the tag of the namespace it belongs to.
    records = registry_records(store)
    tags = {m["kd_gen"]: i[2:] for i, m in records.items() if m["kd_place"] != "deleted"}
    got = raw_collections(store)[f"{name}.b.0"].get(include=["metadatas"])
    for chroma_id, meta in zip(got["ids"], got["metadatas"], strict=True):
        assert chroma_id.startswith(meta["kd_gen"] + ":")
        assert tags[meta["kd_gen"]] == meta["kd_ns"] == meta["owner"]


@pytest.mark.slow
def test_namespaces_go_to_the_bucket_a_hash_of_their_name_picks(make_store: Any) -> None:
    """(Replaces the open-bucket test: buckets no longer fill up one after another.)"""
    store = make_store(buckets=4)
    names = [f"n{i}" for i in range(12)]
    for namespace in names:
        store.add(episodes_of(namespace, 3))
    expected = {ns: int(hashlib.sha256(ns.encode()).hexdigest()[:15], 16) % 4 for ns in names}
    assert {ns: store.layout.place(ns).bucket for ns in names} == expected
    other = make_store(store.collection_name, buckets=2)  # a process with another setting
    assert {ns: other.layout.place(ns).bucket for ns in names} == expected
    other.add(episodes_of("late", 2))
    assert other.layout.place("late").bucket == int(
        hashlib.sha256(b"late").hexdigest()[:15], 16) % 2
    assert sorted(c for c in raw_collections(store) if ".b." in c) == sorted(
        {f"{store.collection_name}.b.{b}" for b in [*expected.values(), 0, 1]})
    for namespace in names:
        assert store.get(["e0", "e1", "e2"], namespace=namespace) == episodes_of(namespace, 3)
    assert store.count(all_namespaces=True) == 38


# ---------------------------------------------------------------- promotion


def test_a_namespace_moves_at_the_threshold_and_keeps_everything(make_store: Any) -> None:
    store = make_store(move_at=20, buckets=1)
    name = store.collection_name
    store.add(episodes_of("small", 12))
    store.add(episodes_of("big", 19))
    before = store.layout.place("big")
    assert before.bucket == 0 and before.collection.name == f"{name}.b.0"
    old_vectors = store.vectors([f"e{j}" for j in range(19)], namespace="big")
    stale = make_store(name, move_at=20, buckets=1)  # another process: caches the bucket
    assert stale.count("big") == 19

    store.add(episodes_of("big", 1, start=19))  # the 20th record: the namespace moves
    after = store.layout.place("big")
    assert after.bucket is None and after.collection.name == f"{name}.ns.big"
    assert store.layout.moves == 1
    ids = [f"e{j}" for j in range(20)]
    raw = raw_collections(store)
    own = raw[f"{name}.ns.big"].get(include=["metadatas"])
    assert sorted(own["ids"]) == sorted(ids)  # episode ids, untagged
    assert not any("kd_ns" in m or "kd_gen" in m for m in own["metadatas"])
    assert raw[f"{name}.b.0"].get(where={"kd_ns": "big"})["ids"] == []
    assert len(raw[f"{name}.b.0"].get(where={"kd_ns": "small"})["ids"]) == 12
    assert registry_records(store)["n:big"]["kd_place"] == "own"
    assert not [c for c in raw if ".lease." in c]

    assert store.get(ids, namespace="big") == episodes_of("big", 20)
    queries, responses = store.vectors(ids[:19], namespace="big")
    np.testing.assert_allclose(queries, old_vectors[0], atol=1e-6)
    assert responses.tobytes() == old_vectors[1].tobytes()
    assert store.get([f"e{j}" for j in range(12)], namespace="small") == episodes_of("small", 12)
    assert store.count(all_namespaces=True) == 32

    # The store that cached the bucket place finds the moved namespace, and writes there.
    assert stale.count("big") == 20
    assert stale.get(ids, namespace="big") == episodes_of("big", 20)
    stale.add(episodes_of("big", 1, start=20))
    stale.update_rewards({"e0": 1.0}, namespace="big")
    assert raw[f"{name}.b.0"].get(where={"kd_ns": "big"})["ids"] == []
    assert store.count("big") == 21 and store.get(["e0"], namespace="big")[0].reward == 1.0
    reopened = make_store(name, move_at=20, buckets=1)
    assert reopened.namespaces() == ["big", "small"]
    assert reopened.count(all_namespaces=True) == 33


@pytest.mark.slow
def test_a_namespace_whose_first_write_is_large_is_promoted_at_once(make_store: Any) -> None:
    """It is created in its bucket like any other (creators racing agree) and moved after."""
    store = make_store(move_at=20)
    store.add(episodes_of("bulk", 25))
    assert store.layout.place("bulk").bucket is None and store.layout.moves == 1
    collections = raw_collections(store)
    assert sorted(collections) == sorted([f"{store.collection_name}.ns.bulk",
                                          f"{store.collection_name}.registry",
                                          f"{store.collection_name}.b.42"])
    assert collections[f"{store.collection_name}.b.42"].count() == 0
    assert store.count("bulk") == 25


def _lease_names(store: EpisodeStore) -> list[str]:
    return sorted(c for c in raw_collections(store) if ".lease." in c)


@pytest.mark.slow
@pytest.mark.parametrize("writer_move_at", [256, 1])
def test_a_promotion_left_half_done_by_a_killed_process_is_finished_by_the_next_writer(
    make_store: Any, writer_move_at: int
) -> None:
    """The registry says ``moving`` and the mover's lease collection (epoch 1, not renewed for
    long) holds part of the copy plus a record deleted since: the next writer takes the lease
    over (epoch 2), copies afresh and publishes; the dead mover's copy is never read. The same
    when that write alone holds `move_at` rows."""
    store = make_store(buckets=1)
    name = store.collection_name
    store.add(episodes_of("half", 6))
    tag = store.layout.place("half").tag
    registry = store.client.get_collection(f"{name}.registry", embedding_function=None)
    registry.update(ids=["n:half"], metadatas=[{"kd_place": "moving"}])
    source = store.client.get_collection(f"{name}.b.0", embedding_function=None)
    copied = source.get(ids=[f"{tag}:e0", f"{tag}:e1"],
                        include=["embeddings", "documents", "metadatas"])
    dead = store.client.create_collection(
        f"{name}.lease.{tag}.1", configuration={"hnsw": {"space": "cosine"}},
        embedding_function=None,
        metadata={"kd_namespace": "half", "kd_embedder": TextVectors.identity.name,
                  "kd_dimension": DIM, "kd_format": 3, "kd_gen": tag, "kd_owner": "dead",
                  "kd_ts": 0.0})
    dead.add(ids=["e0", "gone"], embeddings=copied["embeddings"], documents=copied["documents"],
             metadatas=[{k: v for k, v in m.items() if k not in ("kd_ns", "kd_gen")}
                        for m in copied["metadatas"]])

    writer = make_store(name, buckets=1, move_at=writer_move_at)  # a fresh process
    writer.add(episodes_of("half", 1, start=6))
    assert registry_records(writer)["n:half"]["kd_place"] == "own"
    assert writer.layout.moves == 1 and _lease_names(writer) == []
    own = store.client.get_collection(f"{name}.ns.half", embedding_function=None)
    assert sorted(own.get()["ids"]) == sorted(f"e{j}" for j in range(7))
    assert source.get(where={"kd_ns": "half"})["ids"] == []
    assert writer.get([f"e{j}" for j in range(7)], namespace="half") == episodes_of("half", 7)
    assert store.get([f"e{j}" for j in range(7)], namespace="half") == episodes_of("half", 7)
    assert store.count(all_namespaces=True) == writer.count(all_namespaces=True) == 7


def test_a_promotion_published_but_not_recorded_is_read_there_and_finished(
    make_store: Any,
) -> None:
    """A mover published the copy (renamed it to the namespace's own collection) and was
    killed before recording ``own``: readers already read the published collection, and the
    next writer records ``own`` and clears the bucket."""
    store = make_store(buckets=1, move_at=5)
    name = store.collection_name
    store.add(episodes_of("late", 3))
    tag = store.layout.place("late").tag
    registry = store.client.get_collection(f"{name}.registry", embedding_function=None)
    registry.update(ids=["n:late"], metadatas=[{"kd_place": "moving"}])
    source = store.client.get_collection(f"{name}.b.0", embedding_function=None)
    got = source.get(include=["embeddings", "documents", "metadatas"])
    own = store.client.create_collection(
        f"{name}.ns.late", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None,
        metadata={"kd_namespace": "late", "kd_embedder": TextVectors.identity.name,
                  "kd_dimension": DIM, "kd_format": 3, "kd_gen": tag})
    own.add(ids=[i.split(":", 1)[1] for i in got["ids"]], embeddings=got["embeddings"],
            documents=got["documents"],
            metadatas=[{k: v for k, v in m.items() if k not in ("kd_ns", "kd_gen")}
                       for m in got["metadatas"]])
    own.update(ids=["e0"], metadatas=[{"kd_reward": 0.5}])  # written there after publication

    reader = make_store(name, buckets=1)
    assert reader.get(["e0"], namespace="late")[0].reward == 0.5
    assert reader.layout.place("late").bucket is None
    reader.add(episodes_of("late", 1, start=3))
    assert registry_records(reader)["n:late"]["kd_place"] == "own"
    assert source.get(where={"kd_ns": "late"})["ids"] == []
    assert sorted(own.get()["ids"]) == ["e0", "e1", "e2", "e3"]
    assert store.count("late") == 4 and store.get(["e0"], namespace="late")[0].reward == 0.5


@pytest.mark.slow
def test_a_lease_taken_over_fences_its_old_holder(
    make_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mover A stalls in the middle of its copy for longer than the lease; writer B takes the
    lease over and finishes the promotion; B's acknowledged writes must survive A waking up,
    and A must neither renew B's lease nor mark the namespace again. (Before: A kept renewing
    the new holder's lease, copied on and overwrote B's reward update.)"""
    monkeypatch.setattr(layout_module, "LEASE_S", 0.5)
    mover = make_store(move_at=8, buckets=1)
    name = mover.collection_name
    mover.add(episodes_of("slow", 7))
    writer = make_store(name, move_at=8, buckets=1)
    assert writer.count("slow") == 7
    stalled, wake = threading.Event(), threading.Event()
    real_upsert = Collection.upsert

    def upsert(self: Collection, *args: Any, **kwargs: Any) -> Any:
        copy_target = ".lease." in self.name or self.name.endswith(".ns.slow")
        if copy_target and threading.current_thread().name == "A" and not wake.is_set():
            stalled.set()
            wake.wait(30)
        return real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "upsert", upsert)
    errors: list[BaseException] = []

    def promote() -> None:
        try:
            mover.add(episodes_of("slow", 1, start=7))  # the 8th record: A promotes
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread_a = threading.Thread(target=promote, name="A")
    thread_a.start()
    assert stalled.wait(30)
    time.sleep(0.6)  # A's lease expires
    writer.add(episodes_of("slow", 1, start=8))  # B waits, takes the lease over, finishes
    assert registry_records(writer)["n:slow"]["kd_place"] == "own"
    writer.update_rewards({"e0": 0.25}, namespace="slow")
    writer.delete(["e1"], namespace="slow")
    wake.set()
    thread_a.join(60)
    assert not thread_a.is_alive() and not errors, errors
    record = registry_records(writer)["n:slow"]
    assert record["kd_place"] == "own"
    assert writer.get(["e0"], namespace="slow")[0].reward == 0.25
    with pytest.raises(EpisodeNotFoundError):
        writer.get(["e1"], namespace="slow")
    assert sorted(e.id for e in writer.list_episodes("slow")) == sorted(
        f"e{j}" for j in (0, *range(2, 9)))
    assert _lease_names(writer) == []
    assert mover.get(["e0"], namespace="slow")[0].reward == 0.25


def test_a_namespace_deleted_while_it_is_promoted_leaves_no_copy_behind(
    make_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgetting on request: `delete_namespace` runs right after a mover published its copy
    (P4) and before it recorded it: no collection of the store keeps the namespace's episodes
    (the drop deletes the published copy; a copy published after the drop is deleted by its
    mover)."""
    mover = make_store(move_at=5, buckets=1)
    name = mover.collection_name
    mover.add(episodes_of("gone", 4))
    copied, resume = threading.Event(), threading.Event()
    real_modify = Collection.modify

    def modify(self: Collection, *args: Any, **kwargs: Any) -> Any:
        done = real_modify(self, *args, **kwargs)
        if kwargs.get("name") and threading.current_thread().name == "A":  # P4: published
            copied.set()
            resume.wait(30)
        return done

    monkeypatch.setattr(Collection, "modify", modify)
    thread = threading.Thread(target=lambda: mover.add(episodes_of("gone", 1, start=4)),
                              name="A")
    thread.start()
    assert copied.wait(30)
    assert make_store(name, move_at=5, buckets=1).delete_namespace("gone") == 5
    resume.set()
    thread.join(60)
    left = {n: c.get(include=["metadatas"])["metadatas"] for n, c in raw_collections(mover).items()
            if not n.endswith(".registry")}
    assert not [m for metas in left.values() for m in metas if m.get("owner") == "gone"], left
    assert mover.namespaces() == [] and mover.count("gone") == 0


@pytest.mark.slow
def test_a_namespace_deleted_and_created_again_starts_empty_in_a_bucket_and_after_a_move(
    make_store: Any,
) -> None:
    for move_at in (256, 3):
        store = make_store(move_at=move_at, buckets=1)
        store.add(episodes_of("victim", 4))
        store.add(episodes_of("other", 2))
        old_place = store.layout.place("victim")
        assert (old_place.bucket is None) == (move_at == 3)
        bucket = store.layout.place("other").collection
        left = bucket.get(where={"kd_ns": "victim"},
                          include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
        assert store.delete_namespace("victim") == 4

        new = Episode("a new question", "new answer", namespace="victim", id="e0")
        store.add([new])
        place = store.layout.place("victim")
        assert place.bucket is not None and place.tag != old_place.tag
        if left["ids"]:  # what an interrupted delete could leave in the bucket
            bucket.add(ids=left["ids"], embeddings=left["embeddings"],
                       documents=left["documents"], metadatas=left["metadatas"])
        for reader in (store, make_store(store.collection_name, move_at=move_at, buckets=1)):
            assert reader.count("victim") == 1 and reader.count_rated("victim") == 0
            assert reader.get(["e0"], namespace="victim") == [new]
            with pytest.raises(EpisodeNotFoundError):
                reader.get(["e1"], namespace="victim")
            assert reader.list_episodes("victim") == [new]
            hits = reader.search("question 1", k=10, namespace="victim")
            assert [e for e, _ in hits] == [new]
            assert len(reader.training_arrays("victim")) == 0
            assert reader.count(all_namespaces=True) == 3


# ---------------------------------------------------------------- format 1


def _b64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def write_format_1_store(client: ClientAPI, prefix: str) -> dict[str, list[Episode]]:
    """A store as version 1 wrote it: a collection per namespace, no registry."""
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


@pytest.mark.slow
def test_a_format_1_store_is_refused_until_migrated_then_reads_unchanged_and_takes_writes(
    chroma_client: ClientAPI, make_store: Any
) -> None:
    """(Before: format 1 was read in place, listing every collection on each call.)"""
    prefix = new_name()
    stored = write_format_1_store(chroma_client, prefix)
    before = raw_state(chroma_client, prefix)
    store = make_store(prefix)
    for call in (lambda: store.count("alice"), lambda: store.add(episodes_of("bob", 1))):
        with pytest.raises(StoreError, match="kd-memory migrate"):
            call()
    assert raw_state(chroma_client, prefix) == before  # refused: nothing written

    assert store.migrate() == ["alice", "user/1"]
    migrated = raw_state(chroma_client, prefix)
    assert sorted(migrated) == sorted([*before, f"{prefix}.registry"])
    for name, (_, *records) in before.items():  # records untouched, format updated
        assert migrated[name][1:] == tuple(records) and migrated[name][0]["kd_format"] == 3
    ids = [f"e{j}" for j in range(5)]
    assert store.namespaces() == ["alice", "user/1"]
    assert store.count(all_namespaces=True) == 10
    assert store.count_rated(all_namespaces=True) == 8
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
        assert store.layout.place(namespace).bucket is None
    assert len(store.training_arrays(all_namespaces=True)) == 8
    with pytest.raises(InvalidRewardError):  # the range recorded with the collection holds
        store.update_reward("e0", 5.0, namespace="user/1")
    assert raw_state(chroma_client, prefix) == migrated  # reading wrote nothing
    assert make_store(prefix).migrate() == []  # once is enough

    # Writes: an old namespace stays in its collection, a new one goes to a bucket.
    store.add(episodes_of("user/1", 1, start=5))
    store.update_reward("e0", 0.5, namespace="alice")
    store.add(episodes_of("bob", 2))
    raw = raw_collections(store)
    assert len(raw[f"{prefix}.ns.user_2f1"].get()["ids"]) == 6
    assert store.layout.place("bob").bucket is not None
    reopened = make_store(prefix)
    assert reopened.namespaces() == ["alice", "bob", "user/1"]
    assert reopened.count(all_namespaces=True) == 13
    assert reopened.get(["e0"], namespace="alice")[0].reward == 0.5
    assert reopened.delete_namespace("alice") == 5
    assert f"{prefix}.ns.alice" not in raw_collections(reopened)
    assert reopened.namespaces() == ["bob", "user/1"]
    assert reopened.count(all_namespaces=True) == 8


def test_kd_memory_migrate_registers_a_format_1_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from langchain_kd_memory.cli import main

    client = chromadb.PersistentClient(str(tmp_path), settings=Settings(anonymized_telemetry=False))
    stored = write_format_1_store(client, "episodes")
    args = ["--persist-dir", str(tmp_path), "--json", "migrate"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"registered": ["alice", "user/1"]}
    store = EpisodeStore("episodes", embeddings=TextVectors(), client=client)
    assert store.get(["e0", "e4"], namespace="alice") == [stored["alice"][0], stored["alice"][4]]
    assert main(args) == 0 and json.loads(capsys.readouterr().out) == {"registered": []}


# ---------------------------------------------------------------- Chroma's add of an existing id


@pytest.fixture(params=["chroma", "raise", "overwrite"])
def add_behaviour(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """`Collection.add` of an existing id as Chroma 1.5 does it (the first record is kept), or
    as it could: raising (as its docstring says) or overwriting (as `upsert`)."""
    behaviour: str = request.param
    real_add = Collection.add

    def add(self: Collection, ids: Any, *args: Any, **kwargs: Any) -> Any:
        ids = [ids] if isinstance(ids, str) else list(ids)
        if behaviour == "raise" and self.get(ids=ids, include=[])["ids"]:
            raise DuplicateIDError(f"IDs already exist: {ids}")
        if behaviour == "overwrite":
            return self.upsert(ids, *args, **kwargs)
        return real_add(self, ids, *args, **kwargs)

    monkeypatch.setattr(Collection, "add", add)
    return behaviour



def _gated_registry_writes(monkeypatch: pytest.MonkeyPatch, namespace: str, thread: str,
                           release: threading.Event) -> threading.Event:
    """Hold `thread`'s first write of `namespace`'s registry record until `release` is set."""
    reached = threading.Event()

    def gate(real: Any) -> Any:
        def write(self: Collection, ids: Any, *args: Any, **kwargs: Any) -> Any:
            if (self.name.endswith(".registry") and f"n:{namespace}" in list(ids)
                    and threading.current_thread().name == thread and not release.is_set()):
                reached.set()
                release.wait(30)
            return real(self, ids, *args, **kwargs)
        return write

    monkeypatch.setattr(Collection, "add", gate(Collection.add))
    monkeypatch.setattr(Collection, "upsert", gate(Collection.upsert))
    return reached


def _race(monkeypatch: pytest.MonkeyPatch, first: EpisodeStore, second: EpisodeStore,
          namespace: str, second_rows: int) -> None:
    """B (`second`) looks `namespace` up and, held before it registers it, A (`first`) registers
    it and writes episode e0 (acknowledged); then B registers it and writes e1.. e<second_rows>."""
    release = threading.Event()
    reached = _gated_registry_writes(monkeypatch, namespace, "B", release)
    errors: list[BaseException] = []

    def second_adds() -> None:
        try:
            second.add(episodes_of(namespace, second_rows, start=1))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=second_adds, name="B")
    thread.start()
    assert reached.wait(30)  # B looked the namespace up and is about to register it
    first.add(episodes_of(namespace, 1))  # A registers it, writes, is acknowledged
    release.set()
    thread.join(60)
    assert not errors, errors


@pytest.mark.slow
def test_processes_creating_a_namespace_at_once_agree_whatever_add_does(
    make_store: Any, monkeypatch: pytest.MonkeyPatch, add_behaviour: str
) -> None:
    """Process B read the registry before process A registered the namespace, and registers it
    after A has written and acknowledged an episode there: both episodes must be found, with
    Chroma's `add` ignoring, refusing or overwriting an existing id. Then both grow the
    namespace past `move_at`: it is promoted once and keeps every episode. (Before: with an
    overwriting add B replaced A's registry record, hiding A's episode; with a raising add B's
    add failed.)"""
    first = make_store(move_at=6)
    second = make_store(first.collection_name, move_at=6)
    _race(monkeypatch, first, second, "shared", second_rows=1)
    assert [i for i in registry_records(first) if i.startswith("n:")] == ["n:shared"]
    for store in (first, second, make_store(first.collection_name)):
        assert store.get(["e0", "e1"], namespace="shared") == episodes_of("shared", 2)
        assert store.count(all_namespaces=True) == 2

    for j in range(2, 8):  # both grow it past move_at
        (first if j % 2 else second).add(episodes_of("shared", 1, start=j))
    assert first.layout.moves + second.layout.moves == 1
    reader = make_store(first.collection_name)
    assert reader.layout.place("shared").bucket is None
    assert reader.get([f"e{j}" for j in range(8)], namespace="shared") == episodes_of("shared", 8)
    assert _lease_names(reader) == []
    first.add(episodes_of("shared", 1))  # the same episode again: skipped
    changed = episodes_of("shared", 1)[0]
    with pytest.raises(DuplicateEpisodeError):
        second.add([Episode("other", id=changed.id, namespace="shared")])
    assert reader.count("shared") == 8


@pytest.mark.slow
def test_a_large_first_write_racing_a_small_one_loses_neither(
    make_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B read the registry before A registered the namespace and registers it after A's one
    episode was acknowledged, with a first write of `move_at` episodes. (Before: B registered
    it in its own collection, over A's record placing it in a bucket, and A's acknowledged
    episode was never read again.)"""
    first = make_store(move_at=6)
    second = make_store(first.collection_name, move_at=6)
    _race(monkeypatch, first, second, "race", second_rows=6)
    for store in (first, second, make_store(first.collection_name)):
        assert store.get([f"e{j}" for j in range(7)], namespace="race") == episodes_of("race", 7)
        assert store.count("race") == 7


def calls_to(monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """The names of the collections `Collection.<method>` is called on from now on."""
    names: list[str] = []
    real = getattr(Collection, method)

    def counted(self: Collection, *args: Any, **kwargs: Any) -> Any:
        names.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Collection, method, counted)
    return names


@pytest.fixture
def chroma_gets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the collections read by `Collection.get` (the registry's included)."""
    return calls_to(monkeypatch, "get")


@pytest.mark.parametrize("namespaces", [1, 3])
def test_an_add_in_the_steady_state_reads_the_registry_once(
    make_store: Any, chroma_gets: list[str], namespaces: int
) -> None:
    """One add, of episodes of one namespace or of three (an own collection and buckets),
    into namespaces this process wrote before: one registry read, and one duplicate-id check
    per collection written, nothing else. (Before: 4 gets for one namespace: two duplicate-id
    checks, the registry, and the namespace's records in its bucket after every write.) A
    bucket namespace's size is counted once per `move_at` // 4 rows written: not in between."""
    store = make_store(move_at=20)
    names = [f"steady{i}" for i in range(namespaces)]
    for namespace in names:
        store.add(episodes_of(namespace, 25 if namespace == "steady2" else 6))
    collections = {store.layout.place(ns).collection.name for ns in names}
    chroma_gets.clear()
    batch = [e for namespace in names for e in episodes_of(namespace, 2, start=30)]
    vectors = np.array([TextVectors.vector(e.query) for e in batch], dtype=np.float32)
    store.add(batch, query_embeddings=vectors, response_embeddings=vectors)
    registry = [n for n in chroma_gets if n.endswith(".registry")]
    assert len(registry) == 1
    assert sorted(n for n in chroma_gets if n not in registry) == sorted(collections)
    chroma_gets.clear()
    store.add(episodes_of(names[0], 1, start=40))  # embedded here: checked before and after
    assert [n for n in chroma_gets if n.endswith(".registry")] == registry


def test_an_add_into_many_new_namespaces_reads_and_writes_the_registry_a_few_times(
    make_store: Any, chroma_gets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add of 2 episodes in each of 20 namespaces not created yet: the registry is read
    3 times in all (the reward ranges and the duplicate-id check, placing, and W3) and written
    once, not 3 reads and a write per namespace (a 10,000-namespace store was written at a
    tenth of its former rate; then 4 reads, the first two apart)."""
    upserts = calls_to(monkeypatch, "upsert")
    store = make_store()
    store.add(episodes_of("first", 1))  # the registry exists
    chroma_gets.clear()
    upserts.clear()
    names = [f"new{i}" for i in range(20)]
    store.add([e for namespace in names for e in episodes_of(namespace, 2)])
    assert len([n for n in chroma_gets if n.endswith(".registry")]) == 3
    assert len([n for n in upserts if n.endswith(".registry")]) == 1
    assert {ns: store.count(ns) for ns in names} == dict.fromkeys(names, 2)


# ---------------------------------------------------------------- several processes


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


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("buckets", [1, 64], ids=["one-bucket", "spread"])
def test_processes_creating_and_moving_the_same_namespaces_agree(
    chroma_server: tuple[str, int], tmp_path: Path, buckets: int
) -> None:
    """Three processes write, one episode at a time and in the same order, to the same 8 new
    namespaces: they create each namespace at about the same time, and each namespace gets 18
    episodes and is promoted to its own collection at 12 while the others keep writing to it,
    with all 8 in one bucket or spread over buckets. (Fails with the create race unfixed, and
    with the lease always granted.)"""
    options = {"move_at": 12, "buckets": buckets}
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
    assert moves == 8  # each namespace moved once, by one process
    assert store.namespaces() == namespaces
    assert sorted(i for i in registry_records(store) if i.startswith("n:")) == [
        f"n:{ns}" for ns in namespaces
    ]
    for namespace in namespaces:
        assert store.layout.place(namespace).bucket is None, namespace
        expected = sorted(f"e{p * 100 + r}" for p in range(3) for r in range(6))
        assert sorted(e.id for e in store.list_episodes(namespace)) == expected
        assert store.get(expected, namespace=namespace) == [
            episodes_of(namespace, 1, start=int(i[1:]))[0] for i in expected
        ]
    assert store.count(all_namespaces=True) == 8 * 18
    raw = raw_collections(store)
    assert not [n for n in raw if ".lease." in n]
    assert sum(c.count() for n, c in raw.items() if ".b." in n) == 0  # every bucket cleared
