"""EpisodeStore with many namespaces: memory, recall latency, counting, write rate.

    python benchmarks/bench_scale.py              # full: 10,000 namespaces embedded; server run
    python benchmarks/bench_scale.py --quick      # a small run (1,000 and 100 namespaces)
    python benchmarks/bench_scale.py --update-md  # also rewrite BENCHMARKS.md's "Scale" section

(a) Embedded Chroma, one process: N namespaces x 10 episodes, written in `add` calls of 50
namespaces (500 episodes) each, with precomputed synthetic unit vectors (384-dim; the embedder is
never called). Each layout runs in a fresh child process so its RSS growth is its own:
    * buckets: this version (namespaces share 64 bucket collections, chosen by a hash of their
      name, until they hold 256 episodes);
    * a collection each: ``move_at=1``, every namespace in a collection of its own, which is the
      format-1 layout (one collection per namespace), measured on fewer namespaces.
Measured: RSS growth from the opened, empty store to after writing and searching, recall
(`search_by_vector`, k=4) p50/p95 in random namespaces and repeatedly in one namespace, whole-store
`count()` and `namespaces()`.

(b) A local ``chroma run`` server: M namespaces and E episodes in total: every fifth namespace
holds 1,000 episodes (it starts in a bucket and moves to its own collection at 256), the others
share the rest. Written round-robin, in `add` calls of 500 episodes spanning 20 namespaces.
Measured: add throughput over each 50,000 episodes, Chroma requests per `add` call (registry
reads apart), recall p50/p95 in a 1,000-episode namespace and in a small one, whole-store
`count()`, collections left empty, and the server's RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.models.Collection import Collection
from langchain_core.embeddings import Embeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CACHE_DIR,
    machine_facts,
    markdown_table,
    p50_p95_ms,
    rss_mb,
    timed,
    unit_vectors,
    update_section,
)

from langchain_kd_memory.embeddings import EmbedderIdentity  # noqa: E402
from langchain_kd_memory.episodes import Episode  # noqa: E402
from langchain_kd_memory.storage import EpisodeStore, http_client  # noqa: E402

DIM = 384
K = 4
PER_NAMESPACE = 10
NAMESPACES_PER_ADD = 50
SERVER_BATCH = 500
SERVER_SPREAD = 20  # namespaces per add call on the server
BIG = 1_000
WINDOW = 50_000  # episodes per throughput window (b)


class SyntheticVectors(Embeddings):
    """An embedder identity for precomputed vectors; embedding a text is a hash (never timed)."""

    identity = EmbedderIdentity("synthetic-unit-384", DIM)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return [float(x) for x in unit_vectors(1, np.random.default_rng(seed))[0]]


def episodes(namespace: str, count: int, start: int = 0) -> list[Episode]:
    return [
        Episode(f"question {namespace}/{j}", f"answer {j}", reward=float(j % 2),
                namespace=namespace, id=f"e{j}")
        for j in range(start, start + count)
    ]


def add(store: EpisodeStore, batch: list[Episode], rng: np.random.Generator) -> None:
    vectors = unit_vectors(len(batch), rng)
    store.add(batch, query_embeddings=vectors, response_embeddings=vectors)


def search_timings(
    store: EpisodeStore, namespaces: list[str], repeats: int, rng: np.random.Generator
) -> list[float]:
    queries = unit_vectors(repeats + 5, rng)
    def search(i: int) -> object:
        return store.search_by_vector(queries[i], k=K, namespace=namespaces[i % len(namespaces)])

    return timed(search, repeats)


# ---------------------------------------------------------------- (a) embedded, one process


def embedded_worker(namespaces: int, move_at: int, repeats: int, directory: str) -> dict[str, Any]:
    """Runs in a child process: fill an embedded store, measure, return the figures."""
    rng = np.random.default_rng(0)
    store = EpisodeStore("scale", embeddings=SyntheticVectors(), persist_directory=directory,
                         move_at=move_at)
    store.count(all_namespaces=True)  # the client and its database are open
    base = rss_mb()
    names = [f"user/{i}" for i in range(namespaces)]
    start = time.perf_counter()
    for first in range(0, namespaces, NAMESPACES_PER_ADD):
        batch = [e for ns in names[first : first + NAMESPACES_PER_ADD]
                 for e in episodes(ns, PER_NAMESPACE)]
        add(store, batch, rng)
    add_s = time.perf_counter() - start
    written = rss_mb()
    shuffled = random.Random(0).sample(names, len(names))
    random_ns = search_timings(store, shuffled, repeats, rng)
    one_ns = search_timings(store, [names[len(names) // 2]], repeats, rng)
    searched = rss_mb()
    start = time.perf_counter()
    total = store.count(all_namespaces=True)
    count_s = time.perf_counter() - start
    start = time.perf_counter()
    listed = len(store.namespaces())
    list_s = time.perf_counter() - start
    assert total == namespaces * PER_NAMESPACE and listed == namespaces, (total, listed)
    hits = store.search_by_vector(unit_vectors(1, rng)[0], k=K, namespace=names[7])
    assert len(hits) == K and {e.namespace for e, _ in hits} == {names[7]}
    collections = len(store.client.list_collections())
    return {
        "namespaces": namespaces, "episodes": total, "move_at": move_at,
        "collections": collections, "rss_base_mb": base, "rss_written_mb": written,
        "rss_searched_mb": searched, "rss_growth_mb": searched - base,
        "add_s": add_s, "episodes_per_s": total / add_s,
        "recall_random_ms": p50_p95_ms(random_ns), "recall_one_ms": p50_p95_ms(one_ns),
        "count_s": count_s, "namespaces_s": list_s,
    }


def run_embedded(namespaces: int, move_at: int, repeats: int, workdir: Path) -> dict[str, Any]:
    """`embedded_worker` in a fresh child process (its own RSS and its own database)."""
    directory = tempfile.mkdtemp(prefix=f"embedded_{namespaces}_{move_at}_", dir=workdir)
    command = [sys.executable, __file__, "--worker",
               json.dumps([namespaces, move_at, repeats, directory])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    shutil.rmtree(directory, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {namespaces}/{move_at} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  embedded: {namespaces:,} namespaces, move_at={move_at}: "
          f"+{result['rss_growth_mb']:.0f} MB", file=sys.stderr, flush=True)
    return result


def embedded_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        layout = "buckets (this version)" if r["move_at"] > 1 else "a collection each (format 1)"
        rows.append([
            layout, f"{r['namespaces']:,}", f"{r['episodes']:,}", str(r["collections"]),
            f"{r['rss_growth_mb']:.0f} MB", f"{r['rss_growth_mb'] * 1024 / r['namespaces']:.1f} kB",
            f"{r['episodes_per_s']:,.0f}/s",
            "{:.2f} / {:.2f}".format(*r["recall_random_ms"]),
            "{:.2f} / {:.2f}".format(*r["recall_one_ms"]),
            f"{r['count_s']:.2f} s", f"{r['namespaces_s']:.2f} s",
        ])
    return rows


# ---------------------------------------------------------------- (b) a chroma server


def chroma_binary() -> str:
    beside = Path(sys.executable).parent / "chroma"
    found = str(beside) if beside.exists() else shutil.which("chroma")
    if found is None:
        raise RuntimeError("the `chroma` command (installed with chromadb) was not found")
    return found


def start_server(path: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = (path / "server.log").open("ab")
    process = subprocess.Popen(
        [chroma_binary(), "run", "--path", str(path / "data"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            http_client("127.0.0.1", port).heartbeat()
            return process, port
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((path / "server.log").read_text()) from None
            time.sleep(0.2)


def stop_server(process: subprocess.Popen[bytes], path: Path) -> None:
    """Stop a server from `start_server` and remove its data."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(path, ignore_errors=True)


