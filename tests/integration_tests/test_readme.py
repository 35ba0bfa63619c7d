"""The README's Quick start runs as written, offline, and prints what its comments promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start() -> str:
    """The first python block of the README's "Quick start" section."""
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Quick start has no python block"
    return match.group(1)


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", quick_start()], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    expected, best = done.stdout.strip().splitlines()[-2:]
    assert float(expected) < 0.5  # refund questions went badly
    assert best == "Use the 'Forgot password' link."
    assert (tmp_path / "kd_memory" / "models").is_dir()  # the checkpoint was saved
