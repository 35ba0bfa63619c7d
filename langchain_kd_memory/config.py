"""Settings of the value model, as dataclasses validated on construction.

`DistillationConfig` holds everything that defines a trained model and how it is trained; it is
saved in every checkpoint (`to_dict`). Loading a checkpoint restores only what defines its
networks (`network_settings` and the reward range, see `with_networks_of`): how the next
training runs stays the caller's choice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from langchain_kd_memory.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
REMOVED = ("num_threads",)
"""Removed settings: `from_dict` drops them (old checkpoints), `ModelDistillation` warns."""
MAX_HIDDEN_LAYERS = 32
"""Most hidden layers a network may have (the defaults have 4 and 2)."""


@dataclass
class NetworkConfig:
    """Shape of an MLP.

    Attributes:
        hidden_sizes: Width of each hidden layer.
        dropout: Dropout probability after each hidden layer.
    """

    hidden_sizes: tuple[int, ...]
    dropout: float

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        if not self.hidden_sizes or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden_sizes
        ):
            raise ConfigError(f"hidden_sizes must be positive ints, got {self.hidden_sizes!r}")
        if len(self.hidden_sizes) > MAX_HIDDEN_LAYERS:
            raise ConfigError(
                f"at most {MAX_HIDDEN_LAYERS} hidden layers, got {len(self.hidden_sizes)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")


@dataclass
class TeacherConfig(NetworkConfig):
    """Shape of the teacher: a wide MLP, as the seed intends (1024 -> 512 -> 256 -> 128)."""

    hidden_sizes: tuple[int, ...] = (1024, 512, 256, 128)
    dropout: float = 0.2


@dataclass
class StudentConfig(NetworkConfig):
    """Shape of the student: a small MLP (256 -> 128) that sees the query alone."""

    hidden_sizes: tuple[int, ...] = (256, 128)
    dropout: float = 0.1


@dataclass
class DistillationConfig:
    """How the teacher and the student are built and trained.

    Attributes:
        temperature: Softmax temperature of the distillation term (> 0).
        alpha: Weight of the distillation term (KL to the teacher, scaled by T^2).
        beta: Weight of the label term (cross-entropy to the ordinal soft targets).
            `alpha + beta` must be 1.
        regression_weight: Weight of an extra squared-error term on the expected reward
            (in units of the reward range); 0 disables it. 1 by default: on chitchat it lowered
            the whole-episode MAE and its spread across seeds (BENCHMARKS.md, Quality).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        num_bins: Number of ordinal reward bins.
        soft_target_width: Standard deviation, in bins, of the Gaussian soft targets.
        reward_low: Lowest possible reward (e.g. 1 for 1..10 ratings); from the data if None.
        reward_high: Highest possible reward; from the data if None.
        privileged: Whether the teacher also sees the response (the student never does).
        cross_fit_folds: If >= 2, the student learns from out-of-fold teacher predictions:
            K extra teachers, each predicting the episodes it did not see. 0 disables it.
        validation_fraction: Share of rated episodes held out for early stopping.
        patience: Epochs without improvement of the validation loss before stopping (6: with
            3 the teacher sometimes stopped at epoch 2 with a near-constant output).
        max_epochs: Default for `num_epochs` (an upper bound: early stopping may end sooner).
        batch_size: Default mini-batch size; None picks one from the number of training
            episodes (n / 16, between 8 and 256: at least ~16 steps per epoch on small data,
            few large steps on large data, where each optimizer step costs as much as a
            forward and backward pass of 64 rows on CPU).
        min_episodes: Fewest rated episodes that training accepts, wherever it is started
            (`distill_from_memories`, a memory's `consolidate`, the callback, the CLI). 20 by
            default: a 15% validation split then holds 3 episodes.
        warm_start: Start from the previous weights when retraining with the same shapes.
        seed: Random seed for the split, the initial weights and the shuffling; None = random.
        device: "auto" (CUDA if available, else CPU), "cpu" or "cuda".

    Training uses torch's thread count as the process has it and never changes it (it is
    process-wide: a cap set for a background training also capped the agent's threads). To cap
    it, call `torch.set_num_threads(n)` at the start of your program (on a busy 2-core machine,
    1 thread trained several times faster than 2: see BENCHMARKS.md).
        teacher: Shape of the teacher.
        student: Shape of the student.
    """

    temperature: float = 4.0
    alpha: float = 0.7
    beta: float = 0.3
    regression_weight: float = 1.0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    num_bins: int = 64
    soft_target_width: float = 2.0
    reward_low: float | None = None
    reward_high: float | None = None
    privileged: bool = True
    cross_fit_folds: int = 0
    validation_fraction: float = 0.15
    patience: int = 6
    max_epochs: int = 30
    batch_size: int | None = None
    min_episodes: int = 20
    warm_start: bool = False
    seed: int | None = None
    device: str = "auto"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.teacher, dict):
            self.teacher = TeacherConfig(**self.teacher)
        if isinstance(self.student, dict):
            self.student = StudentConfig(**self.student)
        for name in ("temperature", "alpha", "beta", "regression_weight", "learning_rate",
                     "weight_decay", "soft_target_width", "validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value}")
        for name in ("num_bins", "cross_fit_folds", "patience", "max_epochs", "min_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an int, got {value!r}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha + self.beta - 1.0) > 1e-6:
            raise ConfigError(
                f"alpha and beta must be >= 0 and sum to 1, got alpha={self.alpha}, "
                f"beta={self.beta} (sum {self.alpha + self.beta})"
            )
        if self.regression_weight < 0:
            raise ConfigError(f"regression_weight must be >= 0, got {self.regression_weight}")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError(
                f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate} "
                f"and {self.weight_decay}"
            )
        if self.num_bins < 2:
            raise ConfigError(f"num_bins must be >= 2, got {self.num_bins}")
        if self.soft_target_width <= 0:
            raise ConfigError(f"soft_target_width must be > 0, got {self.soft_target_width}")
        for name in ("reward_low", "reward_high"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(f"{name} must be a finite number or None, got {value!r}")
        if (self.reward_low is None) != (self.reward_high is None):
            raise ConfigError("give both reward_low and reward_high, or neither")
        if self.reward_low is not None and self.reward_high is not None:
            if self.reward_low >= self.reward_high:
                raise ConfigError(
                    f"reward_low must be < reward_high, got {self.reward_low} and "
                    f"{self.reward_high}"
                )
        if self.cross_fit_folds == 1 or self.cross_fit_folds < 0:
            raise ConfigError(
                f"cross_fit_folds must be 0 (off) or >= 2, got {self.cross_fit_folds}"
            )
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ConfigError(
                f"validation_fraction must lie in [0, 0.5), got {self.validation_fraction}"
            )
        if self.patience < 1 or self.max_epochs < 1:
            raise ConfigError(
                f"patience and max_epochs must be >= 1, got {self.patience} and {self.max_epochs}"
            )
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise ConfigError(f"batch_size must be a positive int or None, got {self.batch_size!r}")
        if self.min_episodes < 2:
            raise ConfigError(f"min_episodes must be >= 2, got {self.min_episodes}")
        for name in ("privileged", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigError(f"seed must be an int or None, got {self.seed!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")

    def network_settings(self) -> dict[str, Any]:
        """The settings that define the networks' tensors (what a checkpoint restores)."""
        return {
            "teacher.hidden_sizes": self.teacher.hidden_sizes,
            "student.hidden_sizes": self.student.hidden_sizes,
            "num_bins": self.num_bins,
            "privileged": self.privileged,
        }

    def with_networks_of(self, saved: DistillationConfig) -> DistillationConfig:
        """This config with the network settings of a checkpoint's config `saved`.

        The reward range is taken too unless this config declares one. Training settings
        (temperature, alpha, beta, learning rate, epochs, dropout, seed, device, ...) stay.

        Raises:
            ConfigError: A network setting this config changed from its default differs from
                the saved one, or both declare different reward ranges: the checkpoint does not
                hold the networks asked for. The message names each difference.
        """
        mine, theirs = self.network_settings(), saved.network_settings()
        default = DistillationConfig().network_settings()
        conflicts = [
            f"{name}={mine[name]!r} (the checkpoint has {theirs[name]!r})"
            for name in mine
            if mine[name] != default[name] and mine[name] != theirs[name]
        ]
        declared = self.reward_low is not None
        mine_range, saved_range = (self.reward_low, self.reward_high), (
            saved.reward_low, saved.reward_high
        )
        if declared and saved.reward_low is not None and mine_range != saved_range:
            conflicts.append(
                f"reward range {list(mine_range)} (the checkpoint has {list(saved_range)})"
            )
        if conflicts:
            raise ConfigError("; ".join(conflicts))
        merged = replace(
            self,
            teacher=replace(self.teacher, hidden_sizes=saved.teacher.hidden_sizes),
            student=replace(self.student, hidden_sizes=saved.student.hidden_sizes),
            num_bins=saved.num_bins,
            privileged=saved.privileged,
        )
        return merged if declared else replace(
            merged, reward_low=saved.reward_low, reward_high=saved.reward_high
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillationConfig:
        """Rebuild a config from `to_dict` output; unknown keys raise `ConfigError`.

        Keys of settings that were removed (`REMOVED`, found in older checkpoints) are dropped.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"expected a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - set(REMOVED)
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        return cls(**{key: value for key, value in data.items() if key in known})
