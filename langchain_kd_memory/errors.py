"""Exception types raised by langchain-kd-memory.

Every error the package raises on bad input or bad state derives from `KDMemoryError`, and the
specific subclasses also derive from the built-in type a caller would naturally catch
(`ValueError`, `KeyError`, ...), so `except ValueError` keeps working.
"""

from __future__ import annotations


class KDMemoryError(Exception):
    """Base class of every error raised by langchain-kd-memory."""


class InvalidEpisodeError(KDMemoryError, ValueError):
    """An episode field is invalid: empty query, non-finite reward, non-scalar metadata..."""


class InvalidRewardError(InvalidEpisodeError):
    """A reward is not a finite number (or lies outside the declared range)."""


class DuplicateEpisodeError(KDMemoryError, ValueError):
    """An episode id is already stored in its namespace, or repeats within one batch."""


class InvalidNamespaceError(KDMemoryError, ValueError):
    """A namespace is not a non-empty string of acceptable length."""


class InvalidArgumentError(KDMemoryError, ValueError):
    """An argument other than an episode field is invalid (k <= 0, bad batch size, ...)."""


class EpisodeNotFoundError(KDMemoryError, KeyError):
    """No episode with the given id exists in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "episode not found"


class EmbeddingError(KDMemoryError, RuntimeError):
    """The embedder failed or returned something unusable."""


class EmbeddingDimensionError(EmbeddingError, ValueError):
    """An embedding has a different dimension than the store or model expects."""


class EmbedderMismatchError(KDMemoryError, ValueError):
    """A collection or checkpoint was built with a different embedder than the one given."""


class StoreError(KDMemoryError, RuntimeError):
    """The episode store (Chroma) failed or is unreachable.

    Attributes:
        maybe_stored: Ids of episodes that a failed write may have left in the store (Chroma
            could not be reached to remove them); empty when nothing remains.
    """

    def __init__(self, message: str, *, maybe_stored: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.maybe_stored = tuple(maybe_stored)


class JournalError(KDMemoryError, OSError):
    """The writer's journal could not be written: what it was given is not acknowledged."""


class NotTrainedError(KDMemoryError, RuntimeError):
    """The value model has not been trained (or loaded) yet."""


class InsufficientDataError(KDMemoryError, ValueError):
    """There are too few rated episodes to train on."""


class ConfigError(KDMemoryError, ValueError):
    """A configuration value is invalid (alpha + beta != 1, temperature <= 0, ...)."""


class CheckpointError(KDMemoryError, RuntimeError):
    """A checkpoint is missing, corrupted, tampered with or unsafe to load."""


class OutdatedCheckpointError(CheckpointError):
    """A checkpoint written in an older format.

    The memory treats it as untrained, and the next `consolidate()` trains a new version.
    """


class GameError(KDMemoryError, RuntimeError):
    """A TextWorld game could not be made or started (see `games.py`)."""
