"""Shared benchmark helpers: chitchat embeddings (cached), splits, metrics, timing, markdown.

Embedding is the slow part (two MiniLM passes over ~3k conversations), so vectors are computed
once and kept as `.npz` under `bench_data/` (git-ignored), keyed by a hash of the embedder
identity and the texts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import re
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings
from scipy.stats import spearmanr

from langchain_kd_memory.datasets import load_chitchat
from langchain_kd_memory.embeddings import EmbedderIdentity, default_embeddings, embedder_identity
from langchain_kd_memory.episodes import TrainingArrays

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "bench_data"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def embed_cached(texts: Sequence[str], *, cache_dir: Path = CACHE_DIR) -> np.ndarray:
    """Embed `texts` with the default MiniLM, reading/writing a cache keyed by their hash.

    Returns:
        float32 array of shape (len(texts), 384).
    """
    embedder = default_embeddings()
    identity = embedder_identity(embedder)
    digest = hashlib.sha256(f"{identity.name}|{identity.dimension}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    path = cache_dir / f"emb_{digest.hexdigest()[:20]}.npz"
    if path.exists():
        return np.load(path)["vectors"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    vectors = np.asarray(embedder.embed_documents(list(texts)), dtype=np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=vectors)
    os.replace(tmp, path)
    return vectors


class DiskCachedEmbeddings(Embeddings):
    """The default MiniLM with every vector kept in an SQLite file under `bench_data/`.

    Benchmarks replay the same game states across strategies, seeds and runs: each text is
    embedded once, ever. The identity is MiniLM's, so memories built on it are ordinary ones.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.embeddings = default_embeddings()
        self.identity: EmbedderIdentity = embedder_identity(self.embeddings)
        path = path or CACHE_DIR / f"embeddings-{self.identity.name.replace('/', '_')}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        self._db.execute("create table if not exists vectors (text text primary key, v blob)")
        self._memory: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._memory]
            for start in range(0, len(missing), 500):
                chunk = missing[start:start + 500]
                rows = self._db.execute(
                    f"select text, v from vectors where text in ({','.join('?' * len(chunk))})",
                    chunk,
                )
                self._memory.update(
                    (text, np.frombuffer(blob, dtype=np.float32).tolist()) for text, blob in rows
                )
            todo = [t for t in missing if t not in self._memory]
            if todo:
                vectors = np.asarray(self.embeddings.embed_documents(todo), dtype=np.float32)
                self._db.executemany(
                    "insert or replace into vectors values (?, ?)",
                    [(t, v.tobytes()) for t, v in zip(todo, vectors, strict=True)],
                )
                self._db.commit()
                self._memory.update(zip(todo, vectors.tolist(), strict=True))
            return [self._memory[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def chitchat_arrays(limit: int | None = None) -> TrainingArrays:
    """Query/response embeddings and rewards of `datasets.load_chitchat(limit)`'s episodes."""
    episodes = load_chitchat(limit)
    return TrainingArrays(
        embed_cached([e.query for e in episodes]),
        embed_cached([e.response for e in episodes]),
        np.asarray([e.reward for e in episodes], dtype=np.float32),
        tuple(e.id for e in episodes),
    )


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A fixed random (train, test) split of `range(n)`."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman rank correlation; 0.0 for a constant prediction (no ranking at all)."""
    if np.ptp(y_pred) == 0:
        return 0.0
    return float(spearmanr(y_true, y_pred).statistic)


def paired_bootstrap_se(
    y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int = 500, seed: int = 0
) -> float:
    """Standard error, from resampling the test rows, of spearman(a) - spearman(b).

    It measures how much a gap between two models could move with another test set of the same
    size: the noise that seeds do not show.
    """
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(n):
        rows = rng.integers(0, len(y_true), len(y_true))
        gaps.append(spearman(y_true[rows], pred_a[rows]) - spearman(y_true[rows], pred_b[rows]))
    return float(np.std(gaps, ddof=1))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred))))


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation and standard error of a metric over seeds."""

    mean: float
    std: float
    se: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise `values` (std is the sample std; 0 for a single value)."""
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, std / len(values) ** 0.5, len(values))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f} (se {self.se:.3f})"


def time_per_call(fn: Callable[[], object], *, min_seconds: float = 0.3, repeats: int = 5) -> float:
    """Median seconds per call of `fn` over `repeats` timed loops of at least `min_seconds`."""
    fn()
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - start >= min_seconds / repeats or loops >= 1 << 20:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def unit_vectors(n: int, rng: np.random.Generator, dim: int = 384) -> np.ndarray:
    """`n` random unit vectors (float32), e.g. synthetic MiniLM-sized embeddings."""
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed(fn: Callable[[int], object], repeats: int, warmup: int = 5) -> list[float]:
    """Seconds per call of fn(i) for i in range(warmup + repeats); warm-up calls are dropped."""
    samples = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return samples[warmup:]


def p50_p95_ms(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p95 of `samples` (seconds), in milliseconds."""
    p50, p95 = np.percentile(np.asarray(samples) * 1e3, [50, 95])
    return float(p50), float(p95)


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process, in MB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_facts() -> str:
    """One line: date, cores, CPU, Python, torch and its thread count."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{dt.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), CPU only, "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


KEEP_MARKER = "<!-- hand-written notes: kept when the benchmark rewrites this section -->"


def update_section(heading: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the `## heading` section of `path` with `body` (append it if missing).

    Whatever follows a `KEEP_MARKER` line inside the old section (analysis written by hand)
    is kept after the new body.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(text)
    old = match.group(0) if match else ""
    kept = "\n" + old[old.index(KEEP_MARKER):].rstrip() + "\n" if KEEP_MARKER in old else ""
    section = f"## {heading}\n\n{body.strip()}\n{kept}"
    if match:
        text = text[: match.start()] + section + "\n" + text[match.end():]
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
