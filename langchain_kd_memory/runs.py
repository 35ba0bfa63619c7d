"""Finished agent runs: their text, how they are rated. Shared by the callback and the middleware.

A run's inputs and outputs come in many shapes (a string, a dict of variables, a message list,
agent state); `extract_query` and `extract_response` find the text in each. A `reward_fn`
rates a `FinishedRun`; `rate` calls it and turns whatever it returns into a reward or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages

from langchain_kd_memory.episodes import validate_reward

_TEXT_KEYS = ("input", "question", "query", "output", "answer", "result", "text", "content")


@dataclass(frozen=True)
class FinishedRun:
    """A finished top-level agent run, as a `reward_fn` sees it.

    Attributes:
        run_id: The run's id, which is also the id of its episode.
        query: The user's text (the last human message of the inputs).
        response: The answer (the last AI message with text in the outputs).
        inputs: What the run was invoked with (None when only the final state is known, as in
            the middleware).
        outputs: What it returned; for an agent, its final state (``{"messages": [...]}``).
    """

    run_id: str
    query: str
    response: str
    inputs: Any
    outputs: Any


RewardFn = Callable[[FinishedRun], "float | None"]
"""`reward_fn(run) -> reward or None`: rates a finished run (None = not rated yet)."""


def rate(reward_fn: RewardFn | None, run: FinishedRun) -> tuple[float | None, Exception | None]:
    """The reward `reward_fn` gives `run`, or (None, the error) if it raised or returned junk.

    A reward that is not a number within the storable range (NaN, a string, a bool, ...)
    counts as an error: the run is then recorded unrated rather than dropped.
    """
    if reward_fn is None:
        return None, None
    try:
        return validate_reward(reward_fn(run)), None
    except Exception as exc:
        return None, exc


def _messages(value: object) -> list[BaseMessage] | None:
    """`value` as a list of messages if it is one (messages, role dicts, tuples), else None."""
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        try:
            return convert_to_messages(value)  # type: ignore[arg-type]
        except (ValueError, TypeError, NotImplementedError):
            return None
    return None


def _text(value: object, prefer: type[BaseMessage]) -> str:
    """The text in a run's input or output, from the last message of type `prefer` if any."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        if "messages" in value:
            return _text(value["messages"], prefer)
        for key in _TEXT_KEYS:
            if key in value:
                return _text(value[key], prefer)
        if len(value) == 1:
            return _text(next(iter(value.values())), prefer)
        return "\n".join(f"{key}: {_text(item, prefer)}" for key, item in value.items())
    messages = _messages(value)
    if messages is not None:
        chosen = [m for m in messages if isinstance(m, prefer) and str(m.text).strip()]
        return str((chosen or messages)[-1].text)
    to_string = getattr(value, "to_string", None)  # PromptValue
    if callable(to_string):
        return str(to_string())
    return "" if value is None else str(value)


def extract_query(inputs: object) -> str:
    """The user's query in a run's inputs.

    Handles a string, a message or list of messages (the last human message wins), agent state
    ``{"messages": [...]}``, and dicts with a key such as "input", "question" or "query" or a
    single value.
    """
    return _text(inputs, HumanMessage)


def extract_response(outputs: object) -> str:
    """The answer in a run's outputs.

    Handles a string, an `AIMessage`, agent state (the last AI message with text), and dicts
    with a key such as "output", "answer" or "result" or a single value.
    """
    return _text(outputs, AIMessage)
