"""langchain-kd-memory: reward-aware episodic memory for LangChain agents."""

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
from langchain_kd_memory.storage import EpisodeStore

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DuplicateEpisodeError",
    "EmbedderIdentity",
    "EmbedderMismatchError",
    "EmbeddingDimensionError",
    "EmbeddingError",
    "Episode",
    "EpisodeNotFoundError",
    "EpisodeStore",
    "InsufficientDataError",
    "InvalidArgumentError",
    "InvalidEpisodeError",
    "InvalidNamespaceError",
    "InvalidRewardError",
    "KDMemoryError",
    "LocalEmbeddings",
    "NotTrainedError",
    "OpenAIEmbedder",
    "RewardEstimate",
    "StoreError",
    "TrainingArrays",
    "default_embeddings",
    "embedder_identity",
]
