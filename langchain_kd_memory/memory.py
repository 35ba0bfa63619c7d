"""`DistilledEpisodicMemory`: reward-aware episodic memory as a LangChain retriever.

It ties an `EpisodeStore` (Chroma) to a `ModelDistillation` (the value model) and speaks
LangChain's interfaces: it is a `BaseRetriever` (`invoke`, `ainvoke`, `batch`, LCEL, retriever
tools), it has the four members of classic LangChain memory (`memory_variables`,
`load_memory_variables`, `save_context`, `clear`), and `as_store()` gives a LangGraph
`BaseStore` over the same episodes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from langchain_kd_memory._validate import check_int, check_known, check_number
from langchain_kd_memory.classic import history, input_text, output_text
from langchain_kd_memory.consolidation import ConsolidationReport, consolidate
from langchain_kd_memory.decisions import (
    Exploration,
    RankedResponse,
    rank_estimates,
)
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.episodes import (
    DEFAULT_NAMESPACE,
    Episode,
    RewardEstimate,
    validate_namespace,
    validate_query,
    validate_reward,
    validate_reward_range,
)
from langchain_kd_memory.errors import (
    ConfigError,
    EmbedderMismatchError,
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidEpisodeError,
    NotTrainedError,
)
from langchain_kd_memory.listeners import Listeners, PendingEpisodes, RatingListener
from langchain_kd_memory.recall import observed_range, rank, to_document
from langchain_kd_memory.storage import (
    DEFAULT_PERSIST_DIRECTORY,
    EpisodeStore,
    check_search_query,
)
from langchain_kd_memory.trajectories import (
    check_trajectory_metadata,
    feedback_rewards,
    trajectory_episodes,
    trajectory_length,
)
from langchain_kd_memory.value_models import CHECKPOINT_NAME as CHECKPOINT_NAME
from langchain_kd_memory.value_models import ValueModels

if TYPE_CHECKING:
    from langchain_kd_memory.router import ValueRouter
    from langchain_kd_memory.store import EpisodeBaseStore

logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- memory


class DistilledEpisodicMemory(BaseRetriever):
    """Episodic memory that learns which past episodes went well.

    Every episode (query, response, reward) is embedded once and kept in Chroma. `consolidate`
    trains the value model on the stored embeddings of rated episodes; afterwards `score`
    predicts the reward of a new query from the query alone, and recall prefers episodes that
    went well.

    **Recall** (`invoke(query, k=, namespace=, filter=, reward_weight=)`): the query is embedded
    once, the `fetch_k` most similar episodes are fetched, and they are re-ranked by

        score = (1 - w) * similarity + w * value

    where `w` is `reward_weight`, `similarity` is the cosine similarity of the queries, and
    `value` is the episode's reward mapped to [0, 1]: the observed reward if it is rated, else
    the teacher's expected reward for the episode's stored query and response vectors (only
    when the teacher beat predicting the mean on its validation split: otherwise its guesses
    are noise), else 0.5.
    Rewards are mapped with the value model's fitted reward range (its bins); before the first
    consolidation, with the range of the candidates' observed rewards. `w = 0` is pure
    similarity search. Each `Document` carries the episode in `page_content` and `id`, `query`,
    `response`, `reward`, `similarity`, `value`, `value_source` ("observed", "predicted" or
    "neutral"), `score`, `namespace`, `created_at`, `model_namespace` and `model_version` (the
    value model that answered, as in `RewardEstimate`) and the user's metadata in `metadata`.

    **Scoring** (`score(query)`): the student's `RewardEstimate`. Before the first
    consolidation (or checkpoint load) it raises `NotTrainedError`, saying how many rated
    episodes there are and how many training needs.

    **Consolidation** (`consolidate()`): reads the stored embeddings of the most recent
    `max_training_episodes` rated episodes (nothing is re-embedded), trains, and saves a
    versioned checkpoint under `model_dir`. The trained model replaces the old one in one step
    at the end; until then `score` and recall keep using the old one. One consolidation runs at
    a time. A new memory loads the latest checkpoint from `model_dir`.

    Value models: `consolidate(namespace)` trains that namespace's own model,
    `consolidate()` the shared one (all namespaces); a namespace without its own uses the
    shared one. All methods are safe to call from several threads.

    Setup:
        .. code-block:: python

            from langchain_kd_memory import DistilledEpisodicMemory

            memory = DistilledEpisodicMemory(persist_directory="./kd_memory")

    Add:
        .. code-block:: python

            episode_id = memory.add_episode("How do I reset my password?",
                                            "Use the 'forgot password' link.", reward=1.0)
            memory.record_feedback(episode_id, 0.8)

    Recall:
        .. code-block:: python

            for doc in memory.invoke("forgot my password", k=3):
                print(doc.metadata["score"], doc.metadata["reward"], doc.page_content)

    Learn and score:
        .. code-block:: python

            report = memory.consolidate()
            memory.score("Can I get a refund?").expected
    """

    store: EpisodeStore
    """Where the episodes live. Default: an embedded Chroma in `persist_directory`."""
    distillation: ModelDistillation
    """The value model. Default: a `ModelDistillation` using the store's embedder."""
    embeddings: Embeddings | None = None
    """Embedder for the default store (ignored when `store` is given); the local MiniLM if None."""
    persist_directory: str | None = None
    """Directory of the default store (ignored when `store` is given); ./.kd_memory if None."""
    reward_range: tuple[float, float] | None = None
    """Lowest and highest possible reward, e.g. (0, 1): rewards outside are refused, and the
    value model's bins span this range. Passed to the default store; with a given `store`, it
    must equal the store's `reward_range` (None takes the store's)."""
    model_dir: str | None = None
    """Directory of the value model's checkpoints. Default: `{persist_directory}/models` when the
    memory builds its own store; None (no checkpoints) when a `store` is given without it."""
    namespace: str = DEFAULT_NAMESPACE
    """Namespace used when a call does not name one."""
    k: int = Field(default=4, ge=1)
    """Documents returned by recall."""
    fetch_k: int = Field(default=20, ge=1)
    """Candidates fetched by similarity before re-ranking (at least `k` are fetched)."""
    reward_weight: float = Field(default=0.3, ge=0.0, le=1.0)
    """Weight `w` of the value in the recall score (0 = similarity only)."""
    max_training_episodes: int = Field(default=10_000, ge=2)
    """Consolidation trains on at most this many rated episodes, the most recent ones."""
    max_cached_models: int = Field(default=64, ge=1)
    """Namespace value models kept loaded at most (least recently used go first)."""
    model_refresh_s: float = Field(default=5.0, ge=0.0)
    """Seconds between two checks of a model's checkpoint on disk for a newer version."""
    memory_key: str = "history"
    """Classic memory: the variable `load_memory_variables` returns."""
    input_key: str | None = None
    """Classic memory: the input holding the user's text (the only other input if None)."""
    output_key: str | None = None
    """Classic memory: the output holding the answer (the only output, or "output", if None)."""
    return_messages: bool = False
    """Classic memory: return recalled episodes as messages instead of one string."""

    model_config = ConfigDict(extra="forbid")

    _consolidation_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _listeners: Listeners = PrivateAttr(default_factory=Listeners)
    _models: ValueModels = PrivateAttr()
    _notes: EpisodeStore | None = PrivateAttr(default=None)
    _notes_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        """Create the memory; see the class attributes for the arguments.

        Raises:
            EmbedderMismatchError: If `store` and `distillation` use different embedders, or
                the checkpoint in `model_dir` was trained with another one.
            CheckpointError: If the checkpoint in `model_dir` is corrupted or unsafe.
            ConfigError: If `reward_range` disagrees with the store's or the model's, or the
                checkpoint in `model_dir` holds other networks, or another declared reward
                range, than the model asks for; or an argument is not one of the class
                attributes (the message suggests the closest name).
        """
        check_known(type(self).__name__, data, type(self).model_fields)
        reward_range = validate_reward_range(data.get("reward_range"))
        if data.get("store") is None:
            directory = data.get("persist_directory") or DEFAULT_PERSIST_DIRECTORY
            data["store"] = EpisodeStore(
                embeddings=data.get("embeddings"), persist_directory=directory,
                reward_range=reward_range,
            )
            if data.get("model_dir") is None:
                data["model_dir"] = str(Path(directory) / "models")
        elif reward_range is not None and reward_range != data["store"].reward_range:
            raise ConfigError(
                f"reward_range {reward_range} differs from the store's "
                f"{data['store'].reward_range}: pass reward_range to the EpisodeStore only"
            )
        data["reward_range"] = data["store"].reward_range
        if data.get("distillation") is None:
            data["distillation"] = ModelDistillation(embeddings=data["store"].embeddings)
        super().__init__(**data)
        if self.store.identity != self.distillation.embedder_identity:
            raise EmbedderMismatchError(
                f"the store embeds with {self.store.identity} but the value model with "
                f"{self.distillation.embedder_identity}: give ModelDistillation(embeddings=...) "
                "the store's embedder"
            )
        self._bins_from_reward_range(self.distillation)
        self._models = ValueModels(
            self.distillation, lambda: self.model_dir, prepare=self._bins_from_reward_range,
            cache_size=self.max_cached_models, refresh_s=self.model_refresh_s,
        )
        self._models.own(None)  # loads the shared checkpoint now: a damaged one fails here

    def _bins_from_reward_range(self, model: ModelDistillation) -> None:
        """Make `model`'s bins span the declared reward range, if there is one."""
        if self.reward_range is None:
            return
        low, high = self.reward_range
        config = model.config
        declared = (config.reward_low, config.reward_high)
        if declared != (None, None) and declared != (low, high):
            raise ConfigError(
                f"the value model declares reward_low={config.reward_low}, reward_high="
                f"{config.reward_high} but the store's reward_range is {self.reward_range}: "
                "declare the range once, on the store"
            )
        model.config = dataclasses.replace(config, reward_low=low, reward_high=high)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        return validate_namespace(value)

    # ------------------------------------------------------------------ helpers

    @property
    def is_trained(self) -> bool:
        """Whether a value model answers for the memory's namespace (so `score` works)."""
        return self._model_for(self.namespace).is_trained

    def value_model(self, namespace: str | None = None) -> ModelDistillation:
        """The value model that answers for `namespace` (the memory's if None).

        The namespace's own model once `consolidate(namespace)` trained it (here or in a worker
        process: a newer checkpoint on disk is picked up within `model_refresh_s`), else the
        shared model trained on all namespaces by `consolidate()`, which may be untrained.
        """
        return self._model_for(self.resolve_namespace(namespace))

    def model_namespace(self, namespace: str | None = None) -> str | None:
        """Whose model answers for `namespace` (the memory's if None).

        The namespace itself once it has a trained model of its own, else None: the shared
        model (trained on every namespace by `consolidate()`) answers.
        """
        ns = self.resolve_namespace(namespace)
        return ns if self._models.own(ns).is_trained else None

    def model_version(self, namespace: str | None = None) -> int | None:
        """The checkpoint version of the model answering for `namespace` (None if unsaved)."""
        return self._models.version(self.model_namespace(namespace))

    def resolve_namespace(self, namespace: str | None) -> str:
        """`namespace` validated, or the memory's own namespace when None."""
        return self.namespace if namespace is None else validate_namespace(namespace)

    def add_rating_listener(self, listener: RatingListener) -> None:
        """Call `listener(namespace)` once for each episode that gets its first reward.

        Episodes added with a reward, and unrated episodes given one by `record_feedback` (now,
        or when the pending run it rated is stored), count; a new reward for a rated episode
        does not (the same count as `store.count_rated`). `ConsolidationCallback` uses it to
        count new ratings. A bound method is held weakly: once its object is no
        longer used anywhere else (e.g. a callback created for one request), it stops listening.
        """
        self._listeners.add_rating_listener(listener)

    def remove_rating_listener(self, listener: RatingListener) -> None:
        """Stop calling `listener` (no error if it was not registered)."""
        self._listeners.remove_rating_listener(listener)

    def add_pending_source(self, source: PendingEpisodes) -> None:
        """Let `record_feedback` rate episodes `source` holds but has not stored yet.

        A background writer registers itself; it is held weakly.
        """
        self._listeners.add_pending_source(source)

    # ------------------------------------------------------------------ episodes

    def add_episode(
        self,
        query: str,
        response: str = "",
        reward: float | None = None,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        namespace: str | None = None,
        episode_id: str | UUID | None = None,
    ) -> str:
        """Store one episode (its query and response are embedded once, now).

        Args:
            query: What the agent was asked (not blank).
            response: What it answered.
            reward: A finite number, or None if not rated yet (rate it later with
                `record_feedback`).
            metadata: Scalar values only; usable in recall filters.
            namespace: The episode's namespace; the memory's if None.
            episode_id: The id (e.g. a run id); a new UUID if None.

        Returns:
            The episode id.

        Raises:
            InvalidEpisodeError: An invalid field, or metadata using the trajectory keys
                (`trajectories.TRAJECTORY_KEYS`) other than as a trajectory step.
            DuplicateEpisodeError: The id already exists in the namespace.
            EmbeddingError, StoreError: The embedder or Chroma failed.
        """
        fields: dict[str, Any] = {
            "query": query,
            "response": response,
            "reward": reward,
            "metadata": metadata,
            "namespace": self.resolve_namespace(namespace),
        }
        if episode_id is not None:
            fields["id"] = str(episode_id)
        return self.add_episodes([Episode(**fields)])[0]

    def add_episodes(self, episodes: Sequence[Episode | Mapping[str, Any]]) -> list[str]:
        """Store many episodes in one batch (one embedder call for their queries and responses).

        Dicts take the fields of `Episode.from_dict`; a dict without a namespace goes to the
        memory's namespace, an `Episode` keeps its own.

        Returns:
            The ids, in order.

        Raises:
            InvalidEpisodeError, DuplicateEpisodeError, EmbeddingError, StoreError: As
                `add_episode`, for any episode of the batch (then none is stored).
        """
        if isinstance(episodes, (str, Mapping, Episode)) or not isinstance(episodes, Sequence):
            raise InvalidEpisodeError(
                f"episodes must be a list of Episode or dicts, got {type(episodes).__name__}"
            )
        batch = [
            e if isinstance(e, Episode) else Episode.from_dict(e, namespace=self.namespace)
            for e in episodes
        ]
        check_trajectory_metadata(batch)
        ids = self.store.add(batch)
        self._listeners.notify_rated([e.namespace for e in batch if e.is_rated])
        return ids

    def add_trajectory(
        self,
        steps: Sequence[tuple[str, str] | Mapping[str, str]],
        rewards: float | Sequence[float] | None = None,
        *,
        gamma: float = 0.9,
        trajectory_id: str | UUID | None = None,
        namespace: str | None = None,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        bootstrap: int | None = None,
    ) -> list[str]:
        """Record a run of several steps, crediting each with the discounted return that followed.

        Each step (the state or query it acted on, and what it did) becomes an episode whose
        reward is `G_t = r_t + gamma * G_{t+1}`: with a final reward R alone, the step k moves
        before the end gets `gamma**k * R`, so steps closer to the outcome carry more of it.
        With `bootstrap=n`, the return is cut after n steps and completed by the student's
        value of the state reached: `G_t = r_t + ... + gamma**(n-1) r_{t+n-1} + gamma**n
        V(s_{t+n})` (n-step TD targets; Monte-Carlo while no model answers for the namespace,
        and for the last n steps). The steps are one batch: all stored or none.

        Args:
            steps: (query, response) pairs, or dicts with "query" and "response", in order.
            rewards: None (rate the run later with `record_feedback(trajectory_id, reward)`),
                one number (the final reward, after the last step), or one number per step.
            gamma: Discount in [0, 1] (1 = every step gets the whole return).
            trajectory_id: The run's id (e.g. a run id), what `record_feedback` takes to rate
                the whole run; a new UUID if None. Step i is stored as the episode
                ``f"{trajectory_id}/{i}"``.
            namespace: The steps' namespace; the memory's if None.
            metadata: Scalar metadata for every step; the memory adds `trajectory_id`,
                `trajectory_step`, `trajectory_steps` and `trajectory_gamma`.
            bootstrap: None for Monte-Carlo returns, or n >= 1 for n-step returns completed by
                the student's values (the rewards given here; a later `record_feedback` of the
                trajectory credits its steps with Monte-Carlo returns).

        Returns:
            The ids of the steps' episodes, in order: ``f"{trajectory_id}/{i}"``. Rate a step
            alone with `record_feedback(ids[i], r)`, the whole run with
            `record_feedback(trajectory_id, r)`; when the id was generated, it is
            ``ids[0].rsplit("/", 1)[0]`` (also each step's `trajectory_id` metadata).

        Raises:
            InvalidEpisodeError: No steps, a malformed step or reward list, or metadata using
                the trajectory keys.
            InvalidRewardError: A return outside the declared reward range.
        """
        ns = self.resolve_namespace(namespace)

        def values(queries: list[str]) -> list[float] | None:
            try:
                return [e.expected for e in self.score_batch(queries, namespace=ns)]
            except NotTrainedError:
                return None

        return self.add_episodes(trajectory_episodes(
            steps, rewards, gamma=gamma,
            trajectory_id=str(trajectory_id) if trajectory_id is not None else str(uuid.uuid4()),
            namespace=ns, metadata=metadata,
            bootstrap=None if bootstrap is None else (
                check_int("bootstrap", bootstrap, low=1), values),
        ))

    def record_feedback(
        self, episode_id: str | UUID, reward: float, namespace: str | None = None
    ) -> Episode:
        """Set the reward of an episode (e.g. a thumbs up that arrives later).

        The id of a trajectory (`add_trajectory`, or a multi-step run recorded by the callback
        or middleware) rates all its steps: each gets the discounted share of `reward`.

        Feedback flows one way: a run still held by the memory's background writer (queued or
        being written) gets the reward there, and it is stored with the run; otherwise the
        stored episode's reward is updated in place.

        Args:
            episode_id: The episode's (or trajectory's) id; a run id (UUID) is accepted as is.
            reward: A finite number.
            namespace: The episode's namespace. If None, the memory's namespace is searched
                first, then every other one (a run recorded in a user's namespace by the
                middleware is found by its id alone).

        Returns:
            The updated episode (for a trajectory, its last step).

        Raises:
            InvalidRewardError: `reward` is not a finite number, or lies outside the reward range.
            EpisodeNotFoundError: No such episode or trajectory (in `namespace`, if given).
            JournalError: The writer's journal could not hold the rating of a pending run.
        """
        if reward is None:
            raise InvalidArgumentError("reward is None; to rate an episode pass a finite number")
        value = validate_reward(reward, allow_none=False)
        assert value is not None
        target = str(episode_id)
        ns = None if namespace is None else validate_namespace(namespace)
        pending = self._listeners.rate_pending(target, value, ns)
        if pending is not None:
            return pending  # counted as a rating when it is stored
        try:
            first = self._locate(target, ns)
        except EpisodeNotFoundError:
            try:
                first = self._locate(f"{target}/0", ns)
            except EpisodeNotFoundError:
                raise EpisodeNotFoundError(
                    f"no episode or trajectory with id {target!r}"
                    + ("" if ns is None else f" in namespace {ns!r}")
                ) from None
        if first.id != target:  # a trajectory: the length its step 0 claims is data, checked
            steps = trajectory_length(target, first)
            last = f"{target}/{steps - 1}"
            try:
                self.store.get([last], namespace=first.namespace)
            except EpisodeNotFoundError:
                raise EpisodeNotFoundError(
                    f"trajectory {target!r} has {steps} steps but its step {last!r} is not "
                    "stored: rate the steps that are by their own ids"
                ) from None
        rewards = feedback_rewards(target, value, [first])
        newly = len(rewards) if first.reward is None else 0
        return self._set_rewards(rewards, first.namespace, newly_rated=newly)[-1]

    def delete(self, ids: Sequence[str | UUID], *, namespace: str | None = None) -> None:
        """Forget episodes: stored ones are deleted, pending ones dropped before they are stored.

        A run the background writer still holds (queued, or waiting in its journal) is dropped
        whole when its run id or any of its episode ids is named, and marked done in the
        journal so that no replay brings it back; a run being written is waited for, then
        deleted from the store.

        Args:
            ids: Episode ids (for a run the writer still holds, its run id too).
            namespace: Where the episodes are; the memory's namespace if None.

        Raises:
            InvalidArgumentError: `ids` is not a list.
            EpisodeNotFoundError: An id is neither pending nor stored in the namespace (then
                no stored episode is deleted; the pending runs named are dropped).
        """
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise InvalidArgumentError("ids must be a list of episode ids")
        ns = self.resolve_namespace(namespace)
        wanted = [str(i) for i in ids]
        dropped = self._listeners.forget_pending(wanted, ns)
        stored = [i for i in wanted if i not in dropped]
        if stored:
            self.store.delete(stored, ns)

    def delete_namespace(self, namespace: str) -> int:
        """Forget a namespace: its episodes, its pending runs and its own value model.

        In this order: the background writer drops the namespace's pending runs (marked done in
        its journal, so no replay brings them back; a run being written is waited for), the
        store deletes the namespace's episodes, and the namespace's own model is unloaded and
        its checkpoint files (every version) deleted. A consolidation of this memory that is
        running is waited for first.

        What it leaves behind: the shared model (trained on every namespace by
        `consolidate()`) keeps what it learned from these episodes until it is trained again;
        a worker process that is training this namespace's model right now may save it after
        the deletion (delete again once it is done); runs in a journal that no writer of this
        process has open (a killed process's) are written when a writer opens it, so open the
        writer on that journal first.

        Returns:
            How many stored episodes were deleted.
        """
        ns = validate_namespace(namespace)
        with self._consolidation_lock:
            self._listeners.forget_pending_namespace(ns)
            count = self.store.delete_namespace(ns)
            self._models.forget(ns)
        logger.info("forgot namespace %r: %d episodes and its own value model", ns, count)
        return count

    def _set_rewards(
        self, rewards: Mapping[str, float | None], namespace: str, *, newly_rated: int
    ) -> list[Episode]:
        """Update stored rewards (the store's rating update) and count the new ratings.

        `newly_rated` of them were not rated before: the rating listeners hear of those.
        """
        updated = self.store.update_rewards(rewards, namespace)
        self._listeners.notify_rated([namespace] * newly_rated)
        return updated

    def _locate(self, episode_id: str, namespace: str | None) -> Episode:
        """The stored episode: in `namespace`, or the memory's namespace first, then any."""
        try:
            return self.store.get([episode_id], namespace=self.resolve_namespace(namespace))[0]
        except EpisodeNotFoundError:
            if namespace is not None:
                raise
            return self.store.get([episode_id], all_namespaces=True)[0]

    # ------------------------------------------------------------------ value model

    def _model_for(self, namespace: str) -> ModelDistillation:
        """The value model that answers for `namespace` (see `value_model`)."""
        return self._models.answering(namespace)

    def _trained_model(self, namespace: str) -> ModelDistillation:
        model = self._model_for(namespace)
        if not model.is_trained:
            rated, needed = self.store.count_rated(namespace), model.config.min_episodes
            missing = (
                f"{rated} rated episodes, enough to train (min_episodes={needed}), but no "
                "model was trained: call consolidate()" if rated >= needed
                else f"{rated} rated episodes and training needs at least {needed} "
                "(min_episodes); record rewards (add_episode(..., reward=...) or "
                "record_feedback) and call consolidate()"
            )
            raise NotTrainedError(
                f"the value model is not trained yet: namespace {namespace!r} has {missing}, "
                "or attach a ConsolidationCallback"
            )
        return model

    def score(self, query: str, *, namespace: str | None = None) -> RewardEstimate:
        """The student's estimate of the reward of `query` (before any response exists).

        End to end this is one embedding call plus a forward pass of the student (~0.1 ms).

        Raises:
            NotTrainedError: Before the first consolidation (or checkpoint load); the message
                says how many rated episodes exist and how many are needed.
            InvalidEpisodeError: `query` is blank.
        """
        return self.score_batch([query], namespace=namespace)[0]

    def score_batch(
        self, queries: Sequence[str], *, namespace: str | None = None
    ) -> list[RewardEstimate]:
        """Student estimates for many queries (embedded in one call).

        Raises:
            NotTrainedError: Before the first consolidation (or checkpoint load).
            InvalidArgumentError: `queries` is not a list of strings.
            InvalidEpisodeError: A query is blank.
        """
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InvalidArgumentError("queries must be a list of strings")
        for query in queries:
            validate_query(query)
        model = self._trained_model(self.resolve_namespace(namespace))
        if not queries:
            return []
        return self._answered(
            model.predict_embeddings(self.store.embedder.texts(list(queries))), namespace
        )

    def _answered(
        self, estimates: list[RewardEstimate], namespace: str | None
    ) -> list[RewardEstimate]:
        """`estimates` marked with the model that answered for `namespace`."""
        answering = self.model_namespace(namespace)
        version = self._models.version(answering)
        return [dataclasses.replace(e, model_namespace=answering, model_version=version)
                for e in estimates]

    def rank_responses(
        self,
        query: str,
        candidates: Sequence[str],
        *,
        explore: float = 0.0,
        exploration: Exploration = "thompson",
        namespace: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[RankedResponse]:
        """Candidate responses (or actions) to `query`, best first, each with its value.

        The value of (query, candidate) is the teacher's `RewardEstimate`: the teacher is the
        network that sees responses. One embedder call embeds the query and every candidate,
        one forward pass scores them all. Best-of-N for an LLM agent (sample N answers, keep
        the first), action choice for a tool-using one.

        Args:
            query: The query or state the candidates answer.
            candidates: The responses to compare (at least one).
            explore: 0 ranks by expected reward (greedy: what to do once trained). Above 0 it
                explores where the model is unsure (epistemic `uncertainty`, which shrinks as
                data arrive): with "thompson", 1 ranks by one joint draw from the value head's
                posterior (Thompson sampling, what an agent that learns as it acts should use);
                with "ucb", by `expected + explore * uncertainty`.
            exploration: "thompson" or "ucb".
            namespace: Whose value model answers; the memory's namespace if None.
            rng: Random generator for Thompson draws (seed it for reproducible runs).

        Returns:
            `RankedResponse`s (response, index in `candidates`, estimate, score), best first.

        Raises:
            NotTrainedError: Before the first consolidation.
            ConfigError: The teacher does not see responses (`privileged=False`).
            InvalidArgumentError: `candidates` is empty or holds something other than str.
        """
        validate_query(query)
        if isinstance(candidates, str) or not isinstance(candidates, Sequence) or not candidates:
            raise InvalidArgumentError("candidates must be a non-empty list of strings")
        for candidate in candidates:
            validate_query(candidate, "candidate")
        model = self._trained_model(self.resolve_namespace(namespace))
        if not model.config.privileged:
            raise ConfigError(
                "rank_responses needs a teacher that sees responses: train with "
                "ModelDistillation(privileged=True) (the default)"
            )
        explore = check_number("explore", explore, low=0.0)
        vectors = self.store.embedder.texts([query, *candidates])
        queries = np.repeat(vectors[:1], len(candidates), axis=0)
        estimates = self._answered(
            model.predict_embeddings(queries, vectors[1:], model="teacher"), namespace
        )
        draws = (model.draw_values(queries, vectors[1:], rng=rng).tolist()
                 if explore > 0 and exploration == "thompson" else None)
        order = rank_estimates(estimates, explore=explore, exploration=exploration, draws=draws)
        return [RankedResponse(candidates[i], i, estimates[i], score) for i, score in order]

    def consolidate(
        self,
        namespace: str | None = None,
        *,
        max_training_episodes: int | None = None,
        num_epochs: int | None = None,
        batch_size: int | None = None,
        quiet: bool = True,
    ) -> ConsolidationReport:
        """Train a value model on the stored embeddings of rated episodes and save it.

        With a `namespace`, trains that namespace's own model (saved under
        ``{model_dir}/namespaces/``); score, rank_responses and recall in the namespace use it
        from then on. Without one, trains the shared model (`distillation`) on every namespace:
        it answers for namespaces without a model of their own.

        Waits if another consolidation of this memory is running. Nothing is embedded: the
        vectors stored at `add_episode` are used. The trained model replaces the old one in one
        step at the end.

        Args:
            namespace: Whose episodes to learn from; every namespace (the shared model) if None.
            max_training_episodes: Train on at most this many, the most recent;
                the memory's `max_training_episodes` if None.
            num_epochs: Most epochs per network; the model's default if None.
            batch_size: Mini-batch size; the model's default if None.
            quiet: Hide the training progress bars.

        Returns:
            A `ConsolidationReport`.

        Raises:
            InsufficientDataError: Fewer than the model's `min_episodes` rated episodes, or
                all with the same reward.
        """
        ns = None if namespace is None else validate_namespace(namespace)
        where = "all namespaces" if ns is None else f"namespace {ns!r}"
        limit = self.max_training_episodes if max_training_episodes is None else (
            max_training_episodes
        )
        limit = check_int("max_training_episodes", limit, low=2)
        with self._consolidation_lock:
            report = consolidate(
                self.store, self._models, ns, limit=limit, num_epochs=num_epochs,
                batch_size=batch_size, quiet=quiet,
            )
        logger.info("consolidated %s: %s", where, report)
        return report

    # ------------------------------------------------------------------ recall

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        namespace: str | None = None,
        filter: Mapping[str, Any] | None = None,
        reward_weight: float | None = None,
    ) -> list[Document]:
        """Recall: similar episodes re-ranked by similarity and value (see the class docs).

        Args:
            query: The text to recall episodes for.
            run_manager: LangChain's callback manager for this run.
            k: How many documents; the memory's `k` if None.
            namespace: Where to search; the memory's namespace if None.
            filter: A Chroma `where` filter on user metadata, e.g. ``{"topic": "billing"}``.
            reward_weight: The weight `w` of the value; the memory's if None.
        """
        check_search_query(query)
        k = check_int("k", self.k if k is None else k, low=1)
        weight = check_number(
            "reward_weight", self.reward_weight if reward_weight is None else reward_weight,
            low=0.0, high=1.0,
        )
        ns = self.resolve_namespace(namespace)
        hits = self.store.search_by_vector(
            self.store.embedder.query(query), k=max(k, self.fetch_k), namespace=ns, where=filter
        )
        model = self._model_for(ns)
        predicted = self._predicted_values(hits, model, ns) if weight > 0 else {}
        reward_range = (
            (model.binner.low, model.binner.high) if model.is_trained
            else observed_range([episode for episode, _ in hits])
        )
        answering = self.model_namespace(ns)
        version = self._models.version(answering)
        return [to_document(c, model_namespace=answering, model_version=version)
                for c in rank(hits, predicted, reward_range, weight)[:k]]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        **kwargs: Any,
    ) -> list[Document]:
        """Async recall: the synchronous one in an executor (Chroma's client is synchronous)."""
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(),
            **kwargs,
        )

    def _predicted_values(
        self, hits: Sequence[tuple[Episode, float]], model: ModelDistillation, namespace: str
    ) -> dict[int, float]:
        """The teacher's expected reward of the unrated hits, by index.

        The teacher sees what the episode's answer was: its value comes from the stored query
        and response vectors (nothing is embedded). Empty when the value model is untrained or
        its teacher did not beat predicting the mean on its validation split.
        """
        unrated = [i for i, (episode, _) in enumerate(hits) if not episode.is_rated]
        if not unrated or not model.is_trained or not model.teacher_beats_mean:
            return {}
        queries, responses = self.store.vectors([hits[i][0].id for i in unrated], namespace)
        expected = model.expected_rewards(queries, responses, model="teacher")
        return {i: float(value) for i, value in zip(unrated, expected, strict=True)}

    # ------------------------------------------------------------------ classic memory

    @property
    def memory_variables(self) -> list[str]:
        """Classic memory: the variables `load_memory_variables` returns (`[memory_key]`)."""
        return [self.memory_key]

    def load_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Classic memory: the episodes recalled for the input text.

        Returns:
            ``{memory_key: text}`` with a "Human: ..." and an "AI: ..." line per episode, or
            ``{memory_key: [HumanMessage, AIMessage, ...]}`` when `return_messages`; empty
            when the input is blank or nothing is stored.
        """
        query = input_text(inputs, self.input_key, self.memory_key)
        documents = self.invoke(query) if query.strip() else []
        return {self.memory_key: history(documents, self.return_messages)}

    def save_context(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Classic memory: store the exchange as an unrated episode."""
        self.add_episode(
            input_text(inputs, self.input_key, self.memory_key),
            output_text(outputs, self.output_key),
        )

    def clear(self) -> None:
        """Classic memory: forget this memory's namespace (only that one; `delete_namespace`)."""
        self.delete_namespace(self.namespace)

    # ------------------------------------------------------------------ LangGraph

    def as_router(
        self,
        default: Runnable[Any, Any],
        strong: Runnable[Any, Any],
        *,
        threshold: float | None = None,
        budget: float | None = None,
        namespace: str | None = None,
    ) -> ValueRouter:
        """A `Runnable` that escalates the inputs the student expects to go badly.

        See `ValueRouter`; give a `threshold` (expected reward) or a `budget` (the share of the
        inputs it sees to escalate).
        """
        from langchain_kd_memory.router import ValueRouter

        return ValueRouter(
            self, default, strong, threshold=threshold, budget=budget, namespace=namespace
        )

    @property
    def notes(self) -> EpisodeStore:
        """Where `as_store()` keeps an agent's notes, apart from the episodes.

        A store of its own on the same Chroma client and embedder, in the collections named
        by `notes_collection_name` (``"episodes-notes"`` for the default store).
        """
        from langchain_kd_memory.store import notes_collection_name

        with self._notes_lock:
            if self._notes is None:
                self._notes = EpisodeStore(notes_collection_name(self.store.collection_name),
                                           embeddings=self.store.embeddings,
                                           client=self.store.client)
            return self._notes

    def as_store(self, **kwargs: Any) -> EpisodeBaseStore:
        """A LangGraph `BaseStore` for the agent's own notes (see `EpisodeBaseStore`).

        The notes live in `notes`: they are never recalled, scored or trained on as
        episodes, and a value's ``"reward"`` is plain data. For the episodes as items, use
        ``EpisodeBaseStore(memory.store)``. `kwargs` go to `EpisodeBaseStore`.
        """
        from langchain_kd_memory.store import EpisodeBaseStore

        return EpisodeBaseStore(self.notes, **{"reward_field": None, **kwargs})

    # ------------------------------------------------------------------ async twins

    async def aadd_episode(
        self,
        query: str,
        response: str = "",
        reward: float | None = None,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        namespace: str | None = None,
        episode_id: str | UUID | None = None,
    ) -> str:
        """Async `add_episode` (runs it in an executor)."""
        return await run_in_executor(
            None, self.add_episode, query, response, reward, metadata, namespace, episode_id
        )

    async def aadd_episodes(self, episodes: Sequence[Episode | Mapping[str, Any]]) -> list[str]:
        """Async `add_episodes`."""
        return await run_in_executor(None, self.add_episodes, episodes)

    async def aadd_trajectory(
        self,
        steps: Sequence[tuple[str, str] | Mapping[str, str]],
        rewards: float | Sequence[float] | None = None,
        *,
        gamma: float = 0.9,
        trajectory_id: str | UUID | None = None,
        namespace: str | None = None,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        bootstrap: int | None = None,
    ) -> list[str]:
        """Async `add_trajectory`."""
        return await run_in_executor(
            None, self.add_trajectory, steps, rewards, gamma=gamma, trajectory_id=trajectory_id,
            namespace=namespace, metadata=metadata, bootstrap=bootstrap,
        )

    async def adelete(self, ids: Sequence[str | UUID], *, namespace: str | None = None) -> None:
        """Async `delete`."""
        await run_in_executor(None, self.delete, ids, namespace=namespace)

    async def adelete_namespace(self, namespace: str) -> int:
        """Async `delete_namespace`."""
        return await run_in_executor(None, self.delete_namespace, namespace)

    async def arecord_feedback(
        self, episode_id: str | UUID, reward: float, namespace: str | None = None
    ) -> Episode:
        """Async `record_feedback`."""
        return await run_in_executor(None, self.record_feedback, episode_id, reward, namespace)

    async def ascore(self, query: str, *, namespace: str | None = None) -> RewardEstimate:
        """Async `score`."""
        return await run_in_executor(None, self.score, query, namespace=namespace)

    async def ascore_batch(
        self, queries: Sequence[str], *, namespace: str | None = None
    ) -> list[RewardEstimate]:
        """Async `score_batch`."""
        return await run_in_executor(None, self.score_batch, queries, namespace=namespace)

    async def arank_responses(
        self,
        query: str,
        candidates: Sequence[str],
        *,
        explore: float = 0.0,
        exploration: Exploration = "thompson",
        namespace: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[RankedResponse]:
        """Async `rank_responses`."""
        return await run_in_executor(
            None, self.rank_responses, query, candidates, explore=explore,
            exploration=exploration, namespace=namespace, rng=rng,
        )

    async def aconsolidate(
        self,
        namespace: str | None = None,
        *,
        max_training_episodes: int | None = None,
        num_epochs: int | None = None,
        batch_size: int | None = None,
        quiet: bool = True,
    ) -> ConsolidationReport:
        """Async `consolidate` (trains in an executor thread)."""
        return await run_in_executor(
            None, self.consolidate, namespace, max_training_episodes=max_training_episodes,
            num_epochs=num_epochs, batch_size=batch_size, quiet=quiet,
        )

    async def aload_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Async `load_memory_variables`."""
        return await run_in_executor(None, self.load_memory_variables, inputs)

    async def asave_context(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Async `save_context`."""
        await run_in_executor(None, self.save_context, inputs, outputs)

    async def aclear(self) -> None:
        """Async `clear`."""
        await run_in_executor(None, self.clear)


