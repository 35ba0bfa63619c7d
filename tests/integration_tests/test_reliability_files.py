"""Guarantees: damaged checkpoints are refused and an earlier version stays usable; untrusted
files (pickles, manifests pointing outside their directory) are refused and never executed.

Checkpoints are real: two versions trained by `ModelDistillation` on stored-style arrays and
saved with `save_models`. The pickles are real too, with a payload that creates a marker file
when unpickled (the test first shows that it does).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import resource
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from chromadb.api import ClientAPI
from safetensors.torch import load_file, save

from langchain_kd_memory import checkpoint
from langchain_kd_memory.config import StudentConfig, TeacherConfig
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import Episode, TrainingArrays
from langchain_kd_memory.errors import CheckpointError
from langchain_kd_memory.memory import CHECKPOINT_NAME, DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore

DIM = 384
PROBE = np.random.default_rng(99).standard_normal((6, DIM)).astype(np.float32)
FLIPS_PER_FILE = 40


def model(embeddings: LocalEmbeddings) -> ModelDistillation:
    return ModelDistillation(
        seed=0, embeddings=embeddings, max_epochs=3,
        teacher=TeacherConfig(hidden_sizes=(32,)), student=StudentConfig(hidden_sizes=(16,)),
    )


def arrays(seed: int, n: int = 40) -> TrainingArrays:
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((n, DIM)).astype(np.float32)
    return TrainingArrays(queries, rng.standard_normal((n, DIM)), queries[:, 0] > 0)


def predictions(kd: ModelDistillation) -> bytes:
    """The student's distributions for fixed inputs, as bytes: equal means identical scores."""
    return np.stack([e.distribution for e in kd.predict_embeddings(PROBE)]).tobytes()


@pytest.fixture
def saved(tmp_path: Path, embeddings: LocalEmbeddings) -> tuple[Path, list[bytes]]:
    """A model directory holding versions 1 and 2, and the predictions of each."""
    prefix = tmp_path / "models" / CHECKPOINT_NAME
    scores = []
    for seed in (1, 2):
        kd = model(embeddings)
        kd.distill_from_memories(arrays(seed))
        kd.save_models(str(prefix))
        scores.append(predictions(kd))
    assert scores[0] != scores[1]
    return prefix, scores


def files_of(prefix: Path, version: int) -> dict[str, Path]:
    manifest = json.loads(checkpoint.manifest_path(prefix).read_text())
    assert manifest["version"] == version
    return {
        "manifest": checkpoint.manifest_path(prefix),
        **{role: prefix.parent / entry["file"] for role, entry in manifest["files"].items()},
    }


def fresh_load(prefix: Path, embeddings: LocalEmbeddings, version: int | None = None) -> bytes:
    kd = model(embeddings)
    assert kd.load_models(str(prefix), version=version)
    return predictions(kd)


