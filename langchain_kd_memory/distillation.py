"""`ModelDistillation`: train a teacher and distil it into a small student that scores queries.

Training has two phases on stored embeddings (nothing is re-embedded when `TrainingArrays`
come in):

1. The **teacher** learns the reward distribution over ordinal bins from the query embedding
   (and the response embedding when `privileged`), with cross-entropy against Gaussian soft
   targets.
2. The **student** sees the query alone and minimises

       alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + beta * CE(s, soft targets)

   where s and t are the student's and the teacher's logits. With `cross_fit_folds=K`, the
   teacher logits for each training episode come from a teacher that did not see it (K extra
   teachers), so the student never learns the teacher's memorised training-set answers.

Both phases hold out a validation split, stop early when its loss stops improving, and restore
the best weights. The networks output logits; softmax belongs to the loss and to prediction.

Example:
    .. code-block:: python

        kd = ModelDistillation(seed=0)
        kd.distill_from_memories([
            {"query": "reset my password", "response": "...", "reward": 0.9}, ...
        ])
        kd.get_student_prediction("How do I change my email?").expected
        kd.save_models("models/kd"); kd.load_models("models/kd")
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from langchain_core.embeddings import Embeddings
from torch import nn
from tqdm.auto import tqdm

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.checkpoint import load_checkpoint, save_checkpoint
from langchain_kd_memory.config import REMOVED, DistillationConfig
from langchain_kd_memory.embeddings import (
    EmbedderIdentity,
    check_vectors,
    default_embeddings,
    embedder_identity,
)
from langchain_kd_memory.episodes import Episode, RewardEstimate, TrainingArrays, validate_query
from langchain_kd_memory.errors import (
    CheckpointError,
    ConfigError,
    EmbeddingDimensionError,
    InsufficientDataError,
    InvalidArgumentError,
    InvalidEpisodeError,
    NotTrainedError,
)
from langchain_kd_memory.models import (
    StudentNetwork,
    TeacherNetwork,
    count_parameters,
    set_dropout_generator,
    tensor_shapes,
)

logger = logging.getLogger(__name__)

Memories = TrainingArrays | Sequence[Episode | Mapping[str, Any]]
"""What `distill_from_memories` accepts: stored arrays, episodes, or seed-style dicts."""

INFERENCE_CHUNK = 4096
"""Rows per forward pass when predicting or evaluating."""
MIN_AUTO_BATCH, MAX_AUTO_BATCH = 8, 256
"""Bounds of the automatic batch size (n_train / 16)."""


# ----------------------------------------------------------------------------- losses


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


# ----------------------------------------------------------------------------- training loop


@dataclass
class _History:
    train_losses: list[float]
    val_losses: list[float]
    best_epoch: int
    best_val_loss: float
    seconds: float

    def as_dict(self, params: int) -> dict[str, Any]:
        return {
            "train_losses": self.train_losses,
            "val_losses": self.val_losses,
            "epochs_run": len(self.train_losses),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "seconds": self.seconds,
            "params": params,
        }


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits, row indices) -> scalar loss."""


