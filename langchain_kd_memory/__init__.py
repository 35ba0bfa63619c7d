"""langchain-kd-memory: reward-aware episodic memory for LangChain agents.

The public names load on first use (PEP 562), so ``import langchain_kd_memory`` and a storage-only
``from langchain_kd_memory import EpisodeStore`` do not import torch, LangChain agents or LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_kd_memory.callbacks import ConsolidationCallback
    from langchain_kd_memory.config import DistillationConfig, StudentConfig, TeacherConfig
    from langchain_kd_memory.consolidation import ConsolidationReport
    from langchain_kd_memory.decisions import RankedResponse
    from langchain_kd_memory.distillation import ModelDistillation
    from langchain_kd_memory.embeddings import (
        CachedEmbeddings,
        LocalEmbeddings,
        OpenAIEmbedder,
        default_embeddings,
    )
    from langchain_kd_memory.episodes import Episode, RewardEstimate
    from langchain_kd_memory.errors import (
        CheckpointError,
        ConfigError,
        DuplicateEpisodeError,
        EmbedderMismatchError,
        EmbeddingDimensionError,
        EmbeddingError,
        EpisodeNotFoundError,
        InsufficientDataError,
        InvalidArgumentError,
        InvalidEpisodeError,
        InvalidNamespaceError,
        InvalidRewardError,
        KDMemoryError,
        NotTrainedError,
        StoreError,
    )
    from langchain_kd_memory.memory import DistilledEpisodicMemory
    from langchain_kd_memory.middleware import EpisodicMemoryMiddleware
    from langchain_kd_memory.router import ValueRouter
    from langchain_kd_memory.runs import FinishedRun
    from langchain_kd_memory.storage import EpisodeStore, http_client
    from langchain_kd_memory.store import EpisodeBaseStore
    from langchain_kd_memory.worker import ConsolidationWorker

__version__ = "0.1.0"
"""The package's version; the wheel's metadata reads it from here."""

_MODULES: dict[str, str] = {
    "CachedEmbeddings": "embeddings",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "ConsolidationCallback": "callbacks",
    "ConsolidationReport": "consolidation",
    "ConsolidationWorker": "worker",
    "default_embeddings": "embeddings",
    "DistillationConfig": "config",
    "DistilledEpisodicMemory": "memory",
    "DuplicateEpisodeError": "errors",
    "EmbedderMismatchError": "errors",
    "EmbeddingDimensionError": "errors",
    "EmbeddingError": "errors",
    "Episode": "episodes",
    "EpisodeBaseStore": "store",
    "EpisodeNotFoundError": "errors",
    "EpisodeStore": "storage",
    "EpisodicMemoryMiddleware": "middleware",
    "FinishedRun": "runs",
    "http_client": "storage",
    "InsufficientDataError": "errors",
    "InvalidArgumentError": "errors",
    "InvalidEpisodeError": "errors",
    "InvalidNamespaceError": "errors",
    "InvalidRewardError": "errors",
    "KDMemoryError": "errors",
    "LocalEmbeddings": "embeddings",
    "ModelDistillation": "distillation",
    "NotTrainedError": "errors",
    "OpenAIEmbedder": "embeddings",
    "RankedResponse": "decisions",
    "RewardEstimate": "episodes",
    "StoreError": "errors",
    "StudentConfig": "config",
    "TeacherConfig": "config",
    "ValueRouter": "router",
}
"""The module of `langchain_kd_memory` that defines each public name."""

__all__ = [
    "__version__",
    "CachedEmbeddings",
    "CheckpointError",
    "ConfigError",
    "ConsolidationCallback",
    "ConsolidationReport",
    "ConsolidationWorker",
    "DistillationConfig",
    "DistilledEpisodicMemory",
    "DuplicateEpisodeError",
    "EmbedderMismatchError",
    "EmbeddingDimensionError",
    "EmbeddingError",
    "Episode",
    "EpisodeBaseStore",
    "EpisodeNotFoundError",
    "EpisodeStore",
    "EpisodicMemoryMiddleware",
    "FinishedRun",
    "InsufficientDataError",
    "InvalidArgumentError",
    "InvalidEpisodeError",
    "InvalidNamespaceError",
    "InvalidRewardError",
    "KDMemoryError",
    "LocalEmbeddings",
    "ModelDistillation",
    "NotTrainedError",
    "OpenAIEmbedder",
    "RankedResponse",
    "RewardEstimate",
    "StoreError",
    "StudentConfig",
    "TeacherConfig",
    "ValueRouter",
    "default_embeddings",
    "http_client",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_kd_memory' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
