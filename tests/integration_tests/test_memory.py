"""DistilledEpisodicMemory with real parts: Chroma in a temp dir, MiniLM, torch training."""

from __future__ import annotations

import inspect
import random
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.retrievers import BaseRetriever
from test_writer import GatedEmbeddings

from langchain_kd_memory.config import DistillationConfig, StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings, OpenAIEmbedder
from langchain_kd_memory.episodes import Episode, RewardEstimate
from langchain_kd_memory.errors import (
    ConfigError,
    EmbedderMismatchError,
    EpisodeNotFoundError,
    InsufficientDataError,
    InvalidArgumentError,
    InvalidRewardError,
    NotTrainedError,
)
from langchain_kd_memory.memory import ConsolidationReport, DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.value_models import checkpoint_prefix
from langchain_kd_memory.writer import BackgroundWriter

GOOD_TOPICS = ["refund for my order", "invoice for my subscription", "billing charge on my card"]
BAD_TOPICS = ["weather forecast for the weekend", "rain tomorrow in the city",
              "snow in the mountains"]
OPENINGS = ["Can you help with the", "I have a question about the", "Tell me about the",
            "What should I know about the", "Please explain the", "I need info on the"]
ENDINGS = ["", " please", " today", " quickly", " again", " for my family", " this week"]


def topic_episodes(n: int, seed: int = 0) -> list[Episode]:
    """Synthetic episodes whose topic decides the reward: billing ~0.9, weather ~0.1."""
    rng = random.Random(seed)
    episodes = []
    for i in range(n):
        good = i % 2 == 0
        topic = rng.choice(GOOD_TOPICS if good else BAD_TOPICS)
        query = f"{rng.choice(OPENINGS)} {topic}{rng.choice(ENDINGS)}?"
        reward = (0.9 if good else 0.1) + rng.uniform(-0.05, 0.05)
        episodes.append(Episode(query, f"Here is what I found about the {topic}.", reward=reward))
    return episodes


def make_memory(tmp_path: Path, embeddings: LocalEmbeddings, min_episodes: int = 20,
                **kwargs) -> DistilledEpisodicMemory:
    store = EpisodeStore("mem", embeddings=embeddings, persist_directory=str(tmp_path / "chroma"))
    model = ModelDistillation(
        seed=0, embeddings=embeddings, max_epochs=60, patience=5, min_episodes=min_episodes,
        teacher=TeacherConfig(hidden_sizes=(128, 64)), student=StudentConfig(hidden_sizes=(32,)),
    )
    return DistilledEpisodicMemory(
        store=store, distillation=model, model_dir=str(tmp_path / "models"), **kwargs
    )


@pytest.fixture
def gated() -> GatedEmbeddings:
    return GatedEmbeddings()


@pytest.fixture
def memory(tmp_path: Path, embeddings: LocalEmbeddings) -> DistilledEpisodicMemory:
    return make_memory(tmp_path, embeddings, min_episodes=10)


def test_recall_returns_documents_with_metadata(memory: DistilledEpisodicMemory) -> None:
    first = memory.add_episode(
        "How do I reset my password?", "Use the reset link.", reward=1.0,
        metadata={"topic": "account"},
    )
    memory.add_episode("What is the capital of France?", "Paris.")
    docs = memory.invoke("I forgot my password")
    assert len(docs) == 2 and all(isinstance(d, Document) for d in docs)
    top = docs[0]
    assert top.id == first and top.metadata["id"] == first
    assert top.page_content == "Query: How do I reset my password?\nResponse: Use the reset link."
    assert top.metadata["query"] == "How do I reset my password?"
    assert top.metadata["response"] == "Use the reset link."
    assert top.metadata["reward"] == 1.0 and top.metadata["topic"] == "account"
    assert top.metadata["namespace"] == "default" and top.metadata["created_at"]
    assert top.metadata["value_source"] == "observed"
    assert docs[1].metadata["reward"] is None and docs[1].metadata["value_source"] == "neutral"
    assert 0.0 < top.metadata["similarity"] <= 1.0 and 0.0 <= top.metadata["value"] <= 1.0
    assert docs[0].metadata["score"] >= docs[1].metadata["score"]
    assert memory.invoke("anything", namespace="empty-namespace") == []


