"""The journal keeps its contract (`journal.py`): nothing acknowledged is lost, nothing deleted or
dropped comes back, a failed append is no acknowledgement, one file has one writer whatever its
names, bad paths are refused up front, and the file stays as small as what is pending.

Real parts only: Chroma on disk, the MiniLM embedder, LangChain's fake chat models, real
processes killed with SIGKILL (a child stops itself at a chosen point by waiting inside the real
store, as in `test_reliability_crash.py`), a real file-size limit for a full disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_writer import GatedEmbeddings, chain

from langchain_kd_memory import journal as journal_module
from langchain_kd_memory.callbacks import ConsolidationCallback
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.errors import ConfigError
from langchain_kd_memory.journal import Journal, read_entries
from langchain_kd_memory.memory import DistilledEpisodicMemory
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.writer import BackgroundWriter

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_journal  # noqa: E402 - the kill loop, shared with `make bench`

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "ANONYMIZED_TELEMETRY": "False", "PYTHONPATH": str(ROOT)}

CHILD_HEAD = """
import json, os, resource, signal, sys, threading, time, uuid
from pathlib import Path
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_kd_memory import ConsolidationCallback, DistilledEpisodicMemory
from langchain_kd_memory.embeddings import LocalEmbeddings
from langchain_kd_memory.storage import EpisodeStore
from langchain_kd_memory.writer import BackgroundWriter

root = Path(sys.argv[1])
chain = (ChatPromptTemplate.from_messages([("human", "{question}")])
         | FakeListChatModel(responses=["Sure."]) | StrOutputParser())

def say(**event):
    print(json.dumps(event), flush=True)
"""

SCENARIO = CHILD_HEAD + """
gate, entered = threading.Event(), threading.Event()
gate.set()

class GatedEmbeddings(LocalEmbeddings):  # the real MiniLM; writes wait while the gate is shut
    def embed_documents(self, texts):
        entered.set()
        gate.wait()
        return super().embed_documents(texts)

class StoppingStore(EpisodeStore):  # the real store, stopping the process at one point
    stop = False
    def update_rewards(self, rewards, namespace=None):
        if self.stop:
            (root / "reached").write_text("update_rewards")
            time.sleep(600)
        return super().update_rewards(rewards, namespace)

store = StoppingStore("scenario", embeddings=GatedEmbeddings(), persist_directory=str(root / "db"))
memory = DistilledEpisodicMemory(store=store)
writer = BackgroundWriter(memory, journal=root / "runs.journal", max_queue=1, put_timeout=0.0)
callback = ConsolidationCallback(memory)

def run(question):
    run_id = uuid.uuid4()
    chain.invoke({"question": question}, config={"callbacks": [callback], "run_id": run_id})
    return str(run_id)

deleted = run("my SSN is 123")
callback.wait()
store.delete([deleted])  # the user asks for it to be forgotten
entered.clear()  # set by the first run's write: wait for the next one's
gate.clear()
rated = run("rated while it is being written")
entered.wait()  # the writer holds it in the embedder
queued = run("queued")  # the queue (1 place) is full now
dropped = run("dropped")
assert callback.status.dropped == 1, callback.status
memory.record_feedback(rated, 0.7)  # acknowledged while the run is being written
say(deleted=deleted, rated=rated, queued=queued, dropped=dropped)
store.stop = True
gate.set()  # the run lands unrated; applying its rating stops the process in update_rewards
time.sleep(600)
"""

FULL_DISK = CHILD_HEAD + """
memory = DistilledEpisodicMemory(store=EpisodeStore(
    "fulldisk", embeddings=LocalEmbeddings(), persist_directory=str(root / "db")))
callback = ConsolidationCallback(memory, journal=root / "runs.journal")
chain.invoke({"question": "before the disk filled up"}, config={"callbacks": [callback]})
assert callback.wait(timeout=120)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
size = (root / "runs.journal").stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
for i in range(3):
    chain.invoke({"question": f"no room for this run {i}"}, config={"callbacks": [callback]})
status, writer = callback.status, callback.writer.status
say(queued=status.queued, failed=status.failed, errors=status.errors,
    last_error=type(status.last_error).__name__, writer_failed=writer.failed,
    writer_error=type(writer.last_error).__name__)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def gated() -> GatedEmbeddings:
    return GatedEmbeddings()


def start_child(script: str, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE,
                            stderr=(root / "child.log").open("w"), text=True, env=ENV)


