"""EpisodeBaseStore: the LangGraph BaseStore adapter over real Chroma episodes and real MiniLM."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchItem, SearchOp
from test_middleware import BreakableEmbeddings
from typing_extensions import TypedDict

from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import (
    EmbeddingError,
    InvalidArgumentError,
    InvalidNamespaceError,
    InvalidRewardError,
)
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.store import (
    EpisodeBaseStore,
    join_namespace,
    rank_by_score,
    split_namespace,
)


class ToolCallingFakeModel(FakeMessagesListChatModel):
    """LangChain's fake list model, accepting `bind_tools` so that `create_agent` can use it."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFakeModel:
        return self


@pytest.fixture
def store(tmp_store: EpisodeStore) -> EpisodeBaseStore:
    return EpisodeBaseStore(tmp_store)


@pytest.fixture
def memory_store(tmp_store: EpisodeStore) -> DistilledEpisodicMemory:
    return DistilledEpisodicMemory(store=tmp_store)


def _cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_namespace_encoding_is_reversible():
    for namespace in [("a",), ("users", "42"), ("a b", "ü/ñ", "x_y-z")]:
        assert split_namespace(join_namespace(namespace)) == namespace
    assert join_namespace(("users", "42")) == "users.42"
    assert split_namespace("a..b") is None


def test_put_get_round_trip_is_exact(store: EpisodeBaseStore):
    value = {
        "query": "I like green tea",
        "nested": {"list": [1, 2.5, {"deep": None}], "flag": True, "unicode": "héllo ✓"},
        "reward": 0.75,
        "empty": {},
    }
    store.put(("users", "1"), "pref", value)
    item = store.get(("users", "1"), "pref")
    assert item is not None
    assert item.value == value
    assert item.key == "pref" and item.namespace == ("users", "1")
    assert item.created_at == item.updated_at
    assert item.created_at.tzinfo is not None
    assert store.get(("users", "1"), "missing") is None
    assert store.get(("users", "2"), "pref") is None
    assert store.get((), "pref") is None


def test_value_fields_feed_the_episode(store: EpisodeBaseStore, tmp_store: EpisodeStore):
    store.put(("ns",), "k", {"query": "how to bake bread", "response": "knead it", "reward": 2})
    episode = tmp_store.get(["k"], namespace="ns")[0]
    assert (episode.query, episode.response, episode.reward) == ("how to bake bread", "knead it", 2)
    store.put(("ns",), "first-string", {"n": 3, "memory": "likes jazz", "other": "x"})
    assert tmp_store.get(["first-string"], namespace="ns")[0].query == "likes jazz"
    store.put(("ns",), "no-text", {"n": 3})
    assert tmp_store.get(["no-text"], namespace="ns")[0].query == '{"n": 3}'
    store.put(
        ("ns",), "paths", {"doc": {"title": "Chroma"}, "query": "ignored"}, index=["doc.title"]
    )
    assert tmp_store.get(["paths"], namespace="ns")[0].query == "Chroma"


def test_put_existing_key_replaces_without_duplicating(
    store: EpisodeBaseStore, tmp_store: EpisodeStore
):
    store.put(("ns",), "k", {"query": "first version"})
    first = store.get(("ns",), "k")
    store.put(("ns",), "k", {"query": "second version", "extra": [1]})
    second = store.get(("ns",), "k")
    assert first is not None and second is not None
    assert second.value == {"query": "second version", "extra": [1]}
    assert tmp_store.count("ns") == 1
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    [(episode, _)] = tmp_store.search("second version", k=5, namespace="ns")
    assert episode.query == "second version"


def test_delete(store: EpisodeBaseStore, tmp_store: EpisodeStore):
    store.put(("ns",), "a", {"query": "alpha"})
    store.put(("ns",), "b", {"query": "beta"})
    store.delete(("ns",), "a")
    assert store.get(("ns",), "a") is None
    assert store.get(("ns",), "b") is not None
    store.delete(("ns",), "a")  # deleting a missing item is a no-op, as in LangGraph
    store.delete(("never",), "a")
    assert tmp_store.count(all_namespaces=True) == 1


