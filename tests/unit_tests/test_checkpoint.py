import json
import os
from pathlib import Path

import pytest
import torch

from langchain_kd_memory import checkpoint
from langchain_kd_memory.checkpoint import load_checkpoint, manifest_path, save_checkpoint
from langchain_kd_memory.embeddings import EmbedderIdentity
from langchain_kd_memory.errors import CheckpointError, EmbedderMismatchError

MINILM = EmbedderIdentity("sentence-transformers/all-MiniLM-L6-v2", 384)


def weights(value: float) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "teacher": {"w": torch.full((3, 4), value), "b": torch.arange(4.0)},
        "student": {"w": torch.full((2, 2), -value)},
    }


def save(prefix: Path, value: float, **kwargs) -> checkpoint.SavedCheckpoint:
    return save_checkpoint(
        prefix, weights(value), embedder=MINILM, config={"num_bins": 4},
        binning={"low": 0.0, "high": 1.0}, dims={"embedding_dim": 384, "num_bins": 4},
        metrics={"loss": 0.5}, **kwargs,
    )


def teacher_value(prefix: Path) -> float:
    loaded = load_checkpoint(prefix, embedder=MINILM)
    assert loaded is not None
    return float(loaded.weights["teacher"]["w"][0, 0])


def edit_manifest(prefix: Path, change) -> None:
    path = manifest_path(prefix)
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest[checkpoint.CHECKSUM_KEY] = checkpoint._manifest_digest(manifest)  # a forger can
    path.write_text(json.dumps(manifest, indent=2))  # as the library writes it


def test_round_trip_and_manifest_contents(tmp_path):
    prefix = tmp_path / "models" / "kd"  # the directory does not exist yet
    paths = save(prefix, 1.5)
    assert set(paths) == {"teacher", "student", "config", "version"} and paths["version"] == 1
    assert paths["teacher"].endswith("kd_teacher.v1.safetensors")
    assert paths["config"].endswith("kd_config.json")
    loaded = load_checkpoint(prefix, embedder=MINILM)
    assert loaded is not None and loaded.version == 1
    for role, tensors in weights(1.5).items():
        assert loaded.weights[role].keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert torch.equal(loaded.weights[role][name], tensor)
    manifest = loaded.manifest
    assert manifest["format_version"] == checkpoint.FORMAT_VERSION
    assert manifest["embedder"] == {"name": MINILM.name, "dimension": 384}
    assert manifest["metrics"] == {"loss": 0.5} and manifest["created_at"]
    for entry in manifest["files"].values():
        assert "/" not in entry["file"] and len(entry["sha256"]) == 64


def test_a_change_of_text_that_keeps_every_value_is_refused_too(tmp_path):
    """A flipped bit in a float's 17th digit can parse to the same float: the SHA-256 of the
    content cannot see it, the text check does."""
    save_checkpoint(
        tmp_path / "kd", weights(1.0), embedder=MINILM, config={}, binning={}, dims={},
        metrics={"loss": 3.7335752599379597},
    )
    path = manifest_path(tmp_path / "kd")
    text = path.read_text()
    flipped = text.replace("3.7335752599379597", "3.7335752599379596")  # bit 0 of the last digit
    assert flipped != text and json.loads(flipped) == json.loads(text)
    path.write_text(flipped)
    with pytest.raises(CheckpointError, match="not the text that was written"):
        load_checkpoint(tmp_path / "kd", embedder=MINILM)
    path.write_text(text.replace('"loss"', '"loss" '))  # whitespace alone
    with pytest.raises(CheckpointError, match="not the text that was written"):
        load_checkpoint(tmp_path / "kd", embedder=MINILM)


def test_no_manifest_means_no_checkpoint(tmp_path):
    assert load_checkpoint(tmp_path / "nothing") is None


def test_versions_increase_and_old_ones_are_pruned(tmp_path):
    prefix = tmp_path / "kd"
    saved = [save(prefix, float(value), keep=2)["version"] for value in range(1, 6)]
    assert saved == [1, 2, 3, 4, 5]
    assert teacher_value(prefix) == 5.0
    names = sorted(p.name for p in tmp_path.glob("kd_*.safetensors"))
    assert names == [
        "kd_student.v4.safetensors", "kd_student.v5.safetensors",
        "kd_teacher.v4.safetensors", "kd_teacher.v5.safetensors",
    ]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_weights_are_refused(tmp_path, damage):
    prefix = tmp_path / "kd"
    path = Path(save(prefix, 1.0)["student"])
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match="student weights"):
        load_checkpoint(prefix)


@pytest.mark.parametrize(
    "name",
    ["../kd_teacher.v1.safetensors", "/etc/passwd.safetensors", "sub/kd.safetensors",
     "kd_teacher.v1.pth", ".hidden.safetensors", 7],
)
def test_manifest_may_only_name_local_safetensors(tmp_path, name):
    prefix = tmp_path / "dir" / "kd"
    save(prefix, 1.0)
    edit_manifest(prefix, lambda m: m["files"]["teacher"].update(file=name))
    with pytest.raises(CheckpointError, match="refusing|invalid"):
        load_checkpoint(prefix)


def test_symlink_out_of_the_directory_is_refused(tmp_path):
    prefix = tmp_path / "dir" / "kd"
    paths = save(prefix, 1.0)
    outside = tmp_path / "outside.safetensors"
    Path(paths["teacher"]).rename(outside)
    os.symlink(outside, paths["teacher"])
    with pytest.raises(CheckpointError, match="outside"):
        load_checkpoint(prefix)


