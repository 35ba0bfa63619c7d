"""The product end to end on real human-rated conversations (little signal in a chat's opening).

    .venv/bin/python examples/chitchat_demo.py [--conversations 500]

1. Stores rated conversations from the Chit Chat Challenge dataset as episodes in an on-disk
   Chroma (./demo_data): query = the prompt and opening turns, response = the rest of the chat,
   reward = the mean of three human ratings (1-10). A run reuses what an earlier one stored.
2. Consolidates: a teacher learns the reward distribution from whole episodes, a small
   student learns from it to score the opening alone.
3. Recalls for three questions, by similarity only and re-ranked by reward.
4. Scores openings the memory has never seen with the student and prints them beside the
   ratings people gave, then compares teacher and student on one of them.
5. Writes the plots (calibration, training curves, one predicted distribution) when
   matplotlib is installed.
"""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from langchain_kd_memory import (  # noqa: E402
    DistilledEpisodicMemory,
    Episode,
    EpisodeNotFoundError,
    ModelDistillation,
)
from langchain_kd_memory.datasets import load_chitchat  # noqa: E402

NAMESPACE = "chitchat"
UNSEEN = 6
BATCH = 64
QUESTIONS = [
    "What is your favourite movie, and why do you like it?",
    "If you could travel anywhere in the world, where would you go?",
    "Do you have any pets? Tell me about them.",
]


def short(text: str, width: int = 110) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...")


def ingest(memory: DistilledEpisodicMemory, episodes: list[Episode]) -> None:
    store = memory.store
    if store.count(NAMESPACE) == len(episodes):
        try:
            store.get([e.id for e in episodes], namespace=NAMESPACE)
            print(f"{len(episodes)} conversations already stored (delete the folder to redo)")
            return
        except EpisodeNotFoundError:
            pass
    removed = store.delete_namespace(NAMESPACE)
    if removed:
        print(f"Rebuilding: removed {removed} episodes of an earlier, different run.")
    print(f"Embedding and storing {len(episodes)} rated conversations ", end="", flush=True)
    start = time.perf_counter()
    for first in range(0, len(episodes), BATCH):
        memory.add_episodes(episodes[first : first + BATCH])
        print(".", end="", flush=True)
    print(f" {time.perf_counter() - start:.1f} s")


def consolidate(memory: DistilledEpisodicMemory) -> None:
    print("\n## Consolidation: teacher (query + response) -> student (query alone)")
    report = memory.consolidate()
    metrics = report.metrics
    val = metrics["validation"]
    print(
        f"trained on {report.episodes_used} episodes in {report.duration_s:.1f} s "
        f"(epochs: teacher {metrics['teacher']['epochs_run']}, "
        f"student {metrics['student']['epochs_run']})"
    )
    print(
        f"held-out MAE ({metrics['num_val']} episodes): teacher {val['teacher_mae']:.2f}, "
        f"student {val['student_mae']:.2f}, predict-the-mean {val['mean_mae']:.2f}"
    )
    print(f"checkpoint v{report.checkpoint_version}: {report.checkpoint_path}")


def recall(memory: DistilledEpisodicMemory) -> None:
    print("\n## Recall: similarity only vs re-ranked by reward (reward_weight 0.5)")
    for question in QUESTIONS:
        print(f"\n=== {question}")
        for label, weight in (("similarity", 0.0), ("reward-aware", 0.5)):
            docs = memory.invoke(question, k=3, reward_weight=weight)
            print(f"  {label}:")
            for doc in docs:
                m = doc.metadata
                print(
                    f"    score {m['score']:.3f}  similarity {m['similarity']:.3f}  "
                    f"reward {m['reward']:.2f}  {short(m['query'], 80)}"
                )


def score_unseen(memory: DistilledEpisodicMemory, unseen: list[Episode]) -> None:
    print("\n## Conversations the memory has never seen (reward 1-10)")
    print("  student: the opening alone | teacher: the whole conversation | people")
    estimates = memory.score_batch([e.query for e in unseen])
    for episode, estimate in zip(unseen, estimates, strict=True):
        teacher = memory.distillation.get_teacher_prediction(episode.query, episode.response)
        print(
            f"  {estimate.expected:4.2f} ± {estimate.std:4.2f} | {teacher.expected:4.2f} | "
            f"{episode.reward:5.2f}   {short(episode.query, 60)}"
        )
    print(
        "  (how a chat will go says little in its first lines: the student stays close to the\n"
        "   mean rating; see BENCHMARKS.md for the measured signal)"
    )
    comparison = memory.distillation.compare_teacher_student(unseen[0].query)
    print(
        f"\nteacher vs student on the first: {comparison['teacher_params']:,} vs "
        f"{comparison['student_params']:,} parameters ({comparison['compression_ratio']:.1f}x), "
        f"same predicted bin: {comparison['similarity']['prediction_match']}, "
        f"KL {comparison['similarity']['kl_divergence']:.3f}"
    )


def plot(memory: DistilledEpisodicMemory, out: Path, query: str) -> None:
    from langchain_kd_memory import plots

    print("\n## Plots (calibration on a held-out 20%, training curves, one distribution)")
    try:
        paths = plots.write_all(memory, out, query=query)
    except ImportError as exc:
        print(f"  skipped: {exc}")
        return
    for path in paths:
        print(f"  {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=500,
                        help="rated conversations to store (default 500)")
    parser.add_argument("--persist-directory", type=Path,
                        default=Path(__file__).resolve().parent.parent / "demo_data" / "chitchat")
    parser.add_argument("--no-plots", action="store_true", help="skip writing the PNGs")
    args = parser.parse_args()

    episodes = [e for e in load_chitchat(args.conversations + UNSEEN)]
    stored = [Episode(**{**e.to_dict(), "namespace": NAMESPACE,
                         "created_at": e.created_at}) for e in episodes[:-UNSEEN]]
    unseen = episodes[-UNSEEN:]
    memory = DistilledEpisodicMemory(
        persist_directory=str(args.persist_directory),
        namespace=NAMESPACE,
        distillation=ModelDistillation(seed=0, reward_low=1.0, reward_high=10.0),
    )
    print(f"Memory in {args.persist_directory}")
    ingest(memory, stored)
    consolidate(memory)
    recall(memory)
    score_unseen(memory, unseen)
    if not args.no_plots:
        plot(memory, args.persist_directory / "plots", unseen[0].query)


if __name__ == "__main__":
    main()
