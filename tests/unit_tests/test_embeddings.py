"""Embedders: local MiniLM (real weights) and OpenAI (real client, local HTTP server)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from langchain_kd_memory.embeddings import (
    CachedEmbeddings,
    EmbedderIdentity,
    LocalEmbeddings,
    OpenAIEmbedder,
    default_embeddings,
    embedder_identity,
)
from langchain_kd_memory.errors import (
    EmbeddingDimensionError,
    EmbeddingError,
    InvalidArgumentError,
)


def test_local_embedder_is_normalised_and_semantic() -> None:
    emb = default_embeddings()
    assert emb.identity == EmbedderIdentity("sentence-transformers/all-MiniLM-L6-v2", 384)
    cat, kitten, invoice = np.array(
        emb.embed_documents(["a cat sleeps on the sofa", "a kitten naps on the couch",
                             "please pay the attached invoice by Friday"])
    )
    assert cat.shape == (384,)
    assert np.allclose([np.linalg.norm(v) for v in (cat, kitten, invoice)], 1.0, atol=1e-4)
    assert cat @ kitten > cat @ invoice + 0.3
    assert emb.embed_documents([]) == []
    assert np.allclose(emb.embed_query("a cat sleeps on the sofa"), cat, atol=1e-5)


def test_identity_of_a_foreign_embedder_is_measured() -> None:
    from langchain_core.embeddings import Embeddings

    class Constant(Embeddings):
        model = "const-v1"

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[1.0, 0.0, 0.0] for _ in texts]

        def embed_query(self, text: str) -> list[float]:
            return [1.0, 0.0, 0.0]

    assert embedder_identity(Constant()) == EmbedderIdentity("Constant:const-v1", 3)


def test_cached_embeddings_embed_each_text_once_and_stay_bounded() -> None:
    from langchain_core.embeddings import Embeddings

    calls: list[list[str]] = []

    class Counting(Embeddings):
        model = "count-v1"

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            calls.append(list(texts))
            return [[float(len(t)), 1.0] for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    cached = CachedEmbeddings(Counting(), max_entries=2)
    assert cached.identity == EmbedderIdentity("Counting:count-v1", 2)
    calls.clear()  # the identity probe
    assert cached.embed_documents(["a", "bb", "a"]) == [[1.0, 1.0], [2.0, 1.0], [1.0, 1.0]]
    assert cached.embed_query("bb") == [2.0, 1.0]
    assert calls == [["a", "bb"]]  # one call, each new text once
    cached.embed_documents(["ccc"])  # evicts "a", the least recently used
    cached.embed_documents(["a", "ccc"])
    assert calls[1:] == [["ccc"], ["a"]]
    with pytest.raises(InvalidArgumentError, match="max_entries"):
        CachedEmbeddings(Counting(), max_entries=0)
    with pytest.raises(InvalidArgumentError, match="Embeddings"):
        CachedEmbeddings("MiniLM")  # type: ignore[arg-type]


def _embedding_handler(
    dimension: int, seen: list[dict], *, reverse: bool = False
) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        body = json.loads(request.data)
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        data = [
            {"object": "embedding", "index": i,
             "embedding": [float(len(t)), float(i)] + [0.0] * (dimension - 2)}
            for i, t in enumerate(body["input"])
        ]
        if reverse:
            data.reverse()
        payload = {"object": "list", "data": data, "model": body["model"],
                   "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        return Response(json.dumps(payload), content_type="application/json")

    return handler


def _embedder(server: HTTPServer, **kwargs: Any) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        model="test-embed", api_key="sk-test-123", base_url=server.url_for("/v1"), **kwargs
    )


@pytest.mark.slow
def test_openai_embedder_batches_and_uses_key_and_base_url(httpserver: HTTPServer) -> None:
    seen: list[dict] = []
    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(
        _embedding_handler(8, seen, reverse=True)
    )
    emb = _embedder(httpserver, batch_size=2, dimensions=8)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = emb.embed_documents(texts)
    assert [len(b["body"]["input"]) for b in seen] == [2, 2, 1]
    assert all(s["auth"] == "Bearer sk-test-123" for s in seen)
    assert all(s["body"]["model"] == "test-embed" and s["body"]["dimensions"] == 8 for s in seen)
    # responses came back in reverse order: the embedder must restore input order
    assert [v[0] for v in vectors] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert emb.identity == EmbedderIdentity("openai:test-embed", 8)


def test_openai_embedder_measures_unknown_dimension(httpserver: HTTPServer) -> None:
    seen: list[dict] = []
    httpserver.expect_request("/v1/embeddings").respond_with_handler(_embedding_handler(5, seen))
    emb = _embedder(httpserver)
    assert emb.identity.dimension == 5
    assert len(seen) == 1 and "dimensions" not in seen[0]["body"]


def test_openai_embedder_rejects_wrong_dimension(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v1/embeddings").respond_with_handler(_embedding_handler(4, []))
    with pytest.raises(EmbeddingDimensionError, match="dimension 4, expected 8"):
        _embedder(httpserver, dimensions=8).embed_query("x")


def test_openai_embedder_retries_server_errors_then_fails_clearly(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v1/embeddings").respond_with_data("boom", status=500)
    with pytest.raises(EmbeddingError, match="request failed"):
        _embedder(httpserver, max_retries=1).embed_query("x")
    assert len(httpserver.log) == 2  # one try and one retry


def test_openai_embedder_recovers_after_a_rate_limit(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/v1/embeddings").respond_with_data(
        '{"error": {"message": "slow down"}}', status=429, headers={"retry-after-ms": "10"},
        content_type="application/json",
    )
    httpserver.expect_ordered_request("/v1/embeddings").respond_with_handler(
        _embedding_handler(3, [])
    )
    assert len(_embedder(httpserver, max_retries=2).embed_query("hello")) == 3


def test_openai_embedder_reports_malformed_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v1/embeddings").respond_with_data(
        "{not json", content_type="application/json"
    )
    with pytest.raises(EmbeddingError):
        _embedder(httpserver, max_retries=0).embed_query("x")


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"batch_size": 5000}, {"batch_size": True}, {"dimensions": 0},
     {"model": ""}, {"timeout": 0}, {"timeout": float("nan")}, {"timeout": float("inf")},
     {"max_retries": -1}],
)
def test_openai_embedder_validates_arguments(kwargs: dict) -> None:
    params = {"model": "m", "api_key": "k", **kwargs}
    with pytest.raises(InvalidArgumentError, match=next(iter(kwargs))):
        OpenAIEmbedder(**params)


@pytest.mark.parametrize("batch_size", [0, -3, 1.5])
def test_local_embedder_validates_batch_size(batch_size: int) -> None:
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        LocalEmbeddings(batch_size=batch_size)
