"""Settings of the value model, as dataclasses validated on construction.

`DistillationConfig` holds everything that defines a trained model and how it is trained; it is
saved in every checkpoint (`to_dict`). Loading a checkpoint restores only what defines its
networks (`network_settings` and the reward range, see `with_networks_of`): how the next
training runs stays the caller's choice.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from langchain_kd_memory._validate import check_int, check_known, check_number, optional
from langchain_kd_memory.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
REMOVED = ("num_threads",)
"""Removed settings: `from_dict` drops them (old checkpoints), `ModelDistillation` warns."""
MAX_HIDDEN_LAYERS = 32
"""Most hidden layers a network may have (the defaults have 1)."""
_C = TypeVar("_C")


def _suggesting(cls: type[_C]) -> type[_C]:
    """A dataclass whose constructor refuses unknown keywords with the closest field name."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        check_known(cls.__name__, kwargs, [f.name for f in fields(cls)])  # type: ignore[arg-type]
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_suggesting
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
        try:
            sizes = tuple(self.hidden_sizes)
        except TypeError:
            sizes = ()
        if not sizes:
            raise ConfigError(
                f"hidden_sizes must be a non-empty list of positive ints (layer widths), got "
                f"{self.hidden_sizes!r}"
            )
        if len(sizes) > MAX_HIDDEN_LAYERS:
            raise ConfigError(f"at most {MAX_HIDDEN_LAYERS} hidden layers, got {len(sizes)}")
        self.hidden_sizes = tuple(
            check_int(f"hidden_sizes[{i}]", size, low=1, error=ConfigError)
            for i, size in enumerate(sizes)
        )
        self.dropout = check_number("dropout", self.dropout, low=0.0, high=1.0, error=ConfigError)
        if self.dropout == 1.0:
            raise ConfigError("dropout must lie in [0, 1): 1 would drop every unit")


@_suggesting
@dataclass
class TeacherConfig(NetworkConfig):
    """Shape of the teacher: an MLP over the whole episode (one hidden layer of 256 by default).

    `interactions=True` (the default; privileged teachers only) feeds it
    ``[q, r, q * r, |q - r|]`` instead of ``[q, r]``: how the response relates to the query,
    without which a linear value head ranks a query's candidates the same for every query.
    The hidden layers carry the reward distribution; the value head reads the inputs
    themselves (`langchain_kd_memory.models`), so a wider body costs training time and buys
    no value accuracy (BENCHMARKS.md, Agent).
    """

    hidden_sizes: tuple[int, ...] = (256,)
    dropout: float = 0.2
    interactions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.interactions, bool):
            raise ConfigError(f"interactions must be a bool, got {self.interactions!r}")


@_suggesting
@dataclass
class StudentConfig(NetworkConfig):
    """Shape of the student: a small MLP (one hidden layer of 128) that sees the query alone."""

    hidden_sizes: tuple[int, ...] = (128,)
    dropout: float = 0.1


@_suggesting
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
        teacher: Shape of the teacher.
        student: Shape of the student.

    Training uses torch's thread count as the process has it and never changes it (it is
    process-wide: a cap set for a background training also capped the agent's threads). To cap
    it, call `torch.set_num_threads(n)` at the start of your program (on a busy 2-core machine,
    1 thread trained several times faster than 2: see BENCHMARKS.md).
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
            setattr(self, name, check_number(name, getattr(self, name), low=0, error=ConfigError))
        for name in ("temperature", "learning_rate", "soft_target_width"):
            if getattr(self, name) == 0:
                raise ConfigError(f"{name} must be > 0, got 0")
        for name, low in (("num_bins", 2), ("cross_fit_folds", 0), ("patience", 1),
                          ("max_epochs", 1), ("min_episodes", 2)):
            setattr(self, name, check_int(name, getattr(self, name), low=low, error=ConfigError))
        self.reward_low, self.reward_high = (
            optional(check_number, name, getattr(self, name), error=ConfigError)
            for name in ("reward_low", "reward_high")
        )
        self.batch_size = optional(check_int, "batch_size", self.batch_size, low=1,
                                   error=ConfigError)
        self.seed = optional(check_int, "seed", self.seed, error=ConfigError)
        if abs(self.alpha + self.beta - 1.0) > 1e-6:
            raise ConfigError(
                f"alpha and beta must sum to 1, got alpha={self.alpha}, beta={self.beta} "
                f"(sum {self.alpha + self.beta}): e.g. alpha=0.7, beta=0.3"
            )
        if (self.reward_low is None) != (self.reward_high is None):
            raise ConfigError("give both reward_low and reward_high, or neither")
        if self.reward_low is not None and self.reward_high is not None:
            if self.reward_low >= self.reward_high:
                raise ConfigError(
                    f"reward_low must be < reward_high, got {self.reward_low} and "
                    f"{self.reward_high}"
                )
        if self.cross_fit_folds == 1:
            raise ConfigError(
                f"cross_fit_folds must be 0 (off) or >= 2, got {self.cross_fit_folds}"
            )
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ConfigError(
                f"validation_fraction must lie in [0, 0.5), got {self.validation_fraction}"
            )
        for name in ("privileged", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
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
