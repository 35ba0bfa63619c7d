"""`EpisodicMemoryMiddleware`: reward-aware episodic memory for LangChain v1 `create_agent`.

Before each model call it recalls the past episodes most relevant to the latest user message,
re-ranked by how well they went, and adds them (with the value model's estimate of the new
request's reward, once trained) to the system prompt. After each completed run it hands the
run to the memory's background writer (`writer.BackgroundWriter`), which stores it moments
later: recall stays synchronous (it must see the memory), recording is off the agent's critical
path. Memory is an aid, never a dependency: any failure inside (embedder or Chroma down, a
raising reward function) is logged and counted in `status`, and the agent goes on without
memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.runnables.config import run_in_executor
from langgraph.config import get_config
from langgraph.runtime import Runtime

from langchain_kd_memory._validate import (
    check_callable,
    check_int,
    check_number,
    check_str,
    optional,
)
from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.episodes import Episode, RewardEstimate, validate_namespace
from langchain_kd_memory.errors import InvalidArgumentError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.runs import (
    FinishedRun,
    RewardFn,
    agent_steps,
    cut,
    extract_query,
    extract_response,
    rate,
    run_episodes,
)
from langchain_kd_memory.trajectories import TRAJECTORY_KEYS
from langchain_kd_memory.writer import BackgroundWriter, RecordingStatus, RunRecorder

logger = logging.getLogger(__name__)

DEFAULT_PROMPT_TEMPLATE = (
    "Past episodes similar to the current request, best first (reward = how well the answer "
    "went; score = relevance blended with reward). Reuse what worked, avoid what did not.\n"
    "{episodes}{estimate}"
)
"""Default text added to the system prompt; `{episodes}` and `{estimate}` are filled in."""

ModelHandler = Callable[[ModelRequest[Any]], ModelResponse[Any]]
AsyncModelHandler = Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]


@dataclasses.dataclass
class MemoryMiddlewareStatus(RecordingStatus):
    """What the middleware did so far (a snapshot; see `EpisodicMemoryMiddleware.status`).

    `queued`, `written`, `dropped` and `failed` count runs handed to the writer (see
    `writer.RecordingStatus`).

    Attributes:
        recalls: Model calls that got recalled episodes (possibly none matched).
        recall_failures: Recalls that failed (the model was called without memory).
        scores: Value-model estimates added to the prompt.
        score_failures: Estimates that failed.
        recorded: Runs stored (the same number as `written`).
        record_failures: Runs not stored: building their episodes failed, or they were
            dropped (queue full) or their write failed.
        reward_failures: Runs whose `reward_fn` raised or returned something other than a
            finite number (recorded without a reward).
        last_error: The latest failure, as "what: ErrorType: message".
        last_episode_id: The id of the latest run handed over for recording (its episode id,
            or its trajectory id), known as soon as the run ends.
    """

    recalls: int = 0
    recall_failures: int = 0
    scores: int = 0
    score_failures: int = 0
    recorded: int = 0
    record_failures: int = 0
    reward_failures: int = 0
    last_error: str | None = None
    last_episode_id: str | None = None


def _config() -> Mapping[str, Any]:
    """The config of the runnable being run, or {} outside one."""
    try:
        return get_config()
    except RuntimeError:
        return {}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class EpisodicMemoryMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Recall reward-ranked past episodes before the model, record each run after the agent.

    Setup:
        .. code-block:: python

            from langchain.agents import create_agent
            from langchain_kd_memory import DistilledEpisodicMemory, EpisodicMemoryMiddleware

            memory = DistilledEpisodicMemory(persist_directory="./kd_memory")
            agent = create_agent(
                model, tools, middleware=[EpisodicMemoryMiddleware(memory, k=3)],
                store=memory.as_store(),
            )
            agent.invoke({"messages": [{"role": "user", "content": "Reset my password"}]},
                         config={"configurable": {"namespace": "user-42"}})

    Namespace of a run (for recall and recording), first found: the runtime context's
    `namespace_key` (attribute or dict key, from ``create_agent(context_schema=...)``), then
    ``config["configurable"][namespace_key]``, then `namespace`, then the memory's namespace.

    The recorded episode's id is the run id (``config={"run_id": ...}``, as for
    `ConsolidationCallback`), so ``memory.record_feedback(run_id, reward)`` finds it later, in
    whatever namespace it was recorded; without one, ``config["configurable"]["episode_id"]``,
    else a new UUID (kept in `status.last_episode_id`). With a `ConsolidationCallback` over the
    same memory attached to the run, the middleware records the run under the callback's run
    id and the callback does not: each run is recorded once.

    The recorded episode is the run's last human message (query) and last AI message
    (response), with ``reward_fn(FinishedRun)`` as reward when given (None = rate it later).
    A run of several model steps (tool calls) is recorded as a trajectory: one episode per
    step (`runs.agent_steps`), each credited with its discounted share of the reward. Texts
    over the episode limit are cut to it (metadata ``truncated=True``), never dropped.

    Recording queues the run on the memory's `BackgroundWriter` (shared with any
    `ConsolidationCallback` over the memory) and returns; `flush()` waits until it is stored,
    and `record_feedback(run_id, ...)` works before that. `record_inline=True` stores it before
    the agent's call returns instead.
    """

    def __init__(
        self,
        memory: DistilledEpisodicMemory,
        *,
        k: int = 3,
        reward_weight: float | None = None,
        min_score: float | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        max_chars: int = 500,
        include_estimate: bool = True,
        record: bool = True,
        reward_fn: RewardFn | None = None,
        namespace: str | None = None,
        namespace_key: str = "namespace",
        gamma: float = 0.9,
        writer: BackgroundWriter | None = None,
        journal: str | os.PathLike[str] | None = None,
        record_inline: bool = False,
    ) -> None:
        """Configure the middleware.

        Args:
            memory: The episodic memory to recall from and record into.
            k: How many episodes to recall per model call.
            reward_weight: Weight of reward vs similarity in recall (0..1); the memory's if None.
            min_score: Leave out recalled episodes whose blended score is below this.
            prompt_template: Text added to the system prompt, with `{episodes}` and
                `{estimate}` placeholders.
            max_chars: Longest query or response text shown per episode (longer is clipped).
            include_estimate: Add the value model's expected reward ± std for the request
                (only once the model is trained).
            record: Record one episode per completed run.
            reward_fn: ``reward_fn(run: FinishedRun) -> float | None``: the reward of a run;
                ``run.outputs`` is the agent's final state.
            namespace: Default namespace of runs; the memory's if None.
            namespace_key: Key of the namespace in the runtime context or configurable.
            gamma: Discount of a run of several model steps (tool calls), recorded as a
                trajectory: each step gets the discounted share of the run's reward.
            writer: The background writer to queue runs on; the memory's shared one
                (`BackgroundWriter.for_memory`) if None.
            journal: Journal file of the writer (acknowledged runs survive a kill; see
                `writer`): opened by the memory's writer if it has none yet.
            record_inline: Store each run before the agent's call returns (no writer).

        Raises:
            InvalidArgumentError: If an argument is invalid.
            ConfigError: `journal` differs from the one the memory's writer uses, or is in use.
        """
        super().__init__()
        if not isinstance(memory, DistilledEpisodicMemory):
            raise InvalidArgumentError(
                f"memory must be a DistilledEpisodicMemory, got {type(memory).__name__}"
            )
        self.k = check_int("k", k, low=1)
        self.reward_weight = optional(check_number, "reward_weight", reward_weight, low=0, high=1)
        self.min_score = optional(check_number, "min_score", min_score)
        self.max_chars = check_int("max_chars", max_chars, low=10)
        self.reward_fn = check_callable("reward_fn", reward_fn)
        self.namespace_key = check_str("namespace_key", namespace_key)
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0)
        if not isinstance(prompt_template, str) or "{episodes}" not in prompt_template:
            raise InvalidArgumentError("prompt_template must be a str containing '{episodes}'")
        try:
            prompt_template.format(episodes="", estimate="")
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidArgumentError(
                f"prompt_template may use only {{episodes}} and {{estimate}}: {exc!r}"
            ) from exc
        self.memory = memory
        self.prompt_template = prompt_template
        self.include_estimate = include_estimate
        self.record = record
        self.namespace = None if namespace is None else validate_namespace(namespace)
        self._status = MemoryMiddlewareStatus()
        self._lock = threading.Lock()
        self._recorder = RunRecorder(
            memory, self._report, writer=writer, journal=journal, record_inline=record_inline
        )

    @property
    def writer(self) -> BackgroundWriter | None:
        """The background writer runs are queued on (None with `record_inline`)."""
        return self._recorder.writer

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the runs handed over so far are stored (or failed).

        Returns:
            True if so, False if `timeout` seconds passed first.
        """
        return self._recorder.flush(timeout)

    @property
    def status(self) -> MemoryMiddlewareStatus:
        """A snapshot of the counters and the latest error."""
        with self._lock:
            return dataclasses.replace(self._status)

    # ----------------------------------------------------------------- bookkeeping

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self._status, counter, getattr(self._status, counter) + 1)

    @contextmanager
    def _guard(self, what: str, counter: str) -> Iterator[None]:
        """Log and count any failure inside the block instead of raising it into the agent."""
        try:
            yield
        except Exception as exc:
            logger.warning("episodic memory: %s failed, continuing without it: %s", what, exc)
            with self._lock:
                setattr(self._status, counter, getattr(self._status, counter) + 1)
                self._status.last_error = f"{what}: {type(exc).__name__}: {exc}"

    # ----------------------------------------------------------------- run context

    def _namespace(self, runtime: Runtime[Any] | None) -> str | None:
        context = getattr(runtime, "context", None)
        found = (
            context.get(self.namespace_key)
            if isinstance(context, Mapping)
            else getattr(context, self.namespace_key, None)
        )
        if found is None:
            found = self._configurable().get(self.namespace_key)
        return validate_namespace(found) if found is not None else self.namespace

    @staticmethod
    def _configurable() -> Mapping[str, Any]:
        configurable = _config().get("configurable") or {}
        return configurable if isinstance(configurable, Mapping) else {}

    # ----------------------------------------------------------------- recall

    def _recall_kwargs(self, request: ModelRequest[Any]) -> dict[str, Any] | None:
        """Arguments of the recall for this request, or None if it has no user text."""
        query = extract_query(request.messages).strip()
        if not query:
            return None
        return {
            "input": cut(query),
            "k": self.k,
            "namespace": self._namespace(request.runtime),
            "reward_weight": self.reward_weight,
        }

    def _render(self, documents: list[Document], estimate: RewardEstimate | None) -> str | None:
        """The text to add to the system prompt, or None if there is nothing to add."""
        kept = [
            d
            for d in documents
            if self.min_score is None or float(d.metadata.get("score", 0.0)) >= self.min_score
        ]
        if not kept and estimate is None:
            return None
        lines = []
        for rank, doc in enumerate(kept, start=1):
            meta = doc.metadata
            reward = meta.get("reward")
            lines.append(
                f"{rank}. Query: {_clip(str(meta.get('query', '')), self.max_chars)}\n"
                f"   Response: {_clip(str(meta.get('response', '')), self.max_chars)}\n"
                f"   reward: {'not rated' if reward is None else f'{reward:.3g}'}"
                f" | score: {float(meta.get('score', 0.0)):.2f}"
            )
        episodes = "\n".join(lines) if lines else "(none)"
        text = (
            ""
            if estimate is None
            else (
                f"\nExpected reward of the current request (learned value model): "
                f"{estimate.expected:.3g} ± {estimate.std:.2g}"
            )
        )
        return self.prompt_template.format(episodes=episodes, estimate=text)

    @staticmethod
    def _inject(request: ModelRequest[Any], block: str | None) -> ModelRequest[Any]:
        if block is None:
            return request
        system = request.system_message
        if system is None:
            return request.override(system_message=SystemMessage(content=block))
        if isinstance(system.content, str):
            content: Any = f"{system.content}\n\n{block}" if system.content else block
        else:
            content = [*system.content, {"type": "text", "text": block}]
        return request.override(system_message=system.model_copy(update={"content": content}))

    def _memory_block(self, request: ModelRequest[Any]) -> str | None:
        """Recall (and score) for the request; the text to add to the prompt, or None."""
        documents: list[Document] = []
        estimate = None
        kwargs = None
        with self._guard("recall", "recall_failures"):
            kwargs = self._recall_kwargs(request)
            if kwargs is not None:
                documents = self.memory.invoke(**kwargs)
                self._count("recalls")
        if kwargs is not None and self.include_estimate:
            with self._guard("score", "score_failures"):
                namespace = kwargs["namespace"]  # the run's, as for recall
                if self.memory.value_model(namespace).is_trained:
                    estimate = self.memory.score(kwargs["input"], namespace=namespace)
                    self._count("scores")
        return self._render(documents, estimate)

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: ModelHandler
    ) -> ModelResponse[Any] | AIMessage:
        """Add recalled episodes (and the value estimate) to the system prompt, then call."""
        return handler(self._inject(request, self._memory_block(request)))

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: AsyncModelHandler
    ) -> ModelResponse[Any] | AIMessage:
        """Async `wrap_model_call`: recall runs in an executor (Chroma's client is synchronous)."""
        block = await run_in_executor(None, self._memory_block, request)
        return await handler(self._inject(request, block))

    # ----------------------------------------------------------------- record

    def _episodes(self, state: Mapping[str, Any], runtime: Runtime[Any]) -> list[Episode]:
        """The episodes of a finished run ([] if there is nothing to record)."""
        query = extract_query(state).strip() if self.record else ""
        if not query:
            return []
        run = FinishedRun(
            self._run_id(runtime), query, extract_response(state), None, state, agent_steps(state)
        )
        reward, error = rate(self.reward_fn, run)
        if error is not None:
            logger.warning("episodic memory: reward_fn failed, recording unrated: %s", error)
            with self._lock:
                self._status.reward_failures += 1
                self._status.last_error = f"reward_fn: {type(error).__name__}: {error}"
        metadata: dict[str, str | int | float | bool] = {"source": "agent"}
        info = getattr(runtime, "execution_info", None)
        if getattr(info, "thread_id", None):
            metadata["thread_id"] = str(info.thread_id)  # type: ignore[union-attr]
        namespace = self._namespace(runtime) or self.memory.namespace
        return run_episodes(
            run, reward, namespace=namespace, metadata=metadata, gamma=self.gamma
        )

    def _run_id(self, runtime: Runtime[Any]) -> str:
        """The episode id of this run: its run id, claimed from a callback if one follows it."""
        callbacks = _config().get("callbacks")
        root = None
        for handler in getattr(callbacks, "handlers", None) or []:
            if isinstance(handler, ConsolidationCallback) and handler.memory is self.memory:
                root = handler.claim(getattr(callbacks, "parent_run_id", None)) or root
        info = getattr(runtime, "execution_info", None)
        return str(
            getattr(info, "run_id", None) or root
            or self._configurable().get("episode_id") or uuid.uuid4()
        )

    def _report(self, event: str, run_id: str, error: BaseException | None) -> None:
        """Count what became of a run handed to the writer (called from its thread)."""
        with self._lock:
            setattr(self._status, event, getattr(self._status, event) + 1)
            if event == "written":
                self._status.recorded += 1
            elif event in ("dropped", "failed"):
                self._status.record_failures += 1
                self._status.last_error = "record: " + (
                    "dropped, the writer's queue is full" if error is None
                    else f"{type(error).__name__}: {error}"
                )
        if error is not None:
            logger.warning("episodic memory: recording run %s failed: %s", run_id, error)

    def after_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Hand the finished run to the writer (or, inline, record it now)."""
        with self._guard("record", "record_failures"):
            episodes = self._episodes(state, runtime)
            if episodes:
                run_id = str(episodes[0].metadata.get(TRAJECTORY_KEYS[0], episodes[0].id))
                with self._lock:
                    self._status.last_episode_id = run_id
                self._recorder.record(run_id, episodes)
        return None

    async def aafter_agent(
        self, state: AgentState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `after_agent`: recording runs in an executor."""
        return await run_in_executor(None, self.after_agent, state, runtime)
