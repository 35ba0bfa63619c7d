"""`BackgroundWriter`: recording a finished run costs the agent a queue put, not an embedding.

`ConsolidationCallback` and `EpisodicMemoryMiddleware` hand each finished run (its episodes) to
the memory's writer and return. One writer thread per memory (shared by every recorder over
that memory) takes whatever is queued and stores it with ONE `memory.add_episodes` call (one
embedder call, one Chroma write per namespace), so the busier the agents, the larger the
batches and the cheaper each episode.

Guarantees and policies:

- **Queue full** (`max_queue` runs waiting): `submit` blocks up to `put_timeout` seconds for
  room, then drops the run, logs a warning and counts it (`status.dropped`). An agent never
  waits longer than `put_timeout` for its memory. A dropped run never reaches the journal.
- **A failed write** is retried with backoff (`retry_delays`, 0.1 s, 0.5 s then 2 s by default):
  `add` skips episodes already stored identically, so a retry never duplicates. After the last
  retry the run is counted as failed (`status.failed`, and in the recorder's status) and
  logged; with a journal it stays there (and pending: feedback for it is still accepted and
  queues it again) and is written at the next start. A run the store refuses (an id stored
  with other content, a reward outside the namespace's range) is not retried; the other runs of
  its batch are written without it. Nothing raises into the agent.
- **`flush()`** waits until every run submitted before the call is written (or failed);
  interpreter exit (atexit) does the same, for up to `exit_timeout` seconds.
- **Feedback flows one way**: `memory.record_feedback(run_id, reward)` asks the writer first
  (`rate_pending`); a run still queued gets the reward before it is written, a run being written
  right after (through the store's rating update); only a run the writer no longer holds is
  rated in the store by the memory. Trajectory credit is `trajectories.feedback_rewards`.
- **`forget(ids)`** drops pending runs (for a deletion): queued ones never reach the store, one
  being written is waited for, so that the caller's delete in the store then finds it.
- **Recall** does not see a run until it is written (typically tens of milliseconds later).
- **Journal** (`journal=path`, optional): a write-ahead log with the contract written at the top
  of `journal.py`: each run (and each rating of a pending run) is appended before it is
  acknowledged (a failed append is not: the run is reported failed); runs and ratings in the
  store are checkpointed; the next writer opened on the journal replays only what is not
  stored, so a killed process (SIGKILL, OOM kill, a crash) loses nothing it acknowledged and
  brings back nothing that was deleted or dropped. After a clean stop the journal is empty.
  `fsync=True` also survives a power loss or kernel crash, at the cost of a disk flush per run
  (see `benchmarks/bench_callback.py` for what each costs the agent). One writer at a time may
  use a journal (a lock on the file itself).
- **Without a journal**, a SIGKILL loses exactly the runs still queued or being written: the
  most recent ones (the queue is FIFO), each whole (a run's episodes are written in one
  `add`, all or none). Everything written before is in Chroma.

Example:
    .. code-block:: python

        writer = BackgroundWriter.for_memory(memory, journal="./kd_memory/runs.journal")
        callback = ConsolidationCallback(memory)   # shares the writer (and its journal)
        ...
        writer.flush()                             # or callback.flush() at the end of a script
"""

from __future__ import annotations

import atexit
import concurrent.futures.process  # noqa: F401 - see _drain_at_exit
import concurrent.futures.thread  # noqa: F401 - see _drain_at_exit
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from langchain_kd_memory._validate import check_int, check_number
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import (
    ConfigError,
    DuplicateEpisodeError,
    EpisodeNotFoundError,
    InvalidArgumentError,
    JournalError,
)
from langchain_kd_memory.journal import Journal, check_path
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.trajectories import feedback_rewards

logger = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 10_000
"""Runs waiting to be written before `submit` blocks (then drops)."""
DEFAULT_PUT_TIMEOUT_S = 1.0
"""Longest an agent waits for room in a full queue before its run is dropped."""
DEFAULT_MAX_BATCH = 256
"""Most episodes per `add_episodes` call (a run is never split)."""
DEFAULT_RETRY_DELAYS_S = (0.1, 0.5, 2.0)
"""Pauses before each retry of a failed write."""
DEFAULT_EXIT_TIMEOUT_S = 30.0
"""Longest interpreter exit waits for the queue to drain."""
IDLE_EXIT_S = 5.0
"""The writer thread ends after this long without work (a new run starts it again)."""