def test_reward_aware_ranking(memory: DistilledEpisodicMemory) -> None:
    bad = memory.add_episode("How do I reset my password?", "No idea.", reward=0.0)
    good = memory.add_episode("How can I reset my password?", "Use the reset link.", reward=1.0)
    memory.add_episode("How do I bake bread?", "Flour, water, salt, yeast.", reward=0.5)
    query = "How do I reset my password?"  # exactly the badly rewarded one
    by_similarity = memory.invoke(query, reward_weight=0.0)
    assert [d.id for d in by_similarity[:2]] == [bad, good]
    assert [d.metadata["score"] for d in by_similarity] == [
        d.metadata["similarity"] for d in by_similarity
    ]
    reward_aware = memory.invoke(query)  # default reward_weight 0.3
    assert [d.id for d in reward_aware[:2]] == [good, bad]
    top = reward_aware[0].metadata
    assert top["value"] == 1.0  # best observed reward of the candidates
    assert top["score"] == pytest.approx(0.7 * top["similarity"] + 0.3 * top["value"])


def test_namespaces_are_isolated_and_per_call_arguments(memory: DistilledEpisodicMemory) -> None:
    for i in range(6):
        memory.add_episode(f"Question number {i} about cats", f"answer {i}",
                           metadata={"parity": i % 2})
    other = memory.add_episode("Question about cats", "dogs are better", namespace="user/42")
    assert {d.metadata["namespace"] for d in memory.invoke("cats", k=10)} == {"default"}
    assert [d.id for d in memory.invoke("cats", namespace="user/42")] == [other]
    assert len(memory.invoke("cats")) == 4  # the memory's k
    assert len(memory.invoke("cats", k=2)) == 2
    odd = memory.invoke("cats", k=10, filter={"parity": 1})
    assert len(odd) == 3 and all(d.metadata["parity"] == 1 for d in odd)
    memory.clear()
    assert memory.invoke("cats") == []
    assert memory.store.count("user/42") == 1  # clear() only touches its own namespace


def test_invalid_arguments(memory: DistilledEpisodicMemory) -> None:
    memory.add_episode("a question", "an answer")
    with pytest.raises(InvalidArgumentError):
        memory.invoke("question", k=0)
    with pytest.raises(InvalidArgumentError):
        memory.invoke("question", reward_weight=1.5)
    with pytest.raises(InvalidArgumentError):
        memory.invoke("   ")
    with pytest.raises(InvalidArgumentError):
        memory.invoke("question", filter={"kd_reward": 1})
    with pytest.raises(InvalidRewardError):
        memory.add_episode("q", reward=float("nan"))
    with pytest.raises(EpisodeNotFoundError):
        memory.record_feedback("no-such-id", 1.0)
    with pytest.raises(ValueError):
        DistilledEpisodicMemory(store=memory.store, distillation=memory.distillation, k=0)


def test_a_misspelled_argument_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'persist_dir' .*'persist_directory'") as caught:
        DistilledEpisodicMemory(persist_dir="./e4", rewardrange=(0, 1))
    assert "'rewardrange' (did you mean 'reward_range'?)" in str(caught.value)
    with pytest.raises(ConfigError, match="'colour'$"):
        DistilledEpisodicMemory(colour="blue")
    assert list(tmp_path.iterdir()) == []  # no store was built in ./.kd_memory
    for build, typo, meant in [
        (lambda: ModelDistillation(temprature=2.0), "temprature", "temperature"),
        (lambda: TeacherConfig(hiden_sizes=(64,)), "hiden_sizes", "hidden_sizes"),
        (lambda: StudentConfig(dropuot=0.2), "dropuot", "dropout"),
        (lambda: DistillationConfig(cross_fit_fold=3), "cross_fit_fold", "cross_fit_folds"),
    ]:
        with pytest.raises(ConfigError, match=f"'{typo}' \\(did you mean '{meant}'\\?\\)"):
            build()


def test_embedder_mismatch_is_refused(memory: DistilledEpisodicMemory) -> None:
    openai = OpenAIEmbedder(model="text-embedding-3-small", api_key="unused")  # no request made
    other = ModelDistillation(embeddings=openai, seed=0)
    with pytest.raises(EmbedderMismatchError, match="text-embedding-3-small"):
        DistilledEpisodicMemory(store=memory.store, distillation=other)


