"""Training of the value model: the teacher, then the student distilled from it.

The model file is `models.py` (the networks), the facade `distillation.py` (prediction and
persistence); this module is the training loop, nanoGPT's `train.py` as a function, `train`.

Two phases run on stored embeddings (nothing is embedded here), each in two steps: the network's
distribution head by mini-batch AdamW, then its value head in closed form.

1. The **teacher** sees the query and the response (`privileged`). Its distribution head
   learns the reward distribution over ordinal bins: cross-entropy against Gaussian soft targets
   (`label`), plus `regression_weight` times the squared error of its expected reward
   (`regression`). Its value head is a Bayesian linear regression of the reward on its input
   features (`bayes.BayesianLinear`): Q(query, response) and how sure it is.
2. The **student** sees the query alone. Its distribution head minimises `DistillationLoss`:

       alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + beta * (label + w * regression)

   where s and t are the student's and the teacher's logits (`kd` is the KL term); its value
   head regresses ``alpha * teacher value + beta * reward``: V(query), distilled from the
   teacher's less noisy Q. With `cross_fit_folds=K`, the teacher logits and values for each
   training episode come from a teacher that did not see it (K extra teachers).

Both distribution heads hold out a validation split, stop early when its loss stops improving,
and restore the best weights; the value heads are fitted on the training split, measured on the
validation split, then refitted on every row. Every epoch records the loss and each of its
components on both splits (`History`), so a benchmark can show what distillation contributes.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.config import DistillationConfig
from langchain_kd_memory.episodes import TrainingArrays
from langchain_kd_memory.errors import ConfigError
from langchain_kd_memory.models import (
    INFERENCE_CHUNK,
    StudentNetwork,
    TeacherNetwork,
    count_parameters,
    predict_logits,
    set_dropout_generator,
)

logger = logging.getLogger(__name__)

MIN_AUTO_BATCH, MAX_AUTO_BATCH = 8, 256
"""Bounds of the automatic batch size (n_train / 16)."""


# ----------------------------------------------------------------------------- the loss


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy between logits (n, bins) and target distributions (n, bins)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2, averaged over the batch (Hinton et al.).

    Computed from log-probabilities on both sides, so it is finite and has zero gradient when
    the student equals the teacher.
    """
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)


def expected_reward_loss(
    logits: torch.Tensor, unit_rewards: torch.Tensor, unit_centers: torch.Tensor
) -> torch.Tensor:
    """Squared error of the expected reward, with rewards and centres scaled to [0, 1]."""
    return ((F.softmax(logits, dim=1) @ unit_centers - unit_rewards) ** 2).mean()


@dataclass(frozen=True)
class Targets:
    """What the labels say about some episodes, as tensors on the training device.

    Attributes:
        soft: Gaussian soft targets over the bins, (n, num_bins).
        unit_rewards: The rewards scaled to [0, 1], (n,).
        unit_centers: The bin centres scaled to [0, 1], (num_bins,).
    """

    soft: torch.Tensor
    unit_rewards: torch.Tensor
    unit_centers: torch.Tensor

    @classmethod
    def of(cls, binner: RewardBinner, rewards: np.ndarray, device: torch.device) -> Targets:
        """The targets of `rewards` under `binner`."""
        return cls(
            torch.from_numpy(binner.soft_targets(rewards)).to(device),
            torch.from_numpy(binner.to_unit(rewards)).to(device),
            torch.from_numpy(binner.to_unit(binner.centers)).to(device),
        )

    def __getitem__(self, rows: torch.Tensor) -> Targets:
        return Targets(self.soft[rows], self.unit_rewards[rows], self.unit_centers)


class LossTerms(NamedTuple):
    """The loss of a batch and its components, each a mean over the batch's rows.

    Attributes:
        loss: What is minimised.
        kd: `distillation_loss` to the teacher (already T^2-scaled); None for the teacher.
        label: `soft_cross_entropy` to the soft targets.
        regression: `expected_reward_loss` (computed, and reported, even at weight 0).
    """

    loss: torch.Tensor
    kd: torch.Tensor | None
    label: torch.Tensor
    regression: torch.Tensor


