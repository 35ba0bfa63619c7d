"""Versioned, atomic checkpoints: safetensors weights plus a JSON manifest. No pickle.

A save under the prefix `models/kd` writes

    models/kd_teacher.v{N}.safetensors   models/kd_student.v{N}.safetensors
    models/kd_config.v{N}.json           models/kd_config.json

The weights go first, each to a temporary file that is fsynced and renamed into place; then the
manifest of version N, which names its weight files and their SHA-256 (`kd_config.v{N}.json`);
the current manifest (`kd_config.json`, the same text) is replaced last. A crash at any point
therefore leaves the current manifest pointing at the previous complete version. The last `keep`
versions stay on disk, so that a reader that has just read the previous manifest still finds its
files, and an earlier version can be loaded by number if the latest is damaged. One writer per
prefix at a time.

Loading checks the format, the manifest's own SHA-256 (so a flipped bit in it is caught, not
read as another reward range) and that its text is exactly what the writer wrote (a flipped bit
in a float's last digit can leave the value, and so the SHA-256, unchanged), the types of its
entries, the embedder (name and dimension), that
each weight file is a plain `.safetensors` name inside the checkpoint's directory and a regular
file (a FIFO, device or directory is never opened), its size and SHA-256, and, when the caller
says which tensors the manifest describes (`expect`), the names, dtypes and shapes in its
safetensors header, all before any tensor is built. The checksums catch corruption, not forgery:
the file-name and header checks are what keep a crafted manifest inside its directory and its
numbers honest, and safetensors holds tensors only, so no file can run code.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from langchain_kd_memory._validate import check_int
from langchain_kd_memory.embeddings import EmbedderIdentity
from langchain_kd_memory.errors import (
    CheckpointError,
    EmbedderMismatchError,
    InvalidArgumentError,
    OutdatedCheckpointError,
)

logger = logging.getLogger(__name__)

FORMAT = "langchain-kd-memory/checkpoint"
FORMAT_VERSION = 3
CHECKSUM_KEY = "manifest_sha256"
WEIGHT_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pkl")
ROLES = ("teacher", "student")
DEFAULT_KEEP = 3
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
"""A manifest is a few kB of JSON; anything far larger is not one."""
MAX_HEADER_BYTES = 1024 * 1024
"""Largest safetensors header accepted (ours take a few hundred bytes per network)."""
DTYPE = "F32"
"""The safetensors dtype of every saved tensor (the networks are float32)."""

Shapes = Mapping[str, Mapping[str, tuple[int, ...]]]
"""The tensors a checkpoint must hold: role -> tensor name -> shape."""


class SavedCheckpoint(TypedDict):
    """What `save_checkpoint` wrote: the version number and the paths of its files."""

    version: int
    teacher: str
    student: str
    config: str


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint.

    Attributes:
        manifest: The JSON manifest (config, binning, embedder, dims, metrics, ...).
        weights: State dicts by role ("teacher", "student").
    """

    manifest: dict[str, Any]
    weights: dict[str, dict[str, torch.Tensor]]

    @property
    def version(self) -> int:
        """The version number of this checkpoint."""
        return int(self.manifest["version"])


def _split_prefix(prefix: str | os.PathLike[str]) -> tuple[Path, str]:
    path = Path(prefix)
    if not path.name or path.name in (".", ".."):
        raise CheckpointError(f"checkpoint prefix must end in a file-name stem, got {prefix!r}")
    return path.parent, path.name


def manifest_path(prefix: str | os.PathLike[str]) -> Path:
    """Path of the manifest for `prefix` (`{prefix}_config.json`)."""
    directory, base = _split_prefix(prefix)
    return directory / f"{base}_config.json"


def _weight_name(base: str, role: str, version: int) -> str:
    return f"{base}_{role}.v{version}{WEIGHT_SUFFIX}"


def _versioned_manifest_name(base: str, version: int) -> str:
    return f"{base}_config.v{version}.json"


