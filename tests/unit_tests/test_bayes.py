"""The value head's Bayesian linear regression: evidence, uncertainty that shrinks, draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from langchain_kd_memory.bayes import BayesianLinear, _dual_step, _primal_step


def data(n: int, d: int = 8, noise: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    w = torch.linspace(-1, 1, d, dtype=torch.float64)
    return x, 2.0 + x @ w + noise * torch.randn(n, generator=generator, dtype=torch.float64)


def test_the_mean_is_the_ridge_solution_of_the_fitted_precisions() -> None:
    x, y = data(200)
    fit = BayesianLinear.fit(x, y)
    centred, target = x - x.mean(0), y - y.mean()
    ridge = torch.linalg.solve(torch.diag(fit.alphas) + fit.beta * centred.T @ centred,
                               fit.beta * centred.T @ target)
    torch.testing.assert_close(fit.mean, ridge)
    assert fit.intercept == pytest.approx(float(y.mean()))
    assert 1 / fit.beta == pytest.approx(0.3**2, rel=0.3)  # the noise it was given


@pytest.mark.slow
def test_one_group_matches_scikit_learns_evidence_maximisation() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = data(150, d=20, noise=1.0)
    fit = BayesianLinear.fit(x, y)
    reference = sklearn.BayesianRidge(max_iter=1000, tol=1e-10).fit(x.numpy(), y.numpy())
    assert float(fit.alphas[0]) == pytest.approx(reference.lambda_, rel=1e-2)
    assert fit.beta == pytest.approx(reference.alpha_, rel=1e-2)
    mean, _ = fit.predict(x[:5])
    np.testing.assert_allclose(mean.numpy(), reference.predict(x[:5].numpy()), rtol=1e-3)


def test_epistemic_uncertainty_shrinks_with_data_and_grows_away_from_it() -> None:
    probe = torch.zeros(1, 8, dtype=torch.float64)
    stds = [float(BayesianLinear.fit(*data(n)).predict(probe)[1][0]) for n in (20, 200, 2000)]
    assert stds[0] > 2 * stds[1] > 4 * stds[2]  # about 1 / sqrt(n)
    fit = BayesianLinear.fit(*data(200))
    near, far = fit.predict(torch.stack([probe[0], 10 * torch.ones(8, dtype=torch.float64)]))[1]
    assert far > 5 * near


def test_a_group_without_signal_is_shrunk_away() -> None:
    x, y = data(300)
    noise = torch.randn(300, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fit = BayesianLinear.fit(torch.cat([x, noise], dim=1), y, groups=[8, 40])
    assert float(fit.alphas[-1]) > 100 * float(fit.alphas[0])
    assert float(fit.mean[8:].abs().max()) < 0.05 < float(fit.mean[:8].abs().max())
    with pytest.raises(ValueError, match="do not split"):
        BayesianLinear.fit(x, y, groups=[3, 3])


@pytest.mark.slow
def test_thompson_draws_follow_the_posterior_and_a_seed_repeats_them() -> None:
    fit = BayesianLinear.fit(*data(50))
    rows = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    draws = torch.stack([fit.sample(rows, torch.Generator().manual_seed(s)) for s in range(3000)])
    mean, std = fit.predict(rows)
    torch.testing.assert_close(draws.mean(0), mean, atol=4 * float(std.max()) / 3000**0.5, rtol=0)
    torch.testing.assert_close(draws.std(0), std, rtol=0.1, atol=0)
    assert torch.equal(fit.sample(rows, torch.Generator().manual_seed(7)),
                       fit.sample(rows, torch.Generator().manual_seed(7)))


def test_saved_tensors_give_the_same_predictions() -> None:
    x, y = data(100)
    fit = BayesianLinear.fit(x, y, groups=[4, 4])
    tensors = fit.tensors("head")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == BayesianLinear.shapes("head", 8)
    assert all(v.dtype == torch.float32 for v in tensors.values())
    loaded = BayesianLinear.from_tensors(tensors, "head")
    for a, b in zip(fit.predict(x[:4]), loaded.predict(x[:4]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_constant_targets_predict_that_constant() -> None:
    x, _ = data(30)
    fit = BayesianLinear.fit(x, torch.full((30,), 0.7, dtype=torch.float64))
    mean, std = fit.predict(torch.randn(5, 8, dtype=torch.float64))
    assert torch.allclose(mean, torch.full((5,), 0.7, dtype=torch.float64))
    assert torch.isfinite(std).all()


def test_the_primal_and_dual_evidence_steps_agree() -> None:
    # Fewer rows than features runs the dual (n x n) form, more the primal (d x d): both must
    # give the same posterior quantities for the same precisions.
    rng = np.random.default_rng(3)
    phi = torch.tensor(rng.standard_normal((40, 24)))
    phi -= phi.mean(dim=0)
    y = torch.tensor(rng.standard_normal(40))
    sizes, alpha, beta = [8, 8, 8], torch.tensor([0.5, 4.0, 30.0], dtype=torch.float64), 2.0
    primal = _primal_step(phi, y, sizes, phi.T @ phi, phi.T @ y)(alpha, beta)
    dual = _dual_step(torch.split(phi, sizes, dim=1), y)(alpha, beta)
    for a, b in zip(primal, dual, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9)
