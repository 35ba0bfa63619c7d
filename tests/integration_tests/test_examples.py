"""Smoke tests: every example runs to completion, offline, and prints what it promises.

Each example runs as a real subprocess (the way a user runs it) with small options and its own
temporary persist directory. All of them start at once, in parallel, when the first test asks
for a result; each test then waits for its own example.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT_S = 300
"""Per example; generous because the machine running the suite may be busy."""

COMMANDS: dict[str, list[str]] = {
    "chitchat_demo": ["chitchat_demo.py", "--conversations", "40", "--no-plots"],
    "textworld_agent": [
        "textworld_agent.py", "--train-games", "10", "--every", "5", "--test-games", "2",
        "--no-plots",
    ],
    "chatbot": ["chatbot.py", "--demo"],
    "agent_loop": [
        "agent_loop.py", "--episodes", "40", "--every", "20", "--holdout", "30", "--epochs", "3",
    ],
    "langgraph_agent": ["langgraph_agent.py"],
}


HELP_MARK = "=== --help of "
HELPS = f"""
import runpy, sys
for name, script in {[(n, str(EXAMPLES / a[0])) for n, a in COMMANDS.items()]!r}:
    print("{HELP_MARK}" + name, flush=True)
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    print("exit", code, flush=True)
"""
"""Every example's `--help`: a line `HELP_MARK` + name, its output, a line ``exit <code>``."""


