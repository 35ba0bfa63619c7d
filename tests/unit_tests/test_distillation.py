import json
import threading

import numpy as np
import pytest
import torch
from langchain_core.embeddings import DeterministicFakeEmbedding

from langchain_kd_memory.checkpoint import checkpoint_versions
from langchain_kd_memory.config import DistillationConfig, StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.episodes import Episode, RewardEstimate, TrainingArrays
from langchain_kd_memory.errors import (
    ConfigError,
    EmbedderMismatchError,
    EmbeddingDimensionError,
    EmbeddingError,
    InsufficientDataError,
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidRewardError,
    NotTrainedError,
)

DIM = 384
SMALL = {"teacher": TeacherConfig((128, 64), 0.1), "student": StudentConfig((32,), 0.1)}
"""Small networks keep the tests fast; the default shapes are tested in test_models.py."""


def clusters(n: int, seed: int = 0, dim: int = DIM, constant: float | None = None):
    """Queries around four centres; the reward is set by the centre (1, 4, 7, 10) plus noise."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(4, dim))
    labels = rng.integers(0, 4, n)
    queries = centres[labels] + rng.normal(size=(n, dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    responses = rng.normal(size=(n, dim))
    rewards = 1 + 3 * labels + rng.normal(0, 0.5, n) if constant is None else np.full(n, constant)
    return TrainingArrays(queries, responses, rewards)


def model(**options) -> ModelDistillation:
    return ModelDistillation(seed=options.pop("seed", 0), **{**SMALL, **options})


def expected(estimates: list[RewardEstimate]) -> np.ndarray:
    return np.array([e.expected for e in estimates])


@pytest.fixture(scope="module")
def trained() -> tuple[ModelDistillation, dict]:
    kd = model()
    return kd, kd.distill_from_memories(clusters(240), num_epochs=8)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.5, "beta": 0.3},
        {"alpha": 1.2, "beta": -0.2},
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"num_bins": 1},
        {"device": "tpu"},
        {"cross_fit_folds": 1},
        {"reward_low": 1.0},
        {"reward_low": 5.0, "reward_high": 1.0},
        {"validation_fraction": 0.5},
        {"no_such_option": 1},
    ],
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        ModelDistillation(**kwargs)


def test_numpy_numbers_are_taken_as_plain_ones_and_bools_are_not_numbers():
    config = DistillationConfig(max_epochs=np.int64(5), temperature=np.float32(2.0),
                                teacher=TeacherConfig((np.int64(8),), np.float64(0.1)))
    assert type(config.max_epochs) is int and type(config.temperature) is float
    saved = json.loads(json.dumps(config.to_dict()))  # what a checkpoint holds
    assert DistillationConfig.from_dict(saved) == config
    for bad in ({"max_epochs": True}, {"temperature": True}, {"seed": 1.5},
                {"batch_size": "8"}, {"reward_low": float("nan"), "reward_high": 1.0}):
        with pytest.raises(ConfigError):
            DistillationConfig(**bad)


def test_config_round_trips_through_a_dict():
    config = DistillationConfig(cross_fit_folds=3, teacher=TeacherConfig((8, 4), 0.0))
    again = DistillationConfig.from_dict(config.to_dict())
    assert again == config and again.teacher.hidden_sizes == (8, 4)
    assert ModelDistillation.from_config(config).config == config


def test_num_threads_is_gone_old_configs_still_load():
    with pytest.warns(DeprecationWarning, match="torch.set_num_threads"):
        kd = ModelDistillation(num_threads=1)
    assert not hasattr(kd.config, "num_threads")
    old = {**DistillationConfig().to_dict(), "num_threads": 1}  # what older checkpoints hold
    assert DistillationConfig.from_dict(old) == DistillationConfig()


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_beats_predicting_the_mean_on_held_out_data(trained):
    kd, results = trained
    held_out = clusters(200, seed=1)
    student = expected(kd.predict_embeddings(held_out.query_embeddings))
    student_mae = np.abs(student - held_out.rewards).mean()
    mean_mae = np.abs(clusters(240).rewards.mean() - held_out.rewards).mean()
    assert student_mae < 0.6 * mean_mae
    assert results["validation"]["student_mae"] < results["validation"]["mean_mae"]


@pytest.mark.slow
def test_results_describe_the_training(trained):
    kd, results = trained
    assert results["num_train"] + results["num_val"] == 240 and results["num_val"] == 36
    for role in ("teacher", "student"):
        history = results[role]
        assert 1 <= history["epochs_run"] <= 8
        assert len(history["train_losses"]) == len(history["val_losses"]) == history["epochs_run"]
        assert all(np.isfinite(history["train_losses"]))
        assert history["best_val_loss"] == min(history["val_losses"])
        assert history["val_losses"][history["best_epoch"] - 1] == history["best_val_loss"]
    params = results["teacher"]["params"], results["student"]["params"]
    assert results["compression_ratio"] == params[0] / params[1]
    assert results["seed"] == 0 and results["batch_size"] == 204 // 16  # automatic
    assert kd.is_trained and kd.metrics["num_train"] == results["num_train"]


@pytest.mark.slow
def test_results_log_each_loss_component_per_epoch_on_both_splits(trained):
    _, results = trained
    terms = {"teacher": {"loss", "label", "regression"},
             "student": {"loss", "kd", "label", "regression"}}
    for role, names in terms.items():
        history = results[role]
        components = history["components"]
        assert set(components) == {"train", "val"}
        assert components["train"]["loss"] == history["train_losses"]
        assert components["val"]["loss"] == history["val_losses"]
        for split in ("train", "val"):
            assert set(components[split]) == names
            for values in components[split].values():
                assert len(values) == history["epochs_run"]
                assert all(np.isfinite(values)) and min(values) >= 0
    # The loss is the composition the config describes (alpha 0.7, beta 0.3, weight 1).
    for split in ("train", "val"):
        teacher = {k: np.array(v) for k, v in results["teacher"]["components"][split].items()}
        student = {k: np.array(v) for k, v in results["student"]["components"][split].items()}
        np.testing.assert_allclose(teacher["loss"], teacher["label"] + teacher["regression"],
                                   rtol=1e-4)
        np.testing.assert_allclose(
            student["loss"],
            0.7 * student["kd"] + 0.3 * (student["label"] + student["regression"]), rtol=1e-4,
        )
    # What distillation does: the student ends closer to the teacher than it started.
    kd_term = results["student"]["components"]["val"]["kd"]
    assert kd_term[results["student"]["best_epoch"] - 1] < kd_term[0]


@pytest.mark.slow
def test_beating_the_mean_is_judged_per_network(trained):
    kd, results = trained
    validation = results["validation"]
    assert kd.teacher_beats_mean and validation["teacher_mae"] < validation["mean_mae"]
    assert kd.student_beats_mean and validation["student_mae"] < validation["mean_mae"]
    # Rewards the embeddings say nothing about: the value heads shrink to the training mean
    # instead of inventing structure, and each flag says whether its head beat the mean.
    data = clusters(120)
    noise = TrainingArrays(data.query_embeddings, data.response_embeddings,
                           np.random.default_rng(5).normal(5.0, 2.0, 120))
    blind = model()
    validation = blind.distill_from_memories(noise, num_epochs=1)["validation"]
    held_out = clusters(50, seed=2)
    for network in ("teacher", "student"):
        guesses = expected(blind.predict_embeddings(
            held_out.query_embeddings, held_out.response_embeddings, model=network))
        assert np.abs(guesses - noise.rewards.mean()).max() < 0.5  # the noise's std is 2
        beats = validation[f"{network}_mae"] < validation["mean_mae"]
        assert getattr(blind, f"{network}_beats_mean") is beats
    skewed = noise
    unvalidated = model()
    unvalidated.distill_from_memories(skewed, num_epochs=1, validation_fraction=0.0)
    assert unvalidated.teacher_beats_mean and unvalidated.student_beats_mean
    with pytest.raises(NotTrainedError):
        model().teacher_beats_mean  # noqa: B018


@pytest.mark.slow
def test_same_seed_same_model_other_seed_other_model():
    data = clusters(60)
    runs = [model(seed=s).distill_from_memories(data, num_epochs=2) for s in (7, 7, 8)]
    assert runs[0]["student"]["train_losses"] == runs[1]["student"]["train_losses"]
    assert runs[0]["student"]["train_losses"] != runs[2]["student"]["train_losses"]
    kds = [model(seed=s) for s in (7, 7)]
    for kd in kds:
        kd.distill_from_memories(data, num_epochs=2)
    np.testing.assert_array_equal(
        expected(kds[0].predict_embeddings(data.query_embeddings)),
        expected(kds[1].predict_embeddings(data.query_embeddings)),
    )


@pytest.mark.slow
def test_training_does_not_change_the_callers_random_state():
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    model().distill_from_memories(clusters(20), num_epochs=1)
    assert torch.equal(torch.rand(1), before)


def weights_of(kd: ModelDistillation) -> dict[str, bytes]:
    """Every tensor of both networks, as bytes: equal means bit-identical."""
    return {
        f"{role}.{name}": tensor.numpy().tobytes()
        for role, network in (("teacher", kd.teacher), ("student", kd.student))
        for name, tensor in network.state_dict().items()
    }


def in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target)
    thread.start()
    return thread


@pytest.mark.slow
def test_training_is_bit_identical_while_other_threads_train_and_use_torchs_rng():
    data, other_data = clusters(120, seed=1), clusters(120, seed=2)
    reference = model(seed=5)
    reference.distill_from_memories(data, num_epochs=3)

    torch.manual_seed(123)
    expected_draws = torch.rand(100_000)
    torch.manual_seed(123)
    draws = [torch.rand(1)]
    kd, other = model(seed=5), model(seed=9)
    trainings = [
        in_thread(lambda: kd.distill_from_memories(data, num_epochs=3)),
        in_thread(lambda: other.distill_from_memories(other_data, num_epochs=3)),
    ]
    while any(t.is_alive() for t in trainings) and len(draws) < len(expected_draws):
        draws.append(torch.rand(1))  # this thread's own use of torch's global RNG
    for thread in trainings:
        thread.join()
    assert weights_of(kd) == weights_of(reference)
    # Nor did the trainings touch this thread's random sequence.
    assert torch.equal(torch.cat(draws), expected_draws[: len(draws)])


@pytest.mark.slow
def test_training_leaves_torchs_thread_count_alone():
    """Neither the threads that exist nor those started during or after a training see
    another thread count (a background consolidation must not cap the agent's threads)."""
    before = torch.get_num_threads()
    seen: list[int] = []
    kd = model(seed=1)
    training = in_thread(lambda: kd.distill_from_memories(clusters(120), num_epochs=3))
    while training.is_alive():
        in_thread(lambda: seen.append(torch.get_num_threads())).join()
        seen.append(torch.get_num_threads())
    in_thread(lambda: seen.append(torch.get_num_threads())).join()
    assert kd.is_trained and len(seen) > 2
    assert set(seen) == {before}


@pytest.mark.slow
@pytest.mark.parametrize("n, batch_size", [(11, 1), (76, 64)])  # every batch / the last one of 1
def test_batches_of_one_train_and_predict(n, batch_size):
    kd = model(validation_fraction=0.15, min_episodes=2)
    results = kd.distill_from_memories(clusters(n), num_epochs=2, batch_size=batch_size)
    assert (results["num_train"] - 1) % batch_size == 0
    assert results["batch_size"] == batch_size
    one = kd.predict_embeddings(clusters(1).query_embeddings[0])  # a (dim,) vector
    assert len(one) == 1 and np.isfinite(one[0].expected)


@pytest.mark.slow
def test_all_equal_rewards_predict_that_reward():
    kd = model()
    kd.distill_from_memories(clusters(40, constant=5.0), num_epochs=3)
    for estimate in kd.predict_embeddings(clusters(5, seed=2).query_embeddings):
        assert estimate.expected == pytest.approx(5.0, abs=0.05)
        assert np.isfinite(estimate.std) and estimate.distribution.sum() == pytest.approx(1.0)


@pytest.mark.slow
def test_declared_reward_range_defines_the_bins():
    kd = model(reward_low=-5.0, reward_high=15.0, num_bins=20)
    kd.distill_from_memories(clusters(40), num_epochs=1)
    np.testing.assert_allclose(kd.binner.centers, np.arange(-5, 15) + 0.5)
    with pytest.raises(InvalidRewardError, match="declared range"):
        model(reward_low=2.0, reward_high=3.0).distill_from_memories(clusters(40))


@pytest.mark.slow
def test_without_validation_every_row_trains():
    results = model().distill_from_memories(clusters(30), num_epochs=2, validation_fraction=0.0)
    assert results["num_val"] == 0 and results["num_train"] == 30
    assert results["validation"]["student_mae"] is None
    components = results["student"]["components"]
    assert components["val"] == components["train"]  # early stopping read the training loss


@pytest.mark.slow
def test_cross_fitting_and_regression_term_train():
    kd = model(cross_fit_folds=3, regression_weight=1.0)
    results = kd.distill_from_memories(clusters(120), num_epochs=6)
    assert results["cross_fit_folds"] == 3
    assert results["validation"]["student_mae"] < results["validation"]["mean_mae"]


@pytest.mark.slow
def test_warm_start_continues_from_the_previous_weights():
    kd = model(warm_start=True, reward_low=-5.0, reward_high=15.0)
    first = kd.distill_from_memories(clusters(120), num_epochs=6)
    second = kd.distill_from_memories(clusters(120, seed=5), num_epochs=1)
    assert not first["warm_started"] and second["warm_started"]
    assert second["student"]["train_losses"][0] < first["student"]["train_losses"][0]


@pytest.mark.slow
def test_warm_start_needs_the_same_bins():
    kd = model(warm_start=True)  # the range comes from the data
    kd.distill_from_memories(clusters(30, constant=5.0), num_epochs=1)
    assert kd.distill_from_memories(clusters(30, constant=5.2), num_epochs=1)["warm_started"]
    assert not kd.distill_from_memories(clusters(30, constant=9.0), num_epochs=1)["warm_started"]
    kd.config = DistillationConfig(
        warm_start=True, seed=0, teacher=SMALL["teacher"], student=StudentConfig((8,))
    )
    assert not kd.distill_from_memories(clusters(30, constant=9.0), num_epochs=1)["warm_started"]


@pytest.mark.slow
def test_query_only_teacher_ignores_the_response():
    kd = model(privileged=False)
    kd.distill_from_memories(clusters(40), num_epochs=2)
    data = clusters(3, seed=4)
    with_response = kd.predict_embeddings(data.query_embeddings, data.response_embeddings,
                                          model="teacher")
    without = kd.predict_embeddings(data.query_embeddings, model="teacher")
    np.testing.assert_allclose(expected(with_response), expected(without))


# ----------------------------------------------------------------------------- bad input


def test_too_few_rated_episodes():
    episodes = [Episode(query=f"q{i}", reward=1.0) for i in range(7)] + [Episode(query="x")] * 5
    with pytest.raises(InsufficientDataError, match="7 rated episodes .5 unrated"):
        model().distill_from_memories(episodes)
    with pytest.raises(InsufficientDataError):
        model().distill_from_memories(clusters(7))


def test_one_minimum_one_message_and_a_check_before_reading_anything():
    kd = model()
    assert kd.config.min_episodes == 20  # a 15% validation split of 20 holds 3 episodes
    kd.check_trainable(20)
    with pytest.raises(InsufficientDataError) as checked:
        kd.check_trainable(19, 4)
    with pytest.raises(InsufficientDataError) as trained:
        kd.distill_from_memories([Episode(f"q{i}", reward=float(i)) for i in range(19)]
                                 + [Episode("unrated")] * 4)
    assert str(checked.value) == str(trained.value)
    assert "19 rated episodes (4 unrated)" in str(checked.value)
    assert "at least 20 (min_episodes)" in str(checked.value)
    with pytest.raises(InsufficientDataError, match=r"namespace 'user-1' has 3 rated episodes"):
        kd.check_trainable(3, namespace="user-1")
    model(min_episodes=3).check_trainable(3)
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(InvalidArgumentError):
            kd.check_trainable(bad)


@pytest.mark.parametrize(
    "memories, error",
    [
        ("not a list", InvalidArgumentError),
        ([{"response": "no query", "reward": 1.0}] * 8, InvalidEpisodeError),
        ([{"query": "q", "reward": float("nan")}] * 8, InvalidEpisodeError),
        ([42] * 8, InvalidEpisodeError),
    ],
)
def test_invalid_memories(memories, error):
    with pytest.raises(error):
        model().distill_from_memories(memories)


@pytest.mark.parametrize(
    "kwargs", [{"num_epochs": 0}, {"batch_size": 0}, {"batch_size": 2.5},
               {"validation_fraction": 0.7}]
)
def test_invalid_training_arguments(kwargs):
    with pytest.raises(InvalidArgumentError):
        model().distill_from_memories(clusters(20), **kwargs)


def test_arrays_of_another_dimension_than_the_embedder_are_refused():
    with pytest.raises(EmbeddingDimensionError, match="embeddings="):
        model().distill_from_memories(clusters(20, dim=16))
    kd = model(embeddings=DeterministicFakeEmbedding(size=16))
    kd.distill_from_memories(clusters(20, dim=16), num_epochs=1)
    assert kd.embedder_identity.dimension == 16


def test_untrained_model_says_how_to_train():
    kd = model()
    assert not kd.is_trained
    for call in (
        lambda: kd.predict_embeddings(np.zeros(DIM)),
        lambda: kd.score_batch(["hello"]),
        lambda: kd.save_models("unused"),
        lambda: kd.metrics,
    ):
        with pytest.raises(NotTrainedError, match="distill_from_memories"):
            call()


@pytest.mark.slow
def test_prediction_inputs_are_checked(trained):
    kd, _ = trained
    with pytest.raises(EmbeddingDimensionError, match=r"shape \(n, 384\).*dimension 385"):
        kd.predict_embeddings(np.zeros((2, DIM + 1)))
    with pytest.raises(EmbeddingError, match="NaN"):  # the Embedder's rule, as in the store
        kd.predict_embeddings(np.full(DIM, np.nan))
    with pytest.raises(EmbeddingError, match="not a numeric"):
        kd.predict_embeddings([[0.0] * DIM, [0.0]])
    with pytest.raises(InvalidArgumentError):
        kd.predict_embeddings(np.zeros(DIM), model="oracle")
    with pytest.raises(InvalidArgumentError):
        kd.predict_embeddings(np.zeros((2, DIM)), np.zeros((3, DIM)), model="teacher")


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.slow
def test_save_and_load_give_identical_predictions(trained, tmp_path):
    kd, _ = trained
    paths = kd.save_models(str(tmp_path / "kd"))
    assert set(paths) == {"teacher", "student", "config", "version"}
    assert paths["version"] == 1 == checkpoint_versions(tmp_path / "kd")[-1]
    assert kd.save_models(str(tmp_path / "kd"))["version"] == 2
    fresh = ModelDistillation()
    assert fresh.load_models(str(tmp_path / "kd"))
    assert fresh.config.network_settings() == kd.config.network_settings()
    assert fresh.binner == kd.binner
    data = clusters(20, seed=9)
    for which in ("student", "teacher"):
        before = kd.predict_embeddings(data.query_embeddings, data.response_embeddings, model=which)
        after = fresh.predict_embeddings(
            data.query_embeddings, data.response_embeddings, model=which
        )
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a.distribution, b.distribution)
    assert fresh.metrics["num_train"] == kd.metrics["num_train"]
    assert fresh.metrics["student"]["components"] == kd.metrics["student"]["components"]


