"""Real episodes with human rewards, for demos, tests and benchmarks.

`load_chitchat` turns the Chit Chat Challenge conversations (the `chitchat-dataset` package,
the ``chitchat`` extra: about 6,000 rated human conversations) into episodes: the opening of a
conversation is the query, the rest is the response, and the mean of the three human ratings
is the reward.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from langchain_kd_memory._validate import check_int
from langchain_kd_memory.episodes import MAX_TEXT_LENGTH, Episode

RATING_KEYS = ("witty", "upbeat", "interesting")
"""The three human ratings of a conversation, each from 1 to 10."""


def _turn_text(turn: Sequence[Mapping[str, Any]]) -> str:
    """The messages of one turn on one line, whitespace collapsed."""
    return " ".join(" ".join(str(message["text"]).split()) for message in turn).strip()


def _speaker_lines(turns: Sequence[Sequence[Mapping[str, Any]]], speakers: dict[str, str]) -> str:
    lines = []
    for turn in turns:
        sender = str(turn[0]["sender"])
        label = speakers.setdefault(sender, "B" if speakers else "A")
        lines.append(f"{label}: {_turn_text(turn)}")
    return "\n".join(lines)


def _episode(
    conversation_id: str, conversation: Mapping[str, Any], query_messages: int
) -> Episode | None:
    turns = [t for t in conversation["messages"] if t and _turn_text(t)]
    if len(turns) <= query_messages:
        return None  # nobody answered: no response to learn from
    speakers: dict[str, str] = {}
    prompt = str(conversation.get("prompt") or "").strip()
    opening = _speaker_lines(turns[:query_messages], speakers)
    response = _speaker_lines(turns[query_messages:], speakers)
    if max(len(opening), len(response)) > MAX_TEXT_LENGTH:
        return None  # a pasted wall of text (one unrated chat): over the episode text limit
    metadata: dict[str, str | int | float | bool] = {
        "conversation_id": conversation_id,
        "prompt": prompt,
    }
    ratings = conversation.get("ratings")
    reward = None
    if ratings:
        metadata.update({key: int(ratings[key]) for key in RATING_KEYS})
        reward = statistics.fmean(int(ratings[key]) for key in RATING_KEYS)
    return Episode(
        query=f"{prompt}\n{opening}" if prompt else opening,
        response=response,
        reward=reward,
        metadata=metadata,
        id=conversation_id,
        created_at=datetime.fromisoformat(str(conversation["start"]).replace("Z", "+00:00")),
    )


def load_chitchat(
    limit: int | None = None,
    *,
    query_messages: int = 2,
    seed: int | None = 0,
    rated_only: bool = True,
) -> list[Episode]:
    """Episodes from the Chit Chat Challenge dataset (human conversations with ratings).

    Each conversation is a list of turns (consecutive messages of one speaker). The query is
    the conversation's prompt followed by its first `query_messages` turns; the response is
    the rest, one line per turn, speakers labelled "A" and "B". Conversations with no turn
    after the query are skipped (nobody answered), and so are texts over the episode limit
    (`MAX_TEXT_LENGTH`: one unrated conversation).

    Args:
        limit: Return at most this many episodes.
        query_messages: Turns that belong to the query (>= 1).
        seed: Shuffle with this seed before applying `limit`; None keeps the order of ids.
        rated_only: Skip conversations without ratings (otherwise their reward is None).

    Returns:
        Episodes whose id is the conversation id, reward the mean of the ratings "witty",
        "upbeat" and "interesting" (1-10), and metadata the conversation id, prompt and the
        three ratings. The same arguments always give the same list.

    Raises:
        InvalidArgumentError: If an argument is out of range.
        ImportError: If the `chitchat-dataset` package is not installed.
    """
    if limit is not None:
        check_int("limit", limit, low=0)
    check_int("query_messages", query_messages, low=1)
    if seed is not None:
        check_int("seed", seed, low=0)
    try:
        import chitchat_dataset
    except ImportError as exc:
        raise ImportError(
            "load_chitchat needs the chitchat-dataset package: "
            "pip install 'langchain-kd-memory[chitchat]'"
        ) from exc
    data = chitchat_dataset.Dataset()
    ids = sorted(data)
    if seed is not None:
        random.Random(seed).shuffle(ids)
    episodes: list[Episode] = []
    for conversation_id in ids:
        if limit is not None and len(episodes) >= limit:
            break
        conversation = data[conversation_id]
        if rated_only and not conversation.get("ratings"):
            continue
        episode = _episode(conversation_id, conversation, query_messages)
        if episode is not None:
            episodes.append(episode)
    return episodes
