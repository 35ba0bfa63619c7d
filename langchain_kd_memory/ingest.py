"""Ingest episodes from JSON Lines: check every line first, derive stable ids, store all or none.

`kd-memory ingest` is the command line over this module. A line holds one episode as
`Episode.from_dict` reads it. Lines without an id get one derived from their content, so the
same file ingested again adds nothing twice; `store_all` removes what it stored when it is
interrupted (an error, Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from tqdm.auto import tqdm

from langchain_kd_memory.episodes import Episode
from langchain_kd_memory.errors import EpisodeNotFoundError, KDMemoryError

if TYPE_CHECKING:
    from langchain_kd_memory.memory import DistilledEpisodicMemory
    from langchain_kd_memory.storage import EpisodeStore

logger = logging.getLogger(__name__)

LOOKUP_CHUNK = 256
"""Ids looked up in the store per request."""


INGEST_IDS = uuid.UUID("9c1f5e0a-4b7d-5e8f-a2c3-6d4b1e7f0a95")
"""UUID5 namespace of the ids `ingest` derives for lines without one (never change it)."""


class Terminated(BaseException):
    """SIGTERM arrived during an ingest: it unwinds like Ctrl-C, so that the ingest rolls back."""


@dataclass(frozen=True)
class Line:
    """A valid line of the file: its number and its episode."""

    number: int
    episode: Episode
    dated: bool
    """Whether the line gives `created_at` (else the episode is dated by its first ingest)."""


def read_lines(handle: IO[bytes]) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of each non-blank line; text None if it is not UTF-8."""
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None
            continue
        if text.strip():
            yield number, text


LINE_ERRORS = (ValueError, OverflowError, RecursionError)
"""What a bad line can raise: the package's input errors (ValueErrors), and what json, float
and Chroma raise on huge numbers or deep nesting whatever the library checks first."""


def reason(exc: BaseException) -> str:
    """The FILE:LINE reason for an error a line raised."""
    if isinstance(exc, OverflowError):
        return f"a number is too large to store ({exc})"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read (metadata values are scalars)"
    return str(exc)


def derived_id(data: dict[str, Any], seen: dict[str, int]) -> str:
    """A UUID5 of the line's content (namespace resolved) and of how often it came before.

    The same file, read again from any path or through stdin, gives the same ids, also after
    lines were added or removed elsewhere in it (a line number would shift them); identical
    lines stay distinct episodes, told apart by their occurrence.
    """
    content = {key: value for key, value in data.items() if key != "id" and value is not None}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    occurrence = seen[text] = seen.get(text, -1) + 1
    return str(uuid.uuid5(INGEST_IDS, f"{occurrence}:{text}"))


def parse_line(text: str | None, namespace: str, seen: dict[str, int]) -> tuple[Episode, bool]:
    """The episode on one line and whether it gives `created_at`; ValueError says what is wrong.

    A line without an id gets one derived from its content (`derived_id`).
    """
    if text is None:
        raise ValueError("not valid UTF-8")
    try:
        data = json.loads(text.rstrip("\r\n"))  # an error at the end is then on this line
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ValueError(f"unreadable JSON: {str(exc).split(';')[0]}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("namespace") is None:
        data["namespace"] = namespace
    if data.get("id") is None:
        data["id"] = derived_id(data, seen)
    return Episode.from_dict(data), data.get("created_at") is not None


def parse_file(
    handle: IO[bytes], namespace: str
) -> tuple[list[Line], list[tuple[int, str]]]:
    """Valid lines, and (line number, reason) of each invalid one (repeated ids included)."""
    valid: list[Line] = []
    invalid: list[tuple[int, str]] = []
    first_line: dict[tuple[str, str], int] = {}
    seen: dict[str, int] = {}
    for number, text in read_lines(handle):
        try:
            episode, dated = parse_line(text, namespace, seen)
        except LINE_ERRORS as exc:
            invalid.append((number, reason(exc)))
            continue
        key = (episode.namespace, episode.id)
        if key in first_line:
            invalid.append((number, f"id {episode.id!r} repeats line {first_line[key]}"))
            continue
        first_line[key] = number
        valid.append(Line(number, episode, dated))
    return valid, invalid


def storable(store: EpisodeStore, lines: list[Line]) -> tuple[list[Line], list[tuple[int, str]]]:
    """Split valid lines into those the store accepts and (line number, reason) of the rest."""
    accepted: list[Line] = []
    refused: list[tuple[int, str]] = []
    for line in lines:
        try:
            store.check_episodes([line.episode])  # Chroma's metadata limits, reward range
            accepted.append(line)
        except LINE_ERRORS as exc:
            refused.append((line.number, reason(exc)))
    return accepted, refused


def find_stored(store: EpisodeStore, episodes: list[Episode]) -> dict[tuple[str, str], Episode]:
    """The stored episodes under the (namespace, id) of `episodes` (by namespace and id)."""
    by_namespace: dict[str, list[str]] = {}
    for episode in episodes:
        by_namespace.setdefault(episode.namespace, []).append(episode.id)
    found: dict[tuple[str, str], Episode] = {}
    for ns, ids in by_namespace.items():
        if store.count(ns) == 0:
            continue
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            try:
                hits = store.get(chunk, namespace=ns)
            except EpisodeNotFoundError:  # some are new: find out which, one by one
                hits = []
                for episode_id in chunk:
                    with contextlib.suppress(EpisodeNotFoundError):
                        hits += store.get([episode_id], namespace=ns)
            found.update(((ns, episode.id), episode) for episode in hits)
    return found


def differences(line: Line, stored: Episode) -> list[str]:
    """The fields in which the stored episode differs from the line's (created_at only if given)."""
    names = ["query", "response", "reward", "metadata"] + (["created_at"] if line.dated else [])
    return [name for name in names if getattr(line.episode, name) != getattr(stored, name)]


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (once; a second one is ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can handle signals
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the rollback finish
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def undo(store: EpisodeStore, attempted: list[Episode], say: Callable[[str], None]) -> None:
    """Delete what an interrupted ingest stored (the batch in flight may have landed)."""
    try:
        landed = find_stored(store, attempted)
        by_namespace: dict[str, list[str]] = {}
        for ns, episode_id in landed:
            by_namespace.setdefault(ns, []).append(episode_id)
        for ns, ids in by_namespace.items():
            store.delete(ids, namespace=ns)
    except KDMemoryError as exc:
        say(f"episodes stored before the stop below could not be removed again ({exc}): run "
            "the same command again to complete the ingest")
        return
    if landed:
        say(f"the {len(landed)} episodes stored before the stop below were removed again: "
            "nothing was ingested")


def store_all(memory: DistilledEpisodicMemory, episodes: list[Episode], batch_size: int, *,
              progress: bool, say: Callable[[str], None]) -> None:
    """Add `episodes` in batches; on an error, Ctrl-C or SIGTERM, remove what was added."""
    attempted = 0
    with sigterm_unwinds():
        try:
            with tqdm(total=len(episodes), unit="episode", desc="ingest",
                      disable=not progress) as bar:
                for start in range(0, len(episodes), batch_size):
                    batch = episodes[start : start + batch_size]
                    attempted = start + len(batch)
                    memory.add_episodes(batch)
                    bar.update(len(batch))
                    logger.info("stored %d of %d episodes", attempted, len(episodes))
        except BaseException:
            undo(memory.store, episodes[:attempted], say)
            raise


