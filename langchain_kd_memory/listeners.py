"""Who hears about a memory's episodes: rating listeners, and sources of pending episodes.

A `ConsolidationCallback` listens for new ratings to count them; a background writer is a
source of episodes not stored yet, which `record_feedback` asks first (and a deletion must
drop). Both are held weakly.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

RatingListener = Callable[[str], None]
"""Called with the namespace each time an episode there gets its first reward."""


class PendingEpisodes(Protocol):
    """Holds episodes not stored yet (e.g. a background writer's queue): rates or drops them."""

    def rate_pending(
        self, episode_id: str, reward: float, namespace: str | None = None
    ) -> Episode | None:
        """Give the pending episode (or trajectory) `episode_id` this reward.

        Returns:
            The episode as it will be stored (for a trajectory, its last step), or None if
            `episode_id` is not pending here (in `namespace`, if given).
        """

    def forget(self, ids: Iterable[str], namespace: str) -> set[str]:
        """Drop the pending runs of `namespace` named by these ids.

        Returns:
            The run and episode ids of the runs dropped.
        """

    def forget_namespace(self, namespace: str) -> int:
        """Drop the pending runs of `namespace`; how many were dropped."""


class Listeners:
    """The rating listeners and pending sources of one memory (thread-safe, weak references)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], RatingListener | None]] = []
        self._pending: weakref.WeakSet[PendingEpisodes] = weakref.WeakSet()

    def add_rating_listener(self, listener: RatingListener) -> None:
        """Call `listener(namespace)` on each new rating; a bound method is held weakly."""
        if not callable(listener):
            raise InvalidArgumentError("listener must be callable")
        ref: Callable[[], RatingListener | None] = (
            weakref.WeakMethod(listener) if inspect.ismethod(listener) else lambda: listener
        )
        with self._lock:
            self._listeners.append(ref)

    def remove_rating_listener(self, listener: RatingListener) -> None:
        """Stop calling `listener` (no error if it was not registered)."""
        with self._lock:
            self._listeners = [ref for ref in self._listeners if ref() not in (None, listener)]

    def notify_rated(self, namespaces: Sequence[str]) -> None:
        """Tell every listener of one new rating per entry of `namespaces` (errors are logged)."""
        if not namespaces:
            return
        with self._lock:
            self._listeners = [ref for ref in self._listeners if ref() is not None]
            listeners = [listener for ref in self._listeners if (listener := ref()) is not None]
        for namespace in namespaces:
            for listener in listeners:
                try:
                    listener(namespace)
                except Exception:
                    logger.exception("rating listener %r failed", listener)

    def add_pending_source(self, source: PendingEpisodes) -> None:
        """Let `rate_pending` and `forget_pending` ask `source` (held weakly)."""
        with self._lock:
            self._pending.add(source)

    def _sources(self) -> list[PendingEpisodes]:
        with self._lock:
            return list(self._pending)

    def rate_pending(
        self, episode_id: str, reward: float, namespace: str | None = None
    ) -> Episode | None:
        """Rate `episode_id` where it is pending; None if no source holds it."""
        for source in self._sources():
            pending = source.rate_pending(episode_id, reward, namespace)
            if pending is not None:
                return pending
        return None

    def forget_pending(self, ids: Iterable[str], namespace: str) -> set[str]:
        """Drop the pending runs of `namespace` with these ids everywhere (before deleting them).

        Returns:
            The run and episode ids of the runs dropped. The others (and any run that was
            being written) are in the store or nowhere: delete them there.
        """
        wanted = list(ids)
        return {key for source in self._sources() for key in source.forget(wanted, namespace)}

    def forget_pending_namespace(self, namespace: str) -> int:
        """Drop the pending runs of `namespace` everywhere (call it before deleting it)."""
        return sum(source.forget_namespace(namespace) for source in self._sources())