@dataclass(frozen=True)
class DistillationLoss:
    """The loss of both phases, and nothing else (timm's distillation task, without networks).

    The teacher minimises `label + regression_weight * regression`; the student, given the
    teacher's logits, `alpha * kd + beta * (label + regression_weight * regression)`.

    Example:
        .. code-block:: python

            loss = DistillationLoss.from_config(DistillationConfig())
            terms = loss(student(query), targets[rows], teacher_logits[rows])
            terms.loss.backward()
            float(terms.kd), float(terms.label), float(terms.regression)
    """

    alpha: float = 0.7
    beta: float = 0.3
    temperature: float = 4.0
    regression_weight: float = 1.0

    @classmethod
    def from_config(cls, config: DistillationConfig) -> DistillationLoss:
        """The loss a `DistillationConfig` (already validated) describes."""
        return cls(config.alpha, config.beta, config.temperature, config.regression_weight)

    def __call__(
        self, logits: torch.Tensor, targets: Targets, teacher_logits: torch.Tensor | None = None
    ) -> LossTerms:
        """The terms of a batch: the teacher's without `teacher_logits`, else the student's."""
        label = soft_cross_entropy(logits, targets.soft)
        regression = expected_reward_loss(logits, targets.unit_rewards, targets.unit_centers)
        supervised = (
            label + self.regression_weight * regression if self.regression_weight > 0 else label
        )
        if teacher_logits is None:
            return LossTerms(supervised, None, label, regression)
        kd = distillation_loss(logits, teacher_logits, self.temperature)
        return LossTerms(self.alpha * kd + self.beta * supervised, kd, label, regression)


# ----------------------------------------------------------------------------- the loop


@dataclass
class History:
    """One network's training: per epoch, the mean of each loss term on each split.

    Attributes:
        train: Term name -> its mean over the training split, one value per epoch. The terms
            are those of `LossTerms`: "loss" (what was minimised), "kd" (the student only),
            "label" and "regression".
        val: The same on the validation split (the training split's values when there is
            none: early stopping then reads the training loss).
        best_epoch: The epoch whose weights were kept (1-based).
        best_val_loss: Its validation loss.
        seconds: Wall time of the training.
    """

    train: dict[str, list[float]] = field(default_factory=dict)
    val: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    seconds: float = 0.0

    def record(self, train: dict[str, float], val: dict[str, float]) -> None:
        """Append one epoch's means."""
        for split, means in ((self.train, train), (self.val, val)):
            for name, value in means.items():
                split.setdefault(name, []).append(value)

    def as_dict(self, params: int) -> dict[str, Any]:
        """The JSON-serialisable form that training results and checkpoints hold."""
        return {
            "train_losses": list(self.train["loss"]),
            "val_losses": list(self.val["loss"]),
            "epochs_run": len(self.train["loss"]),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "seconds": self.seconds,
            "params": params,
            "components": {
                split: {name: list(values) for name, values in terms.items()}
                for split, terms in (("train", self.train), ("val", self.val))
            },
        }


LossFn = Callable[[torch.Tensor, torch.Tensor], LossTerms]
"""(logits, row indices) -> the loss terms of those rows."""


def _present(terms: LossTerms) -> dict[str, torch.Tensor]:
    """The terms a network has (the teacher has no `kd`), detached from the graph."""
    return {name: value.detach() for name, value in terms._asdict().items() if value is not None}


def _evaluate(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_fn: LossFn, rows: torch.Tensor
) -> dict[str, float]:
    model.eval()
    totals: dict[str, float] = {}
    with torch.no_grad():
        for chunk in rows.split(INFERENCE_CHUNK):
            terms = _present(loss_fn(model(*(x[chunk] for x in inputs)), chunk))
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(chunk)
    return {name: total / len(rows) for name, total in totals.items()}