def _predict_logits(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of `model(*inputs)` at `rows` (all if None), without gradients.

    The model must already be in eval mode (`_fit` leaves it so; loading sets it): switching
    modes on every call would cost more than a batch-of-one forward pass.
    """
    rows = torch.arange(len(inputs[0]), device=inputs[0].device) if rows is None else rows
    with torch.no_grad():
        return torch.cat(
            [model(*(x[chunk] for x in inputs)) for chunk in rows.split(INFERENCE_CHUNK)]
        )


def _evaluate(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], loss_fn: LossFn, rows: torch.Tensor
) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for chunk in rows.split(INFERENCE_CHUNK):
            total += float(loss_fn(model(*(x[chunk] for x in inputs)), chunk)) * len(chunk)
    return total / len(rows)


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
) -> _History:
    """Mini-batch AdamW with early stopping on the validation loss; restores the best weights.

    `model(*inputs)` gives logits for rows of the (device-resident) input tensors and
    `loss_fn(logits, rows)` the loss of those rows. Without validation rows, the training loss
    of each epoch decides which weights are kept.
    """
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
        foreach=True,
    )
    history = _History([], [], 0, math.inf, 0.0)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale = 0
    with tqdm(total=epochs, desc=desc, disable=quiet, leave=False) as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            shuffle = torch.randperm(len(train_rows), generator=generator)
            order = train_rows[shuffle.to(train_rows.device)]
            total = torch.zeros((), device=train_rows.device)
            for batch in order.split(batch_size):
                loss = loss_fn(model(*(x[batch] for x in inputs)), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(batch)
            train_loss = float(total) / len(train_rows)
            val_loss = _evaluate(model, inputs, loss_fn, val_rows) if len(val_rows) else train_loss
            history.train_losses.append(train_loss)
            history.val_losses.append(val_loss)
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            if val_loss < history.best_val_loss:
                history.best_val_loss, history.best_epoch, stale = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


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


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_val = 0 if fraction == 0 else min(max(1, round(n * fraction)), n - 2)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ----------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class _Trained:
    """Everything prediction needs, swapped in as one object when training finishes."""

    teacher: TeacherNetwork
    student: StudentNetwork
    binner: RewardBinner
    embedding_dim: int
    identity: EmbedderIdentity
    config: DistillationConfig
    metrics: dict[str, Any]


class ModelDistillation:
    """Teacher-student value model: predicts the reward of a query from its embedding.

    The student (small, query only) is what an agent uses at run time; the teacher (large, and
    with `privileged=True` also seeing the response) exists to train it. Thread-safe: training
    builds new networks and swaps them in at the end, so predictions keep working meanwhile.

    Example:
        .. code-block:: python

            kd = ModelDistillation(temperature=4.0, alpha=0.7, beta=0.3, seed=0)
            results = kd.distill_from_memories(episodes)      # Episodes, dicts or TrainingArrays
            estimate = kd.get_student_prediction("How do I reset my password?")
            estimate.expected, estimate.std, estimate.quantile(0.1)
            kd.compare_teacher_student("How do I reset my password?")["compression_ratio"]
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.7,
        beta: float = 0.3,
        learning_rate: float = 1e-3,
        num_bins: int = 64,
        privileged: bool = True,
        device: str = "auto",
        seed: int | None = None,
        embeddings: Embeddings | None = None,
        **options: Any,
    ) -> None:
        """Create an untrained model.

        Args:
            temperature: Distillation temperature T (> 0).
            alpha: Weight of the distillation term; `alpha + beta` must be 1.
            beta: Weight of the label term.
            learning_rate: AdamW learning rate.
            num_bins: Number of ordinal reward bins.
            privileged: Whether the teacher also sees the response (the student never does).
            device: "auto" (CUDA when available), "cpu" or "cuda".
            seed: Seed for reproducible training; None draws one (recorded in the results).
            embeddings: Any LangChain `Embeddings`, used only when text must be embedded and to
                identify the embedder in checkpoints; the local MiniLM if None.
            **options: Any other `DistillationConfig` field (e.g. `cross_fit_folds=5`,
                `reward_low=1, reward_high=10`, `warm_start=True`, `teacher=TeacherConfig(...)`).

        Raises:
            ConfigError: An invalid or unknown setting.
        """
        for name in set(options) & set(REMOVED):
            warnings.warn(
                f"{name} is ignored and will be removed: training never changes torch's thread "
                "count, which is process-wide; call torch.set_num_threads(n) at the start of "
                "your program to cap it",
                DeprecationWarning,
                stacklevel=2,
            )
            del options[name]
        known = {f.name for f in fields(DistillationConfig)}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown options {sorted(unknown)}; valid ones: {sorted(known)}")
        self.config = DistillationConfig(
            temperature=temperature,
            alpha=alpha,
            beta=beta,
            learning_rate=learning_rate,
            num_bins=num_bins,
            privileged=privileged,
            device=device,
            seed=seed,
            **options,
        )
        self._embeddings = embeddings
        self._identity: EmbedderIdentity | None = None
        self._state: _Trained | None = None
        self._train_lock = threading.Lock()

    @classmethod
    def from_config(
        cls, config: DistillationConfig, embeddings: Embeddings | None = None
    ) -> ModelDistillation:
        """Create an untrained model from a `DistillationConfig`."""
        if not isinstance(config, DistillationConfig):
            raise ConfigError(f"expected a DistillationConfig, got {type(config).__name__}")
        return cls(embeddings=embeddings, **config.to_dict())

    # ------------------------------------------------------------------ properties

    @property
    def embeddings(self) -> Embeddings:
        """The embedder for text input (the local default, created on first use, if none)."""
        if self._embeddings is None:
            self._embeddings = default_embeddings()
        return self._embeddings

    @property
    def embedder_identity(self) -> EmbedderIdentity:
        """Name and dimension of the embedder this model works with."""
        if self._identity is None:
            self._identity = embedder_identity(self.embeddings)
        return self._identity

    @property
    def is_trained(self) -> bool:
        """Whether a trained (or loaded) model is ready to predict."""
        return self._state is not None

    @property
    def metrics(self) -> dict[str, Any]:
        """The results of the training that produced the current model."""
        return dict(self._require().metrics)

    @property
    def student_beats_mean(self) -> bool:
        """Whether the student's validation MAE beat predicting the mean training reward.

        False means the query alone carried no usable signal in the last training: its
        predictions are then no better than the prior. True when no validation was run.
        """
        validation = self._require().metrics.get("validation") or {}
        student, mean = validation.get("student_mae"), validation.get("mean_mae")
        return student is None or mean is None or student < mean

    @property
    def binner(self) -> RewardBinner:
        """The reward binning of the current model."""
        return self._require().binner

    @property
    def teacher(self) -> TeacherNetwork:
        """The current teacher network (eval mode)."""
        return self._require().teacher

    @property
    def student(self) -> StudentNetwork:
        """The current student network (eval mode)."""
        return self._require().student

    def _require(self) -> _Trained:
        state = self._state
        if state is None:
            raise NotTrainedError(
                "the value model is not trained yet: call distill_from_memories(...) with at "
                f"least {self.config.min_episodes} rated episodes, or load_models(prefix)"
            )
        return state

    def _device(self) -> torch.device:
        if self.config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' but CUDA is not available; use 'auto' or 'cpu'")
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    # ------------------------------------------------------------------ data

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the configured embedder; an empty text becomes a zero vector."""
        dim = self.embedder_identity.dimension
        out = np.zeros((len(texts), dim), dtype=np.float32)
        nonempty = [i for i, t in enumerate(texts) if t]
        if nonempty:
            vectors = self.embeddings.embed_documents([texts[i] for i in nonempty])
            check_vectors(vectors, len(nonempty), dim)
            out[nonempty] = np.asarray(vectors, dtype=np.float32)
        return out

    def _training_arrays(self, memories: Memories) -> tuple[TrainingArrays, int]:
        """Rated episodes as arrays, and how many unrated ones were skipped."""
        if isinstance(memories, TrainingArrays):
            return memories, 0
        if isinstance(memories, (str, bytes)) or not isinstance(memories, Sequence):
            raise InvalidArgumentError(
                "memories must be a TrainingArrays or a list of Episode / dicts with "
                f"'query', 'response' and 'reward', got {type(memories).__name__}"
            )
        episodes = [_as_episode(m, i) for i, m in enumerate(memories)]
        rated = [e for e in episodes if e.is_rated]
        self.check_trainable(len(rated), len(episodes) - len(rated))
        queries = self._embed([e.query for e in rated])
        if self.config.privileged:
            responses = self._embed([e.response for e in rated])
        else:  # the response is never used: do not pay for embedding it
            responses = np.zeros_like(queries)
        rewards = np.asarray([e.reward for e in rated], dtype=np.float32)
        return TrainingArrays(queries, responses, rewards, tuple(e.id for e in rated)), len(
            episodes
        ) - len(rated)

    def check_trainable(
        self, rated: int, skipped: int = 0, *, namespace: str | None = None
    ) -> None:
        """Refuse to train on fewer than `config.min_episodes` rated episodes.

        Training checks this itself; a caller that counts episodes before reading them (a
        memory's `consolidate`) calls it first, so every path refuses with the same message.

        Args:
            rated: Rated episodes available.
            skipped: Unrated episodes that training skips (reported in the message).
            namespace: Where the episodes are, for the message.

        Raises:
            InsufficientDataError: `rated < config.min_episodes`.
            InvalidArgumentError: A count is not a non-negative int.
        """
        for name, value in (("rated", rated), ("skipped", skipped)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{name} must be an int >= 0, got {value!r}")
        need = self.config.min_episodes
        if rated < need:
            where = "there are" if namespace is None else f"namespace {namespace!r} has"
            raise InsufficientDataError(
                f"{where} {rated} rated episodes ({skipped} unrated); training needs at least "
                f"{need} (min_episodes): record more rewards (add_episode(..., reward=...) or "
                "record_feedback), or set a lower min_episodes"
            )

    def _check_dimension(self, dim: int) -> None:
        identity = self.embedder_identity
        if dim != identity.dimension:
            raise EmbeddingDimensionError(
                f"embeddings have dimension {dim}, but the embedder {identity} produces "
                f"{identity.dimension}: pass the embeddings= that made these vectors"
            )

    def _fit_binner(self, rewards: np.ndarray) -> RewardBinner:
        cfg = self.config
        state = self._state
        if cfg.warm_start and state is not None and state.binner.contains(rewards):
            return state.binner  # same bins as the weights we start from
        return RewardBinner.fit(
            rewards,
            num_bins=cfg.num_bins,
            width=cfg.soft_target_width,
            low=cfg.reward_low,
            high=cfg.reward_high,
        )

    # ------------------------------------------------------------------ training

    def distill_from_memories(
        self,
        memories: Memories,
        num_epochs: int | None = None,
        batch_size: int | None = None,
        *,
        validation_fraction: float | None = None,
        quiet: bool = True,
    ) -> dict[str, Any]:
        """Train the teacher, then distil it into the student.

        Args:
            memories: Rated episodes: a `TrainingArrays` (stored embeddings, nothing is
                embedded), or a list of `Episode` or dicts with "query", "response" and
                "reward" (the seed's shape). Unrated episodes are skipped.
            num_epochs: Most epochs per network (early stopping may end sooner);
                `config.max_epochs` (30) if None.
            batch_size: Mini-batch size; if None, `config.batch_size`, whose default None
                means n_train / 16 clipped to 8..256 (the seed's fixed 8 makes 5k episodes
                take ~600 optimizer steps per epoch; a step costs about as much as a forward
                and backward pass of 64 rows).
            validation_fraction: Share held out for early stopping; the config's if None.
            quiet: Hide the progress bars.

        Returns:
            A dict with "teacher" and "student" histories (train/val losses per epoch,
            epochs run, best epoch and val loss, seconds, params), "num_train", "num_val",
            "num_skipped", "validation" (MAE of both networks and of predicting the mean on the
            validation split), "compression_ratio", "binning", "seed", "device", "batch_size",
            "cross_fit_folds", "warm_started" and "seconds".

        Raises:
            InsufficientDataError: Fewer than `min_episodes` rated episodes.
            InvalidArgumentError: Invalid memories or arguments.
            EmbeddingDimensionError: Arrays of another dimension than the embedder's.
        """
        cfg = self.config
        epochs = cfg.max_epochs if num_epochs is None else _positive_int("num_epochs", num_epochs)
        batch = cfg.batch_size if batch_size is None else _positive_int("batch_size", batch_size)
        fraction = cfg.validation_fraction if validation_fraction is None else validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0.0 <= fraction < 0.5
        ):
            raise InvalidArgumentError(f"validation_fraction must lie in [0, 0.5), got {fraction}")
        with self._train_lock:
            start = time.perf_counter()
            data, skipped = self._training_arrays(memories)
            self.check_trainable(len(data), skipped)
            self._check_dimension(data.dimension)
            seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
            device = self._device()
            state, results = self._train(
                data, epochs=epochs, batch_size=batch, fraction=fraction, seed=seed,
                device=device, quiet=quiet,
            )
            results.update(num_skipped=skipped, seconds=time.perf_counter() - start)
            self._state = state
        logger.info(
            "trained on %d episodes in %.1fs; validation MAE: %s",
            results["num_train"], results["seconds"], results["validation"],
        )
        return results

    def _warm_source(self, binner: RewardBinner, dim: int) -> _Trained | None:
        state = self._state
        if not self.config.warm_start or state is None:
            return None
        same_shapes = state.config.network_settings() == self.config.network_settings()
        if state.binner != binner or state.embedding_dim != dim or not same_shapes:
            logger.info("warm start skipped: the reward bins, dimension or network shapes changed")
            return None
        return state

    def _new_teacher(
        self, dim: int, warm: _Trained | None, device: torch.device,
        generator: torch.Generator, masks: torch.Generator,
    ) -> TeacherNetwork:
        cfg = self.config
        teacher = TeacherNetwork(
            dim, cfg.num_bins, cfg.teacher, cfg.privileged, generator=generator
        )
        return _prepared(teacher, warm.teacher if warm else None, device, masks)

    def _train(
        self,
        data: TrainingArrays,
        *,
        epochs: int,
        batch_size: int | None,
        fraction: float,
        seed: int,
        device: torch.device,
        quiet: bool,
    ) -> tuple[_Trained, dict[str, Any]]:
        cfg = self.config
        rng = np.random.default_rng(seed)
        # Private generators: torch's global RNG is never seeded nor drawn from, so that training
        # in any thread is reproducible and leaves the other threads' random numbers alone.
        generator = torch.Generator().manual_seed(seed)  # split shuffles and initial weights
        masks = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        train_np, val_np = _split(len(data), fraction, rng)
        if batch_size is None:
            batch_size = min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, len(train_np) // 16))
        binner = self._fit_binner(data.rewards)
        warm = self._warm_source(binner, data.dimension)

        query = torch.from_numpy(data.query_embeddings).to(device)
        response = torch.from_numpy(data.response_embeddings).to(device)
        soft = torch.from_numpy(binner.soft_targets(data.rewards)).to(device)
        unit_rewards = torch.from_numpy(binner.to_unit(data.rewards)).to(device)
        unit_centers = torch.from_numpy(binner.to_unit(binner.centers)).to(device)
        train_rows = torch.from_numpy(train_np).to(device)
        val_rows = torch.from_numpy(val_np).to(device)

        def label_loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            loss = soft_cross_entropy(logits, soft[rows])
            if cfg.regression_weight > 0:
                loss = loss + cfg.regression_weight * expected_reward_loss(
                    logits, unit_rewards[rows], unit_centers
                )
            return loss

        def fit_teacher(model: TeacherNetwork, rows: torch.Tensor, desc: str) -> _History:
            return _fit(
                model, (query, response), label_loss, rows, val_rows,
                config=cfg, epochs=epochs, batch_size=batch_size, generator=generator,
                desc=desc, quiet=quiet,
            )

        # Phase 1: the teacher, on every training row.
        teacher = self._new_teacher(data.dimension, warm, device, generator, masks)
        teacher_history = fit_teacher(teacher, train_rows, "teacher")
        teacher_logits = _predict_logits(teacher, (query, response))

        # Optional cross-fitting: replace the training rows' logits by out-of-fold ones.
        folds = min(cfg.cross_fit_folds, len(train_np))
        fold_splits = np.array_split(rng.permutation(train_np), folds) if folds else []
        for k, held_out in enumerate(fold_splits):
            fold_rows = torch.from_numpy(np.setdiff1d(train_np, held_out)).to(device)
            fold_teacher = self._new_teacher(data.dimension, None, device, generator, masks)
            fit_teacher(fold_teacher, fold_rows, f"teacher fold {k + 1}/{folds}")
            held = torch.from_numpy(held_out).to(device)
            teacher_logits[held] = _predict_logits(fold_teacher, (query, response), held)

        # Phase 2: the student, from the teacher's logits and the labels.
        def student_loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return cfg.alpha * distillation_loss(
                logits, teacher_logits[rows], cfg.temperature
            ) + cfg.beta * label_loss(logits, rows)

        student = _prepared(
            StudentNetwork(data.dimension, cfg.num_bins, cfg.student, generator=generator),
            warm.student if warm else None, device, masks,
        )
        student_history = _fit(
            student, (query,), student_loss, train_rows, val_rows,
            config=cfg, epochs=epochs, batch_size=batch_size, generator=generator,
            desc="student", quiet=quiet,
        )

        teacher_params, student_params = count_parameters(teacher), count_parameters(student)
        results: dict[str, Any] = {
            "teacher": teacher_history.as_dict(teacher_params),
            "student": student_history.as_dict(student_params),
            "num_train": len(train_np),
            "num_val": len(val_np),
            "validation": _validation_mae(
                binner, data.rewards, train_np, val_np,
                teacher_logits[val_rows], _predict_logits(student, (query,), val_rows),
            ),
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
        state = _Trained(
            teacher.cpu(), student.cpu(), binner, data.dimension, self.embedder_identity,
            replace(cfg), results,
        )
        return state, results

    # ------------------------------------------------------------------ prediction

    def _estimates(self, state: _Trained, logits: torch.Tensor) -> list[RewardEstimate]:
        probs = F.softmax(logits.double(), dim=1).cpu().numpy()
        expected = state.binner.expected(probs)
        std = state.binner.std(probs)
        centers = state.binner.centers
        return [
            RewardEstimate(
                expected=float(expected[i]), std=float(std[i]), distribution=probs[i],
                bin_centers=centers, predicted_bin=int(probs[i].argmax()),
            )
            for i in range(len(probs))
        ]

    def _as_matrix(self, state: _Trained, vectors: object, name: str) -> torch.Tensor:
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != state.embedding_dim:
            raise EmbeddingDimensionError(
                f"{name} must have shape (n, {state.embedding_dim}) or ({state.embedding_dim},), "
                f"got {np.asarray(vectors).shape}"
            )
        if not np.all(np.isfinite(array)):
            raise InvalidArgumentError(f"{name} contain NaN or infinite values")
        return torch.from_numpy(array)

    def _predict(
        self, state: _Trained, query_embeddings: object, response_embeddings: object, model: str
    ) -> list[RewardEstimate]:
        query = self._as_matrix(state, query_embeddings, "query_embeddings")
        if model == "student":
            return self._estimates(state, _predict_logits(state.student, (query,)))
        if model != "teacher":
            raise InvalidArgumentError(f"model must be 'student' or 'teacher', got {model!r}")
        response = (
            torch.zeros_like(query) if response_embeddings is None
            else self._as_matrix(state, response_embeddings, "response_embeddings")
        )
        if response.shape != query.shape:
            raise InvalidArgumentError(
                f"{len(response)} response embeddings for {len(query)} queries"
            )
        return self._estimates(state, _predict_logits(state.teacher, (query, response)))

    def predict_embeddings(
        self, query_embeddings: np.ndarray, response_embeddings: np.ndarray | None = None,
        *, model: str = "student",
    ) -> list[RewardEstimate]:
        """Score many precomputed query embeddings at once (no embedder call).

        Args:
            query_embeddings: Array of shape (n, dim), or (dim,) for one query.
            response_embeddings: For `model="teacher"` when privileged; zeros (what an empty
                response is stored as) if None.
            model: "student" (the default, query only) or "teacher".

        Returns:
            One `RewardEstimate` per row.
        """
        return self._predict(self._require(), query_embeddings, response_embeddings, model)

    def score_batch(self, queries: Sequence[str]) -> list[RewardEstimate]:
        """Student estimates for many queries, embedded in one call."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InvalidArgumentError("queries must be a list of strings")
        for query in queries:
            validate_query(query)
        state = self._require()
        if not queries:
            return []
        return self._predict(state, self._embed(list(queries)), None, "student")

    def get_student_prediction(self, query: str) -> RewardEstimate:
        """The student's estimate of the reward of `query` (query alone, before any response)."""
        return self.score_batch([query])[0]

    def _embed_episode(self, query: str, response: str) -> np.ndarray:
        validate_query(query)
        if not isinstance(response, str):
            raise InvalidEpisodeError(f"response must be a str, got {type(response).__name__}")
        return self._embed([query, response])

    def get_teacher_prediction(self, query: str, response: str = "") -> RewardEstimate:
        """The teacher's estimate; a privileged teacher also reads `response` ("" = unknown)."""
        state = self._require()
        vectors = self._embed_episode(query, response)
        return self._predict(state, vectors[:1], vectors[1:], "teacher")[0]

    def compare_teacher_student(self, query: str, response: str = "") -> dict[str, Any]:
        """Compare the two networks on one query (and, for a privileged teacher, its response).

        Returns:
            {"compression_ratio", "teacher_params", "student_params",
             "similarity": {"prediction_match", "kl_divergence", "expected_difference"},
             "teacher": RewardEstimate, "student": RewardEstimate}; `prediction_match` is
            whether both predict the same bin, `kl_divergence` is KL(teacher || student).
        """
        state = self._require()
        vectors = self._embed_episode(query, response)
        teacher = self._predict(state, vectors[:1], vectors[1:], "teacher")[0]
        student = self._predict(state, vectors[:1], None, "student")[0]
        p, q = teacher.distribution, student.distribution
        kl = float(np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12)))))
        teacher_params = count_parameters(state.teacher)
        student_params = count_parameters(state.student)
        return {
            "compression_ratio": teacher_params / student_params,
            "teacher_params": teacher_params,
            "student_params": student_params,
            "similarity": {
                "prediction_match": teacher.predicted_bin == student.predicted_bin,
                "kl_divergence": kl,
                "expected_difference": abs(teacher.expected - student.expected),
            },
            "teacher": teacher,
            "student": student,
        }

    # ------------------------------------------------------------------ persistence

    def save_models(self, prefix: str) -> dict[str, str]:
        """Save a new checkpoint version atomically (see `checkpoint.save_checkpoint`).

        Returns:
            {"teacher": path, "student": path, "config": manifest path}.
        """
        state = self._require()
        return save_checkpoint(
            prefix,
            {"teacher": state.teacher.state_dict(), "student": state.student.state_dict()},
            embedder=state.identity,
            config=state.config.to_dict(),
            binning=state.binner.to_dict(),
            dims={"embedding_dim": state.embedding_dim, "num_bins": state.binner.num_bins},
            metrics=state.metrics,
        )

    def load_models(self, prefix: str, version: int | None = None) -> bool:
        """Load the checkpoint at `prefix`; False if there is none.

        Only what defines the saved networks is taken from the checkpoint: network shapes,
        `num_bins`, `privileged`, the reward bins and, unless this model declares one, the
        reward range. This model's training settings (temperature, alpha, beta, learning rate,
        epochs, dropout, seed, device, ...) stay, so the next training runs with them. A network
        setting this model was given (anything but its default) must match the checkpoint's.
        If loading fails, the model in use (if any) stays as it was.

        Args:
            prefix: The prefix given to `save_models`.
            version: Load this version (`checkpoint.checkpoint_versions(prefix)` lists them)
                instead of the latest, e.g. the previous one when the latest is damaged.

        Raises:
            CheckpointError: A corrupted, tampered, truncated, forged or unsafe checkpoint
                (pickle files are refused, never opened), or a version that is not on disk.
            EmbedderMismatchError: It was trained with another embedder or dimension.
            ConfigError: This model asks for other networks (e.g. `num_bins=32` against a
                64-bin checkpoint) or another declared reward range than the checkpoint holds.
        """
        identity = self.embedder_identity
        checkpoint = load_checkpoint(
            prefix, embedder=identity, version=version,
            expect=lambda manifest: _saved_networks(manifest, identity, prefix).shapes,
        )
        if checkpoint is None:
            return False
        saved = _saved_networks(checkpoint.manifest, identity, prefix)
        try:
            config = self.config.with_networks_of(saved.config)
        except ConfigError as exc:
            raise ConfigError(
                f"the checkpoint at {prefix!r} holds other networks than this model asks for: "
                f"{exc}; leave these settings out (or give the checkpoint's) to use it, or give "
                "another prefix (a memory: another model_dir) to train new networks with yours"
            ) from exc
        # Built on the meta device and given the loaded tensors: nothing is initialised or drawn.
        teacher = TeacherNetwork(
            saved.dim, config.num_bins, config.teacher, config.privileged, device="meta"
        )
        student = StudentNetwork(saved.dim, config.num_bins, config.student, device="meta")
        teacher.load_state_dict(checkpoint.weights["teacher"], assign=True)  # shapes checked
        student.load_state_dict(checkpoint.weights["student"], assign=True)
        with self._train_lock:
            self.config = config
            self._state = _Trained(
                teacher.eval(), student.eval(), saved.binner, saved.dim, identity, config,
                dict(checkpoint.manifest.get("metrics", {})),
            )
        return True


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _SavedNetworks:
    """The networks a checkpoint's manifest describes, checked for consistency."""

    config: DistillationConfig
    binner: RewardBinner
    dim: int

    @property
    def shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """The tensors each network holds, from networks built on the meta device (no memory)."""
        cfg = self.config
        teacher = TeacherNetwork(
            self.dim, cfg.num_bins, cfg.teacher, cfg.privileged, device="meta"
        )
        student = StudentNetwork(self.dim, cfg.num_bins, cfg.student, device="meta")
        return {"teacher": tensor_shapes(teacher), "student": tensor_shapes(student)}


