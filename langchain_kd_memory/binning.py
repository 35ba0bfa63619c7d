"""Reward <-> ordinal bins.

A `RewardBinner` is fitted once, on the training rewards (or on a range the user declares, such as
1..10), and saved with the model, so that a bin means the same reward in every batch, at every
prediction and after reloading. Rewards are ordinal: the training target for a reward is a
Gaussian over the neighbouring bins rather than a one-hot class, so predicting a bin next to the
right one costs less than predicting one far away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from langchain_kd_memory._validate import check_int, check_number
from langchain_kd_memory.episodes import MAX_REWARD_MAGNITUDE
from langchain_kd_memory.errors import ConfigError, InvalidRewardError

DEGENERATE_HALF_WIDTH = 0.5
"""When every training reward is equal, the bins span this much either side of that reward
(or a millionth of the reward, if that is more)."""
MIN_RELATIVE_BIN_WIDTH = 1e-9
"""A bin must be at least this fraction of the largest bound wide, or float64 cannot tell bins
apart."""
MEAN_MATCH_STEPS = 40
"""Bisection steps that place each soft target's mean on its reward (error ~ range / 2^40)."""


def _range_problem(low: float, high: float, num_bins: int) -> str | None:
    """Why [low, high] cannot be divided into `num_bins` usable bins, or None if it can."""
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        return f"need finite low < high, got low={low}, high={high}"
    largest = max(abs(low), abs(high))
    if largest > MAX_REWARD_MAGNITUDE:
        return f"the reward range [{low}, {high}] exceeds +-{MAX_REWARD_MAGNITUDE:g}"
    if (high - low) / num_bins < largest * MIN_RELATIVE_BIN_WIDTH:
        return f"the reward range [{low}, {high}] is too narrow for {num_bins} bins at its size"
    return None


def _as_rewards(rewards: object) -> np.ndarray:
    values = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise InvalidRewardError("rewards must all be finite")
    return values


