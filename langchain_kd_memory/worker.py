"""`ConsolidationWorker`: consolidate every namespace after N new ratings, in a process of its own.

Agents record episodes into a shared store (a Chroma server, or one persist directory) and
score with the checkpoints in a shared model directory; the worker watches the store and trains
each namespace's model when its `trigger.RetrainTrigger` says so (`every_n_ratings` episodes
rated for the first time since its last training, here or in an agent's callback), so training
never shares the agents' threads. Agents pick up each new checkpoint version within their
memory's `model_refresh_s` (see `value_models.py`). `kd-memory worker` runs it.

Example:
    .. code-block:: python

        memory = DistilledEpisodicMemory(store=EpisodeStore(client=http_client("localhost")),
                                         model_dir="/shared/models")
        ConsolidationWorker(memory, every_n_ratings=50).run()   # until stopped
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from langchain_kd_memory._validate import check_number
from langchain_kd_memory.consolidation import ConsolidationReport
from langchain_kd_memory.errors import InsufficientDataError, InvalidArgumentError, KDMemoryError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.trigger import RetrainTrigger

logger = logging.getLogger(__name__)


class ConsolidationWorker:
    """Watches a memory's store and consolidates each namespace after every N new ratings.

    "New ratings" are episodes rated for the first time since the namespace's model was last
    trained (`trigger.RetrainTrigger`, the same decision as `ConsolidationCallback`'s). The
    rated count at each training is kept beside the model's checkpoint, so a restarted worker
    goes on where it (or an agent's callback) stopped. A namespace with too few or all-equal
    rewards is skipped until it has more; any other failure is logged and retried at the next
    round.
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
            every_n_ratings: New ratings that trigger a namespace's consolidation.
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
        self.trigger = RetrainTrigger(every_n_ratings, lambda: memory.model_dir)
        self.poll_s = check_number("poll_s", poll_s, low=0.0)
        self.shared = shared

    @property
    def every_n_ratings(self) -> int:
        """New ratings that trigger a consolidation."""
        return self.trigger.every

    def due(self) -> list[str | None]:
        """The models due for training now (None: the shared one), after a look at the store."""
        store = self.memory.store
        counts = {namespace: store.count_rated(namespace) for namespace in store.namespaces()}
        for namespace, rated in counts.items():
            self.trigger.observe(namespace, rated)
        if self.shared:
            self.trigger.observe(None, sum(counts.values()))
        return self.trigger.due()

    def run_once(self) -> list[ConsolidationReport]:
        """Consolidate every model that is due; return the reports of those trained."""
        reports = []
        for namespace in self.due():
            name = "the shared model" if namespace is None else f"namespace {namespace!r}"
            try:
                report = self.memory.consolidate(namespace)
            except InsufficientDataError as exc:
                logger.info("not yet: %s", exc)
                continue
            except KDMemoryError:
                logger.exception("consolidation of %s failed; retrying next round", name)
                continue
            self.trigger.trained(namespace)
            reports.append(report)
            logger.info("trained %s on %d episodes (checkpoint version %s)", name,
                        report.episodes_used, report.checkpoint_version)
        return reports

    def run(self, stop: threading.Event | None = None,
            trained: Callable[[ConsolidationReport], object] | None = None) -> None:
        """Run rounds every `poll_s` seconds until `stop` is set (forever if None).

        `trained` is called with the report of each consolidation; a round under way when
        `stop` is set finishes first.
        """
        stop = stop or threading.Event()
        while not stop.is_set():
            for report in self.run_once():
                if trained is not None:
                    trained(report)
            stop.wait(self.poll_s)