def _fit(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    train_rows: torch.Tensor,
    val_rows: torch.Tensor,
    *,
    config: DistillationConfig,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    desc: str,
    quiet: bool,
) -> History:
    """Mini-batch AdamW with early stopping on the validation loss; restores the best weights.

    `model(*inputs)` gives logits for rows of the (device-resident) input tensors and
    `loss_fn(logits, rows)` the loss terms of those rows. Without validation rows, the training
    loss of each epoch decides which weights are kept.
    """
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
        foreach=True,
    )
    history = History()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale = 0
    with tqdm(total=epochs, desc=desc, disable=quiet, leave=False) as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            shuffle = torch.randperm(len(train_rows), generator=generator)
            order = train_rows[shuffle.to(train_rows.device)]
            totals: dict[str, torch.Tensor] = {}  # summed on the device: no sync per batch
            for batch in order.split(batch_size):
                terms = loss_fn(model(*(x[batch] for x in inputs)), batch)
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                optimizer.step()
                for name, value in _present(terms).items():
                    totals[name] = totals.get(name, 0) + value * len(batch)
            train = {name: float(total) / len(train_rows) for name, total in totals.items()}
            val = _evaluate(model, inputs, loss_fn, val_rows) if len(val_rows) else train
            history.record(train, val)
            bar.update(1)
            bar.set_postfix(train=f"{train['loss']:.4f}", val=f"{val['loss']:.4f}")
            if val["loss"] < history.best_val_loss:
                history.best_val_loss, history.best_epoch, stale = val["loss"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


# ----------------------------------------------------------------------------- the phases


@dataclass(frozen=True)
class TrainedNetworks:
    """What a training produces: both networks (CPU, eval mode) and what they mean.

    Attributes:
        teacher: The teacher.
        student: The student.
        binner: The reward bins their logits are over.
        embedding_dim: The dimension of the embeddings they read.
        config: The settings they were trained with (a copy).
    """

    teacher: TeacherNetwork
    student: StudentNetwork
    binner: RewardBinner
    embedding_dim: int
    config: DistillationConfig


def resolve_device(device: str) -> torch.device:
    """The torch device for a config's `device` ("auto": CUDA when available, else CPU).

    Raises:
        ConfigError: "cuda" without CUDA.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available; use 'auto' or 'cpu'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted training and validation row indices; at least 1 validation row if `fraction`."""
    order = rng.permutation(n)
    n_val = 0 if fraction == 0 else min(max(1, round(n * fraction)), n - 2)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit_binner(
    rewards: np.ndarray, config: DistillationConfig, previous: TrainedNetworks | None
) -> RewardBinner:
    """The reward bins of a training: fitted to `rewards` (or the declared range).

    When warm-starting on rewards the previous bins hold, those bins: the weights to start
    from are over them.
    """
    if config.warm_start and previous is not None and previous.binner.contains(rewards):
        return previous.binner
    return RewardBinner.fit(
        rewards,
        num_bins=config.num_bins,
        width=config.soft_target_width,
        low=config.reward_low,
        high=config.reward_high,
    )


def _warm_source(
    previous: TrainedNetworks | None, binner: RewardBinner, dim: int, config: DistillationConfig
) -> TrainedNetworks | None:
    if not config.warm_start or previous is None:
        return None
    same_shapes = previous.config.network_settings() == config.network_settings()
    if previous.binner != binner or previous.embedding_dim != dim or not same_shapes:
        logger.info("warm start skipped: the reward bins, dimension or network shapes changed")
        return None
    return previous


Network = TypeVar("Network", bound=nn.Module)


def _prepared(
    network: Network, warm: nn.Module | None, device: torch.device, masks: torch.Generator
) -> Network:
    """`network` on `device`, with `warm`'s weights if given and dropout masks from `masks`."""
    if warm is not None:
        network.load_state_dict(warm.state_dict())
    network = network.to(device)
    set_dropout_generator(network, masks)
    return network


def _validation_mae(
    binner: RewardBinner, rewards: np.ndarray, train: np.ndarray, val: np.ndarray,
    teacher_values: torch.Tensor, student_values: torch.Tensor,
) -> dict[str, float | None]:
    """MAE on the validation rows of each value head (clipped to the bins) and of the mean."""
    if len(val) == 0:
        return {"teacher_mae": None, "student_mae": None, "mean_mae": None}
    truth = rewards[val].astype(np.float64)

    def mae(values: torch.Tensor) -> float:
        estimate = np.clip(values.cpu().numpy(), binner.low, binner.high)
        return float(np.abs(estimate - truth).mean())

    return {
        "teacher_mae": mae(teacher_values),
        "student_mae": mae(student_values),
        "mean_mae": float(np.abs(rewards[train].mean() - truth).mean()),
    }


def train(
    data: TrainingArrays,
    config: DistillationConfig,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    validation_fraction: float | None = None,
    previous: TrainedNetworks | None = None,
    quiet: bool = True,
) -> tuple[TrainedNetworks, dict[str, Any]]:
    """Train a teacher on `data`, then distil it into a student.

    Torch's global RNG is never seeded nor drawn from: private generators (from `config.seed`,
    or a drawn seed recorded in the results) make a training in any thread reproducible and
    leave the other threads' random numbers alone.

    Args:
        data: Rated episodes' embeddings and rewards (checked by the caller: enough rows, the
            embedder's dimension).
        config: The settings; `epochs`, `batch_size` and `validation_fraction` override
            `max_epochs`, `batch_size` and `validation_fraction` when given.
        epochs: Most epochs per network (early stopping may end sooner).
        batch_size: Mini-batch size; None: `config.batch_size`, and if that is None too,
            n_train / 16 clipped to 8..256.
        validation_fraction: Share held out for early stopping and the validation MAE.
        previous: The networks in use, to warm-start from (`config.warm_start`) when the bins,
            dimension and shapes still fit.
        quiet: Hide the progress bars.

    Returns:
        The trained networks, and the results that `ModelDistillation.distill_from_memories`
        documents (all but "num_skipped" and "seconds").
    """
    epochs = config.max_epochs if epochs is None else epochs
    batch_size = config.batch_size if batch_size is None else batch_size
    fraction = config.validation_fraction if validation_fraction is None else validation_fraction
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    device = resolve_device(config.device)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)  # split shuffles and initial weights
    masks = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    train_np, val_np = split(len(data), fraction, rng)
    if batch_size is None:
        batch_size = min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, len(train_np) // 16))
    binner = fit_binner(data.rewards, config, previous)
    warm = _warm_source(previous, binner, data.dimension, config)

    query = torch.from_numpy(data.query_embeddings).to(device)
    response = torch.from_numpy(data.response_embeddings).to(device)
    targets = Targets.of(binner, data.rewards, device)
    loss = DistillationLoss.from_config(config)
    train_rows = torch.from_numpy(train_np).to(device)
    val_rows = torch.from_numpy(val_np).to(device)

    def new_teacher(warm_from: TrainedNetworks | None) -> TeacherNetwork:
        teacher = TeacherNetwork.of(data.dimension, config, generator=generator)
        return _prepared(teacher, warm_from.teacher if warm_from else None, device, masks)

    def fit(model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_fn: LossFn,
            rows: torch.Tensor, desc: str) -> History:
        return _fit(
            model, inputs, loss_fn, rows, val_rows, config=config, epochs=epochs,
            batch_size=batch_size, generator=generator, desc=desc, quiet=quiet,
        )

    def teacher_loss(logits: torch.Tensor, rows: torch.Tensor) -> LossTerms:
        return loss(logits, targets[rows])

    rewards = torch.from_numpy(data.rewards).to(device)

    # Phase 1: the teacher, on every training row.
    teacher = new_teacher(warm)
    teacher_history = fit(teacher, (query, response), teacher_loss, train_rows, "teacher")
    teacher.fit_value((query[train_rows], response[train_rows]), rewards[train_rows])
    teacher_logits = predict_logits(teacher, (query, response))
    teacher_values = teacher.value(query, response)[0]

    # Optional cross-fitting: replace the training rows' logits and values by out-of-fold ones.
    folds = min(config.cross_fit_folds, len(train_np))
    fold_splits = np.array_split(rng.permutation(train_np), folds) if folds else []
    for k, held_out in enumerate(fold_splits):
        fold_rows = torch.from_numpy(np.setdiff1d(train_np, held_out)).to(device)
        fold_teacher = new_teacher(None)
        fit(fold_teacher, (query, response), teacher_loss, fold_rows,
            f"teacher fold {k + 1}/{folds}")
        fold_teacher.fit_value((query[fold_rows], response[fold_rows]), rewards[fold_rows])
        held = torch.from_numpy(held_out).to(device)
        teacher_logits[held] = predict_logits(fold_teacher, (query, response), held)
        teacher_values[held] = fold_teacher.value(query[held], response[held])[0]

    # Phase 2: the student, from the teacher's logits and values, and the labels.
    def student_loss(logits: torch.Tensor, rows: torch.Tensor) -> LossTerms:
        return loss(logits, targets[rows], teacher_logits[rows])

    student = _prepared(
        StudentNetwork.of(data.dimension, config, generator=generator),
        warm.student if warm else None, device, masks,
    )
    student_history = fit(student, (query,), student_loss, train_rows, "student")
    distilled = config.alpha * teacher_values + config.beta * rewards.double()
    student.fit_value((query[train_rows],), distilled[train_rows])
    validation = _validation_mae(
        binner, data.rewards, train_np, val_np,
        teacher.value(query[val_rows], response[val_rows])[0],
        student.value(query[val_rows])[0],
    )
    if len(val_np):  # measured: now every rated episode informs the value heads (same priors)
        teacher.fit_value((query, response), rewards, keep_priors=True)
        if not folds:  # cross-fitted values stay out-of-fold (the validation rows' were)
            teacher_values = teacher.value(query, response)[0]
        student.fit_value((query,), config.alpha * teacher_values + config.beta * rewards,
                          keep_priors=True)

    teacher_params, student_params = count_parameters(teacher), count_parameters(student)
    results: dict[str, Any] = {
        "teacher": teacher_history.as_dict(teacher_params),
        "student": student_history.as_dict(student_params),
        "num_train": len(train_np),
        "num_val": len(val_np),
        "validation": validation,
        "compression_ratio": teacher_params / student_params,
        "binning": binner.to_dict(),
        "seed": seed,
        "device": str(device),
        "batch_size": batch_size,
        "cross_fit_folds": folds,
        "warm_started": warm is not None,
    }
    for network in (teacher, student):
        set_dropout_generator(network, None)  # trained: the generators stay with this run
    networks = TrainedNetworks(
        teacher.cpu(), student.cpu(), binner, data.dimension, replace(config)
    )
    return networks, results
