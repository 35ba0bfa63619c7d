"""Without an extra, its modules fail on use with an error naming the extra to install.

A `None` in `sys.modules` makes importing that package fail, as if it were not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from langchain_kd_memory.datasets import load_chitchat
from langchain_kd_memory.errors import GameError
from langchain_kd_memory.games import CookingGame, ensure_games
from langchain_kd_memory.plots import write_all


def test_games_without_textworld_name_the_games_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "textworld", None)
    with pytest.raises(GameError, match=r"pip install 'langchain-kd-memory\[games\]'"):
        ensure_games("L1", "train", 1, cache=tmp_path)
    with pytest.raises(GameError, match=r"langchain-kd-memory\[games\]"):
        CookingGame(tmp_path / "L1-train-1.z8")
    assert not any(tmp_path.iterdir())  # nothing was made


def test_chitchat_without_its_dataset_names_the_chitchat_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "chitchat_dataset", None)
    with pytest.raises(ImportError, match=r"pip install 'langchain-kd-memory\[chitchat\]'"):
        load_chitchat(limit=1)


def test_plots_without_matplotlib_name_the_plots_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'langchain-kd-memory\[plots\]'"):
        write_all(None, tmp_path / "plots")  # type: ignore[arg-type]  # fails before any use
    assert not (tmp_path / "plots").exists()
