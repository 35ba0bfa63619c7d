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
from chromadb.api import ClientAPI
from chromadb.config import Settings

from langchain_kd_memory.embeddings import LocalEmbeddings, default_embeddings
from langchain_kd_memory.storage import EpisodeStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chroma_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "chroma"
    return str(beside_python) if beside_python.exists() else shutil.which("chroma")


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real `chroma run` server on 127.0.0.1 for the session: yields (host, port)."""
    binary = _chroma_binary()
    if binary is None:
        pytest.skip("the `chroma` command (installed with chromadb) was not found")
    host, port = "127.0.0.1", _free_port()
    path = tmp_path_factory.mktemp("chroma_server")
    log = (path / "server.log").open("w")
    process = subprocess.Popen(
        [binary, "run", "--path", str(path / "data"), "--host", host, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                chromadb.HttpClient(
                    host=host, port=port, settings=Settings(anonymized_telemetry=False)
                ).heartbeat()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "chroma server did not start: " + (path / "server.log").read_text()
                    ) from None
                time.sleep(0.2)
        yield host, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
