"""Guarantee: when an OpenAI-compatible embedding server misbehaves (slow, rate limiting, failing,
answering garbage), requests are retried where that can help, a clear `EmbeddingError` follows,
and no episode is half-stored: the store is byte-for-byte unchanged, no namespace is created.

The embedder is the real `OpenAIEmbedder` (the official client) against a local HTTP server
(pytest-httpserver) that follows a script of faults, one per request. Retries of the embedder
alone are tested in tests/unit_tests/test_embeddings.py; here they meet the store.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest
from chromadb.api import ClientAPI
from pytest_httpserver import HTTPServer
from test_reliability_input import store_snapshot
from werkzeug import Request, Response

from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import OpenAIEmbedder
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import EmbeddingDimensionError, EmbeddingError
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.store import EpisodeBaseStore

DIM = 8


class ScriptedServer:
    """Answers each embeddings request with the next fault of a script, then normally."""

    def __init__(self, httpserver: HTTPServer) -> None:
        self.script: deque[str] = deque()
        self.requests = 0
        httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(
            self.handle
        )
        self.url = httpserver.url_for("/v1")

    def handle(self, request: Request) -> Response:
        self.requests += 1
        fault = self.script.popleft() if self.script else "ok"
        texts = json.loads(request.data)["input"]
        vectors = [[float(len(t)), 1.0] + [float(i + 1)] * (DIM - 2) for i, t in enumerate(texts)]
        if fault == "429":
            return Response('{"error": {"message": "slow down"}}', status=429,
                            headers={"retry-after-ms": "10"}, content_type="application/json")
        elif fault == "500":
            return Response("upstream exploded", status=500)
        elif fault == "garbage":
            return Response("{not json", content_type="application/json")
        elif fault == "short":
            vectors = [v[:-1] for v in vectors]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        body = {"object": "list", "data": data, "model": "test-embed",
                "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        return Response(json.dumps(body), content_type="application/json")


@pytest.fixture(scope="module")
def threaded_httpserver() -> Iterator[HTTPServer]:
    """A server that handles requests concurrently, so a slow answer holds up no retry."""
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def server(threaded_httpserver: HTTPServer) -> Iterator[ScriptedServer]:
    yield ScriptedServer(threaded_httpserver)
    threaded_httpserver.clear()


_names = itertools.count()


@pytest.fixture
def memory(server: ScriptedServer, chroma_client: ClientAPI) -> DistilledEpisodicMemory:
    embedder = OpenAIEmbedder(model="test-embed", api_key="sk-test", base_url=server.url,
                              dimensions=DIM, timeout=10.0, max_retries=2)
    store = EpisodeStore(f"relemb{next(_names)}", embeddings=embedder, client=chroma_client)
    model = ModelDistillation(embeddings=embedder, teacher=TeacherConfig(hidden_sizes=(8,)),
                              student=StudentConfig(hidden_sizes=(8,)))
    memory = DistilledEpisodicMemory(store=store, distillation=model)
    memory.add_episode("already stored", "before the faults", reward=1.0)
    server.requests = 0
    return memory


Write = Callable[[DistilledEpisodicMemory], object]
WRITES: dict[str, Write] = {
    "add_episode, new namespace": lambda m: m.add_episode("q", "a", namespace="fresh"),
    "store.add": lambda m: m.store.add([Episode("q", "a"), Episode("r", "b")]),
    "LangGraph put": lambda m: EpisodeBaseStore(m.store).put(
        ("fresh",), "k", {"query": "q", "response": "a"}),
}


def add_episode(memory: DistilledEpisodicMemory) -> str:
    return memory.add_episode("new question", "new answer", reward=0.5)


def assert_refused(memory: DistilledEpisodicMemory, server: ScriptedServer, write: Write,
                   script: list[str], requests: int, match: str) -> EmbeddingError:
    """`write` under the fault `script` raises, after `requests` requests, and stores nothing."""
    before = store_snapshot(memory.store)
    server.script.extend(script)
    with pytest.raises(EmbeddingError, match=match) as info:
        write(memory)
    assert server.requests == requests
    assert store_snapshot(memory.store) == before
    assert memory.store.namespaces() == ["default"]
    return info.value


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "requests", "match"),
    [
        (["429"] * 3, 3, "429"),
        (["500"] * 3, 3, "500"),
        (["garbage"], 1, "malformed|Expecting"),  # a broken body is not retried
        (["short"], 1, "dimension 7, expected 8"),
    ],
    ids=["429", "500", "malformed JSON", "wrong dimension"],
)
def test_faults_raise_a_clear_error_and_store_nothing(
    memory: DistilledEpisodicMemory, server: ScriptedServer, script: list[str], requests: int,
    match: str,
) -> None:
    error = assert_refused(memory, server, add_episode, script, requests, match)
    assert isinstance(error, EmbeddingDimensionError) == (script == ["short"])


@pytest.mark.slow
@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
def test_every_write_path_stores_nothing_when_the_server_fails(
    memory: DistilledEpisodicMemory, server: ScriptedServer, write: str
) -> None:
    assert_refused(memory, server, WRITES[write], ["500"] * 3, 3, "500")


@pytest.mark.slow
@pytest.mark.parametrize("write", ["store.add", "LangGraph put"])
def test_a_batch_whose_later_request_fails_stores_nothing(
    memory: DistilledEpisodicMemory, server: ScriptedServer, write: str
) -> None:
    """One text per request: the first request succeeds, the next one fails."""
    memory.store.embeddings.batch_size = 1  # type: ignore[attr-defined]
    assert_refused(memory, server, WRITES[write], ["ok", "500", "500", "500"], 4, "500")


def test_a_rate_limit_that_clears_stores_the_episode_once(
    memory: DistilledEpisodicMemory, server: ScriptedServer
) -> None:
    server.script.extend(["429", "429"])
    episode_id = memory.add_episode("patient question", "answer", reward=0.5)
    assert server.requests == 3  # retried with backoff until the server answered
    assert [e.id for e in memory.store.list_episodes()].count(episode_id) == 1
    assert memory.store.count() == 2


@pytest.mark.slow
def test_feedback_and_recall_of_stored_vectors_need_no_embedder(
    memory: DistilledEpisodicMemory, server: ScriptedServer
) -> None:
    server.script.extend(["500"] * 20)
    stored = memory.store.list_episodes()[0]
    assert memory.record_feedback(stored.id, 0.25).reward == 0.25
    assert len(memory.store.training_arrays()) == 1
    with pytest.raises(EmbeddingError, match="500"):
        memory.invoke("anything")
    assert server.requests == 3


# ----------------------------------------------------------------------------- total deadline


class TricklingServer:
    """A raw HTTP server that answers every request one byte every `interval` seconds.

    Its answer is a valid embeddings response, so a client that waits long enough succeeds: only
    a deadline on the whole request stops it. Each byte comes well within a per-read timeout.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.connections = 0
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        vector = [1.0] * DIM
        body = json.dumps({"object": "list", "model": "test-embed",
                           "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                           "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        with connection:
            connection.recv(65536)  # the request (small enough for one read)
            for byte in answer:
                if self.stopped.wait(self.interval):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:  # the client gave up and closed the connection
                    return

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def trickling() -> Iterator[TricklingServer]:
    server = TricklingServer()
    yield server
    server.close()


@pytest.mark.slow
def test_a_trickling_server_is_cut_at_the_deadline_and_stores_nothing(
    trickling: TricklingServer, chroma_client: ClientAPI
) -> None:
    """One byte every 0.5 s (the answer would take about two minutes) against timeout=1: each
    read is quick, so only a deadline on the whole request (retries included) ends the call.
    Recording and recall then fail with `EmbeddingError` instead of stalling the agent."""
    embedder = OpenAIEmbedder(model="test-embed", api_key="sk-test", base_url=trickling.url,
                              dimensions=DIM, timeout=1.0, max_retries=2)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match="timed out"):
        embedder.embed_query("a slow question")
    assert time.monotonic() - started < 15  # bounded: the trickle would take minutes

    store = EpisodeStore(f"relemb{next(_names)}", embeddings=embedder, client=chroma_client)
    model = ModelDistillation(embeddings=embedder)
    memory = DistilledEpisodicMemory(store=store, distillation=model)
    before = store_snapshot(store)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match="timed out"):
        memory.add_episode("a question", "an answer", reward=1.0)
    with pytest.raises(EmbeddingError, match="timed out"):
        memory.invoke("anything similar?")
    assert time.monotonic() - started < 30
    assert store_snapshot(store) == before
