"""The public API: exactly these names, importable from the package root."""

import langchain_kd_memory

EXPECTED_ALL = [
    "BackgroundWriter",
    "CachedEmbeddings",
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
    "RecordingStatus",
    "RewardEstimate",
    "RouterStatus",
    "StoreError",
    "StudentConfig",
    "TeacherConfig",
    "TrainingArrays",
    "ValueRouter",
    "WriterStatus",
    "default_embeddings",
    "embedder_identity",
]


def test_all_imports() -> None:
    assert sorted(langchain_kd_memory.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert getattr(langchain_kd_memory, name) is not None


def test_every_error_is_a_kdmemory_error() -> None:
    for name in EXPECTED_ALL:
        obj = getattr(langchain_kd_memory, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, langchain_kd_memory.KDMemoryError), name
