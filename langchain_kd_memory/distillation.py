"""`ModelDistillation`: a teacher-student value model that scores queries before they run.

The facade over the three parts of the value model: the networks (`models.py`), their training
(`training.py`: the teacher, then the student distilled from it, with `DistillationLoss`) and
their checkpoints (`checkpoint.py`). It holds the settings, embeds text through the package's
one `Embedder`, predicts, compares the two networks, and saves and loads them. The networks
output logits; softmax belongs to the loss and to prediction.

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
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from langchain_core.embeddings import Embeddings

from langchain_kd_memory._validate import check_int, check_number, optional
from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.checkpoint import SavedCheckpoint, load_checkpoint, save_checkpoint
from langchain_kd_memory.config import REMOVED, DistillationConfig
from langchain_kd_memory.embeddings import Embedder, EmbedderIdentity
from langchain_kd_memory.episodes import Episode, RewardEstimate, TrainingArrays, validate_query
from langchain_kd_memory.errors import (
    CheckpointError,
    ConfigError,
    EmbeddingDimensionError,
    EmbeddingError,
    InsufficientDataError,
    InvalidArgumentError,
    InvalidEpisodeError,
    NotTrainedError,
)
from langchain_kd_memory.models import (
    StudentNetwork,
    TeacherNetwork,
    ValueNetwork,
    count_parameters,
    predict_logits,
    tensor_shapes,
)
from langchain_kd_memory.training import TrainedNetworks, train

logger = logging.getLogger(__name__)

Memories = TrainingArrays | Sequence[Episode | Mapping[str, Any]]
"""What `distill_from_memories` accepts: stored arrays, episodes, or seed-style dicts."""


# ----------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class _Trained(TrainedNetworks):
    """Everything prediction needs, swapped in as one object when training finishes."""

    identity: EmbedderIdentity
    metrics: dict[str, Any]
    version: int | None = None  # of the checkpoint it was loaded from or saved as


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
        self._embedder: Embedder | None = None
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
    def embedder(self) -> Embedder:
        """The one path from text to vectors, over `embeddings=` (created on first use)."""
        if self._embedder is None:
            self._embedder = Embedder(self._embeddings)
        return self._embedder

    @property
    def embeddings(self) -> Embeddings:
        """The LangChain embedder for text input."""
        return self.embedder.embeddings

    @property
    def embedder_identity(self) -> EmbedderIdentity:
        """Name and dimension of the embedder this model works with."""
        return self.embedder.identity

    @property
    def is_trained(self) -> bool:
        """Whether a trained (or loaded) model is ready to predict."""
        return self._state is not None

    @property
    def metrics(self) -> dict[str, Any]:
        """The results of the training that produced the current model."""
        return dict(self._require().metrics)

    @property
    def checkpoint_version(self) -> int | None:
        """The checkpoint version this model was loaded from or last saved as.

        None when it was trained and not saved since.
        """
        return self._require().version

    @property
    def student_beats_mean(self) -> bool:
        """Whether the student's validation MAE beat predicting the mean training reward.

        False means the query alone carried no usable signal in the last training: its
        predictions are then no better than the prior. True when no validation was run.
        """
        return self._beats_mean("student")

    @property
    def teacher_beats_mean(self) -> bool:
        """Whether the teacher's validation MAE beat predicting the mean training reward.

        False means its estimates of (query, response) are no better than the prior, so they
        should not rank anything. True when no validation was run.
        """
        return self._beats_mean("teacher")

    def _beats_mean(self, network: str) -> bool:
        validation = self._require().metrics.get("validation") or {}
        error, mean = validation.get(f"{network}_mae"), validation.get("mean_mae")
        return error is None or mean is None or error < mean

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

    # ------------------------------------------------------------------ data

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
        if self.config.privileged:
            queries, responses = self.embedder.episodes(rated)  # one embedder call
        else:  # the response is never used: do not pay for embedding it
            queries = self.embedder.texts([e.query for e in rated])
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
        rated, skipped = check_int("rated", rated, low=0), check_int("skipped", skipped, low=0)
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
            A dict with
            - "teacher", "student": each network's history: "train_losses", "val_losses",
              "epochs_run", "best_epoch", "best_val_loss", "seconds", "params", and
              "components": {"train": {term: [one mean per epoch]}, "val": {...}} for the
              terms "loss", "kd" (the student only), "label" and "regression"
              (`training.History` says what each is).
            - "validation": the validation MAE of both networks and of predicting the mean
              training reward ("teacher_mae", "student_mae", "mean_mae"; None without a
              validation split).
            - "num_train", "num_val", "num_skipped", "compression_ratio", "binning", "seed",
              "device", "batch_size", "cross_fit_folds", "warm_started" and "seconds".

        Raises:
            InsufficientDataError: Fewer than `min_episodes` rated episodes.
            InvalidArgumentError: Invalid memories or arguments.
            EmbeddingDimensionError: Arrays of another dimension than the embedder's.
            EmbeddingError: The embedder failed on episodes' text.
        """
        epochs = optional(check_int, "num_epochs", num_epochs, low=1)
        batch = optional(check_int, "batch_size", batch_size, low=1)
        fraction = optional(check_number, "validation_fraction", validation_fraction, low=0.0)
        if fraction is not None and not fraction < 0.5:
            raise InvalidArgumentError(f"validation_fraction must lie in [0, 0.5), got {fraction}")
        with self._train_lock:
            start = time.perf_counter()
            data, skipped = self._training_arrays(memories)
            self.check_trainable(len(data), skipped)
            self._check_dimension(data.dimension)
            networks, results = train(
                data, self.config, epochs=epochs, batch_size=batch,
                validation_fraction=fraction, previous=self._state, quiet=quiet,
            )
            results.update(num_skipped=skipped, seconds=time.perf_counter() - start)
            self._state = _Trained(
                networks.teacher, networks.student, networks.binner, networks.embedding_dim,
                networks.config, self.embedder_identity, results,
            )
        logger.info(
            "trained on %d episodes in %.1fs; validation MAE: %s",
            results["num_train"], results["seconds"], results["validation"],
        )
        return results

    # ------------------------------------------------------------------ prediction

    def _estimates(
        self, state: _Trained, network: ValueNetwork, inputs: tuple[torch.Tensor, ...]
    ) -> list[RewardEstimate]:
        """The network's estimates.

        The value head gives the mean (within the bins' range) and the uncertainty; the
        distribution head gives the distribution and its spread.
        """
        probs = F.softmax(predict_logits(network, inputs).double(), dim=1).cpu().numpy()
        with torch.no_grad():
            values, uncertainty = (t.cpu().numpy() for t in network.value(*inputs))
        expected = np.clip(values, state.binner.low, state.binner.high)
        std = state.binner.std(probs)
        centers = state.binner.centers
        return [
            RewardEstimate(
                expected=float(expected[i]), std=float(std[i]), distribution=probs[i],
                bin_centers=centers, predicted_bin=int(probs[i].argmax()),
                uncertainty=float(uncertainty[i]),
            )
            for i in range(len(probs))
        ]

    def _as_matrix(self, vectors: object, name: str) -> torch.Tensor:
        """Given vectors, (n, dim) or (dim,) for one, checked by the embedder's one rule.

        Raises:
            EmbeddingDimensionError: Another dimension than the embedder's (the model's).
            EmbeddingError: Not a numeric (n, dim) array, or not finite.
        """
        dim = self.embedder.dimension
        source = f"{name} (of shape (n, {dim}) or ({dim},))"
        try:
            matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise EmbeddingError(f"{source} is not a numeric array: {exc}") from exc
        return torch.from_numpy(self.embedder.check(matrix, len(matrix), source))

    def _inputs(
        self, state: _Trained, query_embeddings: object, response_embeddings: object, model: str
    ) -> tuple[ValueNetwork, tuple[torch.Tensor, ...]]:
        """The network `model` names and its checked input tensors."""
        query = self._as_matrix(query_embeddings, "query_embeddings")
        if model == "student":
            return state.student, (query,)
        if model != "teacher":
            raise InvalidArgumentError(f"model must be 'student' or 'teacher', got {model!r}")
        response = (
            torch.zeros_like(query) if response_embeddings is None
            else self._as_matrix(response_embeddings, "response_embeddings")
        )
        if response.shape != query.shape:
            raise InvalidArgumentError(
                f"{len(response)} response embeddings for {len(query)} queries"
            )
        return state.teacher, (query, response)

    def _predict(
        self, state: _Trained, query_embeddings: object, response_embeddings: object, model: str
    ) -> list[RewardEstimate]:
        return self._estimates(
            state, *self._inputs(state, query_embeddings, response_embeddings, model)
        )

    def expected_rewards(
        self, query_embeddings: np.ndarray, response_embeddings: np.ndarray | None = None,
        *, model: str = "student",
    ) -> np.ndarray:
        """The `expected` of `predict_embeddings`' estimates alone, shape (n,).

        Cheaper: no distribution and no uncertainty (what recall's re-ranking needs).
        """
        state = self._require()
        network, inputs = self._inputs(state, query_embeddings, response_embeddings, model)
        with torch.no_grad():
            values = network.expected(*inputs).cpu().numpy()
        return np.clip(values, state.binner.low, state.binner.high)

    def draw_values(
        self, query_embeddings: np.ndarray, response_embeddings: np.ndarray | None = None,
        *, model: str = "teacher", rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """One Thompson draw of the value of every row (what `rank_responses` explores with).

        All rows share one draw of the value head's weights from its posterior.

        Args:
            query_embeddings: Array of shape (n, dim), or (dim,) for one query.
            response_embeddings: For the teacher, as in `predict_embeddings`.
            model: "teacher" (the default) or "student".
            rng: Where the draw comes from; a fresh unseeded generator if None.

        Returns:
            The drawn values, shape (n,), in reward units.
        """
        state = self._require()
        network, inputs = self._inputs(state, query_embeddings, response_embeddings, model)
        seed = int((rng if rng is not None else np.random.default_rng()).integers(2**63 - 1))
        with torch.no_grad():
            return network.draw(*inputs, generator=torch.Generator().manual_seed(seed)).numpy()

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
        return self._predict(state, self.embedder.texts(list(queries)), None, "student")

    def get_student_prediction(self, query: str) -> RewardEstimate:
        """The student's estimate of the reward of `query` (query alone, before any response)."""
        return self.score_batch([query])[0]

    def _embed_episode(self, query: str, response: str) -> np.ndarray:
        validate_query(query)
        if not isinstance(response, str):
            raise InvalidEpisodeError(f"response must be a str, got {type(response).__name__}")
        return self.embedder.texts([query, response])  # one call; "" is a zero vector

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

    def save_models(self, prefix: str, *, namespace: str | None = None) -> SavedCheckpoint:
        """Save a new checkpoint version atomically (see `checkpoint.save_checkpoint`).

        Args:
            prefix: Path prefix of the checkpoint files.
            namespace: The namespace the model was trained on, recorded in the manifest (None:
                every namespace, or not a memory's model).

        Returns:
            {"version": the version number saved, "teacher": path, "student": path,
            "config": manifest path}.
        """
        state = self._require()
        saved = save_checkpoint(
            prefix,
            {"teacher": state.teacher.state_dict(), "student": state.student.state_dict()},
            embedder=state.identity,
            config=state.config.to_dict(),
            binning=state.binner.to_dict(),
            dims={"embedding_dim": state.embedding_dim, "num_bins": state.binner.num_bins},
            metrics=state.metrics,
            namespace=namespace,
        )
        with self._train_lock:
            if self._state is state:
                self._state = replace(state, version=saved["version"])
        return saved

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
        teacher, student = _meta_networks(saved.dim, config)
        teacher.load_state_dict(checkpoint.weights["teacher"], assign=True)  # shapes checked
        student.load_state_dict(checkpoint.weights["student"], assign=True)
        with self._train_lock:
            self.config = config
            self._state = _Trained(
                teacher.eval(), student.eval(), saved.binner, saved.dim, config, identity,
                dict(checkpoint.manifest.get("metrics", {})), checkpoint.version,
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
        teacher, student = _meta_networks(self.dim, self.config)
        return {"teacher": tensor_shapes(teacher), "student": tensor_shapes(student)}


def _meta_networks(dim: int, config: DistillationConfig) -> tuple[TeacherNetwork, StudentNetwork]:
    """The networks `config` describes, on the meta device: shapes only, nothing drawn."""
    teacher = TeacherNetwork.of(dim, config, device="meta")
    return teacher, StudentNetwork.of(dim, config, device="meta")


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