def test_semantic_search_order_and_scores(store: EpisodeBaseStore, embeddings: Any):
    texts = {
        "tea": "I enjoy drinking green tea in the morning",
        "car": "My car needs new tyres before winter",
        "py": "Python is my favourite programming language",
    }
    for key, text in texts.items():
        store.put(("docs",), key, {"query": text})
    results = store.search(("docs",), query="which hot beverage do I like?")
    assert [r.key for r in results][0] == "tea"
    assert len(results) == 3
    scores = [r.score for r in results]
    assert all(s is not None for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    expected = _cosine(
        embeddings.embed_query("which hot beverage do I like?"),
        embeddings.embed_query(texts["tea"]),
    )
    assert math.isclose(results[0].score, expected, abs_tol=1e-4)  # type: ignore[arg-type]
    page = store.search(("docs",), query="which hot beverage do I like?", limit=1, offset=1)
    assert [r.key for r in page] == [results[1].key]
    code = store.search(("docs",), query="software development", limit=1)
    assert [r.key for r in code] == ["py"]


def test_search_spans_nested_namespaces_and_isolates_others(store: EpisodeBaseStore):
    store.put(("users", "1", "prefs"), "k", {"query": "likes cats"})
    store.put(("users", "2"), "k", {"query": "likes dogs"})
    store.put(("teams", "1"), "k", {"query": "likes cats too"})
    found = store.search(("users",), query="cats")
    assert {(r.namespace, r.key) for r in found} == {
        (("users", "1", "prefs"), "k"),
        (("users", "2"), "k"),
    }
    assert found[0].namespace == ("users", "1", "prefs")
    assert [r.namespace for r in store.search(("users", "2"), query="cats")] == [("users", "2")]
    assert len(store.search((), query="cats")) == 3
    assert store.search(("nobody",), query="cats") == []
    # the same key lives independently in each namespace
    store.delete(("users", "2"), "k")
    assert store.get(("users", "1", "prefs"), "k") is not None
    assert store.get(("teams", "1"), "k") is not None


def test_listing_search_filter_limit_offset(store: EpisodeBaseStore):
    for i in range(5):
        store.put(
            ("items",),
            f"k{i}",
            {"query": f"item {i}", "n": i, "meta": {"color": "red" if i % 2 else "blue"}},
        )
    listed = store.search(("items",))
    assert [r.key for r in listed] == ["k0", "k1", "k2", "k3", "k4"]
    assert all(r.score is None for r in listed)
    assert store.search(("items",), query=" ") == listed  # blank query: a listing
    assert [r.key for r in store.search(("items",), limit=2, offset=1)] == ["k1", "k2"]
    assert [r.key for r in store.search(("items",), filter={"n": {"$gte": 3}})] == ["k3", "k4"]
    assert [r.key for r in store.search(("items",), filter={"meta": {"color": "red"}})] == [
        "k1",
        "k3",
    ]
    assert [r.key for r in store.search(("items",), filter={"n": {"$ne": 0, "$lt": 2}})] == ["k1"]
    red = store.search(("items",), query="item 4", filter={"meta": {"color": "red"}}, limit=1)
    assert [r.key for r in red] == ["k3"] or [r.key for r in red] == ["k1"]
    assert red[0].value["meta"]["color"] == "red"
    assert store.search(("items",), filter={"missing": 1}) == []


def test_index_false_is_stored_but_not_semantically_searched(store: EpisodeBaseStore):
    store.put(("ns",), "hidden", {"query": "secret tea recipe"}, index=False)
    store.put(("ns",), "shown", {"query": "public car manual"})
    assert store.get(("ns",), "hidden") is not None
    assert [r.key for r in store.search(("ns",), query="tea recipe")] == ["shown"]
    assert {r.key for r in store.search(("ns",))} == {"hidden", "shown"}


@pytest.mark.slow
def test_list_namespaces(store: EpisodeBaseStore):
    for ns in [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
    ]:
        store.put(ns, "k", {"query": "x"})
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(max_depth=1) == [("a",)]
    assert store.list_namespaces(limit=2, offset=1) == [("a", "b", "d", "e"), ("a", "b", "d", "i")]
    store.delete(("a", "c", "f"), "k")
    assert ("a", "c", "f") not in store.list_namespaces()


def test_episodes_written_by_the_memory_appear_as_items(
    store: EpisodeBaseStore, tmp_store: EpisodeStore
):
    tmp_store.add(
        [
            Episode(
                "what is 2+2",
                "4",
                reward=1.0,
                metadata={"src": "chat"},
                namespace="default",
                id="e1",
            )
        ]
    )
    item = store.get(("default",), "e1")
    assert item is not None
    assert item.value == {
        "query": "what is 2+2",
        "response": "4",
        "reward": 1.0,
        "metadata": {"src": "chat"},
    }
    assert store.search(("default",), query="arithmetic")[0].key == "e1"


def test_batch_reads_see_the_store_before_its_writes(
    store: EpisodeBaseStore, tmp_store: EpisodeStore
):
    store.put(("ns",), "k", {"query": "old"})
    results = store.batch(
        [
            PutOp(("ns",), "k", {"query": "new"}),
            GetOp(("ns",), "k"),
            PutOp(("ns",), "k", {"query": "newest"}),
            SearchOp(("ns",)),
            ListNamespacesOp(),
        ]
    )
    assert results[0] is None and results[2] is None
    assert results[1].value == {"query": "old"}  # type: ignore[union-attr]
    assert [i.value for i in results[3]] == [{"query": "old"}]  # type: ignore[union-attr]
    assert results[4] == [("ns",)]
    assert store.get(("ns",), "k").value == {"query": "newest"}  # type: ignore[union-attr]
    assert tmp_store.count("ns") == 1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.put(("a.b",), "k", {"query": "x"}), InvalidNamespaceError),
        (lambda s: s.put(("a", ""), "k", {"query": "x"}), InvalidNamespaceError),
        (lambda s: s.put((), "k", {"query": "x"}), InvalidNamespaceError),
        (lambda s: s.put(("langgraph", "x"), "k", {"query": "x"}), InvalidNamespaceError),
        (lambda s: s.put(("a", 7), "k", {"query": "x"}), InvalidNamespaceError),  # type: ignore[arg-type]
        (lambda s: s.search(("a.b",), query="x"), InvalidNamespaceError),
        (lambda s: s.get(("a.b",), "k"), InvalidNamespaceError),
        (lambda s: s.put(("ns",), "k", {"query": "x", "reward": 10**400}), InvalidRewardError),
        (lambda s: s.put(("ns",), "k" * 300, {"query": "x"}), InvalidArgumentError),
        (lambda s: s.put(("x" * 100, "y" * 40), "k", {"query": "x"}), InvalidNamespaceError),
        (lambda s: s.batch([PutOp((), "k", {"query": "x"})]), InvalidNamespaceError),
        (lambda s: s.put(("ns",), " ", {"query": "x"}), InvalidArgumentError),
        (lambda s: s.put(("ns",), "k", ["not", "a", "dict"]), InvalidArgumentError),
        (lambda s: s.put(("ns",), "k", {"x": float("nan")}), InvalidArgumentError),
        (lambda s: s.put(("ns",), "k", {"x": (1, 2)}), InvalidArgumentError),
        (lambda s: s.put(("ns",), "k", {"x": object()}), InvalidArgumentError),
        (lambda s: s.put(("ns",), "k", {"query": "x" * 5000}), InvalidArgumentError),
        (lambda s: s.put(("ns",), "k", {"query": "x", "reward": "great"}), InvalidRewardError),
        (
            lambda s: s.put(("ns",), "k", {"query": "x"}, index=["missing.path"]),
            InvalidArgumentError,
        ),
        (lambda s: s.search(("ns",), filter={"n": {"$regex": "a"}}), InvalidArgumentError),
        (lambda s: s.search(("ns",), filter={"n": {"$gt": "a"}}), InvalidArgumentError),
        (lambda s: s.search(("ns",), limit=-1), InvalidArgumentError),
        (lambda s: s.search(("ns",), query=42), InvalidArgumentError),
        (lambda s: s.list_namespaces(max_depth=0), InvalidArgumentError),
        (lambda s: s.batch([object()]), InvalidArgumentError),
    ],
)
def test_bad_inputs_raise_clear_errors(
    store: EpisodeBaseStore, tmp_store: EpisodeStore, call: Any, error: type[Exception]
):
    store.put(("ns",), "k0", {"query": "keep me"})
    with pytest.raises(error):
        call(store)
    assert tmp_store.count(all_namespaces=True) == 1  # nothing was written


