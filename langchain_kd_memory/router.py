"""`ValueRouter`: escalate the inputs the value model expects to go badly, as an LCEL `Runnable`.

Before anything is generated, the student scores the input's query; when the expected reward
is below a threshold (fixed, or calibrated so that a share `budget` of the stored queries falls
below it), the input goes to `strong` (a bigger model, a human), otherwise to `default`.
Before the value model is trained, everything goes to `default`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor

from langchain_kd_memory._validate import check_number, optional
from langchain_kd_memory.decisions import threshold_for_budget
from langchain_kd_memory.errors import InvalidArgumentError
from langchain_kd_memory.runs import extract_query

if TYPE_CHECKING:
    from langchain_kd_memory.memory import DistilledEpisodicMemory

CALIBRATION_QUERIES = 2000
"""Most stored queries the budget's threshold is calibrated on (the most recent rated ones)."""


@dataclass
class RouterStatus:
    """What a `ValueRouter` decided so far (a snapshot).

    Attributes:
        default: Inputs sent to `default`.
        strong: Inputs escalated to `strong`.
        untrained: Inputs sent to `default` because no value model was trained yet.
        threshold: The expected reward below which inputs are escalated (None until known).
    """

    default: int = 0
    strong: int = 0
    untrained: int = 0
    threshold: float | None = None


class ValueRouter(Runnable[Any, Any]):
    """Route each input to `default` or, when the student expects it to go badly, to `strong`.

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
    ) -> None:
        """Create the router; give exactly one of `threshold` and `budget`.

        Args:
            memory: Whose value model scores the inputs.
            default: Where inputs go normally.
            strong: Where the inputs expected to go worst go.
            threshold: Escalate when the expected reward is below this (in reward units).
            budget: Escalate about this share of inputs (0..1): the threshold is the
                `budget`-quantile of the student's estimates for the namespace's stored
                queries, recalibrated whenever the value model changes.
            namespace: Whose value model and stored queries; the memory's if None.
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
        self._status = RouterStatus(threshold=self.threshold)
        self._calibrated_for: object = None
        self._lock = threading.Lock()

    @property
    def status(self) -> RouterStatus:
        """A snapshot of the counters and the threshold in use."""
        with self._lock:
            return replace(self._status)

    def _threshold(self) -> float:
        """The fixed threshold, or the budget's, calibrated for the value model in use."""
        if self.threshold is not None:
            return self.threshold
        model = self.memory._model_for(self.namespace)
        marker = id(model.student), model.metrics.get("seconds")
        with self._lock:
            if self._calibrated_for == marker and self._status.threshold is not None:
                return self._status.threshold
        arrays = self.memory.store.training_arrays(self.namespace, limit=CALIBRATION_QUERIES)
        values = [e.expected for e in model.predict_embeddings(arrays.query_embeddings)]
        assert self.budget is not None
        threshold = threshold_for_budget(values, self.budget)
        with self._lock:
            self._calibrated_for, self._status.threshold = marker, threshold
        return threshold

    def escalates(self, input: Any) -> bool:
        """Whether `input` goes to `strong` (also counts the decision in `status`)."""
        if not self.memory._model_for(self.namespace).is_trained:
            with self._lock:
                self._status.untrained += 1
            return False
        estimate = self.memory.score(extract_query(input), namespace=self.namespace)
        escalate = estimate.expected < self._threshold()
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
