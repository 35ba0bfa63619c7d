"""The reference site builds with `mkdocs build --strict`: a broken link or docstring fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_kd_memory

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_site_builds_strictly_with_every_public_name_and_readme_section(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in langchain_kd_memory.__all__:
        if name == "__version__":
            continue
        module = langchain_kd_memory._MODULES[name]
        page = (site / "reference" / module / "index.html").read_text(encoding="utf-8")
        assert f'id="langchain_kd_memory.{module}.{name}"' in page, f"{name} is not documented"
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Reward-aware episodic memory" in home
    quick_start = (site / "quick-start" / "index.html").read_text(encoding="utf-8")
    assert "DistilledEpisodicMemory" in quick_start and "<h1" in quick_start
    assert (site / "img" / "agent_learning.png").is_file()  # the README's figure, on its page
    assert 'src="img/agent_learning.png"' in home
