"""The loss of the value model, term by term (the training loop runs in test_distillation.py)."""

import numpy as np
import pytest
import torch

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.config import DistillationConfig
from langchain_kd_memory.training import (
    DistillationLoss,
    Targets,
    distillation_loss,
    expected_reward_loss,
    soft_cross_entropy,
)


def test_distillation_loss_is_zero_with_zero_gradient_when_student_equals_teacher():
    logits = torch.randn(5, 64, requires_grad=True)
    loss = distillation_loss(logits, logits.detach().clone(), temperature=4.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.all(torch.isfinite(logits.grad)) and logits.grad.abs().max() < 1e-6


def test_losses_are_finite_and_positive_for_extreme_logits():
    student = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    teacher = torch.tensor([[-1e4, 1e4, 0.0]])
    kd = distillation_loss(student, teacher, temperature=1.0)
    ce = soft_cross_entropy(student, torch.tensor([[0.0, 0.5, 0.5]]))
    (kd + ce).backward()
    assert torch.isfinite(kd) and kd > 0 and torch.isfinite(ce) and ce > 0
    assert torch.all(torch.isfinite(student.grad))


def test_temperature_scaling_keeps_the_loss_comparable():
    student, teacher = torch.randn(8, 16), torch.randn(8, 16)
    low = distillation_loss(student, teacher, 1.0)
    high = distillation_loss(student, teacher, 8.0)
    assert 0 < high < low * 2  # T^2 compensates for the softer distributions


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, Targets]:
    """Student and teacher logits for three rewards over 8 bins of [0, 1], and their targets."""
    generator = torch.Generator().manual_seed(0)
    binner = RewardBinner.fit([0.0, 1.0], num_bins=8)
    targets = Targets.of(binner, np.array([0.1, 0.5, 0.9]), torch.device("cpu"))
    return torch.randn(3, 8, generator=generator), torch.randn(3, 8, generator=generator), targets


def test_the_loss_returns_its_components_and_composes_them(batch):
    logits, teacher_logits, targets = batch
    loss = DistillationLoss(alpha=0.6, beta=0.4, temperature=2.0, regression_weight=0.5)
    label = soft_cross_entropy(logits, targets.soft)
    regression = expected_reward_loss(logits, targets.unit_rewards, targets.unit_centers)

    teacher = loss(logits, targets)  # no teacher logits: the teacher's own loss
    assert teacher.kd is None
    assert torch.equal(teacher.label, label) and torch.equal(teacher.regression, regression)
    torch.testing.assert_close(teacher.loss, label + 0.5 * regression)

    student = loss(logits, targets, teacher_logits)
    assert student.kd is not None
    torch.testing.assert_close(student.kd, distillation_loss(logits, teacher_logits, 2.0))
    torch.testing.assert_close(student.loss, 0.6 * student.kd + 0.4 * (label + 0.5 * regression))
    assert all(float(term) > 0 for term in student)


def test_at_weight_zero_the_regression_is_reported_but_not_minimised(batch):
    logits, teacher_logits, targets = batch
    logits.requires_grad_(True)
    terms = DistillationLoss(regression_weight=0.0)(logits, targets, teacher_logits)
    assert terms.regression > 0
    terms.loss.backward(retain_graph=True)
    minimised = logits.grad.clone()
    logits.grad = None
    assert terms.kd is not None
    (0.7 * terms.kd + 0.3 * terms.label).backward()
    torch.testing.assert_close(logits.grad, minimised)


def test_the_loss_of_a_config():
    config = DistillationConfig(alpha=0.5, beta=0.5, temperature=3.0, regression_weight=0.0)
    assert DistillationLoss.from_config(config) == DistillationLoss(0.5, 0.5, 3.0, 0.0)
    assert DistillationLoss.from_config(DistillationConfig()) == DistillationLoss()
