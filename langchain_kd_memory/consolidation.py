"""One consolidation: read a namespace's stored rated episodes, train its value model, save it.

`DistilledEpisodicMemory.consolidate` (and through it the callback and the worker) runs this
under the memory's consolidation lock. Nothing is embedded: the vectors stored at `add` are used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from langchain_kd_memory.errors import CheckpointError, InsufficientDataError
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.value_models import ValueModels


@dataclass(frozen=True)
class ConsolidationReport:
    """What one consolidation did.

    Attributes:
        namespace: The namespace whose rated episodes were trained on (None: every namespace,
            for the shared model).
        episodes_used: How many rated episodes the model was trained on.
        duration_s: Wall-clock seconds, reading the arrays and saving included.
        metrics: The training results of `ModelDistillation.distill_from_memories`.
        checkpoint_version: Version of the checkpoint saved, or None without `model_dir`.
        checkpoint_path: Path of the checkpoint's manifest, or None without `model_dir`.
    """

    namespace: str | None
    episodes_used: int
    duration_s: float
    metrics: dict[str, Any] = field(repr=False)
    checkpoint_version: int | None = None
    checkpoint_path: str | None = None


def consolidate(
    store: EpisodeStore,
    models: ValueModels,
    namespace: str | None,
    *,
    limit: int,
    num_epochs: int | None = None,
    batch_size: int | None = None,
    quiet: bool = True,
) -> ConsolidationReport:
    """Train `namespace`'s model (None: the shared one) on its newest `limit` rated episodes.

    Raises:
        InsufficientDataError: Too few rated episodes, or all with the same reward.
        CheckpointError: The model directory cannot be written.
    """
    start = time.perf_counter()
    model = models.own(namespace)
    every = namespace is None  # the shared model: every namespace
    rated = store.count_rated(namespace, all_namespaces=every)
    unrated = store.count(namespace, all_namespaces=every) - rated
    model.check_trainable(min(rated, limit), unrated, namespace=namespace)
    arrays = store.training_arrays(namespace, limit=limit, all_namespaces=every)
    if np.all(arrays.rewards == arrays.rewards[0]):
        where = "all namespaces" if namespace is None else f"namespace {namespace!r}"
        raise InsufficientDataError(
            f"all {len(arrays)} rated episodes of {where} have the reward "
            f"{float(arrays.rewards[0])}: there is nothing to learn about which queries go "
            "better; record varied rewards (failures as well as successes)"
        )
    metrics = model.distill_from_memories(
        arrays, num_epochs=num_epochs, batch_size=batch_size, quiet=quiet
    )
    version, path = None, None
    prefix = models.prefix(namespace)
    if prefix is not None:
        try:
            Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the model directory {Path(prefix).parent}: {exc}; point "
                "model_dir at a writable directory"
            ) from exc
        saved = model.save_models(prefix, namespace=namespace)
        models.saved(namespace)
        version, path = saved["version"], saved["config"]
    return ConsolidationReport(
        namespace=namespace,
        episodes_used=len(arrays),
        duration_s=time.perf_counter() - start,
        metrics=metrics,
        checkpoint_version=version,
        checkpoint_path=path,
    )
