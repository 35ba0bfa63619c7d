"""The public API: exactly these names, importable from the package root, each documented."""

import inspect
import re
import subprocess
import sys

import pytest

import langchain_kd_memory

EXPECTED_ALL = [
    "__version__",
    # the memory, its store and its value model
    "DistilledEpisodicMemory",
    "EpisodeStore",
    "http_client",
    "ModelDistillation",
    "DistillationConfig",
    "StudentConfig",
    "TeacherConfig",
    # what a user passes in, gets back, or writes a function against
    "Episode",
    "RewardEstimate",
    "RankedResponse",
    "ConsolidationReport",
    "FinishedRun",
    # LangChain and LangGraph integrations, the worker
    "ConsolidationCallback",
    "EpisodicMemoryMiddleware",
    "EpisodeBaseStore",
    "ValueRouter",
    "ConsolidationWorker",
    # embedders
    "LocalEmbeddings",
    "OpenAIEmbedder",
    "CachedEmbeddings",
    "default_embeddings",
    # errors
    "KDMemoryError",
    "CheckpointError",
    "ConfigError",
    "DuplicateEpisodeError",
    "EmbedderMismatchError",
    "EmbeddingDimensionError",
    "EmbeddingError",
    "EpisodeNotFoundError",
    "InsufficientDataError",
    "InvalidArgumentError",
    "InvalidEpisodeError",
    "InvalidNamespaceError",
    "InvalidRewardError",
    "NotTrainedError",
    "StoreError",
]

OBJECTS = [name for name in EXPECTED_ALL if name != "__version__"]


def test_all_is_exactly_the_public_names() -> None:
    assert sorted(langchain_kd_memory.__all__) == sorted(EXPECTED_ALL)
    assert len(set(langchain_kd_memory.__all__)) == len(langchain_kd_memory.__all__)


@pytest.mark.parametrize("name", OBJECTS)
def test_every_public_name_resolves_to_the_object_of_its_module(name: str) -> None:
    obj = getattr(langchain_kd_memory, name)
    module = f"langchain_kd_memory.{langchain_kd_memory._MODULES[name]}"
    assert getattr(sys.modules[module], name) is obj
    assert obj.__module__ == module  # defined there, not re-exported from elsewhere


@pytest.mark.parametrize("name", OBJECTS)
def test_every_public_name_has_its_own_docstring(name: str) -> None:
    doc = getattr(langchain_kd_memory, name).__doc__  # a class's __doc__ is never inherited
    assert doc and doc.strip(), f"{name} has no docstring"
    # a dataclass without a docstring gets its signature as __doc__
    assert not doc.startswith(f"{name}("), f"{name} has only the signature dataclass writes"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="Episodes"):
        langchain_kd_memory.Episodes  # noqa: B018
    with pytest.raises(ImportError):
        from langchain_kd_memory import WriterStatus  # noqa: F401  (internal: not public)


def test_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", langchain_kd_memory.__version__)


def test_importing_the_package_imports_no_heavy_dependency() -> None:
    """Names load on first use: the package itself costs no torch, chromadb or LangChain."""
    code = (
        "import sys, langchain_kd_memory; "
        "print(sorted(m for m in ('torch', 'chromadb', 'langchain_core', 'langgraph') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_error_is_a_kdmemory_error() -> None:
    for name in OBJECTS:
        obj = getattr(langchain_kd_memory, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, langchain_kd_memory.KDMemoryError), name
    assert inspect.isclass(langchain_kd_memory.KDMemoryError)
