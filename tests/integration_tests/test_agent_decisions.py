"""The value model in an agent's decisions: rank candidate responses, credit multi-step runs,
escalate hard queries. Real MiniLM, real Chroma, real training; the "models" routed between
are plain runnables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from test_memory import ANSWERS, make_memory

from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.errors import (
    ConfigError,
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidRewardError,
    NotTrainedError,
)
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore

GOOD_REFUND = "Yes: open Orders, choose the book and press Return; the money is back in 3 days."
BAD_REFUND = "Refunds are impossible, sorry."


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, embeddings: LocalEmbeddings
            ) -> DistilledEpisodicMemory:
    memory = make_memory(tmp_path_factory.mktemp("decisions"), embeddings, min_episodes=10)
    rated = []
    for question, (good, bad) in ANSWERS.items():
        for prefix in ("", "Hi, ", "Quick question: "):
            rated.append({"query": prefix + question, "response": good, "reward": 1.0})
        rated.append({"query": question, "response": bad, "reward": 0.0})
    memory.add_episodes(rated)
    memory.consolidate()
    return memory


@pytest.mark.slow
def test_rank_responses_puts_the_helpful_answer_first_with_one_embedder_call(
    trained: DistilledEpisodicMemory, counting_embeddings: LocalEmbeddings
) -> None:
    original, trained.store.embedder.embeddings = trained.store.embeddings, counting_embeddings
    try:
        ranked = trained.rank_responses("I want my money back for a book",
                                        [BAD_REFUND, GOOD_REFUND, "Please contact the courier."])
    finally:
        trained.store.embedder.embeddings = original
    assert counting_embeddings.calls == 1 and counting_embeddings.texts == 4
    assert ranked[0].response == GOOD_REFUND and ranked[0].index == 1
    assert ranked[0].estimate.expected > 0.5 > ranked[-1].estimate.expected
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    assert all(r.score == r.estimate.expected for r in ranked)  # greedy: score = expected


@pytest.mark.slow
def test_exploration_is_reproducible_with_a_seeded_rng(trained: DistilledEpisodicMemory) -> None:
    candidates = [BAD_REFUND, GOOD_REFUND]

    def firsts(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [trained.rank_responses("Can I get a refund?", candidates, explore=1.0,
                                       exploration="thompson", rng=rng)[0].response
                for _ in range(30)]

    assert firsts(7) == firsts(7)
    ucb = trained.rank_responses("Can I get a refund?", candidates, explore=0.5,
                                 exploration="ucb")
    assert all(r.score == pytest.approx(r.estimate.expected + 0.5 * r.estimate.uncertainty)
               for r in ucb)


@pytest.mark.slow
def test_rank_responses_refuses_what_it_cannot_answer(
    trained: DistilledEpisodicMemory, tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    with pytest.raises(InvalidEpisodeError, match="candidate"):
        trained.rank_responses("Can I get a refund?", [GOOD_REFUND, "  "])
    for empty in ([], "just one string"):
        with pytest.raises(ValueError, match="non-empty list"):
            trained.rank_responses("Can I get a refund?", empty)  # type: ignore[arg-type]
    untrained = make_memory(tmp_path, embeddings, min_episodes=10)
    with pytest.raises(NotTrainedError, match="has 0 rated episodes"):
        untrained.rank_responses("Can I get a refund?", [GOOD_REFUND])
    blind = DistilledEpisodicMemory(
        store=EpisodeStore("blind", embeddings=embeddings, persist_directory=str(tmp_path / "b")),
        distillation=ModelDistillation(
            seed=0, embeddings=embeddings, privileged=False, min_episodes=4,
            teacher=TeacherConfig(hidden_sizes=(32,)), student=StudentConfig(hidden_sizes=(16,)),
        ),
    )
    blind.add_episodes([{"query": f"q{i}", "response": "a", "reward": float(i % 2)}
                        for i in range(8)])
    blind.consolidate()
    with pytest.raises(ConfigError, match="privileged=True"):
        blind.rank_responses("q1", ["a", "b"])


@pytest.mark.slow
def test_add_trajectory_credits_each_step_with_the_discounted_return(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = make_memory(tmp_path, embeddings)
    steps = [("kitchen, hungry", "open fridge"), ("fridge open", "take apple"),
             ("holding apple", "eat apple")]
    ids = memory.add_trajectory(steps, 1.0, gamma=0.5, trajectory_id="game-1")
    assert ids == ["game-1/0", "game-1/1", "game-1/2"]
    stored = memory.store.get(ids)
    assert [e.reward for e in stored] == [0.25, 0.5, 1.0]
    assert [e.metadata["trajectory_step"] for e in stored] == [0, 1, 2]
    assert {e.metadata["trajectory_id"] for e in stored} == {"game-1"}

    per_step = memory.add_trajectory(steps, [0.0, 1.0, 1.0], gamma=1.0)
    assert [e.reward for e in memory.store.get(per_step)] == [2.0, 2.0, 1.0]

    # Unrated now, rated later by the trajectory's id: every step gets its share.
    later = memory.add_trajectory(steps, gamma=0.9, trajectory_id="game-2")
    assert all(e.reward is None for e in memory.store.get(later))
    last = memory.record_feedback("game-2", 2.0)
    assert last.id == "game-2/2" and last.reward == 2.0
    assert [e.reward for e in memory.store.get(later)] == pytest.approx([1.62, 1.8, 2.0])
    with pytest.raises(EpisodeNotFoundError, match="no episode or trajectory with id 'game-3'"):
        memory.record_feedback("game-3", 1.0)


@pytest.mark.slow
def test_bootstrapped_credit_completes_the_return_with_the_students_values(
    trained: DistilledEpisodicMemory,
) -> None:
    steps = [(question, "") for question in list(ANSWERS)[:3]]
    values = [e.expected for e in trained.score_batch([q for q, _ in steps])]
    ids = trained.add_trajectory(steps, 1.0, gamma=0.5, bootstrap=1, trajectory_id="td")
    assert [e.reward for e in trained.store.get(ids)] == pytest.approx(
        [0.5 * values[1], 0.5 * values[2], 1.0], rel=1e-6)
    untrained = DistilledEpisodicMemory(store=EpisodeStore(
        "untrained", embeddings=trained.store.embeddings, client=trained.store.client))
    ids = untrained.add_trajectory(steps, 1.0, gamma=0.5, bootstrap=1)  # no model: Monte-Carlo
    assert [e.reward for e in untrained.store.get(ids)] == [0.25, 0.5, 1.0]
    with pytest.raises(InvalidArgumentError, match="bootstrap"):
        trained.add_trajectory(steps, 1.0, bootstrap=0)


def test_a_generated_trajectory_id_is_read_from_the_returned_step_ids(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = make_memory(tmp_path, embeddings)
    ids = memory.add_trajectory([("a/b state", "go/left"), ("next state", "stop")], gamma=0.5)
    trajectory_id = ids[0].rsplit("/", 1)[0]  # the recipe of add_trajectory's docstring
    assert ids == [f"{trajectory_id}/0", f"{trajectory_id}/1"]
    memory.record_feedback(trajectory_id, 1.0)
    assert [e.reward for e in memory.store.get(ids)] == [0.5, 1.0]


@pytest.mark.slow
def test_add_trajectory_checks_its_input_and_the_reward_range(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = DistilledEpisodicMemory(
        store=EpisodeStore("ranged", embeddings=embeddings, persist_directory=str(tmp_path),
                           reward_range=(0, 1)),
    )
    steps = [("a", "b"), ("c", "d")]
    for bad, match in [
        ((steps, [1.0]), "1 rewards for 2 steps"),
        (([], 1.0), "at least one step"),
        (([("only a query",)], 1.0), r"steps\[0\] must be"),
        ((steps, "high"), "must be a list"),
    ]:
        with pytest.raises(InvalidEpisodeError, match=match):
            memory.add_trajectory(*bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRewardError, match="outside the declared reward_range"):
        memory.add_trajectory(steps, [1.0, 1.0], gamma=1.0)  # the first return is 2
    with pytest.raises(InvalidEpisodeError, match="are set for trajectories"):
        memory.add_trajectory(steps, 1.0, metadata={"trajectory_step": 3})
    assert memory.store.count() == 0
    memory.add_trajectory(steps, trajectory_id="t")
    with pytest.raises(InvalidRewardError, match="outside"):
        memory.record_feedback("t", 5.0)
    assert [e.reward for e in memory.store.get(["t/0", "t/1"])] == [None, None]  # all or none


@pytest.mark.slow
def test_the_router_escalates_what_the_student_expects_to_go_badly(
    trained: DistilledEpisodicMemory,
) -> None:
    cheap = RunnableLambda(lambda x: "cheap")
    strong = RunnableLambda(lambda x: "strong")
    hard, easy = "I want my money back for a book", "Hi, how do I reset my password?"
    threshold = (trained.score(hard).expected + trained.score(easy).expected) / 2
    if trained.score(hard).expected > trained.score(easy).expected:
        hard, easy = easy, hard
    router = trained.as_router(default=cheap, strong=strong, threshold=threshold)
    chain = RunnableLambda(lambda q: {"question": q}) | router
    assert chain.invoke(hard) == "strong" and chain.invoke(easy) == "cheap"
    assert (router.status.strong, router.status.default) == (1, 1)

    budgeted = trained.as_router(default=cheap, strong=strong, budget=0.25)
    queries = [q for q in ANSWERS] * 2
    routed = budgeted.batch(queries)
    assert 0 < routed.count("strong") < len(queries)
    assert budgeted.status.threshold is not None
    with pytest.raises(ValueError, match="exactly one of threshold and budget"):
        trained.as_router(default=cheap, strong=strong)


@pytest.mark.slow
def test_the_router_scores_the_users_question_not_the_rendered_prompt(
    trained: DistilledEpisodicMemory,
) -> None:
    question = "I want my money back for a book"
    bare = trained.score(question).expected
    seen: list[float] = []
    router = trained.as_router(default=RunnableLambda(lambda x: "cheap"),
                               strong=RunnableLambda(lambda x: "strong"), threshold=bare + 1e-9)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a support agent of a book shop. Be brief."), ("human", "{question}")]
    )
    original = trained.score

    def spy(query: str, **kwargs: object) -> object:
        seen.append(query)
        return original(query, **kwargs)

    object.__setattr__(trained, "score", spy)
    try:
        assert (prompt | router).invoke({"question": question}) == "strong"
    finally:
        object.__delattr__(trained, "score")
    assert seen == [question]


@pytest.mark.slow
def test_a_budget_is_a_share_of_the_inputs_the_router_sees(
    trained: DistilledEpisodicMemory,
) -> None:
    # Inputs unlike the stored queries: all valued alike by the student, far from the stored
    # values that a threshold calibrated on stored queries would use.
    inputs = [f"{greeting} {question.lower()}" for question in ANSWERS
              for greeting in ("Hello there,", "Good morning!", "Dear shop,", "Hey,",
                               "Excuse me,", "Sorry to bother you,", "Quick one:", "Hi again,")]
    np.random.default_rng(0).shuffle(inputs)  # traffic mixes topics
    for budget in (0.1, 0.25, 0.5):
        router = trained.as_router(default=RunnableLambda(lambda x: "cheap"),
                                   strong=RunnableLambda(lambda x: "strong"), budget=budget)
        routed = [router.invoke(query) for query in inputs]
        share = routed.count("strong") / len(routed)
        assert abs(share - budget) <= 0.05, (budget, share)
        assert router.status.escalated_share == share


async def test_an_untrained_router_sends_everything_to_default(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = make_memory(tmp_path, embeddings)
    router = memory.as_router(default=RunnableLambda(lambda x: "cheap"),
                              strong=RunnableLambda(lambda x: "strong"), budget=0.5)
    assert await router.ainvoke("anything") == "cheap"
    assert router.status.untrained == 1