def test_feedback_updates_reward_and_ranking(memory: DistilledEpisodicMemory) -> None:
    episode_id = memory.add_episode("Where is my parcel?", "It left the depot.")
    updated = memory.record_feedback(episode_id, 0.25)
    assert updated.reward == 0.25 and updated.id == episode_id
    assert memory.store.get([episode_id])[0].reward == 0.25
    assert memory.invoke("parcel")[0].metadata["reward"] == 0.25


def test_score_before_training_explains_what_is_missing(memory: DistilledEpisodicMemory) -> None:
    memory.add_episodes(topic_episodes(3))
    with pytest.raises(NotTrainedError, match="has 3 rated episodes .* at least 10"):
        memory.score("billing question")
    with pytest.raises(InsufficientDataError, match="3 rated episodes"):
        memory.consolidate()
    assert not memory.is_trained


def test_score_with_enough_ratings_but_no_consolidation_says_to_consolidate(
    memory: DistilledEpisodicMemory,
) -> None:
    memory.add_episodes(topic_episodes(12))
    with pytest.raises(NotTrainedError, match=r"12 rated episodes, enough .* call consolidate\(\)"
                       ) as caught:
        memory.score("billing question")
    assert "at least" not in str(caught.value)


@pytest.mark.slow
def test_consolidation_learns_from_stored_vectors_and_reloads(
    tmp_path: Path, counting_embeddings: LocalEmbeddings
) -> None:
    memory = make_memory(tmp_path, counting_embeddings)
    memory.add_episodes(topic_episodes(200))
    unrated_good = memory.add_episode("Can you help with the refund for my order?", "Sure.")
    unrated_bad = memory.add_episode("Can you help with the rain tomorrow in the city?", "Sure.")
    counting_embeddings.calls = 0

    report = memory.consolidate()

    assert counting_embeddings.calls == 0  # trained on stored vectors only
    assert isinstance(report, ConsolidationReport)
    assert report.episodes_used == 200 and report.namespace is None  # the shared model
    assert report.checkpoint_version == 1 and Path(report.checkpoint_path).exists()
    assert report.duration_s > 0 and "student" in report.metrics

    good = memory.score("I have a question about the invoice for my subscription")
    bad = memory.score("Tell me about the snow in the mountains")
    assert isinstance(good, RewardEstimate)
    assert good.expected > bad.expected + 0.3
    scores = memory.score_batch(["refund please", "weather forecast"])
    assert len(scores) == 2 and scores[0].expected > scores[1].expected

    # Unrated episodes are valued by the teacher, from their stored query and response vectors.
    recalled = memory.invoke("Can you help with the refund or the rain?", k=202)
    docs = {d.id: d for d in recalled if d.id in (unrated_good, unrated_bad)}
    assert {d.metadata["value_source"] for d in docs.values()} == {"predicted"}
    assert docs[unrated_good].metadata["value"] > docs[unrated_bad].metadata["value"]

    reloaded = make_memory(tmp_path, counting_embeddings)
    assert reloaded.is_trained
    assert reloaded.score("Tell me about the snow in the mountains").expected == pytest.approx(
        bad.expected, abs=1e-6
    )
    # Bounded cost: the most recent episodes only.
    assert memory.consolidate(max_training_episodes=50).episodes_used == 50


@pytest.mark.slow
def test_scoring_keeps_working_during_consolidation(tmp_path: Path,
                                                    embeddings: LocalEmbeddings) -> None:
    memory = make_memory(tmp_path, embeddings, min_episodes=10)
    memory.add_episodes(topic_episodes(60))
    memory.consolidate(num_epochs=2)
    before = memory.distillation.student
    errors: list[BaseException] = []
    estimates: list[RewardEstimate] = []

    def train() -> None:
        try:
            memory.consolidate()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=train)
    worker.start()
    while worker.is_alive() or not estimates:
        estimates.append(memory.score("refund for my order"))
        memory.add_episode("Tell me about the refund for my order", "ok", reward=0.9)
    worker.join()
    assert not errors
    assert memory.distillation.student is not before  # swapped in once training finished
    assert all(np.isfinite(e.expected) for e in estimates)


