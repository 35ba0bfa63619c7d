"""ConsolidationCallback on real LCEL chains and `create_agent` agents with fake chat models."""

from __future__ import annotations

import gc
import logging
import math
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool
from pydantic import PrivateAttr

from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import MAX_TEXT_LENGTH
from langchain_kd_memory.errors import (
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidRewardError,
    NotTrainedError,
)
from langchain_kd_memory.memory import ConsolidationReport, DistilledEpisodicMemory
from langchain_kd_memory.runs import FinishedRun
from langchain_kd_memory.storage import EpisodeStore

QUESTIONS = [
    "Can I get a refund for my order?", "What is the weather forecast for the weekend?",
    "How do I get a refund on my invoice?", "Will it rain tomorrow in the city?",
    "Please refund the double charge on my card", "Is snow expected in the mountains?",
]


def topic_reward(run: FinishedRun) -> float:
    return 0.9 if "refund" in run.inputs["question"] else 0.1


class TrackedMemory(DistilledEpisodicMemory):
    """The real memory, noting which threads consolidate and how many do so at once."""

    _track: dict[str, Any] = PrivateAttr(
        default_factory=lambda: {"threads": [], "active": 0, "max_active": 0}
    )
    _track_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def track(self) -> dict[str, Any]:
        return self._track

    def consolidate(self, namespace: str | None = None, **kwargs: Any) -> ConsolidationReport:
        track, lock = self._track, self._track_lock
        with lock:
            track["threads"].append(threading.current_thread().name)
            track["active"] += 1
            track["max_active"] = max(track["max_active"], track["active"])
        try:
            return super().consolidate(namespace, **kwargs)
        finally:
            with lock:
                track["active"] -= 1


@pytest.fixture
def memory(tmp_path: Path, embeddings: LocalEmbeddings) -> TrackedMemory:
    model = ModelDistillation(
        seed=0, embeddings=embeddings, max_epochs=40, patience=5, learning_rate=1e-2,
        min_episodes=10,
        teacher=TeacherConfig(hidden_sizes=(64,)), student=StudentConfig(hidden_sizes=(32,)),
    )
    store = EpisodeStore("callbacks", embeddings=embeddings, persist_directory=str(tmp_path / "db"))
    return TrackedMemory(store=store, distillation=model)


@pytest.fixture
def chain() -> Runnable:
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{question}")])
    model = FakeListChatModel(responses=["Sure, done.", "I cannot tell.", "Here you go."])
    return prompt | model | StrOutputParser()


def run_chain(chain: Runnable, callback: ConsolidationCallback, n: int, offset: int = 0) -> None:
    for i in range(offset, offset + n):
        chain.invoke({"question": QUESTIONS[i % len(QUESTIONS)]},
                     config={"callbacks": [callback]})


@pytest.mark.slow
def test_one_episode_per_top_level_run_with_run_id(
    memory: TrackedMemory, chain: Runnable
) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=50)
    run_ids = [uuid.uuid4() for _ in range(3)]
    for i, run_id in enumerate(run_ids):
        chain.invoke({"question": QUESTIONS[i]}, config={"callbacks": [callback], "run_id": run_id})
    assert callback.wait(timeout=60)  # the background writer has stored what was queued
    # Each run has nested prompt, model and parser runs: none of them is an episode.
    assert callback.status.episodes_recorded == 3 and memory.store.count() == 3
    episodes = memory.store.get([str(r) for r in run_ids])
    assert [e.query for e in episodes] == QUESTIONS[:3]
    assert [e.response for e in episodes] == ["Sure, done.", "I cannot tell.", "Here you go."]
    assert all(e.reward is None for e in episodes)

    memory.record_feedback(run_ids[1], 0.75)  # feedback by run id, later
    assert memory.store.get([str(run_ids[1])])[0].reward == 0.75
    assert callback.status.ratings_since_consolidation == 1


def test_failed_runs_are_not_episodes(memory: TrackedMemory) -> None:
    def explode(_: Any) -> str:
        raise RuntimeError("tool broke")

    callback = ConsolidationCallback(memory, every_n_episodes=5)
    with pytest.raises(RuntimeError, match="tool broke"):  # the agent's own error is untouched
        RunnableLambda(explode).invoke({"question": "q"}, config={"callbacks": [callback]})
    assert memory.store.count() == 0 and callback.status.episodes_recorded == 0
    assert callback.status.last_error is None


