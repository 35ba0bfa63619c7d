"""`ValueRouter`: escalate the inputs the value model expects to go badly, as an LCEL `Runnable`.

Before anything is generated, the student scores the input's query (the last human message of a
prompt value, messages or agent state; see `runs.extract_query`). The input goes to `strong` (a
bigger model, a human) when the expected reward is below a threshold, otherwise to `default`.

The threshold is fixed, or set by a `budget`: the share of inputs to escalate. A budget is a
share of the traffic the router actually sees: the threshold is the `budget`-quantile of the
student's values of the last `window` inputs it was asked about (this one included), nudged up
while escalations are owed to the budget and down while more were spent, so that about that
share of the inputs goes to `strong` whatever they look like. Until `warmup` inputs have been
seen, the student's values of the namespace's stored queries fill the window. A new model
version starts a new window. Before the value model is trained, everything goes to `default`.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor

from langchain_kd_memory._validate import check_int, check_number, optional
from langchain_kd_memory.decisions import threshold_for_budget
from langchain_kd_memory.errors import InvalidArgumentError
from langchain_kd_memory.runs import extract_query

if TYPE_CHECKING:
    from langchain_kd_memory.memory import DistilledEpisodicMemory

CATCH_UP = 10
"""An escalation owed to the budget raises the quantile used by 1 / CATCH_UP (one owed in excess
lowers it as much), so that the share spent follows the budget closely on short streams too."""
CALIBRATION_QUERIES = 1000
"""Most stored queries (the most recent rated ones) that fill the window before `warmup`."""


@dataclass
class RouterStatus:
    """What a `ValueRouter` decided so far (a snapshot).

    Attributes:
        default: Inputs sent to `default`.
        strong: Inputs escalated to `strong`.
        untrained: Inputs sent to `default` because no value model was trained yet.
        threshold: The expected reward below which the last input would have been escalated
            (None until known).
    """

    default: int = 0
    strong: int = 0
    untrained: int = 0
    threshold: float | None = None

    @property
    def escalated_share(self) -> float:
        """Share of the scored inputs sent to `strong` (0 before any)."""
        scored = self.default + self.strong
        return self.strong / scored if scored else 0.0


class ValueRouter(Runnable[Any, Any]):
    """Route each input to `default` or, when the student expects it to go badly, to `strong`.

    Build it with `DistilledEpisodicMemory.as_router`.

    Example:
        .. code-block:: python

            router = memory.as_router(default=small_model, strong=big_model, budget=0.2)
            answer = (prompt | router).invoke({"question": "..."})
            router.status   # how many went where, the threshold in use
    """

    def __init__(
        self,
        memory: DistilledEpisodicMemory,
        default: Runnable[Any, Any],
        strong: Runnable[Any, Any],
        *,
        threshold: float | None = None,
        budget: float | None = None,
        namespace: str | None = None,
        window: int = 500,
        warmup: int = 20,
    ) -> None:
        """Create the router; give exactly one of `threshold` and `budget`.

        Args:
            memory: Whose value model scores the inputs.
            default: Where inputs go normally.
            strong: Where the inputs expected to go worst go.
            threshold: Escalate when the expected reward is below this (in reward units).
            budget: Escalate about this share of the inputs (0..1; see the module docs).
            namespace: Whose value model and stored queries; the memory's if None.
            window: How many recent inputs the budget's threshold is the quantile of.
            warmup: Inputs seen before the stored queries stop filling the window.
        """
        if (threshold is None) == (budget is None):
            raise InvalidArgumentError("give exactly one of threshold and budget")
        for name, runnable in (("default", default), ("strong", strong)):
            if not isinstance(runnable, Runnable):
                raise InvalidArgumentError(f"{name} must be a LangChain Runnable, got {runnable!r}")
        self.memory = memory
        self.default = default
        self.strong = strong
        self.threshold = optional(check_number, "threshold", threshold)
        self.budget = optional(check_number, "budget", budget, low=0.0, high=1.0)
        self.namespace = memory.resolve_namespace(namespace)
        self.window = check_int("window", window, low=1)
        self.warmup = check_int("warmup", warmup, low=0)
        self._status = RouterStatus(threshold=self.threshold)
        self._recent: deque[float] = deque(maxlen=self.window)
        self._stored: list[float] = []
        self._model_version: object = None
        self._lock = threading.Lock()

    @property
    def status(self) -> RouterStatus:
        """A snapshot of the counters and the threshold in use."""
        with self._lock:
            return replace(self._status)

    def _stored_values(self) -> list[float]:
        """The student's values of the namespace's most recent stored queries."""
        model = self.memory.value_model(self.namespace)
        arrays = self.memory.store.training_arrays(self.namespace, limit=CALIBRATION_QUERIES)
        if not len(arrays):
            return []
        return [e.expected for e in model.predict_embeddings(arrays.query_embeddings)]

    def _escalate(self, expected: float, version: object) -> bool:
        """Decide for an input valued `expected` by the model `version` (counts the input)."""
        if self.threshold is not None:
            return expected < self.threshold
        assert self.budget is not None
        with self._lock:
            fresh = version != self._model_version
        stored = self._stored_values() if fresh else None
        with self._lock:
            if stored is not None:
                self._model_version, self._stored = version, stored
                self._recent.clear()
            self._recent.append(expected)
            pool = list(self._recent)
            if len(pool) < self.warmup:
                pool += self._stored[: self.warmup - len(pool)]
            scored = self._status.default + self._status.strong
            owed = self.budget * scored - self._status.strong  # escalations behind the budget
            level = min(1.0, max(0.0, self.budget + owed / CATCH_UP))
            threshold = threshold_for_budget(pool, level)
            self._status.threshold = threshold
        if self.budget in (0.0, 1.0):
            return self.budget == 1.0
        return expected < threshold

    def escalates(self, input: Any) -> bool:
        """Whether `input` goes to `strong` (also counts the decision in `status`)."""
        model = self.memory.value_model(self.namespace)
        if not model.is_trained:
            with self._lock:
                self._status.untrained += 1
            return False
        estimate = self.memory.score(extract_query(input), namespace=self.namespace)
        escalate = self._escalate(estimate.expected, (id(model), model.checkpoint_version,
                                                      model.metrics.get("seconds")))
        with self._lock:
            if escalate:
                self._status.strong += 1
            else:
                self._status.default += 1
        return escalate

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run `strong` or `default` on `input`, as `escalates` decides."""
        chosen = self.strong if self.escalates(input) else self.default
        return chosen.invoke(input, config, **kwargs)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """Async `invoke`: the decision runs in an executor (embedding is synchronous)."""
        escalate = await run_in_executor(None, self.escalates, input)
        return await (self.strong if escalate else self.default).ainvoke(input, config, **kwargs)
