"""What recording a run costs the agent, and how many episodes per second the memory stores.

    python benchmarks/bench_callback.py [--runs 200] [--threads 4] [--per-thread 60] [--trials 3]

Part 1, agent-visible overhead. The agents are an LCEL chain (prompt | fake chat model |
parser) for `ConsolidationCallback` and a `create_agent` graph with a fake chat model for
`EpisodicMemoryMiddleware`, so a run costs a millisecond or a few and what is added is the
memory's own cost. Settings are interleaved (one run of each per round, in a new random order
every round) so that load on the shared machine, and the writers' work in the background,
hit all of them alike:

- chain without memory / + callback (background writer, the default) / + callback with a
  journal (one `write` per run) / + journal with fsync / + callback recording inline (the old
  behaviour: embed and store before returning);
- agent + middleware with `record=False` (recall only: its recall is synchronous by design, so
  this is the baseline of its recording) / + middleware recording (writer) / + inline.

Reported per setting: p50 and p95 of the whole run, added to its baseline; and the time spent
in the recording hook itself (`on_chain_end` of the top-level run, `after_agent`), which is what
recording costs the agent, free of the rest of the run's noise.

Part 2, sustained throughput: `--threads` agent threads each run `--per-thread` chain runs
back to back with the callback, recording inline (each thread embeds and stores its own runs)
or through the writer (batches); the clock stops when every run is stored (`callback.wait()`).
Trials alternate between the two. Every run id is then read back: none may be missing, and the
store must hold exactly one episode per run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import chromadb
from chromadb.config import Settings
from common import machine_facts, markdown_table, update_section
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable

from langchain_kd_memory import (
    ConsolidationCallback,
    DistilledEpisodicMemory,
    EpisodicMemoryMiddleware,
)
from langchain_kd_memory.embeddings import default_embeddings
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.writer import BackgroundWriter

QUESTIONS = ["How do I reset my password?", "Can I get a refund?", "Where is my parcel?",
             "How do I change my address?", "Do you ship abroad?"]
ANSWERS = ["Here is what you can do: open Settings, then Account, and follow the steps.",
           "A refund takes five working days once we receive the parcel back.",
           "Your parcel left our warehouse yesterday; the tracking link is in your email.",
           "Change it under Account, Addresses; orders already shipped keep the old one.",
           "We ship to 40 countries; the list and the prices are on the delivery page."]
SEEDS = [{"query": q, "response": a, "reward": 1.0}
         for q, a in zip(QUESTIONS, ANSWERS, strict=True)]


def chain() -> Runnable:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    return prompt | FakeListChatModel(responses=ANSWERS) | StrOutputParser()


class HookTimes:
    """Seconds spent in each recorder's recording hook, by setting."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds.setdefault(name, []).append(seconds)