# ------------------------------------------------------------------ damaged checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("target", ["manifest", "teacher", "student"])
def test_every_bit_flip_or_truncation_is_refused_and_the_previous_version_loads(
    saved: tuple[Path, list[bytes]], embeddings: LocalEmbeddings, target: str
) -> None:
    prefix, scores = saved
    path = files_of(prefix, 2)[target]
    original = path.read_bytes()
    rng = random.Random(target)
    damages = [("flip", rng.randrange(len(original) * 8)) for _ in range(FLIPS_PER_FILE)]
    damages += [("truncate", n) for n in (0, 1, len(original) // 2, len(original) - 1)]
    for kind, where in damages:
        if kind == "flip":
            data = bytearray(original)
            data[where // 8] ^= 1 << (where % 8)
            path.write_bytes(bytes(data))
        else:
            path.write_bytes(original[:where])
        kd = model(embeddings)
        with pytest.raises(CheckpointError, match="SHA-256|unreadable|not a langchain|format"):
            kd.load_models(str(prefix))
        assert not kd.is_trained, f"{kind} at {where} was loaded"
        # The previous version is still there, whole, by number.
        assert fresh_load(prefix, embeddings, version=1) == scores[0]
    path.write_bytes(original)
    assert fresh_load(prefix, embeddings) == scores[1]


@pytest.mark.slow
def test_a_damaged_latest_version_names_the_versions_still_on_disk(
    saved: tuple[Path, list[bytes]], embeddings: LocalEmbeddings, chroma_client: ClientAPI
) -> None:
    prefix, scores = saved
    student = files_of(prefix, 2)["student"]
    student.write_bytes(student.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"truncated.*versions on disk: \[1, 2\]"):
        model(embeddings).load_models(str(prefix))
    # A memory opened on the directory never scores with damaged weights: it answers with the
    # newest version that loads (see value_models.py).
    store = EpisodeStore("relfiles", embeddings=embeddings, client=chroma_client)
    opened = DistilledEpisodicMemory(store=store, distillation=model(embeddings),
                                     model_dir=str(prefix.parent))
    assert opened.model_version() == 1 and predictions(opened.distillation) == scores[0]
    # ...and works with the previous version, loaded by number.
    previous = model(embeddings)
    assert previous.load_models(str(prefix), version=1)
    memory = DistilledEpisodicMemory(store=store, distillation=previous,
                                     model_dir=str(prefix.parent))
    assert predictions(memory.distillation) == scores[0]
    # A model in use keeps scoring identically when a reload fails.
    with pytest.raises(CheckpointError):
        memory.distillation.load_models(str(prefix))
    assert predictions(memory.distillation) == scores[0]
    with pytest.raises(CheckpointError, match=r"no checkpoint version 7.*\[1, 2\]"):
        model(embeddings).load_models(str(prefix), version=7)


@pytest.mark.slow
def test_only_complete_versions_are_kept_and_listed(
    saved: tuple[Path, list[bytes]], embeddings: LocalEmbeddings
) -> None:
    prefix, _ = saved
    kd = model(embeddings)
    kd.distill_from_memories(arrays(3))
    for _ in range(3):
        kd.save_models(str(prefix))
    assert checkpoint.checkpoint_versions(prefix) == [3, 4, 5]  # keep=3
    names = {p.name for p in prefix.parent.iterdir()}
    assert not any(".v1." in n or ".v2." in n for n in names), names
    assert not any(n.endswith(".tmp") for n in names), names


# ------------------------------------------------------------------ untrusted files


class _Payload:
    """Unpickling this creates `marker`: what a malicious `.pth` file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def malicious_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Guards the tests below: unpickling the file really does run code."""
    malicious_pickle(tmp_path / "evil.pth", tmp_path / "proof")
    pickle.loads((tmp_path / "evil.pth").read_bytes())  # noqa: S301 - on purpose
    assert (tmp_path / "proof").exists()


def test_seed_style_pth_files_are_refused_unopened(
    tmp_path: Path, embeddings: LocalEmbeddings, chroma_client: ClientAPI
) -> None:
    marker = tmp_path / "pwned"
    models = tmp_path / "models"
    models.mkdir()
    for role in ("teacher", "student"):  # what the seed's save_models wrote
        malicious_pickle(models / f"{CHECKPOINT_NAME}_{role}.pth", marker)
    with pytest.raises(CheckpointError, match=r"refusing to load .*\.pth.*can run code"):
        model(embeddings).load_models(str(models / CHECKPOINT_NAME))
    store = EpisodeStore("relfiles2", embeddings=embeddings, client=chroma_client)
    with pytest.raises(CheckpointError, match="pickle"):
        DistilledEpisodicMemory(store=store, distillation=model(embeddings),
                                model_dir=str(models))
    assert not marker.exists()


def rewrite(prefix: Path, change: Any) -> None:
    """Apply `change(manifest, directory)` to the current manifest and re-sign it, as a forger
    would."""
    path = checkpoint.manifest_path(prefix)
    manifest = json.loads(path.read_text())
    change(manifest, prefix.parent)
    manifest[checkpoint.CHECKSUM_KEY] = checkpoint._manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=2))  # in the library's own form


def forge(prefix: Path, role: str, name: str) -> None:
    """Point the manifest's `role` entry at `name` with a correct checksum, as a forger would."""
    target = (prefix.parent / name) if not Path(name).is_absolute() else Path(name)
    sha256 = checkpoint.hashlib.sha256(target.read_bytes()).hexdigest()
    rewrite(prefix, lambda m, d: m["files"].update({role: {"file": name, "sha256": sha256}}))


@pytest.mark.slow
@pytest.mark.parametrize(
    "where",
    ["pickle beside the manifest", "pickle named .safetensors", "pickle outside the directory",
     "valid weights outside the directory", "absolute path outside", "symlink outside"],
)
def test_manifests_naming_pickles_or_files_outside_are_refused(
    saved: tuple[Path, list[bytes]], embeddings: LocalEmbeddings, where: str
) -> None:
    prefix, _ = saved
    directory = prefix.parent
    outside = directory.parent / "elsewhere"
    outside.mkdir()
    marker = directory.parent / "pwned"
    student = files_of(prefix, 2)["student"]
    if where == "pickle beside the manifest":
        malicious_pickle(directory / "evil.pth", marker)
        forge(prefix, "student", "evil.pth")
    elif where == "pickle named .safetensors":
        malicious_pickle(directory / "evil.safetensors", marker)
        forge(prefix, "student", "evil.safetensors")
    elif where == "pickle outside the directory":
        malicious_pickle(outside / "evil.pth", marker)
        forge(prefix, "student", "../elsewhere/evil.pth")
    elif where == "valid weights outside the directory":
        (outside / "w.safetensors").write_bytes(student.read_bytes())
        forge(prefix, "student", "../elsewhere/w.safetensors")
    elif where == "absolute path outside":
        (outside / "w.safetensors").write_bytes(student.read_bytes())
        forge(prefix, "student", str(outside / "w.safetensors"))
    else:
        (outside / "w.safetensors").write_bytes(student.read_bytes())
        (directory / "link.safetensors").symlink_to(outside / "w.safetensors")
        forge(prefix, "student", "link.safetensors")
    kd = model(embeddings)
    with pytest.raises(CheckpointError, match="refusing|not valid safetensors"):
        kd.load_models(str(prefix))
    assert not kd.is_trained and not marker.exists()


# ------------------------------------------------------------------ forged manifests


def float64_student(manifest: dict[str, Any], directory: Path) -> None:
    """Rewrite the student's weights as float64 (same names and shapes), with a valid SHA-256."""
    path = directory / manifest["files"]["student"]["file"]
    tensors = load_file(path)
    data = save({name: tensor.double() for name, tensor in tensors.items()})
    path.write_bytes(data)
    manifest["files"]["student"]["sha256"] = checkpoint.hashlib.sha256(data).hexdigest()


def extra_tensor(manifest: dict[str, Any], directory: Path) -> None:
    path = directory / manifest["files"]["teacher"]["file"]
    data = save({**load_file(path), "extra": torch.zeros(3)})
    path.write_bytes(data)
    manifest["files"]["teacher"]["sha256"] = checkpoint.hashlib.sha256(data).hexdigest()


FORGERIES: dict[str, Any] = {
    "num_bins 32 in the binning": lambda m, d: m["binning"].update(num_bins=32),
    "num_bins 32 in the config": lambda m, d: m["config"].update(num_bins=32),
    "num_bins 32 in dims": lambda m, d: m["dims"].update(num_bins=32),
    "num_bins 32 everywhere": lambda m, d: (
        m["binning"].update(num_bins=32), m["config"].update(num_bins=32),
        m["dims"].update(num_bins=32),
    ),
    "embedding_dim 400000": lambda m, d: (  # the teacher's first layer would take 3.2 GB
        m["dims"].update(embedding_dim=400_000), m["config"]["teacher"].update(hidden_sizes=[1024])
    ),
    "embedding_dim as text": lambda m, d: m["dims"].update(embedding_dim="384"),
    "non-numeric embedder dimension": lambda m, d: m["embedder"].update(dimension="384x"),
    "boolean privileged as text": lambda m, d: m["config"].update(privileged="no"),
    "privileged flipped": lambda m, d: m["config"].update(privileged=False),
    "other teacher shape": lambda m, d: m["config"]["teacher"].update(hidden_sizes=[64]),
    "huge teacher shape": lambda m, d: m["config"]["teacher"].update(hidden_sizes=[10**9]),
    "config not a dict": lambda m, d: m.update(config=[1, 2]),
    "dims not a dict": lambda m, d: m.update(dims="384"),
    "float64 weights": float64_student,
    "an extra tensor": extra_tensor,
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.mark.slow
@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_manifests_are_refused_before_anything_is_built(
    saved: tuple[Path, list[bytes]], embeddings: LocalEmbeddings, forgery: str
) -> None:
    prefix, _ = saved
    rewrite(prefix, FORGERIES[forgery])
    kd = model(embeddings)
    peak = peak_rss_mib()
    with pytest.raises(CheckpointError, match="checkpoint|weights"):
        kd.load_models(str(prefix))
    # Nothing was built from the forged numbers: 400,000 dims would be a 3.6 GB teacher.
    assert peak_rss_mib() - peak < 500
    assert not kd.is_trained


def load_in_thread(kd: ModelDistillation, prefix: Path, fifo: Path) -> BaseException | bool:
    """`kd.load_models(prefix)`; if it blocks on `fifo`, unblock it and fail the test."""
    outcome: list[BaseException | bool] = []

    def run() -> None:
        try:
            outcome.append(kd.load_models(str(prefix)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the blocked reader
        thread.join(60)
        pytest.fail(f"load_models blocked reading the FIFO {fifo.name}")
    return outcome[0]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["manifest", "teacher", "student"])
def test_a_fifo_in_place_of_a_checkpoint_file_is_refused_without_blocking(
    saved: tuple[Path, list[bytes]], embeddings: LocalEmbeddings, target: str
) -> None:
    prefix, _ = saved
    path = files_of(prefix, 2)[target]
    path.unlink()
    os.mkfifo(path)
    kd = model(embeddings)
    outcome = load_in_thread(kd, prefix, path)
    assert isinstance(outcome, CheckpointError), outcome
    assert "not a regular file" in str(outcome)
    assert not kd.is_trained


# ------------------------------------------------------------------ settings of a loaded model


@pytest.mark.slow
def test_a_memory_keeps_its_models_training_settings_over_a_checkpoint(
    saved: tuple[Path, list[bytes]], embeddings: LocalEmbeddings, chroma_client: ClientAPI
) -> None:
    prefix, scores = saved
    store = EpisodeStore("relfiles-settings", embeddings=embeddings, client=chroma_client)
    kd = ModelDistillation(seed=0, embeddings=embeddings, temperature=2.0, alpha=0.5, beta=0.5,
                           max_epochs=2)
    memory = DistilledEpisodicMemory(store=store, distillation=kd, model_dir=str(prefix.parent))
    assert memory.is_trained and predictions(kd) == scores[1]
    assert (kd.config.temperature, kd.config.alpha, kd.config.max_epochs) == (2.0, 0.5, 2)
    assert kd.config.teacher.hidden_sizes == (32,)  # the checkpoint's network
    # ...and the next consolidation trains, and saves, with the memory's settings.
    data = arrays(3)
    store.add([Episode(f"q{i}", reward=float(r)) for i, r in enumerate(data.rewards)],
              query_embeddings=data.query_embeddings,
              response_embeddings=data.response_embeddings)
    report = memory.consolidate()
    manifest = json.loads(checkpoint.manifest_path(prefix).read_text())
    assert report.checkpoint_version == 3 and manifest["version"] == 3
    assert (manifest["config"]["temperature"], manifest["config"]["max_epochs"]) == (2.0, 2)
    assert report.metrics["teacher"]["epochs_run"] <= 2
