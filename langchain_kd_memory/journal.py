"""The journal: a write-ahead log of what a `BackgroundWriter` acknowledged and has not stored yet.

Contract
--------
The file is a sequence of lines, each ``<crc32 of the JSON, 8 hex digits> <JSON object>``.
The objects are *entries*, numbered ``n`` in the order they were appended, and records about
them:

- ``{"op": "run", "n", "id", "episodes"}``: a run handed to the writer (`Episode.to_dict` each).
- ``{"op": "rate", "n", "target", "reward"}``: feedback for a run that is still pending.
- ``{"op": "done", "done": [n, ...]}``: the checkpoint: these entries are in the store (a run
  written with its ratings) or no longer wanted (a run dropped by `forget`, a permanent refusal).
- ``{"op": "base", "next", "live": [n, ...]}``: written by compaction: every entry numbered below
  ``next`` that is not in ``live`` is done.

An entry is *live* until a ``done`` or a ``base`` says otherwise. The writer keeps this promise:

1. **Append, then acknowledge.** `submit` (a run) and `record_feedback` for a pending run append
   their entry (one ``pwrite``; then ``fsync`` when asked) before they return. A failed append
   (disk full, I/O error) raises `JournalError`: it is never an acknowledgement. `submit` then
   reports the run as failed (the recorder's and the writer's `status.failed` and `last_error`);
   `record_feedback` raises it to its caller. A run dropped because the queue stayed full is never
   appended, so it cannot come back.
2. **Checkpoint after the store.** Once a run and the ratings that arrived for it are in the store
   (or the run is refused for good, or dropped by `forget`), one ``done`` record names all their
   entries, before the writer lets go of the run: feedback and `forget` find a run pending until
   its ``done`` is written, and in the store after. A rating of a run already written goes to the
   store directly (`record_feedback` asks pending runs first) and never enters the journal.
3. **Replay applies the live entries only**, in order: each live run with the live ratings that
   follow it folded in (the last one wins). A run already stored as it is is skipped; one stored
   with other rewards (it was written, then rated, before a kill) gets the rewards through the
   store's rating update; a stored episode with other content is a permanent refusal. So replay
   is idempotent, never loses an acknowledged rating and never brings back a run that was
   deleted after its ``done`` or dropped.
4. **Bounded size.** When no entry is live the file is truncated to zero bytes: after a clean stop
   (`flush`, `close`, interpreter exit) the journal is empty and replays nothing. While runs keep
   coming, a file over `COMPACT_MIN_BYTES` whose live lines take under a quarter of it is
   compacted in place to its live lines (below), so its size stays a small multiple of what is
   pending.
5. **The lock is on the file itself**: ``flock(LOCK_EX | LOCK_NB)`` on the open descriptor, so two
   writers on one file conflict whatever names they use (a hard link, a symlink), in one process
   or several; the second gets `ConfigError`. Compaction rewrites the file in place (it never
   renames), so the lock always covers the file that is read. The operating system releases the
   lock when the process dies.
6. **Paths are checked up front** (`check_path`): not a path, empty, a NUL byte, a directory, a
   FIFO, a device or socket, a parent that is a file, a place that cannot be created or written:
   `ConfigError` saying what to give instead, before any lock is taken.

What a kill leaves, at each step:

- during an append: a line without its newline (or with a bad checksum) at the end. It was never
  acknowledged; the next open cuts it off.
- after the store write, before the ``done``: the run is live and replayed: written again as a
  no-op, or its rewards set again (3.).
- during compaction, which (a) appends a ``base`` and copies of the live lines at the end, (b)
  writes the same bytes at offset 0, (c) truncates the file to their length: after (a) the file
  holds every entry twice (an entry is identified by ``n``: read once); during or after (b) the
  head of the file is the new copy, possibly cut mid-line (bad checksums, skipped), then old lines
  that the ``base`` marks done, then the complete copy at the end; after (c) only the copy.

Without ``fsync`` all of this survives a killed process (the kernel holds the written pages), not
a power loss or kernel crash; with ``fsync=True`` each append, ``done`` and compaction step is
flushed to the disk before it counts.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_kd_memory.errors import ConfigError, JournalError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the journal is not locked
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

COMPACT_MIN_BYTES = 1 << 20
"""A journal is compacted only once it is larger than this (and mostly done)."""
ENTRY_OPS = ("run", "rate")


@dataclass(frozen=True)
class Entry:
    """A live journal entry: its number, its op ("run" or "rate") and its fields."""

    n: int
    op: str
    fields: dict[str, Any]


def check_path(journal: object) -> Path:
    """The journal's absolute path, or `ConfigError` saying what is wrong with it.

    Nothing is created or opened here: it looks at the path only (a FIFO is refused before
    anything could block on it).
    """
    if isinstance(journal, bytes) or not isinstance(journal, (str, os.PathLike)):
        raise ConfigError(
            f"journal must be a file path (str or os.PathLike), got {type(journal).__name__}"
        )
    text = os.fspath(journal)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"journal path {text!r} is empty: give a file path such as './kd_memory/runs.journal'"
        )
    if "\x00" in text:
        raise ConfigError(f"journal path {text!r} contains a NUL character")
    try:
        path = Path(text).expanduser().resolve()
        info: os.stat_result | None = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"journal path {text!r} is not usable ({exc}): give another") from exc
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"journal {str(path)!r} is a directory: give a file in it, e.g. "
            f"{str(path / 'runs.journal')!r}"
        )
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"journal {str(path)!r} is not a regular file (a FIFO, device or socket): give the "
            "path of a regular file"
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"journal {str(path)!r} cannot be created: {str(parent)!r} is not a directory; "
            "give a path in a directory"
        )
    return path


def _line(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _record(line: bytes) -> dict[str, Any] | None:
    """The record of a complete line, or None if it is damaged (bad checksum or JSON)."""
    crc, _, payload = line.rstrip(b"\n").partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(payload) or len(crc) != 8:
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@dataclass
class _Contents:
    """What a journal file says: its live entries (line and record, by n) and more."""

    live: dict[int, tuple[bytes, dict[str, Any]]]
    next_n: int
    complete: int  # length of the complete lines (a torn last line is cut)
    damaged: int  # complete lines skipped


def _parse(data: bytes) -> _Contents:
    complete = data.rfind(b"\n") + 1
    entries: dict[int, tuple[bytes, dict[str, Any]]] = {}
    done: set[int] = set()
    base: dict[str, Any] | None = None
    damaged = 0
    for line in data[:complete].splitlines(keepends=True):
        record = _record(line)
        op = None if record is None else record.get("op")
        if record is None or op not in (*ENTRY_OPS, "done", "base"):
            damaged += 1
        elif op == "done":
            done.update(record["done"])
        elif op == "base":
            if base is None or record["next"] > base["next"]:
                base = record
        else:
            entries.setdefault(int(record["n"]), (line, record))
    highest = max(entries, default=0)
    if base is not None:
        kept = set(base["live"])
        done.update(n for n in entries if n < base["next"] and n not in kept)
        highest = max(highest, int(base["next"]) - 1)
    live = {n: entries[n] for n in sorted(entries) if n not in done}
    return _Contents(live, highest + 1, complete, damaged)


def read_entries(path: str | os.PathLike[str]) -> list[Entry]:
    """The live entries of a journal file, without opening it for writing (for inspection)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [Entry(n, record["op"], record) for n, (_, record) in _parse(data).live.items()]


