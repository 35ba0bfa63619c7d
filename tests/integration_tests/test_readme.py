"""The README's Quick start runs as written, offline, on the core install (no extra), and prints
what its comments promise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

EXTRAS = ("textworld", "matplotlib", "chitchat_dataset")
"""What the games, plots and chitchat extras install: the core never imports them."""

WITHOUT_EXTRAS = f"""
import importlib.abc, sys

class NoExtras(importlib.abc.MetaPathFinder):  # as if only the core dependencies were installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"the core imported {{name}}, from an extra", name=name)

sys.meta_path.insert(0, NoExtras())
"""
"""Run first: any import of an extra's package fails, so a core that needs one cannot pass."""

EVERY_PUBLIC_NAME = """
import langchain_kd_memory
for name in langchain_kd_memory.__all__:
    getattr(langchain_kd_memory, name)
"""


def quick_start() -> str:
    """The first python block of the README's "Quick start" section."""
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Quick start has no python block"
    return match.group(1)


@pytest.mark.slow
def test_quick_start_runs_as_written_without_the_extras(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # this checkout's package
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS + quick_start() + EVERY_PUBLIC_NAME], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    expected, best = done.stdout.strip().splitlines()[-2:]
    assert float(expected) < 0.5  # refund questions went badly
    assert best == "Use the 'Forgot password' link."
    assert (tmp_path / ".kd_memory" / "models").is_dir()  # the checkpoint was saved
    stats = subprocess.run(  # the CLI, run next in the same directory, finds what was stored
        [sys.executable, "-m", "langchain_kd_memory.cli", "--json", "stats"], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert stats.returncode == 0, stats.stderr
    seen = json.loads(stats.stdout)
    assert (seen["namespaces"]["default"]["episodes"], seen["model"]["trained"]) == (25, True)
