"""A value model per namespace: training in the worker, memory and first-score latency.

    python benchmarks/bench_models.py              # 50 namespaces x 500 episodes on a chroma server
    python benchmarks/bench_models.py --quick      # 5 namespaces x 200 episodes

On a local ``chroma run`` server, N namespaces are filled with precomputed unit vectors (recorded
as MiniLM's: the agent embeds its queries with the real MiniLM) whose reward is 1 where the
query's first coordinate is positive. Then:

* a `ConsolidationWorker` trains every namespace once (seconds per namespace, from its reports);
* a fresh agent process (`DistilledEpisodicMemory` on the same server and model directory)
  times its first `score()` (MiniLM and the namespace's model load), a first `score()` in each
  other namespace (one model load each), warm `score()` calls, and its RSS with 1 and with N
  namespace models loaded;
* the worker trains one namespace again, and the agent times its first `score()` once the new
  version is on disk (one manifest check and a reload), checking that the version changed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import start_server, stop_server  # noqa: E402
from common import (  # noqa: E402
    machine_facts,
    markdown_table,
    p50_p95_ms,
    rss_mb,
    unit_vectors,
    update_section,
)

from langchain_kd_memory import DistilledEpisodicMemory, EpisodeStore  # noqa: E402
from langchain_kd_memory.episodes import Episode  # noqa: E402
from langchain_kd_memory.storage import http_client  # noqa: E402
from langchain_kd_memory.worker import ConsolidationWorker  # noqa: E402

REFRESH_S = 1.0
AGENT = """
import json, sys, time
start = time.perf_counter()
host, port, model_dir, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
refresh_s = float(sys.argv[5])
sys.path.insert(0, sys.argv[6])
from common import rss_mb
from langchain_kd_memory import DistilledEpisodicMemory, EpisodeStore
from langchain_kd_memory.storage import http_client

def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t

out = {"rss_start_mb": rss_mb()}
memory = DistilledEpisodicMemory(store=EpisodeStore("models", client=http_client(host, port)),
                                 model_dir=model_dir, model_refresh_s=refresh_s)
out["open_s"] = time.perf_counter() - start
out["first_score_s"] = timed(lambda: memory.score("how do I reset it?", namespace=names[0]))
out["rss_one_model_mb"] = rss_mb()
firsts = [timed(lambda: memory.score("how do I reset it?", namespace=ns)) for ns in names[1:]]
out["first_score_other_s"] = firsts
out["rss_all_models_mb"] = rss_mb()
out["warm_score_s"] = [timed(lambda: memory.score(f"question {i}", namespace=names[i % len(names)]))
                       for i in range(200)]
out["version_before"] = memory.model_version(names[0])
print(json.dumps(out), flush=True)
sys.stdin.readline()  # the worker saved a new version of names[0]
time.sleep(refresh_s + 0.2)
out = {"after_new_version_s": timed(lambda: memory.score("how do I reset it?", namespace=names[0])),
       "version_after": memory.model_version(names[0]),
       "score_after_s": timed(lambda: memory.score("how do I reset it?", namespace=names[0]))}
print(json.dumps(out), flush=True)
"""


def fill(store: EpisodeStore, names: list[str], per_namespace: int) -> float:
    """Write the episodes; return seconds taken."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for ns in names:
        vectors = unit_vectors(per_namespace, rng)
        batch = [
            Episode(f"question {ns}/{j}", f"answer {j}", reward=float(vectors[j, 0] > 0),
                    namespace=ns, id=f"e{j}")
            for j in range(per_namespace)
        ]
        store.add(batch, query_embeddings=vectors, response_embeddings=vectors)
    return time.perf_counter() - start