@pytest.mark.slow
def test_consolidates_every_n_ratings_in_the_background(
    memory: TrackedMemory, chain: Runnable
) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=12, reward_fn=topic_reward)
    run_chain(chain, callback, 11)
    assert callback.wait(timeout=60)
    assert callback.status.consolidations_run == 0
    with pytest.raises(NotTrainedError, match="11 rated episodes"):
        memory.score("refund")

    run_chain(chain, callback, 1, offset=11)
    assert callback.wait(timeout=120)
    status = callback.status
    assert status.consolidations_run == 1 and status.last_error is None
    assert status.last_report is not None and status.last_report.episodes_used == 12
    assert memory.track["threads"] == ["kd-memory-consolidation"]  # not the agent's thread
    refund, weather = memory.score("refund my order"), memory.score("weather forecast")
    assert refund.expected > weather.expected + 0.2

    # A new reward for a rated episode is no new rating (as for the worker): flipping the
    # rewards of the refund runs trains nothing by itself.
    for episode in memory.store.list_episodes():
        memory.record_feedback(episode.id, 0.0 if "refund" in episode.query else 0.9)
    assert callback.wait(timeout=120)
    assert callback.status.consolidations_run == 1
    assert callback.status.ratings_since_consolidation == 0
    # Feedback that rates an episode for the first time counts: 12 of them retrain.
    unrated = [memory.add_episode(q + " (later)", "ok") for q in QUESTIONS * 2]
    for episode_id, question in zip(unrated, QUESTIONS * 2, strict=True):
        memory.record_feedback(episode_id, 0.0 if "refund" in question else 0.9)
    assert callback.wait(timeout=120)
    assert callback.status.consolidations_run == 2
    assert memory.score("refund my order").expected < refund.expected - 0.2


@pytest.mark.slow
def test_triggers_during_training_are_coalesced(memory: TrackedMemory) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=1)
    memory.add_episodes([
        {"query": q, "response": "ok", "reward": 0.9 if "refund" in q else 0.1}
        for q in QUESTIONS * 2
    ])
    threads = [threading.Thread(target=lambda i=i: memory.add_episode(
        f"extra question {i}", reward=0.5)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert callback.wait(timeout=120)
    status = callback.status
    assert memory.track["max_active"] == 1  # never two at once
    assert 1 <= status.consolidations_run == len(memory.track["threads"]) < 20
    assert not status.training_in_progress and status.last_error is None


def test_raising_reward_fn_does_not_break_the_agent(
    memory: TrackedMemory, chain: Runnable
) -> None:
    def broken(run: FinishedRun) -> float:
        raise ValueError("reward service down")

    callback = ConsolidationCallback(memory, reward_fn=broken)
    answer = chain.invoke({"question": "Hello?"}, config={"callbacks": [callback]})
    assert answer == "Sure, done."
    assert callback.wait(timeout=60)
    status = callback.status
    assert isinstance(status.last_error, ValueError) and status.errors == 1
    assert status.episodes_recorded == 1  # recorded, unrated
    assert memory.store.list_episodes()[0].reward is None


def test_a_consolidation_with_too_little_data_is_skipped_and_logged_not_an_error(
    memory: TrackedMemory, chain: Runnable, caplog: pytest.LogCaptureFixture
) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=2, reward_fn=topic_reward,
                                     background=False)
    with caplog.at_level(logging.INFO, logger="langchain_kd_memory.callbacks"):
        run_chain(chain, callback, 2)  # 2 rated episodes < min_episodes: training refuses
        assert callback.wait(timeout=60)
    status = callback.status
    assert (status.consolidations_run, status.consolidations_skipped) == (0, 1)
    assert (status.errors, status.last_error) == (0, None)  # counted as what it is
    assert any("needs at least 10" in record.getMessage() for record in caplog.records)
    assert status.episodes_recorded == 2


@pytest.mark.slow
def test_inline_consolidation_without_background(
    memory: TrackedMemory, chain: Runnable
) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=10, reward_fn=topic_reward,
                                     background=False)
    run_chain(chain, callback, 10)
    assert callback.wait(timeout=120)
    assert callback.status.consolidations_run == 1 and memory.is_trained
    # Inline in the thread that made the 10th rating: the writer's, which stored the 10th run.
    assert memory.track["threads"] == ["kd-memory-writer"]


