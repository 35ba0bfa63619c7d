"""The background writer: recording leaves the agent's critical path, nothing acknowledged is lost.

Real parts only: Chroma on disk, the MiniLM embedder (gated or slowed down where a test needs the
writer to be busy), `create_agent` and LCEL chains with LangChain's fake chat models, and real
subprocesses killed with SIGKILL. No test asserts on speed: a gate held closed while the agent
returns shows that the agent did not wait for the write.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from test_callbacks import add, agent_model

from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.errors import ConfigError, EpisodeNotFoundError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.middleware import EpisodicMemoryMiddleware
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.writer import BackgroundWriter

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_S = 30.0
"""A closed gate opens by itself after this long, so that code that waits for it still ends."""


class GatedEmbeddings(LocalEmbeddings):
    """The real MiniLM; writes (`embed_documents`) wait while the gate is closed.

    `embed_query` (recall) is never gated. `batches` holds the number of texts of each write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.failures = 0  # the next `failures` writes raise (an embedding server hiccup)

    def close(self) -> None:
        self.gate.clear()
        self.entered.clear()
        threading.Timer(WATCHDOG_S, self.gate.set).start()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(len(texts))
        self.entered.set()
        self.gate.wait(timeout=WATCHDOG_S)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("embedding server hiccup")
        return super().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return super().embed_documents([text])[0]


@pytest.fixture
def gated() -> GatedEmbeddings:
    return GatedEmbeddings()


@pytest.fixture
def memory(tmp_path: Path, gated: GatedEmbeddings) -> DistilledEpisodicMemory:
    store = EpisodeStore("writer", embeddings=gated, persist_directory=str(tmp_path / "db"))
    return DistilledEpisodicMemory(store=store)


def chain() -> Runnable:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    return prompt | FakeListChatModel(responses=["Sure, done."]) | StrOutputParser()


def tool_agent() -> Runnable:
    return create_agent(agent_model(), tools=[add])


def ask(text: str) -> dict[str, Any]:
    return {"messages": [HumanMessage(text)]}


@pytest.mark.parametrize("recorder", ["callback", "middleware"])
def test_the_agent_returns_before_its_run_is_written(
    memory: DistilledEpisodicMemory, gated: GatedEmbeddings, recorder: str
) -> None:
    run_id = uuid.uuid4()
    if recorder == "callback":
        callback = ConsolidationCallback(memory)
        gated.close()
        chain().invoke({"question": "Where is my parcel?"},
                       config={"callbacks": [callback], "run_id": run_id})
        flush = callback.wait
    else:
        middleware = EpisodicMemoryMiddleware(memory)
        agent = create_agent(FakeListChatModel(responses=["It left today."]), [],
                             middleware=[middleware])
        gated.close()
        agent.invoke(ask("Where is my parcel?"), config={"run_id": run_id})
        flush = middleware.flush
    returned_while_closed = not gated.gate.is_set()
    assert memory.store.count() == 0
    gated.gate.set()
    assert returned_while_closed  # the agent did not wait for the embedder
    assert flush(timeout=120)
    assert memory.store.get([str(run_id)])[0].query == "Where is my parcel?"


def test_runs_queued_during_a_write_are_written_in_one_batch(
    memory: DistilledEpisodicMemory, gated: GatedEmbeddings
) -> None:
    callback = ConsolidationCallback(memory)
    agent = chain()
    gated.close()
    ids = [uuid.uuid4() for _ in range(20)]
    agent.invoke({"question": "question 0"}, config={"callbacks": [callback], "run_id": ids[0]})
    assert gated.entered.wait(timeout=60)  # the writer holds run 0 in the embedder
    for i, run_id in enumerate(ids[1:], start=1):
        agent.invoke({"question": f"question {i}"},
                     config={"callbacks": [callback], "run_id": run_id})
    assert callback.status.queued == 20 and callback.status.written == 0
    gated.gate.set()
    assert callback.wait(timeout=120)
    # One embedder call for run 0, then one for the 19 runs queued behind it (query + response).
    assert gated.batches == [2, 38]
    assert memory.store.count() == 20
    assert [e.query for e in memory.store.get([str(i) for i in ids])] == [
        f"question {i}" for i in range(20)
    ]
    status = callback.status
    assert (status.queued, status.written, status.episodes_recorded) == (20, 20, 20)
    assert (status.dropped, status.failed, status.errors) == (0, 0, 0)