def test_classic_memory_members(memory: DistilledEpisodicMemory) -> None:
    assert memory.memory_variables == ["history"]
    assert memory.load_memory_variables({"input": "hello"}) == {"history": ""}
    memory.save_context({"input": "My name is Ada."}, {"output": "Nice to meet you, Ada."})
    memory.save_context({"input": "I like tea."}, {"output": "Noted."})
    history = memory.load_memory_variables({"input": "What is my name?"})["history"]
    assert "Human: My name is Ada.\nAI: Nice to meet you, Ada." in history
    assert history.index("Ada") < history.index("tea")  # most relevant first

    chat = DistilledEpisodicMemory(
        store=memory.store, distillation=memory.distillation, return_messages=True,
        memory_key="chat_history", input_key="question", k=1,
    )
    messages = chat.load_memory_variables({"question": "my name?", "context": "x"})["chat_history"]
    assert messages == [HumanMessage("My name is Ada."), AIMessage("Nice to meet you, Ada.")]
    with pytest.raises(InvalidArgumentError, match="input_key"):
        memory.load_memory_variables({"a": "x", "b": "y"})

    memory.clear()
    assert memory.load_memory_variables({"input": "What is my name?"}) == {"history": ""}


async def test_async_twins(memory: DistilledEpisodicMemory) -> None:
    episode_id = await memory.aadd_episode("Async question about trains", "Trains run late.")
    await memory.arecord_feedback(episode_id, 0.5)
    docs = await memory.ainvoke("trains", k=1, namespace="default")
    assert docs[0].id == episode_id and docs[0].metadata["reward"] == 0.5
    await memory.asave_context({"input": "async hello"}, {"output": "hi"})
    assert "async hello" in (await memory.aload_memory_variables({"input": "hello"}))["history"]
    with pytest.raises(NotTrainedError):
        await memory.ascore("trains")
    await memory.aclear()
    assert memory.store.count("default") == 0


def test_delete_forgets_stored_and_pending_episodes_and_a_replay_brings_none_back(
    tmp_path: Path, gated: GatedEmbeddings
) -> None:
    memory = make_memory(tmp_path, gated)
    writer = BackgroundWriter(memory, journal=tmp_path / "runs.journal")
    stored = memory.add_episode("my card number is 4111", "Noted.")
    kept = memory.add_episode("what is the weather", "Sunny.")
    twin = memory.add_episode("my card number is 4111", "Noted.", namespace="user-7",
                              episode_id=stored)  # the same id in another namespace
    gated.close()
    writer.submit([Episode("a run being written", namespace="other")])
    assert gated.entered.wait(timeout=60)  # the writer is busy: the next runs stay queued
    writer.submit([Episode("my PIN is 1234", id="pin")])
    writer.submit([Episode("my PIN is 1234", id="pin", namespace="user-7")])

    memory.delete([stored, "pin"])

    with pytest.raises(EpisodeNotFoundError, match="no-such-id"):
        memory.delete(["no-such-id"])
    gated.gate.set()
    assert writer.flush(timeout=120)
    writer.close()
    for again in (memory, make_memory(tmp_path, gated)):
        if again is not memory:  # a fresh process: its writer replays the journal
            replaying = BackgroundWriter(again, journal=tmp_path / "runs.journal")
            assert replaying.flush(timeout=120)
            replaying.close()
        assert [e.id for e in again.store.list_episodes()] == [kept]
        assert {e.id for e in again.store.list_episodes("user-7")} == {twin, "pin"}


