"""The `kd-memory` command, run in-process through `main(argv)` and once as the installed script.

Real parts: embedded Chroma in temporary directories, the real MiniLM, tiny real training.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from langchain_kd_memory.cli import main
from langchain_kd_memory.embeddings import LocalEmbeddings

GOOD = ["reset my password", "update my billing address", "export my data", "change my email"]
BAD = ["get a refund after a year", "delete someone else's account", "bypass two-factor login",
       "cancel an order already shipped"]
COMMANDS = ["ingest", "consolidate", "score", "compare", "recall", "stats", "export", "plot"]


def synthetic_rows(n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """Rated support episodes whose reward depends on the topic: ~0.8 good, ~0.2 bad."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        topic = rng.choice(GOOD if good else BAD)
        rows.append({
            "id": f"ep{i}",
            "query": f"How do I {topic}? (ticket {i})",
            "response": f"Here is how to {topic}: step {i % 5}.",
            "reward": round((0.8 if good else 0.2) + rng.uniform(-0.15, 0.15), 3),
            "metadata": {"topic": topic, "ticket": i},
        })
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, "--json", *argv)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, embeddings: LocalEmbeddings
) -> tuple[str, dict[str, Any]]:
    """A store with 60 rated synthetic episodes and a consolidated model: (persist dir, report)."""
    root = tmp_path_factory.mktemp("cli_trained")
    source = write_jsonl(root / "episodes.jsonl", synthetic_rows())
    persist = str(root / "db")
    assert main(["--quiet", "--persist-dir", persist, "ingest", str(source)]) == 0
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        code = main(["--json", "--persist-dir", persist, "consolidate", "--epochs", "6",
                     "--seed", "0"])
    assert code == 0
    return persist, json.loads(report.getvalue())


