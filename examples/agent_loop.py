"""An agent loop over a real data stream: the value model learns as episodes accumulate.

What it shows: human conversations from the Chit Chat Challenge dataset (each rated 1-10 by
people) are replayed one by one through a real LCEL chain (prompt -> chat model -> parser; the
chat model is LangChain's fake chat model replaying the recorded reply, so the "agent" answers
exactly what the human answered). `ConsolidationCallback`, attached with
``config={"callbacks": [...]}``, records each run as an episode, rates it with `reward_fn` (the
conversation's human rating) and retrains the value model in the background every `--every`
ratings. After each consolidation the loop scores a fixed held-out set of conversations that
are never replayed and prints how its scores agree with the human ratings: the student's
Spearman rank correlation and mean absolute error (from the opening alone, what the student
sees at run time), the error of predicting the mean rating, and, for comparison, the teacher's
Spearman (it sees the whole conversation).

Read the numbers honestly: how well a chat will go is barely predictable from its opening, so
the student's held-out Spearman stays near 0 (between -0.13 and 0.01 in our runs) and its MAE
equals the mean's; the teacher, which sees the replies, finds a little signal (0.05 to 0.15 here
with a few hundred episodes, 0.26 with 2,581 in BENCHMARKS.md). Query-only scoring pays off
where the query says how things will go (see examples/chatbot.py).

Usage:
    python examples/agent_loop.py                     # 400 episodes, every 100: ~3 minutes
    python examples/agent_loop.py --episodes 60 --every 30 --holdout 40 --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_kd_memory import (
    ConsolidationCallback,
    DistilledEpisodicMemory,
    Episode,
    FinishedRun,
    ModelDistillation,
    default_embeddings,
)
from langchain_kd_memory.datasets import load_chitchat


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank (as scipy.stats.rankdata, minus 1)."""
    order = np.argsort(values, kind="stable")
    position = np.empty(len(values))
    position[order] = np.arange(len(values))
    _, group, size = np.unique(values, return_inverse=True, return_counts=True)
    return np.bincount(group, weights=position)[group] / size[group]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (0 when either side is constant)."""
    ra, rb = ranks(np.asarray(a, dtype=float)), ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


class HeldOut:
    """Conversations never replayed, embedded once, scored after each consolidation."""

    def __init__(self, memory: DistilledEpisodicMemory, episodes: list[Episode]) -> None:
        self.memory = memory
        self.rewards = np.array([e.reward for e in episodes], dtype=float)
        texts = [e.query for e in episodes] + [e.response for e in episodes]
        vectors = np.asarray(memory.store.embeddings.embed_documents(texts), dtype=np.float32)
        self.queries, self.responses = vectors[: len(episodes)], vectors[len(episodes) :]

    def evaluate(self, train_mean: float) -> dict[str, float]:
        """Student Spearman and MAE, MAE of predicting `train_mean`, teacher Spearman."""
        model = self.memory.value_model()  # the model the callback trained for its namespace
        student = np.array([e.expected for e in model.predict_embeddings(self.queries)])
        teacher = model.predict_embeddings(self.queries, self.responses, model="teacher")
        return {
            "spearman": spearman(student, self.rewards),
            "mae": float(np.abs(student - self.rewards).mean()),
            "mae_mean": float(np.abs(train_mean - self.rewards).mean()),
            "teacher": spearman(np.array([e.expected for e in teacher]), self.rewards),
        }


def run(args: argparse.Namespace, directory: str) -> None:
    conversations = load_chitchat(args.holdout + args.episodes, seed=0)
    if len(conversations) < args.holdout + args.episodes:
        raise SystemExit(f"the dataset has only {len(conversations)} rated conversations")
    held_out, stream = conversations[: args.holdout], conversations[args.holdout :]
    print(f"{len(stream)} conversations to replay, {len(held_out)} held out (never replayed); "
          f"ratings 1-10, held-out mean {np.mean([e.reward for e in held_out]):.2f}")

    embeddings = default_embeddings()
    memory = DistilledEpisodicMemory(
        persist_directory=directory,
        distillation=ModelDistillation(
            embeddings=embeddings, seed=0, max_epochs=args.epochs, reward_low=1, reward_high=10
        ),
        embeddings=embeddings,
        namespace="chitchat",
    )
    removed = memory.store.delete_namespace(memory.namespace)
    if removed:
        print(f"removed {removed} episodes of an earlier run from {directory}")
    held = HeldOut(memory, held_out)
    ratings = {e.query + "\n" + e.response: float(e.reward or 0.0) for e in stream}

    def reward_fn(run: FinishedRun) -> float:
        return ratings[run.query + "\n" + run.response]  # the human rating of this conversation

    # The agent: a real chain whose chat model replays the recorded human replies in order.
    model = GenericFakeChatModel(messages=iter([AIMessage(e.response) for e in stream]))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Continue the conversation."), ("human", "{input}")]
    )
    agent = prompt | model | StrOutputParser()
    callback = ConsolidationCallback(memory, every_n_episodes=args.every, reward_fn=reward_fn)

    print("\nheld-out quality after each consolidation; the student scores the opening alone, the")
    print("teacher (for comparison) the whole conversation; MAE(mean) predicts the mean rating")
    print(f"{'episodes':>8} {'trained on':>10} {'seconds':>7} {'Spearman':>8} {'MAE':>6} "
          f"{'MAE(mean)':>9} {'teacher Spearman':>16}")
    seen = 0
    rewards_so_far: list[float] = []

    def report_new_consolidations() -> None:
        nonlocal seen
        status = callback.status
        if status.consolidations_run == seen or status.last_report is None:
            return
        seen = status.consolidations_run
        report = status.last_report
        # the baseline predicts the mean rating of the episodes the model was trained on
        q = held.evaluate(float(np.mean(rewards_so_far[: report.episodes_used])))
        print(f"{status.episodes_recorded:>8} {report.episodes_used:>10} "
              f"{report.duration_s:>7.1f} {q['spearman']:>8.3f} {q['mae']:>6.2f} "
              f"{q['mae_mean']:>9.2f} {q['teacher']:>16.3f}", flush=True)

    start = time.perf_counter()
    for episode in stream:
        agent.invoke({"input": episode.query}, config={"callbacks": [callback]})
        rewards_so_far.append(float(episode.reward or 0.0))
        report_new_consolidations()
    callback.flush()
    report_new_consolidations()
    status = callback.status
    print(f"\n{status.episodes_recorded} episodes recorded, {status.consolidations_run} "
          f"consolidations (triggers during training are merged), {status.errors} errors, "
          f"{time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--episodes", type=int, default=400, help="conversations to replay")
    parser.add_argument("--every", type=int, default=100, help="consolidate every N ratings")
    parser.add_argument("--holdout", type=int, default=200, help="held-out conversations")
    parser.add_argument("--epochs", type=int, default=30,
                        help="most training epochs per network (early stopping may end sooner)")
    parser.add_argument("--persist-directory",
                        help="Chroma and checkpoints directory (default: a temporary one)")
    args = parser.parse_args()
    for name in ("episodes", "every", "holdout", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the embedder's loading bar
    with tempfile.TemporaryDirectory(prefix="agent_loop_") as scratch:
        run(args, args.persist_directory or scratch)


if __name__ == "__main__":
    main()
