"""`ConsolidationWorker`: consolidate every namespace after N new ratings, in a process of its own.

Agents record episodes into a shared store (a Chroma server, or one persist directory) and
score with the checkpoints in a shared model directory; the worker watches the store and trains
each namespace's model when it has gathered `every_n_ratings` new rated episodes, so training
never shares the agents' threads. Agents pick up each new checkpoint version within their
memory's `model_refresh_s` (see `value_models.py`). `kd-memory worker` runs it.

Example:
    .. code-block:: python

        memory = DistilledEpisodicMemory(store=EpisodeStore(client=http_client("localhost")),
                                         model_dir="/shared/models")
        ConsolidationWorker(memory, every_n_ratings=50).run()   # until stopped
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from langchain_kd_memory._validate import check_int, check_number
from langchain_kd_memory.consolidation import ConsolidationReport
from langchain_kd_memory.errors import InsufficientDataError, InvalidArgumentError, KDMemoryError
from langchain_kd_memory.memory import DistilledEpisodicMemory

logger = logging.getLogger(__name__)

STATE_FILE = "worker_state.json"
"""In the model directory: rated episodes per namespace at its last consolidation."""
SHARED = "*"
"""The state key of the shared model (trained on every namespace)."""


class ConsolidationWorker:
    """Watches a memory's store and consolidates each namespace after every N new ratings.

    "New ratings" are rated episodes added since the namespace's last consolidation (counted
    with `count_rated`; a re-rated episode does not count again). The counts at the last
    consolidation are kept in `{model_dir}/worker_state.json`, so a restarted worker goes on
    where it stopped. A namespace with too few or all-equal rewards is skipped until it has
    more; any other failure is logged and retried at the next round.
    """

    def __init__(
        self,
        memory: DistilledEpisodicMemory,
        *,
        every_n_ratings: int = 50,
        poll_s: float = 5.0,
        shared: bool = False,
    ) -> None:
        """Create the worker.

        Args:
            memory: Its store and model directory are the agents'.
            every_n_ratings: New rated episodes that trigger a namespace's consolidation.
            poll_s: Seconds between two looks at the store.
            shared: Also train the shared model (all namespaces) after every N new ratings
                across the store.
        """
        if not isinstance(memory, DistilledEpisodicMemory):
            raise InvalidArgumentError(
                f"memory must be a DistilledEpisodicMemory, got {type(memory).__name__}"
            )
        if memory.model_dir is None:
            raise InvalidArgumentError("the worker needs a memory with a model_dir to save to")
        self.memory = memory
        self.every_n_ratings = check_int("every_n_ratings", every_n_ratings, low=1)
        self.poll_s = check_number("poll_s", poll_s, low=0.0)
        self.shared = shared
        self._state_path = Path(memory.model_dir) / STATE_FILE
        self._state = self._load_state()

    def _load_state(self) -> dict[str, int]:
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring an unreadable %s: %s", self._state_path, exc)
            return {}
        if not isinstance(state, dict):
            return {}
        return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, int)}

    def _save_state(self) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._state_path.parent, prefix=".worker_state.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self._state, handle, sort_keys=True)
        os.replace(tmp, self._state_path)

    def due(self) -> list[tuple[str | None, int]]:
        """(namespace, rated count) of each model due for training (None: the shared one)."""
        store = self.memory.store
        due: list[tuple[str | None, int]] = []
        total = 0
        for namespace in store.namespaces():
            rated = store.count_rated(namespace)
            total += rated
            if rated - self._state.get(namespace, 0) >= self.every_n_ratings:
                due.append((namespace, rated))
        if self.shared and total - self._state.get(SHARED, 0) >= self.every_n_ratings:
            due.append((None, total))
        return due

    def run_once(self) -> list[ConsolidationReport]:
        """Consolidate every model that is due; return the reports of those trained."""
        reports = []
        for namespace, rated in self.due():
            key = SHARED if namespace is None else namespace
            try:
                reports.append(self.memory.consolidate(namespace))
            except InsufficientDataError as exc:
                logger.info("not yet: %s", exc)
                continue
            except KDMemoryError:
                logger.exception("consolidation of %s failed; retrying next round", key)
                continue
            self._state[key] = rated
            self._save_state()
            logger.info("trained %s on %d rated episodes", key, rated)
        return reports

    def run(self, stop: threading.Event | None = None) -> None:
        """Run rounds every `poll_s` seconds until `stop` is set (forever if None)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self.run_once()
            stop.wait(self.poll_s)
