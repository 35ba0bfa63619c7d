"""Speed of the memory's hot paths, each beside what it is built on, measured in the same run.

    python benchmarks/bench_speed.py            # full: recall at 1k, 10k, 100k episodes
    python benchmarks/bench_speed.py --quick    # small run (1k, 4k), prints only

Every comparison is timed in interleaved rounds (A, B, C, A, B, C, ...) so that the load of
this shared machine falls on both sides of a ratio alike:

* add: `memory.add_episode` (batch of 1) and `memory.add_episodes` (batch of 64) with real
  Chit Chat text, beside the embedding call they make (one `embed_documents` of the queries
  and responses) and a bare Chroma insert of the vectors that call returned.
* score: `memory.score(query)` beside one `embed_documents([query])` of the same text.
* student vs teacher: forward passes of the trained networks, embedding excluded.
* recall: `memory.invoke(query)` (k=4 out of fetch_k=20, reward re-ranking with a trained
  student) in one namespace of eight, N episodes in total, beside `EpisodeStore.search_by_vector`
  and a bare Chroma query for the same 20 candidates on a collection holding the same vectors.
  Episodes and queries are synthetic random unit vectors (384-dim); half the episodes are
  rated, so the student (trained on a learnable synthetic reward, so that it beats the mean and
  recall uses it) predicts the value of the unrated candidates. The memory's embedder
  is a table lookup of precomputed vectors, which takes the embedding model out of the
  measurement; its own cost is measured and shown. The databases are kept under
  `bench_data/speed_recall/` and reused by later runs (`--rebuild` builds them again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import chromadb
import numpy as np
import torch
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from langchain_core.embeddings import Embeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_storage import p50_p95_ms, unit_vectors  # noqa: E402
from common import (  # noqa: E402
    CACHE_DIR,
    machine_facts,
    markdown_table,
    update_section,
)

from langchain_kd_memory.datasets import load_chitchat  # noqa: E402
from langchain_kd_memory.distillation import ModelDistillation  # noqa: E402
from langchain_kd_memory.embeddings import EmbedderIdentity, default_embeddings  # noqa: E402
from langchain_kd_memory.episodes import Episode, TrainingArrays  # noqa: E402
from langchain_kd_memory.memory import DistilledEpisodicMemory  # noqa: E402
from langchain_kd_memory.storage import EpisodeStore  # noqa: E402

DIM = 384
NAMESPACES = 8
K, FETCH_K = 4, 20
WRITE_BATCH = 5000
RECALL_FORMAT = 1
"""Bump when the layout of the cached recall databases changes."""
WARMUP = 3
GAP = 0.005
SETTINGS = Settings(anonymized_telemetry=False)


Step = Callable[[int], object]


def interleaved(
    steps: dict[str, Step], rounds: int, threads: dict[str, int] | None = None,
    warmup: int = WARMUP,
) -> dict[str, list[float]]:
    """Seconds of each step per round; steps run in turn, round after round.

    `threads` names the torch thread count of some steps (set before their clock starts).
    The first `warmup` rounds are run and dropped; step(i) gets i = 0 .. warmup + rounds - 1.
    After each step the machine idles for `GAP` seconds, untimed, as between an agent's calls:
    torch's OpenMP workers keep a core busy spinning for a moment after an operation, which
    would otherwise slow whichever step comes next.
    """
    threads = threads or {}
    default = torch.get_num_threads()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(rounds + warmup):
        for name, step in steps.items():
            torch.set_num_threads(threads.get(name, default))
            start = time.perf_counter()
            step(i)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                samples[name].append(elapsed)
            time.sleep(GAP)
    torch.set_num_threads(default)
    return samples


def ms(samples: list[float], per: int = 1) -> str:
    p50, p95 = p50_p95_ms([s / per for s in samples])
    return f"{p50:.2f} / {p95:.2f}"


def p50(samples: list[float]) -> float:
    return float(np.median(samples))


def paired_ratio(numerator: list[float], *parts: list[float]) -> float:
    """Median over rounds of numerator / sum(parts): each round's load cancels out."""
    return float(np.median(np.asarray(numerator) / np.sum(parts, axis=0)))


def paired_excess_ms(whole: list[float], *parts: list[float]) -> float:
    """Median over rounds of whole - sum(parts), in ms."""
    return float(np.median(np.asarray(whole) - np.sum(parts, axis=0))) * 1e3


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- add and score