def test_one_writer_per_memory_shared_by_callback_and_middleware(
    memory: DistilledEpisodicMemory, tmp_path: Path, gated: GatedEmbeddings
) -> None:
    callback = ConsolidationCallback(memory)
    middleware = EpisodicMemoryMiddleware(memory)
    assert callback.writer is middleware.writer is BackgroundWriter.for_memory(memory)
    other = DistilledEpisodicMemory(store=EpisodeStore(
        "other", embeddings=gated, persist_directory=str(tmp_path / "other")))
    assert BackgroundWriter.for_memory(other) is not callback.writer
    with pytest.raises(ConfigError, match="already has a writer"):
        BackgroundWriter(memory)
    agent = create_agent(FakeListChatModel(responses=["ok"]), [], middleware=[middleware])
    agent.invoke(ask("hello"), config={"callbacks": [callback]})
    assert middleware.flush(timeout=60)
    assert memory.store.count() == 1  # recorded once, by the middleware, on the shared writer
    assert callback.status.recorded_by_middleware == 1 and middleware.status.written == 1
    assert callback.writer is not None and callback.writer.status.written == 1


def test_the_memorys_writer_lives_as_long_as_the_memory_and_no_longer(
    tmp_path: Path, gated: GatedEmbeddings
) -> None:
    memory = DistilledEpisodicMemory(store=EpisodeStore(
        "lifetime", embeddings=gated, persist_directory=str(tmp_path / "life")))
    BackgroundWriter(memory, max_queue=7)  # settings chosen up front, the object not kept
    gc.collect()
    assert BackgroundWriter.for_memory(memory).max_queue == 7
    callback = ConsolidationCallback(memory)
    chain().invoke({"question": "q"}, config={"callbacks": [callback]})
    del callback  # a callback per request: dropped while its run is still queued
    gc.collect()
    assert BackgroundWriter.for_memory(memory).flush(timeout=60)
    assert memory.store.count() == 1
    alive = weakref.ref(memory)
    del memory
    gc.collect()
    assert alive() is None  # an idle writer does not keep its memory (and Chroma) alive


def test_a_full_queue_blocks_then_drops_with_a_warning(
    memory: DistilledEpisodicMemory, gated: GatedEmbeddings, caplog: pytest.LogCaptureFixture
) -> None:
    writer = BackgroundWriter(memory, max_queue=2, put_timeout=0.05)
    callback = ConsolidationCallback(memory)
    assert callback.writer is writer
    agent = chain()
    gated.close()
    agent.invoke({"question": "question 0"}, config={"callbacks": [callback]})
    assert gated.entered.wait(timeout=60)
    with caplog.at_level(logging.WARNING, logger="langchain_kd_memory.writer"):
        for i in range(1, 5):
            agent.invoke({"question": f"question {i}"}, config={"callbacks": [callback]})
    status = callback.status
    assert (status.queued, status.dropped) == (3, 2)  # run 0 in flight, 2 queued, 2 dropped
    assert sum("queue is full" in r.getMessage() for r in caplog.records) == 2
    gated.gate.set()
    assert callback.wait(timeout=120)
    assert memory.store.count() == 3
    assert {e.query for e in memory.store.list_episodes()} == {
        "question 0", "question 1", "question 2"}
    assert writer.status.dropped == 2 and writer.status.written == 3


def test_a_failed_write_is_retried_then_counted_never_raised(
    memory: DistilledEpisodicMemory, gated: GatedEmbeddings
) -> None:
    writer = BackgroundWriter(memory, retry_delays=(0.01, 0.01))
    callback = ConsolidationCallback(memory)
    agent = chain()
    gated.failures = 2  # two failures, then the retry succeeds: stored once
    agent.invoke({"question": "flaky"}, config={"callbacks": [callback]})
    assert callback.wait(timeout=60)
    assert memory.store.count() == 1 and writer.status.retries == 2
    assert callback.status.written == 1 and callback.status.errors == 0

    gated.failures = 3  # one more failure than retries: the run is lost, and counted
    assert agent.invoke({"question": "lost"}, config={"callbacks": [callback]}) == "Sure, done."
    assert callback.wait(timeout=60)
    status = callback.status
    assert (status.written, status.failed, status.errors) == (1, 1, 1)
    assert "embedding server hiccup" in str(status.last_error)
    assert memory.store.count() == 1 and writer.status.failed == 1


def test_a_bad_run_does_not_sink_the_runs_batched_with_it(
    memory: DistilledEpisodicMemory, gated: GatedEmbeddings
) -> None:
    memory.add_episode("taken", "an episode stored under the id the agent reuses",
                       episode_id="reused-id")
    middleware = EpisodicMemoryMiddleware(memory)
    agent = create_agent(FakeListChatModel(responses=["ok"]), [], middleware=[middleware])
    gated.close()
    agent.invoke(ask("first"), config={"configurable": {"episode_id": "first"}})
    assert gated.entered.wait(timeout=60)
    for name in ("second", "reused-id", "third"):  # queued together: one batch
        agent.invoke(ask(name), config={"configurable": {"episode_id": name}})
    gated.gate.set()
    assert middleware.flush(timeout=120)
    status = middleware.status
    assert (status.written, status.failed, status.record_failures) == (3, 1, 1)
    assert "DuplicateEpisodeError" in (status.last_error or "")
    assert [e.query for e in memory.store.get(["first", "second", "third", "reused-id"])] == [
        "first", "second", "third", "taken"]