@pytest.fixture(scope="module")
def checkpoint_32_bins(tmp_path_factory) -> str:
    """A checkpoint of small networks with 32 bins, a declared range and a query-only teacher."""
    prefix = str(tmp_path_factory.mktemp("ckpt") / "kd")
    kd = model(num_bins=32, reward_low=0.0, reward_high=12.0, privileged=False)
    kd.distill_from_memories(clusters(60), num_epochs=2)
    kd.save_models(prefix)
    return prefix


@pytest.mark.slow
def test_loading_restores_the_networks_and_keeps_the_callers_training_settings(
    checkpoint_32_bins,
):
    training = {"temperature": 2.0, "alpha": 0.5, "beta": 0.5, "learning_rate": 0.01,
                "max_epochs": 3, "patience": 2, "seed": 11, "min_episodes": 30,
                "regression_weight": 0.0, "cross_fit_folds": 2}
    kd = ModelDistillation(**training)
    assert kd.load_models(checkpoint_32_bins)
    config = kd.config
    assert {name: getattr(config, name) for name in training} == training
    # What defines the saved networks comes from the checkpoint.
    assert (config.num_bins, config.privileged, config.reward_low, config.reward_high) == (
        32, False, 0.0, 12.0)
    assert config.teacher.hidden_sizes == SMALL["teacher"].hidden_sizes
    assert config.student.hidden_sizes == SMALL["student"].hidden_sizes
    assert kd.binner.num_bins == 32
    # The next training uses the caller's settings, on the checkpoint's network shapes.
    results = kd.distill_from_memories(clusters(60))
    assert results["teacher"]["epochs_run"] <= 3 and results["cross_fit_folds"] == 2
    assert kd.config == config


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, named",
    [
        ({"num_bins": 16}, "num_bins=16"),
        ({"privileged": True, "teacher": TeacherConfig((8,), 0.1)}, "teacher.hidden_sizes"),
        ({"student": StudentConfig((64, 32), 0.1)}, "student.hidden_sizes"),
        ({"reward_low": 0.0, "reward_high": 1.0}, "reward range"),
    ],
)
def test_a_network_setting_that_contradicts_the_checkpoint_is_a_config_error(
    checkpoint_32_bins, setting, named
):
    kd = ModelDistillation(**setting)
    before = kd.config
    with pytest.raises(ConfigError, match=f"{named}.*checkpoint.*another prefix") as info:
        kd.load_models(checkpoint_32_bins)
    assert checkpoint_32_bins in str(info.value)
    assert not kd.is_trained and kd.config == before


