"""Plain data: `Episode`, `RewardEstimate` (a prediction) and `TrainingArrays` (stored vectors).

No I/O here. Validation happens on construction so that an invalid episode never reaches a store.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from langchain_kd_memory._validate import check_number
from langchain_kd_memory.errors import (
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidNamespaceError,
    InvalidRewardError,
)

MetadataValue = str | int | float | bool
"""A metadata value: Chroma stores scalars only."""

DEFAULT_NAMESPACE = "default"
DEFAULT_PERSIST_DIRECTORY = "./.kd_memory"
"""Where an embedded store keeps its Chroma database unless told otherwise."""
MAX_NAMESPACE_LENGTH = 128
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_LENGTH = 128
MAX_METADATA_STRING = 4096
MAX_ID_LENGTH = 256
"""Longest episode id, in characters (a UUID has 36)."""
MAX_REWARD_MAGNITUDE = 1e12
"""Rewards beyond +-1e12 are refused on every write: the value model's bin arithmetic (squares
for the standard deviation, widths next to the bounds) must stay exact in float64."""
MAX_TEXT_LENGTH = 100_000
"""Longest query or response, in characters (the embedders read a few hundred tokens at most)."""
RESERVED_METADATA_PREFIX = "kd_"
"""Metadata keys with this prefix belong to the library (reward, response, ...)."""


def validate_reward(reward: object, *, allow_none: bool = True) -> float | None:
    """Return `reward` as a float, or raise `InvalidRewardError`.

    Args:
        reward: A finite int or float (bools are refused), or None when `allow_none`.
        allow_none: Whether None ("not rated yet") is acceptable.
    """
    if reward is None:
        if allow_none:
            return None
        raise InvalidRewardError("reward is None; pass a finite number")
    if isinstance(reward, bool) or not isinstance(reward, (int, float, np.integer, np.floating)):
        raise InvalidRewardError(
            f"reward must be a finite number, got {type(reward).__name__} {reward!r}; convert "
            "it first (e.g. float(...)), or pass None for 'not rated yet'"
        )
    try:
        value = float(reward)
    except OverflowError:  # an int with hundreds of digits
        value = math.inf if reward > 0 else -math.inf  # type: ignore[operator]
    if not math.isfinite(value) and not isinstance(reward, int):
        raise InvalidRewardError(
            f"reward must be finite, got {value}; score failures with a number on your scale "
            "(e.g. 0), or pass None for 'not rated yet'"
        )
    if not abs(value) <= MAX_REWARD_MAGNITUDE:
        raise InvalidRewardError(
            f"reward {_short_number(reward)} lies beyond +-{MAX_REWARD_MAGNITUDE:g}, the largest "
            "magnitude the value model can bin: rescale your rewards (e.g. into [0, 1])"
        )
    return value


def _short_number(number: object) -> str:
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def validate_namespace(namespace: object) -> str:
    """Return `namespace` if it is a usable namespace string, else raise `InvalidNamespaceError`."""
    if not isinstance(namespace, str):
        raise InvalidNamespaceError(
            f"namespace must be a str, got {type(namespace).__name__} {namespace!r}"
        )
    if not namespace.strip():
        raise InvalidNamespaceError("namespace must be a non-empty string")
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise InvalidNamespaceError(
            f"namespace is {len(namespace)} characters; the limit is {MAX_NAMESPACE_LENGTH}"
        )
    problem = _unicode_problem(namespace)
    if problem:
        raise InvalidNamespaceError(f"namespace {problem}")
    return namespace


def validate_query(query: object, field_name: str = "query") -> str:
    """Return `query` if it is a non-blank string, else raise `InvalidEpisodeError`."""
    if not isinstance(query, str):
        raise InvalidEpisodeError(f"{field_name} must be a str, got {type(query).__name__}")
    if not query.strip():
        raise InvalidEpisodeError(f"{field_name} must not be empty or whitespace")
    check_text(query, field_name)
    return query


def _unicode_problem(text: str) -> str | None:
    """Why `text` cannot be stored as UTF-8 (an unpaired surrogate), or None if it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode text ({exc}); decode its bytes with errors='replace'"
    return None