Report = Callable[[str, str, "BaseException | None"], None]
"""`report(event, run_id, error)`, event one of "queued", "written", "dropped", "failed"."""


@dataclass
class RecordingStatus:
    """What a recorder (callback or middleware) handed to the memory, in runs.

    Attributes:
        queued: Runs handed to the background writer (acknowledged).
        written: Runs stored (their episodes are in the memory).
        dropped: Runs dropped because the writer's queue stayed full (see `BackgroundWriter`).
        failed: Runs whose write failed (after the writer's retries, or inline), or that the
            journal could not hold (not acknowledged).
    """

    queued: int = 0
    written: int = 0
    dropped: int = 0
    failed: int = 0


@dataclass
class WriterStatus(RecordingStatus):
    """What a `BackgroundWriter` has done (a snapshot), in runs unless said otherwise.

    Attributes:
        replayed: Runs read back from the journal at start (written or failed like the others).
        forgotten: Pending runs dropped by `forget`.
        pending: Runs queued or being written now.
        batches: `add_episodes` calls that stored something.
        retries: Failed writes that were retried.
        journal: Path of the journal, or None.
        last_error: The latest write or journal error, or None.
    """

    replayed: int = 0
    forgotten: int = 0
    pending: int = 0
    batches: int = 0
    retries: int = 0
    journal: str | None = None
    last_error: BaseException | None = None


@dataclass(eq=False)
class _Run:
    """A run the writer holds, from `submit` (or replay) until it is stored or dropped."""

    run_id: str
    episodes: list[Episode]  # as they will be stored: feedback so far applied
    report: Report | None
    memory: DistilledEpisodicMemory | None  # kept alive while queued
    entries: list[int] = field(default_factory=list)  # journal entries: the run, its ratings
    replayed: bool = False
    in_flight: bool = False
    rated_in_flight: bool = False  # its rewards changed while it was being written
    parked: bool = False  # its write failed; journaled, waiting for a rating or the next start
    closing: bool = False  # stored or dropped: no more feedback; its `done` is being written

    @property
    def keys(self) -> set[str]:
        return {self.run_id, *(episode.id for episode in self.episodes)}


@dataclass(frozen=True)
class _Outcome:
    run: _Run
    error: BaseException | None = None
    permanent: bool = False  # the store refused it: retrying (or replaying) cannot help


def _rated(episodes: Sequence[Episode], target: str, reward: float) -> list[Episode]:
    """A run's episodes with the feedback `reward` for `target` applied."""
    rewards = feedback_rewards(target, reward, episodes)
    return [dataclasses.replace(e, reward=rewards[e.id]) if e.id in rewards else e
            for e in episodes]


# ----------------------------------------------------------------------------- writer

_REGISTRY: dict[int, BackgroundWriter] = {}
"""id(memory) -> its writer, until the memory is garbage-collected or the writer closed. The
writer holds its memory weakly while idle, so the entry does not keep the memory alive."""
_REGISTRY_LOCK = threading.Lock()
"""Guards `_REGISTRY` only: no file is opened, and nothing waits, while it is held."""
_LIVE: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


def _registered(memory: DistilledEpisodicMemory) -> BackgroundWriter | None:
    with _REGISTRY_LOCK:
        writer = _REGISTRY.get(id(memory))
    if writer is None or writer._memory() is not memory or writer._closed:
        return None
    return writer


