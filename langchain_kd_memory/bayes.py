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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MAX_ITERATIONS = 30
TOLERANCE = 1e-2
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
        cls, features: torch.Tensor, targets: torch.Tensor, groups: Sequence[int] | None = None,
        *, priors: BayesianLinear | None = None,
    ) -> BayesianLinear:
        """The posterior given `features` (n, d) and `targets` (n,).

        Args:
            features: The training rows' features.
            targets: Their targets.
            groups: Sizes of consecutive feature groups with a prior precision each (summing
                to d); one group if None.
            priors: A posterior whose prior precisions and noise precision are kept instead of
                chosen by the evidence (one factorisation instead of an iteration: a refit on
                more rows of the same data).
        """
        center = features.double().mean(dim=0)
        phi = features.double() - center
        intercept = float(targets.double().mean())
        y = targets.double() - intercept
        n, d = phi.shape
        sizes = list(groups) if groups is not None else [d]
        if sum(sizes) != d or min(sizes) < 1:
            raise ValueError(f"groups {sizes} do not split {d} features")
        gram, projected = phi.T @ phi, phi.T @ y
        if priors is None:
            alpha, beta = _evidence_maximum(phi, y, sizes, gram, projected)
            alphas = torch.repeat_interleave(alpha, torch.tensor(sizes))
        elif priors.dimension != d:
            raise ValueError(f"priors for {priors.dimension} features, not {d}")
        else:
            alphas, beta = priors.alphas, priors.beta
        cholesky = torch.linalg.cholesky(torch.diag(alphas) + beta * gram)
        mean = beta * torch.cholesky_solve(projected[:, None], cholesky)[:, 0]
        return cls(mean, cholesky, center, alphas, intercept, n, beta)

    @property
    def dimension(self) -> int:
        """Length of a feature vector."""
        return int(self.mean.shape[0])

    def _intercept_std(self) -> float:
        return 1.0 / math.sqrt(self.beta * max(self.count, 1))

    def mean_of(self, features: torch.Tensor) -> torch.Tensor:
        """Posterior mean of each row of `features` (n, d): `predict`'s first half, cheaper."""
        return self.intercept + (features.double() - self.center) @ self.mean

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


Step = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]]
"""(group precisions, noise precision) -> (well-determined parameters per group, squared
weight norm per group, residual sum of squares, fitted values): one evaluation of the
posterior that MacKay's update needs."""


def _evidence_maximum(phi: torch.Tensor, y: torch.Tensor, sizes: list[int], gram: torch.Tensor,
                      projected: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The per-group prior precisions and the noise precision at the evidence's maximum.

    `gram` and `projected` are ``Phi^T Phi`` and ``Phi^T y``, which the caller needs too.

    MacKay's fixed point, evaluated in the cheaper of two equal forms: over the d weights
    (``d^3`` a step) or, with fewer rows than features, over the n rows (``n^3``).
    """
    n, d = phi.shape
    yy = float(y @ y)
    variance = max(yy / max(n, 1), 1e-12)
    max_beta = NOISE_FLOOR / variance  # noise std >= 1% of the targets' (n <= d interpolates)
    blocks = torch.split(phi, sizes, dim=1)
    # Start from the simple side: noise explains the targets and each group's prior a tenth
    # of their variance. With fewer rows than features the evidence has a second optimum
    # that interpolates the data; iterating up from a weak prior can end there.
    energy = torch.stack([(block * block).sum() for block in blocks])
    alpha = (10 * len(sizes) * energy / (n * variance)).clamp(*PRECISION_BOUNDS)
    beta = min(1.0 / variance, max_beta)
    step = _dual_step(blocks, y) if n < d else _primal_step(phi, y, sizes, gram, projected)
    fitted = torch.zeros_like(y)
    for _ in range(MAX_ITERATIONS):
        gamma, weight, residual, new_fitted = step(alpha, beta)
        alpha = (gamma / weight.clamp(min=1e-30)).clamp(*PRECISION_BOUNDS)
        new_beta = min(max(n - float(gamma.sum()), 1e-6) / max(residual, 1e-30), max_beta)
        moved = float((new_fitted - fitted).norm()) / max(float(new_fitted.norm()), 1e-30)
        converged = moved < TOLERANCE and abs(math.log(new_beta / beta)) < TOLERANCE
        fitted, beta = new_fitted, new_beta
        if converged:
            break
    return alpha, beta


def _primal_step(phi: torch.Tensor, y: torch.Tensor, sizes: list[int], gram: torch.Tensor,
                 projected: torch.Tensor) -> Step:
    """A `Step` through the posterior precision ``A = diag(alpha) + beta Phi^T Phi``."""
    group_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    identity = torch.eye(phi.shape[1], dtype=torch.float64)

    def step(alpha: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, float,
                                                        torch.Tensor]:
        alphas = alpha[group_of]
        cholesky = torch.linalg.cholesky(torch.diag(alphas) + beta * gram)
        mean = beta * torch.cholesky_solve(projected[:, None], cholesky)[:, 0]
        inverse = torch.linalg.solve_triangular(cholesky, identity, upper=False)
        variances = (inverse * inverse).sum(dim=0)  # diag(A^-1)
        gamma = torch.zeros_like(alpha).index_add_(0, group_of, 1.0 - alphas * variances)
        weight = torch.zeros_like(alpha).index_add_(0, group_of, mean * mean)
        fitted = phi @ mean
        return gamma, weight, float(((y - fitted) ** 2).sum()), fitted

    return step


def _dual_step(blocks: Sequence[torch.Tensor], y: torch.Tensor) -> Step:
    """A `Step` through ``K = I / beta + sum_k Phi_k Phi_k^T / alpha_k`` (n x n).

    By Woodbury: ``mean_k = Phi_k^T K^-1 y / alpha_k``, fitted values ``y - K^-1 y / beta``.
    """
    grams = torch.stack([block @ block.T for block in blocks])
    identity = torch.eye(len(y), dtype=torch.float64)

    def step(alpha: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, float,
                                                        torch.Tensor]:
        cholesky = torch.linalg.cholesky(identity / beta + (grams / alpha[:, None, None]).sum(0))
        u = torch.cholesky_solve(y[:, None], cholesky)[:, 0]  # K^-1 y
        inverse = torch.cholesky_inverse(cholesky)
        gamma = (inverse[None] * grams).sum(dim=(1, 2)) / alpha
        weight = torch.einsum("i,kij,j->k", u, grams, u) / alpha**2
        return gamma, weight, float(u @ u) / beta**2, y - u / beta

    return step