def test_reward_field_none_keeps_reward_as_plain_data(tmp_store: EpisodeStore):
    store = EpisodeBaseStore(tmp_store, reward_field=None, text_fields=["body"])
    store.put(("ns",), "k", {"body": "text to embed", "reward": "great"})
    episode = tmp_store.get(["k"], namespace="ns")[0]
    assert episode.reward is None and episode.query == "text to embed"
    with pytest.raises(InvalidArgumentError):
        EpisodeBaseStore(tmp_store, text_fields="body")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        EpisodeBaseStore("not a store")  # type: ignore[arg-type]


async def test_async_twins(store: EpisodeBaseStore):
    await store.aput(("users", "a"), "k", {"query": "async tea", "n": [1]})
    await store.aput(("users", "a"), "k2", {"query": "async cars"})
    item = await store.aget(("users", "a"), "k")
    assert item is not None and item.value == {"query": "async tea", "n": [1]}
    found = await store.asearch(("users",), query="tea")
    assert found[0].key == "k"
    assert await store.alist_namespaces(prefix=("users",)) == [("users", "a")]
    await store.adelete(("users", "a"), "k")
    assert await store.aget(("users", "a"), "k") is None


class _State(TypedDict):
    topic: str
    recalled: str


def test_langgraph_node_reads_and_writes_through_runtime_store(store: EpisodeBaseStore):
    def remember(state: _State, runtime: Runtime) -> dict[str, Any]:
        assert runtime.store is not None
        runtime.store.put(("graph",), state["topic"], {"query": f"notes about {state['topic']}"})
        return {}

    def recall(state: _State, runtime: Runtime) -> dict[str, Any]:
        assert runtime.store is not None
        hits = runtime.store.search(("graph",), query=state["topic"], limit=1)
        return {"recalled": hits[0].value["query"]}

    builder = StateGraph(_State)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    graph = builder.compile(store=store)
    out = graph.invoke({"topic": "gardening", "recalled": ""})
    assert out["recalled"] == "notes about gardening"
    assert store.get(("graph",), "gardening") is not None


