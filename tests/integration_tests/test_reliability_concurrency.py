"""Guarantees: concurrent writers lose and duplicate nothing, scoring answers while training runs,
and several processes can write to one Chroma server.

The embedder here is a real but cheap one (hashed character n-grams, scikit-learn's
`HashingVectorizer`): what is tested is the store, the memory and the consolidation worker under
contention, and 2,000 MiniLM calls would take minutes on a 2-core machine. The single-process test
keeps its embedded Chroma in /dev/shm when there is one: SQLite commits cost ~30 ms on this
machine's disk and ~3 ms in memory, which is what the other guarantees need, not this one.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings
from langchain_core.embeddings import Embeddings
from sklearn.feature_extraction.text import HashingVectorizer

from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import EmbedderIdentity
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore

logger = logging.getLogger(__name__)

THREADS, PER_THREAD = 8, 64
PROCESSES, PER_PROCESS = 2, 100
TOPICS = ["refund for my order", "weather this weekend", "reset my password", "train times"]


class HashingEmbeddings(Embeddings):
    """Hashed character 3-5-grams, 384 dimensions, unit length: a real, fast text embedder."""

    identity = EmbedderIdentity("sklearn-hashing-char-3-5", 384)

    def __init__(self) -> None:
        self._vectorizer = HashingVectorizer(
            n_features=384, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self._vectorizer.transform(texts).toarray()]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def reward_of(text: str) -> float:
    return 0.9 if "refund" in text or "password" in text else 0.1


def make_memory(store: EpisodeStore, model_dir: Path | None = None) -> DistilledEpisodicMemory:
    model = ModelDistillation(
        seed=0, embeddings=store.embeddings, max_epochs=4, min_episodes=8,
        teacher=TeacherConfig(hidden_sizes=(32,)), student=StudentConfig(hidden_sizes=(16,)),
    )
    return DistilledEpisodicMemory(
        store=store, distillation=model,
        model_dir=None if model_dir is None else str(model_dir),
    )


@pytest.fixture
def fast_directory(tmp_path: Path) -> Iterator[str]:
    shm = Path("/dev/shm")
    directory = tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp_path)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_8_threads_x_64_episodes_during_background_consolidation(
    fast_directory: str, tmp_path: Path
) -> None:
    store = EpisodeStore("conc", embeddings=HashingEmbeddings(), persist_directory=fast_directory)
    memory = make_memory(store, tmp_path / "models")
    memory.add_episodes([
        {"query": f"seed question about the {topic} {i}", "response": "ok",
         "reward": reward_of(topic), "id": f"seed-{i}"}
        for i, topic in enumerate(TOPICS * 25)
    ])
    memory.consolidate()
    callback = ConsolidationCallback(memory, every_n_episodes=128, background=True)

    failures: list[BaseException] = []
    writers_done = threading.Event()
    observed = {"scores": 0, "during_training": 0}

    def write(thread: int) -> None:
        try:
            for i in range(PER_THREAD):
                query = f"thread {thread} asks about the {TOPICS[i % 4]}, question {i}"
                memory.add_episode(query, f"answer {thread}-{i}", reward=reward_of(query),
                                   metadata={"thread": thread, "i": i},
                                   episode_id=f"t{thread}-{i}")
        except BaseException as exc:  # reported below
            failures.append(exc)

    def score() -> None:
        try:
            while not writers_done.is_set():
                training = callback.status.training_in_progress
                estimate = memory.score("Can I get a refund for my order?")
                assert np.isfinite(estimate.expected)
                assert estimate.distribution.sum() == pytest.approx(1.0)
                observed["scores"] += 1
                observed["during_training"] += training and callback.status.training_in_progress
                time.sleep(0.02)  # an agent's pace, not a busy loop that starves the writers
        except BaseException as exc:  # reported below
            failures.append(exc)

    writers = [threading.Thread(target=write, args=(t,)) for t in range(THREADS)]
    scorer = threading.Thread(target=score)
    scorer.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    scorer.join()
    assert callback.flush(timeout=300)
    assert failures == []

    expected = {f"t{t}-{i}" for t in range(THREADS) for i in range(PER_THREAD)}
    episodes = store.list_episodes()
    ids = [e.id for e in episodes]
    written = [i for i in ids if not i.startswith("seed-")]
    logger.info("written %d, lost %d, duplicated %d; %d scores, %d during a consolidation; %s",
                len(written), len(expected - set(written)), len(written) - len(set(written)),
                observed["scores"], observed["during_training"], callback.status)
    assert len(written) == len(set(written)) == THREADS * PER_THREAD
    assert set(written) == expected
    assert store.count() == THREADS * PER_THREAD + 100
    for episode in episodes:  # every record holds its own thread's text, metadata and reward
        if episode.id.startswith("t"):
            thread, i = episode.metadata["thread"], episode.metadata["i"]
            assert episode.id == f"t{thread}-{i}"
            assert episode.query.startswith(f"thread {thread} asks") and episode.query.endswith(
                f"question {i}")
            assert episode.response == f"answer {thread}-{i}"
            assert episode.reward == reward_of(episode.query)
    training = store.training_arrays()
    assert len(training) == len(set(training.ids)) == THREADS * PER_THREAD + 100
    status = callback.status
    assert status.errors == 0 and status.consolidations_run >= 2
    assert observed["during_training"] > 0  # scoring answered while a consolidation ran


CHILD = """
import json, sys, time
from pathlib import Path