class TimedCallback(ConsolidationCallback):
    """The callback, timing its `on_chain_end` for top-level runs (where it records)."""

    def __init__(self, *args: Any, times: HookTimes, name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._times, self._name = times, name

    def on_chain_end(self, outputs: Any, *, run_id: uuid.UUID,
                     parent_run_id: uuid.UUID | None = None, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().on_chain_end(outputs, run_id=run_id, parent_run_id=parent_run_id, **kwargs)
        if parent_run_id is None:
            self._times.add(self._name, time.perf_counter() - start)


class TimedMiddleware(EpisodicMemoryMiddleware):
    """The middleware, timing its `after_agent` (where it records)."""

    def __init__(self, *args: Any, times: HookTimes, name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._times, self._name = times, name

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        start = time.perf_counter()
        result = super().after_agent(state, runtime)
        self._times.add(self._name, time.perf_counter() - start)
        return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def overhead(args: argparse.Namespace, tmp: str, client: Any) -> tuple[str, dict[str, Any]]:
    """Part 1: latency of each setting, interleaved; the table and a few facts."""
    times = HookTimes()
    stores = iter(range(100))

    def memory(seeded: bool = False) -> DistilledEpisodicMemory:
        store = EpisodeStore(f"overhead{next(stores)}", client=client)
        mem = DistilledEpisodicMemory(store=store)
        if seeded:
            mem.add_episodes(SEEDS)
        return mem

    def callback(name: str, **kwargs: Any) -> TimedCallback:
        return TimedCallback(memory(), every_n_episodes=10**9, times=times, name=name, **kwargs)

    def agent(name: str | None, **kwargs: Any) -> tuple[Runnable, TimedMiddleware]:
        middleware = TimedMiddleware(memory(seeded=True), k=3, times=times, name=name or "",
                                     **kwargs)
        model = FakeListChatModel(responses=ANSWERS)
        return create_agent(model, [], middleware=[middleware]), middleware

    journal_cb = callback("callback + journal", journal=os.path.join(tmp, "cb.journal"))
    fsync_memory = memory()
    BackgroundWriter(fsync_memory, journal=os.path.join(tmp, "fsync.journal"), fsync=True)
    fsync_cb = TimedCallback(fsync_memory, every_n_episodes=10**9, times=times,
                             name="callback + journal (fsync)")
    callbacks = {
        "callback (writer)": callback("callback (writer)"),
        "callback + journal": journal_cb,
        "callback + journal (fsync)": fsync_cb,
        "callback inline (old)": callback("callback inline (old)", record_inline=True),
    }
    recall_only, _ = agent(None, record=False)
    agents = {
        "middleware (writer)": agent("middleware (writer)"),
        "middleware inline (old)": agent("middleware inline (old)", record_inline=True),
    }
    lcel = chain()
    settings: dict[str, Callable[[str], object]] = {"chain, no memory": lambda q: lcel.invoke(
        {"question": q})}
    for name, cb in callbacks.items():
        settings[name] = lambda q, cb=cb: lcel.invoke({"question": q},
                                                      config={"callbacks": [cb]})
    settings["agent + middleware, record=False"] = lambda q: recall_only.invoke(
        {"messages": [("user", q)]})
    for name, (graph, _) in agents.items():
        settings[name] = lambda q, graph=graph: graph.invoke({"messages": [("user", q)]})
    baseline = {name: "chain, no memory" if name.startswith(("callback", "chain")) else
                "agent + middleware, record=False" for name in settings}

    for run in settings.values():  # warm-up: model load, collection creation
        for i in range(3):
            run(f"warm-up question {i}")
    for cb in callbacks.values():
        cb.wait()
    times.seconds.clear()
    latency: dict[str, list[float]] = {name: [] for name in settings}
    order, shuffle = list(settings), random.Random(0).shuffle
    for i in range(args.runs):
        question = f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"
        shuffle(order)  # whatever a setting leaves running in the background hits any other
        for name in order:
            start = time.perf_counter()
            settings[name](question)
            latency[name].append(time.perf_counter() - start)
    for cb in callbacks.values():
        cb.wait()
    for _, middleware in agents.values():
        middleware.flush()
    status = {name: cb.status for name, cb in callbacks.items()}
    status.update({name: mw.status for name, (_, mw) in agents.items()})
    for name, st in status.items():
        assert st.written == args.runs + 3 and st.failed == st.dropped == 0, (name, st)

    rows = []
    for name, values in latency.items():
        base = latency[baseline[name]]
        hook = times.seconds.get(name)
        added = "" if baseline[name] == name else (
            f"{ms(pct(values, 0.5) - pct(base, 0.5))} / {ms(pct(values, 0.95) - pct(base, 0.95))}")
        rows.append([
            name, ms(pct(values, 0.5)), ms(pct(values, 0.95)), added,
            "" if hook is None else f"{ms(pct(hook, 0.5))} / {ms(pct(hook, 0.95))}",
        ])
    table = markdown_table(
        ["setting", "p50 ms / run", "p95 ms / run", "added to baseline, p50 / p95 ms",
         "in the recording hook, p50 / p95 ms"], rows,
    )
    writer = callbacks["callback (writer)"].writer
    assert writer is not None
    return table, {"batches": writer.status.batches}


def throughput_trial(
    client: Any, name: str, inline: bool, threads: int, per_thread: int
) -> dict[str, Any]:
    """Part 2: one trial; episodes per second until all are stored, and the checks."""
    memory = DistilledEpisodicMemory(store=EpisodeStore(name, client=client))
    memory.add_episodes(SEEDS)  # the collection exists before the clock starts
    callback = ConsolidationCallback(memory, every_n_episodes=10**9, record_inline=inline)
    ids = [[str(uuid.uuid4()) for _ in range(per_thread)] for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)
    lcel = chain()

    def agent(run_ids: list[str]) -> None:
        start_line.wait()
        for i, run_id in enumerate(run_ids):
            lcel.invoke({"question": f"{QUESTIONS[i % len(QUESTIONS)]} ({run_id[:8]})"},
                        config={"callbacks": [callback], "run_id": uuid.UUID(run_id)})

    workers = [threading.Thread(target=agent, args=(run_ids,)) for run_ids in ids]
    for worker in workers:
        worker.start()
    start_line.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    agents_done = time.perf_counter() - start
    assert callback.wait(timeout=600)
    elapsed = time.perf_counter() - start
    all_ids = [run_id for run_ids in ids for run_id in run_ids]
    found = memory.store.get(all_ids)  # raises if any is missing
    stored = memory.store.count() - len(SEEDS)
    status = callback.status
    lost_or_duplicated = len(all_ids) - len({e.id for e in found}) + abs(stored - len(all_ids))
    assert lost_or_duplicated == 0 and status.dropped == status.failed == 0, status
    batches = callback.writer.status.batches if callback.writer is not None else len(all_ids)
    return {"eps": len(all_ids) / elapsed, "agents_s": agents_done, "elapsed": elapsed,
            "stored": stored, "batches": batches}


def throughput(args: argparse.Namespace, client: Any) -> tuple[str, float]:
    results: dict[str, list[dict[str, Any]]] = {"inline (old)": [], "background writer": []}
    for trial in range(args.trials):
        for name in results:
            results[name].append(throughput_trial(
                client, f"throughput{trial}{'w' if 'writer' in name else 'i'}",
                inline="inline" in name, threads=args.threads, per_thread=args.per_thread))
    rows = []
    for name, trials in results.items():
        rows.append([
            name, ", ".join(f"{t['eps']:.0f}" for t in trials),
            f"{statistics.median(t['eps'] for t in trials):.0f}",
            f"{statistics.median(t['agents_s'] for t in trials):.2f}",
            f"{statistics.median(t['elapsed'] for t in trials):.2f}",
            f"{statistics.median(t['batches'] for t in trials):.0f}",
            f"{trials[-1]['stored']} of {args.threads * args.per_thread}, 0 lost, 0 twice",
        ])
    ratio = statistics.median(t["eps"] for t in results["background writer"]) / statistics.median(
        t["eps"] for t in results["inline (old)"])
    table = markdown_table(
        ["recording", "episodes/s per trial", "median episodes/s", "agents done (s)",
         "all stored (s)", "add_episodes calls", "check"], rows,
    )
    return table, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per setting (default 200)")
    parser.add_argument("--threads", type=int, default=4, help="agent threads (default 4)")
    parser.add_argument("--per-thread", type=int, default=60,
                        help="runs per agent thread (default 60)")
    parser.add_argument("--trials", type=int, default=3, help="throughput trials (default 3)")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()

    default_embeddings().embed_query("warm up")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        client = chromadb.PersistentClient(os.path.join(tmp, "chroma"),
                                           settings=Settings(anonymized_telemetry=False))
        table, facts = overhead(args, tmp, client)
        load_mid = os.getloadavg()[0]
        rate_table, ratio = throughput(args, client)
        load = os.getloadavg()[0]
    body = (
        f"Command: `python benchmarks/bench_callback.py --runs {args.runs} --threads "
        f"{args.threads} --per-thread {args.per_thread} --trials {args.trials}`  \n"
        f"Machine: {machine_facts()}; load average {load_mid:.1f} after part 1, {load:.1f} at "
        f"the end; whole run {time.perf_counter() - started:.0f} s\n\n"
        "**Agent-visible cost of recording one run** (targets: at most 1 ms p50 and 5 ms p95 "
        f"added). {args.runs} runs per setting, interleaved in a random order per round; every "
        "run was stored (none "
        f"dropped or failed); the default writer stored its runs in {facts['batches']} "
        "batches.\n\n" + table + "\n\n"
        "Added = p50 (p95) of the setting minus p50 (p95) of its baseline: the chain without "
        "memory for the callback, the middleware with `record=False` for the middleware (its "
        "recall stays synchronous). The hook column times the recording hook alone "
        "(`on_chain_end` of the top-level run, `after_agent`).\n\n"
        f"**Sustained recording throughput** (target: at least 3x inline): {args.threads} agent "
        f"threads x {args.per_thread} chain runs each, one episode per run, clock stopped when "
        f"all are stored; trials alternate. Writer / inline = **{ratio:.1f}x** (medians).\n\n"
        + rate_table
    )
    print(body)
    if not args.no_write:
        update_section("Callback overhead", body)


if __name__ == "__main__":
    main()