def run(namespaces: int, per_namespace: int, workdir: Path) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(prefix="models_", dir=workdir))
    model_dir = str(path / "models")
    process, port = start_server(path)
    try:
        store = EpisodeStore("models", client=http_client("127.0.0.1", port))
        names = [f"user-{i}" for i in range(namespaces)]
        fill_s = fill(store, names, per_namespace)
        memory = DistilledEpisodicMemory(store=store, model_dir=model_dir)
        worker = ConsolidationWorker(memory, every_n_ratings=per_namespace // 4)
        reports = worker.run_once()
        trained = sorted(r.namespace for r in reports if r.namespace is not None)
        assert trained == sorted(names), trained
        durations = [r.duration_s for r in reports]
        print(f"  worker trained {len(reports)} namespaces", file=sys.stderr, flush=True)

        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, "127.0.0.1", str(port), model_dir, json.dumps(names),
             str(REFRESH_S), str(Path(__file__).resolve().parent)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert agent.stdin is not None and agent.stdout is not None
        line = agent.stdout.readline()
        if not line:
            raise RuntimeError(f"the agent process failed:\n{agent.communicate()[1][-4000:]}")
        result: dict[str, Any] = json.loads(line)
        store.add([Episode("one more", "rated", reward=1.0, namespace=names[0], id="more")])
        again = memory.consolidate(namespace=names[0])
        agent.stdin.write("go\n")
        agent.stdin.flush()
        out, err = agent.communicate(timeout=300)
        if agent.returncode != 0:
            raise RuntimeError(f"the agent process failed:\n{err[-4000:]}")
        result.update(json.loads(out.strip().splitlines()[-1]))
        assert result["version_after"] == again.checkpoint_version != result["version_before"]
        disk = sum(f.stat().st_size for f in (path / "data").rglob("*") if f.is_file())
        result.update({
            "namespaces": namespaces, "per_namespace": per_namespace, "fill_s": fill_s,
            "train_s": durations, "episodes_used": [r.episodes_used for r in reports],
            "server_disk_bytes": disk, "server_rss_mb": rss_mb(process.pid),
        })
        return result
    finally:
        stop_server(process, path)


def report(r: dict[str, Any]) -> str:
    n = r["namespaces"]
    train = np.asarray(r["train_s"])
    firsts = p50_p95_ms(r["first_score_other_s"])
    warm = p50_p95_ms(r["warm_score_s"])
    per_model = (r["rss_all_models_mb"] - r["rss_one_model_mb"]) / max(n - 1, 1)
    episodes = n * r["per_namespace"]
    rows = [
        ("server: disk per episode after writing (vectors, documents, metadata, indexes)",
         f"{r['server_disk_bytes'] / episodes / 1024:.1f} kB ({r['server_disk_bytes'] / 2**20:,.0f}"
         f" MB for {episodes:,}); server RSS {r['server_rss_mb']:,.0f} MB at the end"),
        ("worker: consolidation per namespace (median / max)",
         f"{np.median(train):.1f} s / {train.max():.1f} s ({r['per_namespace']} episodes each, "
         f"{train.sum():.0f} s for {n})"),
        ("agent: open the memory in a fresh process (imports included)", f"{r['open_s']:.1f} s"),
        ("agent: first `score()` in a fresh process (MiniLM and one model load)",
         f"{r['first_score_s'] * 1e3:,.0f} ms"),
        ("agent: first `score()` in another namespace (its model loads), p50 / p95",
         f"{firsts[0]:.0f} / {firsts[1]:.0f} ms"),
        ("agent: `score()` with the models loaded, p50 / p95", f"{warm[0]:.1f} / {warm[1]:.1f} ms"),
        ("agent: first `score()` after the worker saved a new version (reload)",
         f"{r['after_new_version_s'] * 1e3:,.0f} ms (version {r['version_before']} -> "
         f"{r['version_after']}; next call {r['score_after_s'] * 1e3:.1f} ms)"),
        (f"agent: RSS with 1 / all {n} namespace models loaded",
         f"{r['rss_one_model_mb']:,.0f} / {r['rss_all_models_mb']:,.0f} MB "
         f"({per_model:.1f} MB per model)"),
    ]
    return "\n\n".join([
        f"Machine: {machine_facts()}",
        f"A local `chroma run` server, {n} namespaces x {r['per_namespace']} episodes "
        f"(precomputed vectors recorded as MiniLM's; reward 1 where the first coordinate is "
        f"positive), written in {r['fill_s']:.0f} s; a `ConsolidationWorker` (in the "
        f"benchmark's process) trains every namespace; a separate agent process scores "
        f"(`model_refresh_s={REFRESH_S}`).",
        markdown_table(["what", "measured"], rows),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 namespaces x 200 episodes")
    parser.add_argument("--namespaces", type=int)
    parser.add_argument("--episodes", type=int, help="per namespace")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    namespaces = args.namespaces or (5 if args.quick else 50)
    per_namespace = args.episodes or (200 if args.quick else 500)
    with tempfile.TemporaryDirectory(prefix="bench_models_") as workdir:
        result = run(namespaces, per_namespace, Path(workdir))
    text = report(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not (args.quick or args.no_write):
        update_section("Value models per namespace", text)
    return result


if __name__ == "__main__":
    main()