def _saved_networks(
    manifest: dict[str, Any], identity: EmbedderIdentity, prefix: str
) -> _SavedNetworks:
    """Read and cross-check what defines the saved networks, before anything is built.

    Raises:
        CheckpointError: The manifest's config or binning is invalid, its dimension is not the
            embedder's, or its numbers of bins disagree.
    """
    edited = "it was edited; retrain, or load an earlier version by number"
    try:
        config = DistillationConfig.from_dict(manifest["config"])
        binner = RewardBinner.from_dict(manifest["binning"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint at {prefix!r} has an invalid config or binning ({exc}): {edited}"
        ) from exc
    dims = manifest["dims"]
    dim, bins = dims.get("embedding_dim"), dims.get("num_bins")
    if dim != identity.dimension:
        raise CheckpointError(
            f"checkpoint at {prefix!r} gives embedding_dim {dim!r}, but was trained on the "
            f"embeddings of {identity}: {edited}"
        )
    if not bins == config.num_bins == binner.num_bins:
        raise CheckpointError(
            f"checkpoint at {prefix!r} disagrees on the number of reward bins (dims {bins!r}, "
            f"config {config.num_bins}, binning {binner.num_bins}): {edited}"
        )
    return _SavedNetworks(config, binner, dim)


def _validation_mae(
    binner: RewardBinner, rewards: np.ndarray, train: np.ndarray, val: np.ndarray,
    teacher_logits: torch.Tensor, student_logits: torch.Tensor,
) -> dict[str, float | None]:
    if len(val) == 0:
        return {"teacher_mae": None, "student_mae": None, "mean_mae": None}
    truth = rewards[val].astype(np.float64)

    def mae(logits: torch.Tensor) -> float:
        expected = binner.expected(F.softmax(logits.double(), dim=1).cpu().numpy())
        return float(np.abs(expected - truth).mean())

    return {
        "teacher_mae": mae(teacher_logits),
        "student_mae": mae(student_logits),
        "mean_mae": float(np.abs(rewards[train].mean() - truth).mean()),
    }


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


def _as_episode(memory: object, index: int) -> Episode:
    """An `Episode` from an Episode or a seed-style dict (other keys of the dict are ignored)."""
    if isinstance(memory, Episode):
        return memory
    if isinstance(memory, Mapping):
        if "query" not in memory:
            raise InvalidEpisodeError(f"memories[{index}] has no 'query'")
        return Episode(
            query=memory["query"],
            response=memory.get("response") or "",
            reward=memory.get("reward"),
        )
    raise InvalidEpisodeError(
        f"memories[{index}] must be an Episode or a dict, got {type(memory).__name__}"
    )
