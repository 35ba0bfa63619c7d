"""EpisodicMemoryMiddleware in a real `create_agent`, with real Chroma, MiniLM and training.

Only the chat model is fake: LangChain's `FakeMessagesListChatModel`, recording what it receives.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import tool

from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import MAX_TEXT_LENGTH
from langchain_kd_memory.errors import InvalidArgumentError, InvalidEpisodeError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.middleware import EpisodicMemoryMiddleware
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.writer import BackgroundWriter

GOOD = "Click 'Forgot password' on the login page and follow the emailed link."
BAD = "I cannot help with passwords."


class RecordingModel(FakeMessagesListChatModel):
    """A fake chat model that keeps every message list it is called with."""

    received: list[list[BaseMessage]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> RecordingModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.received.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


class BreakableEmbeddings(LocalEmbeddings):
    """The real MiniLM, which raises once `broken` is set (an embedding server going down)."""

    broken = False

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self.broken:
            raise ConnectionError("embedding server unreachable")
        return super().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        if self.broken:
            raise ConnectionError("embedding server unreachable")
        return super().embed_query(text)


def _model(reply: str = "Here is how.") -> RecordingModel:
    return RecordingModel(responses=[AIMessage(reply)], received=[])


def _memory(store: EpisodeStore) -> DistilledEpisodicMemory:
    memory = DistilledEpisodicMemory(
        store=store,
        distillation=ModelDistillation(embeddings=store.embeddings, seed=0, min_episodes=8),
    )
    memory.add_episodes(
        [
            {"query": "How do I reset my password?", "response": BAD, "reward": 0.0},
            {"query": "How do I reset my password?", "response": GOOD, "reward": 1.0},
            {"query": "What is the capital of France?", "response": "Paris.", "reward": 1.0},
        ]
    )
    return memory


def _ask(text: str) -> dict[str, Any]:
    return {"messages": [HumanMessage(text)]}


def _system_text(model: RecordingModel, call: int = 0) -> str:
    first = model.received[call][0]
    assert isinstance(first, SystemMessage)
    return first.text


@pytest.fixture
def memory(tmp_store: EpisodeStore) -> DistilledEpisodicMemory:
    return _memory(tmp_store)


def test_recalled_episodes_reach_the_system_prompt_best_first(memory: DistilledEpisodicMemory):
    model = _model()
    middleware = EpisodicMemoryMiddleware(memory, k=2, reward_weight=0.2)
    agent = create_agent(model, [], system_prompt="You are a support bot.", middleware=[middleware])
    out = agent.invoke(_ask("I forgot my password, what now?"))
    assert out["messages"][-1].text == "Here is how."
    system = _system_text(model)
    assert system.startswith("You are a support bot.\n\n")
    assert GOOD in system and BAD in system
    assert system.index(GOOD) < system.index(BAD)  # same query: the rewarded answer comes first
    assert "capital of France" not in system  # k=2
    assert "Expected reward" not in system  # the value model is not trained yet
    assert model.received[0][-1].text == "I forgot my password, what now?"
    status = middleware.status
    assert (status.recalls, status.recall_failures, status.score_failures) == (1, 0, 0)


def test_min_score_and_empty_memory_leave_the_prompt_alone(tmp_store: EpisodeStore):
    model = _model()
    memory = DistilledEpisodicMemory(store=tmp_store)
    agent = create_agent(
        model,
        [],
        system_prompt="Base.",
        middleware=[EpisodicMemoryMiddleware(memory, record=False)],
    )
    agent.invoke(_ask("hello"))
    assert _system_text(model) == "Base."
    memory.add_episode("hello there", "hi", reward=1.0)
    strict = EpisodicMemoryMiddleware(memory, min_score=1.5, record=False)
    create_agent(model, [], system_prompt="Base.", middleware=[strict]).invoke(_ask("hello"))
    assert _system_text(model, 1) == "Base."
    assert tmp_store.count() == 1


@pytest.mark.slow
def test_run_is_recorded_as_an_episode(memory: DistilledEpisodicMemory):
    middleware = EpisodicMemoryMiddleware(
        memory, reward_fn=lambda run: 1.0 if "link" in run.outputs["messages"][-1].text else 0.0
    )
    agent = create_agent(_model("Use the reset link."), [], middleware=[middleware])
    config = {"configurable": {"namespace": "user-7", "episode_id": "run-1", "thread_id": "t"}}
    agent.invoke(_ask("How can I change my password?"), config=config)  # type: ignore[arg-type]
    assert middleware.flush(timeout=60)  # recording happens on the background writer
    [episode] = memory.store.get(["run-1"], namespace="user-7")
    assert episode.query == "How can I change my password?"
    assert episode.response == "Use the reset link."
    assert episode.reward == 1.0
    assert episode.metadata["source"] == "agent"
    assert middleware.status.recorded == 1 and middleware.status.last_episode_id == "run-1"
    # the next run of that namespace recalls it
    model = _model()
    create_agent(model, [], middleware=[EpisodicMemoryMiddleware(memory, record=False)]).invoke(
        _ask("change password"),
        config=config,  # type: ignore[arg-type]
    )
    assert "Use the reset link." in _system_text(model)
    assert GOOD not in _system_text(model)  # other namespaces are not recalled


@pytest.mark.slow
def test_namespace_from_runtime_context(memory: DistilledEpisodicMemory):
    memory.add_episode("favourite colour?", "Teal.", reward=1.0, namespace="alice")
    model = _model()
    middleware = EpisodicMemoryMiddleware(memory)
    agent = create_agent(model, [], middleware=[middleware], context_schema=dict)
    agent.invoke(_ask("what colour do I like?"), context={"namespace": "alice"})
    assert middleware.flush(timeout=60)
    assert "Teal." in _system_text(model)
    assert memory.store.count("alice") == 2


@pytest.mark.slow
async def test_async_run_recalls_and_records(memory: DistilledEpisodicMemory):
    model = _model("Async answer.")
    middleware = EpisodicMemoryMiddleware(memory, k=1, reward_weight=0.3)
    agent = create_agent(model, [], middleware=[middleware])
    out = await agent.ainvoke(_ask("password reset please"))
    assert out["messages"][-1].text == "Async answer."
    assert GOOD in _system_text(model)
    assert middleware.flush(timeout=60)
    episode = memory.store.get([middleware.status.last_episode_id or ""])[0]
    assert (episode.query, episode.response, episode.reward) == (
        "password reset please",
        "Async answer.",
        None,
    )
    config = {"configurable": {"namespace": "async-user", "episode_id": "a1"}}
    await agent.ainvoke(_ask("password reset please"), config=config)  # type: ignore[arg-type]
    assert isinstance(model.received[1][0], HumanMessage)  # empty namespace: nothing added
    assert middleware.flush(timeout=60)
    assert memory.store.get(["a1"], namespace="async-user")[0].response == "Async answer."


@pytest.mark.slow
def test_trained_value_model_adds_its_estimate(memory: DistilledEpisodicMemory):
    memory.add_episodes(
        [
            {"query": f"Please refund order {i}", "response": "Refund issued.", "reward": 1.0}
            for i in range(12)
        ]
        + [
            {"query": f"Tell me a joke about number {i}", "response": "No.", "reward": 0.0}
            for i in range(12)
        ]
    )
    memory.consolidate(num_epochs=3)
    model = _model()
    middleware = EpisodicMemoryMiddleware(memory, record=False)
    create_agent(model, [], middleware=[middleware]).invoke(_ask("refund my order"))
    estimate = memory.score("refund my order")
    assert f"{estimate.expected:.3g} ± {estimate.std:.2g}" in _system_text(model)
    assert middleware.status.scores == 1


@pytest.mark.slow
def test_the_estimate_comes_from_the_model_of_the_runs_namespace(
    memory: DistilledEpisodicMemory,
):
    def rated(namespace: str, refunds: float) -> list[dict[str, Any]]:
        return [{"query": f"Please refund order {i}", "response": "Refund issued.",
                 "reward": refunds, "namespace": namespace} for i in range(12)] + [
                {"query": f"Tell me a joke about number {i}", "response": "No.",
                 "reward": 1.0 - refunds, "namespace": namespace} for i in range(12)]

    memory.add_episodes(rated("default", 1.0) + rated("alice", 0.0))
    memory.consolidate(num_epochs=3)  # the shared model: refunds go well
    memory.consolidate("alice", num_epochs=3)  # alice's own: refunds go badly
    model = _model()
    middleware = EpisodicMemoryMiddleware(memory, record=False)
    agent = create_agent(model, [], middleware=[middleware])
    agent.invoke(_ask("refund my order"), config={"configurable": {"namespace": "alice"}})
    alice = memory.score("refund my order", namespace="alice")
    shared = memory.score("refund my order")
    assert shared.expected - alice.expected > 0.2
    assert f"{alice.expected:.3g} ± {alice.std:.2g}" in _system_text(model)


@pytest.mark.parametrize("failure", ["embedder", "chroma"])
async def test_broken_memory_never_breaks_the_agent(tmp_path: Path, failure: str):
    embeddings = BreakableEmbeddings()
    store = EpisodeStore("broken", embeddings=embeddings, persist_directory=str(tmp_path / "c"))
    memory = _memory(store)
    if failure == "embedder":
        embeddings.broken = True
    else:  # the collection disappears behind the store's back
        for collection in store.client.list_collections():
            store.client.delete_collection(collection.name)
    model = _model("Still here.")
    BackgroundWriter(memory, retry_delays=(0.01,))  # retry once, quickly, then count the loss
    middleware = EpisodicMemoryMiddleware(memory)
    agent = create_agent(model, [], system_prompt="Base.", middleware=[middleware])
    assert agent.invoke(_ask("reset password"))["messages"][-1].text == "Still here."
    assert (await agent.ainvoke(_ask("reset password")))["messages"][-1].text == "Still here."
    assert _system_text(model) == "Base."  # no memory, unchanged prompt
    assert middleware.flush(timeout=60)
    status = middleware.status
    assert status.queued == 2 and status.failed == 2
    assert status.recall_failures == 2 and status.recalls == 0
    assert status.record_failures == 2 and status.recorded == 0
    assert status.last_error is not None and status.last_error.startswith("record: ")


def test_raising_reward_fn_records_without_reward(memory: DistilledEpisodicMemory):
    def reward_fn(run: Any) -> float:
        raise ValueError("grader crashed")

    middleware = EpisodicMemoryMiddleware(memory, reward_fn=reward_fn)
    agent = create_agent(_model("ok"), [], middleware=[middleware])
    assert agent.invoke(_ask("anything"))["messages"][-1].text == "ok"
    assert middleware.flush(timeout=60)
    status = middleware.status
    assert status.reward_failures == 1 and status.recorded == 1
    assert memory.store.get([status.last_episode_id or ""])[0].reward is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"reward_weight": 1.5},
        {"min_score": "high"},
        {"prompt_template": "no placeholder"},
        {"prompt_template": "{episodes} {unknown}"},
        {"reward_fn": 3},
        {"namespace": ""},
        {"max_chars": 2},
    ],
)
def test_bad_options_raise(memory: DistilledEpisodicMemory, kwargs: dict[str, Any]):
    with pytest.raises(InvalidArgumentError if "namespace" not in kwargs else ValueError):
        EpisodicMemoryMiddleware(memory, **kwargs)


def test_memory_must_be_a_distilled_episodic_memory():
    with pytest.raises(InvalidArgumentError):
        EpisodicMemoryMiddleware("memory")  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_run_id_is_the_episode_id_and_feedback_finds_its_namespace(
    memory: DistilledEpisodicMemory,
):
    middleware = EpisodicMemoryMiddleware(memory)
    agent = create_agent(_model(), [], middleware=[middleware])
    run_id = uuid.uuid4()
    config = {"run_id": run_id, "configurable": {"namespace": "user-9"}}
    agent.invoke(_ask("How do I export my data?"), config=config)  # type: ignore[arg-type]
    assert middleware.flush(timeout=60)
    assert memory.store.get([str(run_id)], namespace="user-9")[0].reward is None
    memory.record_feedback(run_id, 1.0)  # no namespace: found where the run was recorded
    assert memory.store.get([str(run_id)], namespace="user-9")[0].reward == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("give_run_id", [True, False])
def test_middleware_and_callback_together_record_each_run_once(
    memory: DistilledEpisodicMemory, give_run_id: bool
):
    middleware = EpisodicMemoryMiddleware(memory)
    callback = ConsolidationCallback(memory)
    agent = create_agent(_model(), [], middleware=[middleware])
    before = memory.store.count()
    run_id = uuid.uuid4()
    config: dict[str, Any] = {"callbacks": [callback]}
    if give_run_id:
        config["run_id"] = run_id
    agent.invoke(_ask("How do I export my data?"), config=config)  # type: ignore[arg-type]
    assert callback.flush(timeout=60) and middleware.flush(timeout=60)
    assert memory.store.count() == before + 1
    assert middleware.status.recorded == 1 and middleware.status.record_failures == 0
    if give_run_id:
        assert memory.store.get([str(run_id)])[0].query == "How do I export my data?"


@tool
def lookup_order(order_id: str) -> str:
    """Look up an order by its number."""
    return f"order {order_id}: shipped yesterday"


def _tool_then_answer() -> RecordingModel:
    call = {"name": "lookup_order", "args": {"order_id": "42"}, "id": "call-1"}
    return RecordingModel(responses=[AIMessage("", tool_calls=[call]),
                                     AIMessage("Your order 42 shipped yesterday.")], received=[])


@pytest.mark.slow
def test_a_run_with_tool_calls_is_recorded_as_a_credited_trajectory(
    memory: DistilledEpisodicMemory,
):
    middleware = EpisodicMemoryMiddleware(memory, reward_fn=lambda run: 1.0, gamma=0.5)
    agent = create_agent(_tool_then_answer(), [lookup_order], middleware=[middleware])
    run_id = uuid.uuid4()
    agent.invoke(_ask("Where is order 42?"), config={"run_id": run_id})  # type: ignore[arg-type]
    assert middleware.flush(timeout=60)
    ids = [f"{run_id}/0", f"{run_id}/1"]
    first, last = memory.store.get(ids)
    assert first.query == "Where is order 42?"
    assert first.response == 'lookup_order({"order_id": "42"})'
    assert last.query.startswith("Where is order 42?\nAction: lookup_order(")
    assert "Observation: order 42: shipped yesterday" in last.query
    assert last.response == "Your order 42 shipped yesterday."
    assert (first.reward, last.reward) == (0.5, 1.0)
    assert middleware.status.last_episode_id == str(run_id)
    memory.record_feedback(run_id, 0.0)  # a later correction reaches every step
    assert [e.reward for e in memory.store.get(ids)] == [0.0, 0.0]


@pytest.mark.slow
def test_the_callback_records_an_agent_run_with_tool_calls_as_a_trajectory(
    memory: DistilledEpisodicMemory,
):
    callback = ConsolidationCallback(memory)
    agent = create_agent(_tool_then_answer(), [lookup_order])
    run_id = uuid.uuid4()
    agent.invoke(_ask("Where is order 42?"),  # type: ignore[arg-type]
                 config={"run_id": run_id, "callbacks": [callback]})
    assert callback.wait(timeout=60)
    ids = [f"{run_id}/0", f"{run_id}/1"]
    assert [e.reward for e in memory.store.get(ids)] == [None, None]
    memory.record_feedback(run_id, 1.0)
    assert [e.reward for e in memory.store.get(ids)] == pytest.approx([0.9, 1.0])
    assert callback.status.episodes_recorded == 1


@pytest.mark.slow
def test_a_run_over_the_text_limit_is_cut_and_marked_not_dropped(
    memory: DistilledEpisodicMemory,
):
    request = "Where is order 42? " + "Here is my whole order history. " * 5_000  # 160k chars
    middleware = EpisodicMemoryMiddleware(memory, reward_fn=lambda run: 1.0)
    agent = create_agent(_tool_then_answer(), [lookup_order], middleware=[middleware])
    run_id = uuid.uuid4()
    agent.invoke(_ask(request), config={"run_id": run_id})  # type: ignore[arg-type]
    assert middleware.flush(timeout=120)
    assert middleware.status.written == 1 and middleware.status.record_failures == 0
    first, last = memory.store.get([f"{run_id}/0", f"{run_id}/1"])
    assert first.query == last.query[: len(first.query)] == request[:MAX_TEXT_LENGTH]
    assert len(last.query) == MAX_TEXT_LENGTH  # the observation after the cut is lost with it
    assert first.metadata["truncated"] is True and last.metadata["truncated"] is True
    assert first.metadata["trajectory_steps"] == 2 and first.reward == pytest.approx(0.9)
    with pytest.raises(InvalidEpisodeError, match="limit is 100,000"):
        memory.add_trajectory([(request, "lookup")], 1.0)  # direct adds keep refusing
