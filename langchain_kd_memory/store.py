"""`EpisodeBaseStore`: the episodes of an `EpisodeStore` seen as a LangGraph `BaseStore`.

LangGraph agents and graphs keep long-term memory in a `BaseStore` (``runtime.store``,
``get_store()``, ``create_agent(..., store=...)``). This adapter lets them use the same Chroma
episodes that `DistilledEpisodicMemory` recalls and trains on.

Mapping:
    * A namespace tuple is the episode namespace string of its labels joined by ``"."``
      (``("users", "42")`` <-> ``"users.42"``). LangGraph forbids ``"."`` inside a label, so the
      encoding is reversible and collision-free. Joined, it must fit in 128 characters.
    * An item's key is the episode id within that namespace.
    * An item's value is any JSON object. It is kept whole, as JSON text in the episode's
      metadata (so `get` returns exactly what was `put`), and it also feeds the episode:
      the **query** (what is embedded for semantic search) is the text at the put's `index`
      paths, else at the store's `text_fields`, else ``value["query"]``, else the first non-blank
      top-level string, else the JSON text; the **response** is ``value["response"]`` when it is
      a string; the **reward** is ``value["reward"]`` (a number or None).
    * Episodes written by other means (e.g. `DistilledEpisodicMemory.add_episode`) appear as
      items whose value is ``{"query", "response", "reward", "metadata"}``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
from langchain_core.runnables.config import run_in_executor
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    get_text_at_path,
    validate_op_namespace,
)
from langgraph.store.base import InvalidNamespaceError as LangGraphNamespaceError

from langchain_kd_memory._validate import check_int, check_number, check_str, optional
from langchain_kd_memory.episodes import (
    MAX_ID_LENGTH,
    MAX_METADATA_STRING,
    MAX_NAMESPACE_LENGTH,
    Episode,
    validate_reward,
)
from langchain_kd_memory.errors import (
    EpisodeNotFoundError,
    InvalidArgumentError,
    InvalidNamespaceError,
    InvalidRewardError,
)
from langchain_kd_memory.storage import EpisodeStore

logger = logging.getLogger(__name__)

SEPARATOR = "."
VALUE_KEY = "lg_value"
UPDATED_AT_KEY = "lg_updated_at"
INDEXED_KEY = "lg_indexed"
_ORDERINGS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_OPERATORS = _ORDERINGS | {"$eq", "$ne"}
_PAGE = 256
_F = TypeVar("_F", bound=Callable[..., Any])
_WRITE_LOCKS: weakref.WeakKeyDictionary[EpisodeStore, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
"""One write lock per `EpisodeStore`, shared by every adapter over it."""
_WRITE_LOCKS_GUARD = threading.Lock()


@contextmanager
def _our_namespace_errors() -> Iterator[None]:
    """Raise LangGraph's namespace errors as this package's `InvalidNamespaceError`."""
    try:
        yield
    except LangGraphNamespaceError as exc:
        raise InvalidNamespaceError(str(exc)) from exc


def _translating(method: _F) -> _F:
    """`method` of `BaseStore`, raising this package's `InvalidNamespaceError`."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with _our_namespace_errors():
                return await method(*args, **kwargs)

        return run_async  # type: ignore[return-value]

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _our_namespace_errors():
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]


def _write_lock(episodes: EpisodeStore) -> threading.Lock:
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(episodes, threading.Lock())


def notes_collection_name(episodes: str) -> str:
    """The collection name of the notes store beside the episode store named `episodes`."""
    name = f"{episodes}-notes"
    if len(name) <= 63:  # EpisodeStore's limit
        return name
    return f"{episodes[:48]}-{hashlib.sha256(episodes.encode()).hexdigest()[:8]}-notes"


def join_namespace(namespace: tuple[str, ...]) -> str:
    """The episode namespace of a LangGraph namespace tuple (labels joined by ".").

    Raises:
        InvalidNamespaceError: If the tuple is empty, a label is not a non-empty string without
            ".", or the joined namespace is longer than 128 characters.
    """
    if not isinstance(namespace, tuple) or not namespace:
        raise InvalidNamespaceError(
            f"namespace must be a non-empty tuple of str, got {namespace!r}"
        )
    with _our_namespace_errors():
        validate_op_namespace(GetOp(namespace, "_"))
    joined = SEPARATOR.join(namespace)
    if len(joined) > MAX_NAMESPACE_LENGTH:
        raise InvalidNamespaceError(
            f"namespace {namespace!r} joins to {len(joined)} characters; EpisodeBaseStore keeps "
            f"namespaces of at most {MAX_NAMESPACE_LENGTH} (labels joined by {SEPARATOR!r})"
        )
    if not joined.strip():
        raise InvalidNamespaceError(f"namespace {namespace!r} has only blank labels")
    return joined


