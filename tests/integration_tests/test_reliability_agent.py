"""Guarantee: nothing that fails inside the memory reaches the agent. Chroma down, the embedder
down, or training failing is logged and shown in the middleware's and the callback's status; the
agent answers without memory meanwhile and gets its memory back when the dependency returns.

The agent is a real `create_agent` graph with a scripted chat model; the memory is real (MiniLM,
torch training) and its store talks to a real `chroma run` server that the test stops and starts
again on the same port and data directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ChromaServer
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from test_middleware import BreakableEmbeddings, RecordingModel

from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.errors import CheckpointError, EmbeddingError, StoreError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.middleware import EpisodicMemoryMiddleware
from langchain_kd_memory.runs import FinishedRun
from langchain_kd_memory.storage import EpisodeStore

REPLY = "Here is what I would do."
SEEDS = [
    ("How do I get a refund for my order?", "Refund issued.", 1.0),
    ("Refund the double charge on my card", "Done, refunded.", 1.0),
    ("What will the weather be on Sunday?", "No idea.", 0.0),
    ("Is it going to rain tomorrow?", "Cannot say.", 0.0),
] * 2


def small_memory(store: EpisodeStore, model_dir: Path) -> DistilledEpisodicMemory:
    model = ModelDistillation(
        seed=0, embeddings=store.embeddings, min_episodes=4, max_epochs=4,
        teacher=TeacherConfig(hidden_sizes=(32,)), student=StudentConfig(hidden_sizes=(16,)),
    )
    memory = DistilledEpisodicMemory(store=store, distillation=model, model_dir=str(model_dir))
    memory.add_episodes([{"query": q, "response": r, "reward": w} for q, r, w in SEEDS])
    memory.consolidate()
    return memory


def topic_reward(run: FinishedRun) -> float:
    return 1.0 if "refund" in run.query.lower() else 0.0


class Agent:
    """A `create_agent` agent with the memory's middleware (recall, estimate) and callback."""

    def __init__(self, memory: DistilledEpisodicMemory, every_n_episodes: int = 100) -> None:
        self.model = RecordingModel(responses=[AIMessage(REPLY)], received=[])
        self.middleware = EpisodicMemoryMiddleware(memory, k=2, record=False)
        self.callback = ConsolidationCallback(memory, every_n_episodes=every_n_episodes,
                                              reward_fn=topic_reward)
        self.graph = create_agent(self.model, [], system_prompt="Base.",
                                  middleware=[self.middleware])

    def ask(self, text: str) -> str:
        result = self.graph.invoke({"messages": [HumanMessage(text)]},
                                   config={"callbacks": [self.callback]})
        assert self.callback.wait(timeout=120)  # the run is stored in the background
        return str(result["messages"][-1].text)

    async def aask(self, text: str) -> str:
        result = await self.graph.ainvoke({"messages": [HumanMessage(text)]},
                                          config={"callbacks": [self.callback]})
        assert self.callback.wait(timeout=120)  # the run is stored in the background
        return str(result["messages"][-1].text)

    def prompt(self) -> str:
        return str(self.model.received[-1][0].text)


@pytest.mark.slow
async def test_chroma_server_down_and_back(
    restartable_server: ChromaServer, embeddings: LocalEmbeddings, tmp_path: Path
) -> None:
    server = restartable_server
    store = EpisodeStore("agentsafety", embeddings=embeddings, client=server.client())
    memory = small_memory(store, tmp_path / "models")
    agent = Agent(memory, every_n_episodes=2)

    assert agent.ask("Can I get a refund for my order?") == REPLY
    assert "Refund issued." in agent.prompt() and "Expected reward" in agent.prompt()
    assert store.count() == len(SEEDS) + 1

    server.stop()
    assert agent.ask("Another refund question") == REPLY
    assert await agent.aask("Will it snow?") == REPLY
    # No recalled episodes, but the value model lives in the process: its estimate still helps.
    assert "Refund issued." not in agent.prompt() and "Expected reward" in agent.prompt()
    status = agent.middleware.status
    assert (status.recalls, status.recall_failures, status.scores) == (1, 2, 3)
    assert status.last_error is not None and "StoreError" in status.last_error
    callback = agent.callback.status
    assert callback.episodes_recorded == 1 and callback.errors == 2
    assert isinstance(callback.last_error, StoreError)
    assert agent.callback.flush(timeout=120)  # the lost runs are no ratings: nothing to train
    assert agent.callback.status.errors == 2 and agent.callback.status.consolidations_run == 0

    server.start()  # same port, same data directory
    assert agent.ask("I want a refund on my invoice") == REPLY
    assert "Refund issued." in agent.prompt()  # recall is back, with the episodes from before
    assert agent.middleware.status.recalls == 2
    assert agent.callback.status.episodes_recorded == 2
    queries = [e.query for e in store.list_episodes()]
    assert len(queries) == store.count() == len(SEEDS) + 2  # the two lost runs left no trace
    assert "Another refund question" not in queries and "Will it snow?" not in queries
    assert agent.callback.flush(timeout=120)  # the second stored rating trained the namespace
    assert agent.callback.status.consolidations_run == 1


def test_embedder_down_and_back(tmp_store: EpisodeStore, tmp_path: Path) -> None:
    flaky = BreakableEmbeddings()
    store = EpisodeStore(tmp_store.collection_name, embeddings=flaky, client=tmp_store.client)
    memory = small_memory(store, tmp_path / "models")
    agent = Agent(memory)
    flaky.broken = True
    assert agent.ask("Can I get a refund?") == REPLY
    assert agent.prompt() == "Base."  # recall and estimate both need the embedder
    status = agent.middleware.status
    assert (status.recall_failures, status.score_failures) == (1, 1)
    assert isinstance(agent.callback.status.last_error, EmbeddingError)
    assert store.count() == len(SEEDS)
    # Feedback needs no embedder: it keeps working during the outage.
    first = store.list_episodes()[0].id
    assert memory.record_feedback(first, 0.5).reward == 0.5
    flaky.broken = False
    assert agent.ask("Can I get a refund?") == REPLY
    assert "Refund issued." in agent.prompt()
    assert store.count() == len(SEEDS) + 1 and agent.callback.status.episodes_recorded == 1


def test_training_failure_is_reported_and_recovers(tmp_store: EpisodeStore, tmp_path: Path) -> None:
    memory = small_memory(tmp_store, tmp_path / "models")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the model directory should be")
    memory.model_dir = str(blocker / "models")
    agent = Agent(memory, every_n_episodes=1)  # each rated run trains its namespace
    assert agent.ask("Can I get a refund?") == REPLY
    assert agent.callback.flush(timeout=120)
    status = agent.callback.status
    assert status.consolidations_run == 0 and status.errors == 1
    assert isinstance(status.last_error, CheckpointError)
    assert "writable directory" in str(status.last_error)
    blocker.unlink()
    assert agent.ask("Refund please") == REPLY  # the agent is unaffected
    assert agent.callback.flush(timeout=120)
    assert agent.callback.status.consolidations_run == 1
    assert agent.callback.status.last_report is not None