def test_create_agent_tool_uses_the_memory_as_store(tmp_store: EpisodeStore):
    memory = DistilledEpisodicMemory(store=tmp_store)
    store = memory.as_store()
    assert isinstance(store, EpisodeBaseStore) and store.episodes is memory.notes

    @tool
    def save_preference(preference: str, runtime: ToolRuntime) -> str:
        """Save a user preference."""
        assert runtime.store is not None
        runtime.store.put(("prefs",), "p1", {"query": preference})
        return "saved"

    model = ToolCallingFakeModel(
        responses=[
            AIMessage(
                content="",
                tool_calls=[
                    {"name": "save_preference", "args": {"preference": "dark mode"}, "id": "c1"}
                ],
            ),
            AIMessage(content="Saved your preference."),
        ]
    )
    agent = create_agent(model, [save_preference], store=store)
    out = agent.invoke({"messages": [HumanMessage("remember I like dark mode")]})
    assert out["messages"][-1].content == "Saved your preference."
    item = store.get(("prefs",), "p1")
    assert item is not None and item.value == {"query": "dark mode"}
    assert [h.key for h in store.search(("prefs",), query="dark theme")] == ["p1"]


def test_an_agents_notes_are_kept_apart_from_the_episodes(tmp_store: EpisodeStore):
    """Notes put through `as_store()` are never recalled, counted or trained on as episodes,
    and hold any JSON (a "reward" that is not a number is just data). (Before: a note under
    ("default",) came back from `memory.invoke` as a past episode.)"""
    memory = DistilledEpisodicMemory(store=tmp_store)
    memory.add_episode("how do I reset my password?", "use the reset link", reward=1.0)
    store = memory.as_store()
    store.put(("default",), "pref", {"text": "user prefers French answers", "reward": "great"})
    assert "pref" not in {d.metadata["id"] for d in memory.invoke("French answers", k=5)}
    assert memory.store.count(all_namespaces=True) == 1
    assert store.get(("default",), "pref").value == {"text": "user prefers French answers",
                                                    "reward": "great"}
    assert [h.key for h in store.search(("default",), query="French")] == ["pref"]
    assert memory.as_store().episodes is store.episodes  # one notes store per memory
    assert DistilledEpisodicMemory(store=tmp_store).as_store().get(("default",), "pref")


