"""Shared fixtures: the real MiniLM embedder, temporary stores, and a real Chroma server."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import chromadb
import pytest
import torch
from chromadb.api import ClientAPI
from chromadb.config import Settings
from hypothesis import settings as hypothesis_settings

from langchain_kd_memory.embeddings import LocalEmbeddings, default_embeddings
from langchain_kd_memory.storage import EpisodeStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# The processes tests start (agents, workers, the CLI) share the cores with the test workers:
# one torch thread each, so that no idle thread spins on a core another process needs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property tests draw the same examples on every run (no example database, no random seed), so
# CI cannot fail at random; `HYPOTHESIS_PROFILE=explore pytest ...` searches afresh.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False, max_examples=1000)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test`), each worker's torch gets its share of the cores.

    Workers that each run a thread per core fight over the cores: on a busy 2-core machine one
    thread trained several times faster than two (BENCHMARKS.md).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


class CountingEmbeddings(LocalEmbeddings):
    """The real MiniLM, counting how many texts it is asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.texts = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        self.texts += len(texts)
        return super().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        self.texts += 1
        return super().embed_documents([text])[0]


@pytest.fixture(scope="session")
def embeddings() -> LocalEmbeddings:
    """The real default embedder, loaded once per test session."""
    model = default_embeddings()
    model.embed_query("warm up")
    return model


@pytest.fixture
def counting_embeddings(embeddings: LocalEmbeddings) -> CountingEmbeddings:
    """A fresh call counter over the (already loaded) real embedder."""
    return CountingEmbeddings()


@pytest.fixture(scope="session")
def chroma_client(tmp_path_factory: pytest.TempPathFactory) -> ClientAPI:
    """One embedded Chroma database in a temporary directory, shared by the session."""
    return chromadb.PersistentClient(
        str(tmp_path_factory.mktemp("chroma")), settings=Settings(anonymized_telemetry=False)
    )


_store_numbers = itertools.count()


@pytest.fixture
def tmp_store(chroma_client: ClientAPI, embeddings: LocalEmbeddings) -> EpisodeStore:
    """An empty store with the real embedder, in the session's temporary database.

    Each test gets its own `collection_name` (so its own collections): opening a Chroma
    database costs far more than creating collections in one.
    """
    name = f"test{next(_store_numbers):05d}"
    return EpisodeStore(name, embeddings=embeddings, client=chroma_client)


def _chroma_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "chroma"
    return str(beside_python) if beside_python.exists() else shutil.which("chroma")


class ChromaServer:
    """A `chroma run` process on 127.0.0.1 that can be stopped (or killed) and started again."""

    def __init__(self, path: Path) -> None:
        binary = _chroma_binary()
        if binary is None:
            pytest.skip("the `chroma` command (installed with chromadb) was not found")
        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.host = "127.0.0.1"
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    def client(self) -> ClientAPI:
        return chromadb.HttpClient(host=self.host, port=self.port,
                                   settings=Settings(anonymized_telemetry=False))

    def start(self) -> None:
        log = (self.path / "server.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "run", "--path", str(self.path / "data"), "--host", self.host,
             "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client().heartbeat()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "chroma server did not start: " + (self.path / "server.log").read_text()
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to finish what it is doing."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real `chroma run` server on 127.0.0.1 for the session: yields (host, port)."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma_server"))
    server.start()
    yield server.host, server.port
    server.stop()


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[ChromaServer]:
    """A `chroma run` server of this test alone, which the test may stop, kill and restart."""
    server = ChromaServer(tmp_path)
    server.start()
    yield server
    server.stop()
