"""Agent benchmark: does remembering rewards make an agent better? TextWorld cooking games.

    python benchmarks/bench_agent.py            # full: L1 and L2, 50 training games, 2 seeds
    python benchmarks/bench_agent.py --quick    # L1, 20 training games, 1 seed, prints only

Each strategy plays the same training games (TextWorld `tw-cooking`, train split) in the same
order, learning as it goes, and is measured on the same held-out games (test split: foods and
preparations never seen in training), greedily and without writing to its memory, after 0, 10,
20 and 50 training games. The score is the share of the game's points reached within the
level's step cap (1.0 = won). Every agent sees the same state text and candidate commands
(`langchain_kd_memory.games.CookingGame`); they differ only in how they choose:

* random: a random candidate (the floor). walkthrough: the expert's move (the ceiling, 1.0).
* similarity: recall the most similar past states (`invoke` with `reward_weight=0`) and repeat
  the first recalled command that is a candidate (what plain vector memory gives).
* hindsight: the same with `reward_weight=0.5`: (1 - w) * similarity + w * reward
  (Hindsight's rule).
* memrl: among the recalled states, the command of the memory with the highest Q-value; after
  each game the Q-values of the memories used move toward the returns that followed
  (Q += 0.3 * (G - Q), MemRL's rule), new memories start at their own return.
* value (this package): `rank_responses(state, candidates)` with UCB exploration while
  training, greedy on held-out games; `consolidate()` every 10 training games. Its teacher
  sees `TeacherConfig(interactions=True)` inputs ([q, r, q*r, |q-r|]); `--interactions 0`
  measures the default [q, r].

The memory strategies record each training game with `add_trajectory`: every step is an
episode (state, command) whose reward is the discounted return that followed (gamma 0.7; a
step's own reward is the points it gained / the game's maximum). Strategies other than value
explore with probability 0.1 while training. Then, for the value agent after training,
escalation: `memory.as_router(default=agent, strong=expert, budget=f)` hands the steps whose
state the student values lowest to the expert, against handing the same share of steps to the
expert at random.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.runnables import RunnableLambda

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CACHE_DIR,
    ROOT,
    Summary,
    machine_facts,
    markdown_table,
    time_per_call,
    update_section,
)

from langchain_kd_memory import (  # noqa: E402
    CachedEmbeddings,
    DistilledEpisodicMemory,
    ModelDistillation,
    TeacherConfig,
    default_embeddings,
)
from langchain_kd_memory.decisions import discounted_returns  # noqa: E402
from langchain_kd_memory.games import (  # noqa: E402
    MAX_STEPS,
    CookingGame,
    Observation,
    ensure_games,
    play_game,
)

GAMMA = 0.7
EPSILON = 0.1
EXPLORE = 0.25
RECALL_K = 10
MEMRL_ALPHA = 0.3
CONSOLIDATE_EVERY = 10
BUDGETS = (0.1, 0.2, 0.3)
STRATEGIES = ("random", "similarity", "hindsight", "memrl", "value")
PLOT_DIR = ROOT / "docs" / "img"

Policy = Callable[[Observation], str]


class Strategy:
    """A way to choose commands; memory strategies learn from each training game."""

    def __init__(self, name: str, seed: int, memory: DistilledEpisodicMemory | None) -> None:
        self.name, self.memory = name, memory
        self.rng = np.random.default_rng(seed)
        self.used: list[tuple[int, str]] = []  # memrl: (step, memory id) of this game

    def random(self, obs: Observation) -> str:
        return str(obs.candidates[self.rng.integers(len(obs.candidates))])

    def act(self, obs: Observation, step: int, training: bool) -> str:
        if self.name == "random":
            return self.random(obs)
        if self.name == "walkthrough":
            return obs.expert or self.random(obs)
        assert self.memory is not None
        if self.name == "value":
            if not self.memory.is_trained:
                return self.random(obs)
            ranked = self.memory.rank_responses(
                obs.state, obs.candidates, explore=EXPLORE if training else 0.0, rng=self.rng
            )
            return ranked[0].response
        if training and self.rng.random() < EPSILON:
            return self.random(obs)
        weight = 0.5 if self.name == "hindsight" else 0.0
        docs = [d for d in self.memory.invoke(obs.state, k=RECALL_K, reward_weight=weight)
                if d.metadata["response"] in obs.candidates]
        if not docs:
            return self.random(obs)
        if self.name == "memrl":
            docs.sort(key=lambda d: -d.metadata["reward"])
            if training:
                self.used.append((step, docs[0].metadata["id"]))
        return str(docs[0].metadata["response"])

    def learn(self, game: int, steps: list[tuple[str, str]], gains: list[float]) -> None:
        """Remember a training game (memory strategies) and learn from it."""
        if self.memory is None:
            return
        self.memory.add_trajectory(steps, gains, gamma=GAMMA, trajectory_id=f"game-{game}")
        if self.name == "memrl":
            got = discounted_returns(gains, GAMMA)
            for step, memory_id in self.used:
                q = self.memory.store.get([memory_id])[0].reward or 0.0
                self.memory.record_feedback(memory_id, q + MEMRL_ALPHA * (got[step] - q))
            self.used.clear()
        if self.name == "value" and (game + 1) % CONSOLIDATE_EVERY == 0:
            self.memory.consolidate()

    def policy(self, training: bool) -> Policy:
        steps = iter(range(1 << 30))
        return lambda obs: self.act(obs, next(steps), training)


def evaluate(strategy: Strategy, games: list[Path], level: str) -> float:
    """Mean normalized score on `games`, greedy, nothing recorded."""
    policy = strategy.policy(training=False)
    return float(np.mean([play_game(g, policy, MAX_STEPS[level]).score for g in games]))


def new_memory(
    directory: Path, embeddings: Embeddings, seed: int, interactions: bool
) -> DistilledEpisodicMemory:
    return DistilledEpisodicMemory(
        embeddings=embeddings, persist_directory=str(directory), reward_range=(0.0, 1.0),
        distillation=ModelDistillation(
            embeddings=embeddings, seed=seed, teacher=TeacherConfig(interactions=interactions)
        ),
    )


def run_strategy(
    name: str, seed: int, level: str, train: list[Path], test: list[Path],
    checkpoints: Sequence[int], embeddings: Embeddings, workdir: Path, interactions: bool,
) -> tuple[dict[int, float], Strategy, float]:
    """Train one strategy on `train` in seed order; its held-out score at each checkpoint."""
    memory = None if name in ("random", "walkthrough") else new_memory(
        workdir / f"{level}-{name}-{seed}", embeddings, seed, interactions
    )
    strategy = Strategy(name, seed, memory)
    order = np.random.default_rng(seed).permutation(len(train))
    curve: dict[int, float] = {}
    start = time.perf_counter()
    for done in range(len(train) + 1):
        if done in checkpoints:
            curve[done] = evaluate(strategy, test, level)
        if done == len(train):
            break
        game = play_game(train[order[done]], strategy.policy(training=True), MAX_STEPS[level])
        strategy.learn(done, game.steps, game.gains)
    return curve, strategy, time.perf_counter() - start


def escalation(
    strategy: Strategy, test: list[Path], level: str, seed: int
) -> list[dict[str, float]]:
    """Held-out score when the router hands low-value steps to the expert, vs random hand-offs."""
    memory = strategy.memory
    assert memory is not None and memory.is_trained
    greedy = strategy.policy(training=False)
    rows = []
    for budget in BUDGETS:
        router = memory.as_router(
            default=RunnableLambda(lambda x: greedy(x["obs"])),
            strong=RunnableLambda(lambda x: x["obs"].expert or greedy(x["obs"])),
            budget=budget,
        )
        def routed_policy(obs: Observation, router: Any = router) -> str:
            return str(router.invoke({"input": obs.state, "obs": obs}))

        routed = np.mean([play_game(g, routed_policy, MAX_STEPS[level]).score for g in test])
        status = router.status
        share = status.strong / max(1, status.strong + status.default)
        coin = np.random.default_rng(seed)

        def blind_policy(obs: Observation, rng: Any = coin, share: float = share) -> str:
            return (obs.expert or greedy(obs)) if rng.random() < share else greedy(obs)

        blind = np.mean([play_game(g, blind_policy, MAX_STEPS[level]).score for g in test])
        rows.append({"budget": budget, "share": float(share), "router": float(routed),
                     "random": float(blind)})
    return rows


def rank_speed(memory: DistilledEpisodicMemory, obs: Observation) -> dict[str, float]:
    """Milliseconds: rank_responses of one state's candidates vs embedding them (uncached)."""
    inner = default_embeddings()
    texts = [obs.state, *obs.candidates]
    memory.store.embedder.texts(texts)  # puts them in the cache
    return {
        "candidates": len(obs.candidates),
        "rank_cached_ms": 1e3 * time_per_call(lambda: memory.rank_responses(obs.state,
                                                                            obs.candidates)),
        "embed_ms": 1e3 * time_per_call(lambda: inner.embed_documents(texts)),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(results["levels"])
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(5 * (len(levels) + 1), 4))
    for ax, level in zip(axes, levels, strict=False):
        data = results["levels"][level]
        for name in data["curves"]:
            xs = sorted(int(x) for x in data["curves"][name])
            means = [np.mean(data["curves"][name][str(x)]) for x in xs]
            ax.plot(xs, means, marker="o", label=name, lw=2.5 if name == "value" else 1.2)
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="walkthrough")
        ax.set(title=f"{level}: held-out games", xlabel="training games played",
               ylabel="mean score (1 = won)", ylim=(0, 1.05))
        ax.legend(fontsize=8)
    ax = axes[-1]
    for level in levels:
        rows = results["levels"][level]["escalation"]
        shares = [np.mean([r[i]["share"] for r in rows]) for i in range(len(BUDGETS))]
        ax.plot(shares, [np.mean([r[i]["router"] for r in rows]) for i in range(len(BUDGETS))],
                marker="o", label=f"{level}: student escalates")
        ax.plot(shares, [np.mean([r[i]["random"] for r in rows]) for i in range(len(BUDGETS))],
                marker="x", ls=":", label=f"{level}: random steps")
    ax.set(title="Escalation to the expert", xlabel="share of steps escalated",
           ylabel="mean score", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(results: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section, prose included, from the numbers."""
    lines = [f"`{command}` ({results['machine']}; {results['minutes']:.1f} min)", ""]
    for level, data in results["levels"].items():
        n_seeds = len(next(iter(data["curves"].values()))[str(data["checkpoints"][-1])])
        lines += [f"### {level}: {data['train_games']} training games, {data['test_games']} "
                  f"held-out games, {n_seeds} seed{'s' if n_seeds > 1 else ''} "
                  "(mean ± std over seeds)", ""]
        headers = ["strategy", *[f"after {c}" for c in data["checkpoints"]], "train time"]
        ceiling = f"{data['walkthrough']:.2f}"
        rows = [["walkthrough (ceiling)", *[ceiling] * len(data["checkpoints"]), "-"]]
        for name in data["curves"]:
            cells = [f"{Summary.of(data['curves'][name][str(c)]).mean:.2f} ± "
                     f"{Summary.of(data['curves'][name][str(c)]).std:.2f}"
                     for c in data["checkpoints"]]
            rows.append([name, *cells, f"{np.mean(data['seconds'][name]):.0f} s"])
        lines += [markdown_table(headers, rows), ""]
        last = str(data["checkpoints"][-1])
        final = {name: np.mean(curve[last]) for name, curve in data["curves"].items()}
        peers = [n for n in final if n != "value"]
        if "value" not in final or not peers:
            continue
        best_peer = max(peers, key=final.__getitem__)
        lines += [
            f"After {last} training games the value agent scores {final['value']:.2f} on held-out "
            f"{level} games, against {final[best_peer]:.2f} for the best other strategy "
            f"({best_peer}) and {final['random']:.2f} for random play.", "",
            "Escalation (value agent after training; the router's share of steps vs the same "
            "share handed to the expert at random):", "",
        ]
        esc = data["escalation"]
        erows = []
        for i, budget in enumerate(BUDGETS):
            erows.append([
                f"{budget:.1f}", f"{np.mean([r[i]['share'] for r in esc]):.2f}",
                f"{np.mean([r[i]['router'] for r in esc]):.2f}",
                f"{np.mean([r[i]['random'] for r in esc]):.2f}",
            ])
        lines += [markdown_table(["budget", "steps escalated", "router score",
                                  "random hand-off score"], erows), ""]
    speed = results["rank_speed"]
    lines += [
        f"`rank_responses` of {speed['candidates']} candidates with their embeddings cached: "
        f"{speed['rank_cached_ms']:.2f} ms; embedding the state and candidates with MiniLM: "
        f"{speed['embed_ms']:.1f} ms (what an uncached call adds).", "",
        "![learning curves](docs/img/agent_learning.png)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="L1, 20 games, 1 seed; prints only")
    parser.add_argument("--levels", default=None, help="comma-separated, e.g. L1,L2")
    parser.add_argument("--train-games", type=int, default=None)
    parser.add_argument("--test-games", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument("--interactions", type=int, default=1,
                        help="1: the value agent's teacher sees [q, r, q*r, |q-r|]; 0: [q, r]")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    levels = (args.levels or ("L1" if args.quick else "L1,L2")).split(",")
    n_train = args.train_games or (20 if args.quick else 50)
    n_test = args.test_games or (5 if args.quick else 20)
    n_seeds = args.seeds or (1 if args.quick else 2)
    checkpoints = sorted({c for c in (0, 10, 20, 50, 100) if c < n_train} | {n_train})
    names = args.strategies.split(",")
    if unknown := set(names) - set(STRATEGIES):
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    started = time.perf_counter()
    embeddings = CachedEmbeddings(default_embeddings())
    results: dict[str, Any] = {"machine": machine_facts(), "levels": {}}
    with tempfile.TemporaryDirectory(dir=CACHE_DIR if CACHE_DIR.exists() else None) as tmp:
        for level in levels:
            train = ensure_games(level, "train", n_train)
            test = ensure_games(level, "test", n_test)
            ceiling = Strategy("walkthrough", 0, None)
            data: dict[str, Any] = {
                "train_games": n_train, "test_games": n_test, "checkpoints": checkpoints,
                "walkthrough": evaluate(ceiling, test, level), "curves": {}, "seconds": {},
                "escalation": [],
            }
            for name in names:
                data["curves"][name] = {str(c): [] for c in checkpoints}
                data["seconds"][name] = []
            for seed in range(n_seeds):
                for name in names:
                    curve, strategy, seconds = run_strategy(
                        name, seed, level, train, test, checkpoints, embeddings, Path(tmp),
                        bool(args.interactions),
                    )
                    for c, score in curve.items():
                        data["curves"][name][str(c)].append(score)
                    data["seconds"][name].append(seconds)
                    print(f"{level} seed {seed} {name:<10} "
                          + " ".join(f"{c}:{s:.2f}" for c, s in curve.items())
                          + f"  ({seconds:.0f} s)", flush=True)
                    if name == "value":
                        data["escalation"].append(escalation(strategy, test, level, seed))
                        print(f"  escalation {data['escalation'][-1]}", flush=True)
                        if "rank_speed" not in results:
                            with CookingGame.open(test[0], MAX_STEPS[level]) as game:
                                assert strategy.memory is not None
                                results["rank_speed"] = rank_speed(strategy.memory, game.reset())
            results["levels"][level] = data
    results["minutes"] = (time.perf_counter() - started) / 60
    command = " ".join(["python benchmarks/bench_agent.py", *(sys.argv[1:] if argv is None
                                                              else argv)])
    text = report(results, command)
    print(text)
    if not args.quick and not args.no_write:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        (CACHE_DIR / "agent.json").write_text(json.dumps(results, indent=1))
        plot(results, PLOT_DIR / "agent_learning.png")
        update_section("Agent", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