def replay(root: Path, embeddings: LocalEmbeddings, name: str) -> EpisodeStore:
    """Open a new memory and writer on what a killed child left; wait for the replay."""
    store = EpisodeStore(name, embeddings=embeddings, persist_directory=str(root / "db"))
    writer = BackgroundWriter(DistilledEpisodicMemory(store=store), journal=root / "runs.journal")
    assert writer.flush(timeout=300)
    writer.close()
    return store


@pytest.mark.slow
def test_a_kill_brings_back_no_deleted_or_dropped_run_and_keeps_a_rating_given_mid_write(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    child = start_child(SCENARIO, tmp_path)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        deadline = time.monotonic() + 120
        while not (tmp_path / "reached").exists():
            assert child.poll() is None and time.monotonic() < deadline, (
                line + (tmp_path / "child.log").read_text())
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # the rated run is stored, its rating not yet
    finally:
        child.kill()
        child.wait()
    runs = json.loads(line)
    store = replay(tmp_path, embeddings, "scenario")
    stored = {episode.id: episode.reward for episode in store.list_episodes()}
    assert runs["deleted"] not in stored  # item 1: a deleted run does not come back
    assert runs["dropped"] not in stored  # item 1: nor does a dropped one
    assert stored == {runs["rated"]: 0.7, runs["queued"]: None}  # item 2: the rating is kept
    assert (tmp_path / "runs.journal").stat().st_size == 0  # caught up: nothing pending


@pytest.mark.slow
def test_a_journal_append_that_fails_is_no_acknowledgement(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    child = start_child(FULL_DISK, tmp_path)
    out, _ = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    status = json.loads(out.splitlines()[-1])
    assert status == {"queued": 1, "failed": 3, "errors": 3, "last_error": "JournalError",
                      "writer_failed": 3, "writer_error": "JournalError"}
    store = replay(tmp_path, embeddings, "fulldisk")
    assert [e.query for e in store.list_episodes()] == ["before the disk filled up"]


@pytest.mark.slow
def test_two_names_of_one_journal_are_one_journal(
    tmp_path: Path, gated: GatedEmbeddings
) -> None:
    memory = DistilledEpisodicMemory(store=EpisodeStore(
        "names", embeddings=gated, persist_directory=str(tmp_path / "db")))
    journal = tmp_path / "runs.journal"
    BackgroundWriter(memory, journal=journal)
    callback = ConsolidationCallback(memory)
    gated.close()
    ids = [uuid.uuid4() for _ in range(5)]
    for i, run_id in enumerate(ids):
        chain().invoke({"question": f"question {i}"},
                       config={"callbacks": [callback], "run_id": run_id})
    assert gated.entered.wait(timeout=60)
    hard, soft = tmp_path / "hard.journal", tmp_path / "soft.journal"
    os.link(journal, hard)
    soft.symlink_to(journal)
    other = DistilledEpisodicMemory(store=EpisodeStore(
        "names2", embeddings=gated, persist_directory=str(tmp_path / "db2")))
    for alias in (hard, soft):
        with pytest.raises(ConfigError, match="in use"):
            BackgroundWriter(other, journal=alias)
    assert callback.writer is not None
    callback.writer.use_journal(hard)  # the same file: the writer already journals to it
    gated.gate.set()
    assert callback.wait(timeout=120)
    assert [e.query for e in memory.store.get([str(i) for i in ids])] == [
        f"question {i}" for i in range(5)]


def _unusable_paths(tmp_path: Path) -> list[tuple[object, str]]:
    (tmp_path / "a-file").write_text("not a directory")
    os.mkfifo(tmp_path / "fifo")
    return [
        (tmp_path, "is a directory"),
        (tmp_path / "a-file" / "runs.journal", "not a directory"),
        ("", "empty"),
        ("   ", "empty"),
        ("/dev/null", "not a regular file"),
        (tmp_path / "fifo", "not a regular file"),
        (7, "file path"),
        (b"/tmp/runs.journal", "file path"),
        ("runs\x00.journal", "NUL"),
        ("/proc/kd-memory-runs.journal", "cannot open"),  # no file can be made there, root or not
    ]


def test_an_unusable_journal_path_is_a_config_error_up_front(
    tmp_path: Path, tmp_store: EpisodeStore
) -> None:
    memory = DistilledEpisodicMemory(store=tmp_store)
    for path, message in _unusable_paths(tmp_path):
        finished: list[BaseException | None] = []

        def attempt(path: object = path, finished: list[BaseException | None] = finished) -> None:
            try:
                BackgroundWriter(memory, journal=path)  # type: ignore[arg-type]
            except BaseException as exc:
                finished.append(exc)
            else:
                finished.append(None)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(timeout=30)
        if not finished:  # a writer blocked opening a FIFO: release it before failing
            os.close(os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK))
        assert finished, f"{path!r}: the writer blocked"
        assert isinstance(finished[0], ConfigError), f"{path!r}: {finished[0]!r}"
        assert message in str(finished[0]), f"{path!r}: {finished[0]}"
        with pytest.raises(ConfigError, match=message):  # the callback's way in, too
            ConsolidationCallback(memory, journal=path)  # type: ignore[arg-type]
    assert not Path(str(Path.cwd()) + ".lock").exists()  # "" made no <cwd>.lock
    assert not Path("/dev/null.lock").exists()
    writer = BackgroundWriter(memory, journal=tmp_path / "fine" / "runs.journal")
    assert writer.journal == (tmp_path / "fine" / "runs.journal").resolve()
    writer.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_directory_is_a_config_error(tmp_path: Path, tmp_store: EpisodeStore) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match="cannot open"):
        BackgroundWriter(DistilledEpisodicMemory(store=tmp_store), journal=directory / "j")


