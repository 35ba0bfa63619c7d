import pytest
import torch

from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.errors import ConfigError, EmbeddingDimensionError
from langchain_kd_memory.models import StudentNetwork, TeacherNetwork, ValueHead, count_parameters


@pytest.mark.parametrize("dim", [8, 384])
@pytest.mark.parametrize("num_bins", [2, 64])
@pytest.mark.parametrize("hidden", [(16,), (1024, 512, 256, 128), (32, 64, 8)])
@pytest.mark.parametrize("privileged", [True, False])
def test_shapes_chain_and_a_batch_of_one_works(dim, num_bins, hidden, privileged):
    torch.manual_seed(0)
    teacher = TeacherNetwork(dim, num_bins, TeacherConfig(hidden, 0.2), privileged)
    student = StudentNetwork(dim, num_bins, StudentConfig(hidden[-2:], 0.1))
    for batch in (1, 5):
        query, response = torch.randn(batch, dim), torch.randn(batch, dim)
        for mode in (True, False):  # train and eval mode: LayerNorm works on one row
            teacher.train(mode)
            student.train(mode)
            assert teacher(query, response).shape == (batch, num_bins)
            assert student(query).shape == (batch, num_bins)


def test_networks_return_logits_not_probabilities():
    torch.manual_seed(0)
    logits = StudentNetwork(16, 8, StudentConfig((32,), 0.0))(torch.randn(4, 16) * 10)
    assert (logits < 0).any()
    assert not torch.allclose(logits.sum(dim=1), torch.ones(4))


def test_default_parameter_counts_and_compression():
    # Student at 384-dim input: 384*128+128 + 2*128 (LayerNorm) + 128*64+64; the value
    # head's posterior is buffers, not parameters.
    assert count_parameters(StudentNetwork(384)) == 57_792
    for dim in (384, 768):
        teacher = count_parameters(TeacherNetwork(dim, privileged=True))
        student = count_parameters(StudentNetwork(dim))
        assert student * 4 <= teacher
    # The privileged teacher reads [q, r, q*r, |q-r|]: four times the query-only one's input.
    extra = count_parameters(TeacherNetwork(384)) - count_parameters(
        TeacherNetwork(384, privileged=False)
    )
    assert extra == 3 * 384 * 256


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    teacher = TeacherNetwork(12, 6, TeacherConfig((16, 8), 0.0))
    teacher(torch.randn(3, 12), torch.randn(3, 12)).logsumexp(dim=1).sum().backward()
    for name, parameter in teacher.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    student = StudentNetwork(16, 8, StudentConfig((64, 64), 0.5))
    x = torch.randn(2, 16)
    student.eval()
    assert torch.equal(student(x), student(x))
    student.train()
    assert not torch.equal(student(x), student(x))


def test_wrong_inputs_are_refused():
    teacher = TeacherNetwork(8, 4, TeacherConfig((8,), 0.0))
    with pytest.raises(EmbeddingDimensionError, match=r"\(batch, 8\)"):
        teacher(torch.randn(2, 9), torch.randn(2, 8))
    with pytest.raises(EmbeddingDimensionError):
        teacher(torch.randn(2, 8), torch.randn(2, 7))
    with pytest.raises(EmbeddingDimensionError):
        StudentNetwork(8, 4)(torch.randn(8))
    with pytest.raises(ValueError, match="response"):
        teacher(torch.randn(2, 8))


@pytest.mark.parametrize(
    "kwargs",
    [{"hidden_sizes": ()}, {"hidden_sizes": (0,)}, {"hidden_sizes": 64}, {"hidden_sizes": (True,)},
     {"hidden_sizes": (32.0,)}, {"dropout": 1.0}, {"dropout": -0.1}, {"dropout": "0.1"}],
)
def test_invalid_network_configs(kwargs):
    with pytest.raises(ConfigError):
        TeacherConfig(**kwargs)
    with pytest.raises(ConfigError):
        StudentConfig(**kwargs)


def test_a_generator_gives_reproducible_weights_and_dropout_without_torchs_global_rng():
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(7)
        student = StudentNetwork(16, 8, StudentConfig((64,), 0.5), generator=generator)
        student.train()
        runs.append((student.state_dict(), student(torch.ones(4, 16))))
    assert torch.equal(torch.get_rng_state(), global_state)  # never drawn from
    for name, tensor in runs[0][0].items():
        assert torch.equal(tensor, runs[1][0][name]), name
    assert torch.equal(runs[0][1], runs[1][1])  # same dropout masks
    other = StudentNetwork(16, 8, StudentConfig((64,), 0.5), generator=torch.Generator())
    assert not torch.equal(other.mlp.head.weight, runs[0][0]["mlp.head.weight"])


def test_meta_networks_give_shapes_without_memory():
    teacher = TeacherNetwork(400_000, 64, TeacherConfig((1024,), 0.1), device="meta")
    assert teacher.mlp.body[0].weight.is_meta
    assert teacher.mlp.body[0].weight.shape == (1024, 1_600_000)  # [q, r, q*r, |q-r|]


def test_an_interactions_teacher_sees_how_the_response_relates_to_the_query():
    torch.manual_seed(0)
    teacher = TeacherNetwork(8, 4, TeacherConfig(hidden_sizes=(16,), interactions=True))
    first = teacher.mlp.net[0] if hasattr(teacher.mlp, "net") else next(
        m for m in teacher.modules() if isinstance(m, torch.nn.Linear)
    )
    assert first.in_features == 4 * 8  # [q, r, q * r, |q - r|]
    assert TeacherNetwork(8, 4, TeacherConfig(interactions=True), privileged=False).interactions \
        is False  # a query-only teacher has no response to relate
    q, r = torch.randn(3, 8), torch.randn(3, 8)
    assert teacher(q, r).shape == (3, 4)
    with pytest.raises(ConfigError, match="interactions"):
        TeacherConfig(interactions="yes")


def test_a_value_head_answers_from_its_current_posterior_after_a_fit_or_a_load():
    """The head keeps its float64 posterior between calls; a refit or a loaded state replaces it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=generator)
    first, second = ValueHead(6), ValueHead(6)
    first.fit(x, x[:, 0], [6])
    second.fit(x, -x[:, 1], [6])
    before = first(x)[0]
    assert torch.equal(first(x)[0], before)  # the same posterior, asked again
    first.load_state_dict(second.state_dict())
    assert torch.equal(first(x)[0], second(x)[0])
    first.fit(x, x[:, 0], [6])
    assert torch.allclose(first(x)[0], before)
