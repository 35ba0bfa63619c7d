"""One value model per namespace, a shared fallback, a bounded cache, new versions picked up.

Real MiniLM, real Chroma, real training; two memories over one store and model directory stand
for two agent processes (the worker test runs real processes)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from langchain_kd_memory.checkpoint import manifest_path
from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.errors import NotTrainedError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore

TOPICS = ("refund for my order", "weather this weekend")
OPENINGS = ("Can you help with the", "Tell me about the", "A question on the", "Info on the",
            "What about the", "Help me with the")


def episodes(namespace: str, good_topic: int) -> list[dict[str, object]]:
    """12 rated episodes: the topic `good_topic` went well in this namespace, the other badly."""
    return [
        {"query": f"{opening} {topic}?", "response": "Here you go.", "namespace": namespace,
         "reward": 1.0 if t == good_topic else 0.0}
        for opening in OPENINGS for t, topic in enumerate(TOPICS)
    ]


def make_memory(directory: Path, embeddings: LocalEmbeddings, **kwargs: object
                ) -> DistilledEpisodicMemory:
    store = EpisodeStore("valuemodels", embeddings=embeddings,
                         persist_directory=str(directory / "chroma"))
    model = ModelDistillation(
        seed=0, embeddings=embeddings, min_episodes=8, max_epochs=60, validation_fraction=0.0,
        teacher=TeacherConfig(hidden_sizes=(64,)), student=StudentConfig(hidden_sizes=(32,)),
    )
    return DistilledEpisodicMemory(store=store, distillation=model,
                                   model_dir=str(directory / "models"), **kwargs)


def refund_minus_weather(memory: DistilledEpisodicMemory, namespace: str) -> float:
    refund, weather = memory.score_batch(
        ["Could you help me with the refund for my order?", "How will the weather be?"],
        namespace=namespace,
    )
    return refund.expected - weather.expected


@pytest.mark.slow
def test_each_namespace_learns_its_own_model_with_the_shared_one_as_fallback(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = make_memory(tmp_path, embeddings)
    memory.add_episodes(episodes("likes-refunds", 0) + episodes("likes-weather", 1))
    memory.add_episodes(episodes("third", 0))
    with pytest.raises(NotTrainedError, match="namespace 'likes-refunds' has 12 rated"):
        memory.score("anything", namespace="likes-refunds")

    a = memory.consolidate("likes-refunds")
    b = memory.consolidate("likes-weather")
    assert (a.namespace, a.episodes_used, b.episodes_used) == ("likes-refunds", 12, 12)
    assert refund_minus_weather(memory, "likes-refunds") > 0.3
    assert refund_minus_weather(memory, "likes-weather") < -0.3
    assert "namespaces" in Path(str(a.checkpoint_path)).parts
    with pytest.raises(NotTrainedError):  # no model of its own, no shared model yet
        memory.score("anything", namespace="third")

    shared = memory.consolidate()  # every namespace: refunds won 24 of 36 episodes
    assert shared.namespace is None and shared.episodes_used == 36
    assert memory.value_model("third") is memory.distillation
    assert memory.value_model("likes-weather") is not memory.distillation
    assert memory.model_version("third") == 1 and memory.model_version("likes-refunds") == 1

    # Another process over the same directory answers each namespace with the same model.
    other = make_memory(tmp_path, embeddings)
    for namespace in ("likes-refunds", "likes-weather", "third"):
        assert refund_minus_weather(other, namespace) == pytest.approx(
            refund_minus_weather(memory, namespace), abs=1e-6)


@pytest.mark.slow
def test_every_answer_says_which_model_gave_it(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = make_memory(tmp_path, embeddings)
    memory.add_episodes(episodes("likes-refunds", 0) + episodes("third", 1))
    memory.consolidate("likes-refunds")
    memory.consolidate("likes-refunds")  # its own model, v2
    memory.consolidate()  # the shared model, v1
    query, answers = "Can you help with the refund for my order?", ["Sure.", "No."]
    for namespace, expected in (("likes-refunds", ("likes-refunds", 2)), ("third", (None, 1))):
        assert (memory.model_namespace(namespace), memory.model_version(namespace)) == expected
        estimates = [memory.score(query, namespace=namespace),
                     *memory.score_batch([query, "weather?"], namespace=namespace),
                     *(r.estimate for r in memory.rank_responses(query, answers,
                                                                 namespace=namespace))]
        assert {(e.model_namespace, e.model_version) for e in estimates} == {expected}
        documents = memory.invoke(query, namespace=namespace)
        assert documents and {(d.metadata["model_namespace"], d.metadata["model_version"])
                              for d in documents} == {expected}


@pytest.mark.slow
def test_a_bounded_cache_reloads_evicted_models_from_disk(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = make_memory(tmp_path, embeddings)
    for i in range(3):
        memory.add_episodes(episodes(f"user-{i}", i % 2))
        memory.consolidate(f"user-{i}")
    scores = {f"user-{i}": refund_minus_weather(memory, f"user-{i}") for i in range(3)}
    small = make_memory(tmp_path, embeddings, max_cached_models=1)
    for _ in range(2):
        for namespace, expected in scores.items():
            assert refund_minus_weather(small, namespace) == pytest.approx(expected, abs=1e-6)
    assert len(small._models._entries) == 2  # the shared model and one namespace model


@pytest.mark.slow
def test_a_new_checkpoint_version_is_picked_up_without_a_restart(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    trainer = make_memory(tmp_path, embeddings)
    trainer.add_episodes(episodes("user", 0))
    trainer.consolidate("user")
    agent = make_memory(tmp_path, embeddings, model_refresh_s=0.2)
    lazy = make_memory(tmp_path, embeddings, model_refresh_s=3600)
    assert agent.model_version("user") == lazy.model_version("user") == 1
    assert refund_minus_weather(agent, "user") > 0.3

    trainer.store.delete_namespace("user")  # the user changed their mind: weather went well
    trainer.add_episodes(episodes("user", 1))
    trainer.consolidate("user")
    time.sleep(0.3)
    assert agent.model_version("user") == 2
    assert lazy.model_version("user") == 1  # the disk is checked at most every model_refresh_s
    assert refund_minus_weather(agent, "user") < -0.3


@pytest.mark.slow
def test_a_damaged_new_version_keeps_the_model_in_use(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    trainer = make_memory(tmp_path, embeddings)
    trainer.add_episodes(episodes("user", 0))
    report = trainer.consolidate("user")
    agent = make_memory(tmp_path, embeddings, model_refresh_s=0.0)
    before = refund_minus_weather(agent, "user")
    manifest = Path(str(report.checkpoint_path))
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 7'))
    os.utime(manifest, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert refund_minus_weather(agent, "user") == pytest.approx(before, abs=1e-9)
    assert agent.model_version("user") == 1


@pytest.mark.slow
def test_a_checkpoint_of_an_older_format_is_retrained_not_a_dead_end(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    # A user upgrades: the checkpoints on disk have an older format. The memory opens, says
    # it is untrained, and `consolidate()` trains a new version (it was refused forever).
    memory = make_memory(tmp_path, embeddings)
    memory.add_episodes(episodes("default", 0))
    memory.consolidate()
    manifests = list((tmp_path / "models").glob("*_config*.json"))  # the latest and each version
    assert manifest_path(tmp_path / "models" / "value_model") in manifests
    for manifest in manifests:
        data = json.loads(manifest.read_text())
        data["format_version"] -= 1
        manifest.write_text(json.dumps(data))
    upgraded = make_memory(tmp_path, embeddings)
    assert not upgraded.is_trained
    with pytest.raises(NotTrainedError):
        upgraded.score("Can you help with the refund for my order?")
    report = upgraded.consolidate()
    assert upgraded.is_trained and report.checkpoint_version == 2
    assert refund_minus_weather(upgraded, "default") > 0.3