def server_plan(namespaces: int, total: int) -> dict[str, int]:
    """Episodes per namespace: every fifth holds `BIG`, the others share the rest."""
    big = [f"tenant-{i}" for i in range(0, namespaces, 5)]
    small = [f"tenant-{i}" for i in range(namespaces) if i % 5]
    rest = total - BIG * len(big)
    if rest < len(small):
        raise ValueError(f"{total:,} episodes are too few for {namespaces:,} namespaces")
    plan = {ns: BIG for ns in big}
    plan.update({ns: rest // len(small) + (i < rest % len(small)) for i, ns in enumerate(small)})
    return plan


def count_requests(counts: Counter[str]) -> None:
    """Count this process's Chroma record requests by method and collection kind."""
    for method in ("add", "upsert", "update", "delete", "get", "query", "count"):
        real = getattr(Collection, method)

        def counted(self: Collection, *args: Any, _real: Any = real, _method: str = method,
                    **kwargs: Any) -> Any:
            kind = "registry" if self.name.endswith(".registry") else "episodes"
            counts[f"{_method} {kind}"] += 1
            return _real(self, *args, **kwargs)

        setattr(Collection, method, counted)


def run_server(namespaces: int, total: int, repeats: int, workdir: Path) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(prefix="server_", dir=workdir))
    process, port = start_server(path)
    requests: Counter[str] = Counter()
    count_requests(requests)
    try:
        rng = np.random.default_rng(1)
        store = EpisodeStore("scale", embeddings=SyntheticVectors(),
                             client=http_client("127.0.0.1", port))
        base = rss_mb(process.pid)
        plan = server_plan(namespaces, total)
        written = dict.fromkeys(plan, 0)
        order = list(plan)
        per_call = SERVER_BATCH // SERVER_SPREAD
        calls, stored, windows = 0, 0, []
        start = window_start = time.perf_counter()
        while order:
            group, order = order[:SERVER_SPREAD], order[SERVER_SPREAD:]
            batch = []
            for ns in group:
                count = min(per_call, plan[ns] - written[ns])
                batch += episodes(ns, count, start=written[ns])
                written[ns] += count
                if written[ns] < plan[ns]:
                    order.append(ns)  # round-robin: back of the queue
            add(store, batch, rng)
            calls, stored = calls + 1, stored + len(batch)
            if stored // WINDOW > (stored - len(batch)) // WINDOW or not order:
                now = time.perf_counter()
                done = stored - WINDOW * len(windows)
                windows.append(done / (now - window_start))
                window_start = now
                print(f"  server: {stored:,} episodes, last {done:,} at {windows[-1]:,.0f}/s "
                      f"(server RSS {rss_mb(process.pid):,.0f} MB)", file=sys.stderr, flush=True)
        add_s = time.perf_counter() - start
        per_add = {k: round(v / calls, 2) for k, v in sorted(requests.items())}
        big = [ns for ns, n in plan.items() if n == BIG]
        small = [ns for ns, n in plan.items() if n != BIG]
        one_big = timed(lambda i: store.search_by_vector(
            unit_vectors(1, rng)[0], k=K, namespace=big[len(big) // 2]), repeats)
        random_big = search_timings(store, random.Random(0).sample(big, len(big)), repeats, rng)
        random_small = search_timings(store, random.Random(1).sample(small, len(small)),
                                      repeats, rng)
        start = time.perf_counter()
        counted = store.count(all_namespaces=True)
        count_s = time.perf_counter() - start
        assert counted == total, (counted, total)
        assert store.count(big[0]) == BIG and store.layout.place(big[0]).bucket is None
        listed = store.client.list_collections(limit=100_000)
        sizes = {c.name: c.count() for c in listed}
        buckets = [n for name, n in sizes.items() if name.startswith("scale.b.")]
        return {
            "namespaces": namespaces, "episodes": total, "add_calls": calls, "add_s": add_s,
            "episodes_per_s": total / add_s, "window": WINDOW, "episodes_per_s_by_window": windows,
            "requests_per_add": per_add, "moves": store.layout.moves, "collections": len(sizes),
            "empty_collections": sorted(name for name, n in sizes.items() if n == 0),
            "bucket_records": [len(buckets), int(np.median(buckets)), max(buckets)],
            "small_namespace_episodes": [min(plan[ns] for ns in small),
                                         max(plan[ns] for ns in small)],
            "recall_one_big_ms": p50_p95_ms(one_big),
            "recall_random_big_ms": p50_p95_ms(random_big),
            "recall_random_small_ms": p50_p95_ms(random_small),
            "count_s": count_s, "server_rss_base_mb": base, "server_rss_mb": rss_mb(process.pid),
        }
    finally:
        stop_server(process, path)


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small run")
    parser.add_argument("--update-md", action="store_true", help="write BENCHMARKS.md section")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--namespaces", type=int, help="(a): namespaces with buckets")
    parser.add_argument("--old-namespaces", type=int, help="(a): namespaces, a collection each")
    parser.add_argument("--server-namespaces", type=int, help="(b): namespaces")
    parser.add_argument("--server-episodes", type=int, help="(b): episodes in total")
    parser.add_argument("--no-server", action="store_true", help="skip (b)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(embedded_worker(*json.loads(args.worker))))
        return {}
    namespaces = args.namespaces or (1_000 if args.quick else 10_000)
    old = args.old_namespaces or (100 if args.quick else 500)
    server_namespaces = args.server_namespaces or (50 if args.quick else 1_000)
    server_episodes = args.server_episodes or (15_000 if args.quick else 300_000)
    repeats = 100 if args.quick else 300

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=CACHE_DIR))
    results: dict[str, Any] = {"machine": machine_facts()}
    try:
        results["embedded"] = [
            run_embedded(namespaces, 256, repeats, workdir),
            run_embedded(old, 256, repeats, workdir),
            run_embedded(old, 1, repeats, workdir),
        ]
        if not args.no_server:
            results["server"] = run_server(server_namespaces, server_episodes, repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    embedded = results["embedded"]
    big, same_new, same_old = embedded
    ratio = same_old["rss_growth_mb"] / max(same_new["rss_growth_mb"], 1e-9)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    parts = [
        f"Machine: {results['machine']}. Load average at the end (1/5/15 min): {load}; the "
        "machine is shared, so absolute times vary between runs. Synthetic 384-dim unit "
        f"vectors, precomputed (nothing is embedded); search is `search_by_vector`, k={K}, "
        f"{repeats} queries.",
        f"(a) Embedded Chroma on local disk, one process per row, {PER_NAMESPACE} episodes per "
        f"namespace written in `add` calls of {NAMESPACES_PER_ADD} namespaces. RSS growth: from "
        "the opened empty store to after writing and searching. Recall p50 / p95 in ms.",
        markdown_table(
            ["layout", "namespaces", "episodes", "collections", "RSS growth", "per namespace",
             "add", "recall, random namespaces", "recall, one namespace", "count() all",
             "namespaces()"],
            embedded_rows(embedded),
        ),
        f"At {old:,} namespaces a collection each takes {ratio:.0f}x the memory of the bucket "
        f"layout ({same_old['rss_growth_mb'] * 1024 / old:,.0f} kB against "
        f"{same_new['rss_growth_mb'] * 1024 / old:,.0f} kB per namespace); at "
        f"{namespaces:,} namespaces it would need about "
        f"{same_old['rss_growth_mb'] / old * namespaces / 1024:,.1f} GB against the "
        f"{big['rss_growth_mb'] / 1024:,.2f} GB measured with buckets. Targets (10,000 "
        "namespaces): RSS growth <= 1 GB, recall p95 <= 10 ms, count() <= 5 s.",
    ]
    if "server" in results:
        s = results["server"]
        low, high = s["small_namespace_episodes"]
        parts += [
            f"(b) A local `chroma run` server (its data on local disk), {s['namespaces']:,} "
            f"namespaces, {s['episodes']:,} episodes: every fifth namespace holds {BIG:,} "
            f"(moved to its own collection at 256), the others {low}-{high}. Written "
            f"round-robin in {s['add_calls']:,} `add` calls of up to {SERVER_BATCH} episodes "
            f"over {SERVER_SPREAD} namespaces. Recall p50 / p95 in ms.",
            markdown_table(
                ["add throughput", "moves", "collections (empty)",
                 "buckets: records median / max", f"recall, one {BIG:,}-episode namespace",
                 f"recall, random {BIG:,}-episode ones",
                 f"recall, random {low}-{high}-episode ones", "count() all", "server RSS"],
                [[f"{s['episodes_per_s']:,.0f} episodes/s ({s['add_s']:.0f} s)", str(s["moves"]),
                  f"{s['collections']} ({len(s['empty_collections'])})",
                  "{}: {:,} / {:,}".format(*s["bucket_records"]),
                  "{:.2f} / {:.2f}".format(*s["recall_one_big_ms"]),
                  "{:.2f} / {:.2f}".format(*s["recall_random_big_ms"]),
                  "{:.2f} / {:.2f}".format(*s["recall_random_small_ms"]),
                  f"{s['count_s']:.2f} s",
                  f"{s['server_rss_mb']:,.0f} MB (empty: {s['server_rss_base_mb']:,.0f} MB)"]],
            ),
            f"Add throughput per {s['window']:,} episodes, in order: "
            + ", ".join(f"{r:,.0f}" for r in s["episodes_per_s_by_window"])
            + " episodes/s. Chroma requests per `add` call (of 500 episodes over 20 namespaces), "
            "the whole run's promotions and counts included: "
            + ", ".join(f"{k} {v}" for k, v in s["requests_per_add"].items()) + ".",
        ]
    report = "\n\n".join(parts)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.update_md:
        update_section("Scale", report)
    return results


if __name__ == "__main__":
    main()
