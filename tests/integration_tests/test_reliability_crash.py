"""Guarantee: a process killed with SIGKILL in the middle of consolidation leaves the previous
checkpoint current, loadable and scoring identically, and never a half-written one visible.

The parent trains version 1 on a real embedded Chroma store and notes its scores. Each child is a
real Python process that opens a copy of that store and model directory and runs
`memory.consolidate()`; it is stopped at a chosen point (the child wraps one library function so
that reaching the point writes a marker file and sleeps) and killed there with SIGKILL:

* training: the teacher is trained, the student is training;
* weights: the first new weight file is written to its temporary name, before fsync and rename;
* manifest: both new weight files are in place, no manifest of the new version yet;
* current: the new version's manifest is written, the current manifest not yet replaced.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from langchain_kd_memory import checkpoint
from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import CheckpointError
from langchain_kd_memory.memory import CHECKPOINT_NAME, DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.value_models import checkpoint_prefix

DIM = 384
POINTS = ("training", "weights", "manifest", "current")
PROBE = np.random.default_rng(7).standard_normal((5, DIM)).astype(np.float32)
QUERY = "How do I get a refund for my order?"

CHILD = """
import os, sys, time
from pathlib import Path

point, root, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from test_reliability_crash import open_memory
from langchain_kd_memory import checkpoint, training


def stop_here():
    (root / "reaching").write_text(point)  # renamed: the parent never sees it half-written
    (root / "reaching").rename(root / "reached")
    time.sleep(600)


if point == "training":
    real_fit, calls = training._fit, []

    def fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second network to train is the student
            stop_here()
        return real_fit(*args, **kwargs)

    training._fit = fit
elif point == "weights":
    checkpoint.os.fsync = lambda fd: stop_here()
else:
    real_write = checkpoint._atomic_write
    last = "_config.json"

    def write(path, data):
        if path.name.endswith(".json") and (point == "manifest" or path.name.endswith(last)):
            stop_here()
        real_write(path, data)

    checkpoint._atomic_write = write

