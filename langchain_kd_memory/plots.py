"""Figures of the value model as PNGs: calibration, training curves, one predicted distribution.

matplotlib is optional (``pip install 'langchain-kd-memory[plots]'``): it is imported when a
figure is drawn, and figures are drawn on matplotlib's Agg canvas without `pyplot`, so no
global backend or figure state of the caller is touched.

Example:
    .. code-block:: python

        from langchain_kd_memory import DistilledEpisodicMemory
        from langchain_kd_memory.plots import write_all

        memory = DistilledEpisodicMemory(persist_directory="./kd_memory")
        memory.consolidate()
        for path in write_all(memory, "plots", query="Can I get a refund?"):
            print(path)
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from langchain_kd_memory._validate import check_int, check_number
from langchain_kd_memory.config import DistillationConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.episodes import RewardEstimate, TrainingArrays, validate_query
from langchain_kd_memory.errors import InsufficientDataError, InvalidArgumentError

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from langchain_kd_memory.memory import DistilledEpisodicMemory

CALIBRATION_FILE = "calibration.png"
TRAINING_CURVES_FILE = "training_curves.png"
DISTRIBUTION_FILE = "distribution.png"
DPI = 100
REWARD_UNITS = "reward units"
CALIBRATION_GROUPS = 10
"""The calibration curve averages the held-out episodes in up to this many groups..."""
CALIBRATION_GROUP_SIZE = 10
"""... of at least about this many episodes each (fewer groups on little data)."""


def _figure(width: float, height: float) -> Figure:
    """A new figure on the Agg canvas; ImportError with the fix if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "the plots need matplotlib: pip install 'langchain-kd-memory[plots]'"
        ) from exc
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Figure, path: str | Path) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InvalidArgumentError(f"figures are written as PNG: give a .png path, got {path!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target


def _shorten(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...")


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class HeldOutPredictions:
    """Expected rewards predicted for episodes the predicting model never saw.

    Attributes:
        actual: The episodes' rewards, shape (n,).
        teacher: The teacher's expected reward for each (it reads the response too when
            `privileged`), shape (n,).
        student: The student's expected reward for each (query alone), shape (n,).
        num_train: How many other episodes the model was trained on.
        train_mean: Their mean reward: the prediction of the "predict the mean" baseline.
        privileged: Whether the teacher saw the responses.
        seed: Seed of the split and of the training.
    """

    actual: np.ndarray
    teacher: np.ndarray
    student: np.ndarray
    num_train: int
    train_mean: float
    privileged: bool
    seed: int


def held_out_predictions(
    arrays: TrainingArrays,
    config: DistillationConfig,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    num_epochs: int | None = None,
    embeddings: Embeddings | None = None,
    quiet: bool = True,
) -> HeldOutPredictions:
    """Train a fresh model on part of the rated episodes and predict the rest.

    The saved model cannot be evaluated honestly on its own training episodes, and its
    validation split was used for early stopping, so calibration comes from a model with the
    same settings trained on `1 - holdout` of `arrays` (its own validation split, for early
    stopping, comes out of that part) and evaluated on the `holdout` it never saw.

    Args:
        arrays: Stored embeddings and rewards of rated episodes (`EpisodeStore.training_arrays`).
        config: Settings of the model to train (e.g. the saved model's `config`).
        holdout: Share of the episodes held out, in (0, 0.5].
        seed: Seed of the split and of the training.
        num_epochs: Most epochs per network; the config's if None.
        embeddings: The embedder the vectors come from (for its identity); the local default
            if None.
        quiet: Hide the training progress bars.

    Raises:
        InsufficientDataError: Too few episodes to hold some out and still train.
    """
    if not isinstance(arrays, TrainingArrays):
        raise InvalidArgumentError(f"arrays must be TrainingArrays, got {type(arrays).__name__}")
    if check_number("holdout", holdout, low=0.0, high=0.5) == 0.0:
        raise InvalidArgumentError(f"holdout must be > 0, got {holdout!r}")
    check_int("seed", seed, low=0)
    n = len(arrays)
    n_test = max(1, round(n * holdout))
    if n - n_test < config.min_episodes:
        raise InsufficientDataError(
            f"{n} rated episodes: holding out {n_test} leaves {n - n_test} to train on, and "
            f"training needs {config.min_episodes}; rate more episodes or lower holdout"
        )
    order = np.random.default_rng(seed).permutation(n)
    test, train = arrays.subset(np.sort(order[:n_test])), arrays.subset(np.sort(order[n_test:]))
    model = ModelDistillation.from_config(
        replace(config, seed=seed, warm_start=False), embeddings=embeddings
    )
    model.distill_from_memories(train, num_epochs=num_epochs, quiet=quiet)
    teacher = model.predict_embeddings(
        test.query_embeddings, test.response_embeddings, model="teacher"
    )
    student = model.predict_embeddings(test.query_embeddings)
    return HeldOutPredictions(
        actual=test.rewards.astype(np.float64),
        teacher=np.array([e.expected for e in teacher]),
        student=np.array([e.expected for e in student]),
        num_train=len(train),
        train_mean=float(train.rewards.mean()),
        privileged=config.privileged,
        seed=seed,
    )


def _calibration_panel(
    ax: Axes,
    predicted: np.ndarray,
    data: HeldOutPredictions,
    name: str,
    limits: tuple[float, float],
) -> None:
    actual = data.actual
    mae = float(np.abs(predicted - actual).mean())
    baseline = float(np.abs(data.train_mean - actual).mean())
    r = float(np.corrcoef(predicted, actual)[0, 1]) if np.std(predicted) > 0 else float("nan")
    ax.plot(limits, limits, color="0.5", linestyle="--", linewidth=1, label="perfect (y = x)")
    ax.scatter(predicted, actual, s=14, alpha=0.5, label="one held-out episode")
    count = min(CALIBRATION_GROUPS, max(2, len(predicted) // CALIBRATION_GROUP_SIZE))
    groups = np.array_split(np.argsort(predicted), min(count, len(predicted)))
    ax.plot(
        [predicted[g].mean() for g in groups], [actual[g].mean() for g in groups],
        marker="o", color="C3",
        label=f"mean of each of {len(groups)} groups (sorted by prediction)",
    )
    ax.axhline(data.train_mean, color="C2", linewidth=1,
               label="mean training reward (the predict-the-mean baseline)")
    ax.set(xlim=limits, ylim=limits, aspect="equal")
    ax.set_title(f"{name}\nMAE {mae:.3f} (predict-the-mean {baseline:.3f}), Pearson r {r:.2f}")
    ax.set_xlabel(f"predicted expected reward ({REWARD_UNITS})")
    ax.set_ylabel(f"actual reward ({REWARD_UNITS})")


def plot_calibration(data: HeldOutPredictions, path: str | Path) -> Path:
    """Predicted vs actual reward of held-out episodes, teacher and student side by side.

    Returns:
        The PNG's path.
    """
    if not isinstance(data, HeldOutPredictions):
        raise InvalidArgumentError("data must come from held_out_predictions(...)")
    values = np.concatenate([data.actual, data.teacher, data.student])
    margin = 0.05 * max(float(np.ptp(values)), 1e-6)
    limits = (float(values.min()) - margin, float(values.max()) + margin)
    figure = _figure(11, 7)
    left, right = figure.subplots(1, 2)
    teacher_input = "query + response" if data.privileged else "query only"
    _calibration_panel(left, data.teacher, data, f"Teacher ({teacher_input})", limits)
    _calibration_panel(right, data.student, data, "Student (query only)", limits)
    right.legend(loc="lower right", fontsize="small")
    figure.suptitle(
        f"Calibration: predicted vs actual reward on {len(data.actual)} held-out episodes\n"
        f"(model retrained with the saved settings on the other {data.num_train} rated "
        f"episodes, seed {data.seed}; it never saw these)"
    )
    return _save(figure, path)


# ----------------------------------------------------------------------------- training curves


def _loss_names(config: DistillationConfig) -> tuple[str, str]:
    label = "CE to soft targets"
    if config.regression_weight > 0:
        label += f" + {config.regression_weight:g} x squared error"
    student = (
        f"{config.alpha:g} x T² KL(teacher || student) + {config.beta:g} x ({label}), "
        f"T = {config.temperature:g}"
    )
    return label, student


def _curve_panel(ax: Axes, history: dict[str, Any], title: str, validated: bool) -> None:
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: the figure exists

    epochs = np.arange(1, len(history["train_losses"]) + 1)
    ax.plot(epochs, history["train_losses"], marker="o", label="training split")
    if validated:
        ax.plot(epochs, history["val_losses"], marker="s", label="validation split")
    ax.axvline(
        history["best_epoch"], color="0.4", linestyle=":",
        label=f"best epoch {history['best_epoch']} (weights kept)",
    )
    ax.set_title(textwrap.fill(title, 60), fontsize="medium")  # two panels: keep it inside
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss per episode (nats)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")


def plot_training_curves(
    metrics: dict[str, Any], config: DistillationConfig, path: str | Path
) -> Path:
    """Loss per epoch of the teacher and the student, training and validation splits.

    Args:
        metrics: The results of `ModelDistillation.distill_from_memories` (also what a
            checkpoint stores and `ModelDistillation.metrics` returns).
        config: The settings the model was trained with (for the loss formulas in the titles).
        path: Where to write the PNG.

    Returns:
        The PNG's path.
    """
    try:
        teacher, student = dict(metrics["teacher"]), dict(metrics["student"])
        num_train, num_val = int(metrics["num_train"]), int(metrics["num_val"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"metrics lack the training histories: {exc}") from exc
    teacher_loss, student_loss = _loss_names(config)
    figure = _figure(12, 5)
    left, right = figure.subplots(1, 2)
    teacher_input = "query + response" if config.privileged else "query only"
    _curve_panel(left, teacher, f"Teacher ({teacher_input}): {teacher_loss}", num_val > 0)
    _curve_panel(right, student, f"Student (query only): {student_loss}", num_val > 0)
    split = (
        f"{num_train} training / {num_val} validation episodes"
        if num_val else f"{num_train} training episodes, no validation split"
    )
    figure.suptitle(f"Training curves of the current value model: loss per epoch ({split})")
    return _save(figure, path)


# ----------------------------------------------------------------------------- distribution


def std_band(estimate: RewardEstimate) -> tuple[float, float]:
    """The band expected ± 1 std, clipped to the span of the bins (rewards lie nowhere else)."""
    centers = estimate.bin_centers
    half = float(centers[1] - centers[0]) / 2 if len(centers) > 1 else 0.5
    bottom, top = float(centers[0]) - half, float(centers[-1]) + half
    return (max(bottom, estimate.expected - estimate.std),
            min(top, estimate.expected + estimate.std))


def plot_distribution(estimate: RewardEstimate, query: str, path: str | Path) -> Path:
    """The student's predicted reward distribution for one query, one bar per bin.

    Returns:
        The PNG's path.
    """
    if not isinstance(estimate, RewardEstimate):
        raise InvalidArgumentError(f"estimate must be a RewardEstimate, got {estimate!r}")
    validate_query(query)
    centers, probs = estimate.bin_centers, estimate.distribution
    width = float(centers[1] - centers[0]) if len(centers) > 1 else 1.0
    figure = _figure(10, 5)
    ax = figure.subplots()
    ax.bar(centers, probs, width=width * 0.9, color="C0", label="probability of the bin")
    ax.axvspan(*std_band(estimate), color="C1", alpha=0.15, zorder=0,
               label=f"expected ± 1 std ({estimate.std:.2f}), within the bins")
    ax.axvline(estimate.expected, color="C1", linewidth=2,
               label=f"expected reward {estimate.expected:.2f}")
    ax.set_xlabel(f"reward ({REWARD_UNITS}); bins {width:.3g} wide")
    ax.set_ylabel("probability")
    ax.set_title(
        f"Student's predicted reward distribution ({len(centers)} bins) for the query\n"
        f"“{_shorten(query, 100)}”"
    )
    ax.legend()
    return _save(figure, path)


# ----------------------------------------------------------------------------- all three


def write_all(
    memory: DistilledEpisodicMemory,
    out_dir: str | Path,
    *,
    query: str | None = None,
    namespace: str | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    num_epochs: int | None = None,
    quiet: bool = True,
) -> list[Path]:
    """Write calibration.png, training_curves.png and distribution.png for a trained memory.

    Args:
        memory: A memory whose value model is trained (or loaded).
        out_dir: Directory for the PNGs (created if needed).
        query: The query whose distribution is drawn; the first stored episode's if None.
        namespace: Whose rated episodes the calibration uses; the memory's if None.
        holdout: Share of rated episodes held out for calibration (see `held_out_predictions`).
        seed: Seed of the calibration split and training.
        num_epochs: Most epochs of the calibration training; the model's setting if None.
        quiet: Hide the calibration training's progress bars.

    Returns:
        The three paths: calibration, training curves, distribution.

    Raises:
        ImportError: matplotlib is not installed.
        NotTrainedError: The memory's value model is not trained.
        InsufficientDataError: Too few rated episodes for a held-out calibration.
    """
    _figure(1, 1)  # fail before training if matplotlib is missing
    ns = memory.resolve_namespace(namespace)
    if query is None:
        first = memory.store.list_episodes(ns, limit=1)
        if not first:
            raise InvalidArgumentError(f"namespace {ns!r} is empty: pass query=")
        query = first[0].query
    estimate = memory.score(query)  # NotTrainedError before anything else is done
    model = memory.distillation
    out = Path(out_dir)
    arrays = memory.store.training_arrays(namespace=ns, limit=memory.max_training_episodes)
    held_out = held_out_predictions(
        arrays, model.config, holdout=holdout, seed=seed, num_epochs=num_epochs,
        embeddings=memory.store.embeddings, quiet=quiet,
    )
    return [
        plot_calibration(held_out, out / CALIBRATION_FILE),
        plot_training_curves(model.metrics, model.config, out / TRAINING_CURVES_FILE),
        plot_distribution(estimate, query, out / DISTRIBUTION_FILE),
    ]