@dataclass
class Run:
    """A finished example run."""

    returncode: int
    output: str

    def check(self) -> str:
        assert self.returncode == 0, f"exit code {self.returncode}; output:\n{self.output}"
        return self.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every example and its `--help`, run in parallel; their exit codes and outputs."""
    tmp = tmp_path_factory.mktemp("examples")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "PYTHONUNBUFFERED": "1",
        # one thread each: the examples run side by side, and on a few busy cores extra torch
        # threads only fight each other (about half the CPU time in total when measured)
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    jobs = {
        name: [str(EXAMPLES / args[0]), *args[1:], "--persist-directory", str(tmp / name)]
        for name, args in COMMANDS.items()
    }
    jobs["--help"] = ["-c", HELPS]  # one process: the heavy imports are paid once
    processes = {}
    for name, args in jobs.items():
        log = tmp / f"{name}.log"
        with log.open("w") as out:  # the child keeps its own handle
            processes[name] = (
                subprocess.Popen(
                    [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env, cwd=tmp,
                ),
                log,
            )
    deadline = time.monotonic() + TIMEOUT_S
    results = {}
    try:
        for name, (process, log) in processes.items():
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            results[name] = Run(code, log.read_text(encoding="utf-8", errors="replace"))
        helps = results.pop("--help")
        for part in helps.output.split(HELP_MARK)[1:]:
            name, output = part.split("\n", 1)
            output, _, code = output.rstrip("\n").rpartition("\nexit ")
            results[f"{name} --help"] = Run(int(code or 1) or helps.returncode, output + "\n")
        yield results
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_describes_the_example(runs: dict[str, Run], name: str) -> None:
    output = runs[f"{name} --help"].check()
    assert output.startswith("usage:")
    assert "--persist-directory" in output


@pytest.mark.slow
def test_demo_stores_trains_and_recalls_with_rewards(runs: dict[str, Run]) -> None:
    output = runs["chitchat_demo"].check()
    assert re.search(r"trained on \d+ episodes", output)
    recalled = re.findall(r"similarity (\d\.\d+) +reward (\d+\.\d+)", output)
    assert len(recalled) >= 3
    assert all(1.0 <= float(reward) <= 10.0 for _, reward in recalled)


@pytest.mark.slow
def test_textworld_agent_plays_learns_and_escalates(runs: dict[str, Run]) -> None:
    output = runs["textworld_agent"].check()
    assert "10 training games, 2 held-out games (L1)" in output
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d\.\d\d)   ", output, re.MULTILINE)
    assert [int(games) for games, _, _ in rows] == [0, 5, 10]
    assert int(rows[-1][1]) > int(rows[1][1]) > 0  # each consolidation trains on more steps
    assert all(0.0 <= float(score) <= 1.0 for _, _, score in rows)
    escalated = re.search(r"escalation \(budget 0\.2\): held-out score (\d\.\d\d), (\d+) of "
                          r"(\d+) steps handed to the expert", output)
    assert escalated and int(escalated[2]) <= int(escalated[3])
    assert re.search(r"held-out score: \d\.\d\d before learning, \d\.\d\d after 10 games",
                     output)


@pytest.mark.slow
def test_chatbot_learns_from_feedback_during_the_session(runs: dict[str, Run]) -> None:
    output = runs["chatbot"].check()
    assert "seeded 60 past conversations (36 rated)" in output
    assert output.count("\nbot> ") == 6
    assert "feedback (auto): +" in output and "feedback (auto): -" in output
    # recalled episodes with their rewards, before the value model exists
    assert re.search(r"score \d\.\d\d \| similarity \d\.\d\d \| reward [01]\n", output)
    untrained = output.index("value model: not trained yet (36/40 rated)")
    # 4 thumbs make the 40 ratings training needs; the next turn is scored
    consolidated = output.index("[consolidation 1: value model trained on 40 rated episodes")
    scored = re.search(r"value model: expected reward (\d\.\d\d) ± \d\.\d\d", output)
    assert scored and untrained < consolidated < scored.start()
    assert 0.0 <= float(scored[1]) <= 1.0
    assert "not rated, predicted value" in output[consolidated:]
    assert re.search(r"6 turns recorded, 42 rated episodes in memory, \d+ consolidations, "
                     r"0 errors", output)
    values = dict(re.findall(r"value of '(.+)': (\d\.\d\d)", output))
    # the seed's parcel answers all went badly, its password answers all went well
    assert float(values["Where is my parcel? It has been two weeks."]) < float(
        values["I forgot my password, what can I do?"]
    )


@pytest.mark.slow
def test_agent_loop_reports_held_out_quality_after_each_consolidation(
    runs: dict[str, Run],
) -> None:
    output = runs["agent_loop"].check()
    assert "40 conversations to replay, 30 held out" in output
    rows = re.findall(
        r"^ +(\d+) +(\d+) +[\d.]+ +(-?\d\.\d{3}) +(\d+\.\d\d) +(\d+\.\d\d) +(-?\d\.\d{3})$",
        output, re.MULTILINE,
    )
    assert rows, output
    assert int(rows[-1][1]) == 40  # the flush at the end trains on every episode
    for _, used, rho, mae, mae_mean, teacher_rho in rows:
        assert int(used) >= 20
        assert -1.0 <= float(rho) <= 1.0 and -1.0 <= float(teacher_rho) <= 1.0
        assert 0.0 < float(mae) < 9.0 and 0.0 < float(mae_mean) < 9.0
    assert re.search(r"40 episodes recorded, \d+ consolidations .*, 0 errors", output)


@pytest.mark.slow
def test_langgraph_agent_uses_middleware_and_store(runs: dict[str, Run]) -> None:
    output = runs["langgraph_agent"].check()
    assert re.search(r"reward: 1 \| score: \d\.\d\d", output)
    assert "Expected reward of the current request" in output
    assert re.search(r"thumbs up on \S+: reward 1\.0", output)
    assert re.search(r"note note-1 \(similarity \d\.\d\d\)", output)
    assert re.search(r"3 episodes recorded, 0 failures", output)


def test_agent_loop_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    spec = importlib.util.spec_from_file_location("agent_loop", EXAMPLES / "agent_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, size=200).astype(float)  # many ties, as in human ratings
    b = a + rng.normal(0, 2, size=200)
    assert module.spearman(b, a) == pytest.approx(stats.spearmanr(b, a).statistic)
    assert module.spearman(a, np.ones(200)) == 0.0