class Journal:
    """One journal file, opened and locked for one writer (see the module's contract)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        """Open (creating it and its directory) and lock the journal; read its live entries.

        Raises:
            ConfigError: The path is unusable (see `check_path`), or another writer holds it.
        """
        self.path = check_path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the journal {str(self.path)!r}: {exc}; give a path in a writable "
                "directory"
            ) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"journal {str(self.path)!r} is not a regular file")
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    raise ConfigError(
                        f"journal {str(self.path)!r} is in use by another writer (in this "
                        "process or another, maybe under another name): give each memory's "
                        "writer its own journal"
                    ) from exc
            contents = _parse(_read_all(fd))
            if contents.damaged:
                logger.warning("journal %s: skipped %d damaged lines", self.path, contents.damaged)
            if contents.complete < os.fstat(fd).st_size:
                logger.warning("journal %s: cutting off a line cut short by a kill", self.path)
                os.ftruncate(fd, contents.complete)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = contents.complete
        self._next = contents.next_n
        self._live = {n: line for n, (line, _) in contents.live.items()}
        self.replay = [Entry(n, record["op"], record) for n, (_, record) in contents.live.items()]
        """The live entries found at open, in order (the writer replays them, then clears it)."""

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return self._size

    @property
    def live(self) -> int:
        """How many entries are live (appended, not done)."""
        return len(self._live)

    def append(self, op: str, **fields: Any) -> int:
        """Append an entry (fsynced if asked) and return its number.

        Raises:
            JournalError: It could not be written (not acknowledged: nothing of it counts).
        """
        with self._lock:
            n = self._next
            line = _line({"op": op, "n": n, **fields})
            try:
                self._write(line, self._size)
            except OSError as exc:
                self._cut()
                raise JournalError(
                    f"journal {str(self.path)!r}: cannot append ({exc}); free space or fix the "
                    "disk: runs and ratings are not acknowledged meanwhile"
                ) from exc
            self._next += 1
            self._size += len(line)
            self._live[n] = line
            return n

    def done(self, entries: Iterable[int]) -> None:
        """Checkpoint: these entries need no replay. Truncates or compacts the file when it can.

        Raises:
            JournalError: The record could not be written (the entries stay live on disk and
                are replayed, harmlessly, at the next start).
        """
        with self._lock:
            finished = [n for n in entries if self._live.pop(n, None) is not None]
            if not finished:
                return
            try:
                if not self._live:
                    self._truncate(0)
                    return
                line = _line({"op": "done", "done": finished})
                self._write(line, self._size)
                self._size += len(line)
                live_bytes = sum(map(len, self._live.values()))
                if self._size > COMPACT_MIN_BYTES and 4 * live_bytes < self._size:
                    self._compact()
            except OSError as exc:
                self._cut()
                raise JournalError(f"journal {str(self.path)!r}: cannot checkpoint: {exc}") from exc

    def close(self) -> None:
        """Close the file (which releases the lock)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # ----------------------------------------------------------------- file operations

    def _write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        if self.fsync:
            os.fsync(self._fd)

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        if self.fsync:
            os.fsync(self._fd)
        self._size = size

    def _cut(self) -> None:
        """After a failed write: drop whatever part of it reached the file."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass  # the next open cuts a torn line anyway

    def _compact(self) -> None:
        """Rewrite the file in place as its live lines (three steps, see the module's docs)."""
        blob = _line({"op": "base", "next": self._next, "live": list(self._live)}) + b"".join(
            self._live.values()
        )
        self._write(blob, self._size)  # (a) a complete copy at the end
        self._write(blob, 0)  # (b) the same at the start
        self._truncate(len(blob))  # (c)
        logger.debug("journal %s: compacted to %d live entries", self.path, len(self._live))


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
