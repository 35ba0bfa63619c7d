"""How value estimates become decisions: rank candidates, credit steps, pick what to escalate.

Pure functions over `RewardEstimate`s and numbers (no Chroma, no torch), used by
`DistilledEpisodicMemory.rank_responses`, `add_trajectory` and `as_router`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from langchain_kd_memory._validate import check_number
from langchain_kd_memory.episodes import RewardEstimate
from langchain_kd_memory.errors import InsufficientDataError, InvalidArgumentError

Exploration = Literal["thompson", "ucb"]
EXPLORATIONS: tuple[Exploration, ...] = ("thompson", "ucb")


@dataclass(frozen=True)
class RankedResponse:
    """A candidate response with the teacher's estimate of its reward.

    Attributes:
        response: The candidate text.
        index: Its position in the list given to `rank_responses`.
        estimate: The teacher's `RewardEstimate` of (query, response).
        score: What the ranking used: `estimate.expected` without exploration, else the
            sampled or optimistic value (see `rank_estimates`).
    """

    response: str
    index: int
    estimate: RewardEstimate
    score: float


def rank_estimates(
    estimates: Sequence[RewardEstimate],
    *,
    explore: float = 0.0,
    exploration: Exploration = "thompson",
    draws: Sequence[float] | None = None,
) -> list[tuple[int, float]]:
    """(index, score) of each estimate, best score first (ties keep the given order).

    Args:
        estimates: One estimate per candidate.
        explore: 0 ranks by expected reward (greedy). Above 0 it explores where the model is
            unsure (`RewardEstimate.uncertainty`, epistemic): with "thompson" the score is
            `expected + explore * (draw - expected)`, where `draws` are one joint draw from
            the value head's posterior (explore=1 is Thompson sampling); with "ucb" it is
            `expected + explore * uncertainty` (optimism in the face of uncertainty).
        exploration: "thompson" or "ucb".
        draws: One Thompson draw per estimate; needed for "thompson" when `explore > 0`.
    """
    explore = check_number("explore", explore, low=0.0)
    if exploration not in EXPLORATIONS:
        raise InvalidArgumentError(
            f"exploration must be one of {EXPLORATIONS}, got {exploration!r}"
        )
    if explore > 0 and exploration == "thompson" and (
        draws is None or len(draws) != len(estimates)
    ):
        raise InvalidArgumentError("Thompson exploration needs one draw per estimate")
    scores = []
    for i, estimate in enumerate(estimates):
        score = estimate.expected
        if explore > 0 and exploration == "ucb":
            score += explore * estimate.uncertainty
        elif explore > 0:
            assert draws is not None
            score += explore * (float(draws[i]) - estimate.expected)
        scores.append(score)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [(i, scores[i]) for i in order]


def discounted_returns(rewards: Sequence[float], gamma: float) -> list[float]:
    """The return that followed each step: `G_t = r_t + gamma * G_{t+1}`."""
    returns: list[float] = []
    following = 0.0
    for reward in reversed(rewards):
        following = reward + gamma * following
        returns.append(following)
    return returns[::-1]


def n_step_returns(rewards: Sequence[float], values: Sequence[float], gamma: float,
                   n: int) -> list[float]:
    """The returns of each step, cut after `n` steps and completed by the value reached.

    `G_t = r_t + ... + gamma**(n-1) * r_{t+n-1} + gamma**n * values[t+n]`; past the end
    nothing is added (Monte-Carlo for the last n steps). `values[t]` is the value of the state
    step t acted on (e.g. the student's estimate).
    """
    steps = len(rewards)
    returns = []
    for t in range(steps):
        end = min(t + n, steps)
        tail = gamma ** (end - t) * values[end] if end < steps else 0.0
        returns.append(sum(gamma ** (k - t) * rewards[k] for k in range(t, end)) + tail)
    return returns


def threshold_for_budget(values: Sequence[float], budget: float) -> float:
    """The value below which a share `budget` of `values` lies (what to escalate)."""
    if not len(values):
        raise InsufficientDataError("no stored queries to calibrate the escalation budget on")
    return float(np.quantile(np.asarray(values, dtype=np.float64), budget))
