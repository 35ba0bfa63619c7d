"""Kill loop: agents that record through a journaled writer, SIGKILLed at random moments.

    python benchmarks/bench_journal.py [--kills 30] [--seed 0] [--no-write]

Each agent is a real process (an LCEL chain and a tool-calling `create_agent` agent with
LangChain's fake chat models, the real MiniLM behind a slowed link, embedded Chroma on disk)
recording through `ConsolidationCallback(journal=...)` with a small queue, so that some runs are
dropped. It records runs (a third of them two-step trajectories, some rated by `reward_fn`),
rates most of them at once (often while they are queued or being written), rates older runs
again and deletes some (`writer.forget`, then the store), printing each acknowledgement after the
call returns. It is SIGKILLed at a random moment, and the next agent, started on the same
directory and journal, replays the journal and goes on.

After each kill a fresh memory in this process opens a copy of the directory and journal (what
the next agent will see), replays it and checks every acknowledgement so far: every
acknowledged run stored exactly once, with all its steps and its latest acknowledged rating; no
deleted or dropped run back; the journal empty once the writer has caught up; and, after a
clean stop, a new writer replays nothing. An action that was under way when the kill landed
(printed as begun, not acknowledged) may have happened or not: its outcome is read from the
store and holds from then on.

`run(kills, ...)` is what `tests/integration_tests/test_journal.py` calls with a few kills.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GAMMA = 0.9

AGENT = r'''
import json, random, sys, time, uuid
from typing import Any
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_kd_memory import ConsolidationCallback, DistilledEpisodicMemory
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.errors import EpisodeNotFoundError
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.writer import BackgroundWriter

directory, journal, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)

class SlowEmbeddings(LocalEmbeddings):  # the real MiniLM behind a slow link
    def embed_documents(self, texts):
        time.sleep(rng.uniform(0.0, 0.15))
        return super().embed_documents(texts)

class ToolModel(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> "ToolModel":
        return self

@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

def say(**event):
    print(json.dumps(event), flush=True)

embeddings = SlowEmbeddings()
embeddings.embed_documents(["warm up"])
chain = (ChatPromptTemplate.from_messages([("human", "{question}")])
         | FakeListChatModel(responses=["Sure."]) | StrOutputParser())
known = json.loads(sys.stdin.readline())  # [[run id, steps], ...]: the previous agent is dead

store = EpisodeStore("killloop", embeddings=embeddings, persist_directory=directory)
memory = DistilledEpisodicMemory(store=store)
writer = BackgroundWriter(memory, journal=journal, max_queue=8, put_timeout=0.0,
                          retry_delays=(0.05, 0.2))
reward0 = {}
callback = ConsolidationCallback(memory, every_n_episodes=10**9, gamma=0.9,
                                 reward_fn=lambda run: reward0.get(run.run_id))
say(ev="ready", replayed=writer.status.replayed)

def rate(run_id):
    reward = round(rng.random(), 3)
    say(ev="rate?", id=run_id, reward=reward)
    try:
        memory.record_feedback(run_id, reward)
    except EpisodeNotFoundError as exc:
        say(ev="rate-failed", id=run_id, error=str(exc))
        return
    say(ev="rate", id=run_id, reward=reward)

while True:
    roll = rng.random()
    if roll < 0.6 or not known:
        run_uuid, steps = uuid.uuid4(), 2 if rng.random() < 0.33 else 1
        run_id = str(run_uuid)
        first = None if rng.random() < 0.5 else round(rng.random(), 3)
        reward0[run_id] = first
        say(ev="run?", id=run_id, steps=steps, reward=first)
        before = callback.status
        config = {"callbacks": [callback], "run_id": run_uuid}
        if steps == 2:
            model = ToolModel(messages=iter([
                AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c"}]),
                AIMessage("done")]))
            create_agent(model, tools=[add]).invoke(
                {"messages": [HumanMessage(f"agent question {run_id}")]}, config=config)
        else:
            chain.invoke({"question": f"question {run_id}"}, config=config)
        after = callback.status
        if after.queued > before.queued:
            say(ev="run", id=run_id)
            known.append([run_id, steps])
            if rng.random() < 0.6:
                rate(run_id)  # often while it is queued or being written
        elif after.dropped > before.dropped:
            say(ev="dropped", id=run_id)
        else:
            say(ev="unacknowledged", id=run_id)
    elif roll < 0.85:
        rate(rng.choice(known)[0])
    else:
        run_id, steps = known.pop(rng.randrange(len(known)))
        say(ev="delete?", id=run_id)
        writer.forget([run_id])  # pending: dropped; being written: waited for
        ids = [run_id] if steps == 1 else [f"{run_id}/{i}" for i in range(steps)]
        try:
            store.delete(ids)  # a run's episodes in one request
        except EpisodeNotFoundError:
            pass  # never stored (it was pending)
        say(ev="delete", id=run_id)
'''


@dataclass
class Run:
    """What the agents acknowledged about one run."""

    steps: int
    reward: float | None  # the latest acknowledged rating (or reward_fn's)
    state: str = "acked"  # acked, dropped, deleted, absent (never stored, must never be)
    maybe_reward: float | None = None  # a rating begun and not acknowledged at the kill
    maybe_deleted: bool = False  # a deletion begun and not acknowledged at the kill


@dataclass
class Counts:
    """Totals over the loop (what the closing note reports)."""

    kills: int = 0
    runs: int = 0  # acknowledged
    ratings: int = 0  # acknowledged
    deletions: int = 0
    dropped: int = 0
    lost_runs: int = 0
    lost_ratings: int = 0
    resurrected: int = 0
    duplicated: int = 0
    unacknowledged_stored: int = 0  # a run under way at a kill, stored by the replay (allowed)
    replayed: int = 0  # runs the next agents replayed
    replayed_after_clean_stop: int = 0
    journal_bytes_after_catch_up: int = 0
    max_journal_bytes_at_kill: int = 0
    max_live_runs_at_kill: int = 0  # runs the journal holds at a kill (queued, being written)
    max_stored_live_runs_at_kill: int = 0  # of those, already in the store (their batch landed)
    problems: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.lost_runs or self.lost_ratings or self.resurrected or self.duplicated
                    or self.replayed_after_clean_stop or self.journal_bytes_after_catch_up
                    or self.problems)


def all_stored(store: Any, ids: list[str]) -> bool:
    """Whether every one of these episodes is in the store."""
    try:
        store.get(ids)
    except KeyError:  # EpisodeNotFoundError
        return False
    return True


def matches(rewards: list[float | None], steps: int, reward: float | None) -> bool:
    """Whether stored `rewards` are those of a run of `steps` steps rated `reward`.

    Chroma keeps a float metadata value to float32 precision (0.9 * 0.535 comes back as 0.4815).
    """
    if reward is None:
        return rewards == [None] * steps
    wanted = [reward] if steps == 1 else [GAMMA * reward, reward]
    return len(rewards) == steps and all(
        got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
        for got, want in zip(rewards, wanted, strict=True))


class Loop:
    """The parent: starts agents, kills them, checks copies of what they leave."""

    def __init__(
        self, root: Path, seed: int, embeddings: Any, window: tuple[float, float]
    ) -> None:
        self.root, self.seed, self.embeddings, self.window = root, seed, embeddings, window
        self.rng = random.Random(seed)
        self.db, self.journal = root / "db", root / "runs.journal"
        self.script = root / "agent.py"
        self.script.write_text(AGENT)
        self.runs: dict[str, Run] = {}
        self.counts = Counts()
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "ANONYMIZED_TELEMETRY": "False",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def start(self, cycle: int) -> subprocess.Popen[str]:
        """Start an agent; it loads, then waits for the list of known runs on stdin."""
        log = (self.root / f"agent{cycle}.log").open("w")
        agent = subprocess.Popen(
            [sys.executable, str(self.script), str(self.db), str(self.journal),
             str(self.seed * 1000 + cycle)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env,
        )
        log.close()
        return agent

    def cycle(self, agent: subprocess.Popen[str], cycle: int) -> None:
        """Let the agent work for a random while, SIGKILL it, note what it acknowledged."""
        assert agent.stdin is not None and agent.stdout is not None
        known = [[run_id, run.steps] for run_id, run in self.runs.items() if run.state == "acked"]
        agent.stdin.write(json.dumps(known) + "\n")
        agent.stdin.flush()
        events: list[dict[str, Any]] = []
        ready = threading.Event()

        def read() -> None:
            for line in agent.stdout:  # type: ignore[union-attr]
                if line.endswith("\n"):  # a line is written whole before the next action
                    events.append(json.loads(line))
                    if events[-1]["ev"] == "ready":
                        ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if not ready.wait(300):
            log = (self.root / f"agent{cycle}.log").read_text()
            raise RuntimeError(f"agent {cycle} did not start:\n{log[-3000:]}")
        time.sleep(self.rng.uniform(*self.window))
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        reader.join()
        self.counts.kills += 1
        self.note(events)

    def note(self, events: list[dict[str, Any]]) -> None:
        begun: dict[str, Any] | None = None
        for event in events:
            kind, run_id = event["ev"], event.get("id")
            if kind == "ready":
                self.counts.replayed += event["replayed"]
            elif kind.endswith("?"):
                begun = event
            elif kind == "run":
                assert begun is not None
                self.runs[run_id] = Run(begun["steps"], begun["reward"])
                self.counts.runs += 1
                begun = None
            elif kind in ("dropped", "unacknowledged"):
                assert begun is not None
                self.runs[run_id] = Run(begun["steps"], begun["reward"], state="absent")
                self.counts.dropped += kind == "dropped"
                begun = None
            elif kind == "rate":
                self.runs[run_id].reward = event["reward"]
                self.counts.ratings += 1
                begun = None
            elif kind == "rate-failed":
                self.counts.problems.append(f"rating of a known run failed: {event}")
                begun = None
            elif kind == "delete":
                self.runs[run_id].state = "deleted"
                self.counts.deletions += 1
                begun = None
        if begun is None:
            return
        run = self.runs.get(begun["id"])
        if begun["ev"] == "run?":  # under way: stored by the replay or not
            self.runs[begun["id"]] = Run(begun["steps"], begun["reward"], state="unknown")
        elif begun["ev"] == "rate?" and run is not None:
            run.maybe_reward = begun["reward"]
        elif begun["ev"] == "delete?" and run is not None:
            run.maybe_deleted = True

    def check(self, cycle: int) -> None:
        """Replay a copy of the directory and journal in a fresh memory; compare with the ledger."""
        from langchain_kd_memory.journal import read_entries
        from langchain_kd_memory.memory import DistilledEpisodicMemory
        from langchain_kd_memory.storage import EpisodeStore
        from langchain_kd_memory.writer import BackgroundWriter

        copy = self.root / f"check{cycle}"
        shutil.copytree(self.db, copy / "db")
        shutil.copy2(self.journal, copy / "runs.journal")
        counts = self.counts
        counts.max_journal_bytes_at_kill = max(counts.max_journal_bytes_at_kill,
                                               (copy / "runs.journal").stat().st_size)
        store = EpisodeStore("killloop", embeddings=self.embeddings,
                             persist_directory=str(copy / "db"))
        live = [[e["id"] for e in entry.fields["episodes"]]
                for entry in read_entries(copy / "runs.journal") if entry.op == "run"]
        counts.max_live_runs_at_kill = max(counts.max_live_runs_at_kill, len(live))
        counts.max_stored_live_runs_at_kill = max(
            counts.max_stored_live_runs_at_kill, sum(all_stored(store, ids) for ids in live))
        memory = DistilledEpisodicMemory(store=store)
        writer = BackgroundWriter(memory, journal=copy / "runs.journal")
        if not writer.flush(timeout=300):
            raise RuntimeError("the replay did not finish")
        self.counts.journal_bytes_after_catch_up += (copy / "runs.journal").stat().st_size
        stored: dict[str, dict[int, float | None]] = {}
        for episode in store.list_episodes():
            run_id, _, step = episode.id.partition("/")
            steps = stored.setdefault(run_id, {})
            self.counts.duplicated += int(step or 0) in steps
            steps[int(step or 0)] = episode.reward
        self.compare(stored)
        writer.close()
        again = BackgroundWriter(DistilledEpisodicMemory(store=store),
                                 journal=copy / "runs.journal")
        self.counts.replayed_after_clean_stop += again.status.replayed
        again.close()
        shutil.rmtree(copy, ignore_errors=True)

    def compare(self, stored: dict[str, dict[int, float | None]]) -> None:
        for run_id, run in self.runs.items():
            found = stored.pop(run_id, None)
            rewards = None if found is None else [found.get(i) for i in range(max(found) + 1)]
            if run.maybe_deleted:  # resolved by what the replay left
                run.state, run.maybe_deleted = ("acked", False) if found else ("deleted", False)
                self.counts.deletions += found is None
            if run.state == "unknown":
                run.state = "acked" if found else "absent"
                self.counts.unacknowledged_stored += found is not None
            if run.state in ("dropped", "deleted", "absent"):
                if found is not None:
                    self.counts.resurrected += 1
                    self.counts.problems.append(f"run {run_id} ({run.state}) is back")
                continue
            if found is None:
                self.counts.lost_runs += 1
                self.counts.problems.append(f"acknowledged run {run_id} is not stored")
                continue
            if len(found) != run.steps:
                self.counts.duplicated += 1
                self.counts.problems.append(f"run {run_id}: {len(found)} of {run.steps} steps")
                continue
            if run.maybe_reward is not None and matches(rewards, run.steps, run.maybe_reward):
                run.reward = run.maybe_reward  # the rating under way at the kill landed
            run.maybe_reward = None
            if not matches(rewards, run.steps, run.reward):
                self.counts.lost_ratings += 1
                self.counts.problems.append(
                    f"run {run_id}: rewards {rewards}, latest acknowledged {run.reward}")
        for run_id in stored:  # never begun by any agent: cannot be
            self.counts.problems.append(f"unknown run {run_id} stored")


def run(kills: int, *, root: Path, embeddings: Any, seed: int = 0,
        window: tuple[float, float] = (0.3, 3.0)) -> Counts:
    """Run the loop for `kills` kills in `root`; the counts (see `Counts.ok`)."""
    loop = Loop(root, seed, embeddings, window)
    agent = loop.start(0)
    try:
        for cycle in range(kills):
            following = loop.start(cycle + 1) if cycle + 1 < kills else None
            try:
                loop.cycle(agent, cycle)  # the next agent loads meanwhile
                loop.check(cycle)
            except BaseException:
                if following is not None:
                    following.kill()
                    following.wait()
                raise
            agent = following  # type: ignore[assignment]
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
    return loop.counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=30, help="kills (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)
    from langchain_kd_memory.embeddings import default_embeddings

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="killloop") as tmp:
        counts = run(args.kills, root=Path(tmp), embeddings=default_embeddings(), seed=args.seed)
    minutes = (time.perf_counter() - start) / 60
    report = dict(vars(counts), problems=len(counts.problems))
    body = (
        f"Command: `python benchmarks/bench_journal.py --kills {args.kills} --seed {args.seed}`"
        f" ({minutes:.1f} min)\n\n"
        + "| " + " | ".join(report) + " |\n|" + "---|" * len(report) + "\n| "
        + " | ".join(str(v) for v in report.values()) + " |\n"
    )
    print(body)
    for problem in counts.problems[:20]:
        print("PROBLEM:", problem)
    if not args.no_write:
        from common import update_section

        update_section("Journal kill loop", body)
    return 0 if counts.ok() else 1


if __name__ == "__main__":
    sys.exit(main())

