"""Finished agent runs: their text, their steps, how they are rated, the episodes they become.

Shared by the callback and the middleware. A run's inputs and outputs come in many shapes (a
string, a dict of variables, a message list, agent state); `extract_query` and
`extract_response` find the text in each, `agent_steps` the model's steps of an agent run. A
`reward_fn` rates a `FinishedRun`; `rate` turns whatever it returns into a reward or None, and
`run_episodes` makes the episodes to store: one for a single-step run, one per step (credited
with the discounted return) for a run of several model steps. A run is never lost for its
length: a text over the episode limit is cut to it, and the episode says so (`TRUNCATED_KEY`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.prompt_values import PromptValue

from langchain_kd_memory.episodes import (
    MAX_TEXT_LENGTH,
    Episode,
    MetadataValue,
    validate_reward,
)
from langchain_kd_memory.trajectories import trajectory_episodes

OBSERVATION_CHARS = 1000
"""Longest tool result quoted in the state of the next step."""

TRUNCATED_KEY = "truncated"
"""Metadata key set to True on a recorded episode whose query or response was cut to
`episodes.MAX_TEXT_LENGTH` characters. (Not ``kd_truncated``: the ``kd_`` prefix is reserved,
and user metadata may not use it.)"""

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
        steps: (state, action) of each model step, when the run took several (an agent that
            called tools): see `agent_steps`. Empty for a single-step run.
    """

    run_id: str
    query: str
    response: str
    inputs: Any
    outputs: Any
    steps: tuple[tuple[str, str], ...] = ()


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
    if isinstance(value, PromptValue):  # a rendered prompt: its messages, not its whole text
        return _text(value.to_messages(), prefer)
    messages = _messages(value)
    if messages is not None:
        chosen = [m for m in messages if isinstance(m, prefer) and str(m.text).strip()]
        return str((chosen or messages)[-1].text)
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


def _action(message: AIMessage) -> str:
    """What an AI message did: its tool calls as ``name({args})``, then its text."""
    calls = [
        f"{call['name']}({json.dumps(call.get('args', {}), sort_keys=True, default=str)})"
        for call in message.tool_calls
    ]
    return "\n".join([*calls, str(message.text).strip()]).strip()


def agent_steps(outputs: object) -> tuple[tuple[str, str], ...]:
    """The model's steps in an agent run: one (state, action) per AI message after the request.

    The state of a step is the request (the last human message) followed by the actions and
    tool observations before it; the action is the AI message's tool calls, or its answer.
    Returns () unless the run took two steps or more.
    """
    value = outputs.get("messages") if isinstance(outputs, Mapping) else outputs
    messages = _messages(value) or []
    humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    if not humans:
        return ()
    lines = [str(messages[humans[-1]].text)]
    steps: list[tuple[str, str]] = []
    for message in messages[humans[-1] + 1 :]:
        if isinstance(message, AIMessage) and (action := _action(message)):
            steps.append(("\n".join(lines), action))
            lines.append(f"Action: {action}")
        elif isinstance(message, ToolMessage):
            lines.append(f"Observation: {str(message.text)[:OBSERVATION_CHARS]}")
    return tuple(steps) if len(steps) > 1 else ()


def cut(text: str) -> str:
    """`text`, cut to the episode limit (`episodes.MAX_TEXT_LENGTH` characters) if longer."""
    return text[:MAX_TEXT_LENGTH]


def run_episodes(
    run: FinishedRun,
    reward: float | None,
    *,
    namespace: str,
    metadata: Mapping[str, MetadataValue] | None = None,
    gamma: float = 0.9,
) -> list[Episode]:
    """The episodes to store for a finished run.

    A single-step run is one episode with the run's id. A run of several steps is a
    trajectory: one episode per step (ids ``f"{run_id}/{i}"``), each credited with its
    discounted share of `reward`; feedback for the run's id later rates them all.

    A query or response longer than `episodes.MAX_TEXT_LENGTH` is cut to it, and its episode
    gets ``metadata["truncated"] = True`` (`TRUNCATED_KEY`): recording never drops a run for
    its length (a direct `add_episode` still refuses such a text).
    """
    pairs = run.steps or ((run.query, run.response),)
    cut_pairs = [(cut(query), cut(response)) for query, response in pairs]
    if run.steps:
        episodes = trajectory_episodes(
            cut_pairs, reward, gamma=gamma, trajectory_id=run.run_id, namespace=namespace,
            metadata=metadata,
        )
    else:
        episodes = [Episode(*cut_pairs[0], reward=reward, metadata=dict(metadata or {}),
                            namespace=namespace, id=run.run_id)]
    return [
        dataclasses.replace(episode, metadata={**episode.metadata, TRUNCATED_KEY: True})
        if cut_pair != pair else episode
        for episode, pair, cut_pair in zip(episodes, pairs, cut_pairs, strict=True)
    ]