@pytest.mark.parametrize(
    "identity",
    [EmbedderIdentity("openai:text-embedding-3-small", 384), EmbedderIdentity(MINILM.name, 768)],
)
def test_another_embedder_is_refused_naming_both(tmp_path, identity):
    save(tmp_path / "kd", 1.0)
    with pytest.raises(EmbedderMismatchError) as info:
        load_checkpoint(tmp_path / "kd", embedder=identity)
    assert str(MINILM) in str(info.value) and str(identity) in str(info.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(format="something-else"),
        lambda m: m.update(format_version=99),
        lambda m: m.pop("binning"),
        lambda m: m["files"].pop("student"),
    ],
)
def test_invalid_manifests_are_refused(tmp_path, change):
    save(tmp_path / "kd", 1.0)
    edit_manifest(tmp_path / "kd", change)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "kd")


def test_unreadable_manifest_is_refused(tmp_path):
    save(tmp_path / "kd", 1.0)
    manifest_path(tmp_path / "kd").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "kd")


@pytest.mark.parametrize("fail_on", ["kd_student", "kd_config"])
def test_crash_before_the_manifest_swap_keeps_the_previous_version(tmp_path, monkeypatch, fail_on):
    prefix = tmp_path / "kd"
    save(prefix, 1.0)
    real_write = checkpoint._atomic_write

    def crashing_write(path: Path, data: bytes) -> None:
        if path.name.startswith(fail_on):
            raise OSError("simulated crash")
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "_atomic_write", crashing_write)
    with pytest.raises(CheckpointError, match="simulated crash"):
        save(prefix, 2.0)
    monkeypatch.undo()
    # The new version's files that did get written are damaged too: nothing refers to them.
    for leftover in tmp_path.glob("kd_*.v2.safetensors"):
        leftover.write_bytes(b"garbage")
    assert teacher_value(prefix) == 1.0
    # The next save does not reuse the abandoned version number, and loads.
    assert save(prefix, 3.0)["teacher"].endswith("kd_teacher.v3.safetensors")
    assert teacher_value(prefix) == 3.0
    assert not list(tmp_path.glob(".*.tmp"))


def test_metadata_that_is_not_json_fails_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(
            tmp_path / "kd", weights(1.0), embedder=MINILM, config={}, binning={}, dims={},
            metrics={"loss": float("nan")},
        )
    assert list(tmp_path.iterdir()) == []


def test_both_roles_are_required(tmp_path):
    with pytest.raises(CheckpointError, match="roles"):
        save_checkpoint(
            tmp_path / "kd", {"teacher": {}}, embedder=MINILM, config={}, binning={}, dims={}
        )


def shapes(teacher_w=(3, 4)) -> dict[str, dict[str, tuple[int, ...]]]:
    return {"teacher": {"w": teacher_w, "b": (4,)}, "student": {"w": (2, 2)}}


def test_expected_tensors_are_checked_against_the_header(tmp_path):
    save(tmp_path / "kd", 1.0)
    seen = []
    loaded = load_checkpoint(tmp_path / "kd", expect=lambda m: seen.append(m) or shapes())
    assert loaded is not None and seen == [loaded.manifest]
    with pytest.raises(CheckpointError, match=r"teacher weights .*\(w is F32 \[3, 4\], expected "
                                              r"F32 \[3, 5\]\)"):
        load_checkpoint(tmp_path / "kd", expect=lambda m: shapes(teacher_w=(3, 5)))


def test_weights_far_larger_than_the_expected_tensors_are_refused_unread(tmp_path):
    big = {"teacher": {"w": torch.zeros(1000, 1000), "b": torch.zeros(4)},
           "student": {"w": torch.zeros(2, 2)}}
    save_checkpoint(tmp_path / "kd", big, embedder=MINILM, config={}, binning={}, dims={})
    with pytest.raises(CheckpointError, match=r"teacher weights .* has 4000\d+ bytes, more than"):
        load_checkpoint(tmp_path / "kd", expect=lambda m: shapes(teacher_w=(1, 1)))


def test_an_expectation_refusing_the_manifest_stops_the_load(tmp_path):
    save(tmp_path / "kd", 1.0)

    def refuse(manifest):
        raise CheckpointError("not my networks")

    with pytest.raises(CheckpointError, match="not my networks"):
        load_checkpoint(tmp_path / "kd", expect=refuse)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["embedder"].update(dimension="384"),
        lambda m: m["embedder"].update(dimension=True),
        lambda m: m["embedder"].update(name=None),
        lambda m: m["dims"].update(embedding_dim=-1),
        lambda m: m.update(version="1"),
        lambda m: m.update(metrics=[]),
    ],
)
def test_entries_of_the_wrong_type_are_refused(tmp_path, change):
    save(tmp_path / "kd", 1.0)
    edit_manifest(tmp_path / "kd", change)
    with pytest.raises(CheckpointError, match="is invalid"):
        load_checkpoint(tmp_path / "kd", embedder=MINILM)


def test_a_directory_in_place_of_weights_is_refused(tmp_path):
    path = Path(save(tmp_path / "kd", 1.0)["teacher"])
    path.unlink()
    path.mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path / "kd")
