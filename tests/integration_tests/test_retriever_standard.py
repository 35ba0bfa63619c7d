"""LangChain's standard retriever suite, run against DistilledEpisodicMemory over real Chroma."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from langchain_kd_memory.distillation import ModelDistillation
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore


class TestDistilledEpisodicMemoryStandard(RetrieversIntegrationTests):
    parts: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _filled_store(
        cls, tmp_path_factory: pytest.TempPathFactory, embeddings: LocalEmbeddings
    ) -> None:
        store = EpisodeStore(
            "standard", embeddings=embeddings,
            persist_directory=str(tmp_path_factory.mktemp("standard")),
        )
        store.add([
            Episode(f"How do I reset my password, attempt {i}?", f"Answer {i}", reward=i / 5)
            for i in range(5)
        ])
        cls.parts.update(store=store, distillation=ModelDistillation(embeddings=embeddings))

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return DistilledEpisodicMemory

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return dict(self.parts)

    @property
    def retriever_query_example(self) -> str:
        return "I forgot my password"