@dataclass(frozen=True)
class RewardBinner:
    """`num_bins` equal-width bins over [low, high].

    Attributes:
        low: Reward at the lower edge of the first bin.
        high: Reward at the upper edge of the last bin.
        num_bins: Number of bins.
        width: Standard deviation of the soft targets, in bins.

    Example:
        .. code-block:: python

            binner = RewardBinner.fit(rewards, num_bins=64)          # range from the data
            binner = RewardBinner.fit(rewards, low=1.0, high=10.0)   # declared range
            targets = binner.soft_targets(rewards)                   # (n, 64), rows sum to 1
            binner.expected(targets)                                 # ~ rewards
    """

    low: float
    high: float
    num_bins: int = 64
    width: float = 2.0

    def __post_init__(self) -> None:
        check_int("num_bins", self.num_bins, low=2, error=ConfigError)
        problem = _range_problem(self.low, self.high, self.num_bins)
        if problem:
            raise ConfigError(problem)
        if check_number("width", self.width, low=0.0, error=ConfigError) == 0.0:
            raise ConfigError("width must be > 0 (a standard deviation in bins), got 0")

    @classmethod
    def fit(
        cls,
        rewards: object,
        *,
        num_bins: int = 64,
        width: float = 2.0,
        low: float | None = None,
        high: float | None = None,
    ) -> RewardBinner:
        """Fit the range on training rewards, or take the declared `low`/`high`.

        Args:
            rewards: The training rewards (at least one, all finite).
            num_bins: Number of bins.
            width: Standard deviation of the soft targets, in bins.
            low: Declared lowest reward; the data's minimum if None.
            high: Declared highest reward; the data's maximum if None.

        Raises:
            InvalidRewardError: No rewards, a non-finite one, or one outside the declared range.
        """
        values = _as_rewards(rewards)
        if values.size == 0:
            raise InvalidRewardError("cannot fit reward bins on zero rewards")
        if low is not None and high is not None and not low < high:
            raise ConfigError(f"the declared range needs low < high, got [{low}, {high}]")
        lo = float(values.min()) if low is None else float(low)
        hi = float(values.max()) if high is None else float(high)
        if values.min() < lo or values.max() > hi:
            raise InvalidRewardError(
                f"rewards span [{values.min()}, {values.max()}], outside the declared range "
                f"[{lo}, {hi}]"
            )
        if lo == hi:  # all rewards equal: centre a small range on them
            half = max(DEGENERATE_HALF_WIDTH, abs(lo) * 1e-6)
            lo, hi = lo - half, hi + half
        problem = _range_problem(lo, hi, num_bins)
        if problem:
            raise InvalidRewardError(f"{problem}; rescale the rewards, e.g. into [0, 1]")
        return cls(low=lo, high=hi, num_bins=num_bins, width=width)

    @property
    def bin_width(self) -> float:
        """Reward span of one bin."""
        return (self.high - self.low) / self.num_bins

    @cached_property
    def centers(self) -> np.ndarray:
        """The reward at the centre of each bin, shape (num_bins,), read-only (computed once)."""
        centers = self.low + (np.arange(self.num_bins) + 0.5) * self.bin_width
        centers.setflags(write=False)
        return centers

    def to_unit(self, rewards: object) -> np.ndarray:
        """Rewards clipped to the range and scaled to [0, 1] (float32)."""
        values = np.clip(_as_rewards(rewards), self.low, self.high)
        return ((values - self.low) / (self.high - self.low)).astype(np.float32)

    def contains(self, rewards: object) -> bool:
        """Whether every reward lies in [low, high]."""
        values = _as_rewards(rewards)
        return bool(values.size == 0 or (values.min() >= self.low and values.max() <= self.high))

    def _gaussian(self, means: np.ndarray) -> np.ndarray:
        distance = (means[:, None] - self.centers[None, :]) / (self.width * self.bin_width)
        logits = -0.5 * distance**2
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)

    def soft_targets(self, rewards: object) -> np.ndarray:
        """Gaussian soft targets, shape (n, num_bins), float32, each row summing to 1.

        Each row is a Gaussian over the bin centres with a standard deviation of `width` bins,
        placed so that its expected value is the reward itself: near the ends of the range,
        where a Gaussian centred on the reward would be cut off and its mean pulled inwards,
        the centre moves outwards instead. Rewards are clipped to [first centre, last centre]
        (the expected values a distribution over the bins can have).
        """
        centers = self.centers
        targets = np.clip(_as_rewards(rewards), centers[0], centers[-1])
        # The expected value grows monotonically with the Gaussian's centre: bisect for it. At
        # a distance d beyond the last centre, neighbouring bins differ by exp(d / (width^2 *
        # bin_width)), so 40 width^2 bins out the end bin holds all but ~exp(-40) of the mass.
        reach = (self.high - self.low) + 40 * (self.width**2 + 1) * self.bin_width
        lo, hi = targets - reach, targets + reach
        for _ in range(MEAN_MATCH_STEPS):
            mid = (lo + hi) / 2
            below = self._gaussian(mid) @ centers < targets
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return self._gaussian((lo + hi) / 2).astype(np.float32)

    def expected(self, probs: np.ndarray) -> np.ndarray:
        """Expected reward of each distribution: `probs` (n, num_bins) -> (n,)."""
        return np.asarray(probs, dtype=np.float64) @ self.centers

    def std(self, probs: np.ndarray) -> np.ndarray:
        """Standard deviation of the reward under each distribution, shape (n,)."""
        p = np.asarray(probs, dtype=np.float64)
        mean = p @ self.centers
        variance = p @ self.centers**2 - mean**2
        return np.sqrt(np.maximum(variance, 0.0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict for checkpoints."""
        return {"low": self.low, "high": self.high, "num_bins": self.num_bins, "width": self.width}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardBinner:
        """Rebuild a binner from `to_dict` output."""
        try:
            return cls(
                low=float(data["low"]),
                high=float(data["high"]),
                num_bins=int(data["num_bins"]),
                width=float(data["width"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid reward binning {data!r}: {exc}") from exc
