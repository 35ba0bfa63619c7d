"""Guarantee: namespaces never leak into one another, in recall, scoring data, training or the
LangGraph store, and deleting a namespace removes its episodes only.

The namespaces are chosen to collide under naive schemes: "user/1" and "user_2f1" (its escaped
form), "user/1" and "user/10" (string prefix), "user.1" (a LangGraph tuple joined with ".").
Every namespace holds the same question, so similarity alone would happily mix them. Every test
runs on two layouts: all namespaces in one shared bucket collection ("shared"), and "user/1" and
"user/10" moved to collections of their own while the others share a bucket ("mixed").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import EpisodeNotFoundError, InvalidArgumentError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.store import EpisodeBaseStore

NAMESPACES = ["user/1", "user_2f1", "user/10", "user.1", "user"]
QUESTION = "How do I reset my password?"


def model(store: EpisodeStore) -> ModelDistillation:
    # No validation split: recall then always uses the teacher's predictions for unrated
    # episodes (with a split of one episode, whether it "beats the mean" is a coin toss).
    return ModelDistillation(
        seed=0, embeddings=store.embeddings, min_episodes=4, max_epochs=4,
        validation_fraction=0.0,
        teacher=TeacherConfig(hidden_sizes=(32,)), student=StudentConfig(hidden_sizes=(16,)),
    )


def records_by_namespace(store: EpisodeStore) -> dict[str, list[tuple[Any, ...]]]:
    """Everything Chroma holds for the store, by the namespace it belongs to, byte for byte.

    Bucket records belong to their ``kd_ns`` tag, records of an own collection to the
    collection's namespace, registry entries to the namespace they name (a deleted namespace
    keeps its entry, marked deleted: its generation, so that it starts afresh when created again).
    """
    found: dict[str, list[tuple[Any, ...]]] = {}
    for listed in store.client.list_collections():
        if not listed.name.startswith(f"{store.collection_name}."):
            continue
        raw = store.client.get_collection(listed.name, embedding_function=None)
        got = raw.get(include=["documents", "metadatas", "embeddings"])  # type: ignore[list-item]
        vectors = np.asarray(got["embeddings"], dtype=np.float32)
        rows = zip(got["ids"], got["documents"], got["metadatas"], vectors, strict=True)
        for chroma_id, document, meta, vector in rows:
            if listed.name.endswith(".registry"):
                owner = chroma_id[2:] if chroma_id[:2] in ("n:", "l:") else chroma_id
            else:
                owner = meta["kd_ns"] if "kd_ns" in meta else raw.metadata["kd_namespace"]
            found.setdefault(owner, []).append(
                (listed.name, chroma_id, document, sorted(meta.items()), vector.tobytes())
            )
    return {owner: sorted(rows) for owner, rows in found.items()}


@pytest.fixture(params=["shared", "mixed"])
def memory(tmp_store: EpisodeStore, request: pytest.FixtureRequest) -> DistilledEpisodicMemory:
    """Six episodes per namespace: the same question, answers that name their namespace.

    "mixed": the two namespaces that get a seventh episode move to collections of their own.
    """
    store = EpisodeStore(
        f"{tmp_store.collection_name}{request.param[0]}", embeddings=tmp_store.embeddings,
        client=tmp_store.client, move_at=256 if request.param == "shared" else 7, buckets=1,
    )
    memory = DistilledEpisodicMemory(store=store, distillation=model(store))
    memory.add_episodes([
        {"query": QUESTION if i == 0 else f"{QUESTION} Attempt {i}.",
         "response": f"answer for {ns}", "reward": (i % 3) / 2, "namespace": ns,
         "id": f"{ns}#{i}", "metadata": {"owner": ns}}
        for ns in NAMESPACES for i in range(6)
    ])
    # The same id, unrated, in two namespaces: scoring must read the right one's vector.
    memory.add_episodes([
        {"query": f"Unrated question of {ns}", "namespace": ns, "id": "same-id"}
        for ns in ("user/1", "user/10")
    ])
    own = [ns for ns in NAMESPACES if memory.store.layout.place(ns).bucket is None]
    assert own == ([] if request.param == "shared" else ["user/1", "user/10"])
    return memory


@pytest.mark.slow
def test_recall_stays_in_its_namespace(memory: DistilledEpisodicMemory) -> None:
    for ns in NAMESPACES:
        for kwargs in ({}, {"filter": {"owner": ns}}, {"reward_weight": 0.0}):
            documents = memory.invoke(QUESTION, k=50, namespace=ns, **kwargs)
            assert documents, (ns, kwargs)
            assert {d.metadata["namespace"] for d in documents} == {ns}
            assert {d.metadata["response"] for d in documents} <= {f"answer for {ns}", ""}
        assert {e.namespace for e, _ in memory.store.search(QUESTION, k=50, namespace=ns)} == {ns}
    # A filter naming another namespace's metadata finds nothing rather than crossing over.
    assert memory.invoke(QUESTION, namespace="user/1", filter={"owner": "user/10"}) == []


@pytest.mark.slow
def test_scoring_and_feedback_use_the_namespaces_own_records(
    memory: DistilledEpisodicMemory,
) -> None:
    memory.consolidate(namespace="user/1")  # user/1's own model
    memory.consolidate()  # the shared model, which answers for user/10
    for ns in ("user/1", "user/10"):
        documents = memory.invoke(f"Unrated question of {ns}", k=50, namespace=ns)
        unrated = next(d for d in documents if d.id == "same-id")
        query, response = memory.store.vectors(["same-id"], namespace=ns)
        model = memory.value_model(ns)  # user/10 has no model of its own: the shared one
        [estimate] = model.predict_embeddings(query, response, model="teacher")
        expected = estimate.expected
        low, high = model.binner.low, model.binner.high
        assert unrated.metadata["value_source"] == "predicted"
        assert unrated.metadata["value"] == pytest.approx((expected - low) / (high - low))
    other = memory.store.get(["same-id"], namespace="user/10")
    memory.record_feedback("same-id", 1.0, namespace="user/1")
    assert memory.store.get(["same-id"], namespace="user/1")[0].reward == 1.0
    assert memory.store.get(["same-id"], namespace="user/10") == other
    with pytest.raises(InvalidArgumentError, match="exists in namespaces"):
        memory.store.get(["same-id"], all_namespaces=True)  # ambiguous: refused, not guessed


@pytest.mark.slow
def test_training_reads_only_its_namespace(memory: DistilledEpisodicMemory) -> None:
    vectors = np.vstack([memory.store.vectors([f"{ns}#0"], namespace=ns)[0]
                         for ns in NAMESPACES])
    report = memory.consolidate(namespace="user/1")
    assert report.episodes_used == memory.store.count_rated("user/1") == 6
    trained = memory.value_model("user/1")
    before = np.stack([e.distribution for e in trained.predict_embeddings(vectors)])
    # Flood every other namespace with contrary rewards; retraining user/1 must not notice.
    memory.add_episodes([
        {"query": f"{QUESTION} Variant {i}", "reward": 1.0 - (i % 3) / 2, "namespace": ns}
        for ns in NAMESPACES[1:] for i in range(10)
    ])
    fresh = DistilledEpisodicMemory(store=memory.store, distillation=model(memory.store))
    assert fresh.consolidate(namespace="user/1").episodes_used == 6
    retrained = fresh.value_model("user/1")
    after = np.stack([e.distribution for e in retrained.predict_embeddings(vectors)])
    assert after.tobytes() == before.tobytes()
    ids = memory.store.training_arrays(namespace="user/1").ids
    assert sorted(ids) == sorted([f"user/1#{i}" for i in range(6)])


@pytest.mark.slow
def test_langgraph_store_namespaces_do_not_leak(memory: DistilledEpisodicMemory) -> None:
    store = EpisodeBaseStore(memory.store)  # the episodes as items
    for labels in [("user", "1"), ("user", "10"), ("user", "1", "sub"), ("user_2f1",)]:
        store.put(labels, "note", {"query": f"secret note of {'.'.join(labels)}"})
    hits = store.search(("user", "1"), query="secret note", limit=50)
    assert {h.namespace for h in hits} == {("user", "1"), ("user", "1", "sub")}
    assert store.get(("user", "10"), "note").value == {"query": "secret note of user.10"}
    assert store.get(("user", "2"), "note") is None
    assert store.list_namespaces(prefix=("user", "1")) == [("user", "1"), ("user", "1", "sub")]
    # The memory's namespace "user.1" is the tuple ("user", "1"): its episodes are items there.
    assert {d.id for d in memory.invoke("secret note", k=50, namespace="user.10")} == {"note"}
    store.delete(("user", "1"), "note")
    assert store.get(("user", "1"), "note") is None
    assert store.get(("user", "1", "sub"), "note") is not None
    assert store.get(("user", "10"), "note") is not None


@pytest.mark.slow
@pytest.mark.parametrize("victim", NAMESPACES)
def test_deleting_a_namespace_removes_only_its_episodes(
    memory: DistilledEpisodicMemory, victim: str
) -> None:
    others = {ns: rows for ns, rows in records_by_namespace(memory.store).items() if ns != victim}
    removed = memory.store.count(victim)
    assert memory.store.delete_namespace(victim) == removed > 0
    assert memory.store.count(victim) == 0 and victim not in memory.store.namespaces()
    after = records_by_namespace(memory.store)
    assert [(row[1], dict(row[3])["kd_place"]) for row in after.pop(victim)] == [
        (f"n:{victim}", "deleted")]
    assert after == others
    with pytest.raises(EpisodeNotFoundError):
        memory.store.get([f"{victim}#0"], namespace=victim)
    # The namespace starts empty when used again: nothing comes back.
    memory.store.add([Episode("fresh start", namespace=victim)])
    assert [e.query for e in memory.store.list_episodes(victim)] == ["fresh start"]


@pytest.mark.slow
def test_clear_removes_only_the_memorys_namespace(memory: DistilledEpisodicMemory) -> None:
    scoped = DistilledEpisodicMemory(store=memory.store, distillation=model(memory.store),
                                     namespace="user/1")
    others = {ns: rows for ns, rows in records_by_namespace(memory.store).items()
              if ns != "user/1"}
    scoped.clear()
    assert memory.store.count("user/1") == 0
    after = records_by_namespace(memory.store)
    assert [dict(row[3])["kd_place"] for row in after.pop("user/1")] == ["deleted"]
    assert after == others