@pytest.mark.slow
def test_delete_namespace_forgets_its_episodes_model_and_pending_runs(
    tmp_path: Path, gated: GatedEmbeddings
) -> None:
    memory = make_memory(tmp_path, gated, min_episodes=10)
    memory.add_episodes([replace(e, namespace="user-7") for e in topic_episodes(20)])
    kept = memory.add_episode("a question of someone else", "An answer.")
    memory.consolidate("user-7")
    assert memory.score("refund please", namespace="user-7").model_namespace == "user-7"
    model_files = Path(checkpoint_prefix(str(tmp_path / "models"), "user-7")).parent
    assert any(model_files.iterdir())
    writer = BackgroundWriter(memory, journal=tmp_path / "runs.journal")
    gated.close()
    writer.submit([Episode("a run being written", namespace="other")])
    assert gated.entered.wait(timeout=60)
    writer.submit([Episode("my address is 1 Main St", id="queued", namespace="user-7")])

    assert memory.delete_namespace("user-7") == 20

    assert not model_files.exists()
    gated.gate.set()
    assert writer.flush(timeout=120)
    writer.close()
    fresh = make_memory(tmp_path, gated, min_episodes=10)
    replaying = BackgroundWriter(fresh, journal=tmp_path / "runs.journal")
    assert replaying.flush(timeout=120)
    replaying.close()
    for again in (memory, fresh):
        assert again.store.count("user-7") == 0
        assert again.model_version("user-7") is None
        with pytest.raises(NotTrainedError):  # its own model is gone, also from the cache
            again.score("refund please", namespace="user-7")
        assert [e.id for e in again.store.list_episodes()] == [kept]
    assert not model_files.exists()