@pytest.mark.slow
def test_concurrent_puts_of_one_key_keep_one_item(store: EpisodeBaseStore, tmp_store: EpisodeStore):
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: store.put(("ns",), "same", {"query": f"v{i}", "i": i}), range(8)))
    assert tmp_store.count("ns") == 1
    item = store.get(("ns",), "same")
    assert item is not None and item.value["query"] == f"v{item.value['i']}"


def test_an_overwrite_that_cannot_be_embedded_keeps_the_old_item(tmp_store: EpisodeStore):
    broken = BreakableEmbeddings()
    store = EpisodeBaseStore(EpisodeStore(tmp_store.collection_name, embeddings=broken,
                                          client=tmp_store.client))
    store.put(("ns",), "k", {"query": "the old value", "reward": 1.0})
    broken.broken = True
    with pytest.raises(EmbeddingError):
        store.put(("ns",), "k", {"query": "the new value", "reward": 0.0})
    broken.broken = False
    item = store.get(("ns",), "k")
    assert item is not None and item.value == {"query": "the old value", "reward": 1.0}
    assert [h.key for h in store.search(("ns",), query="the old value")] == ["k"]


@pytest.mark.slow
def test_readers_see_the_old_or_the_new_value_never_nothing(memory_store: Any):
    memory = memory_store
    writers = [memory.as_store(), memory.as_store()]  # adapters over one memory share one lock
    reader = memory.as_store()
    writers[0].put(("ns",), "k", {"query": "value 0"})
    misses: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(adapter: EpisodeBaseStore, start: int) -> None:
        try:
            for i in range(start, start + 20):
                adapter.put(("ns",), "k", {"query": f"value {i}"})
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        while not stop.is_set():
            if reader.get(("ns",), "k") is None:
                misses.append(1)

    threads = [threading.Thread(target=write, args=(w, 100 * n)) for n, w in enumerate(writers)]
    watcher = threading.Thread(target=read)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == [] and misses == []
    assert memory.notes.count("ns") == 1


@pytest.mark.slow
def test_a_put_killed_midway_leaves_the_old_or_the_new_item(tmp_path: Any):
    """SIGKILL a process that overwrites one key in a loop: the key is never missing."""
    script = tmp_path / "put_loop.py"
    script.write_text(
        "import sys\n"
        "from langchain_kd_memory import EpisodeStore\n"
        "from langchain_kd_memory.store import EpisodeBaseStore\n"
        "store = EpisodeBaseStore(EpisodeStore('killed', persist_directory=sys.argv[1]))\n"
        "store.put(('ns',), 'k', {'query': 'value 0'})\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    store.put(('ns',), 'k', {'query': f'value {i}'})\n"
    )
    for attempt in range(2):
        directory = tmp_path / f"db{attempt}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen([sys.executable, str(script), str(directory)],
                                   stdout=subprocess.PIPE, env=env)
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.37 * attempt)
        process.kill()
        process.wait()
        store = EpisodeBaseStore(EpisodeStore("killed", persist_directory=str(directory)))
        item = store.get(("ns",), "k")
        assert item is not None and item.value["query"].startswith("value ")
        assert store.episodes.count("ns") == 1


def test_ranking_keeps_a_similarity_of_zero_above_negative_ones():
    def item(key: str, score: float | None) -> SearchItem:
        now = datetime.now(timezone.utc)
        return SearchItem(("ns",), key, {}, now, now, score=score)

    ranked = rank_by_score([item("neg", -0.5), item("zero", 0.0), item("pos", 0.3),
                            item("none", None)])
    assert [i.key for i in ranked] == ["pos", "zero", "neg", "none"]
