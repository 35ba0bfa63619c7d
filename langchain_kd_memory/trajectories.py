"""Multi-step runs as episodes: each step credited with the discounted return that followed it.

A trajectory's step i is stored as the episode ``f"{trajectory_id}/{i}"`` with the metadata
`TRAJECTORY_KEYS`, so that feedback arriving later for the trajectory's id can rate every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from langchain_kd_memory._validate import check_number
from langchain_kd_memory.decisions import discounted_returns, n_step_returns
from langchain_kd_memory.episodes import Episode, MetadataValue, validate_reward
from langchain_kd_memory.errors import EpisodeNotFoundError, InvalidEpisodeError

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


def step_returns(rewards: object, steps: int, gamma: float,
                 bootstrap: tuple[int, Sequence[float]] | None = None) -> list[float] | None:
    """The discounted return of each of `steps` steps, or None when not rated yet.

    `rewards` is None, one number (the final reward, after the last step) or one per step.
    `bootstrap` is (n, the value of each step's state): n-step returns (`n_step_returns`)
    instead of Monte-Carlo ones.
    """
    if rewards is None:
        return None
    if isinstance(rewards, (int, float, np.integer, np.floating)) and not isinstance(rewards, bool):
        per_step: list[object] = [0.0] * (steps - 1) + [rewards]
    else:
        per_step = list(_sequence(rewards, "rewards"))
        if len(per_step) != steps:
            raise InvalidEpisodeError(f"{len(per_step)} rewards for {steps} steps")
    values = [v for v in (validate_reward(r, allow_none=False) for r in per_step) if v is not None]
    if bootstrap is not None:
        return n_step_returns(values, bootstrap[1], gamma, bootstrap[0])
    return discounted_returns(values, gamma)


def trajectory_episodes(
    steps: Sequence[Any],
    rewards: object,
    *,
    gamma: float,
    trajectory_id: str,
    namespace: str,
    metadata: Mapping[str, MetadataValue] | None = None,
    bootstrap: tuple[int, Callable[[list[str]], Sequence[float] | None]] | None = None,
) -> list[Episode]:
    """The episodes of a trajectory's steps (see `DistilledEpisodicMemory.add_trajectory`).

    `bootstrap` is (n, a function giving the value of each step's query, or None when there is
    no model yet) for n-step returns.
    """
    pairs = [_step(step, i) for i, step in enumerate(_sequence(steps, "steps"))]
    if not pairs:
        raise InvalidEpisodeError("a trajectory needs at least one step")
    gamma = check_number("gamma", gamma, low=0.0, high=1.0)
    values = None
    if bootstrap is not None and rewards is not None and len(pairs) > bootstrap[0]:
        of_steps = bootstrap[1]([str(query) for query, _ in pairs])
        values = None if of_steps is None else (bootstrap[0], of_steps)
    returns = step_returns(rewards, len(pairs), gamma, values)
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


def check_trajectory_metadata(episodes: Sequence[Episode]) -> None:
    """Refuse episodes whose trajectory keys do not describe the episode itself.

    The keys `TRAJECTORY_KEYS` are the memory's: feedback for a trajectory's id rates the steps
    they describe. An episode may carry them only as a real step: all four keys, its id
    ``f"{trajectory_id}/{trajectory_step}"``, ``0 <= trajectory_step < trajectory_steps`` and
    ``0 <= trajectory_gamma <= 1`` (as `add_trajectory` and the recorders write them, and as an
    export gives them back).

    Raises:
        InvalidEpisodeError: An episode uses the keys otherwise.
    """
    for episode in episodes:
        keys = [key for key in TRAJECTORY_KEYS if key in episode.metadata]
        if not keys:
            continue
        tid, step, steps, gamma = (episode.metadata.get(key) for key in TRAJECTORY_KEYS)
        valid = (
            len(keys) == len(TRAJECTORY_KEYS) and isinstance(tid, str)
            and _is_int(step) and _is_int(steps) and 0 <= step < steps  # type: ignore[operator]
            and isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
            and 0.0 <= gamma <= 1.0 and episode.id == f"{tid}/{step}"
        )
        if not valid:
            raise InvalidEpisodeError(
                f"episode {episode.id!r}: metadata keys {keys} are reserved for the steps of a "
                f"trajectory (all of {list(TRAJECTORY_KEYS)}, the episode id "
                "'{trajectory_id}/{trajectory_step}'): record trajectories with add_trajectory, "
                "or rename these keys"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def trajectory_length(target: str, first: Episode | None) -> int:
    """The number of steps of the trajectory `target`, read from its step 0 `first`.

    Raises:
        EpisodeNotFoundError: `first` is not step 0 of the trajectory `target`.
    """
    if first is None or first.id != f"{target}/0" or first.metadata.get(
        TRAJECTORY_KEYS[0]
    ) != target:
        raise EpisodeNotFoundError(f"no episode or trajectory with id {target!r}")
    return int(first.metadata[TRAJECTORY_KEYS[2]])  # type: ignore[arg-type]


def feedback_rewards(target: str, reward: float, episodes: Sequence[Episode]) -> dict[str, float]:
    """{episode id: reward} that feedback `reward` for `target` sets: the one place of credit.

    `episodes` are a run's episodes (or the stored episode `target`, or the stored first step of
    the trajectory `target`). An episode whose id is `target` gets `reward`; otherwise `target`
    must be the trajectory of ``episodes[0]``, its step 0, and each of its steps
    ``f"{target}/{i}"`` gets its discounted share (`step_returns`), in step order.

    Raises:
        EpisodeNotFoundError: `target` is neither one of `episodes` nor their trajectory.
    """
    if any(episode.id == target for episode in episodes):
        return {target: reward}
    first = episodes[0] if episodes else None
    steps = trajectory_length(target, first)
    gamma = float(first.metadata[TRAJECTORY_KEYS[3]])  # type: ignore[arg-type, union-attr]
    returns = step_returns(reward, steps, gamma)
    assert returns is not None
    return {f"{target}/{i}": value for i, value in enumerate(returns)}