def test_the_journal_stays_as_large_as_what_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 2000)
    path = tmp_path / "runs.journal"
    journal = Journal(path)
    pending = []
    for i in range(300):
        n = journal.append("run", id=f"r{i}", episodes=[], pad="x" * 40)
        if i % 25 == 0:
            pending.append(n)  # 12 stay pending
        else:
            journal.done([n])
        live = sum(len(line) for line in path.read_bytes().splitlines() if b'"op":"run"' in line)
        assert path.stat().st_size <= max(2000, 4 * live) + 200  # compacted as it goes
    assert [entry.n for entry in read_entries(path)] == pending
    journal.close()
    reopened = Journal(path)  # what the next writer replays: the pending entries only
    assert [entry.fields["id"] for entry in reopened.replay] == [f"r{i}" for i in range(0, 300, 25)]
    reopened.done(pending)
    assert path.stat().st_size == 0  # nothing pending: empty
    reopened.close()


@pytest.mark.slow
def test_a_kill_at_any_point_of_a_compaction_leaves_the_same_live_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 1000)
    path = tmp_path / "runs.journal"
    journal = Journal(path)
    for i in range(3):
        journal.append("run", id=f"p{i}", episodes=[])
    states: list[bytes] = []
    real_write, real_truncate = Journal._write, Journal._truncate

    def write(self: Journal, data: bytes, offset: int) -> None:
        states.append(path.read_bytes())  # what a kill before this write leaves
        if offset == 0 and len(data) > 20:  # compaction step (b), cut short at every length
            states.extend(data[:cut] + states[-1][cut:] for cut in range(1, len(data), 7))
        real_write(self, data, offset)

    def truncate(self: Journal, size: int) -> None:
        states.append(path.read_bytes())
        real_truncate(self, size)

    monkeypatch.setattr(Journal, "_write", write)
    monkeypatch.setattr(Journal, "_truncate", truncate)
    for i in range(40):
        journal.done([journal.append("run", id=f"d{i}", episodes=[], pad="y" * 30)])
    states.append(path.read_bytes())
    journal.close()
    assert len(path.read_bytes()) < 1000  # it was compacted
    for state in states:  # each one a kill could leave
        path.write_bytes(state)
        live = [entry.fields["id"] for entry in read_entries(path)]
        assert live[:3] == ["p0", "p1", "p2"]  # the pending entries, once each
        assert len(live) <= 4  # and at most the one appended just before the kill


@pytest.mark.slow
def test_kill_loop_loses_resurrects_and_duplicates_nothing(
    tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    """A few random SIGKILLs (`benchmarks/bench_journal.py` runs 30 and more)."""
    counts = bench_journal.run(3, root=tmp_path, embeddings=embeddings, seed=1,
                               window=(0.2, 1.5))
    assert counts.problems == []
    assert (counts.lost_runs, counts.lost_ratings, counts.resurrected, counts.duplicated) == (
        0, 0, 0, 0)
    assert counts.replayed_after_clean_stop == 0 and counts.journal_bytes_after_catch_up == 0
    assert counts.kills == 3 and counts.runs > 0 and counts.ratings > 0

