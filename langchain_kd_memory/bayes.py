"""Bayesian linear regression in closed form: the value head of the teacher and of the student.

The model is ``y = b + w . (phi - center) + noise`` with ``noise ~ N(0, 1 / beta)``, a flat prior
on the intercept ``b`` (features and targets are centred: a prior pulling the intercept to 0
would pull every estimate towards 0) and a Gaussian prior on the weights whose precision is one
number per *group* of features: ``w_k ~ N(0, I / alpha_k)`` (the teacher's groups are its input
blocks: query, response, their product and difference). `BayesianLinear.fit` chooses every
``alpha_k`` and ``beta`` by maximising the evidence (MacKay, "Bayesian interpolation", 1992, with
one prior per group: a block that carries no signal, e.g. responses that do not matter, is
shrunk away instead of drowning the others), so no regularisation has to be tuned. It keeps the
posterior ``w ~ N(mean, A^-1)`` through the Cholesky factor ``L`` of its precision
``A = diag(alpha) + beta Phi^T Phi``.

At a new feature vector ``phi``, with ``d = phi - center``, the posterior gives

* the estimate ``b + d . mean`` (a ridge regression with per-group penalties);
* its **epistemic** standard deviation ``sqrt(d^T A^-1 d + 1 / (beta n))``: how unsure the model
  is about the estimate, large far from the training data and shrinking as data arrive (the
  aleatoric spread, how much outcomes vary, is ``1 / beta`` and stays);
* a **Thompson draw**: one ``(b, w)`` drawn from the posterior and shared by every row, so the
  rows of one decision are drawn jointly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MAX_ITERATIONS = 30
TOLERANCE = 1e-3
"""The evidence iteration stops when the weights and the noise precision change by less than
this, relatively (a group shrunk away keeps raising its precision towards the bound)."""
PRECISION_BOUNDS = (1e-8, 1e10)
NOISE_FLOOR = 1e4
"""The noise precision stays below NOISE_FLOOR / var(targets): with as many features as rows the
evidence would otherwise call the fit exact and the model certain."""


@dataclass(frozen=True)
class BayesianLinear:
    """A fitted posterior over the weights of a linear model (float64 tensors).

    Attributes:
        mean: Posterior mean of the weights, (d,).
        cholesky: Lower Cholesky factor of the posterior precision, (d, d).
        center: Mean of the training features, (d,).
        alphas: Prior precision of each feature, (d,) (one value per group).
        intercept: Mean of the training targets.
        count: Number of training rows.
        beta: Precision of the noise.
    """

    mean: torch.Tensor
    cholesky: torch.Tensor
    center: torch.Tensor
    alphas: torch.Tensor
    intercept: float
    count: int
    beta: float

    @classmethod
    def fit(
        cls, features: torch.Tensor, targets: torch.Tensor, groups: Sequence[int] | None = None
    ) -> BayesianLinear:
        """The posterior given `features` (n, d) and `targets` (n,).

        Args:
            features: The training rows' features.
            targets: Their targets.
            groups: Sizes of consecutive feature groups with a prior precision each (summing
                to d); one group if None.
        """
        center = features.double().mean(dim=0)
        phi = features.double() - center
        intercept = float(targets.double().mean())
        y = targets.double() - intercept
        n, d = phi.shape
        sizes = list(groups) if groups is not None else [d]
        if sum(sizes) != d or min(sizes) < 1:
            raise ValueError(f"groups {sizes} do not split {d} features")
        group_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        gram, projected, yy = phi.T @ phi, phi.T @ y, float(y @ y)
        variance = max(yy / max(n, 1), 1e-12)
        max_beta = NOISE_FLOOR / variance  # noise std >= 1% of the targets' (n <= d interpolates)
        # Start from the simple side: noise explains the targets and each group's prior a tenth
        # of their variance. With fewer rows than features the evidence has a second optimum
        # that interpolates the data; iterating up from a weak prior can end there.
        energy = torch.zeros(len(sizes), dtype=torch.float64).index_add_(
            0, group_of, torch.diagonal(gram)
        )
        alpha = (10 * len(sizes) * energy / (n * variance)).clamp(*PRECISION_BOUNDS)
        beta = min(1.0 / variance, max_beta)
        identity = torch.eye(d, dtype=torch.float64)
        mean = torch.zeros(d, dtype=torch.float64)
        for _ in range(MAX_ITERATIONS):
            cholesky = torch.linalg.cholesky(torch.diag(alpha[group_of]) + beta * gram)
            new_mean = beta * torch.cholesky_solve(projected[:, None], cholesky)[:, 0]
            inverse = torch.linalg.solve_triangular(cholesky, identity, upper=False)
            variances = (inverse * inverse).sum(dim=0)  # diag(A^-1)
            gamma = torch.zeros_like(alpha).index_add_(
                0, group_of, 1.0 - alpha[group_of] * variances
            )
            weight = torch.zeros_like(alpha).index_add_(0, group_of, new_mean * new_mean)
            alpha = (gamma / weight.clamp(min=1e-30)).clamp(*PRECISION_BOUNDS)
            residual = yy - 2 * float(new_mean @ projected) + float(new_mean @ (gram @ new_mean))
            new_beta = min(max(n - float(gamma.sum()), 1e-6) / max(residual, 1e-30), max_beta)
            moved = float((new_mean - mean).norm()) / max(float(new_mean.norm()), 1e-30)
            converged = moved < TOLERANCE and abs(math.log(new_beta / beta)) < TOLERANCE
            mean, beta = new_mean, new_beta
            if converged:
                break
        cholesky = torch.linalg.cholesky(torch.diag(alpha[group_of]) + beta * gram)
        mean = beta * torch.cholesky_solve(projected[:, None], cholesky)[:, 0]
        return cls(mean, cholesky, center, alpha[group_of], intercept, n, beta)

    @property
    def dimension(self) -> int:
        """Length of a feature vector."""
        return int(self.mean.shape[0])

    def _intercept_std(self) -> float:
        return 1.0 / math.sqrt(self.beta * max(self.count, 1))

    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and epistemic standard deviation of each row of `features` (n, d)."""
        phi = features.double() - self.center
        whitened = torch.linalg.solve_triangular(self.cholesky, phi.T, upper=False)
        variance = (whitened * whitened).sum(dim=0) + self._intercept_std() ** 2
        return self.intercept + phi @ self.mean, variance.sqrt()

    def sample(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One Thompson draw of the rows' values.

        One intercept and one weight vector are drawn from the posterior and shared by all rows.
        """
        noise = torch.randn(self.dimension + 1, generator=generator, dtype=torch.float64)
        weights = self.mean + torch.linalg.solve_triangular(
            self.cholesky.T, noise[:-1, None], upper=True
        )[:, 0]
        intercept = self.intercept + float(noise[-1]) * self._intercept_std()
        return intercept + (features.double() - self.center) @ weights

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The posterior as named float32 tensors (for a checkpoint)."""
        return {
            f"{prefix}.mean": self.mean.float(),
            f"{prefix}.cholesky": self.cholesky.float(),
            f"{prefix}.center": self.center.float(),
            f"{prefix}.alphas": self.alphas.float(),
            f"{prefix}.scalars": torch.tensor(
                [self.intercept, self.count, self.beta], dtype=torch.float32
            ),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> BayesianLinear:
        """The posterior `tensors(prefix)` saved."""
        intercept, count, beta = (float(v) for v in tensors[f"{prefix}.scalars"])
        return cls(
            tensors[f"{prefix}.mean"].double(), tensors[f"{prefix}.cholesky"].double(),
            tensors[f"{prefix}.center"].double(), tensors[f"{prefix}.alphas"].double(),
            intercept, int(count), beta,
        )

    @staticmethod
    def shapes(prefix: str, dimension: int) -> dict[str, tuple[int, ...]]:
        """The shapes of `tensors(prefix)` for features of length `dimension`."""
        return {
            f"{prefix}.mean": (dimension,), f"{prefix}.cholesky": (dimension, dimension),
            f"{prefix}.center": (dimension,), f"{prefix}.alphas": (dimension,),
            f"{prefix}.scalars": (3,),
        }