def _existing_versions(directory: Path, base: str, *, manifests_only: bool = False) -> set[int]:
    kinds = r"config\.v(\d+)\.json" if manifests_only else (
        rf"(?:{'|'.join(ROLES)})\.v(\d+){re.escape(WEIGHT_SUFFIX)}|config\.v(\d+)\.json"
    )
    pattern = re.compile(rf"^{re.escape(base)}_(?:{kinds})$")
    if not directory.is_dir():
        return set()
    return {
        int(next(g for g in m.groups() if g is not None))
        for p in directory.iterdir()
        if (m := pattern.match(p.name))
    }


def checkpoint_versions(prefix: str | os.PathLike[str]) -> list[int]:
    """The versions at `prefix` that can be loaded by number (`load_checkpoint(version=N)`)."""
    directory, base = _split_prefix(prefix)
    return sorted(_existing_versions(directory, base, manifests_only=True))


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's content, without its own checksum, in a canonical JSON form."""
    body = {key: value for key, value in manifest.items() if key != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _manifest_text(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as it is written, and as an intact one reads back, byte for byte."""
    return json.dumps(manifest, indent=2, allow_nan=False).encode("utf-8")


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def save_checkpoint(
    prefix: str | os.PathLike[str],
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    embedder: EmbedderIdentity,
    config: Mapping[str, Any],
    binning: Mapping[str, Any],
    dims: Mapping[str, int],
    metrics: Mapping[str, Any] | None = None,
    keep: int = DEFAULT_KEEP,
    namespace: str | None = None,
) -> SavedCheckpoint:
    """Save a new version atomically; return its number and the paths written.

    Args:
        prefix: Path prefix, e.g. "models/kd"; the directory is created if needed.
        weights: State dicts for "teacher" and "student".
        embedder: Identity of the embedder the model was trained with.
        config: The training config (`DistillationConfig.to_dict()`).
        binning: The reward binning (`RewardBinner.to_dict()`).
        dims: Shapes needed to rebuild the networks (embedding_dim, num_bins).
        metrics: Training metrics to keep with the model (JSON-serialisable).
        keep: Versions of the weight files to keep on disk (>= 1).
        namespace: The namespace the model learned from, recorded in the manifest (None: all,
            or not a memory's model).

    Returns:
        {"version": N, "teacher": path, "student": path, "config": manifest path}.

    Raises:
        CheckpointError: A role is missing, `keep` is not an int >= 1, the metadata is not
            JSON-serialisable, or the files cannot be written.
    """
    if set(weights) != set(ROLES):
        raise CheckpointError(f"weights must have exactly the roles {ROLES}, got {sorted(weights)}")
    check_int("keep", keep, low=1, error=CheckpointError)
    directory, base = _split_prefix(prefix)
    target = manifest_path(prefix)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        previous = _read_manifest(target) if target.exists() else None
    except (OSError, CheckpointError) as exc:
        logger.warning("ignoring unreadable previous checkpoint at %s: %s", target, exc)
        previous = None
    known = _existing_versions(directory, base)
    if previous is not None and isinstance(previous.get("version"), int):
        known.add(previous["version"])
    version = max(known, default=0) + 1

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "embedder": {"name": embedder.name, "dimension": embedder.dimension},
        "dims": dict(dims),
        "config": dict(config),
        "binning": dict(binning),
        "metrics": dict(metrics or {}),
        "namespace": namespace,
        "files": {},
    }
    try:  # fail before writing anything
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc

    paths: dict[str, str] = {}  # role -> weight file
    try:
        for role in ROLES:
            tensors = {k: v.detach().cpu().contiguous() for k, v in weights[role].items()}
            data = save_safetensors(tensors, metadata={"role": role, "version": str(version)})
            name = _weight_name(base, role, version)
            _atomic_write(directory / name, data)
            manifest["files"][role] = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
            paths[role] = str(directory / name)
        manifest[CHECKSUM_KEY] = _manifest_digest(manifest)
        text = _manifest_text(manifest)
        _atomic_write(directory / _versioned_manifest_name(base, version), text)
        _atomic_write(target, text)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {target}: {exc}") from exc
    _prune(directory, base, keep_from=version - keep + 1)
    logger.info("saved checkpoint version %d at %s", version, target)
    return SavedCheckpoint(
        version=version, teacher=paths["teacher"], student=paths["student"], config=str(target)
    )


def _prune(directory: Path, base: str, keep_from: int) -> None:
    """Remove versions older than `keep_from`, and temporary files left by a killed writer."""
    for stale in directory.glob(f".{glob.escape(base)}_*.tmp"):
        stale.unlink(missing_ok=True)
    for old in sorted(v for v in _existing_versions(directory, base) if v < keep_from):
        for role in ROLES:
            try:
                (directory / _weight_name(base, role, old)).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove old checkpoint version %d: %s", old, exc)
        (directory / _versioned_manifest_name(base, old)).unlink(missing_ok=True)


def _check_regular(info: os.stat_result, path: Path, what: str, limit: int) -> int:
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(
            f"{what} {path} is not a regular file (a FIFO, device or directory?); refusing to "
            "open it: restore the file, or retrain"
        )
    if info.st_size > limit:
        raise CheckpointError(
            f"{what} {path} has {info.st_size} bytes, more than the {limit} it can hold: it does "
            "not belong to this checkpoint; restore it, or retrain"
        )
    return info.st_size


def _read_regular_file(path: Path, what: str, limit: int) -> bytes:
    """The bytes of `path`, refusing anything but a regular file of at most `limit` bytes.

    A FIFO, device or directory is refused before it is opened (opening a FIFO blocks until a
    writer appears); the file is opened non-blocking and checked again, in case it was swapped
    in between.

    Raises:
        CheckpointError: It is missing, unreadable, not a regular file, or too large.
    """
    try:
        _check_regular(os.stat(path), path, what, limit)
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
            size = _check_regular(os.fstat(handle.fileno()), path, what, limit)
            data = handle.read(size + 1)
    except OSError as exc:
        raise CheckpointError(f"{what} {path} is missing or unreadable: {exc}") from exc
    if len(data) > size:
        raise CheckpointError(f"{what} {path} changed while it was read; try again")
    return data


def _positive_int(value: object) -> bool:
    try:
        check_int("value", value, low=1)
    except InvalidArgumentError:
        return False
    return True


def _check_entries(manifest: dict[str, Any], path: Path) -> None:
    """Refuse manifest entries of the wrong type (they are read as numbers and names later)."""
    problems = []
    if not _positive_int(manifest["version"]):
        problems.append(f"version {manifest['version']!r} is not a positive int")
    embedder = manifest["embedder"]
    if not (
        isinstance(embedder, dict)
        and isinstance(embedder.get("name"), str)
        and _positive_int(embedder.get("dimension"))
    ):
        problems.append(f"embedder {embedder!r} is not a name and a positive int dimension")
    dims = manifest["dims"]
    if not (isinstance(dims, dict) and all(_positive_int(v) for v in dims.values())):
        problems.append(f"dims {dims!r} are not positive ints")
    for key in ("config", "binning", "files", "metrics"):
        if not isinstance(manifest.get(key, {}), dict):
            problems.append(f"{key!r} is not a JSON object")
    if problems:
        raise CheckpointError(
            f"checkpoint manifest {path} is invalid: {'; '.join(problems)}; it was edited by hand "
            "or by another program: restore it, retrain, or load an earlier version by number"
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    data = _read_regular_file(path, "checkpoint manifest", MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint manifest {path} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a langchain-kd-memory checkpoint manifest")
    version = manifest.get("format_version")
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise OutdatedCheckpointError(
            f"{path} has format version {version}, older than this library's "
            f"{FORMAT_VERSION}: retrain with consolidate()"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {manifest.get('format_version')!r}; this library reads "
            f"version {FORMAT_VERSION}: upgrade langchain-kd-memory or retrain"
        )
    try:
        intact = manifest.get(CHECKSUM_KEY) == _manifest_digest(manifest)
    except (TypeError, ValueError):  # e.g. a flipped bit made a number NaN or inf
        intact = False
    if not intact:
        raise CheckpointError(
            f"checkpoint manifest {path} does not match its SHA-256: it is corrupted or was "
            "edited; restore it, retrain, or load an earlier version by number"
        )
    if data != _manifest_text(manifest):  # e.g. a flipped bit in a digit that rounds away
        raise CheckpointError(
            f"checkpoint manifest {path} matches its SHA-256 in content but is not the text that "
            "was written: it is corrupted or was edited; restore it, retrain, or load an earlier "
            "version by number"
        )
    for key in ("version", "embedder", "dims", "config", "binning", "files"):
        if key not in manifest:
            raise CheckpointError(f"checkpoint manifest {path} lacks {key!r}")
    _check_entries(manifest, path)
    return manifest


def _weight_file(directory: Path, name: object) -> Path:
    """The path of a weight file named in a manifest, refusing anything but a local safetensors."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"invalid weight file name in manifest: {name!r}")
    if not name.endswith(WEIGHT_SUFFIX):
        raise CheckpointError(
            f"refusing to load {name!r}: only {WEIGHT_SUFFIX} weights are loaded "
            "(pickle-based .pt/.pth files can run code when loaded)"
        )
    if Path(name).name != name or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(
            f"refusing weight file {name!r}: a manifest may only name files in its own directory"
        )
    path = directory / name
    if path.resolve().parent != directory.resolve():
        raise CheckpointError(f"refusing weight file {name!r}: it resolves outside {directory}")
    return path


def _check_embedder(manifest: dict[str, Any], embedder: EmbedderIdentity, path: Path) -> None:
    saved = manifest["embedder"]  # types checked by _check_entries
    saved_identity = EmbedderIdentity(saved["name"], saved["dimension"])
    if saved_identity != embedder:
        raise EmbedderMismatchError(
            f"checkpoint {path} was trained on embeddings from {saved_identity}, but the "
            f"embedder in use is {embedder}; pass the matching embeddings= or retrain"
        )


def _refuse_pickles(prefix: str | os.PathLike[str]) -> None:
    """Raise if pickle-based weights (the seed's `{prefix}_teacher.pth`, ...) lie at `prefix`."""
    directory, base = _split_prefix(prefix)
    found = [
        directory / f"{base}_{role}{suffix}"
        for role in ROLES
        for suffix in PICKLE_SUFFIXES
        if (directory / f"{base}_{role}{suffix}").exists()
    ]
    if found:
        raise CheckpointError(
            f"refusing to load {found[0]}: pickle-based weights can run code when loaded, and "
            "are never opened; retrain (save_models writes safetensors) or convert them with "
            "code you trust"
        )


def _tensor_index(data: bytes, role: str, file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) from a safetensors header, without building any tensor."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > min(MAX_HEADER_BYTES, len(data) - 8):
            raise ValueError(f"header length {size} does not fit a {len(data)}-byte file")
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
        return {
            name: (entry["dtype"], tuple(entry["shape"]))
            for name, entry in header.items()
            if name != "__metadata__"
        }
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{role} weights {file} are not valid safetensors: {exc}") from exc


def _check_tensors(
    data: bytes, expected: Mapping[str, tuple[int, ...]], role: str, file: Path
) -> None:
    """Refuse weights whose header disagrees with the tensors the manifest describes."""
    found = _tensor_index(data, role, file)
    wanted = {name: (DTYPE, tuple(shape)) for name, shape in expected.items()}
    if found == wanted:
        return
    def show(tensor: tuple[str, tuple[int, ...]] | None) -> str:
        return "nothing" if tensor is None else f"{tensor[0]} {list(tensor[1])}"

    differences = [
        f"{name} is {show(found.get(name))}, expected {show(wanted.get(name))}"
        for name in sorted(set(found) | set(wanted), key=str)
        if found.get(name) != wanted.get(name)
    ]
    raise CheckpointError(
        f"{role} weights {file} do not fit the networks their manifest describes ("
        f"{'; '.join(differences[:3])}{'; ...' if len(differences) > 3 else ''}): the manifest "
        "was edited or belongs to other weights; retrain, or load an earlier version by number"
    )


def _size_limit(expected: Mapping[str, tuple[int, ...]] | None) -> int:
    """Most bytes a weight file holding `expected` float32 tensors can have."""
    if expected is None:
        return 2**62
    return 8 + MAX_HEADER_BYTES + 4 * sum(math.prod(shape) for shape in expected.values())


def load_checkpoint(
    prefix: str | os.PathLike[str],
    *,
    embedder: EmbedderIdentity | None = None,
    version: int | None = None,
    expect: Callable[[dict[str, Any]], Shapes] | None = None,
) -> Checkpoint | None:
    """Load and verify the current (or a given) version at `prefix`; None if there is none.

    Args:
        prefix: The prefix given to `save_checkpoint`.
        embedder: If given, the checkpoint must have been trained with this embedder.
        version: A version number (see `checkpoint_versions`) to load instead of the current
            one, e.g. the previous version when the latest is damaged.
        expect: Given the verified manifest, the float32 tensors each role must hold (name ->
            shape); it raises `CheckpointError` if the manifest cannot describe networks. Each
            weight file's size and safetensors header are checked against it before any tensor
            is built.

    Raises:
        CheckpointError: The manifest or a weight file is unreadable, missing, not a regular
            file, tampered with, truncated, not safetensors, outside the checkpoint's directory,
            or (with `expect`) not the tensors the manifest describes; pickle-based weights lie
            at `prefix`; or `version` is not on disk.
        EmbedderMismatchError: The checkpoint was trained with another embedder or dimension.
    """
    _refuse_pickles(prefix)
    path = manifest_path(prefix)
    if version is not None:
        version = check_int("version", version, low=1, error=CheckpointError)
        path = path.parent / _versioned_manifest_name(_split_prefix(prefix)[1], version)
        if not path.exists():
            raise CheckpointError(
                f"no checkpoint version {version} at {prefix}; versions on disk: "
                f"{checkpoint_versions(prefix)}"
            )
    elif not path.exists():
        return None
    manifest = _read_manifest(path)
    if version is not None and manifest["version"] != version:
        raise CheckpointError(f"{path} holds version {manifest['version']!r}, not {version}")
    if embedder is not None:
        _check_embedder(manifest, embedder, path)
    files = manifest["files"]
    if set(files) != set(ROLES) or not all(isinstance(files[role], dict) for role in ROLES):
        raise CheckpointError(f"checkpoint manifest {path} must list the files {ROLES}")
    expected = expect(manifest) if expect is not None else None
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for role in ROLES:
        entry = files[role]
        file = _weight_file(path.parent, entry.get("file"))
        tensors = None if expected is None else expected[role]
        data = _read_regular_file(file, f"{role} weights", _size_limit(tensors))
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CheckpointError(
                f"{role} weights {file} do not match the SHA-256 in {path}: the file is "
                "truncated, corrupted or was modified; restore it, retrain, or load an earlier "
                f"version by number (versions on disk: {checkpoint_versions(prefix)})"
            )
        if tensors is not None:
            _check_tensors(data, tensors, role, file)
        try:
            weights[role] = load_safetensors(data)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"{role} weights {file} are not valid safetensors: {exc}") from (
                exc
            )
    return Checkpoint(manifest=manifest, weights=weights)