def check_text(text: str, field_name: str) -> None:
    """Raise `InvalidEpisodeError` if `text` is not UTF-8 encodable or over `MAX_TEXT_LENGTH`."""
    problem = _unicode_problem(text)
    if problem:
        raise InvalidEpisodeError(f"{field_name} {problem}")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidEpisodeError(
            f"{field_name} is {len(text):,} characters; the limit is {MAX_TEXT_LENGTH:,}: "
            "shorten it (embedders read only the first few hundred tokens) and keep the full "
            "text elsewhere, e.g. a URL in metadata"
        )


def validate_reward_range(reward_range: object) -> tuple[float, float] | None:
    """Return `(low, high)` as floats, or None; raise `InvalidArgumentError` if unusable."""
    if reward_range is None:
        return None
    bounds: list[float] = []
    if isinstance(reward_range, (tuple, list)) and len(reward_range) == 2:
        for bound in reward_range:
            try:
                bounds.append(validate_reward(bound, allow_none=False))  # type: ignore[arg-type]
            except InvalidRewardError:
                break
    if len(bounds) != 2 or not bounds[0] < bounds[1]:
        raise InvalidArgumentError(
            f"reward_range must be (low, high) with numbers low < high within "
            f"+-{MAX_REWARD_MAGNITUDE:g}, e.g. (0, 1) or (1, 10); got {reward_range!r}"
        )
    return bounds[0], bounds[1]


def check_reward_in_range(reward: float, reward_range: tuple[float, float] | None) -> None:
    """Raise `InvalidRewardError` if `reward` lies outside the declared `reward_range`."""
    if reward_range is not None and not reward_range[0] <= reward <= reward_range[1]:
        low, high = reward_range
        raise InvalidRewardError(
            f"reward {reward} lies outside the declared reward_range [{low}, {high}]: rescale "
            "it into the range (e.g. a 1-5 rating into 0-1) or declare a wider reward_range"
        )