# ----------------------------------------------------------------------------- help, usage


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out
    for command in COMMANDS:
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        assert "examples:" in out and f"kd-memory {command}" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys)[0] == 2  # no command
    code, _, err = run(capsys, "recall", "x", "-k", "0")
    assert code == 2 and "-k" in err
    code, _, err = run(capsys, "--chroma-port", "8000", "stats")
    assert code == 2 and "--chroma-host" in err
    code, _, err = run(capsys, "--persist-dir", str(tmp_path / "nothing"), "stats")
    assert code == 2 and "no memory at" in err
    assert not (tmp_path / "nothing").exists()  # a read-only command creates nothing
    code, _, err = run(capsys, "ingest", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in err
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    code, _, err = run(capsys, "--persist-dir", str(tmp_path / "db"), "ingest", str(garbage))
    assert code == 2 and f"{garbage}:1: invalid JSON" in err
    assert not (tmp_path / "db").exists()  # a file of bad lines creates no database


def test_a_bad_json_line_reports_the_column_of_the_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = '{"query": "How do I reset my password?", "reward": 1.0'  # no closing brace
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    code, _, err = run(capsys, "--persist-dir", str(tmp_path / "db"), "ingest", str(bad))
    assert code == 2 and f"{bad}:1: invalid JSON: Expecting ',' delimiter (column 55)" in err


def test_errors_are_one_line_without_traceback_unless_verbose(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    persist = str(tmp_path / "db")
    source = write_jsonl(tmp_path / "few.jsonl", synthetic_rows(4))
    assert run(capsys, "--persist-dir", persist, "ingest", str(source))[0] == 0
    code, out, err = run(capsys, "--persist-dir", persist, "score", "hello")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("kd-memory: error: ")
    assert "4 rated episodes" in err and "kd-memory consolidate" in err
    code, _, err = run(capsys, "-v", "--persist-dir", persist, "consolidate")
    assert code == 1 and "Traceback" in err and "InsufficientDataError" in err


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--chroma-host", "127.0.0.1", "--chroma-port", "1", "stats")
    assert code == 1
    assert "127.0.0.1:1" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- ingest


def test_ingest_reports_every_bad_line_and_stores_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = synthetic_rows(3)
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(
        b"\n".join([
            json.dumps(good[0]).encode(),                     # 1 ok
            b'{"query": "unterminated',                       # 2 invalid JSON
            json.dumps(good[1]).encode(),                     # 3 ok
            json.dumps({"response": "no query"}).encode(),    # 4 no query
            json.dumps({"query": "q", "reward": "high"}).encode(),  # 5 reward not a number
            b"[1, 2]",                                        # 6 not an object
            b"   ",                                           # 7 blank: ignored
            json.dumps({**good[2], "id": "ep0"}).encode(),    # 8 repeats the id of line 1
            b'{"query": "caf\xe9"}',                          # 9 not UTF-8
            json.dumps({"query": "q", "colour": "red"}).encode(),  # 10 unknown field
            json.dumps({"query": "q", "metadata": {"$in": 1}}).encode(),  # 11 Chroma's key
        ]) + b"\n"
    )
    persist = tmp_path / "db"
    code, out, err = run(capsys, "--persist-dir", str(persist), "ingest", str(source))
    assert code == 2 and out == ""
    bad = {int(line.split(":")[1]) for line in err.splitlines() if line.startswith(str(source))}
    assert bad == {2, 4, 5, 6, 8, 9, 10, 11}
    assert f"{source}:2: invalid JSON" in err
    assert f"{source}:5: reward must be a finite number" in err
    assert f"{source}:8: id 'ep0' repeats line 1" in err
    assert f"{source}:11: metadata key '$in'" in err
    assert "8 invalid line(s)" in err and "nothing was ingested" in err
    assert run_json(capsys, "--persist-dir", str(persist), "stats")["namespaces"] in (
        {}, {"default": {"episodes": 0, "rated": 0,
                         "reward": {"min": None, "mean": None, "max": None}}},
    )

    result = run_json(capsys, "--persist-dir", str(persist), "ingest", str(source),
                      "--skip-invalid")
    assert result["ingested"] == 2
    assert result["invalid_lines_skipped"] == [2, 4, 5, 6, 8, 9, 10, 11]
    stats = run_json(capsys, "--persist-dir", str(persist), "stats")
    assert stats["namespaces"]["default"]["episodes"] == 2


def test_huge_numbers_and_deep_nesting_are_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What json or float raise on such lines (OverflowError, RecursionError, ValueError) is a
    FILE:LINE reason: exit 2, or the line is skipped with --skip-invalid; never a traceback."""
    deep = "[" * 100_000 + "]" * 100_000
    source = tmp_path / "extreme.jsonl"
    source.write_text("\n".join([
        json.dumps({"query": "fine"}),                                   # 1 ok
        '{"query": "q", "reward": 1' + "0" * 400 + "}",                  # 2 401-digit reward
        '{"query": "q", "metadata": {"n": 1' + "0" * 400 + "}}",         # 3 401-digit metadata
        deep,                                                            # 4 nested 100k deep
        '{"query": "q", "metadata": {"x": ' + deep + "}}",               # 5 deep inside
        '{"query": "q", "reward": 1' + "0" * 5000 + "}",                 # 6 5001 digits
        '{"query": "q", "reward": 1e400}',                               # 7 inf
    ]) + "\n")
    persist = str(tmp_path / "db")
    code, out, err = run(capsys, "--persist-dir", persist, "ingest", str(source))
    assert code == 2 and out == "" and "Traceback" not in err
    reported = [line for line in err.splitlines() if line.startswith(f"{source}:")]
    assert [int(line.split(":")[1]) for line in reported] == [2, 3, 4, 5, 6, 7]
    assert f"{source}:4: JSON nested too deeply" in err
    result = run_json(capsys, "--persist-dir", persist, "ingest", str(source), "--skip-invalid")
    assert result["ingested"] == 1 and result["invalid_lines_skipped"] == [2, 3, 4, 5, 6, 7]


@pytest.mark.slow
def test_reingest_skips_identical_episodes_and_refuses_changed_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = synthetic_rows(4)
    rows[3].pop("id")  # ids derived from the line's content
    persist = str(tmp_path / "db")
    first = write_jsonl(tmp_path / "first.jsonl", rows)
    assert run_json(capsys, "--persist-dir", persist, "ingest", str(first))["ingested"] == 4

    again = run_json(capsys, "--persist-dir", persist, "ingest", str(first))
    assert again["ingested"] == 0 and again["already_stored_skipped"] == 4

    changed = [*rows, {"id": "ep9", "query": "a new one", "reward": 0.5}]
    changed[1] = {**rows[1], "reward": 0.99}  # another episode under a stored id
    second = write_jsonl(tmp_path / "second.jsonl", changed)
    code, out, err = run(capsys, "--persist-dir", persist, "ingest", str(second))
    assert code == 2 and out == ""
    assert f"{second}:2: id 'ep1' is stored in namespace 'default' with another reward" in err
    assert "--skip-existing" in err and "nothing was ingested" in err
    result = run_json(capsys, "--persist-dir", persist, "ingest", str(second), "--skip-existing")
    assert result["ingested"] == 1 and result["already_stored_skipped"] == 4
    stats = run_json(capsys, "--persist-dir", persist, "stats")
    assert stats["namespaces"]["default"]["episodes"] == 5
    stored = {e["id"]: e for e in map(json.loads, run(capsys, "--persist-dir", persist,
                                                          "export")[1].splitlines())}
    assert stored["ep1"]["reward"] == rows[1]["reward"]  # --skip-existing keeps the stored one


@pytest.mark.slow
def test_export_then_ingest_round_trips(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"id": "a", "query": "How do I reset my password?", "response": "Use the link.",
         "reward": 0.9, "metadata": {"topic": "account", "n": 3, "ok": True, "x": 1.5}},
        {"id": "b", "query": "Refund after a year?", "response": "", "reward": None,
         "namespace": "user/42", "created_at": "2024-05-01T12:30:00+00:00"},
        {"query": "No id given", "response": "fine", "reward": -2, "namespace": "user/42"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert run(capsys, "--persist-dir", str(tmp_path / "db1"), "ingest", str(source))[0] == 0
    code, _, err = run(capsys, "--persist-dir", str(tmp_path / "db1"), "export", "--out",
                       str(first))
    assert code == 0 and "exported 3 episodes from 2 namespace(s)" in err
    assert run(capsys, "--persist-dir", str(tmp_path / "db2"), "ingest", str(first))[0] == 0
    assert run(capsys, "--persist-dir", str(tmp_path / "db2"), "export", "--out",
               str(second))[0] == 0

    exported = sorted(first.read_text().splitlines())
    assert exported == sorted(second.read_text().splitlines())
    episodes = {e["query"]: e for e in map(json.loads, exported)}
    assert episodes["How do I reset my password?"]["metadata"] == rows[0]["metadata"]
    assert episodes["Refund after a year?"]["reward"] is None
    assert episodes["Refund after a year?"]["namespace"] == "user/42"
    assert episodes["Refund after a year?"]["created_at"] == "2024-05-01T12:30:00+00:00"
    assert set(episodes["How do I reset my password?"]) == {
        "id", "query", "response", "reward", "metadata", "namespace", "created_at"
    }  # no embeddings

    code, out, _ = run(capsys, "--persist-dir", str(tmp_path / "db1"), "--namespace", "user/42",
                       "export")
    assert code == 0 and len(out.splitlines()) == 2


# ----------------------------------------------------------------------------- interrupted ingest


def kd_memory_script() -> Path:
    script = Path(sys.executable).parent / "kd-memory"
    if not script.exists():
        pytest.skip("the kd-memory script is not installed in this environment")
    return script


def unrated_rows(n: int) -> list[dict[str, Any]]:
    """Short episodes, most without an id or a response (cheap to embed); two identical lines."""
    rows: list[dict[str, Any]] = [{"query": f"question {i}", "reward": i % 5} for i in range(n)]
    for i in range(0, n, 7):
        rows[i] = {**rows[i], "id": f"given-{i}", "response": f"answer {i}"}
    rows[2] = dict(rows[1])  # the same line twice: two episodes
    return rows


class Ingest:
    """`kd-memory -v ingest` as a subprocess whose progress lines can be waited for."""

    def __init__(self, persist: Path, source: Path, batch_size: int) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [str(kd_memory_script()), "-v", "--persist-dir", str(persist), "ingest", str(source),
             "--batch-size", str(batch_size)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_until_stored(self, count: int) -> None:
        """Block until the ingest reports at least `count` episodes stored."""
        while (line := self.lines.get(timeout=300)) is not None:
            found = re.search(r"stored (\d+) of (\d+) episodes", line)
            if found and int(found[1]) >= count:
                return
        raise AssertionError(f"the ingest ended before storing {count}: {''.join(self.stderr)}")

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=300)
        while self.lines.get(timeout=60) is not None:
            pass
        return code


def stored_count(capsys: pytest.CaptureFixture[str], persist: Path) -> int:
    namespaces = run_json(capsys, "--persist-dir", str(persist), "stats")["namespaces"]
    return sum(row["episodes"] for row in namespaces.values())


@pytest.mark.slow
def test_sigterm_mid_ingest_stores_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """SIGTERM (kill, timeout, a container stop) rolls back like Ctrl-C."""
    source = write_jsonl(tmp_path / "many.jsonl", unrated_rows(3000))
    persist = tmp_path / "db"
    ingest = Ingest(persist, source, batch_size=50)
    ingest.wait_until_stored(100)
    assert ingest.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    err = "".join(ingest.stderr)
    assert "were removed again: nothing was ingested" in err and "Traceback" not in err
    assert stored_count(capsys, persist) == 0


@pytest.mark.slow
def test_rerun_after_sigkill_stores_every_episode_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """SIGKILL cannot be caught and leaves the first batches; the same command completes it."""
    rows = unrated_rows(300)
    source = write_jsonl(tmp_path / "some.jsonl", rows)
    persist = tmp_path / "db"
    ingest = Ingest(persist, source, batch_size=20)
    ingest.wait_until_stored(60)
    assert ingest.stop(signal.SIGKILL) == -signal.SIGKILL
    left = stored_count(capsys, persist)
    assert 60 <= left < len(rows)  # a prefix survived the kill

    result = run_json(capsys, "--persist-dir", str(persist), "ingest", str(source))
    assert result["already_stored_skipped"] == left
    assert result["ingested"] == len(rows) - left
    exported = [json.loads(line) for line in run(capsys, "--persist-dir", str(persist),
                                                 "export")[1].splitlines()]
    def key(row: dict[str, Any]) -> tuple[str, str, float]:
        return row["query"], row.get("response", ""), float(row["reward"])

    assert sorted(map(key, exported)) == sorted(map(key, rows))  # each exactly once
    assert len({row["id"] for row in exported}) == len(rows)
    again = run_json(capsys, "--persist-dir", str(persist), "ingest", str(source))
    assert again["ingested"] == 0 and again["already_stored_skipped"] == len(rows)


def test_derived_ids_do_not_depend_on_the_path_or_blank_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy read from another directory, with blank lines added, adds nothing twice."""
    rows = unrated_rows(8)
    persist = str(tmp_path / "db")
    first = write_jsonl(tmp_path / "a.jsonl", rows)
    assert run_json(capsys, "--persist-dir", persist, "ingest", str(first))["ingested"] == 8
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    (elsewhere / "b.jsonl").write_text("\n\n" + first.read_text().replace("\n", "\n\n"))
    monkeypatch.chdir(elsewhere)
    again = run_json(capsys, "--persist-dir", persist, "ingest", "b.jsonl")
    assert again["ingested"] == 0 and again["already_stored_skipped"] == 8
    other = run_json(capsys, "--persist-dir", persist, "--namespace", "other", "ingest",
                     "b.jsonl")
    assert other["ingested"] == 8  # another namespace: other ids, nothing shared


# ----------------------------------------------------------------------------- the model


@pytest.mark.slow
def test_consolidate_reports_and_saves_a_checkpoint(trained: tuple[str, dict[str, Any]]) -> None:
    _, report = trained
    assert report["episodes_used"] == 60
    assert report["num_train"] + report["num_val"] == 60 and report["num_val"] > 0
    assert report["checkpoint_version"] == 1 and Path(report["checkpoint_path"]).is_file()
    val = report["validation_mae"]
    assert val["student_mae"] < val["mean_mae"]  # the topic signal is learnable
    assert 1 <= report["student"]["best_epoch"] <= report["student"]["epochs_run"] <= 6


@pytest.mark.slow
def test_consolidate_min_episodes_flag(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]]
) -> None:
    """--min-episodes sets the one minimum, also over the settings of a loaded checkpoint."""
    persist, _ = trained
    code, out, err = run(capsys, "--persist-dir", persist, "consolidate", "--min-episodes", "61")
    assert code == 1 and out == ""
    assert "60 rated episodes" in err and "at least 61" in err and "Traceback" not in err
    code, _, err = run(capsys, "--persist-dir", persist, "consolidate", "--min-episodes", "1")
    assert code == 2 and "--min-episodes" in err
    stats = run_json(capsys, "--persist-dir", persist, "stats")
    assert stats["model"]["checkpoint_version"] == 1  # nothing was trained


