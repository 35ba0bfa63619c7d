"""The wheel ships the library: the package and its metadata, nothing of tests, benchmarks,
examples or data, and the benchmark-only dependencies as extras.

That the core runs without those extras is checked by the README's Quick start test.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

import langchain_kd_memory

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "langchain_kd_memory"
EXTRAS = {"games": "textworld", "chitchat": "chitchat-dataset", "plots": "matplotlib"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel `pip wheel` builds from this checkout (offline: hatchling is in the test group)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    [path] = out.glob("langchain_kd_memory-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> Message:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


def test_the_wheel_holds_the_package_and_its_metadata_only(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    dist_info = f"langchain_kd_memory-{langchain_kd_memory.__version__}.dist-info/"
    package = {name for name in names if not name.startswith(dist_info)}
    sources = {f"langchain_kd_memory/{path.name}" for path in PACKAGE.iterdir()
               if path.suffix == ".py" or path.name == "py.typed"}
    assert package == sources  # every module, no test, benchmark, example, doc, cache or data
    assert "langchain_kd_memory/py.typed" in package
    assert {name.removeprefix(dist_info) for name in names if name.startswith(dist_info)} >= {
        "METADATA", "RECORD", "WHEEL", "entry_points.txt"}


def test_the_benchmark_dependencies_are_extras_and_the_version_is_the_packages(
    wheel: zipfile.ZipFile,
) -> None:
    metadata = _metadata(wheel)
    assert metadata["Version"] == langchain_kd_memory.__version__
    assert set(metadata.get_all("Provides-Extra")) >= set(EXTRAS)
    requires = metadata.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("chromadb") for r in core) and any(r.startswith("torch") for r in core)
    for extra, package in EXTRAS.items():
        needing = [r for r in requires if r.startswith(package)]
        assert needing and all(f"extra == '{extra}'" in r or f'extra == "{extra}"' in r
                               for r in needing), (package, needing)
    entry_points = wheel.read(f"langchain_kd_memory-{metadata['Version']}.dist-info/"
                              "entry_points.txt").decode()
    assert "kd-memory = langchain_kd_memory.cli:main" in entry_points
