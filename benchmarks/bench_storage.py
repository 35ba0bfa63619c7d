"""EpisodeStore speed: add latency per episode, and search latency as namespaces grow.

    python benchmarks/bench_storage.py            # full: 1k, 10k, 100k stored episodes
    python benchmarks/bench_storage.py --quick    # a small run (1k, 4k)

Add: p50 per episode of `EpisodeStore.add` with batches of 1 and of 64 real Chit Chat episodes,
once embedding with the real MiniLM (one batched call for queries, one for responses) and once
with precomputed embeddings (the Chroma write alone). Each batch goes to a namespace that
already exists.

Search: N episodes spread evenly over 8 namespaces (one collection each), queries against one
namespace (N/8 episodes), k=4, timed through `search_by_vector` so the embedding call is
excluded. Vectors are synthetic random unit vectors (384-dim), queries too. Beside it, in the
same run and the same database: a bare Chroma query on one collection holding the same N/8
vectors (what the store adds on top of Chroma), and a bare query over all N vectors in one
collection with a `where` filter selecting the namespace (the layout the store avoids).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from chromadb.api.models.Collection import Collection
from chromadb.types import Where

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CACHE_DIR,
    machine_facts,
    markdown_table,
    p50_p95_ms,
    timed,
    unit_vectors,
    update_section,
)

from langchain_kd_memory.datasets import load_chitchat  # noqa: E402
from langchain_kd_memory.episodes import Episode  # noqa: E402
from langchain_kd_memory.storage import EpisodeStore  # noqa: E402

NAMESPACES = 8
K = 4
WRITE_BATCH = 5000


def add_timings(
    store: EpisodeStore, pool: list[Episode], size: int, repeats: int, embed: bool
) -> list[float]:
    """Seconds per episode of `add` for `repeats` batches of `size` (batches built beforehand)."""
    namespace = f"add-{size}-{'embed' if embed else 'precomputed'}"
    rng = np.random.default_rng(size)
    calls = []
    for i in range(repeats + 5):
        rows = [pool[(i * size + j) % len(pool)] for j in range(size)]
        batch = [
            Episode(e.query, e.response, e.reward, e.metadata, namespace=namespace) for e in rows
        ]
        vectors = {} if embed else {
            "query_embeddings": unit_vectors(size, rng),
            "response_embeddings": unit_vectors(size, rng),
        }
        calls.append((batch, vectors))
    return [t / size for t in timed(lambda i: store.add(calls[i][0], **calls[i][1]), repeats)]


def bench_add(store: EpisodeStore, repeats: dict[int, int]) -> list[list[str]]:
    """p50 per episode of `add`, for batches of 1 and 64, embedding or precomputed."""
    pool = load_chitchat()
    store.embeddings.embed_documents(["load the model before timing"])
    rows = []
    for embed in (True, False):
        for size in (1, 64):
            p50, p95 = p50_p95_ms(add_timings(store, pool, size, repeats[size], embed))
            rows.append([
                f"add, batch of {size}",
                "MiniLM, real Chit Chat text" if embed else "precomputed",
                f"{p50:.2f} ms",
                f"{p95:.2f} ms",
                str(repeats[size]),
            ])
    return rows


def fill(store: EpisodeStore, total: int, rng: np.random.Generator) -> np.ndarray:
    """Store `total` synthetic episodes over 8 namespaces; return namespace 0's query vectors."""
    per_namespace = total // NAMESPACES
    first = None
    for ns in range(NAMESPACES):
        vectors = unit_vectors(per_namespace, rng)
        for start in range(0, per_namespace, WRITE_BATCH):
            chunk = vectors[start : start + WRITE_BATCH]
            store.add(
                [
                    Episode(f"synthetic query {ns}/{start + i}", f"response {start + i}",
                            reward=float(i % 10), namespace=f"ns{ns}")
                    for i in range(len(chunk))
                ],
                query_embeddings=chunk,
                response_embeddings=chunk,
            )
        first = vectors if first is None else first
    assert first is not None
    return first