@pytest.mark.slow
def test_score_prints_estimate_quantiles_and_histogram(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]]
) -> None:
    persist, _ = trained
    good = run_json(capsys, "--persist-dir", persist, "score", "How do I reset my password?")
    bad = run_json(capsys, "--persist-dir", persist, "score", "How do I bypass two-factor login?")
    assert good["expected"] > bad["expected"]
    assert len(good["distribution"]) == 64 and abs(sum(good["distribution"]) - 1) < 1e-6
    quantiles = [good["quantiles"][q] for q in ("0.1", "0.5", "0.9")]
    assert quantiles == sorted(quantiles) and good["std"] > 0

    code, out, _ = run(capsys, "--persist-dir", persist, "score", "How do I export my data?")
    assert code == 0
    assert "±" in out and "10%:" in out and "90%:" in out
    rows = [line for line in out.splitlines() if line.rstrip().endswith("%") and ".." in line]
    assert len(rows) == 16
    assert abs(sum(float(line.split()[-1].rstrip("%")) for line in rows) - 100) < 1

    code, _, err = run(capsys, "--persist-dir", persist, "score", "   ")
    assert code == 2 and "query" in err


@pytest.mark.slow
def test_compare_shows_both_networks(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]]
) -> None:
    persist, _ = trained
    query = "How do I reset my password?"
    plain = run_json(capsys, "--persist-dir", persist, "compare", query)
    assert plain["teacher_params"] > plain["student_params"]
    assert plain["compression_ratio"] == pytest.approx(
        plain["teacher_params"] / plain["student_params"]
    )
    assert set(plain["similarity"]) >= {"prediction_match", "kl_divergence"}
    answered = run_json(capsys, "--persist-dir", persist, "compare", query, "--response",
                        "Here is how to bypass two-factor login: step 1.")
    assert answered["student"]["expected"] == pytest.approx(plain["student"]["expected"])
    assert answered["teacher"]["expected"] != pytest.approx(plain["teacher"]["expected"])
    code, out, _ = run(capsys, "--persist-dir", persist, "compare", query)
    assert code == 0 and "compression ratio" in out and "teacher" in out


