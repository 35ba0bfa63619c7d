"""A support chatbot whose episodic memory learns from thumbs up / thumbs down.

What it shows:
1. an LCEL chain (recall -> prompt -> model) with `DistilledEpisodicMemory` as the retriever:
   the past conversations closest to each question, re-ranked by how well they went, are put
   into the prompt, together with the value model's expected reward of the new question;
2. `ConsolidationCallback`, attached with ``config={"callbacks": [...]}``, records every turn
   as an episode whose id is the run id, so your feedback (`+` / `-`) reaches it through
   `memory.record_feedback(run_id, ...)`, and retrains the value model in the background every
   few ratings;
3. the memory learning during the session: it starts with 60 past conversations of a small
   bookshop's support (36 rated, 24 not), 4 ratings short of what training needs; after your
   first ratings the value model is trained, and from then on each question gets a score
   and unrated episodes get a predicted value.

Runs offline by default: the embedder is the local MiniLM, Chroma is embedded in a temporary
directory, and the "model" is a tiny rule-based responder that reuses the best recalled answer
that went well. `--openai` uses a real model instead (langchain-openai if installed, else the
`openai` client; needs OPENAI_API_KEY, and falls back to the offline responder without it).

Usage:
    python examples/chatbot.py                                   # interactive
    python examples/chatbot.py --turns "I forgot my password" "Where is my parcel?" \\
        --auto-feedback                                          # scripted
    python examples/chatbot.py --script questions.txt --persist-directory ./chatbot_data
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import convert_to_openai_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from langchain_kd_memory import (
    ConsolidationCallback,
    DistilledEpisodicMemory,
    ModelDistillation,
    NotTrainedError,
    RewardEstimate,
)

MIN_TO_TRAIN = 40
"""Rated episodes the value model needs (the seed has 36)."""

# topic: (phrasings, good answer, bad answer, past answers that went well out of 6 rated)
TOPICS: dict[str, tuple[list[str], str, str, int]] = {
    "password": (
        ["How do I reset my password?", "I forgot my password.", "I can't log in to my account."],
        "Use 'Forgot password' on the login page; the link in the e-mail is valid for an hour.",
        "Passwords are your responsibility, sorry.",
        6,
    ),
    "refund": (
        ["Can I get a refund?", "I want my money back for a book.", "How do I return an order?"],
        "Yes, within 30 days: open Orders, pick the book and press 'Return'.",
        "Refunds are not possible.",
        5,
    ),
    "ebook": (
        ["How do I download my e-book?", "Where do I find the ebook I bought?",
         "My e-book does not open."],
        "E-books are under Library > Downloads, as EPUB and PDF.",
        "Please reinstall your reader app.",
        4,
    ),
    "address": (
        ["How do I change my delivery address?", "I moved, can you ship to my new address?",
         "Wrong shipping address on my order."],
        "Edit it under Account > Addresses; orders not yet dispatched follow the change.",
        "Addresses cannot be changed after ordering.",
        3,
    ),
    "gift": (
        ["Do you sell gift cards?", "Can I pay with a gift voucher?",
         "My gift card code is rejected."],
        "Gift cards are at /gift; enter the code at checkout under 'Voucher'.",
        "We do not know anything about gift cards.",
        1,
    ),
    "parcel": (
        ["Where is my parcel?", "My order has not arrived.", "The tracking number does not work."],
        "Tracking updates within 24 h of dispatch; after 10 days we resend the order for free.",
        "Please contact the courier.",
        0,
    ),
}
PREFIXES = ["", "Hi! ", "Quick question: ", "Hello, "]
DEMO_TURNS = [
    "I forgot my password, what can I do?",
    "Where is my parcel? It has been two weeks.",
    "Can I return a book I bought last week?",
    "Do you sell gift cards?",
    "My e-book won't open, help!",
    "Hi! How do I reset my password?",
]
FALLBACK_ANSWER = "I am not sure about this one; let me pass you to a colleague."
SIMILAR_ENOUGH = 0.55
"""The offline responder reuses a recalled answer only from a question at least this similar."""

SYSTEM_PROMPT = """You are the support assistant of a small online bookshop.
Past conversations similar to the customer's question, best first:
{episodes}
{estimate}
Reuse answers that went well (reward >= 0.5); never repeat answers that went badly.
If nothing relevant went well, say you will pass the customer to a colleague."""

EPISODE_LINE = re.compile(
    r"^\d+\. \[similarity ([\d.]+) \| (?:reward ([\d.]+)|[^\]]*)\] .*?A: (.*)$"
)
"""A line of `format_episodes`: (similarity, reward or None when unrated, answer)."""


# ----------------------------------------------------------------------------- seed data


def seed_episodes() -> list[dict[str, Any]]:
    """60 past conversations: per topic 6 rated (some went well, some badly) and 4 unrated."""
    episodes = []
    for topic, (phrasings, good, bad, good_count) in TOPICS.items():
        questions = [p + q for p in PREFIXES for q in phrasings][:10]
        for i, question in enumerate(questions):
            rated = i < 6
            went_well = i < good_count if rated else i % 2 == 0
            episodes.append({
                "query": question,
                "response": good if went_well else bad,
                "reward": (1.0 if went_well else 0.0) if rated else None,
                "metadata": {"topic": topic},
            })
    return episodes


# ----------------------------------------------------------------------------- the chain


def format_episodes(docs: list[Document]) -> str:
    """The recalled episodes as the prompt shows them to the model."""
    lines = []
    for rank, doc in enumerate(docs, 1):
        meta = doc.metadata
        rating = "not rated" if meta["reward"] is None else f"reward {meta['reward']:g}"
        lines.append(
            f"{rank}. [similarity {meta['similarity']:.2f} | {rating}] "
            f"Q: {meta['query']} A: {meta['response']}"
        )
    return "\n".join(lines) or "(none)"


def format_estimate(estimate: RewardEstimate | None) -> str:
    if estimate is None:
        return "Expected reward of this question: unknown (the value model is not trained yet)."
    return (
        f"Expected reward of this question (value model, 0-1): "
        f"{estimate.expected:.2f} ± {estimate.std:.2f}"
    )


def rule_based_reply(prompt: PromptValue) -> str:
    """The offline 'model': the answer of the best similar recalled episode that went well."""
    system = prompt.to_messages()[0].text
    for line in system.splitlines():
        match = EPISODE_LINE.match(line)
        if match and match[2] is not None and float(match[1]) >= SIMILAR_ENOUGH:
            if float(match[2]) >= 0.5:
                return match[3]
    return FALLBACK_ANSWER


def openai_model(model_name: str) -> Runnable[Any, Any] | None:
    """A real chat model, or None (with a message saying why) when it cannot be used."""
    if not os.environ.get("OPENAI_API_KEY"):
        print("--openai: OPENAI_API_KEY is not set; using the offline rule-based responder.")
        return None
    try:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(model=model_name)
    except ImportError:
        pass
    try:
        import openai
    except ImportError:
        print("--openai: neither langchain-openai nor openai is installed "
              "(pip install langchain-openai); using the offline rule-based responder.")
        return None
    client = openai.OpenAI()

    def call(prompt: PromptValue) -> str:
        messages: Any = convert_to_openai_messages(prompt.to_messages())
        reply = client.chat.completions.create(model=model_name, messages=messages)
        return reply.choices[0].message.content or ""

    return RunnableLambda(call, name=f"openai:{model_name}")


def build_chain(memory: DistilledEpisodicMemory, model: Runnable[Any, Any]) -> Runnable[Any, Any]:
    """{"question"} -> {"answer", "episodes", "estimate"}.

    The callback records the question and the "answer" of each top-level run.
    """

    def estimate(inputs: dict[str, Any]) -> RewardEstimate | None:
        try:
            return memory.score(inputs["question"])
        except NotTrainedError:
            return None

    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", "{question}")])
    respond = (
        RunnablePassthrough.assign(
            episodes=lambda x: format_episodes(x["docs"]),
            estimate=lambda x: format_estimate(x["score"]),
        )
        | prompt
        | model
        | StrOutputParser()
    )
    return RunnablePassthrough.assign(
        docs=itemgetter("question") | memory, score=RunnableLambda(estimate, name="score")
    ) | {"answer": respond, "episodes": itemgetter("docs"), "estimate": itemgetter("score")}


# ----------------------------------------------------------------------------- the session


def show_turn(result: dict[str, Any], memory: DistilledEpisodicMemory) -> None:
    print("recalled (score = blend of similarity and value):")
    for rank, doc in enumerate(result["episodes"], 1):
        meta = doc.metadata
        if meta["reward"] is not None:
            rating = f"reward {meta['reward']:g}"
        elif meta["value_source"] == "predicted":
            rating = f"not rated, predicted value {meta['value']:.2f}"
        else:
            rating = "not rated"
        text = textwrap.shorten(f"{meta['query']} -> {meta['response']}", 90, placeholder="...")
        print(f"  {rank}. score {meta['score']:.2f} | similarity {meta['similarity']:.2f} | "
              f"{rating}\n     {text}")
    estimate = result["estimate"]
    if estimate is None:
        rated = memory.store.count_rated(memory.namespace)
        print(f"value model: not trained yet ({rated}/{MIN_TO_TRAIN} rated)")
    else:
        good = estimate.distribution[estimate.bin_centers >= 0.5].sum()
        print(f"value model: expected reward {estimate.expected:.2f} ± {estimate.std:.2f} "
              f"(P(reward >= 0.5) = {good:.2f})")
    print(f"bot> {result['answer']}")


def ask_feedback(answer: str, auto: bool, interactive: bool) -> float | None:
    """1.0 (thumbs up), 0.0 (down) or None (skipped)."""
    if interactive:
        choice = input("feedback (+ good / - bad / Enter to skip)> ").strip()
    elif auto:
        choice = "-" if answer == FALLBACK_ANSWER else "+"
        print(f"feedback (auto): {choice}")
    else:
        return None
    return {"+": 1.0, "-": 0.0}.get(choice)


def questions(args: argparse.Namespace, interactive: bool) -> Iterator[str]:
    if args.turns:
        yield from args.turns
    elif args.script:
        lines = Path(args.script).read_text(encoding="utf-8").splitlines()
        yield from (line.strip() for line in lines if line.strip() and not line.startswith("#"))
    elif interactive:
        print("Ask the bookshop's support bot (empty line or Ctrl-D to quit). Try: "
              + "; ".join(DEMO_TURNS[:3]))
        while True:
            try:
                line = input("\nyou> ").strip()
            except EOFError:
                return
            if not line:
                return
            yield line
    else:
        yield from (line.strip() for line in sys.stdin if line.strip())


def run_session(args: argparse.Namespace, directory: str) -> None:
    memory = DistilledEpisodicMemory(
        persist_directory=directory,
        distillation=ModelDistillation(seed=0, reward_low=0.0, reward_high=1.0,
                                       min_episodes=MIN_TO_TRAIN),
        k=3,
    )
    if memory.store.count(memory.namespace) == 0:
        seeds = seed_episodes()
        memory.add_episodes(seeds)
        rated = sum(e["reward"] is not None for e in seeds)
        print(f"seeded {len(seeds)} past conversations ({rated} rated) in {directory}")
    else:
        print(f"reusing {memory.store.count(memory.namespace)} episodes in {directory} "
              f"(value model {'loaded' if memory.is_trained else 'not trained yet'})")
    callback = ConsolidationCallback(memory, every_n_episodes=args.every)
    model = openai_model(args.model) if args.openai else None
    chain = build_chain(memory, model or RunnableLambda(rule_based_reply, name="rule_based"))
    interactive = sys.stdin.isatty() and not (args.turns or args.script)
    consolidations = 0
    for turn, question in enumerate(questions(args, interactive), 1):
        if not interactive:
            callback.wait()  # scripted runs: let a running consolidation finish (reproducible)
        status = callback.status
        if status.consolidations_run > consolidations:
            consolidations = status.consolidations_run
            report = status.last_report
            assert report is not None
            print(f"\n[consolidation {consolidations}: value model trained on "
                  f"{report.episodes_used} rated episodes in {report.duration_s:.1f} s]")
        elif status.training_in_progress:
            print("\n[the value model is training in the background]")
        if not interactive:
            print(f"\n--- turn {turn}\nyou> {question}")
        run_id = uuid.uuid4()
        try:
            result = chain.invoke(
                {"question": question}, config={"callbacks": [callback], "run_id": run_id}
            )
        except Exception as exc:  # e.g. --openai without network: a message, not a traceback
            raise SystemExit(f"the chain failed: {type(exc).__name__}: {exc}") from exc
        show_turn(result, memory)
        reward = ask_feedback(result["answer"], args.auto_feedback, interactive)
        if reward is not None:
            memory.record_feedback(run_id, reward)  # the episode's id is the run id
    callback.flush()
    status = callback.status
    print(f"\nsession over: {status.episodes_recorded} turns recorded, "
          f"{memory.store.count_rated(memory.namespace)} rated episodes in memory, "
          f"{status.consolidations_run} consolidations, {status.errors} errors")
    if memory.is_trained:
        for question in DEMO_TURNS[:4]:
            print(f"  value of {question!r}: {memory.score(question).expected:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--turns", nargs="+", metavar="QUESTION", help="questions to ask")
    source.add_argument("--script", metavar="FILE", help="a file with one question per line")
    source.add_argument("--demo", action="store_true",
                        help=f"ask {len(DEMO_TURNS)} built-in questions with --auto-feedback")
    parser.add_argument("--auto-feedback", action="store_true",
                        help="scripted runs: thumbs up when the bot reused a past answer, "
                             "down when it gave up")
    parser.add_argument("--every", type=int, default=4,
                        help="retrain the value model after every N ratings (default 4)")
    parser.add_argument("--persist-directory",
                        help="Chroma and checkpoints directory (default: a temporary one)")
    parser.add_argument("--openai", action="store_true", help="answer with a real OpenAI model")
    parser.add_argument("--model", default="gpt-4.1-mini", help="model for --openai")
    args = parser.parse_args()
    if args.every < 1:
        parser.error("--every must be >= 1")
    if args.demo:
        args.turns = DEMO_TURNS
        args.auto_feedback = True
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the embedder's loading bar
    with tempfile.TemporaryDirectory(prefix="chatbot_") as scratch:
        run_session(args, args.persist_directory or scratch)


if __name__ == "__main__":
    main()