def bare_collection(
    store: EpisodeStore, name: str, vectors: np.ndarray, labels: np.ndarray
) -> Collection:
    """A plain Chroma collection (cosine, no embedding function) with a label per vector."""
    collection = store.client.create_collection(
        name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    for start in range(0, len(vectors), WRITE_BATCH):
        ids = [str(i) for i in range(start, min(start + WRITE_BATCH, len(vectors)))]
        collection.add(
            ids=ids,
            embeddings=vectors[start : start + WRITE_BATCH],
            documents=[f"synthetic query {i}" for i in ids],
            metadatas=[{"ns": int(labels[int(i)])} for i in ids],
        )
    return collection


def store_query(store: EpisodeStore, queries: np.ndarray) -> Callable[[int], object]:
    return lambda i: store.search_by_vector(queries[i], k=K, namespace="ns0")


def bare_query(
    collection: Collection, queries: np.ndarray, where: Where | None
) -> Callable[[int], object]:
    def query(i: int) -> object:
        return collection.query(
            query_embeddings=queries[i : i + 1],
            n_results=K,
            where=where,
            include=["documents", "metadatas", "distances"],
        )

    return query


def bench_search(store: EpisodeStore, totals: list[int], repeats: int) -> list[list[str]]:
    """p50/p95 search latency per stored size: the store, and two bare Chroma layouts."""
    rng = np.random.default_rng(0)
    queries = unit_vectors(repeats + 5, rng)
    rows = []
    for total in totals:
        sized = EpisodeStore(f"bench{total}", embeddings=store.embeddings, client=store.client)
        target = fill(sized, total, rng)
        ours = timed(store_query(sized, queries), repeats)
        one = bare_collection(store, f"bare-ns-{total}", target, np.zeros(len(target), int))
        others = unit_vectors(total - len(target), rng)
        labels = np.concatenate([np.zeros(len(target), int), 1 + np.arange(len(others)) % 7])
        shared = bare_collection(
            store, f"bare-all-{total}", np.concatenate([target, others]), labels
        )
        cells = [f"{total:,}", f"{len(target):,}"]
        for samples in (
            ours,
            timed(bare_query(one, queries, None), repeats),
            timed(bare_query(shared, queries, {"ns": 0}), repeats),
        ):
            p50, p95 = p50_p95_ms(samples)
            cells.append(f"{p50:.2f} / {p95:.2f}")
        rows.append(cells)
        print(f"  measured {total:,} stored episodes", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small run: 1k and 4k episodes")
    parser.add_argument("--update-md", action="store_true", help="write BENCHMARKS.md section")
    args = parser.parse_args(argv)
    totals = [1_000, 4_000] if args.quick else [1_000, 10_000, 100_000]
    add_repeats = {1: 10, 64: 5} if args.quick else {1: 60, 64: 20}
    search_repeats = 100 if args.quick else 300

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_storage_", dir=CACHE_DIR))
    try:
        store = EpisodeStore("bench", persist_directory=str(workdir))
        add_rows = bench_add(store, add_repeats)
        search_rows = bench_search(store, totals, search_repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    report = "\n\n".join([
        f"Machine: {machine_facts()}. Embedded Chroma on local disk. Load average at the end "
        f"(1/5/15 min): {load}: the machine is shared, so absolute times vary between runs.",
        markdown_table(["operation", "embedding", "p50 per episode", "p95", "calls"], add_rows),
        f"Search, k={K}, {search_repeats} queries per size, synthetic random unit vectors, "
        "embedding excluded; p50 / p95 in ms:",
        markdown_table(
            [
                "stored (8 namespaces)",
                "in the searched namespace",
                "EpisodeStore.search_by_vector",
                "bare Chroma, one collection of that size",
                "bare Chroma, all in one collection + where filter",
            ],
            search_rows,
        ),
    ])
    print(report)
    if args.update_md:
        update_section("Storage", report)
    return report


if __name__ == "__main__":
    main()