@pytest.mark.slow
def test_recall_ranks_by_score(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]]
) -> None:
    persist, _ = trained
    docs = run_json(capsys, "--persist-dir", persist, "recall", "forgot my password", "-k", "3")
    assert len(docs) == 3
    assert [d["score"] for d in docs] == sorted((d["score"] for d in docs), reverse=True)
    assert all("password" in d["query"] and d["reward"] is not None for d in docs)
    similar = run_json(capsys, "--persist-dir", persist, "recall", "forgot my password", "-k",
                       "3", "--reward-weight", "0")
    assert [d["score"] for d in similar] == pytest.approx([d["similarity"] for d in similar])
    code, out, _ = run(capsys, "--persist-dir", persist, "recall", "forgot my password", "-k", "2")
    assert code == 0 and "->" in out and len([ln for ln in out.splitlines() if "->" in ln]) == 2


@pytest.mark.slow
def test_stats_describes_store_and_model(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]]
) -> None:
    persist, _ = trained
    rewards = [row["reward"] for row in synthetic_rows()]
    stats = run_json(capsys, "--persist-dir", persist, "stats")
    row = stats["namespaces"]["default"]
    assert (row["episodes"], row["rated"]) == (60, 60)
    assert row["reward"]["min"] == pytest.approx(min(rewards), abs=1e-6)
    assert row["reward"]["max"] == pytest.approx(max(rewards), abs=1e-6)
    assert row["reward"]["mean"] == pytest.approx(np.mean(rewards), abs=1e-5)
    assert stats["model"]["trained"] and stats["model"]["checkpoint_version"] == 1
    assert stats["model"]["trained_on"] == 60
    assert stats["embedder"] == {"name": "sentence-transformers/all-MiniLM-L6-v2",
                                 "dimension": 384}
    code, out, _ = run(capsys, "--persist-dir", persist, "stats")
    assert code == 0 and "checkpoint v1" in out and "all-MiniLM-L6-v2" in out