def validate_metadata(metadata: object) -> dict[str, MetadataValue]:
    """Return a copy of `metadata` if every value is a scalar, else raise `InvalidEpisodeError`."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidEpisodeError(f"metadata must be a dict, got {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidEpisodeError(
            f"metadata has {len(metadata)} keys; the limit is {MAX_METADATA_KEYS}"
        )
    clean: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidEpisodeError(f"metadata keys must be non-empty str, got {key!r}")
        if len(key) > MAX_METADATA_KEY_LENGTH:
            raise InvalidEpisodeError(
                f"metadata key of {len(key):,} characters ({key[:20]!r}...); the limit is "
                f"{MAX_METADATA_KEY_LENGTH}"
            )
        for text, what in ((key, f"metadata key {key!r}"), (value, f"metadata[{key!r}]")):
            problem = _unicode_problem(text) if isinstance(text, str) else None
            if problem:
                raise InvalidEpisodeError(f"{what} {problem}")
        if key.startswith(RESERVED_METADATA_PREFIX):
            raise InvalidEpisodeError(
                f"metadata key {key!r} uses the reserved prefix {RESERVED_METADATA_PREFIX!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEpisodeError(f"metadata[{key!r}] must be finite, got {value}")
        if isinstance(value, str) and len(value) > MAX_METADATA_STRING:
            raise InvalidEpisodeError(
                f"metadata[{key!r}] is {len(value)} characters; the limit is {MAX_METADATA_STRING}"
            )
        if not isinstance(value, (str, int, float, bool)):
            raise InvalidEpisodeError(
                f"metadata[{key!r}] must be str, int, float or bool, got {type(value).__name__}; "
                "Chroma keeps scalars only: flatten it, or store it as JSON text (json.dumps)"
            )
        clean[key] = value
    return clean


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Episode:
    """One thing the agent did: a query, its response and (now or later) a reward.

    Attributes:
        query: What the agent was asked. Must not be blank.
        response: What the agent answered ("" if not known).
        reward: A finite number, or None when not rated yet.
        metadata: Scalar values only (str, int, float, bool); keys must not start with "kd_".
        namespace: Whose episode this is (a user, an agent). Each namespace is isolated.
        id: Unique id; a UUID4 by default. Pass a run id to find the episode again later.
        created_at: When the episode happened (timezone-aware, UTC by default).
    """

    query: str
    response: str = ""
    reward: float | None = None
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    namespace: str = DEFAULT_NAMESPACE
    id: str = field(default_factory=_new_id)
    created_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        validate_query(self.query)
        if not isinstance(self.response, str):
            raise InvalidEpisodeError(
                f"response must be a str, got {type(self.response).__name__}"
            )
        check_text(self.response, "response")
        object.__setattr__(self, "reward", validate_reward(self.reward))
        object.__setattr__(self, "metadata", validate_metadata(self.metadata))
        validate_namespace(self.namespace)
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidEpisodeError(f"id must be a non-empty str, got {self.id!r}")
        if len(self.id) > MAX_ID_LENGTH:
            raise InvalidEpisodeError(
                f"id is {len(self.id):,} characters; the limit is {MAX_ID_LENGTH}: use a short "
                "key (e.g. a UUID or a hash of the long one) and keep long text in metadata"
            )
        problem = _unicode_problem(self.id)
        if problem:
            raise InvalidEpisodeError(f"id {problem}")
        if not isinstance(self.created_at, datetime):
            raise InvalidEpisodeError(
                f"created_at must be a datetime, got {type(self.created_at).__name__}"
            )
        if self.created_at.tzinfo is None:
            object.__setattr__(self, "created_at", self.created_at.replace(tzinfo=timezone.utc))

    @property
    def is_rated(self) -> bool:
        """Whether the episode has a reward."""
        return self.reward is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the `created_at` as ISO 8601)."""
        return {
            "id": self.id,
            "query": self.query,
            "response": self.response,
            "reward": self.reward,
            "metadata": dict(self.metadata),
            "namespace": self.namespace,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], namespace: str = DEFAULT_NAMESPACE) -> Episode:
        """Build an episode from a dict like the one `to_dict` returns.

        Missing keys, and keys whose value is None, take their defaults; the namespace's
        default is `namespace` (a memory passes its own, so a dict never lands elsewhere).
        """
        if not isinstance(data, Mapping):
            raise InvalidEpisodeError(f"expected a dict, got {type(data).__name__}")
        unknown = set(data) - {"id", "query", "response", "reward", "metadata", "namespace",
                               "created_at"}
        if unknown:
            raise InvalidEpisodeError(f"unknown episode fields: {sorted(unknown)}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if v is not None or k == "reward"}
        kwargs.setdefault("namespace", namespace)
        if isinstance(kwargs.get("created_at"), str):
            try:
                kwargs["created_at"] = datetime.fromisoformat(kwargs["created_at"])
            except ValueError as exc:
                raise InvalidEpisodeError(f"created_at is not ISO 8601: {exc}") from exc
        if "query" not in kwargs:
            raise InvalidEpisodeError("an episode needs a 'query'")
        return cls(**kwargs)


@dataclass(frozen=True)
class RewardEstimate:
    """What the value model predicts about the reward of a query (or a query and a response).

    Attributes:
        expected: The estimate to act on: the value head's posterior mean, in reward units,
            within the reward range.
        std: How much outcomes vary (aleatoric): the standard deviation of `distribution`. It
            does not shrink with more data; it is reported, not explored on.
        distribution: Probabilities over the reward bins (sums to 1): the distribution head's
            view of the outcomes (its mean can differ a little from `expected`).
        bin_centers: The reward value at the centre of each bin.
        predicted_bin: Index of the most likely bin.
        uncertainty: How unsure the model is about `expected` (epistemic): the posterior
            standard deviation of the value head, large for inputs unlike anything seen and
            shrinking as data arrive. What exploration (`rank_responses(explore=...)`) uses.
        model_namespace: Whose value model answered: a namespace's own, or None for the shared
            model (set by the memory; None from a bare `ModelDistillation`).
        model_version: The checkpoint version of that model (None if never saved).
    """

    expected: float
    std: float
    distribution: np.ndarray = field(repr=False)
    bin_centers: np.ndarray = field(repr=False)
    predicted_bin: int
    uncertainty: float = 0.0
    model_namespace: str | None = None
    model_version: int | None = None

    @property
    def mode(self) -> float:
        """The reward at the centre of the most likely bin."""
        return float(self.bin_centers[self.predicted_bin])

    def quantile(self, q: float) -> float:
        """The bin-centre reward below which a fraction `q` of the predicted probability lies.

        Raises:
            InvalidArgumentError: `q` is not a number in [0, 1] (e.g. 0.1 for a pessimistic
                estimate, 0.5 for the median).
        """
        q = check_number("q", q, low=0.0, high=1.0)
        cdf = np.cumsum(self.distribution)
        index = int(np.searchsorted(cdf, q, side="left"))
        return float(self.bin_centers[min(index, len(self.bin_centers) - 1)])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the distribution as a list)."""
        return {
            "expected": self.expected,
            "uncertainty": self.uncertainty,
            "std": self.std,
            "model_namespace": self.model_namespace,
            "model_version": self.model_version,
            "predicted_bin": self.predicted_bin,
            "mode": self.mode,
            "distribution": [float(p) for p in self.distribution],
        }


@dataclass(frozen=True)
class TrainingArrays:
    """Stored embeddings and rewards of rated episodes: what consolidation trains on.

    Attributes:
        query_embeddings: float32 array of shape (n, dim).
        response_embeddings: float32 array of shape (n, dim).
        rewards: float32 array of shape (n,), all finite.
        ids: The n episode ids, in the same order.
    """

    query_embeddings: np.ndarray
    response_embeddings: np.ndarray
    rewards: np.ndarray
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        q = np.asarray(self.query_embeddings, dtype=np.float32)
        r = np.asarray(self.response_embeddings, dtype=np.float32)
        y = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        if q.ndim != 2 or r.shape != q.shape:
            raise InvalidEpisodeError(
                f"embeddings must be two (n, dim) arrays of one shape, got {q.shape} and {r.shape}"
            )
        if y.shape[0] != q.shape[0]:
            raise InvalidEpisodeError(f"{y.shape[0]} rewards for {q.shape[0]} embeddings")
        if not np.all(np.isfinite(y)):
            raise InvalidRewardError("rewards must all be finite")
        ids = tuple(self.ids) or tuple(str(i) for i in range(q.shape[0]))
        if len(ids) != q.shape[0]:
            raise InvalidEpisodeError(f"{len(ids)} ids for {q.shape[0]} embeddings")
        object.__setattr__(self, "query_embeddings", q)
        object.__setattr__(self, "response_embeddings", r)
        object.__setattr__(self, "rewards", y)
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def dimension(self) -> int:
        """Embedding dimension."""
        return int(self.query_embeddings.shape[1])

    def subset(self, indices: np.ndarray | Sequence[int]) -> TrainingArrays:
        """The rows at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return TrainingArrays(
            self.query_embeddings[idx],
            self.response_embeddings[idx],
            self.rewards[idx],
            tuple(self.ids[i] for i in idx),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[TrainingArrays]) -> TrainingArrays:
        """Join several batches (e.g. those the store streams) into one."""
        if not parts:
            raise InvalidEpisodeError("nothing to concatenate")
        return cls(
            np.concatenate([p.query_embeddings for p in parts]),
            np.concatenate([p.response_embeddings for p in parts]),
            np.concatenate([p.rewards for p in parts]),
            tuple(i for p in parts for i in p.ids),
        )