@pytest.mark.slow
def test_inline_recording_and_consolidation_stay_in_the_agents_thread(
    memory: TrackedMemory, chain: Runnable
) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=10, reward_fn=topic_reward,
                                     background=False, record_inline=True)
    run_chain(chain, callback, 10)
    assert callback.status.consolidations_run == 1 and memory.is_trained
    assert memory.track["threads"] == [threading.current_thread().name]


class ToolCallingFakeModel(GenericFakeChatModel):
    """GenericFakeChatModel that accepts tools (its scripted messages may call them)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFakeModel:
        return self


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def agent_model() -> ToolCallingFakeModel:
    return ToolCallingFakeModel(messages=iter([
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call-1"}]),
        AIMessage("2 + 3 = 5"),
    ]))


def test_create_agent_run_is_one_trajectory(memory: TrackedMemory) -> None:
    callback = ConsolidationCallback(memory, reward_fn=lambda run: 1.0, gamma=0.5)
    agent = create_agent(agent_model(), tools=[add])
    run_id = uuid.uuid4()
    result = agent.invoke(
        {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
        config={"callbacks": [callback], "run_id": run_id},
    )
    assert result["messages"][-1].content == "2 + 3 = 5"
    assert callback.wait(timeout=60)
    # Model calls, the tool call and graph nodes are nested runs: one run, recorded as its two
    # model steps (the tool call, then the answer), each credited with its share of the reward.
    assert callback.status.episodes_recorded == 1
    first, last = memory.store.get([f"{run_id}/0", f"{run_id}/1"])
    assert (first.query, first.response, first.reward) == (
        "What is 2 + 3?", 'add({"a": 2, "b": 3})', 0.5)
    assert (last.response, last.reward) == ("2 + 3 = 5", 1.0)
    assert memory.store.count() == 2


async def test_async_runs(memory: TrackedMemory, chain: Runnable) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=50, reward_fn=topic_reward)
    run_id = uuid.uuid4()
    answer = await chain.ainvoke({"question": QUESTIONS[0]},
                                 config={"callbacks": [callback], "run_id": run_id})
    assert answer == "Sure, done."
    agent = create_agent(agent_model(), tools=[add])
    await agent.ainvoke({"messages": [("user", "What is 2 + 3?")]},
                        config={"callbacks": [callback]})
    assert callback.wait(timeout=60)
    assert callback.status.episodes_recorded == 2
    assert memory.store.get([str(run_id)])[0].reward == 0.9
    second_state = 'What is 2 + 3?\nAction: add({"a": 2, "b": 3})\nObservation: 5'
    assert {e.query for e in memory.store.list_episodes()} == {
        QUESTIONS[0], "What is 2 + 3?", second_state
    }


def test_invalid_arguments(memory: TrackedMemory) -> None:
    with pytest.raises(InvalidArgumentError):
        ConsolidationCallback(memory, every_n_episodes=0)
    with pytest.raises(InvalidArgumentError):
        ConsolidationCallback(memory, reward_fn="not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        ConsolidationCallback("not a memory")  # type: ignore[arg-type]


@pytest.mark.slow
def test_flush_waits_for_a_due_consolidation_and_starts_none(
    memory: TrackedMemory, chain: Runnable
) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=50, reward_fn=topic_reward)
    run_chain(chain, callback, 1)  # 1 rating of 50
    assert callback.flush(timeout=120)
    status = callback.status
    assert status.written == 1 and status.ratings_since_consolidation == 1
    assert memory.track["threads"] == []  # no training started on 1 rating of 50
    assert (status.consolidations_run, status.errors, status.last_error) == (0, 0, None)
    memory.add_episodes([{"query": q, "response": "ok", "reward": 0.9 if "refund" in q else 0.1}
                         for q in QUESTIONS * 9][:49])  # the 50th rating: due
    assert callback.flush(timeout=120)  # waits for the consolidation it started
    status = callback.status
    assert not status.training_in_progress and status.consolidations_run == 1
    assert status.ratings_since_consolidation == 0 and memory.track["threads"] == [
        "kd-memory-consolidation"]


@pytest.mark.slow
def test_memory_does_not_keep_dropped_callbacks_alive(memory: TrackedMemory) -> None:
    kept = ConsolidationCallback(memory, every_n_episodes=100)
    dropped = weakref.ref(ConsolidationCallback(memory, every_n_episodes=100))
    gc.collect()
    assert dropped() is None  # e.g. one callback per request does not pile up listeners
    memory.add_episode("a rated question", reward=1.0)
    assert kept.status.ratings_since_consolidation == 1
    memory.remove_rating_listener(kept._on_rating)
    memory.add_episode("another rated question", reward=1.0)
    assert kept.status.ratings_since_consolidation == 1


@pytest.mark.parametrize("bad", [math.nan, "0.5", True, math.inf, 10**400, [1.0]])
def test_a_bad_reward_is_counted_and_the_run_recorded_unrated(
    memory: TrackedMemory, chain: Runnable, bad: Any
) -> None:
    callback = ConsolidationCallback(memory, reward_fn=lambda run: bad)
    run_id = uuid.uuid4()
    chain.invoke({"question": QUESTIONS[0]}, config={"callbacks": [callback], "run_id": run_id})
    assert callback.wait(timeout=60)
    status = callback.status
    assert status.episodes_recorded == 1 and status.errors == 1
    assert isinstance(status.last_error, InvalidRewardError)
    assert memory.store.get([str(run_id)])[0].reward is None


@pytest.mark.slow
def test_texts_over_the_limit_are_cut_and_marked_not_dropped(memory: TrackedMemory) -> None:
    long_question = "Why? " * 30_000  # 150,000 characters
    long_answer = "Because. " * 15_000  # 135,000 characters
    model = FakeListChatModel(responses=[long_answer])
    agent = ChatPromptTemplate.from_messages([("human", "{question}")]) | model | StrOutputParser()
    callback = ConsolidationCallback(memory)
    run_id, short_id = uuid.uuid4(), uuid.uuid4()
    agent.invoke({"question": long_question}, config={"callbacks": [callback], "run_id": run_id})
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | FakeListChatModel(
        responses=["Short."]) | StrOutputParser()
    chain.invoke({"question": "short"}, config={"callbacks": [callback], "run_id": short_id})
    assert callback.wait(timeout=120)
    status = callback.status
    assert (status.written, status.failed, status.errors) == (2, 0, 0)
    episode, short = memory.store.get([str(run_id), str(short_id)])
    assert episode.query == long_question[:MAX_TEXT_LENGTH]
    assert episode.response == long_answer[:MAX_TEXT_LENGTH]
    assert episode.metadata == {"truncated": True}
    assert short.metadata == {}
    with pytest.raises(InvalidEpisodeError, match="limit is 100,000"):  # direct adds refuse
        memory.add_episode(long_question, "answer")


@pytest.mark.slow
def test_ratings_are_counted_and_consolidated_per_namespace(memory: TrackedMemory) -> None:
    callback = ConsolidationCallback(memory, every_n_episodes=12)

    def rated(namespace: str, n: int) -> list[dict[str, Any]]:
        return [{"query": QUESTIONS[i % 6] + f" ({i})", "response": "ok", "namespace": namespace,
                 "reward": 0.9 if "refund" in QUESTIONS[i % 6] else 0.1} for i in range(n)]

    memory.add_episodes(rated("user-a", 12) + rated("user-b", 11))
    assert callback.wait(timeout=120)
    assert callback.status.consolidations_run == 1
    assert callback.status.last_report is not None
    assert callback.status.last_report.namespace == "user-a"
    assert memory.value_model("user-a") is not memory.distillation  # its own model
    assert memory.value_model("user-b") is memory.distillation  # 11 < 12: not yet
    assert callback.status.ratings_since_consolidation == 11
    assert callback.flush(timeout=120)  # the end of a script: user-b's 11 ratings stay counted
    assert callback.status.consolidations_run == 1
    memory.add_episodes(rated("user-b", 12)[11:])  # the 12th
    assert callback.flush(timeout=120)
    assert callback.status.consolidations_run == 2
    assert memory.value_model("user-b") is not memory.distillation
