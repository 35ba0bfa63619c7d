"""`BackgroundWriter`: recording a finished run costs the agent a queue put, not an embedding.

`ConsolidationCallback` and `EpisodicMemoryMiddleware` hand each finished run (its episodes) to
the memory's writer and return. One writer thread per memory (shared by every recorder over
that memory) takes whatever is queued and stores it with ONE `memory.add_episodes` call (one
embedder call, one Chroma write per namespace), so the busier the agents, the larger the
batches and the cheaper each episode.

Guarantees and policies:

- **Queue full** (`max_queue` runs waiting): `submit` blocks up to `put_timeout` seconds for
  room, then drops the run, logs a warning and counts it (`status.dropped`). An agent never
  waits longer than `put_timeout` for its memory.
- **A failed write** is retried with backoff (`retry_delays`, 0.1 s, 0.5 s then 2 s by default):
  `add` skips episodes already stored identically, so a retry never duplicates. After the last
  retry the runs are counted as failed (`status.failed`, and in the recorder's status) and
  logged; with a journal they stay in it and are written at the next start. A run the store
  refuses (an id stored with other content, a reward outside the namespace's range) is not
  retried; the other runs of its batch are written without it. Nothing raises into the agent.
- **`flush()`** waits until every run submitted before the call is written (or failed);
  interpreter exit (atexit) does the same, for up to `exit_timeout` seconds.
- **Feedback for a pending run**: the writer is registered with `memory.add_pending_source`, so
  `memory.record_feedback(run_id, reward)` for a run still queued (or being written) succeeds
  at once; the reward (for a trajectory, each step's discounted share) is stored with the run,
  or right after it when the run was already being written.
- **Recall** does not see a run until it is written (typically tens of milliseconds later).
- **Journal** (`journal=path`, optional): every run (and feedback for a pending run) is
  appended to the file, one JSON line, with one `write` system call before `submit` returns.
  The operating system then holds it, so a killed process (SIGKILL, OOM kill, a crash) loses
  nothing it acknowledged: the next writer opened on the journal replays it (idempotent, like
  any retry) and the file is truncated once everything in it is written. `fsync=True` also
  survives a power loss or kernel crash, at the cost of a disk flush per run (the recording
  hook took 0.92 / 7.5 ms p50 / p95 with it, 0.29 / 1.9 ms with the journal alone and
  0.12 / 0.17 ms without a journal: `benchmarks/bench_callback.py`, 2026-12-04).
  A line cut short by a kill was never acknowledged and is ignored. One writer at a time may
  use a journal (a lock file beside it).
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
import json
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_kd_memory._validate import check_int, check_number
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import ConfigError, DuplicateEpisodeError, InvalidArgumentError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.trajectories import trajectory_rewards

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the journal is not locked
    fcntl = None  # type: ignore[assignment]

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
LANDED_IDS = 10_000
"""Recently written ids kept, so that feedback racing with the write still finds its run."""
COMPACT_BYTES = 8 << 20
"""A journal larger than this, mostly written, is rewritten with its pending lines only."""
JOURNAL_VERSION = 1

Report = Callable[[str, str, "BaseException | None"], None]
"""`report(event, run_id, error)`, event one of "queued", "written", "dropped", "failed"."""


@dataclass
class RecordingStatus:
    """What a recorder (callback or middleware) handed to the memory, in runs.

    Attributes:
        queued: Runs handed to the background writer (acknowledged).
        written: Runs stored (their episodes are in the memory).
        dropped: Runs dropped because the writer's queue stayed full (see `BackgroundWriter`).
        failed: Runs whose write failed (after the writer's retries, or inline).
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
        pending: Runs queued or being written now.
        batches: `add_episodes` calls that stored something.
        retries: Failed writes that were retried.
        journal: Path of the journal, or None.
        last_error: The latest write error, or None.
    """

    replayed: int = 0
    pending: int = 0
    batches: int = 0
    retries: int = 0
    journal: str | None = None
    last_error: BaseException | None = None


@dataclass(eq=False)
class _Run:
    run_id: str
    episodes: list[Episode]
    report: Report | None
    memory: DistilledEpisodicMemory  # kept alive until the run is written
    seqs: list[int] = field(default_factory=list)  # its journal lines: the run, its feedback
    replayed: bool = False
    in_flight: bool = False
    late: list[tuple[str, float]] = field(default_factory=list)  # feedback while in flight

    @property
    def keys(self) -> set[str]:
        return {self.run_id, *(episode.id for episode in self.episodes)}


@dataclass(frozen=True)
class _Outcome:
    run: _Run
    error: BaseException | None = None
    permanent: bool = False  # the store refused it: retrying (or replaying) cannot help


def rate_run(
    episodes: Sequence[Episode], target: str, reward: float
) -> tuple[list[Episode], Episode]:
    """A run's episodes with feedback applied, and the episode to show for it.

    `target` is an episode's id (it alone gets `reward`) or the id of the trajectory the
    episodes are the steps of (each step gets its discounted share; the last step is shown).
    """
    if any(episode.id == target for episode in episodes):
        rewards = {target: reward}
    else:
        rewards = trajectory_rewards(episodes[0], reward)
    rated = [
        dataclasses.replace(e, reward=rewards[e.id]) if e.id in rewards else e for e in episodes
    ]
    shown = next((e for e in rated if e.id == target), rated[-1])
    return rated, shown


# ----------------------------------------------------------------------------- journal


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Journal:
    """An append-only file of JSON lines: runs and feedback not written to the memory yet."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool) -> None:
        self.path = Path(path).expanduser().resolve()
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                self._lock_file.close()
                raise ConfigError(
                    f"journal {str(self.path)!r} is in use by another writer (in this process "
                    "or another): give each memory its own journal"
                ) from exc
        lines, complete = self._read()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.ftruncate(self._fd, complete)  # drop a line cut short by a kill (never acknowledged)
        self._size = complete
        self._seq = 0
        self._live: dict[int, bytes] = {}
        self.entries: list[tuple[int, dict[str, Any]]] = []
        for line, record in lines:
            self._seq += 1
            self._live[self._seq] = line
            self.entries.append((self._seq, record))

    def _read(self) -> tuple[list[tuple[bytes, dict[str, Any]]], int]:
        """The valid lines of the file, and the length of its complete lines."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        complete = data.rfind(b"\n") + 1
        lines = []
        for line in data[:complete].splitlines(keepends=True):
            try:
                record = json.loads(line)
                valid = record.get("v") == JOURNAL_VERSION and record.get("op") in (
                    "run", "feedback")
            except (ValueError, AttributeError):
                valid = False
            if valid:
                lines.append((line, record))
            elif line.strip():
                logger.warning("journal %s: skipping an unreadable line: %.80r", self.path, line)
        if complete < len(data):
            logger.warning("journal %s: ignoring a line cut short (%d bytes)", self.path,
                           len(data) - complete)
        return lines, complete

    def append(self, record: dict[str, Any]) -> int:
        """Append one record (written to the OS, fsynced if asked); its sequence number."""
        line = (json.dumps({"v": JOURNAL_VERSION, **record}, separators=(",", ":"),
                           ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            _write_all(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)
            self._seq += 1
            self._live[self._seq] = line
            self._size += len(line)
            return self._seq

    def done(self, seqs: Sequence[int]) -> None:
        """Forget written lines; truncate the file when none is pending, compact when large."""
        if not seqs:
            return
        with self._lock:
            for seq in seqs:
                self._live.pop(seq, None)
            if not self._live:
                if self._size:
                    os.ftruncate(self._fd, 0)
                    self._size = 0
            elif self._size > COMPACT_BYTES and 2 * sum(map(len, self._live.values())) < self._size:
                self._rewrite()

    def _rewrite(self) -> None:
        """Replace the file by its pending lines (atomically: a new file renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(self._live.values())
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._lock_file.close()  # releases the lock


# ----------------------------------------------------------------------------- writer

_REGISTRY: dict[int, BackgroundWriter] = {}
"""id(memory) -> its writer, until the memory is garbage-collected or the writer closed. The
writer holds its memory weakly while idle, so the entry does not keep the memory alive."""
_REGISTRY_LOCK = threading.RLock()
_LIVE: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


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
            journal: Path of an append-only journal (see the module's docs); None for none.
            fsync: fsync the journal after each run (survives power loss; ~4 ms per run).
            max_queue: Runs waiting before `submit` blocks.
            put_timeout: Seconds `submit` waits for room in a full queue before dropping.
            max_batch: Most episodes per `add_episodes` call.
            retry_delays: Pauses (seconds) before each retry of a failed write.
            exit_timeout: Seconds interpreter exit waits for the queue to drain.

        Raises:
            ConfigError: The memory already has a writer, or the journal is in use.
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
        self._queue: deque[_Run] = deque()
        self._index: dict[str, _Run] = {}  # run ids and episode ids of pending runs
        self._landed: OrderedDict[str, None] = OrderedDict()
        self._submitted = 0
        self._finished = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._status = WriterStatus()
        self._journal: _Journal | None = None
        with _REGISTRY_LOCK:
            existing = _REGISTRY.get(id(memory))
            if existing is not None and existing._memory() is memory and not existing._closed:
                raise ConfigError(
                    "this memory already has a writer: use BackgroundWriter.for_memory(memory), "
                    "or create the writer before any callback or middleware over the memory"
                )
            if journal is not None:
                self._journal = _Journal(journal, self.fsync)
            _REGISTRY[id(memory)] = self
        self._finalizer = weakref.finalize(memory, self._unregister, id(memory))
        self._finalizer.atexit = False  # at exit the drain needs the journal open to compact it
        _LIVE.add(self)
        memory.add_pending_source(self)
        if self._journal is not None:
            self._replay(self._journal)

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
            ConfigError: The writer already uses another journal, or `journal` is in use.
        """
        with _REGISTRY_LOCK:
            writer = _REGISTRY.get(id(memory))
            if writer is None or writer._memory() is not memory or writer._closed:
                return cls(memory, journal=journal)
        if journal is not None:
            writer.use_journal(journal)
        return writer

    def use_journal(self, journal: str | os.PathLike[str]) -> None:
        """Journal from now on (replaying what the file holds); no-op if it already does.

        Raises:
            ConfigError: The writer uses another journal, or this one is in use elsewhere.
        """
        path = Path(journal).expanduser().resolve()
        with _REGISTRY_LOCK:
            if self._journal is not None:
                if self._journal.path != path:
                    raise ConfigError(
                        f"this memory's writer journals to {str(self._journal.path)!r}, not "
                        f"{str(path)!r}: pass the same journal to every recorder of the memory"
                    )
                return
            self._journal = _Journal(path, self.fsync)
        self._replay(self._journal)

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
            if self._journal is not None:
                self._journal.close()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

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
            True if the run was queued, False if it was dropped.
        """
        if not episodes:
            return True
        run = _Run(run_id or episodes[0].id, list(episodes), report, self.memory)
        if self._closed:
            logger.warning("episodic memory writer: closed; run %s dropped", run.run_id)
            with self._cond:
                self._status.dropped += 1
            return False
        if self._journal is not None:
            try:
                run.seqs.append(self._journal.append({
                    "op": "run", "run": run.run_id,
                    "episodes": [episode.to_dict() for episode in run.episodes],
                }))
            except OSError as exc:
                logger.error("journal %s: run %s queued without it: %s", self.journal,
                             run.run_id, exc)
        with self._cond:
            room = self._cond.wait_for(
                lambda: len(self._queue) < self.max_queue or self._closed, self.put_timeout
            )
            if room and not self._closed:
                self._enqueue([run])
                self._status.queued += 1
                return True
            self._status.dropped += 1
            dropped = self._status.dropped
        if self._journal is not None:
            self._journal.done(run.seqs)
        logger.warning(
            "episodic memory writer: queue is full (%d runs) after waiting %.2fs; run %s "
            "dropped (%d dropped so far)", self.max_queue, self.put_timeout, run.run_id, dropped,
        )
        return False

    def _enqueue(self, runs: Sequence[_Run]) -> None:
        """Queue runs and make sure the thread runs (the caller holds the condition)."""
        for run in runs:
            self._queue.append(run)
            for key in run.keys:
                self._index[key] = run
        self._submitted += len(runs)
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

    # ----------------------------------------------------------------- feedback

    def rate_pending(self, episode_id: str, reward: float) -> Episode | None:
        """Give a run that is queued or being written this reward (`PendingEpisodes`).

        A queued run is stored with it; a run being written gets it right after it lands. A
        run's id rates each step of a trajectory with its discounted share.

        Returns:
            The episode as it will be stored (a trajectory's last step), or None if no
            pending run has this id.

        Raises:
            InvalidRewardError: The reward lies outside the namespace's reward range.
        """
        target = str(episode_id)
        with self._cond:
            run = self._index.get(target)
            landed = run is None and target in self._landed
            if landed:
                del self._landed[target]  # once: a deleted episode must not come back here
            snapshot = list(run.episodes) if run is not None else []
        if run is not None:
            rated, shown = rate_run(snapshot, target, reward)
            self.memory.store.check_episodes(rated)  # the namespace's reward range, now
            with self._cond:
                if self._index.get(target) is run:
                    if self._journal is not None:
                        run.seqs.append(self._journal.append(
                            {"op": "feedback", "id": target, "reward": reward}))
                    if run.in_flight:
                        run.late.append((target, reward))
                    else:
                        run.episodes = rate_run(run.episodes, target, reward)[0]
                    return shown
                landed = True  # written while we checked the reward
        if landed:  # written between the memory's look-up and ours: rate it in the store
            return self.memory.record_feedback(target, reward)
        return None

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
        self._finish(self._store(batch))
        return True

    def _store(self, runs: list[_Run]) -> list[_Outcome]:
        """Write the runs in one `add_episodes` call, retrying; the fate of each."""
        episodes = [episode for run in runs for episode in run.episodes]
        delays = iter(self.retry_delays)
        while True:
            try:
                self.memory.add_episodes(episodes)
            except ValueError as exc:  # the store refuses the batch: retrying cannot help
                if len(runs) > 1:  # find the culprit: write the runs one by one
                    return [outcome for run in runs for outcome in self._store([run])]
                if runs[0].replayed and isinstance(exc, DuplicateEpisodeError):
                    return [_Outcome(runs[0])]  # written before the restart, rated since
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

    def _finish(self, outcomes: list[_Outcome]) -> None:
        """Account for written and failed runs, apply late feedback, tell the recorders."""
        written_lines: list[int] = []
        late: list[tuple[str, float]] = []
        with self._cond:
            for outcome in outcomes:
                run = outcome.run
                for key in run.keys:
                    if self._index.get(key) is run:
                        del self._index[key]
                if outcome.error is None:
                    self._status.written += 1
                    late += run.late
                    for key in run.keys:
                        self._landed[key] = None
                else:
                    self._status.failed += 1
                    self._status.last_error = outcome.error
                if outcome.error is None or outcome.permanent:
                    written_lines += run.seqs  # a transient failure stays for the next start
            while len(self._landed) > LANDED_IDS:
                self._landed.popitem(last=False)
        for target, reward in late:
            try:
                self.memory.record_feedback(target, reward)
            except Exception as exc:
                logger.error("episodic memory writer: feedback for %s lost: %s", target, exc)
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            logger.error(
                "episodic memory writer: %d runs not written (%s)%s", len(failed), failed[0].error,
                "; they stay in the journal" if self._journal is not None
                and not failed[0].permanent else "",
            )
        if self._journal is not None:
            try:
                self._journal.done(written_lines)
            except OSError as exc:
                logger.error("journal %s: could not compact: %s", self.journal, exc)
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

    def _replay(self, journal: _Journal) -> None:
        """Queue the runs a journal holds, with the feedback recorded for them."""
        runs: list[_Run] = []
        by_key: dict[str, _Run] = {}
        stale: list[int] = []
        for seq, record in journal.entries:
            try:
                if record["op"] == "run":
                    episodes = [Episode.from_dict(data) for data in record["episodes"]]
                    run = _Run(str(record["run"]), episodes, None, self.memory, [seq],
                               replayed=True)
                    runs.append(run)
                    by_key.update(dict.fromkeys(run.keys, run))
                    continue
                target, reward = str(record["id"]), float(record["reward"])
                run = by_key[target]
                run.episodes = rate_run(run.episodes, target, reward)[0]
                run.seqs.append(seq)
            except Exception as exc:  # a run written and compacted away, or a damaged line
                logger.warning("journal %s: skipping entry %d: %r", journal.path, seq, exc)
                stale.append(seq)
        journal.entries = []
        journal.done(stale)
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
            ConfigError: The journal conflicts with the writer's, or is in use elsewhere.
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
        if self.writer is not None:
            queued = self.writer.submit(episodes, run_id=run_id, report=self.report)
            self.report("queued" if queued else "dropped", run_id, None)
            return
        try:
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