def test_clear_forgets_the_namespace_as_delete_namespace_does(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    """Classic memory's `clear()` forgets the namespace's own model too (before: the episodes
    went and the model trained on them kept answering)."""
    memory = make_memory(tmp_path, embeddings, min_episodes=10, namespace="user-7")
    memory.add_episodes([replace(e, namespace="user-7") for e in topic_episodes(20)])
    memory.consolidate("user-7")
    memory.clear()
    assert memory.store.count("user-7") == 0
    assert memory.model_version("user-7") is None
    with pytest.raises(NotTrainedError):
        memory.score("refund please")


# Cheap helpers that do no I/O worth a thread: no async twin.
WITHOUT_TWIN = {"value_model", "model_namespace", "model_version", "resolve_namespace",
                "add_rating_listener", "remove_rating_listener", "add_pending_source",
                "as_router", "as_store"}


def test_every_public_method_has_an_async_twin_with_the_same_signature() -> None:
    own = {name: value for name, value in vars(DistilledEpisodicMemory).items()
           if inspect.isfunction(value) and not name.startswith("_")
           and not hasattr(BaseRetriever, name)}  # pydantic's hooks, LangChain's own twins
    twins = {name for name in own if name.startswith("a") and name[1:] in own}
    for name in sorted(set(own) - twins - WITHOUT_TWIN):
        twin = own.get(f"a{name}")
        assert twin is not None and inspect.iscoroutinefunction(twin), f"no a{name}"
        assert inspect.signature(twin) == inspect.signature(own[name]), f"a{name}"


async def test_async_twins_take_a_namespace_and_trajectories(
    memory: DistilledEpisodicMemory,
) -> None:
    with pytest.raises(NotTrainedError, match="'user-7'"):
        await memory.ascore("trains", namespace="user-7")
    with pytest.raises(NotTrainedError, match="'user-7'"):
        await memory.ascore_batch(["trains"], namespace="user-7")
    with pytest.raises(NotTrainedError, match="'user-7'"):
        await memory.arank_responses("trains", ["late", "early"], namespace="user-7")
    ids = await memory.aadd_trajectory([("board", "wait"), ("ride", "arrive")], 1.0,
                                       trajectory_id="trip", namespace="user-7")
    assert ids == ["trip/0", "trip/1"]
    assert [e.reward for e in memory.store.get(ids, namespace="user-7")] == [
        pytest.approx(0.9), 1.0]
    assert await memory.adelete(["trip/0"], namespace="user-7") is None
    assert await memory.adelete_namespace("user-7") == 1


@pytest.mark.slow
def test_a_value_model_that_learned_nothing_does_not_rerank(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    """Random rewards: the teacher cannot beat the mean, so unrated episodes keep the neutral
    value instead of noise."""
    rng = random.Random(1)
    memory = make_memory(tmp_path, embeddings)
    noisy = [replace(e, reward=rng.uniform(0.0, 1.0)) for e in topic_episodes(120, seed=3)]
    memory.add_episodes(noisy)
    unrated = memory.add_episode("Can you help with the refund for my order?", "Sure.")
    memory.consolidate()

    validation = memory.distillation.metrics["validation"]
    assert validation["teacher_mae"] >= validation["mean_mae"]
    doc = next(d for d in memory.invoke("refund for my order", k=10) if d.id == unrated)
    assert doc.metadata["value_source"] == "neutral" and doc.metadata["value"] == 0.5


def test_a_dict_episode_with_namespace_none_stays_in_the_memorys_namespace(
    tmp_store: EpisodeStore,
) -> None:
    """A tenant leak: None used to send the episode to "default", another tenant's namespace."""
    tenant = DistilledEpisodicMemory(store=tmp_store, namespace="user-42")
    other = DistilledEpisodicMemory(store=tmp_store)
    [episode_id] = tenant.add_episodes([{"query": "my account number is 1234", "namespace": None}])
    assert tmp_store.get([episode_id], all_namespaces=True)[0].namespace == "user-42"
    assert other.invoke("what is my account number?") == []
    assert [d.metadata["id"] for d in tenant.invoke("account number")] == [episode_id]


ANSWERS = {  # question: (an answer that helped, one that did not)
    "How do I reset my password?": ("Click 'Forgot password' and follow the e-mailed link.",
                                    "Passwords are not our business."),
    "Where is my parcel?": ("Your parcel left our warehouse yesterday; tracking: ZX-41.",
                            "Parcels are the courier's problem, not ours."),
    "Can I get a refund?": ("Yes: open Orders, choose the item and press Return.",
                            "Refunds are not possible, sorry."),
    "How do I change my address?": ("Edit it under Account > Addresses before dispatch.",
                                    "Addresses cannot be changed, sorry."),
    "Do you sell gift cards?": ("Yes, from 10 to 200 euros, at /gift.",
                                "We know nothing about gift cards."),
    "How do I cancel my subscription?": ("Account > Subscription > Cancel, effective at once.",
                                         "Subscriptions cannot be cancelled."),
    "My e-book does not open.": ("Download it again as EPUB from Library > Downloads.",
                                 "E-books are your responsibility."),
    "Can I pay by invoice?": ("Yes, choose 'Invoice' at checkout; pay within 14 days.",
                              "Invoices? No idea, sorry."),
    "How long does delivery take?": ("Two to three working days within the country.",
                                     "Delivery times are not our concern."),
    "Is my card charged twice?": ("No: the second line is a pre-authorisation, gone in 3 days.",
                                  "Card charges are your bank's problem."),
    "How do I contact support?": ("Write to help@shop.example or call 0800 123 456.",
                                  "Support is not available, sorry."),
    "Can I change my order?": ("Yes, until it ships: Orders > Edit.",
                               "Orders cannot be changed, sorry."),
}


@pytest.mark.slow
def test_unrated_episodes_are_valued_by_the_teacher_from_their_answer(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    """The examples/chatbot.py case: questions that usually go well, answered helpfully (reward
    1) or not (0). An unrated "Passwords are your responsibility, sorry." is valued low and ranks
    below an unrated helpful answer, although its question alone (all the student sees)
    predicts a good outcome: the student valued it 0.93 and ranked it second."""
    memory = make_memory(tmp_path, embeddings, min_episodes=10)
    rated = []
    for question, (good, bad) in ANSWERS.items():
        for prefix in ("", "Hi, ", "Quick question: "):
            rated.append({"query": prefix + question, "response": good, "reward": 1.0})
        rated.append({"query": question, "response": bad, "reward": 0.0})
    memory.add_episodes(rated)
    memory.consolidate()
    refusal = memory.add_episode("Hello, how do I reset my password?",
                                 "Passwords are your responsibility, sorry.")
    helpful = memory.add_episode("Hello, how do I reset my password?",
                                 "Use 'Forgot password' on the login page, then the e-mail link.")

    docs = {d.id: d.metadata for d in memory.invoke("I forgot my password", k=20)}
    assert docs[refusal]["value_source"] == docs[helpful]["value_source"] == "predicted"
    assert docs[refusal]["value"] < 0.5 < docs[helpful]["value"]
    ranked = [d.id for d in memory.invoke("I forgot my password", k=20)]
    assert ranked.index(helpful) < ranked.index(refusal)
    assert memory.score("Hello, how do I reset my password?").expected > 0.5  # the student
