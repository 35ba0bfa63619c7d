"""Multi-step runs as episodes: each step credited with the discounted return that followed it.

A trajectory's step i is stored as the episode ``f"{trajectory_id}/{i}"`` with the metadata
`TRAJECTORY_KEYS`, so that feedback arriving later for the trajectory's id can rate every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from langchain_kd_memory._validate import check_number
from langchain_kd_memory.decisions import discounted_returns
from langchain_kd_memory.episodes import Episode, MetadataValue, validate_reward
from langchain_kd_memory.errors import InvalidEpisodeError

TRAJECTORY_KEYS = ("trajectory_id", "trajectory_step", "trajectory_steps", "trajectory_gamma")
"""Metadata of each step: the run's id, the step's index, the run's length and its discount."""


def _sequence(value: object, name: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise InvalidEpisodeError(f"{name} must be a list, got {type(value).__name__}")
    return value


def _step(step: object, index: int) -> tuple[Any, Any]:
    """(query, response) of one step given as a pair or a dict."""
    if isinstance(step, Mapping) and "query" in step:
        return step["query"], step.get("response", "")
    if isinstance(step, (tuple, list)) and len(step) == 2:
        return step[0], step[1]
    raise InvalidEpisodeError(
        f"steps[{index}] must be a (query, response) pair or a dict with 'query' and "
        f"'response', got {step!r}"
    )


def step_returns(rewards: object, steps: int, gamma: float) -> list[float] | None:
    """The discounted return of each of `steps` steps, or None when not rated yet.

    `rewards` is None, one number (the final reward, after the last step) or one per step.
    """
    if rewards is None:
        return None
    if isinstance(rewards, (int, float, np.integer, np.floating)) and not isinstance(rewards, bool):
        per_step: list[object] = [0.0] * (steps - 1) + [rewards]
    else:
        per_step = list(_sequence(rewards, "rewards"))
        if len(per_step) != steps:
            raise InvalidEpisodeError(f"{len(per_step)} rewards for {steps} steps")
    values = [validate_reward(r, allow_none=False) for r in per_step]
    return discounted_returns([v for v in values if v is not None], gamma)


def trajectory_episodes(
    steps: Sequence[Any],
    rewards: object,
    *,
    gamma: float,
    trajectory_id: str,
    namespace: str,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> list[Episode]:
    """The episodes of a trajectory's steps (see `DistilledEpisodicMemory.add_trajectory`)."""
    pairs = [_step(step, i) for i, step in enumerate(_sequence(steps, "steps"))]
    if not pairs:
        raise InvalidEpisodeError("a trajectory needs at least one step")
    gamma = check_number("gamma", gamma, low=0.0, high=1.0)
    returns = step_returns(rewards, len(pairs), gamma)
    clash = set(metadata or {}) & set(TRAJECTORY_KEYS)
    if clash:
        raise InvalidEpisodeError(f"metadata keys {sorted(clash)} are set for trajectories")
    return [
        Episode(
            query, response, reward=None if returns is None else returns[i],
            metadata={
                **(metadata or {}),
                **dict(zip(TRAJECTORY_KEYS, (trajectory_id, i, len(pairs), gamma), strict=True)),
            },
            namespace=namespace, id=f"{trajectory_id}/{i}",
        )
        for i, (query, response) in enumerate(pairs)
    ]


def trajectory_rewards(first_step: Episode, reward: float) -> dict[str, float]:
    """{step id: discounted share of `reward`} for the trajectory whose step 0 is `first_step`."""
    steps = int(first_step.metadata.get(TRAJECTORY_KEYS[2], 1))
    gamma = float(first_step.metadata.get(TRAJECTORY_KEYS[3], 1.0))
    trajectory_id = str(first_step.metadata.get(TRAJECTORY_KEYS[0], first_step.id[:-2]))
    returns = step_returns(reward, steps, gamma)
    assert returns is not None
    return {f"{trajectory_id}/{i}": value for i, value in enumerate(returns)}
