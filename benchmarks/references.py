"""Reference learners: the simplest things that could work on the value agent's own features.

Both read what the value model trains on (the stored episodes' query and response embeddings
and rewards) and score a query's candidate responses on ``[q, r, q * r, |q - r|]``, the
features of the package's teacher. The value engine must beat them in the same run.

* `RidgeValues`: closed-form ridge regression with an intercept (linear Q), ``lam = 1``.
* `KnnValues`: the mean reward of the `k` most cosine-similar stored episodes.
"""

from __future__ import annotations

import numpy as np

from langchain_kd_memory.episodes import TrainingArrays


def interaction_features(queries: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """``[q, r, q * r, |q - r|]`` per row, float64 (n, 4 d); `queries` may be one row."""
    q = np.broadcast_to(np.asarray(queries, dtype=np.float64), np.shape(responses))
    r = np.asarray(responses, dtype=np.float64)
    return np.concatenate([q, r, q * r, np.abs(q - r)], axis=1)


class RidgeValues:
    """Ridge regression of the reward on the interaction features, solved in closed form."""

    def __init__(self, lam: float = 1.0) -> None:
        if not lam > 0:
            raise ValueError(f"lam must be > 0, got {lam!r}")
        self.lam = lam
        self.weights: np.ndarray | None = None

    def fit(self, arrays: TrainingArrays) -> None:
        """Fit on the stored episodes (at least one)."""
        x = interaction_features(arrays.query_embeddings, arrays.response_embeddings)
        x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        penalty = self.lam * np.eye(x.shape[1])
        penalty[-1, -1] = 0.0  # the intercept is not shrunk
        self.weights = np.linalg.solve(x.T @ x + penalty, x.T @ arrays.rewards.astype(np.float64))

    def values(self, query: np.ndarray, responses: np.ndarray) -> np.ndarray:
        """The predicted reward of each response to `query`."""
        if self.weights is None:
            raise RuntimeError("fit first")
        return interaction_features(query[None], responses) @ self.weights[:-1] + self.weights[-1]


class KnnValues:
    """The mean reward of the `k` stored episodes most cosine-similar in interaction features."""

    def __init__(self, k: int = 10) -> None:
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k
        self.points: np.ndarray | None = None
        self.rewards = np.zeros(0)

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def fit(self, arrays: TrainingArrays) -> None:
        """Remember the stored episodes (at least one)."""
        self.points = self._unit(
            interaction_features(arrays.query_embeddings, arrays.response_embeddings)
        )
        self.rewards = arrays.rewards.astype(np.float64)

    def values(self, query: np.ndarray, responses: np.ndarray) -> np.ndarray:
        """The mean reward of each response's `k` nearest stored episodes."""
        if self.points is None:
            raise RuntimeError("fit first")
        similarity = self._unit(interaction_features(query[None], responses)) @ self.points.T
        k = min(self.k, len(self.rewards))
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        return self.rewards[nearest].mean(axis=1)
