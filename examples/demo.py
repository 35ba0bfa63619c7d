"""Store real human conversations as episodes, then recall the ones closest to new questions.

    make demo        # or: .venv/bin/python examples/demo.py

Ingests ~300 rated conversations from the Chit Chat Challenge dataset into an on-disk Chroma
store under ./demo_data (the reward is the mean of three human ratings, 1-10), then asks three
questions and prints the recalled episodes with their cosine similarity and reward. Running it
again reuses the stored episodes; if an earlier run was interrupted, the namespace is rebuilt.
"""

from __future__ import annotations

import os
import textwrap
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from langchain_kd_memory import EpisodeNotFoundError, EpisodeStore  # noqa: E402
from langchain_kd_memory.datasets import RATING_KEYS, load_chitchat  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent.parent / "demo_data"
NAMESPACE = "chitchat"
CONVERSATIONS = 300
BATCH = 50
QUESTIONS = [
    "What is your favourite movie, and why do you like it?",
    "If you could travel anywhere in the world, where would you go?",
    "Do you have any pets? Tell me about them.",
]


def ingest(store: EpisodeStore) -> None:
    episodes = [replace(e, namespace=NAMESPACE) for e in load_chitchat(CONVERSATIONS)]
    try:
        store.get([e.id for e in episodes], namespace=NAMESPACE)
        print(f"{len(episodes)} conversations already stored in {DATA_DIR} (delete it to redo).")
        return
    except EpisodeNotFoundError:
        removed = store.delete_namespace(NAMESPACE)
        if removed:
            print(f"Rebuilding: removed {removed} episodes of an earlier, incomplete run.")
    print(f"Embedding and storing {len(episodes)} rated conversations in {DATA_DIR} ", end="")
    start = time.perf_counter()
    for first in range(0, len(episodes), BATCH):
        store.add(episodes[first : first + BATCH])
        print(".", end="", flush=True)
    print(f" done in {time.perf_counter() - start:.1f} s.")


def show(store: EpisodeStore, question: str) -> None:
    print(f"\n=== {question}")
    hits = store.search(question, k=3, namespace=NAMESPACE)
    for rank, (episode, similarity) in enumerate(hits, 1):
        ratings = ", ".join(f"{k} {episode.metadata[k]}" for k in RATING_KEYS)
        print(f"{rank}. similarity {similarity:.3f}   reward {episode.reward:.2f}   ({ratings})")
        for label, text in (("asked", episode.query), ("answer", episode.response)):
            line = textwrap.shorten(" ".join(text.split()), width=150, placeholder=" ...")
            print(textwrap.indent(f"{label}: {line}", "     "))


def main() -> None:
    store = EpisodeStore("demo", persist_directory=str(DATA_DIR))
    ingest(store)
    rated = store.training_arrays(namespace=NAMESPACE)
    print(
        f"{store.count(NAMESPACE)} episodes, {len(rated)} rated: mean reward "
        f"{rated.rewards.mean():.2f}, range {rated.rewards.min():.1f}-{rated.rewards.max():.1f}."
    )
    for question in QUESTIONS:
        show(store, question)


if __name__ == "__main__":
    main()