@pytest.mark.slow
def test_stats_and_score_show_the_model_that_answers_for_the_namespace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    persist = ["--persist-dir", str(tmp_path / "db")]
    source = write_jsonl(tmp_path / "eps.jsonl", synthetic_rows(24))
    train = ["consolidate", "--epochs", "2", "--seed", "0"]
    assert run(capsys, *persist, "ingest", str(source))[0] == 0
    assert run(capsys, *persist, "--namespace", "default", *train)[0] == 0  # its own model only
    model = run_json(capsys, *persist, "stats")["model"]
    assert (model["trained"], model["namespace"], model["checkpoint_version"]) == (
        True, "default", 1)
    assert "namespaces" in Path(model["checkpoint_path"]).parts
    code, out, _ = run(capsys, *persist, "stats")
    assert code == 0 and "namespace 'default''s own model" in out and "checkpoint v1" in out

    assert run(capsys, *persist, "--namespace", "user-42", "ingest", str(source))[0] == 0
    for _ in range(2):
        assert run(capsys, *persist, "--namespace", "user-42", *train)[0] == 0
    assert run(capsys, *persist, *train)[0] == 0  # the shared model, v1
    model = run_json(capsys, *persist, "--namespace", "user-42", "stats")["model"]
    assert (model["namespace"], model["checkpoint_version"]) == ("user-42", 2)
    estimate = run_json(capsys, *persist, "--namespace", "user-42", "score", "reset password?")
    assert (estimate["model_namespace"], estimate["model_version"]) == ("user-42", 2)
    code, out, _ = run(capsys, *persist, "--namespace", "user-42", "score", "reset password?")
    assert code == 0 and "namespace 'user-42''s own model, checkpoint v2" in out
    model = run_json(capsys, *persist, "--namespace", "someone-else", "stats")["model"]
    assert (model["namespace"], model["checkpoint_version"]) == (None, 1)
    assert "namespaces" not in Path(model["checkpoint_path"]).parts
    code, out, _ = run(capsys, *persist, "--namespace", "someone-else", "stats")
    assert code == 0 and "the shared model" in out


