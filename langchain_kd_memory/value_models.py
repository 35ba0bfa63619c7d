"""The value models of a memory: one per namespace and a shared one, loaded lazily, kept fresh.

Checkpoints live under the memory's `model_dir`::

    {model_dir}/value_model_*                                   the shared model (all namespaces)
    {model_dir}/namespaces/{sha256(namespace)[:32]}/value_model_*   one per namespace

A namespace is answered by its own model, else by the shared one (which may be untrained). Loaded
namespace models live in a bounded LRU cache. Each model is reloaded when a newer checkpoint
appears on disk (its manifest is checked at most every `refresh_s` seconds), so agent processes
pick up what a worker trained without restarting.

A damaged checkpoint (corrupted, tampered with, truncated, another embedder) has one behaviour,
whatever the process saw before and however often it asks: the model answers with the newest
version of its own checkpoint that loads (the one in use, or an earlier version kept on disk),
with a warning in the log; when no version loads, every use of that model (`score`,
`rank_responses`, recall, `model_version`, `consolidate` of its namespace) raises the load's
error (`CheckpointError`, ...) until the checkpoint changes on disk. A namespace never falls back
to the shared model because its own checkpoint is damaged. A checkpoint in an older format (an
upgrade of this library) is not damaged: the model is untrained until `consolidate` trains a new
version.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from langchain_kd_memory.checkpoint import checkpoint_versions, manifest_path
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.errors import KDMemoryError, OutdatedCheckpointError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "value_model"
"""File-name stem of every checkpoint (see `checkpoint.py` for the files)."""
NAMESPACES_DIR = "namespaces"


def checkpoint_prefix(model_dir: str, namespace: str | None) -> str:
    """Where the model of `namespace` (None: the shared model) is saved under `model_dir`."""
    if namespace is None:
        return str(Path(model_dir) / CHECKPOINT_NAME)
    digest = hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:32]
    return str(Path(model_dir) / NAMESPACES_DIR / digest / CHECKPOINT_NAME)


@dataclass
class _Entry:
    model: ModelDistillation
    manifest_mtime: int | None  # of the checkpoint loaded; None when none was
    checked: float  # time.monotonic() of the last look at the disk
    error: KDMemoryError | None = None  # no version of the checkpoint on disk loads


class ValueModels:
    """Which value model answers for a namespace, and where each one is saved.

    Thread-safe. `shared` is the memory's `distillation`: trained on every namespace, it answers
    for namespaces without a model of their own, and it is the template (configuration and
    embedder) of the per-namespace models.
    """

    def __init__(
        self,
        shared: ModelDistillation,
        model_dir: Callable[[], str | None],
        *,
        prepare: Callable[[ModelDistillation], None],
        cache_size: int = 64,
        refresh_s: float = 5.0,
    ) -> None:
        """Manage `shared` and the namespace models of `model_dir`.

        Args:
            shared: The shared model (the memory's `distillation`).
            model_dir: Returns where checkpoints live (None: every model in memory only); read
                at each save and load, so the memory's `model_dir` can change.
            prepare: Called on each new namespace model before loading or training it (the
                memory sets the declared reward range there).
            cache_size: Namespace models kept loaded at most (least recently used go first).
            refresh_s: Seconds between two looks at a model's manifest on disk.
        """
        self.shared = shared
        self.model_dir = model_dir
        self.cache_size = cache_size
        self.refresh_s = refresh_s
        self._prepare = prepare
        self._lock = threading.RLock()
        self._entries: OrderedDict[str | None, _Entry] = OrderedDict()
        self._entries[None] = _Entry(shared, None, -float("inf"))

    def prefix(self, namespace: str | None) -> str | None:
        """The checkpoint prefix of `namespace`'s model (None: the shared one)."""
        model_dir = self.model_dir()
        return None if model_dir is None else checkpoint_prefix(model_dir, namespace)

    def own(self, namespace: str | None) -> ModelDistillation:
        """The namespace's own model (the shared one for None), loaded from disk if saved there.

        A namespace without a checkpoint gets a new untrained model configured like `shared`.

        Raises:
            CheckpointError: No version of the model's checkpoint on disk loads (or the
                error that loading it raised: `EmbedderMismatchError`, `ConfigError`).
        """
        with self._lock:
            entry = self._entries.get(namespace)
            if entry is None:
                model = ModelDistillation.from_config(self.shared.config, self.shared.embeddings)
                self._prepare(model)
                entry = _Entry(model, None, -float("inf"))
                self._entries[namespace] = entry
                self._evict()
            self._entries.move_to_end(namespace)
            self._refresh(namespace, entry)
            if entry.error is not None:
                raise entry.error.with_traceback(None)
            return entry.model

    def answering(self, namespace: str) -> ModelDistillation:
        """The model that answers for `namespace`: its own if trained, else the shared one."""
        own = self.own(namespace)
        return own if own.is_trained else self.own(None)

    def version(self, namespace: str | None) -> int | None:
        """The checkpoint version of the model `own(namespace)` holds (None if not from disk)."""
        model = self.own(namespace)
        return model.checkpoint_version if model.is_trained else None

    def saved(self, namespace: str | None) -> None:
        """Note that `own(namespace)` was just trained and saved (no need to reload it)."""
        with self._lock:
            entry = self._entries.get(namespace)
            if entry is not None:
                entry.manifest_mtime = self._mtime(namespace)
                entry.checked = time.monotonic()
                entry.error = None

    def forget(self, namespace: str) -> None:
        """Unload `namespace`'s own model and delete its checkpoint files (every version)."""
        with self._lock:
            self._entries.pop(namespace, None)
            prefix = self.prefix(namespace)
            if prefix is not None and Path(prefix).parent.exists():
                shutil.rmtree(Path(prefix).parent)

    def _evict(self) -> None:
        namespaced = [key for key in self._entries if key is not None]
        for key in namespaced[: max(0, len(namespaced) - self.cache_size)]:
            del self._entries[key]

    def _mtime(self, namespace: str | None) -> int | None:
        prefix = self.prefix(namespace)
        if prefix is None:
            return None
        try:
            return manifest_path(prefix).stat().st_mtime_ns
        except OSError:
            return None

    def _refresh(self, namespace: str | None, entry: _Entry) -> None:
        """Load the checkpoint on disk if its manifest changed since the last look.

        Looks at most every `refresh_s`. A checkpoint that does not load is not looked at again
        until it changes; the model keeps (or loads) the newest version that loads, else
        `entry.error` is set (see the module's docs).
        """
        now = time.monotonic()
        if now - entry.checked < self.refresh_s:
            return
        first_look, entry.checked = entry.checked == -float("inf"), now
        mtime = self._mtime(namespace)
        prefix = self.prefix(namespace)
        if prefix is None or (mtime == entry.manifest_mtime and not first_look):
            return
        entry.manifest_mtime = mtime
        name = "the shared model" if namespace is None else repr(namespace)
        try:  # also on a first look without a manifest: it refuses pickled weights there
            loaded = entry.model.load_models(prefix)
        except KDMemoryError as exc:
            if self._load_earlier(prefix, entry.model):
                logger.warning("value model of %s: answering with version %s: the newer "
                               "checkpoint does not load: %s", name,
                               entry.model.checkpoint_version, exc)
                entry.error = None
            elif isinstance(exc, OutdatedCheckpointError):  # an upgrade: untrained until retrained
                logger.warning("value model of %s: untrained until consolidate(): %s", name, exc)
                entry.error = None
            else:
                logger.warning("value model of %s unusable: %s", name, exc)
                entry.error = exc
            return
        entry.error = None
        if loaded:
            logger.info("loaded value model version %s of %s", entry.model.checkpoint_version,
                        name)

    @staticmethod
    def _load_earlier(prefix: str, model: ModelDistillation) -> bool:
        """Keep or load the newest version at `prefix` that loads; whether there is one."""
        in_use = (model.checkpoint_version or 0) if model.is_trained else 0
        for version in sorted(checkpoint_versions(prefix), reverse=True):
            if version <= in_use:
                return True
            try:
                if model.load_models(prefix, version=version):
                    return True
            except KDMemoryError:
                continue
        return model.is_trained