class BackgroundWriter:
    """Stores finished runs on one background thread, in batches; see the module's docs.

    Get the memory's writer with `BackgroundWriter.for_memory(memory)` (recorders do); create
    one yourself first to choose its settings. Writers are thread-safe.
    """

    def __init__(
        self,
        memory: DistilledEpisodicMemory,
        *,
        journal: str | os.PathLike[str] | None = None,
        fsync: bool = False,
        max_queue: int = DEFAULT_MAX_QUEUE,
        put_timeout: float = DEFAULT_PUT_TIMEOUT_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT_S,
    ) -> None:
        """Create the memory's writer; with a journal, replay what it holds.

        Args:
            memory: Where runs are stored.
            journal: Path of the journal (see the module's docs); None for none.
            fsync: fsync the journal after each entry (survives power loss).
            max_queue: Runs waiting before `submit` blocks.
            put_timeout: Seconds `submit` waits for room in a full queue before dropping.
            max_batch: Most episodes per `add_episodes` call.
            retry_delays: Pauses (seconds) before each retry of a failed write.
            exit_timeout: Seconds interpreter exit waits for the queue to drain.

        Raises:
            ConfigError: The memory already has a writer; the journal path is unusable (a
                directory, a FIFO, a device, unwritable, ...) or in use by another writer.
            InvalidArgumentError: An invalid option.
        """
        if not isinstance(memory, DistilledEpisodicMemory):
            raise InvalidArgumentError(
                f"memory must be a DistilledEpisodicMemory, got {type(memory).__name__}"
            )
        self._memory = weakref.ref(memory)
        self.fsync = bool(fsync)
        self.max_queue = check_int("max_queue", max_queue, low=1)
        self.put_timeout = check_number("put_timeout", put_timeout, low=0.0)
        self.max_batch = check_int("max_batch", max_batch, low=1)
        self.retry_delays = tuple(check_number("retry_delays", d, low=0.0) for d in retry_delays)
        self.exit_timeout = check_number("exit_timeout", exit_timeout, low=0.0)
        self._cond = threading.Condition()
        self._rating = threading.Lock()  # one rating of a pending run at a time
        self._queue: deque[_Run] = deque()
        self._index: dict[str, _Run] = {}  # run ids and episode ids of the runs held
        self._reserved = 0  # queue places taken by runs being journaled
        self._submitted = 0
        self._finished = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._status = WriterStatus()
        self._journal: Journal | None = None
        path = None if journal is None else check_path(journal)
        if _registered(memory) is not None:
            raise ConfigError(
                "this memory already has a writer: use BackgroundWriter.for_memory(memory), "
                "or create the writer before any callback or middleware over the memory"
            )
        opened = None if path is None else Journal(path, fsync=self.fsync)
        with _REGISTRY_LOCK:
            existing = _REGISTRY.get(id(memory))
            if existing is not None and existing._memory() is memory and not existing._closed:
                if opened is not None:
                    opened.close()
                raise ConfigError("this memory already has a writer: use for_memory(memory)")
            _REGISTRY[id(memory)] = self
        self._finalizer = weakref.finalize(memory, self._unregister, id(memory))
        self._finalizer.atexit = False  # at exit the drain needs the journal open to finish
        _LIVE.add(self)
        memory.add_pending_source(self)
        if opened is not None:
            self._attach(opened)

    @classmethod
    def for_memory(
        cls, memory: DistilledEpisodicMemory, *, journal: str | os.PathLike[str] | None = None
    ) -> BackgroundWriter:
        """The memory's writer, created (with default settings) if it has none.

        Args:
            memory: The memory.
            journal: A journal the writer must use: opened (and replayed) if the writer has
                none yet.

        Raises:
            ConfigError: The writer already uses another journal, or `journal` is unusable or
                in use.
        """
        path = None if journal is None else check_path(journal)
        writer = _registered(memory)
        if writer is None:
            try:
                return cls(memory, journal=path)
            except ConfigError:
                writer = _registered(memory)  # another thread was first: use its writer
                if writer is None:
                    raise
        if path is not None:
            writer.use_journal(path)
        return writer

    def use_journal(self, journal: str | os.PathLike[str]) -> None:
        """Journal from now on (replaying what the file holds); no-op if it already does.

        Raises:
            ConfigError: The writer uses another journal, or this one is unusable or in use.
        """
        path = check_path(journal)
        if self._journal is None:
            try:
                opened = Journal(path, fsync=self.fsync)
            except ConfigError:  # in use: maybe by this writer, opened meanwhile by a thread
                if self._journal is None:
                    raise
            else:
                with self._cond:
                    if self._journal is None:
                        self._attach(opened)
                        return
                opened.close()
        current = self._journal.path
        if path != current and not (path.exists() and os.path.samefile(path, current)):
            raise ConfigError(
                f"this memory's writer journals to {str(current)!r}, not {str(path)!r}: pass "
                "the same journal to every recorder of the memory"
            )

    @property
    def memory(self) -> DistilledEpisodicMemory:
        """The memory runs are stored in.

        Raises:
            ReferenceError: The memory was garbage-collected (nothing was pending then: a
                queued run keeps its memory alive).
        """
        memory = self._memory()
        if memory is None:
            raise ReferenceError("the writer's memory no longer exists")
        return memory

    def _unregister(self, key: int) -> None:
        """Stop being the memory's writer and release the journal (close, or memory gone)."""
        with _REGISTRY_LOCK:
            if _REGISTRY.get(key) is self:
                del _REGISTRY[key]
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._journal is not None:
            self._journal.close()

    # ----------------------------------------------------------------- status

    @property
    def journal(self) -> Path | None:
        """Path of the journal, or None."""
        return None if self._journal is None else self._journal.path

    @property
    def status(self) -> WriterStatus:
        """A snapshot of the counters."""
        with self._cond:
            return dataclasses.replace(
                self._status, pending=self._submitted - self._finished,
                journal=None if self._journal is None else str(self._journal.path),
            )

    # ----------------------------------------------------------------- submit

    def submit(
        self, episodes: Sequence[Episode], *, run_id: str | None = None,
        report: Report | None = None,
    ) -> bool:
        """Queue one run's episodes (journaled first, if there is a journal).

        Blocks up to `put_timeout` seconds while the queue is full, then drops the run (a
        warning is logged and `status.dropped` counts it).

        Args:
            episodes: The run's episodes, written together (all or none).
            run_id: The run's id (the first episode's id if None); feedback may name it.
            report: Called from the writer's thread with ("written" | "failed", run_id,
                error) once the run's fate is known.

        Returns:
            True if the run was queued (acknowledged), False if it was dropped.

        Raises:
            JournalError: The journal could not hold the run: it is not acknowledged, not
                queued, and counted in `status.failed` (recorders report it as failed).
        """
        if not episodes:
            return True
        run = _Run(run_id or episodes[0].id, list(episodes), report, self.memory)
        with self._cond:
            room = self._cond.wait_for(
                lambda: self._closed or len(self._queue) + self._reserved < self.max_queue,
                self.put_timeout,
            )
            if room and not self._closed:
                self._reserved += 1
            else:
                self._status.dropped += 1
                dropped = self._status.dropped
                room = False
        if not room:
            logger.warning(
                "episodic memory writer: %s; run %s dropped (%d dropped so far)",
                "closed" if self._closed else f"queue is full ({self.max_queue} runs) after "
                f"waiting {self.put_timeout:.2f}s", run.run_id, dropped,
            )
            return False
        try:
            if self._journal is not None:
                run.entries.append(self._journal.append(
                    "run", id=run.run_id, episodes=[e.to_dict() for e in run.episodes]))
        except JournalError as exc:
            with self._cond:
                self._reserved -= 1
                self._status.failed += 1
                self._status.last_error = exc
                self._cond.notify_all()
            logger.error("episodic memory writer: run %s not recorded: %s", run.run_id, exc)
            raise
        with self._cond:
            self._reserved -= 1
            self._status.queued += 1
            self._enqueue([run])
        return True

    def _enqueue(self, runs: Iterable[_Run]) -> None:
        """Queue runs and make sure the thread runs (the caller holds the condition)."""
        for run in runs:
            run.parked = False
            run.memory = self.memory
            self._queue.append(run)
            for key in run.keys:
                self._index[key] = run
            self._submitted += 1
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="kd-memory-writer", daemon=True
            )
            self._thread.start()
        self._cond.notify_all()

    # ----------------------------------------------------------------- flush

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every run submitted before this call is written (or has failed).

        Returns:
            True if so, False if `timeout` seconds passed first (or if called from the
            writer's own thread, e.g. by a rating listener, which cannot wait for itself).
        """
        if threading.current_thread() is self._thread:
            return False
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop: later runs are dropped; the journal is closed (and unlocked).

        Returns:
            Whether everything was written before `timeout`.
        """
        drained = self.flush(timeout)
        self._finalizer()  # calls _unregister once
        return drained

    # ----------------------------------------------------------------- feedback, forgetting

    def rate_pending(
        self, episode_id: str, reward: float, namespace: str | None = None
    ) -> Episode | None:
        """Give a run the writer holds this reward (`listeners.PendingEpisodes`).

        A queued run is stored with it, a run being written gets it right after it lands, a
        parked run (its write failed) is queued again with it. A run's id rates each step of a
        trajectory with its discounted share.

        Returns:
            The episode as it will be stored (a trajectory's last step), or None if the writer
            holds no run with this id (in `namespace`, if given).

        Raises:
            InvalidRewardError: The reward lies outside the namespace's reward range.
            JournalError: The journal could not hold the rating (not acknowledged).
        """
        target = str(episode_id)
        with self._rating:
            with self._cond:
                run = self._held(target)
                if run is None or (namespace is not None
                                   and run.episodes[0].namespace != namespace):
                    return None
                before = run.episodes
            rated = _rated(before, target, reward)
            self.memory.store.check_episodes(rated)  # the namespace's reward range, now
            entry = None if self._journal is None else self._journal.append(
                "rate", target=target, reward=reward)
            with self._cond:
                if self._held(target) is run:
                    run.episodes = rated
                    if entry is not None:
                        run.entries.append(entry)
                    if run.in_flight:
                        run.rated_in_flight = True
                    elif run.parked:
                        self._enqueue([run])
                    return next((e for e in rated if e.id == target), rated[-1])
            if entry is not None:  # stored meanwhile: the caller rates it in the store
                self._journal.done([entry])  # type: ignore[union-attr]
            return None

    def _held(self, key: str) -> _Run | None:
        """The run the writer holds under `key`, after the `done` of a closing one is written.

        (A closing run is stored; feedback for it goes to the store, but only once its `done`
        is written: replay must never set older rewards over a newer rating. The caller holds
        the condition.)
        """
        run = self._index.get(key)
        if run is not None and run.closing:
            self._cond.wait_for(lambda: self._index.get(key) is not run)
            run = self._index.get(key)
        return run

    def forget(self, ids: Iterable[str], namespace: str | None = None) -> set[str]:
        """Drop the pending runs with these run or episode ids (for a deletion).

        A run being written is waited for: once this returns, every run named is either
        dropped (never stored, never replayed) or in the store, where the caller deletes it.
        A run is dropped whole when any of its ids is named. With a `namespace`, only its runs
        are dropped (ids are unique within a namespace).

        Returns:
            The run and episode ids of the runs dropped.
        """
        wanted = {str(i) for i in ids}
        runs = self._forget(lambda run: namespace in (None, run.episodes[0].namespace)
                            and not wanted.isdisjoint(run.keys))
        return {key for run in runs for key in run.keys}

    def forget_namespace(self, namespace: str) -> int:
        """Drop the pending runs of a namespace (see `forget`); how many were dropped."""
        return len(self._forget(lambda run: run.episodes[0].namespace == namespace))

    def _forget(self, chosen: Callable[[_Run], bool]) -> set[_Run]:
        with self._cond:
            self._cond.wait_for(lambda: not any(
                (run.in_flight or run.closing) and chosen(run) for run in self._index.values()))
            # the queue too: the index holds one run per id, and two namespaces may share one
            runs = {run for run in (*self._index.values(), *self._queue) if chosen(run)}
            for run in runs:
                run.closing = True
                if run in self._queue:
                    self._queue.remove(run)
                    self._finished += 1  # it counts as done for flush()
                for key in run.keys:
                    if self._index.get(key) is run:
                        del self._index[key]
            self._status.forgotten += len(runs)
            self._cond.notify_all()
        if self._journal is not None and runs:
            self._journal.done([n for run in runs for n in run.entries])
        return runs

    # ----------------------------------------------------------------- the thread

    def _loop(self) -> None:
        while self._write_next():
            pass

    def _write_next(self) -> bool:
        """Write the next batch: as many queued runs as fit in `max_batch` episodes.

        Returns False (and the thread ends) after `IDLE_EXIT_S` seconds with nothing queued.
        Nothing of a batch outlives this call: its runs hold the memory, an idle writer must
        not.
        """
        with self._cond:
            if not self._queue:
                self._cond.wait_for(lambda: bool(self._queue), IDLE_EXIT_S)
            if not self._queue:
                self._thread = None
                return False
            batch = [self._queue.popleft()]
            size = len(batch[0].episodes)
            while self._queue and size + len(self._queue[0].episodes) <= self.max_batch:
                batch.append(self._queue.popleft())
                size += len(batch[-1].episodes)
            for run in batch:
                run.in_flight = True
            self._cond.notify_all()  # room in the queue
        outcomes: list[_Outcome] = []
        while batch:  # again for the runs rated while they were being written
            written = self._store(batch)
            with self._cond:
                batch = []
                for outcome in written:
                    if outcome.error is None and outcome.run.rated_in_flight:
                        outcome.run.rated_in_flight = False
                        batch.append(outcome.run)
                    else:
                        outcome.run.closing = outcome.error is None or outcome.permanent
                        outcomes.append(outcome)
        self._finish(outcomes)
        return True

    def _store(self, runs: list[_Run]) -> list[_Outcome]:
        """Write the runs (one `add_episodes` call for those not stored), retrying; their fate."""
        delays = iter(self.retry_delays)
        while True:
            try:
                self._write(runs)
            except ValueError as exc:  # the store refuses the batch: retrying cannot help
                if len(runs) > 1:  # find the culprit: write the runs one by one
                    return [outcome for run in runs for outcome in self._store([run])]
                return [_Outcome(runs[0], exc, permanent=True)]
            except Exception as exc:
                delay = next(delays, None)
                if delay is None:
                    return [_Outcome(run, exc) for run in runs]
                logger.warning("episodic memory writer: writing %d runs failed (%s); retrying "
                               "in %.1fs", len(runs), exc, delay)
                with self._cond:
                    self._status.retries += 1
                time.sleep(delay)
            else:
                with self._cond:
                    self._status.batches += 1
                return [_Outcome(run) for run in runs]

    def _write(self, runs: list[_Run]) -> None:
        """Add the runs; a run already stored with other rewards gets these ones instead.

        A run is stored with other rewards when it was written before it was rated (in flight,
        or before a kill that left it in the journal): its rewards go through the store's
        rating update, and the other runs are added in one call.

        Raises:
            DuplicateEpisodeError: An episode is stored with other content than the run's.
        """
        memory = self.memory
        try:
            memory.add_episodes([episode for run in runs for episode in run.episodes])
            return
        except DuplicateEpisodeError:
            pass
        unstored = []
        for run in runs:
            namespace = run.episodes[0].namespace
            try:
                stored = memory.store.get([e.id for e in run.episodes], namespace=namespace)
            except EpisodeNotFoundError:
                unstored.append(run)  # (partly stored: `add_episodes` below refuses it)
                continue
            for old, new in zip(stored, run.episodes, strict=True):
                if dataclasses.replace(old, reward=new.reward) != new:
                    raise DuplicateEpisodeError(
                        f"episode id {new.id!r} already exists in namespace {namespace!r} with "
                        "other content: give the run another id, or delete the stored episode")
            changed = {new.id: new.reward for old, new in zip(stored, run.episodes, strict=True)
                       if old.reward != new.reward}
            if changed:
                newly = sum(old.reward is None for old in stored if old.id in changed)
                memory._set_rewards(changed, namespace, newly_rated=newly)
        if unstored:
            memory.add_episodes([episode for run in unstored for episode in run.episodes])

    def _finish(self, outcomes: list[_Outcome]) -> None:
        """Checkpoint what is stored, let go of it, tell the recorders."""
        closing = [o.run for o in outcomes if o.run.closing]
        if self._journal is not None and closing:
            try:
                self._journal.done([n for run in closing for n in run.entries])
            except JournalError as exc:
                logger.error("%s (these runs will be written again, harmlessly)", exc)
        with self._cond:
            for outcome in outcomes:
                run = outcome.run
                run.in_flight = False
                if run.closing or self._journal is None:
                    for key in run.keys:
                        if self._index.get(key) is run:
                            del self._index[key]
                else:  # a failure that may pass: kept (journaled) for a rating or the next start
                    run.parked = True
                    run.memory = None
                if outcome.error is None:
                    self._status.written += 1
                else:
                    self._status.failed += 1
                    self._status.last_error = outcome.error
            self._cond.notify_all()
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            logger.error(
                "episodic memory writer: %d runs not written (%s)%s", len(failed), failed[0].error,
                "" if self._journal is None or failed[0].permanent
                else "; they stay in the journal",
            )
        for outcome in outcomes:
            if outcome.run.report is not None:
                event = "written" if outcome.error is None else "failed"
                try:
                    outcome.run.report(event, outcome.run.run_id, outcome.error)
                except Exception:
                    logger.exception("recorder report for run %s failed", outcome.run.run_id)
        with self._cond:
            self._finished += len(outcomes)
            self._cond.notify_all()

    # ----------------------------------------------------------------- replay

    def _attach(self, journal: Journal) -> None:
        """Use `journal` from now on, and queue the runs it holds with their live ratings."""
        self._journal = journal
        runs: list[_Run] = []
        by_key: dict[str, _Run] = {}
        orphans: list[int] = []
        for entry in journal.replay:
            fields = entry.fields
            try:
                if entry.op == "run":
                    episodes = [Episode.from_dict(data) for data in fields["episodes"]]
                    run = _Run(str(fields["id"]), episodes, None, None, [entry.n], replayed=True)
                    runs.append(run)
                    by_key.update(dict.fromkeys(run.keys, run))
                    continue
                target, reward = str(fields["target"]), float(fields["reward"])
                run = by_key[target]
                run.episodes = _rated(run.episodes, target, reward)
                run.entries.append(entry.n)
            except Exception as exc:  # a rating whose run is done (never acknowledged), or junk
                logger.warning("journal %s: skipping entry %d: %r", journal.path, entry.n, exc)
                orphans.append(entry.n)
        journal.replay = []
        journal.done(orphans)
        if runs:
            logger.info("journal %s: replaying %d runs", journal.path, len(runs))
            with self._cond:
                self._status.replayed += len(runs)
                self._enqueue(runs)


class RunRecorder:
    """How a recorder hands its runs to the memory: the memory's writer, or inline.

    Shared by `ConsolidationCallback` and `EpisodicMemoryMiddleware`; `report(event, run_id,
    error)` keeps the recorder's counters ("queued", "written", "dropped", "failed").
    """

    def __init__(
        self,
        memory: DistilledEpisodicMemory,
        report: Report,
        *,
        writer: BackgroundWriter | None = None,
        journal: str | os.PathLike[str] | None = None,
        record_inline: bool = False,
    ) -> None:
        """Pick the writer (`writer`, else the memory's), or none when `record_inline`.

        Raises:
            InvalidArgumentError: `writer` is over another memory, or `record_inline` is
                combined with a writer or a journal.
            ConfigError: The journal conflicts with the writer's, is unusable or in use.
        """
        self.memory = memory
        self.report = report
        self.writer: BackgroundWriter | None = None
        if record_inline:
            if writer is not None or journal is not None:
                raise InvalidArgumentError("record_inline=True takes no writer and no journal")
        elif writer is not None:
            if not isinstance(writer, BackgroundWriter) or writer.memory is not memory:
                raise InvalidArgumentError("writer must be a BackgroundWriter over this memory")
            if journal is not None:
                writer.use_journal(journal)
            self.writer = writer
        else:
            self.writer = BackgroundWriter.for_memory(memory, journal=journal)

    def record(self, run_id: str, episodes: Sequence[Episode]) -> None:
        """Queue the run (or, inline, store it now); reports what happened."""
        try:
            if self.writer is not None:
                queued = self.writer.submit(episodes, run_id=run_id, report=self.report)
                self.report("queued" if queued else "dropped", run_id, None)
                return
            self.memory.add_episodes(episodes)
        except Exception as exc:
            self.report("failed", run_id, exc)
        else:
            self.report("written", run_id, None)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the writer to store what was queued before (True at once when inline)."""
        return True if self.writer is None else self.writer.flush(timeout)


def _drain_at_exit() -> None:
    """Write what is queued before the interpreter exits (each writer up to `exit_timeout`).

    It runs among threading's exit hooks, before those that stop thread pools (registered
    later, it runs first: so an embedder that uses a pool still works), after the main thread
    has finished. From then on Python refuses to register new exit hooks, which
    `concurrent.futures` modules do when first imported (sentence-transformers imports one
    through joblib when the model loads): they are imported above, so that a model loaded for
    the first time by this drain still loads.
    """
    for writer in list(_LIVE):
        pending = writer.status.pending
        if pending and not writer.flush(writer.exit_timeout):
            logger.error(
                "episodic memory writer: %d runs not written at exit%s", writer.status.pending,
                " (they stay in the journal)" if writer.journal else " (lost)",
            )


_register = getattr(threading, "_register_atexit", None)  # runs before pools shut down
try:
    (_register or atexit.register)(_drain_at_exit)
except RuntimeError:  # imported while the interpreter is already shutting down
    atexit.register(_drain_at_exit)