@pytest.mark.slow
def test_a_declared_range_is_kept_over_a_checkpoint_without_one(trained, tmp_path):
    trained[0].save_models(str(tmp_path / "kd"))  # bins from the data, no declared range
    kd = ModelDistillation(reward_low=-5.0, reward_high=20.0)
    assert kd.load_models(str(tmp_path / "kd"))
    assert (kd.config.reward_low, kd.config.reward_high) == (-5.0, 20.0)
    assert kd.binner == trained[0].binner  # the loaded networks keep their bins


def test_load_missing_checkpoint_returns_false(tmp_path):
    kd = model()
    assert kd.load_models(str(tmp_path / "nothing")) is False
    assert not kd.is_trained


@pytest.mark.slow
def test_checkpoint_from_another_embedder_is_refused(trained, tmp_path):
    kd, _ = trained
    kd.save_models(str(tmp_path / "kd"))
    other = ModelDistillation(embeddings=DeterministicFakeEmbedding(size=DIM))
    with pytest.raises(EmbedderMismatchError, match="MiniLM.*DeterministicFakeEmbedding"):
        other.load_models(str(tmp_path / "kd"))
    assert not other.is_trained


# ----------------------------------------------------------------------------- text input


@pytest.mark.slow
def test_seed_style_dicts_with_the_real_embedder(embeddings):
    good = ["How do I reset my password?", "Reset my account password please",
            "I forgot my password, how to change it", "password reset link not working"]
    bad = ["Tell me a joke about quantum physics", "Write a poem about the sea",
           "What is the meaning of life?", "Compose a sonnet about autumn"]
    memories = [{"query": q, "response": "Done.", "reward": 9.0, "extra": 1} for q in good]
    memories += [{"query": q, "response": "", "reward": 2.0} for q in bad]
    memories += [{"query": "unrated", "response": "x"}]
    kd = ModelDistillation(seed=0, embeddings=embeddings, **SMALL)
    results = kd.distill_from_memories(memories * 3, num_epochs=15, validation_fraction=0.0)
    assert results["num_skipped"] == 3 and results["num_train"] == 24

    estimate = kd.get_student_prediction("How can I reset my password?")
    assert isinstance(estimate, RewardEstimate) and estimate.distribution.shape == (64,)
    scores = kd.score_batch(["My password needs a reset", "Write a poem about the moon"])
    assert scores[0].expected > scores[1].expected
    assert kd.score_batch([]) == []

    comparison = kd.compare_teacher_student("Reset my password", "Done.")
    assert comparison["compression_ratio"] == pytest.approx(
        comparison["teacher_params"] / comparison["student_params"]
    )
    similarity = comparison["similarity"]
    assert isinstance(similarity["prediction_match"], bool)
    assert similarity["kl_divergence"] >= 0 and similarity["expected_difference"] >= 0
    teacher = kd.get_teacher_prediction("Reset my password", "Done.")
    assert teacher.expected == comparison["teacher"].expected
    with pytest.raises(InvalidEpisodeError):
        kd.get_student_prediction("   ")


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_expected_rewards_are_the_estimates_expected_values(trained, which):
    kd, _ = trained
    data = clusters(30, seed=5)
    cheap = kd.expected_rewards(data.query_embeddings, data.response_embeddings, model=which)
    full = expected(kd.predict_embeddings(data.query_embeddings, data.response_embeddings,
                                          model=which))
    np.testing.assert_array_equal(cheap, full)
    assert len(np.unique(cheap)) > 1  # the model tells the clusters apart