@pytest.mark.slow
def test_export_to_dash_writes_stdout(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "--persist-dir", trained[0], "export", "--out", "-")
    assert code == 0 and len(out.splitlines()) == 60
    assert not (tmp_path / "-").exists()


@pytest.mark.slow
def test_a_reader_that_stops_early_gets_no_broken_pipe_error(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`kd-memory score ... | head -1`: the pipe closes before the output is flushed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    closed_pipe = open(write_end, "w")  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    code = main(["--persist-dir", trained[0], "score", "How do I reset my password?"])
    closed_pipe.flush()  # what interpreter exit does: nothing is left to fail
    closed_pipe.close()
    assert code == 128 + signal.SIGPIPE
    assert "Broken pipe" not in capsys.readouterr().err


@pytest.mark.slow
def test_stats_refuses_an_edited_manifest(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The manifest stats reports is the checksummed one: an edited one is a clear error."""
    copy = tmp_path / "db"
    shutil.copytree(trained[0], copy)
    manifest = copy / "models" / "value_model_config.json"
    data = json.loads(manifest.read_text())
    data["metrics"]["num_train"] = 1_000_000
    manifest.write_text(json.dumps(data))
    code, out, err = run(capsys, "--persist-dir", str(copy), "stats")
    assert code == 1 and out == "" and "Traceback" not in err
    assert "SHA-256" in err


@pytest.mark.slow
def test_plot_writes_three_pngs(
    capsys: pytest.CaptureFixture[str], trained: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    from matplotlib.image import imread

    persist, _ = trained
    out_dir = tmp_path / "plots"
    code, out, err = run(capsys, "--persist-dir", persist, "plot", "--out", str(out_dir),
                         "--epochs", "3", "--query", "How do I reset my password?")
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert [p.name for p in paths] == ["calibration.png", "training_curves.png",
                                       "distribution.png"]
    for path in paths:
        image = imread(path)
        height, width = image.shape[:2]
        assert 300 <= height <= 1500 and 600 <= width <= 2000
        assert float(image[..., :3].std()) > 0.05  # something is drawn
    code, _, err = run(capsys, "--persist-dir", persist, "plot", "--out", str(out_dir),
                       "--holdout", "0.9")
    assert code == 2 and "holdout" in err


# ----------------------------------------------------------------------------- installed script


@pytest.mark.slow
def test_console_script_runs(trained: tuple[str, dict[str, Any]]) -> None:
    script = Path(sys.executable).parent / "kd-memory"
    if not script.exists():
        pytest.skip("the kd-memory script is not installed in this environment")
    persist, _ = trained
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    shown = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert shown.returncode == 0 and "consolidate" in shown.stdout
    stats = subprocess.run([str(script), "--persist-dir", persist, "stats"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert stats.returncode == 0, stats.stderr
    assert "default" in stats.stdout and "checkpoint v1" in stats.stdout


# ----------------------------------------------------------------------------- Chroma server


@pytest.mark.slow
@pytest.mark.server
def test_server_mode_keeps_checkpoints_in_model_dir(
    capsys: pytest.CaptureFixture[str], chroma_server: tuple[str, int], tmp_path: Path
) -> None:
    host, port = chroma_server
    server = ["--chroma-host", host, "--chroma-port", str(port), "--collection", "cliserver",
              "--model-dir", str(tmp_path / "models")]
    source = write_jsonl(tmp_path / "eps.jsonl", synthetic_rows(24))
    assert run(capsys, *server, "ingest", str(source))[0] == 0
    report = run_json(capsys, *server, "consolidate", "--epochs", "2", "--seed", "0")
    assert Path(report["checkpoint_path"]).parent == tmp_path / "models"
    stats = run_json(capsys, *server, "stats")
    assert stats["namespaces"]["default"]["episodes"] == 24 and stats["model"]["trained"]
    assert stats["store"] == f"Chroma server {host}:{port}"
