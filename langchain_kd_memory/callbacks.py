"""`ConsolidationCallback`: turn every finished agent run into an episode, and learn from them.

Attach it to any LangChain runnable (an LCEL chain, a `create_agent` agent, a LangGraph graph)
through `config={"callbacks": [callback]}`. Each finished top-level run becomes one episode
whose id is the run id, so feedback that arrives later can find it:

.. code-block:: python

    memory = DistilledEpisodicMemory(persist_directory="./kd_memory")
    callback = ConsolidationCallback(memory, every_n_episodes=50,
                                     reward_fn=lambda run: 1.0 if "refund" in run.response else 0.0)
    run_id = uuid.uuid4()
    answer = agent.invoke(inputs, config={"callbacks": [callback], "run_id": run_id})
    memory.record_feedback(run_id, reward=1.0)   # thumbs up, later
    callback.flush()                             # at the end of a script: runs stored

Recording costs the agent a queue put: the run's episodes go to the memory's
`writer.BackgroundWriter`, which embeds and stores them in batches on its own thread (see its
docs for the queue, failure and journal policies; `journal=path` makes acknowledged runs survive
a kill). `record_inline=True` stores each run before the agent's call returns, as before.

Every `every_n_episodes` new ratings of a namespace (episodes rated for the first time, by
`reward_fn` or by feedback recorded through the memory) start a consolidation of that namespace
on one background thread: `trigger.RetrainTrigger` decides, the same way as `kd-memory worker`.
The agent never waits for it and never sees its errors: they are logged and kept in
`callback.status`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from langchain_kd_memory._validate import check_callable, check_int, check_number
from langchain_kd_memory.errors import InsufficientDataError, InvalidArgumentError
from langchain_kd_memory.memory import ConsolidationReport, DistilledEpisodicMemory
from langchain_kd_memory.runs import (
    FinishedRun,
    RewardFn,
    agent_steps,
    extract_query,
    extract_response,
    rate,
    run_episodes,
)
from langchain_kd_memory.trigger import RetrainTrigger
from langchain_kd_memory.writer import BackgroundWriter, RecordingStatus, RunRecorder

logger = logging.getLogger(__name__)


@dataclass
class ConsolidationStatus(RecordingStatus):
    """What a `ConsolidationCallback` has done so far (a snapshot).

    `queued`, `written`, `dropped` and `failed` count runs handed to the writer (see
    `writer.RecordingStatus`).

    Attributes:
        episodes_recorded: Finished top-level runs stored (the same number as `written`; a
            run of several model steps is one run).
        recorded_by_middleware: Runs left to an `EpisodicMemoryMiddleware` over the same memory
            that recorded them (each run is recorded once).
        ratings_since_consolidation: New ratings (episodes rated for the first time) counted
            towards the next consolidations, all namespaces together.
        consolidations_run: Consolidations that finished successfully.
        consolidations_skipped: Consolidations that found too little to learn from (too few
            rated episodes, or all with one reward): logged, not errors.
        errors: Errors caught (reward_fn raising or returning a non-number, a failed write,
            consolidation); a run whose reward_fn failed is recorded unrated.
        last_error: The most recent error caught, or None.
        last_report: The report of the most recent successful consolidation, or None.
        training_in_progress: Whether a consolidation is running now.
    """

    episodes_recorded: int = 0
    recorded_by_middleware: int = 0
    ratings_since_consolidation: int = 0
    consolidations_run: int = 0
    consolidations_skipped: int = 0
    errors: int = 0
    last_error: BaseException | None = None
    last_report: ConsolidationReport | None = None
    training_in_progress: bool = False


class ConsolidationCallback(BaseCallbackHandler):
    """Records one episode per finished top-level run and consolidates every N ratings.

    - On a top-level `on_chain_start` (no parent run) it remembers the inputs by run id; at the
      matching `on_chain_end` it queues one episode (query and response extracted from inputs
      and outputs, reward from `reward_fn(FinishedRun)`, id = `str(run_id)`) on the memory's
      background writer, which stores it moments later (`wait` or `flush` to be sure). Texts
      over the episode limit are cut to it (metadata ``truncated=True``). An agent run of
      several model steps (tool calls) is recorded as a trajectory instead: one episode per
      step, ids ``f"{run_id}/{i}"``, each credited with the discounted return (`gamma`), and
      feedback for the run id rates them all. Nested chain, model and tool runs are not
      episodes; a top-level run that fails is dropped. A `reward_fn` that
      raises or returns something other than a finite number is counted in `status.errors`
      and the run is recorded unrated. When an `EpisodicMemoryMiddleware` over the same memory
      runs inside the agent, it records the run (under this run id) and the callback does not.
    - Each new rating of the memory (an episode rated for the first time: by `reward_fn`, the
      middleware, or a later `memory.record_feedback`) counts towards its namespace; every
      `every_n_episodes` of them start `memory.consolidate(namespace)`, which trains that
      namespace's own value model (`trigger.RetrainTrigger` decides, as for `kd-memory
      worker`; with a `model_dir`, the rated count at each training is kept there, so a worker
      does not train the same ratings again). With `background=True` they run on one worker
      thread, one at a time, in the order they became due.
    - Nothing raises into the agent (`raise_error = False`): errors are logged and kept in
      `status`. Synchronous and asynchronous runs are both supported (LangChain runs synchronous
      handlers of async runs in an executor).

    Example:
        .. code-block:: python

            callback = ConsolidationCallback(memory, every_n_episodes=20,
                                             reward_fn=lambda run: 1.0)
            chain.invoke({"question": "hi"}, config={"callbacks": [callback]})
            callback.flush()    # runs written, a due consolidation finished
            print(callback.status)
    """

    raise_error: bool = False

    def __init__(
        self,
        memory: DistilledEpisodicMemory,
        every_n_episodes: int = 50,
        reward_fn: RewardFn | None = None,
        background: bool = True,
        namespace: str | None = None,
        gamma: float = 0.9,
        *,
        writer: BackgroundWriter | None = None,
        journal: str | os.PathLike[str] | None = None,
        record_inline: bool = False,
    ) -> None:
        """Create the callback and subscribe it to the memory's ratings.

        Args:
            memory: Where episodes are recorded and consolidated.
            every_n_episodes: New ratings of a namespace between two consolidations (>= 1).
            reward_fn: `reward_fn(run: FinishedRun) -> float | None` rates each run; None
                leaves runs unrated until feedback arrives.
            background: Consolidate on a worker thread (True) or inline in the thread that
                made the N-th rating (False).
            namespace: Namespace of the episodes; the memory's namespace if None.
            gamma: Discount of a run of several model steps (an agent calling tools), recorded
                as a trajectory: each step gets the discounted share of the run's reward.
            writer: The background writer to queue runs on; the memory's shared one
                (`BackgroundWriter.for_memory`) if None.
            journal: Journal file of the writer (acknowledged runs survive a kill; see
                `writer`): opened by the memory's writer if it has none yet.
            record_inline: Store each run before the agent's call returns (no writer): the
                old, synchronous behaviour, for scripts and tests that read the store at once.

        Raises:
            InvalidArgumentError: An invalid argument.
            ConfigError: `journal` differs from the one the memory's writer uses, or is in use.
        """
        if not isinstance(memory, DistilledEpisodicMemory):
            raise InvalidArgumentError(
                f"memory must be a DistilledEpisodicMemory, got {type(memory).__name__}"
            )
        self.memory = memory
        self.every_n_episodes = check_int("every_n_episodes", every_n_episodes, low=1)
        self.reward_fn = check_callable("reward_fn", reward_fn)
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0)
        self.background = background
        self.namespace = memory.resolve_namespace(namespace)
        self._inputs: dict[UUID, Any] = {}
        self._root: dict[UUID, UUID] = {}  # every chain run in flight -> its top-level run
        self._claimed: set[UUID] = set()  # top-level runs a middleware recorded
        self._status = ConsolidationStatus()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._trigger = RetrainTrigger(self.every_n_episodes, lambda: memory.model_dir)
        self._due: list[str] = []  # namespaces to consolidate, in order
        self._recorder = RunRecorder(
            memory, self._report, writer=writer, journal=journal, record_inline=record_inline
        )
        memory.add_rating_listener(self._on_rating)

    @property
    def writer(self) -> BackgroundWriter | None:
        """The background writer runs are queued on (None with `record_inline`)."""
        return self._recorder.writer

    @property
    def status(self) -> ConsolidationStatus:
        """A snapshot of what the callback has done."""
        with self._lock:
            return replace(self._status, ratings_since_consolidation=self._trigger.counted)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember the inputs of a top-level run, and the top-level run of a nested one."""
        with self._lock:
            if parent_run_id is None:
                self._inputs[run_id] = inputs
                self._root[run_id] = run_id
            elif parent_run_id in self._root:
                self._root[run_id] = self._root[parent_run_id]

    def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Forget a top-level run that failed: it is not an episode."""
        if parent_run_id is None:
            self._finish(run_id)

    def on_chain_end(
        self,
        outputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record a finished top-level run as an episode."""
        if parent_run_id is not None:
            return
        known, inputs, claimed = self._finish(run_id)
        if not known:
            return  # started before this callback was attached
        if claimed:
            with self._lock:
                self._status.recorded_by_middleware += 1
            return
        try:
            self._record(inputs, outputs, run_id)
        except Exception as exc:  # never raise into the agent
            self._fail("recording run %s failed", run_id, exc)

    def _finish(self, run_id: UUID) -> tuple[bool, Any, bool]:
        """Forget a top-level run: (whether it was known, its inputs, whether it was claimed)."""
        with self._lock:
            known = run_id in self._inputs
            inputs = self._inputs.pop(run_id, None)
            for nested in [r for r, root in self._root.items() if root == run_id]:
                del self._root[nested]
            claimed = run_id in self._claimed
            self._claimed.discard(run_id)
        return known, inputs, claimed

    def claim(self, run_id: UUID | None) -> UUID | None:
        """Take over the recording of the top-level run that `run_id` belongs to.

        Called by `EpisodicMemoryMiddleware` while the run is in flight; this callback then
        does not record it.

        Returns:
            The top-level run's id (the episode id to use), or None if `run_id` is not a run
            this callback is following.
        """
        with self._lock:
            root = self._root.get(run_id) if run_id is not None else None
            if root is not None:
                self._claimed.add(root)
            return root

    def _record(self, inputs: Any, outputs: Any, run_id: UUID) -> None:
        query = extract_query(inputs)
        if not query.strip():
            logger.warning("run %s has no query text; it is not recorded", run_id)
            return
        run = FinishedRun(
            str(run_id), query, extract_response(outputs), inputs, outputs, agent_steps(outputs)
        )
        reward, error = rate(self.reward_fn, run)
        if error is not None:
            self._fail("reward_fn failed on run %s; recording it unrated", run_id, error)
        self._recorder.record(
            run.run_id, run_episodes(run, reward, namespace=self.namespace, gamma=self.gamma)
        )

    def _report(self, event: str, run_id: str, error: BaseException | None) -> None:
        """Count what became of a run handed to the writer (called from its thread)."""
        with self._lock:
            setattr(self._status, event, getattr(self._status, event) + 1)
            if event == "written":
                self._status.episodes_recorded += 1
        if error is not None:
            self._fail("recording run %s failed", run_id, error)

    def _fail(self, message: str, subject: object, exc: BaseException) -> None:
        logger.warning(message + ": %r", subject, exc, exc_info=exc)
        with self._lock:
            self._status.errors += 1
            self._status.last_error = exc

    def _on_rating(self, namespace: str) -> None:
        """Count a new rating of `namespace`; consolidate it when the trigger says it is due."""
        if not self._trigger.add(namespace):
            return
        with self._lock:
            self._trigger.take(namespace)
            if namespace not in self._due:
                self._due.append(namespace)
        self._start()

    def _start(self) -> None:
        """Consolidate the due namespaces now (merged with a consolidation that is running)."""
        with self._lock:
            if self._status.training_in_progress:
                return  # the running loop takes the namespaces queued meanwhile
            self._status.training_in_progress = True
            if self.background:
                self._worker = threading.Thread(
                    target=self._consolidate_until_done, name="kd-memory-consolidation",
                    daemon=True,
                )
                self._worker.start()
                return
        self._consolidate_until_done()

    def _consolidate_until_done(self) -> None:
        while True:
            with self._lock:
                if not self._due:
                    self._status.training_in_progress = False
                    self._idle.notify_all()
                    return
                namespace = self._due.pop(0)
            try:
                rated = self.memory.store.count_rated(namespace)
                report = self.memory.consolidate(namespace)
            except InsufficientDataError as exc:
                logger.info("consolidation skipped: %s", exc)
                with self._lock:
                    self._status.consolidations_skipped += 1
            except Exception as exc:
                self._fail("consolidation of namespace %r failed", namespace, exc)
            else:
                self._trigger.trained(namespace, rated)
                with self._lock:
                    self._status.consolidations_run += 1
                    self._status.last_report = report

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the runs queued so far are written and no consolidation is running.

        Args:
            timeout: Seconds to wait at most, in all; None waits as long as it takes.

        Returns:
            True if idle, False if the timeout expired first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._recorder.flush(timeout):
            return False
        with self._idle:
            return self._idle.wait_for(
                lambda: not self._status.training_in_progress,
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the runs queued so far are stored and a due consolidation has finished.

        Call it at the end of a script. It starts no training of its own: ratings counted
        towards the next consolidation stay counted (call `memory.consolidate(namespace)` to
        learn from them now). The same as `wait`.

        Returns:
            True if idle, False if the timeout expired first.
        """
        return self.wait(timeout)
