"""The agent benchmark's reference learners and its router figures (benchmarks/)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_agent import apgr, cpt, gap_recovered  # noqa: E402
from references import KnnValues, RidgeValues, interaction_features  # noqa: E402

from langchain_kd_memory.episodes import TrainingArrays  # noqa: E402


def unit_rows(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_ridge_learns_which_response_fits_which_query() -> None:
    # The reward is the agreement of query and response (q . r): only the q*r block carries it,
    # so ranking a query's candidates needs the interaction features.
    rng = np.random.default_rng(0)
    q, r = unit_rows(rng, 2000), unit_rows(rng, 2000)
    arrays = TrainingArrays(q, r, (q * r).sum(axis=1).astype(np.float32))
    ridge = RidgeValues(lam=1e-3)
    ridge.fit(arrays)
    query, candidates = unit_rows(rng, 1)[0], unit_rows(rng, 6)
    truth = candidates @ query
    np.testing.assert_allclose(ridge.values(query, candidates), truth, atol=0.02)
    assert interaction_features(query[None], candidates).shape == (6, 32)


def test_knn_averages_the_rewards_of_the_nearest_episodes() -> None:
    rng = np.random.default_rng(1)
    q, r = unit_rows(rng, 50), unit_rows(rng, 50)
    rewards = rng.random(50).astype(np.float32)
    knn = KnnValues(k=1)
    knn.fit(TrainingArrays(q, r, rewards))
    np.testing.assert_allclose(knn.values(q[3], r[[3, 7]])[:1], rewards[3])  # itself
    three = KnnValues(k=3)
    three.fit(TrainingArrays(q, r, rewards))
    value = three.values(q[3], r[3:4])[0]
    assert value != pytest.approx(rewards[3]) and min(rewards) <= value <= max(rewards)


@pytest.mark.parametrize("bad", [0, -1.0])
def test_reference_learners_refuse_bad_settings(bad: float) -> None:
    with pytest.raises(ValueError):
        RidgeValues(lam=bad)
    with pytest.raises(ValueError):
        KnnValues(k=int(bad))
    with pytest.raises(RuntimeError, match="fit first"):
        RidgeValues().values(np.ones(4), np.ones((2, 4)))


def test_apgr_and_cpt_follow_routellm() -> None:
    # The agent alone scores 0.2, the expert 1.0; handing off 20% of the steps recovers half
    # of the gap (0.6), 50% all of it.
    rows = [{"share": 0.2, "router": 0.6}, {"share": 0.5, "router": 1.0}]
    shares, pgr = gap_recovered(rows, alone=0.2, expert=1.0, key="router")
    np.testing.assert_allclose(shares, [0.0, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(pgr, [0.0, 0.5, 1.0, 1.0])
    assert apgr(shares, pgr) == pytest.approx(0.2 * 0.25 + 0.3 * 0.75 + 0.5 * 1.0)
    assert cpt(shares, pgr, 0.5) == pytest.approx(0.2)
    assert cpt(shares, pgr, 0.8) == pytest.approx(0.2 + 0.3 * 0.6)
    # Random hand-offs on the diagonal: APGR 0.5, CPT(50%) = 0.5.
    diagonal = [{"share": s, "random": 0.2 + 0.8 * s} for s in (0.1, 0.3, 0.5)]
    shares, pgr = gap_recovered(diagonal, alone=0.2, expert=1.0, key="random")
    assert apgr(shares, pgr) == pytest.approx(0.5)
    assert cpt(shares, pgr, 0.5) == pytest.approx(0.5)
