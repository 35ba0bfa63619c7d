"""Smoke tests: every example runs to completion, offline, and prints what it promises.

Each example runs as its script's ``__main__`` (`runpy`, as ``python examples/x.py`` runs it)
with small options and its own temporary persist directory, its output going to its own file
(file descriptors 1 and 2, so threads and child processes are caught too). All of them run
one after the other in one process, started when the first test asks for a result: the heavy
imports (torch, Chroma, sentence-transformers: about 13 s of CPU) are paid once, not once per
example.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT_S = 600
"""For all of them; generous because the machine running the suite may be busy."""

COMMANDS: dict[str, list[str]] = {
    "chitchat_demo": ["chitchat_demo.py", "--conversations", "24", "--no-plots"],
    "textworld_agent": [
        "textworld_agent.py", "--train-games", "6", "--every", "3", "--test-games", "2",
        "--no-plots",
    ],
    "chatbot": ["chatbot.py", "--demo"],
    "agent_loop": [
        "agent_loop.py", "--episodes", "40", "--every", "20", "--holdout", "12", "--epochs", "3",
    ],
    "langgraph_agent": ["langgraph_agent.py"],
}

RUNNER = """
import json, os, runpy, sys, traceback
jobs, codes_file, codes = json.loads(sys.argv[1]), sys.argv[2], {}
for name, argv, log in jobs:  # [name, [script, *args], log file]
    with open(log, "w") as out:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(out.fileno(), 2)
        sys.argv = argv
        try:
            runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    codes[name] = code
open(codes_file, "w").write(json.dumps(codes))
"""
"""Runs each job as ``__main__`` with its output in its own log; writes the exit codes."""


@dataclass
class Run:
    """A finished example run."""

    returncode: int
    output: str

    def check(self) -> str:
        assert self.returncode == 0, f"exit code {self.returncode}; output:\n{self.output}"
        return self.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every example and its `--help`, run in one process; their exit codes and outputs."""
    tmp = tmp_path_factory.mktemp("examples")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",  # the suite's other worker has the other core
        "MKL_NUM_THREADS": "1",
    }
    jobs = [(f"{name} --help", [str(EXAMPLES / args[0]), "--help"],
             str(tmp / f"{name}-help.log")) for name, args in COMMANDS.items()]
    jobs += [(name, [str(EXAMPLES / args[0]), *args[1:], "--persist-directory", str(tmp / name)],
              str(tmp / f"{name}.log")) for name, args in COMMANDS.items()]
    codes_file = tmp / "exit_codes.json"
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs), str(codes_file)],
                          cwd=tmp, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    codes = json.loads(codes_file.read_text())
    return {name: Run(codes[name], Path(log).read_text(encoding="utf-8", errors="replace"))
           for name, _, log in jobs}


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
    assert "6 training games, 2 held-out games (L1)" in output
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d\.\d\d)   ", output, re.MULTILINE)
    # seed 0 scores nothing in its first 3 random games: that consolidation is skipped, said
    untrained = re.findall(r"^ +(\d+) +- +- +not trained: every reward so far is the same",
                           output, re.MULTILINE)
    assert [int(games) for games, _, _ in rows] == [0, 6] and untrained == ["3"]
    assert int(rows[-1][1]) > 0
    escalated = re.search(r"escalation \(budget 0\.2\): held-out score (\d\.\d\d), (\d+) of "
                          r"(\d+) steps handed to the expert", output)
    assert escalated and int(escalated[2]) <= int(escalated[3])
    assert re.search(r"held-out score: \d\.\d\d before learning, \d\.\d\d after 6 games",
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
    assert "40 conversations to replay, 12 held out" in output
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
