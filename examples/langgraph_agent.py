"""A LangChain v1 agent with reward-aware episodic memory: middleware + LangGraph store.

Runs offline in well under a minute: the embedder is the local MiniLM, Chroma is embedded in a
temporary directory, and the "LLM" is a tiny rule-based chat model (swap in any real chat model,
e.g. `init_chat_model("openai:gpt-4.1-mini")`, without changing anything else).

What it shows:
1. past support episodes, some answered well (reward 1) and some badly (reward 0), are
   stored and the value model is trained on them (`memory.consolidate()`);
2. `EpisodicMemoryMiddleware` puts the best matching episodes and the value model's expected
   reward of the new request into the system prompt before every model call, and records each
   finished run as a new episode (rated later with `memory.record_feedback`);
3. `memory.as_store()` is the agent's LangGraph store: a tool writes a note to it through
   `ToolRuntime.store`, and the note is found again by semantic search.

Usage:
    python examples/langgraph_agent.py [--persist-directory DIR]
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import uuid
from typing import Any

from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.middleware import EpisodicMemoryMiddleware

GOOD_ANSWERS = {
    "How do I reset my password?": "Use 'Forgot password' on the login page (link valid 1 h).",
    "Can I get a refund?": "Yes, within 30 days: open Orders and press 'Return'.",
    "How do I change my delivery address?": "Edit it under Account > Addresses before dispatch.",
    "Where is my parcel?": None,  # the agent never answered this one well
}
BAD_ANSWER = "Please contact support."
PARAPHRASES = ["{q}", "Quick question: {q}", "{q} Thanks!", "Hi! {q}"]


RECALLED = re.compile(r"Response: (.+)\n\s+reward: (not rated|[^ |]+)")


class RuleBasedChatModel(BaseChatModel):
    """A stand-in LLM: saves notes when asked, else reuses the best recalled answer if it worked."""

    last_system_prompt: str = ""

    @property
    def _llm_type(self) -> str:
        return "rule-based-example"

    def bind_tools(self, tools: Any, **kwargs: Any) -> RuleBasedChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        system = messages[0].text if isinstance(messages[0], SystemMessage) else ""
        self.last_system_prompt = system
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(f"Done: {last.text}")
        elif last.text.lower().startswith("note:"):
            call = {"name": "save_note", "args": {"note": last.text[5:].strip()}, "id": "call-1"}
            reply = AIMessage("", tool_calls=[call])
        else:
            recalled = RECALLED.findall(system)  # best first
            works = (
                bool(recalled) and recalled[0][1] != "not rated" and float(recalled[0][1]) >= 0.5
            )
            reply = AIMessage(recalled[0][0] if works else "I am not sure, let me ask a colleague.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def save_note(note: str, runtime: ToolRuntime) -> str:
    """Save a note about the customer for later conversations."""
    assert runtime.store is not None
    key = f"note-{len(runtime.store.search(('notes', 'alice'), limit=100)) + 1}"
    runtime.store.put(("notes", "alice"), key, {"query": note, "author": "agent"})
    return f"saved {key}"


def seed(memory: DistilledEpisodicMemory) -> None:
    """Past episodes: mostly good answers (reward 1), one bad (reward 0); parcels only bad."""
    episodes = [
        {
            "query": template.format(q=question),
            "response": good or BAD_ANSWER,
            "reward": 1.0 if good else 0.0,
        }
        for question, good in GOOD_ANSWERS.items()
        for template in PARAPHRASES
    ] + [{"query": question, "response": BAD_ANSWER, "reward": 0.0} for question in GOOD_ANSWERS]
    memory.add_episodes(episodes)
    report = memory.consolidate(num_epochs=10)
    print(f"seeded {len(episodes)} rated episodes; value model trained in {report.duration_s:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persist-directory", help="Chroma directory (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        memory = DistilledEpisodicMemory(
            persist_directory=args.persist_directory or tmp,
            distillation=ModelDistillation(min_episodes=10),
        )
        seed(memory)
        model = RuleBasedChatModel()
        # blend = 0.8 * similarity + 0.2 * reward; episodes scoring below 0.45 are left out
        middleware = EpisodicMemoryMiddleware(memory, k=2, reward_weight=0.2, min_score=0.45)
        agent = create_agent(
            model,
            [save_note],
            system_prompt="You are a helpful shop assistant.",
            middleware=[middleware],
            store=memory.as_store(),
        )
        episode_ids: list[str] = []
        for turn, question in enumerate(
            [
                "I forgot my password, what should I do?",
                "Where's my package? It has been a week.",
                "note: Alice prefers answers by email, never by phone.",
            ],
            start=1,
        ):
            episode_ids.append(f"turn-{turn}-{uuid.uuid4().hex[:8]}")  # to rate it later
            config = {"configurable": {"episode_id": episode_ids[-1]}}
            out = agent.invoke({"messages": [{"role": "user", "content": question}]}, config)
            print(f"\n--- turn {turn}\nuser:  {question}")
            print("memory added to the system prompt:")
            memory_part = model.last_system_prompt.partition("\n\n")[2] or "(nothing)"
            print("  " + memory_part.replace("\n", "\n  "))
            print(f"agent: {out['messages'][-1].text}")
        middleware.flush()  # runs are stored in the background: wait for them before reading
        memory.record_feedback(episode_ids[0], 1.0)  # the user liked the first answer
        print(
            f"\nthumbs up on {episode_ids[0]}: reward", memory.store.get(episode_ids[:1])[0].reward
        )

        store = memory.as_store()
        print("store namespaces:", store.list_namespaces())
        for item in store.search(("notes",), query="how does Alice like to be contacted?"):
            print(f"note {item.key} (similarity {item.score:.2f}): {item.value}")
        status = middleware.status
        failures = status.recall_failures + status.score_failures + status.record_failures
        print(
            f"middleware: {status.recalls} recalls, {status.scores} estimates, "
            f"{status.recorded} episodes recorded, {failures} failures"
        )


if __name__ == "__main__":
    main()