memory = open_memory(root, seed=seed)
memory.consolidate()
(root / "finished").write_text("consolidation completed")
"""


def open_memory(root: Path, seed: int = 0, embeddings: LocalEmbeddings | None = None,
                **kwargs: Any) -> DistilledEpisodicMemory:
    """The memory of a directory (Chroma in root/chroma, checkpoints in root/models)."""
    embeddings = embeddings or LocalEmbeddings()
    model = ModelDistillation(
        seed=seed, embeddings=embeddings, max_epochs=5,
        teacher=TeacherConfig(hidden_sizes=(64,)), student=StudentConfig(hidden_sizes=(16,)),
    )
    store = EpisodeStore("crash", embeddings=embeddings, persist_directory=str(root / "chroma"))
    return DistilledEpisodicMemory(store=store, distillation=model, model_dir=str(root / "models"),
                                   **kwargs)


def scores(memory: DistilledEpisodicMemory) -> tuple[bytes, float]:
    """Student distributions for fixed vectors (bytes) and the expected reward of a real query."""
    distributions = [e.distribution for e in memory.distillation.predict_embeddings(PROBE)]
    return np.stack(distributions).tobytes(), memory.score(QUERY).expected


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, embeddings: LocalEmbeddings
            ) -> tuple[Path, tuple[bytes, float]]:
    """A directory with 120 rated episodes and checkpoint version 1, and its scores."""
    root = tmp_path_factory.mktemp("crash") / "source"
    memory = open_memory(root, embeddings=embeddings)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((120, DIM)).astype(np.float32)
    responses = rng.standard_normal((120, DIM)).astype(np.float32)
    episodes = [Episode(f"question {i}", f"answer {i}", reward=float(queries[i, 0] > 0))
                for i in range(120)]
    memory.store.add(episodes, query_embeddings=queries, response_embeddings=responses)
    assert memory.consolidate().checkpoint_version == 1
    return root, scores(memory)


@pytest.mark.slow
def test_sigkill_during_consolidation_keeps_the_previous_checkpoint(
    trained: tuple[Path, tuple[bytes, float]], embeddings: LocalEmbeddings, tmp_path: Path
) -> None:
    source, before = trained
    manifest = checkpoint.manifest_path(source / "models" / CHECKPOINT_NAME).read_bytes()
    children = {}
    for seed, point in enumerate(POINTS, start=1):
        root = tmp_path / point
        shutil.copytree(source, root)
        children[point] = subprocess.Popen(
            [sys.executable, "-c", CHILD, point, str(root), str(seed), str(Path(__file__).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
    try:
        for point, child in children.items():
            marker = tmp_path / point / "reached"
            deadline = time.monotonic() + 300  # four children train at once on a loaded CI
            while not marker.exists():
                if child.poll() is not None or time.monotonic() > deadline:
                    child.kill()  # else reading its output waits for its sleep to end
                    output = child.stdout.read().decode() if child.stdout else ""
                    pytest.fail(f"child {point} never reached its point:\n{output}")
                time.sleep(0.05)
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait() == -signal.SIGKILL
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()

    for point in POINTS:
        root = tmp_path / point
        prefix = root / "models" / CHECKPOINT_NAME
        assert (root / "reached").read_text() == point
        assert not (root / "finished").exists()
        # The current manifest is the one version 1 wrote, byte for byte.
        assert checkpoint.manifest_path(prefix).read_bytes() == manifest, point
        assert checkpoint.checkpoint_versions(prefix) == ([1, 2] if point == "current" else [1])
        # A new process-like memory on the directory loads version 1 and scores identically.
        memory = open_memory(root, embeddings=embeddings)
        assert scores(memory) == before, point
        # And the next consolidation (with new episodes) works, past the abandoned version.
        new = np.random.default_rng(1).standard_normal((8, DIM)).astype(np.float32)
        memory.store.add([Episode(f"new {i}", reward=1.0) for i in range(8)],
                         query_embeddings=new, response_embeddings=new)
        report = memory.consolidate()
        assert report.checkpoint_version == (2 if point in ("training", "weights") else 3)
        reloaded = open_memory(root, embeddings=embeddings)
        assert scores(reloaded) == scores(memory) != before
        leftovers = sorted(p.name for p in prefix.parent.iterdir() if p.name.endswith(".tmp"))
        assert leftovers == [], f"{point}: stale temporary files {leftovers}"


def damage(path: Path) -> None:
    """Flip bytes in the middle of a file, as a failing disk would."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_damaged_checkpoint_has_one_behaviour_and_never_the_shared_models(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    memory = open_memory(tmp_path, embeddings=embeddings)
    rng = np.random.default_rng(3)

    def add(namespace: str, n: int) -> None:
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        memory.store.add([Episode(f"{namespace} question {i}", "answer", namespace=namespace,
                                  reward=float(vectors[i, 0] > 0)) for i in range(n)],
                         query_embeddings=vectors, response_embeddings=vectors)

    add("user", 60)
    memory.consolidate()  # the shared model
    assert memory.consolidate("user").checkpoint_version == 1
    version_1 = memory.score(QUERY, namespace="user").expected
    add("user", 60)
    assert memory.consolidate("user").checkpoint_version == 2
    prefix = checkpoint_prefix(str(tmp_path / "models"), "user")

    # The current version is damaged: every look answers with version 1, never the shared model.
    damage(Path(f"{prefix}_student.v2.safetensors"))
    fresh = open_memory(tmp_path, embeddings=embeddings)
    for _ in range(3):
        assert fresh.model_version("user") == 1
        assert fresh.score(QUERY, namespace="user").expected == pytest.approx(version_1, abs=1e-6)

    # No version loads: score, rank_responses and recall all refuse, every time.
    damage(Path(f"{prefix}_student.v1.safetensors"))
    broken = open_memory(tmp_path, embeddings=embeddings)
    for _ in range(3):
        with pytest.raises(CheckpointError):
            broken.score(QUERY, namespace="user")
        with pytest.raises(CheckpointError):
            broken.rank_responses(QUERY, ["Refund issued.", "No idea."], namespace="user")
        with pytest.raises(CheckpointError):
            broken.invoke(QUERY, namespace="user")
    assert broken.score(QUERY).expected == memory.score(QUERY).expected  # the shared model