def split_namespace(namespace: str) -> tuple[str, ...] | None:
    """The LangGraph tuple of an episode namespace, or None if it has an empty label."""
    labels = tuple(namespace.split(SEPARATOR))
    return labels if all(labels) else None


@dataclass(frozen=True)
class _Write:
    """A validated put: the episode to store (None to delete) under (namespace, key)."""

    namespace: str
    key: str
    episode: Episode | None


def _check_key(key: object) -> str:
    key = check_str("key", key)
    if len(key) > MAX_ID_LENGTH:
        raise InvalidArgumentError(
            f"key is {len(key):,} characters; the limit is {MAX_ID_LENGTH}: use a shorter key"
        )
    return key


def _matches(value: Any, condition: Any) -> bool:
    """Whether `value` satisfies a LangGraph filter condition (exact, nested or `$op`)."""
    if isinstance(condition, Mapping):
        if any(isinstance(k, str) and k.startswith("$") for k in condition):
            return all(_compare(value, op, operand) for op, operand in condition.items())
        return isinstance(value, Mapping) and all(
            _matches(value.get(k), v) for k, v in condition.items()
        )
    return bool(value == condition)


def _compare(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False  # an ordering never matches a missing or non-numeric field
    if operator == "$gt":
        return bool(value > operand)
    if operator == "$gte":
        return bool(value >= operand)
    if operator == "$lt":
        return bool(value < operand)
    return bool(value <= operand)


def _check_filter(filter_: object) -> dict[str, Any]:
    """Return the filter as a dict, or raise if it is malformed or uses an unknown operator."""
    if filter_ is None:
        return {}
    if not isinstance(filter_, Mapping) or not all(isinstance(k, str) for k in filter_):
        raise InvalidArgumentError(f"filter must be a dict with str keys, got {filter_!r}")
    for key, condition in filter_.items():
        if key.startswith("$") and key not in _OPERATORS:
            raise InvalidArgumentError(
                f"unsupported filter operator {key!r}; use one of {sorted(_OPERATORS)}"
            )
        if key in _ORDERINGS:
            check_number(key, condition)
        if isinstance(condition, Mapping):
            _check_filter(condition)
    return dict(filter_)


def _check_page(limit: object, offset: object) -> tuple[int, int]:
    return check_int("limit", limit, low=0), check_int("offset", offset, low=0)


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    if condition.match_type not in ("prefix", "suffix"):
        raise InvalidArgumentError(f"unsupported match_type {condition.match_type!r}")
    path = tuple(condition.path)
    if not path:
        return True
    if len(namespace) < len(path):
        return False
    labels = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return all(p in ("*", label) for p, label in zip(path, labels, strict=True))


def rank_by_score(items: list[SearchItem]) -> list[SearchItem]:
    """Items by descending score (a similarity; 0.0 is a score, None ranks last), stably."""
    return sorted(items, key=lambda item: -math.inf if item.score is None else item.score,
                  reverse=True)


class EpisodeBaseStore(BaseStore):
    """A LangGraph `BaseStore` over the episodes of an `EpisodeStore` (see the module docs).

    Semantic search (``search(prefix, query=...)``) ranks the items of every namespace under the
    prefix by the cosine similarity of their embedded query text; `SearchItem.score` is that
    similarity. Without a query (or with a blank one), items come namespace by namespace
    (sorted), oldest write first. Writes are serialised within a process; two processes writing
    the same key at once may see a `DuplicateEpisodeError`.
    TTLs are not supported (`supports_ttl` is False).

    Where it differs from LangGraph's `InMemoryStore`: a value's JSON text is at most 4,096
    characters and a key at most 256 (both refused with `InvalidArgumentError`); items put with
    ``index=False`` are stored, listed and returned by `get`, but left out of searches with a
    query (`InMemoryStore` lists them last with score None); an overwrite keeps the item's
    `created_at` (`InMemoryStore` resets it); a namespace whose last item is deleted is no
    longer listed by `list_namespaces`. Over an episode store (not `as_store()`'s notes), a
    value's ``"reward"`` must be a number or null (`InvalidRewardError`).

    Setup:
        .. code-block:: python

            from langchain.agents import create_agent
            from langchain_kd_memory import DistilledEpisodicMemory

            memory = DistilledEpisodicMemory()
            store = memory.as_store()  # notes; EpisodeBaseStore(memory.store): the episodes
            agent = create_agent(model, tools, store=store)

    Use:
        .. code-block:: python

            store.put(("users", "42"), "pref-1", {"query": "likes short answers", "reward": 1.0})
            store.get(("users", "42"), "pref-1").value
            for item in store.search(("users",), query="answer style", limit=3):
                print(item.score, item.value)
    """

    __slots__ = ("episodes", "text_fields", "response_field", "reward_field", "_write_lock")

    get = _translating(BaseStore.get)
    aget = _translating(BaseStore.aget)
    search = _translating(BaseStore.search)
    asearch = _translating(BaseStore.asearch)
    put = _translating(BaseStore.put)
    aput = _translating(BaseStore.aput)
    delete = _translating(BaseStore.delete)
    adelete = _translating(BaseStore.adelete)
    list_namespaces = _translating(BaseStore.list_namespaces)
    alist_namespaces = _translating(BaseStore.alist_namespaces)

    def __init__(
        self,
        episodes: EpisodeStore,
        *,
        text_fields: Sequence[str] | None = None,
        response_field: str | None = "response",
        reward_field: str | None = "reward",
    ) -> None:
        """Wrap an episode store.

        Args:
            episodes: The `EpisodeStore` holding the items.
            text_fields: JSON paths (LangGraph syntax: ``"a.b"``, ``"items[*].text"``) whose
                text is embedded for semantic search; None for the default described above.
            response_field: Top-level value field used as the episode's response, or None.
            reward_field: Top-level value field used as the episode's reward, or None. A value
                whose reward field is neither a finite number nor null is refused.

        Raises:
            InvalidArgumentError: If an argument has the wrong type.
        """
        if not isinstance(episodes, EpisodeStore):
            raise InvalidArgumentError(
                f"episodes must be an EpisodeStore, got {type(episodes).__name__}"
            )
        if text_fields is not None and (
            isinstance(text_fields, str)
            or not all(isinstance(f, str) and f for f in text_fields)
            or not text_fields
        ):
            raise InvalidArgumentError(
                f"text_fields must be a non-empty list of paths or None, got {text_fields!r}"
            )
        for name, field in (("response_field", response_field), ("reward_field", reward_field)):
            if field is not None and (not isinstance(field, str) or not field):
                raise InvalidArgumentError(f"{name} must be a non-empty str or None, got {field!r}")
        self.episodes = episodes
        self.text_fields = list(text_fields) if text_fields is not None else None
        self.response_field = response_field
        self.reward_field = reward_field
        self._write_lock = _write_lock(episodes)

    def __repr__(self) -> str:
        return f"EpisodeBaseStore({self.episodes!r})"

    # ----------------------------------------------------------------- batch

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Execute operations in order; writes are applied after the reads of the same batch.

        As in LangGraph's in-memory store, reads in a batch see the store as it was before the
        batch, and of several puts to one (namespace, key) the last wins. Every op is validated
        before anything is read or written.

        Raises:
            InvalidNamespaceError: If a namespace is invalid or too long once joined.
            InvalidArgumentError: If an op, key, value, filter or page bound is invalid.
            InvalidRewardError: If a value's reward field is not a finite number or null.
            EmbeddingError, StoreError: If the embedder or Chroma fails.
        """
        ops = list(ops)
        writes: dict[tuple[str, str], _Write] = {}
        for op in ops:
            if not isinstance(op, (GetOp, SearchOp, PutOp, ListNamespacesOp)):
                raise InvalidArgumentError(f"unknown store operation {type(op).__name__}")
            with _our_namespace_errors():
                validate_op_namespace(op)
            if isinstance(op, PutOp):
                write = self._prepare_put(op)
                writes[(write.namespace, write.key)] = write
            elif isinstance(op, SearchOp):
                _check_filter(op.filter)
                _check_page(op.limit, op.offset)
            elif isinstance(op, ListNamespacesOp):
                _check_page(op.limit, op.offset)
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                results.append(None)
        if writes:
            with self._write_lock:
                self._apply(list(writes.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async `batch`: runs it in the default executor (Chroma's client is synchronous)."""
        return await run_in_executor(None, self.batch, list(ops))

    # ----------------------------------------------------------------- items

    def _item(self, episode: Episode, score: float | None = None) -> SearchItem:
        meta = episode.metadata
        try:
            value = json.loads(str(meta[VALUE_KEY]))
        except (KeyError, ValueError):  # an episode not written through this adapter
            value = {
                "query": episode.query,
                "response": episode.response,
                "reward": episode.reward,
                "metadata": dict(meta),
            }
        updated = meta.get(UPDATED_AT_KEY)
        return SearchItem(
            namespace=split_namespace(episode.namespace) or (episode.namespace,),
            key=episode.id,
            value=value,
            created_at=episode.created_at,
            updated_at=datetime.fromisoformat(updated)
            if isinstance(updated, str)
            else episode.created_at,
            score=score,
        )

    def _find(self, namespace: str, key: str) -> Episode | None:
        try:
            return self.episodes.get([key], namespace=namespace)[0]
        except EpisodeNotFoundError:
            return None

    def _get(self, op: GetOp) -> Item | None:
        _check_key(op.key)
        if not op.namespace:
            return None
        episode = self._find(join_namespace(op.namespace), op.key)
        if episode is None:
            return None
        item = self._item(episode)
        return Item(
            value=item.value,
            key=item.key,
            namespace=item.namespace,
            created_at=item.created_at,
            updated_at=item.updated_at,
        )

    # ----------------------------------------------------------------- writes

    def _query_text(self, value: Mapping[str, Any], index: list[str] | None) -> str:
        paths = index or self.text_fields
        if paths:
            texts = [t for path in paths for t in get_text_at_path(value, path) if t.strip()]
            if not texts:
                raise InvalidArgumentError(
                    f"the value has no text at the index paths {paths}; put text there or "
                    "change the paths"
                )
            return "\n".join(texts)
        query = value.get("query")
        if isinstance(query, str) and query.strip():
            return query
        for field in value.values():
            if isinstance(field, str) and field.strip():
                return field
        return json.dumps(value, ensure_ascii=False, sort_keys=True)

    def _prepare_put(self, op: PutOp) -> _Write:
        """Validate a put and build its episode, without touching the store."""
        key = _check_key(op.key)
        namespace = join_namespace(op.namespace)
        if op.value is None:
            return _Write(namespace, key, None)
        if not isinstance(op.value, Mapping) or not all(isinstance(k, str) for k in op.value):
            raise InvalidArgumentError(
                f"value must be a dict with str keys (or None to delete), got {op.value!r}"
            )
        if (
            op.index is not None
            and op.index is not False
            and (isinstance(op.index, str) or not all(isinstance(p, str) for p in op.index))
        ):
            raise InvalidArgumentError(
                f"index must be False, None or a list of paths, got {op.index!r}"
            )
        value = dict(op.value)
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"value must be JSON-serialisable: {exc}") from exc
        if json.loads(text) != value:
            raise InvalidArgumentError(
                "value does not survive a JSON round trip (tuples, non-str keys in nested dicts?); "
                "use lists and str keys"
            )
        if len(text) > MAX_METADATA_STRING:
            raise InvalidArgumentError(
                f"value is {len(text)} characters as JSON; EpisodeBaseStore keeps values of at "
                f"most {MAX_METADATA_STRING}. Store large data elsewhere and put a reference"
            )
        response = value.get(self.response_field) if self.response_field else None
        reward = value.get(self.reward_field) if self.reward_field else None
        try:
            reward = validate_reward(reward)
        except InvalidRewardError as exc:
            raise InvalidRewardError(
                f"value[{self.reward_field!r}] must be a finite number or null ({exc}); pass "
                "reward_field=None to the store to keep it as plain data"
            ) from exc
        now = datetime.now(timezone.utc)
        episode = Episode(
            query=self._query_text(value, op.index or None),
            response=response if isinstance(response, str) else "",
            reward=reward,
            metadata={
                VALUE_KEY: text,
                UPDATED_AT_KEY: now.isoformat(),
                INDEXED_KEY: op.index is not False,
            },
            namespace=namespace,
            id=key,
            created_at=now,
        )
        return _Write(namespace, key, episode)

    def _apply(self, writes: list[_Write]) -> None:
        """Apply puts and deletes.

        A put replaces its item in one store request, after its new vectors exist: a reader sees
        the old item or the new one, and a failed embedding changes nothing. An overwritten item
        keeps its `created_at`.
        """
        puts = [w.episode for w in writes if w.episode is not None]
        if puts:
            created = {
                (e.namespace, e.id): old.created_at
                for e in puts
                if (old := self._find(e.namespace, e.id)) is not None
            }
            self.episodes.upsert([
                dataclasses.replace(e, created_at=created.get((e.namespace, e.id), e.created_at))
                for e in puts
            ])
        for write in writes:
            if write.episode is None and self._find(write.namespace, write.key) is not None:
                self.episodes.delete([write.key], namespace=write.namespace)

    # ----------------------------------------------------------------- search

    def _namespaces_under(self, prefix: tuple[str, ...]) -> list[str]:
        found = []
        for namespace in self.episodes.namespaces():
            labels = split_namespace(namespace)
            if labels is not None and labels[: len(prefix)] == prefix:
                found.append(namespace)
        return found

    def _search(self, op: SearchOp) -> list[SearchItem]:
        filter_ = _check_filter(op.filter)
        limit, offset = _check_page(op.limit, op.offset)
        namespaces = self._namespaces_under(tuple(op.namespace_prefix))
        if limit == 0 or not namespaces:
            return []
        if op.query is not None and not isinstance(op.query, str):
            raise InvalidArgumentError(f"query must be a str or None, got {op.query!r}")
        if not op.query or not op.query.strip():  # as in LangGraph's stores: no query, a listing
            return self._scan(namespaces, filter_, limit, offset)
        vector = self.episodes.embedder.query(op.query)
        need = offset + limit
        hits: list[SearchItem] = []
        for namespace in namespaces:
            hits.extend(self._nearest(namespace, vector, filter_, need))
        return rank_by_score(hits)[offset:need]

    def _nearest(
        self, namespace: str, vector: np.ndarray, filter_: dict[str, Any], need: int
    ) -> list[SearchItem]:
        """The `need` most similar indexed items of one namespace that pass the filter."""
        total = self.episodes.count(namespace)
        k = need
        while True:
            pairs = self.episodes.search_by_vector(
                vector, k=max(1, min(k, total)), namespace=namespace
            )
            kept = [
                item
                for episode, similarity in pairs
                if episode.metadata.get(INDEXED_KEY, True)
                and _matches((item := self._item(episode, similarity)).value, filter_)
            ]
            if len(kept) >= need or k >= total:
                return kept[:need]
            k *= 4

    def _scan(
        self, namespaces: list[str], filter_: dict[str, Any], limit: int, offset: int
    ) -> list[SearchItem]:
        """Items in namespace order, then storage order, skipping `offset` matches."""
        out: list[SearchItem] = []
        for namespace in namespaces:
            start = 0
            while len(out) < limit:
                page = self.episodes.list_episodes(namespace, limit=_PAGE, offset=start)
                for episode in page:
                    item = self._item(episode)
                    if not _matches(item.value, filter_):
                        continue
                    if offset:
                        offset -= 1
                    elif len(out) < limit:
                        out.append(item)
                if len(page) < _PAGE:
                    break
                start += _PAGE
        return out

    # ----------------------------------------------------------------- namespaces

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        limit, offset = _check_page(op.limit, op.offset)
        optional(check_int, "max_depth", op.max_depth, low=1)
        found: set[tuple[str, ...]] = set()
        for namespace in self.episodes.namespaces():
            labels = split_namespace(namespace)
            if labels is None or not all(_does_match(c, labels) for c in op.match_conditions or ()):
                continue
            if self.episodes.count(namespace):
                found.add(labels[: op.max_depth] if op.max_depth else labels)
        return sorted(found)[offset : offset + limit]