def test_feedback_for_queued_and_in_flight_runs_lands_with_them(
    memory: DistilledEpisodicMemory, gated: GatedEmbeddings
) -> None:
    callback = ConsolidationCallback(memory, gamma=0.5)
    in_flight, queued, trajectory = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    gated.close()
    chain().invoke({"question": "in flight"},
                   config={"callbacks": [callback], "run_id": in_flight})
    assert gated.entered.wait(timeout=60)
    chain().invoke({"question": "queued"}, config={"callbacks": [callback], "run_id": queued})
    tool_agent().invoke(ask("What is 2 + 3?"),
                        config={"callbacks": [callback], "run_id": trajectory})
    assert memory.store.count() == 0
    assert memory.record_feedback(in_flight, 0.25).reward == 0.25
    assert memory.record_feedback(queued, 0.75).reward == 0.75
    last_step = memory.record_feedback(trajectory, 1.0)  # rates every step of the run
    assert (last_step.id, last_step.reward) == (f"{trajectory}/1", 1.0)
    with pytest.raises(EpisodeNotFoundError):
        memory.record_feedback(uuid.uuid4(), 1.0)  # neither stored nor pending
    gated.gate.set()
    assert callback.wait(timeout=120)
    rewards = {e.id: e.reward for e in memory.store.list_episodes()}
    assert rewards == {str(in_flight): 0.25, str(queued): 0.75,
                       f"{trajectory}/0": 0.5, f"{trajectory}/1": 1.0}
    # Each rating counts once, when it lands (towards the callback's next consolidation).
    assert callback.status.ratings_since_consolidation == 4


def test_record_inline_writes_before_the_agent_returns(
    memory: DistilledEpisodicMemory,
) -> None:
    callback = ConsolidationCallback(memory, record_inline=True)
    middleware = EpisodicMemoryMiddleware(memory, record_inline=True)
    assert callback.writer is None and middleware.writer is None
    chain().invoke({"question": "inline"}, config={"callbacks": [callback]})
    assert memory.store.count() == 1 and callback.status.written == 1
    agent = create_agent(FakeListChatModel(responses=["ok"]), [], middleware=[middleware])
    agent.invoke(ask("inline too"))
    assert memory.store.count() == 2 and middleware.status.written == 1


# ----------------------------------------------------------------------------- processes

CHILD = textwrap.dedent("""
    import json, sys, time, uuid
    from typing import Any
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import (
        FakeListChatModel, GenericFakeChatModel)
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tools import tool
    from langchain_kd_memory import ConsolidationCallback, DistilledEpisodicMemory
    from langchain_kd_memory.embeddings import LocalEmbeddings
    from langchain_kd_memory.storage import EpisodeStore

    class SlowEmbeddings(LocalEmbeddings):  # the real MiniLM behind a slow link
        def embed_documents(self, texts):
            time.sleep(0.5)
            return super().embed_documents(texts)

    class ToolModel(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> "ToolModel":
            return self

    @tool
    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

    directory, journal, runs = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    store = EpisodeStore("killed", embeddings=SlowEmbeddings(), persist_directory=directory)
    memory = DistilledEpisodicMemory(store=store)
    callback = ConsolidationCallback(memory, journal=journal)
    chain = (ChatPromptTemplate.from_messages([("human", "{question}")])
             | FakeListChatModel(responses=["Sure."]) | StrOutputParser())
    for i in range(runs):
        run_id = uuid.uuid4()
        config = {"callbacks": [callback], "run_id": run_id}
        if i % 3 == 2:  # an agent run of two model steps: a trajectory of two episodes
            model = ToolModel(messages=iter([
                AIMessage("", tool_calls=[{"name": "add", "args": {"a": i, "b": 1},
                                           "id": "c"}]),
                AIMessage("done")]))
            create_agent(model, tools=[add]).invoke(
                {"messages": [HumanMessage(f"agent question {i}")]}, config=config)
        else:
            chain.invoke({"question": f"question {i}"}, config=config)
        rated = i % 4 == 0
        if rated:
            memory.record_feedback(run_id, 1.0)
        print(json.dumps({"id": str(run_id), "steps": 2 if i % 3 == 2 else 1,
                          "rated": rated}), flush=True)
""")


