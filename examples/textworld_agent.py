"""An agent that gets better from its memory: TextWorld cooking games (what `make demo` runs).

What it shows, step by step:

1. Games: TextWorld `tw-cooking` games (Microsoft's text-game engine, generated offline on first
   use and cached). Each state is a text (notes, room, inventory, last feedback) with a list of
   candidate commands; a game is won by finding the recipe's ingredient and preparing the meal.
2. Acting: `memory.rank_responses(state, candidates, explore=1.0)` values every candidate
   command with the teacher (it sees how a command relates to the state) and returns them best
   first (random play until the first consolidation). While it learns, the ranking follows one
   Thompson draw from the value head's posterior: commands the model is unsure about get tried.
3. Remembering: after each game, `memory.add_trajectory(steps, gains, gamma=0.7)` stores every
   step as an episode whose reward is the discounted return that followed.
4. Learning: every `--every` games, `memory.consolidate()` retrains the value model on the
   stored episodes, and the agent plays the held-out games (foods never seen in training),
   greedily, to show its progress.
5. Escalating: `memory.as_router(default=agent, strong=expert, budget=0.2)` hands the states
   the student values lowest to an expert (here TextWorld's own plan; in an application, a
   bigger model or a human).

Usage:
    make demo        # or: .venv/bin/python examples/textworld_agent.py (50 games: 1.5-5 minutes)
    .venv/bin/python examples/textworld_agent.py --train-games 20 --every 10 --test-games 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from langchain_core.runnables import RunnableLambda

from langchain_kd_memory import (
    CachedEmbeddings,
    DistilledEpisodicMemory,
    InsufficientDataError,
    ModelDistillation,
    default_embeddings,
)
from langchain_kd_memory.games import MAX_STEPS, Observation, ensure_games, play_game

LEVEL = "L1"


def choose(memory: DistilledEpisodicMemory, obs: Observation, explore: float,
           rng: np.random.Generator) -> str:
    """The best candidate by the value model (with exploration), or a random one untrained."""
    if not memory.is_trained:
        return str(rng.choice(obs.candidates))
    return memory.rank_responses(obs.state, obs.candidates, explore=explore, rng=rng)[0].response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--train-games", type=int, default=50)
    parser.add_argument("--every", type=int, default=10, help="consolidate every N games")
    parser.add_argument("--test-games", type=int, default=10, help="held-out games")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--persist-directory", default=None,
                        help="where the memory lives (a fresh temporary one if not given)")
    parser.add_argument("--plot-dir", type=Path,
                        default=Path(__file__).resolve().parent.parent / "demo_data" / "plots")
    parser.add_argument("--no-plots", action="store_true", help="skip the learning-curve plot")
    args = parser.parse_args()
    directory = args.persist_directory or tempfile.mkdtemp(prefix="kd-textworld-")
    rng = np.random.default_rng(args.seed)

    train = ensure_games(LEVEL, "train", args.train_games)
    test = ensure_games(LEVEL, "test", args.test_games)
    embeddings = CachedEmbeddings(default_embeddings())  # commands repeat: embed each once
    memory = DistilledEpisodicMemory(
        embeddings=embeddings, persist_directory=directory, reward_range=(0.0, 1.0),
        distillation=ModelDistillation(embeddings=embeddings, seed=args.seed),  # defaults
    )

    def held_out(act) -> float:  # noqa: ANN001
        return float(np.mean([play_game(path, act, MAX_STEPS[LEVEL]).score for path in test]))

    def greedy(obs: Observation) -> str:
        return choose(memory, obs, 0.0, rng)

    curve = [(0, held_out(greedy))]
    print(f"{len(train)} training games, {len(test)} held-out games ({LEVEL}); memory in "
          f"{directory}\n\n games  episodes  held-out score  (1.0 = every game won)")
    print(f"{0:>6}  {0:>8}  {curve[0][1]:>14.2f}   random play, nothing learned yet")
    wins = 0
    for i, path in enumerate(train, start=1):
        game = play_game(path, lambda obs: choose(memory, obs, 1.0, rng), MAX_STEPS[LEVEL])
        # every step an episode; its reward the discounted share of the points that followed
        memory.add_trajectory(game.steps, game.gains, gamma=0.7, trajectory_id=f"game-{i}")
        wins += game.score == 1.0
        if i % args.every == 0 or i == len(train):
            try:
                report = memory.consolidate()
            except InsufficientDataError:  # every game so far scored the same: nothing to learn
                print(f"{i:>6}  {'-':>8}  {'-':>14}   not trained: every reward so far is the "
                      f"same (won {wins}/{i})")
                continue
            curve.append((i, held_out(greedy)))
            print(f"{i:>6}  {report.episodes_used:>8}  {curve[-1][1]:>14.2f}   "
                  f"won {wins}/{i} while training")

    router = memory.as_router(
        default=RunnableLambda(lambda x: greedy(x["obs"])),
        strong=RunnableLambda(lambda x: x["obs"].expert or greedy(x["obs"])),
        budget=0.2,
    )
    routed = held_out(lambda obs: router.invoke({"input": obs.state, "obs": obs}))
    status = router.status
    print(f"\nwith escalation (budget 0.2): held-out score {routed:.2f}, "
          f"{status.strong} of {status.strong + status.default} steps handed to the expert "
          f"({status.escalated_share:.0%})")
    print(f"held-out score: {curve[0][1]:.2f} before learning, {curve[-1][1]:.2f} after "
          f"{len(train)} games")

    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*curve, strict=True), marker="o", label="value agent (greedy)")
        ax.axhline(1.0, color="grey", ls="--", label="walkthrough")
        ax.set(xlabel="training games", ylabel="held-out score", ylim=(0, 1.05),
               title=f"TextWorld {LEVEL}: learning from memory")
        ax.legend()
        out = args.plot_dir / "textworld_learning_curve.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        print(f"plot: {out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
