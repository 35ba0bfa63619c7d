"""`RetrainTrigger`: the one decision "train this namespace's value model now".

`ConsolidationCallback` (inside the agent) and `ConsolidationWorker` (`kd-memory worker`, in a
process of its own) both ask it. A model is due once `every` episodes of its namespace (of every
namespace, for the shared model) got their first reward since it was last trained: the count
`EpisodeStore.count_rated` keeps, so a new reward for an episode already rated does not count.
The callback hears each new rating as it happens (`add`); the worker reads the store's counts
(`observe`). Both count the same thing.

With a model directory, the rated count at each training is kept beside the model's checkpoint
(``{checkpoint prefix}_trained.json``), so a worker started (or restarted) after an agent trained a
namespace does not train it again on the same ratings. The shared model's file is
``{model_dir}/value_model_trained.json`` and a namespace's lies under ``namespaces/{sha256}/``
(`value_models.checkpoint_prefix`): no namespace name, ``"*"`` included, can collide with it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from langchain_kd_memory._validate import check_int
from langchain_kd_memory.value_models import checkpoint_prefix

logger = logging.getLogger(__name__)

Key = str | None
"""A namespace, or None for the shared model."""


class RetrainTrigger:
    """Counts new ratings per model and says which models are due for training (thread-safe)."""

    def __init__(self, every: int, model_dir: Callable[[], str | None] | None = None) -> None:
        """Trigger a training after every `every` new ratings of a model.

        Args:
            every: New ratings (episodes rated for the first time) between two trainings.
            model_dir: Returns the model directory where the rated count at each training is
                kept (read at each use); None keeps nothing on disk.
        """
        self.every = check_int("every", every, low=1)
        self._model_dir = model_dir or (lambda: None)
        self._lock = threading.Lock()
        self._new: dict[Key, int] = {}
        self._observed: dict[Key, int] = {}

    def add(self, namespace: Key, count: int = 1) -> bool:
        """Count `count` new ratings of `namespace`'s model; whether it is due now."""
        with self._lock:
            self._new[namespace] = self._new.get(namespace, 0) + count
            return self._new[namespace] >= self.every

    def observe(self, namespace: Key, rated: int) -> bool:
        """Note the store's rated count of `namespace` (every namespace for None); whether due.

        The new ratings are those above the count at the model's last training.
        """
        new = rated - min(rated, self.trained_at(namespace))  # fewer now: some were deleted
        with self._lock:
            self._observed[namespace] = rated
            self._new[namespace] = new
            return new >= self.every

    def due(self) -> list[Key]:
        """The models due for training, in the order they were first counted."""
        with self._lock:
            return [key for key, new in self._new.items() if new >= self.every]

    def take(self, namespace: Key) -> int:
        """Forget the new ratings counted for `namespace` (its training starts); how many."""
        with self._lock:
            return self._new.pop(namespace, 0)

    @property
    def counted(self) -> int:
        """New ratings counted and not taken yet, all models together."""
        with self._lock:
            return sum(self._new.values())

    def trained(self, namespace: Key, rated: int | None = None) -> None:
        """Note that `namespace`'s model was trained on `rated` rated episodes.

        Args:
            namespace: The model (None: the shared one).
            rated: The store's rated count when its training started; the last `observe`d
                one if None.
        """
        with self._lock:
            self._new.pop(namespace, None)
            rated = self._observed.get(namespace, 0) if rated is None else rated
        path = self._state_path(namespace)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"rated": rated}, handle)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("could not note the training of %s in %s: %s", _name(namespace),
                           path, exc)

    def trained_at(self, namespace: Key) -> int:
        """The rated count at the model's last training (kept on disk), 0 if unknown."""
        path = self._state_path(namespace)
        if path is None:
            return 0
        try:
            rated = json.loads(path.read_text(encoding="utf-8")).get("rated", 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("ignoring an unreadable %s: %s", path, exc)
            return 0
        return rated if isinstance(rated, int) and not isinstance(rated, bool) else 0

    def _state_path(self, namespace: Key) -> Path | None:
        model_dir = self._model_dir()
        if model_dir is None:
            return None
        return Path(checkpoint_prefix(model_dir, namespace) + "_trained.json")


def _name(namespace: Key) -> str:
    return "the shared model" if namespace is None else f"namespace {namespace!r}"
