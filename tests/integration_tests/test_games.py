"""TextWorld cooking games: made offline into a cache, played through the shared agent view."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from langchain_kd_memory.errors import GameError, InvalidArgumentError
from langchain_kd_memory.games import (
    CookingGame,
    ensure_games,
    game_facts,
    play_game,
    tw_make_command,
)

pytest.importorskip("textworld")


@pytest.fixture(scope="module")
def games(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return ensure_games("L1", "train", 2, cache=tmp_path_factory.mktemp("games"), progress=False)


@pytest.mark.slow
def test_games_are_made_once_and_reused(games: list[Path]) -> None:
    assert [p.name for p in games] == ["L1-train-1.z8", "L1-train-2.z8"]
    stamps = [p.stat().st_mtime_ns for p in games]
    again = ensure_games("L1", "train", 2, cache=games[0].parents[2], progress=False)
    assert again == games and [p.stat().st_mtime_ns for p in again] == stamps
    assert game_facts(games[0])["max_score"] == 3


@pytest.mark.slow
def test_the_walkthrough_wins_and_the_view_follows_the_game(games: list[Path]) -> None:
    with CookingGame.open(games[0], max_steps=20) as game:
        obs = game.reset()
        assert obs.state.startswith("Location: Kitchen\nInventory: ")
        assert "look" not in obs.candidates and "inventory" not in obs.candidates
        assert obs.expert is not None and obs.expert in obs.walkthrough
        assert (obs.score, obs.done) == (0, False)
        read = game.step("examine cookbook")
        assert read.state.startswith("Notes: ") and "Ingredients" in read.state
        assert "examine cookbook" not in read.candidates  # nothing changed: not offered again
        for command in [c for c in obs.walkthrough if c not in ("inventory", "examine cookbook")]:
            obs = game.step(command)
        assert obs.won and obs.done and obs.normalized_score == 1.0


@pytest.mark.slow
def test_play_game_records_each_step_and_its_share_of_the_points(games: list[Path]) -> None:
    won = play_game(games[0], lambda obs: obs.expert or obs.candidates[0], max_steps=20)
    assert won.score == 1.0
    assert len(won.steps) == len(won.gains) > 0
    assert sum(won.gains) == pytest.approx(1.0)  # every point, once
    assert all(gain >= 0 for gain in won.gains)
    capped = play_game(games[0], lambda obs: obs.candidates[-1], max_steps=3)
    assert len(capped.steps) <= 3 and capped.score < 1.0


@pytest.mark.slow
def test_a_game_ends_after_its_steps(games: list[Path]) -> None:
    with CookingGame.open(games[1], max_steps=3) as game:
        obs = game.reset()
        for _ in range(3):
            assert not obs.done
            obs = game.step("examine cookbook")
        assert obs.done and not obs.won


def test_bad_requests_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="level must be one of"):
        ensure_games("L9", "train", 1, cache=tmp_path)
    with pytest.raises(InvalidArgumentError, match="split must be one of"):
        ensure_games("L1", "dev", 1, cache=tmp_path)
    with pytest.raises(GameError, match="no game file"):
        CookingGame(tmp_path / "missing.z8")
    assert tw_make_command("L2", "test", 7, "x.z8") == (
        "tw-make tw-cooking --recipe 1 --take 1 --go 1 --open --cut --split test --seed 7 "
        "--output x.z8")


@pytest.mark.slow
def test_a_game_left_half_made_is_made_again(games: list[Path], tmp_path: Path) -> None:
    shutil.copytree(games[0].parents[2], tmp_path, dirs_exist_ok=True)  # a copy of the cache
    path = tmp_path / games[0].relative_to(games[0].parents[2])
    path.unlink()  # what a generation killed between the metadata and the story file leaves
    assert ensure_games("L1", "train", 1, cache=tmp_path, progress=False) == [path]
    assert play_game(path, lambda obs: obs.expert or obs.candidates[0], max_steps=20).score == 1.0
