"""What ConsolidationCallback adds to one agent run, as a ratio to the run without memory.

    python benchmarks/bench_callback.py [--runs 40]

The "agent" is an LCEL chain (prompt | fake chat model | parser), so the run itself costs
about a millisecond and the ratio shows the memory's own cost; with a real LLM (hundreds of ms
to seconds per call) the same absolute cost is a few percent. Three settings, interleaved
round-robin so that load on the shared machine hits all of them alike:
- no memory;
- recording only (every run becomes an episode: embed query + response, one Chroma add);
- recording + background consolidation (a consolidation is triggered every 10 rated runs and
  trains on a worker thread while the runs go on).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from common import machine_facts, markdown_table, update_section
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable

from langchain_kd_memory import ConsolidationCallback, DistilledEpisodicMemory, ModelDistillation

QUESTIONS = ["How do I reset my password?", "Can I get a refund?", "Where is my parcel?",
             "How do I change my address?", "Do you ship abroad?"]


def chain() -> Runnable:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    model = FakeListChatModel(responses=["Here is what you can do: open Settings."])
    return prompt | model | StrOutputParser()


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per setting (default 40)")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()

    agent = chain()
    with tempfile.TemporaryDirectory() as tmp:
        recording = DistilledEpisodicMemory(persist_directory=os.path.join(tmp, "rec"))
        training = DistilledEpisodicMemory(
            persist_directory=os.path.join(tmp, "train"),
            distillation=ModelDistillation(seed=0, min_episodes=10),
        )
        record_cb = ConsolidationCallback(recording, every_n_episodes=10**9)
        train_cb = ConsolidationCallback(
            training, every_n_episodes=10, reward_fn=lambda run: len(run.query) % 5
        )
        settings: dict[str, Callable[[str], object]] = {
            "no memory": lambda q: agent.invoke({"question": q}),
            "recording only": lambda q: agent.invoke(
                {"question": q}, config={"callbacks": [record_cb]}),
            "recording + background consolidation": lambda q: agent.invoke(
                {"question": q}, config={"callbacks": [train_cb]}),
        }
        for run in settings.values():  # warm-up: model load, collection creation
            run("warm-up question")
        times: dict[str, list[float]] = {name: [] for name in settings}
        for i in range(args.runs):
            question = f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"
            for name, run in settings.items():
                times[name].append(timed(lambda r=run, q=question: r(q)))
        train_cb.flush()
        consolidations = train_cb.status.consolidations_run
        load = os.getloadavg()[0]

    base = statistics.median(times["no memory"])
    rows = []
    for name, values in times.items():
        p50 = statistics.median(values)
        p95 = sorted(values)[int(0.95 * (len(values) - 1))]
        rows.append([name, f"{p50 * 1e3:.2f}", f"{p95 * 1e3:.2f}", f"{p50 / base:.0f}x",
                     f"{(p50 - base) * 1e3:.1f}"])
    table = markdown_table(
        ["setting", "p50 ms / run", "p95 ms / run", "ratio to no memory (p50)", "added ms (p50)"],
        rows,
    )
    body = (
        f"Command: `python benchmarks/bench_callback.py --runs {args.runs}`  \n"
        f"Machine: {machine_facts()}; load average {load:.1f} at the end  \n"
        f"{args.runs} runs per setting, interleaved; {consolidations} background consolidations "
        "ran during the third setting.\n\n" + table + "\n\n"
        "The fake-model run costs about a millisecond, so the ratio is the memory's whole cost; "
        "the added milliseconds (embedding query + response with MiniLM on CPU and one Chroma "
        "add) are what a real agent run would pay on top of its LLM calls."
    )
    print(body)
    if not args.no_write:
        update_section("Callback overhead", body)


if __name__ == "__main__":
    main()