def run_child(
    tmp_path: Path, journal: Path | None, runs: int, kill_after: int | None
) -> list[dict[str, Any]]:
    """Run CHILD; SIGKILL it once it has acknowledged `kill_after` runs.

    Returns every run it acknowledged (printed) before it died: on a busy machine it may have
    printed more than `kill_after` by the time the signal lands.
    """
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "ANONYMIZED_TELEMETRY": "False", "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "child.log").open("w")
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "db"), str(journal or ""), str(runs)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )
    log.close()
    acknowledged: list[dict[str, Any]] = []
    assert child.stdout is not None
    for line in child.stdout:
        if line.endswith("\n"):  # a line is written whole before the next run starts
            acknowledged.append(json.loads(line))
        if len(acknowledged) == kill_after:
            os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=300)
    err = (tmp_path / "child.log").read_text()
    if kill_after is None:
        assert child.returncode == 0, err
    else:
        assert child.returncode == -signal.SIGKILL, err
    return acknowledged


def stored_runs(store: EpisodeStore) -> dict[str, list[float | None]]:
    """{run id: rewards of its stored episodes, by step}."""
    runs: dict[str, dict[int, float | None]] = {}
    for episode in store.list_episodes():
        run_id, _, step = episode.id.partition("/")
        runs.setdefault(run_id, {})[int(step or 0)] = episode.reward
    return {run_id: [steps[i] for i in sorted(steps)] for run_id, steps in runs.items()}


def expected_rewards(run: dict[str, Any]) -> list[float | None]:
    if run["steps"] == 1:
        return [1.0 if run["rated"] else None]
    return [0.9, 1.0] if run["rated"] else [None, None]


@pytest.mark.slow
def test_interpreter_exit_writes_what_is_queued(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    acknowledged = run_child(tmp_path, None, runs=12, kill_after=None)  # exits without flush
    store = EpisodeStore("killed", embeddings=embeddings, persist_directory=str(tmp_path / "db"))
    assert stored_runs(store) == {run["id"]: expected_rewards(run) for run in acknowledged}


@pytest.mark.slow
def test_sigkill_with_a_journal_loses_no_acknowledged_run(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    journal = tmp_path / "runs.journal"
    acknowledged = run_child(tmp_path, journal, runs=1000, kill_after=30)
    store = EpisodeStore("killed", embeddings=embeddings, persist_directory=str(tmp_path / "db"))
    before = stored_runs(store)
    assert len(before) < len(acknowledged)  # the slow writer was behind when it was killed
    with journal.open("ab") as torn:  # a line cut short by the kill: never acknowledged
        torn.write(b'0badc0de {"op":"run","n":99999,"id":"torn","episodes":[{"qu')

    memory = DistilledEpisodicMemory(store=store)
    writer = BackgroundWriter(memory, journal=journal)  # replays the journal
    assert writer.flush(timeout=300)
    after = stored_runs(store)
    for run in acknowledged:  # every acknowledged run, with every step and its feedback
        assert after[run["id"]] == expected_rewards(run)
    unacknowledged = set(after) - {run["id"] for run in acknowledged}
    assert len(unacknowledged) <= 1  # at most the run the child was in when it was killed
    assert store.count() == sum(len(rewards) for rewards in after.values())  # none twice
    assert writer.status.replayed >= len(acknowledged) - len(before)
    assert journal.stat().st_size == 0  # compacted once everything was written
    writer.close()

    again = BackgroundWriter(DistilledEpisodicMemory(store=store), journal=journal)
    assert again.flush(timeout=60) and again.status.replayed == 0  # nothing to replay twice
    assert stored_runs(store) == after
    again.close()


@pytest.mark.slow
def test_sigkill_without_a_journal_loses_the_queue_and_only_whole_runs(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    acknowledged = run_child(tmp_path, None, runs=1000, kill_after=30)
    store = EpisodeStore("killed", embeddings=embeddings, persist_directory=str(tmp_path / "db"))
    stored = stored_runs(store)
    order = [run["id"] for run in acknowledged]
    kept = [run_id for run_id in order if run_id in stored]
    # What was written is the oldest runs (the writer is FIFO); what was still queued is lost.
    assert kept == order[: len(kept)] and len(kept) < len(order)
    for run in acknowledged[: len(kept)]:
        assert len(stored[run["id"]]) == run["steps"]  # a run is written whole or not at all


def test_a_journal_is_used_by_one_writer_at_a_time(
    memory: DistilledEpisodicMemory, tmp_path: Path, gated: GatedEmbeddings
) -> None:
    journal = tmp_path / "one.journal"
    writer = BackgroundWriter(memory, journal=journal)
    other = DistilledEpisodicMemory(store=EpisodeStore(
        "other", embeddings=gated, persist_directory=str(tmp_path / "other")))
    with pytest.raises(ConfigError, match="in use"):
        BackgroundWriter(other, journal=journal)
    with pytest.raises(ConfigError, match="journal"):
        ConsolidationCallback(memory, journal=tmp_path / "another.journal")
    callback = ConsolidationCallback(memory, journal=journal)  # the same one: shared
    assert callback.writer is writer
    writer.close()
    BackgroundWriter(other, journal=journal).close()  # released by close()
