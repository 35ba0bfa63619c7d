"""TextWorld cooking games for demos, tests and benchmarks, and an agent's view of one game.

A cache makes the games; `CookingGame` shows one game as a state text, candidate commands
(with loop avoidance) and the expert's move.

Needs the `textworld` package, the ``games`` extra (``pip install 'langchain-kd-memory[games]'``;
this project's test and bench groups have it): its wheel bundles Inform7, so games are generated
offline. Nothing else in the package imports this module. Games come from
TextWorld's `tw-cooking` challenge ("First TextWorld Problems") and its `train`/`test` splits:
test games use foods never seen in training. They are generated on first use into a cache
directory (``$KD_MEMORY_GAMES``, else ``~/.cache/langchain-kd-memory/games``), in parallel, and
reused afterwards; they are never meant to be committed.

The view is the same for every agent, so that agents differ only in how they choose:

* **State text**, most informative first (MiniLM reads 256 word pieces at most)::

      Notes: <the last long text the agent read: an examine/read output of >= 150 characters>
      Location: <room>
      Inventory: <what it carries>
      Last: <the feedback of its last command, at most 400 characters>

  No game-specific rule: *Notes* keeps any long text the agent read (here the recipe, after
  ``examine cookbook``); whether reading helps is for the agent to learn.
* **Candidates**: the admissible commands except ``look`` and ``inventory`` (their information
  is always in the state), minus loop avoidance: a command already run from the same world
  state (room text, inventory, score) in this game is not offered again from it.
* **Expert move**: the first command of TextWorld's shortest plan from the current state
  (`policy_commands`), for escalation.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from langchain_kd_memory._validate import check_int
from langchain_kd_memory.errors import GameError, InvalidArgumentError

LEVELS: dict[str, dict[str, Any]] = {
    "L1": {"recipe": 1, "take": 1, "go": 1},
    "L2": {"recipe": 1, "take": 1, "go": 1, "open": True, "cut": True},
    "L3": {"recipe": 2, "take": 2, "go": 6, "open": True, "cut": True, "cook": True},
}
"""The `tw-cooking` options of each level: L1 one ingredient in the kitchen; L2 adds opening
containers and cutting; L3 two ingredients, six rooms, cooking."""
MAX_STEPS = {"L1": 20, "L2": 30, "L3": 60}
"""Steps an agent gets per game (3.5-4x the walkthrough)."""
SPLITS = ("train", "valid", "test")
TEST_SEED_OFFSET = 100_000
"""Train games use seeds 1..n, valid and test games 100,001..; they never collide."""
NOTE_MIN = 150
LAST_MAX = 400
NOISE = ("look", "inventory")

_PROMPT = re.compile(r"\n\s*>.*", re.S)
_SCORE = re.compile(r"Your score has just gone up by one point\.")
_ROOM = re.compile(r"-= (.+?) =-")
_SPACE = re.compile(r"\s+")


def default_cache() -> Path:
    """Where games are kept: ``$KD_MEMORY_GAMES``, else ``~/.cache/langchain-kd-memory/games``."""
    configured = os.environ.get("KD_MEMORY_GAMES")
    return Path(configured) if configured else Path.home() / ".cache/langchain-kd-memory/games"


def _textworld() -> Any:
    """The `textworld` module; GameError saying how to install it if it is missing."""
    try:
        import textworld
    except ImportError as exc:
        raise GameError(
            "TextWorld games need the textworld package: "
            "pip install 'langchain-kd-memory[games]' (pins textworld==1.7.0)"
        ) from exc
    return textworld


def _check_level_split(level: str, split: str) -> None:
    if level not in LEVELS:
        raise InvalidArgumentError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    if split not in SPLITS:
        raise InvalidArgumentError(f"split must be one of {SPLITS}, got {split!r}")


def _settings(level: str, split: str) -> dict[str, Any]:
    base = {"recipe": 1, "take": 0, "go": 1, "open": False, "cook": False, "cut": False,
            "drop": False, "recipe_seed": 0, "split": split}
    return {**base, **LEVELS[level]}


def tw_make_command(level: str, split: str, seed: int, path: Path | str) -> str:
    """The `tw-make` command that makes the same game (to try by hand when generation fails)."""
    settings = _settings(level, split)
    flags = [f"--recipe {settings['recipe']}", f"--take {settings['take']}",
             f"--go {settings['go']}"]
    flags += [f"--{name}" for name in ("open", "cut", "cook", "drop") if settings[name]]
    return (f"tw-make tw-cooking {' '.join(flags)} --split {split} --seed {seed} "
            f"--output {path}")


def game_path(level: str, split: str, seed: int, cache: Path | None = None) -> Path:
    """Where the game of this level, split and seed is kept."""
    return (cache or default_cache()) / level / split / f"{level}-{split}-{seed}.z8"


def game_seeds(split: str, n: int) -> list[int]:
    """The seeds of the first `n` games of `split`."""
    base = 0 if split == "train" else TEST_SEED_OFFSET
    return [base + i + 1 for i in range(n)]


def _made(path: Path) -> bool:
    """Whether the game at `path` is whole: its story file and its metadata.

    A generation killed halfway leaves one without the other.
    """
    return path.exists() and path.with_suffix(".json").exists()


def _generate(job: tuple[str, str, int, str]) -> str:
    """Make one game file (in a worker process): what `tw-make tw-cooking` does, in-process."""
    level, split, seed, cache = job
    path = game_path(level, split, seed, Path(cache))
    if _made(path):
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import textworld
        from textworld.challenges.tw_cooking import cooking

        options = textworld.GameOptions()
        options.seeds = seed
        options.path = str(path)
        options.file_ext = ".z8"
        options.force_recompile = True
        textworld.generator.compile_game(cooking.make(_settings(level, split), options), options)
    except Exception as exc:
        raise GameError(
            f"generating {path} failed ({type(exc).__name__}: {exc}); try by hand: "
            f"{tw_make_command(level, split, seed, path)}"
        ) from exc
    return str(path)


def ensure_games(
    level: str,
    split: str,
    n: int,
    *,
    cache: Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> list[Path]:
    """The paths of the first `n` games of `level` and `split`, generated where missing.

    Raises:
        GameError: TextWorld is not installed, or a game could not be made (the message names
            the `tw-make` command to try).
    """
    _check_level_split(level, split)
    check_int("n", n, low=1)
    check_int("workers", workers, low=1)
    _textworld()
    cache = cache or default_cache()
    jobs = [(level, split, seed, str(cache)) for seed in game_seeds(split, n)]
    missing = [job for job in jobs if not _made(game_path(*job[:3], cache))]
    if missing:
        with ProcessPoolExecutor(min(workers, len(missing))) as pool, tqdm(
            total=len(missing), desc=f"making {level} {split} games", unit="game",
            disable=not progress,
        ) as bar:
            for _ in pool.map(_generate, missing):
                bar.update(1)
    return [game_path(level, split, seed, cache) for _, _, seed, _ in jobs]


def clean(text: str | None) -> str:
    """Game text without the prompt line and score notices, whitespace collapsed."""
    text = _PROMPT.sub("", "\n" + (text or ""))
    return _SPACE.sub(" ", _SCORE.sub("", text)).strip()


@dataclass(frozen=True)
class Observation:
    """What an agent sees after a reset or a step.

    Attributes:
        state: The state text (see the module docs).
        candidates: Commands to choose from (loop avoidance applied; never empty).
        score: The game's score so far.
        max_score: The score of a won game.
        done: Whether the game is over (won, lost, or out of steps).
        won: Whether it was won.
        lost: Whether it was lost (e.g. a wrong preparation).
        expert: The expert's move: the first command of the shortest plan to win from here.
        walkthrough: A whole winning command sequence from the start.
    """

    state: str
    candidates: list[str]
    score: int
    max_score: int
    done: bool
    won: bool
    lost: bool
    expert: str | None
    walkthrough: list[str] = field(default_factory=list)

    @property
    def normalized_score(self) -> float:
        """Score / max_score."""
        return self.score / self.max_score if self.max_score else 0.0


class CookingGame:
    """One play-through of one game file, with the shared state text and loop avoidance.

    Example:
        .. code-block:: python

            [path] = ensure_games("L1", "train", 1)
            with CookingGame.open(path, max_steps=20) as game:
                obs = game.reset()
                while not obs.done:
                    obs = game.step(obs.candidates[0])
                print(obs.normalized_score)
    """

    def __init__(self, path: Path | str, max_steps: int = 50) -> None:
        """Start the game at `path` (a `.z8` file made by `ensure_games` or `tw-make`).

        Raises:
            GameError: TextWorld is not installed, or there is no game file at `path`.
        """
        textworld = _textworld()
        if not Path(path).exists():
            raise GameError(f"no game file at {path}: make it with ensure_games(...)")
        self.path = Path(path)
        self.max_steps = check_int("max_steps", max_steps, low=1)
        infos = textworld.EnvInfos(
            admissible_commands=True, inventory=True, max_score=True, description=True,
            won=True, lost=True, policy_commands=True, extras=["walkthrough"],
        )
        with warnings.catch_warnings():  # jericho's note that it cannot score the game itself:
            warnings.simplefilter("ignore")  # TextWorld keeps the score
            self._env = textworld.start(str(path), request_infos=infos)
        self._tried: dict[tuple[str, str, int], set[str]] = {}
        self._key: tuple[str, str, int] = ("", "", 0)
        self._notes = self._last = ""
        self.steps = 0

    @classmethod
    @contextmanager
    def open(cls, path: Path | str, max_steps: int = 50) -> Iterator[CookingGame]:
        """The game as a context manager that closes it."""
        game = cls(path, max_steps)
        try:
            yield game
        finally:
            game.close()

    def reset(self) -> Observation:
        """Start over; returns the first observation."""
        state = self._env.reset()
        self.steps, self._notes, self._tried = 0, "", {}
        self._last = clean(state.description)
        return self._observe(state, done=False)

    def step(self, command: str) -> Observation:
        """Run `command` (any text the game understands; normally one of the candidates)."""
        if not isinstance(command, str) or not command.strip():
            raise InvalidArgumentError(f"command must be a non-empty str, got {command!r}")
        self._tried.setdefault(self._key, set()).add(command)
        state, _, done = self._env.step(command)
        self.steps += 1
        feedback = clean(state.feedback)
        if command.split(" ", 1)[0] in ("examine", "read") and len(feedback) >= NOTE_MIN:
            self._notes = feedback
        self._last = feedback
        over = bool(done or state.won or state.lost or self.steps >= self.max_steps)
        return self._observe(state, done=over)

    def close(self) -> None:
        """Stop the game's interpreter."""
        self._env.close()

    def _observe(self, state: Any, done: bool) -> Observation:
        self._key = (clean(state.description), clean(state.inventory), int(state.score))
        admissible = list(state.admissible_commands or [])
        useful = [c for c in admissible if c not in NOISE]
        fresh = [c for c in useful if c not in self._tried.get(self._key, set())]
        room = _ROOM.search(state.description or "")
        lines = [f"Notes: {self._notes}"] if self._notes else []
        lines += [f"Location: {room.group(1) if room else 'unknown'}",
                  f"Inventory: {clean(state.inventory)}", f"Last: {self._last[:LAST_MAX]}"]
        plan = state.policy_commands or []
        return Observation(
            state="\n".join(lines), candidates=fresh or useful or admissible,
            score=int(state.score), max_score=int(state.max_score), done=done,
            won=bool(state.won), lost=bool(state.lost), expert=plan[0] if plan else None,
            walkthrough=list(state.get("extra.walkthrough") or []),
        )


@dataclass(frozen=True)
class PlayedGame:
    """One finished game: its score and what the agent did.

    Attributes:
        score: Normalized score at the end (1.0 = won).
        steps: (state text, command) of every step, in order.
        gains: Each step's reward: the points it gained / the game's maximum.
    """

    score: float
    steps: list[tuple[str, str]]
    gains: list[float]


def play_game(path: Path | str, act: Callable[[Observation], str], max_steps: int) -> PlayedGame:
    """Play the game at `path` with `act(observation) -> command` until it is over."""
    steps: list[tuple[str, str]] = []
    gains: list[float] = []
    with CookingGame.open(path, max_steps) as game:
        obs = game.reset()
        while not obs.done:
            command = act(obs)
            after = game.step(command)
            steps.append((obs.state, command))
            gains.append((after.score - obs.score) / obs.max_score)
            obs = after
    return PlayedGame(obs.normalized_score, steps, gains)


def game_facts(path: Path | str) -> dict[str, Any]:
    """The metadata TextWorld saved beside a game (max score, walkthrough, ingredients...)."""
    meta = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    return dict(meta.get("metadata", meta))
