"""Consolidation cost: `memory.consolidate()` on 1k, 5k and 10k stored, rated episodes.

    python benchmarks/bench_consolidation.py            # full: 1k, 5k, 10k
    python benchmarks/bench_consolidation.py --quick    # 500 and 1,500 episodes, prints only

Each size runs in a fresh worker process (so its peak memory is its own):

1. Stores N rated episodes in an embedded Chroma with precomputed vectors: the real Chit Chat
   episodes (text, MiniLM query and response embeddings, human ratings; ~3,200 of them). Beyond
   that they repeat, with a small Gaussian jitter (sigma 0.01 per dimension, renormalised) on
   both vectors and a new id: near-twins, so early stopping tends to run more epochs than on
   fresh data (a pessimistic case).
2. Wraps the memory's embedder (the real MiniLM) in a counter and runs `memory.consolidate()`
   with the library's defaults (teacher then student, up to 30 epochs with early stopping,
   automatic batch size, one torch thread, checkpoint saved): the embedder must not be called.
3. Runs it again, for 2 epochs, under `tracemalloc` for the peak of Python allocations (numpy
   included). Torch tensors and Chroma's own memory are not seen by tracemalloc (the RSS
   figures see them), so more epochs would not raise that peak: it comes from reading the
   stored vectors, which every consolidation does once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CACHE_DIR,
    chitchat_arrays,
    machine_facts,
    markdown_table,
    update_section,
)

from langchain_kd_memory.datasets import load_chitchat  # noqa: E402
from langchain_kd_memory.distillation import ModelDistillation  # noqa: E402
from langchain_kd_memory.embeddings import EmbedderIdentity, default_embeddings  # noqa: E402
from langchain_kd_memory.episodes import Episode  # noqa: E402
from langchain_kd_memory.memory import DistilledEpisodicMemory  # noqa: E402
from langchain_kd_memory.storage import EpisodeStore  # noqa: E402

JITTER = 0.01
WRITE_BATCH = 1000
TARGET_SECONDS = 60.0
TRACED_EPOCHS = 2
MIB = 1024 * 1024


class CountingEmbeddings(Embeddings):
    """Wraps an embedder and counts the texts it is asked to embed."""

    def __init__(self, inner: Embeddings, identity: EmbedderIdentity) -> None:
        self.inner = inner
        self.identity = identity
        self.calls = 0
        self.texts = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        self.texts += 1
        return self.inner.embed_query(text)


def jittered(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = vectors + rng.normal(0.0, JITTER, vectors.shape).astype(np.float32)
    norms = np.linalg.norm(noisy, axis=1, keepdims=True)
    return np.where(norms > 0, noisy / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def fill(store: EpisodeStore, total: int, limit: int | None) -> int:
    """Store `total` rated episodes: the real Chit Chat ones, then jittered repeats.

    Returns:
        How many distinct real episodes there are.
    """
    episodes = load_chitchat(limit)
    arrays = chitchat_arrays(limit)
    rng = np.random.default_rng(0)
    rows = np.arange(total) % len(episodes)
    for first in range(0, total, WRITE_BATCH):
        chunk = rows[first : first + WRITE_BATCH]
        copies = (np.arange(first, first + len(chunk)) // len(episodes)).tolist()
        queries = arrays.query_embeddings[chunk]
        responses = arrays.response_embeddings[chunk]
        if max(copies) > 0:
            repeat = np.asarray(copies) > 0
            queries[repeat] = jittered(queries[repeat], rng)
            responses[repeat] = jittered(responses[repeat], rng)
        batch = [
            Episode(
                episodes[row].query, episodes[row].response, episodes[row].reward,
                episodes[row].metadata, id=f"{episodes[row].id}~{copy}",
                created_at=episodes[row].created_at,
            )
            for row, copy in zip(chunk.tolist(), copies, strict=True)
        ]
        store.add(batch, query_embeddings=queries, response_embeddings=responses)
    return len(episodes)


def rss_status(field: str) -> float | None:
    """A `/proc/self/status` memory field in MiB (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def worker(total: int, limit: int | None) -> dict[str, Any]:
    """Fill a fresh store with `total` episodes, consolidate twice, return the figures."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_consolidation_", dir=CACHE_DIR))
    try:
        inner = default_embeddings()
        counting = CountingEmbeddings(inner, inner.identity)
        store = EpisodeStore("consolidation", embeddings=counting,
                             persist_directory=str(workdir / "chroma"))
        start = time.perf_counter()
        real = fill(store, total, limit)
        fill_seconds = time.perf_counter() - start
        memory = DistilledEpisodicMemory(
            store=store,
            distillation=ModelDistillation(embeddings=counting, seed=0),
            model_dir=str(workdir / "models"),
        )
        rss_before = rss_status("VmRSS")
        peak_reset = reset_peak_rss()
        calls_before = counting.calls
        report = memory.consolidate()
        timed_calls = counting.calls - calls_before
        peak_rss = rss_status("VmHWM") if peak_reset else None

        tracemalloc.start()
        traced_start = time.perf_counter()
        memory.consolidate(num_epochs=TRACED_EPOCHS)
        traced_seconds = time.perf_counter() - traced_start
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        calls = counting.calls - calls_before
        if calls:
            raise AssertionError(f"consolidation called the embedder {calls} times")
        metrics = report.metrics
        return {
            "total": total,
            "real": real,
            "stored": store.count(),
            "used": report.episodes_used,
            "seconds": report.duration_s,
            "teacher_seconds": metrics["teacher"]["seconds"],
            "student_seconds": metrics["student"]["seconds"],
            "teacher_epochs": metrics["teacher"]["epochs_run"],
            "student_epochs": metrics["student"]["epochs_run"],
            "batch_size": metrics["batch_size"],
            "max_epochs": memory.distillation.config.max_epochs,
            "embedder_calls": timed_calls,
            "embedder_calls_both_runs": calls,
            "traced_seconds": traced_seconds,
            "traced_peak_mib": traced_peak / MIB,
            "rss_before_mib": rss_before,
            "peak_rss_mib": peak_rss,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "fill_seconds": fill_seconds,
            "checkpoint_version": report.checkpoint_version,
            "student_mae": metrics["validation"]["student_mae"],
            "mean_mae": metrics["validation"]["mean_mae"],
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_worker(total: int, limit: int | None) -> dict[str, Any]:
    """Run `worker(total)` (or, with total 0, the embedding cache) in a fresh Python process.

    The kernel carries the peak RSS of the process that starts a worker into the worker's
    `getrusage` maxrss, so this parent never loads the embedding model itself.
    """
    command = [sys.executable, __file__, "--worker", str(total)]
    if limit is not None:
        command += ["--limit", str(limit)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"the worker for {total} episodes failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="500 and 1,500 episodes (1,500 Chit Chat ones); writes no file")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        if args.worker == 0:
            chitchat_arrays(args.limit)  # embed once (cached under bench_data/)
            print(json.dumps({}))
        else:
            print(json.dumps(worker(args.worker, args.limit)))
        return ""
    sizes = [500, 1_500] if args.quick else [1_000, 5_000, 10_000]
    limit = 1_500 if args.quick else None
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    run_worker(0, limit)  # the embedding cache, before any timing
    parent_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = []
    for total in sizes:
        results.append(run_worker(total, limit))
        print(f"  consolidated {total:,} episodes in {results[-1]['seconds']:.1f} s",
              file=sys.stderr, flush=True)
    rows = [
        [
            f"{r['stored']:,}", f"{r['used']:,}", f"**{r['seconds']:.1f}**",
            f"{r['teacher_seconds']:.1f} / {r['student_seconds']:.1f}",
            f"{r['seconds'] - r['teacher_seconds'] - r['student_seconds']:.1f}",
            f"{r['teacher_epochs']} / {r['student_epochs']}", str(r["batch_size"]),
            str(r["embedder_calls"]),
            f"{mib(r['rss_before_mib'])} → {mib(r['peak_rss_mib'])}", mib(r["maxrss_mib"]),
            f"{r['traced_peak_mib']:,.0f}", f"{r['traced_seconds']:.1f}",
        ]
        for r in results
    ]
    largest = results[-1]
    if largest["stored"] < 10_000:
        verdict = "not measured (quick run)"
    elif largest["seconds"] <= TARGET_SECONDS:
        verdict = "**met**"
    else:
        verdict = f"**missed** by {largest['seconds'] - TARGET_SECONDS:.1f} s"
    command = "python benchmarks/bench_consolidation.py" + (" --quick" if args.quick else "")
    load_end = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    text = "\n\n".join([
        f"Command: `{command}`  \nMachine: {machine_facts()}.  \nLoad average (1/5/15 min) at "
        f"start {load_start}, at the end {load_end} (the machine is shared).",
        f"Target: ≤ {TARGET_SECONDS:.0f} s at 10,000 episodes on 2 cores: "
        f"{largest['seconds']:.1f} s at {largest['stored']:,}, "
        + verdict
        + ". Embedder calls during consolidation: "
        + ", ".join(str(r["embedder_calls_both_runs"]) for r in results)
        + " (both runs of each size; the benchmark fails on any other number).",
        markdown_table(
            ["stored", "trained on", "consolidate() s", "teacher / student s",
             "read + save s", "epochs teacher / student", "batch", "embedder calls",
             "RSS before → peak during (MiB)", "process maxrss (MiB)", "tracemalloc peak (MiB)",
             f"s under tracemalloc ({TRACED_EPOCHS} epochs)"],
            rows,
        ),
        "`consolidate() s` is the report's wall time: reading the stored vectors from Chroma, "
        "training (teacher, then student; the seconds of each are in the next column), and "
        "saving the versioned checkpoint. Peak during = the kernel's RSS high-water mark, reset "
        "just before the call; process maxrss = `getrusage` over the worker's life (store fill "
        f"included; it cannot be lower than this parent's {parent_maxrss:,.0f} MiB, which the "
        "kernel carries into it). Episodes are real Chit Chat ones up to "
        f"{largest['real']:,}, jittered repeats beyond. "
        f"The library's epoch cap is {largest['max_epochs']} per network.",
        f"Whole run: {time.perf_counter() - started:.0f} s.",
    ])
    print(text)
    if not args.quick:
        update_section("Consolidation", text)
    return text


if __name__ == "__main__":
    main()