def bench_add(
    memory: DistilledEpisodicMemory, pool: list[Episode], size: int, rounds: int
) -> list[str]:
    """One table row: add_episode(s) vs its embedding call vs a bare Chroma insert."""
    embedder = memory.store.embeddings
    bare = memory.store.client.create_collection(
        f"bare-add-{size}", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    offset = 0 if size == 1 else 200
    warmup = WARMUP if size == 1 else 1  # a round of 64 episodes takes seconds
    batches = [
        [pool[(offset + i * size + j) % len(pool)] for j in range(size)]
        for i in range(rounds + warmup)
    ]
    vectors: dict[int, np.ndarray] = {}

    def embed(i: int) -> None:
        batch = batches[i]
        vectors[i] = np.asarray(
            embedder.embed_documents([e.query for e in batch] + [e.response for e in batch]),
            dtype=np.float32,
        )

    def insert(i: int) -> None:
        batch = batches[i]
        bare.add(
            ids=[f"{i}-{j}" for j in range(size)],
            embeddings=vectors.pop(i)[:size],
            documents=[e.query for e in batch],
            metadatas=[{"reward": float(e.reward or 0.0)} for e in batch],
        )

    def add(i: int) -> None:
        batch = batches[i]
        if size == 1:
            memory.add_episode(batch[0].query, batch[0].response, batch[0].reward)
        else:
            memory.add_episodes(
                [{"query": e.query, "response": e.response, "reward": e.reward} for e in batch]
            )

    t = interleaved({"embed": embed, "insert": insert, "add": add}, rounds, warmup=warmup)
    ratio = paired_ratio(t["add"], t["embed"], t["insert"])
    overhead = paired_excess_ms(t["add"], t["embed"], t["insert"]) / size
    method = "add_episode" if size == 1 else "add_episodes"
    return [
        f"`{method}`, batch of {size}", str(rounds), ms(t["add"], size), ms(t["embed"], size),
        ms(t["insert"], size), f"{overhead:+.2f} ms", f"{ratio:.2f}x",
    ]


def thread_settings() -> list[int]:
    """The process's default torch thread count first, then 1 if that differs."""
    default = torch.get_num_threads()
    return [default] + ([1] if default != 1 else [])


def bench_score(
    memory: DistilledEpisodicMemory, pool: list[Episode], rounds: int
) -> tuple[list[list[str]], dict[int, float]]:
    """Rows per torch thread count: memory.score(query) vs one embedding call of the same text."""
    embedder = memory.store.embeddings
    queries = [pool[(500 + i) % len(pool)].query for i in range(rounds + WARMUP)]
    steps: dict[str, Step] = {}
    threads: dict[str, int] = {}
    for n in thread_settings():
        steps[f"embed{n}"] = lambda i: embedder.embed_documents([queries[i]])
        steps[f"score{n}"] = lambda i: memory.score(queries[i])
        threads.update({f"embed{n}": n, f"score{n}": n})
    t = interleaved(steps, rounds, threads)
    rows, ratios = [], {}
    for n in thread_settings():
        ratios[n] = paired_ratio(t[f"score{n}"], t[f"embed{n}"])
        extra = paired_excess_ms(t[f"score{n}"], t[f"embed{n}"])
        rows.append([
            str(n), str(rounds), ms(t[f"score{n}"]), ms(t[f"embed{n}"]), f"{extra:+.2f} ms",
            f"{ratios[n]:.3f}x",
        ])
    return rows, ratios


# ----------------------------------------------------------------------------- networks


def per_call_us(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """p50 and p95 in µs of single calls of `fn` (back to back, after 20 warm-up calls)."""
    for _ in range(20):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    p50_ms, p95_ms = p50_p95_ms(samples)
    return p50_ms * 1e3, p95_ms * 1e3


def bench_networks(
    kd: ModelDistillation, calls: int
) -> tuple[list[list[str]], dict[int, dict[str, float]]]:
    """µs per query of student and teacher forward passes (and the library's scoring path).

    Returns the rows and, per thread count, the slowest student p50 and the smallest
    teacher/student ratio over the two batch sizes.
    """
    student, teacher = kd.student, kd.teacher
    rng = np.random.default_rng(1)
    default = torch.get_num_threads()
    rows, worst = [], {}
    for n in thread_settings():
        torch.set_num_threads(n)
        worst[n] = {"student_us": 0.0, "ratio": float("inf")}
        for batch in (1, 256):
            query = torch.from_numpy(unit_vectors(batch, rng))
            response = torch.from_numpy(unit_vectors(batch, rng))
            with torch.no_grad():
                s = per_call_us(lambda q=query: student(q), calls)
                t = per_call_us(lambda q=query, r=response: teacher(q, r), calls)
            path = per_call_us(lambda q=query: kd.predict_embeddings(q.numpy()), calls)
            rows.append([
                str(n), str(batch),
                *(f"{a / batch:.2f} / {b / batch:.2f}" for a, b in (s, t, path)),
                f"{t[0] / s[0]:.1f}x",
            ])
            worst[n]["student_us"] = max(worst[n]["student_us"], s[0] / batch)
            worst[n]["ratio"] = min(worst[n]["ratio"], t[0] / s[0])
    torch.set_num_threads(default)
    return rows, worst


# ----------------------------------------------------------------------------- recall


class LookupEmbeddings(Embeddings):
    """Precomputed vectors looked up by text: recall timed without the embedding model."""

    identity = EmbedderIdentity("bench-synthetic-unit-vectors", DIM)

    def __init__(self) -> None:
        self.table: dict[str, list[float]] = {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[text] for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text]


def recall_database(
    total: int, embeddings: LookupEmbeddings, rebuild: bool
) -> tuple[EpisodeStore, Collection, float]:
    """The store (8 namespaces, `total` episodes) and a bare collection of namespace 0's vectors.

    Reused from `bench_data/speed_recall/` when a complete one is there. Returns the store,
    the bare collection and the seconds spent building (0 when reused).
    """
    directory = CACHE_DIR / "speed_recall" / str(total)
    marker = directory / "complete.json"
    facts = {"format": RECALL_FORMAT, "total": total, "chromadb": chromadb.__version__}
    reuse = not rebuild and marker.exists() and json.loads(marker.read_text()) == facts
    if not reuse:
        shutil.rmtree(directory, ignore_errors=True)
    client = chromadb.PersistentClient(path=str(directory), settings=SETTINGS)
    store = EpisodeStore("recall", embeddings=embeddings, client=client)
    if reuse:
        return store, client.get_collection("bare", embedding_function=None), 0.0
    start = time.perf_counter()
    rng = np.random.default_rng(total)
    per_namespace = total // NAMESPACES
    bare = client.create_collection(
        "bare", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    for ns in range(NAMESPACES):
        vectors = unit_vectors(per_namespace, rng)
        for first in range(0, per_namespace, WRITE_BATCH):
            chunk = vectors[first : first + WRITE_BATCH]
            rows = range(first, first + len(chunk))
            store.add(
                [
                    Episode(f"synthetic query {ns}/{i}", f"synthetic response {ns}/{i}",
                            reward=float(i % 10) if i % 2 == 0 else None, namespace=f"ns{ns}")
                    for i in rows
                ],
                query_embeddings=chunk,
                response_embeddings=chunk,
            )
            if ns == 0:
                bare.add(
                    ids=[str(i) for i in rows],
                    embeddings=chunk,
                    documents=[f"synthetic query 0/{i}" for i in rows],
                    metadatas=[{"reward": float(i % 10)} for i in rows],
                )
    marker.write_text(json.dumps(facts))
    return store, bare, time.perf_counter() - start


def trained_model(embeddings: Embeddings) -> ModelDistillation:
    """A value model trained on synthetic vectors whose reward is a noisy linear function.

    The student must beat predicting the mean, or recall would not use its predictions.
    """
    rng = np.random.default_rng(2)
    vectors = unit_vectors(1000, rng)
    direction = unit_vectors(1, rng)[0]
    rewards = np.clip(4.5 + 60 * vectors @ direction + rng.normal(0, 0.5, 1000), 0, 9)
    kd = ModelDistillation(embeddings=embeddings, device="cpu", seed=0)
    kd.distill_from_memories(TrainingArrays(vectors, vectors, rewards), num_epochs=5)
    if not kd.student_beats_mean:
        raise AssertionError("the synthetic student did not beat the mean; recall would skip it")
    return kd


def recall_steps(
    memory: DistilledEpisodicMemory, bare: Collection, embeddings: LookupEmbeddings,
    texts: list[str], queries: np.ndarray,
) -> tuple[dict[str, Step], dict[str, int]]:
    """The interleaved steps of one recall size and the torch threads of the memory's steps."""
    steps: dict[str, Step] = {}
    threads: dict[str, int] = {}
    for n in thread_settings():
        steps[f"recall{n}"] = lambda i: memory.invoke(texts[i])
        threads[f"recall{n}"] = n
    steps["store"] = lambda i: memory.store.search_by_vector(
        queries[i], k=FETCH_K, namespace="ns0"
    )
    steps["bare"] = lambda i: bare.query(
        query_embeddings=queries[i : i + 1], n_results=FETCH_K,
        include=["documents", "metadatas", "distances"],
    )
    steps["lookup"] = lambda i: embeddings.embed_query(texts[i])
    return steps, threads


def bench_recall(
    totals: list[int], rounds: int, rebuild: bool
) -> tuple[list[list[str]], dict[int, dict[int, float]], str]:
    """Rows of the recall table, recall p50 (ms) per size and thread count, a note on building."""
    embeddings = LookupEmbeddings()
    kd = trained_model(embeddings)
    rng = np.random.default_rng(3)
    texts = [f"recall query {i}" for i in range(rounds + WARMUP)]
    queries = unit_vectors(len(texts), rng)
    embeddings.table = {text: q.tolist() for text, q in zip(texts, queries, strict=True)}
    rows, recall_p50, built = [], {}, []
    for total in totals:
        store, bare, seconds = recall_database(total, embeddings, rebuild)
        if seconds:
            built.append(f"{total:,} in {seconds:.0f} s")
        memory = DistilledEpisodicMemory(
            store=store, distillation=kd, namespace="ns0", k=K, fetch_k=FETCH_K
        )
        sources = {d.metadata["value_source"] for q in texts[:10] for d in memory.invoke(q)}
        if "predicted" not in sources:
            raise AssertionError(f"recall never used the student's predictions: {sources}")
        steps, threads = recall_steps(memory, bare, embeddings, texts, queries)
        t = interleaved(steps, rounds, threads)
        recall_p50[total] = {n: p50(t[f"recall{n}"]) * 1e3 for n in thread_settings()}
        rows.append([
            f"{total:,}", f"{store.count('ns0'):,}",
            *(ms(t[f"recall{n}"]) for n in thread_settings()),
            ms(t["store"]), ms(t["bare"]),
            *(f"{paired_ratio(t[f'recall{n}'], t['bare']):.2f}x" for n in thread_settings()),
            f"{p50(t['lookup']) * 1e6:.1f} µs",
        ])
        print(f"  recall measured at {total:,} episodes (load {load()})", file=sys.stderr,
              flush=True)
    note = "built now: " + ", ".join(built) if built else "reused from bench_data/speed_recall/"
    return rows, recall_p50, note


# ----------------------------------------------------------------------------- main


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def target_rows(
    score: dict[int, float], networks: dict[int, dict[str, float]],
    recall: dict[int, dict[int, float]],
) -> list[list[str]]:
    """Targets, measured at each torch thread count; the verdict is at the process default."""
    default = thread_settings()[0]
    largest = max(recall)
    checks = [
        ("`score()` p50 / one embedding call", "≤ 1.2x", score, "{:.3f}x", 1.2, False),
        ("teacher / student forward, p50 (smaller of batch 1, 256)", "≥ 5x",
         {n: w["ratio"] for n, w in networks.items()}, "{:.1f}x", 5.0, True),
        ("student forward per query, p50 (larger of batch 1, 256)", "≤ 100 µs",
         {n: w["student_us"] for n, w in networks.items()}, "{:.1f} µs", 100.0, False),
        (f"recall p50 at {largest:,} episodes", "≤ 10 ms", recall[largest], "{:.2f} ms",
         10.0, False),
    ]
    rows = []
    for what, target, values, fmt, bound, at_least in checks:
        met = values[default] >= bound if at_least else values[default] <= bound
        rows.append([what, target, *(fmt.format(values[n]) for n in thread_settings()),
                     verdict(met)])
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="small run (recall at 1k and 4k, few rounds); writes no file")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the cached recall databases under bench_data/")
    args = parser.parse_args(argv)
    totals = [1_000, 4_000] if args.quick else [1_000, 10_000, 100_000]
    add_rounds = {1: 10, 64: 2} if args.quick else {1: 30, 64: 5}
    score_rounds = 20 if args.quick else 40
    network_calls = 200 if args.quick else 300
    recall_rounds = 50 if args.quick else 200
    load_start = load()
    started = time.perf_counter()

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_speed_", dir=CACHE_DIR))
    try:
        pool = load_chitchat(1500)
        embedder = default_embeddings()
        embedder.embed_documents(["load the model before timing"])
        memory = DistilledEpisodicMemory(
            store=EpisodeStore("speed", embeddings=embedder, persist_directory=str(workdir)),
            distillation=ModelDistillation(embeddings=embedder, device="cpu", seed=0),
        )
        add_rows = [bench_add(memory, pool, size, n) for size, n in add_rounds.items()]
        report = memory.consolidate(num_epochs=3)
        score_rows, score = bench_score(memory, pool, score_rounds)
        network_rows, networks = bench_networks(memory.distillation, network_calls)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    recall_rows, recall, build_note = bench_recall(totals, recall_rounds, args.rebuild)

    settings = thread_settings()
    per_thread = [f"{n} thread{'s' if n > 1 else ''}" for n in settings]
    command = "python benchmarks/bench_speed.py" + (" --quick" if args.quick else "")
    text = "\n\n".join([
        f"Command: `{command}`  \nMachine: {machine_facts()}, chromadb {chromadb.__version__}, "
        f"embedded Chroma on local disk.  \nLoad average (1/5/15 min) at start {load_start}, at "
        f"the end {load()}: the machine is shared, so absolute times move between runs. Each "
        "comparison runs in interleaved rounds of one run, and a ratio is the median over rounds "
        "of the per-round ratio, so that load shared by both sides cancels. Torch runs with "
        f"the process default of {settings[0]} threads (what a user gets) and, where shown, "
        "with 1.",
        "Targets (verdict at the default thread count):",
        markdown_table(["what", "target", *per_thread, ""],
                       target_rows(score, networks, recall)),
        "**Add** (real Chit Chat episodes, MiniLM; ms per episode, p50 / p95). `embedding` is "
        "the one `embed_documents` call the memory makes (queries and responses together), "
        "`bare insert` a `collection.add` of the vectors it returned with the query as document "
        "and the reward as metadata. Overhead (per episode) = add − embedding − bare insert and "
        "the last column, add / (embedding + insert), are medians of per-round values:",
        markdown_table(
            ["call", "rounds", "memory", "embedding", "bare Chroma insert", "overhead",
             "memory / (embedding + insert)"],
            add_rows,
        ),
        "**Score** (student trained by `consolidate(num_epochs=3)` on the episodes just added; "
        "ms per call, p50 / p95; the last two columns are medians of per-round values):",
        markdown_table(
            ["torch threads", "rounds", "`memory.score(query)`", "`embed_documents([query])`",
             "score − embedding", "score / embedding"],
            score_rows,
        ),
        f"**Networks** (student {report.metrics['student']['params']:,} parameters, teacher "
        f"{report.metrics['teacher']['params']:,}; µs per query, p50 / p95 of {network_calls} "
        "calls back to back, embedding excluded, `torch.no_grad()`; `predict_embeddings` is "
        "the student plus the library's checks and `RewardEstimate`s):",
        markdown_table(
            ["torch threads", "batch", "student", "teacher", "`predict_embeddings`",
             "teacher / student at p50"],
            network_rows,
        ),
        f"**Recall** (N synthetic episodes over {NAMESPACES} namespaces, one searched; k={K} of "
        f"fetch_k={FETCH_K}; {recall_rounds} queries per size; ms per query, p50 / p95; "
        f"databases {build_note}). `memory.invoke` embeds through a table lookup, timed "
        "in the last column; `search_by_vector` and the bare query fetch the 20 candidates:",
        markdown_table(
            ["N", "in the namespace", *(f"`memory.invoke`, {p}" for p in per_thread),
             "`store.search_by_vector`", "bare Chroma query",
             *(f"invoke / bare, {p}" for p in per_thread), "lookup embedder"],
            recall_rows,
        ),
        f"Whole run: {time.perf_counter() - started:.0f} s.",
    ])
    print(text)
    if not args.quick:
        update_section("Speed", text)
    return text


if __name__ == "__main__":
    main()
