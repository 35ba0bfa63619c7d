"""langchain-kd-memory: reward-aware episodic memory for LangChain agents."""

from langchain_kd_memory.binning import RewardBinner
from langchain_kd_memory.callbacks import ConsolidationCallback, ConsolidationStatus
from langchain_kd_memory.config import DistillationConfig, StudentConfig, TeacherConfig
from langchain_kd_memory.decisions import RankedResponse
from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import (
    EmbedderIdentity,
    LocalEmbeddings,
    OpenAIEmbedder,
    default_embeddings,
    embedder_identity,
)
from langchain_kd_memory.episodes import Episode, RewardEstimate, TrainingArrays
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
from langchain_kd_memory.memory import ConsolidationReport, DistilledEpisodicMemory
from langchain_kd_memory.middleware import EpisodicMemoryMiddleware, MemoryMiddlewareStatus
from langchain_kd_memory.router import RouterStatus, ValueRouter
from langchain_kd_memory.runs import FinishedRun
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.store import EpisodeBaseStore

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConsolidationCallback",
    "ConsolidationReport",
    "ConsolidationStatus",
    "DistillationConfig",
    "DistilledEpisodicMemory",
    "DuplicateEpisodeError",
    "EmbedderIdentity",
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
    "MemoryMiddlewareStatus",
    "ModelDistillation",
    "NotTrainedError",
    "OpenAIEmbedder",
    "RankedResponse",
    "RewardBinner",
    "RewardEstimate",
    "RouterStatus",
    "StoreError",
    "StudentConfig",
    "TeacherConfig",
    "TrainingArrays",
    "ValueRouter",
    "default_embeddings",
    "embedder_identity",
]