index, host, port, go = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
sys.path.insert(0, sys.argv[5])
import chromadb
from chromadb.config import Settings
from test_reliability_concurrency import PER_PROCESS, HashingEmbeddings, make_memory
from langchain_kd_memory.storage import EpisodeStore

client = chromadb.HttpClient(host=host, port=port, settings=Settings(anonymized_telemetry=False))
memory = make_memory(EpisodeStore("twoproc", embeddings=HashingEmbeddings(), client=client))
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
ids = []
for i in range(PER_PROCESS):
    ids.append(memory.add_episode(f"process {index} shared question {i}", "answer",
                                  reward=i % 5 / 4, namespace="shared",
                                  episode_id=f"p{index}-{i}"))
    ids.append(memory.add_episode(f"process {index} own question {i}", "answer",
                                  namespace=f"proc-{index}", episode_id=f"p{index}-{i}"))
print(json.dumps(ids), flush=True)
"""


@pytest.mark.slow
@pytest.mark.server
def test_two_processes_write_to_one_chroma_server(
    chroma_server: tuple[str, int], tmp_path: Path
) -> None:
    host, port = chroma_server
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(i), host, str(port), str(go),
             str(Path(__file__).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(PROCESSES)
    ]
    for child in children:  # both are connected before either writes
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr
    go.touch()
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    reported = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(len(ids) == 2 * PER_PROCESS for ids in reported)

    settings = Settings(anonymized_telemetry=False)
    client = chromadb.HttpClient(host=host, port=port, settings=settings)
    store = EpisodeStore("twoproc", embeddings=HashingEmbeddings(), client=client)
    assert store.namespaces() == ["proc-0", "proc-1", "shared"]
    shared = {e.id for e in store.list_episodes("shared")}
    assert shared == {f"p{p}-{i}" for p in range(PROCESSES) for i in range(PER_PROCESS)}
    for p in range(PROCESSES):
        own = store.list_episodes(f"proc-{p}")
        assert {e.id for e in own} == {f"p{p}-{i}" for i in range(PER_PROCESS)}
        assert all(e.query.startswith(f"process {p} own") for e in own)
    assert store.count(all_namespaces=True) == PROCESSES * PER_PROCESS * 2
    assert store.count_rated("shared") == PROCESSES * PER_PROCESS
