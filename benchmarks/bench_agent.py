"""Agent benchmark: does remembering rewards make an agent better? TextWorld cooking games.

    python benchmarks/bench_agent.py            # full: L1-L3, 5 seeds
    python benchmarks/bench_agent.py --quick    # L1, 20 training games, 1 seed, prints only

Each strategy plays the same training games (TextWorld `tw-cooking`, train split) in the same
order, learning as it goes, and is measured on the same held-out games (test split: foods and
preparations never seen in training), greedily and without writing to its memory, at
checkpoints that fall on consolidations. The score is the share of the game's points reached
within the level's step cap (1.0 = won). Every agent sees the same state text and candidate commands
(`langchain_kd_memory.games.CookingGame`); they differ only in how they choose:

* random: a random candidate (the floor). walkthrough: the expert's move (the ceiling, 1.0).
* similarity: recall the most similar past states (`invoke` with `reward_weight=0`) and repeat
  the first recalled command that is a candidate (what plain vector memory gives).
* hindsight: the same with `reward_weight=0.5`: (1 - w) * similarity + w * reward
  (Hindsight's rule).
* memrl: among the recalled states, the command of the memory with the highest Q-value; after
  each game the Q-values of the memories used move toward the returns that followed
  (Q += 0.3 * (G - Q), MemRL's rule), new memories start at their own return.
* ridge, knn (references, `references.py`): the simplest learners on the value agent's own
  features ([q, r, q*r, |q-r|] of the same MiniLM embeddings) and targets (the stored
  rewards), refitted at each consolidation: closed-form ridge regression (linear Q) and the
  mean reward of the 10 nearest stored episodes; argmax over the candidates, epsilon 0.25
  random while training.
* value (this package, defaults only): `rank_responses(state, candidates, explore=1)`
  (Thompson sampling from the value head's posterior) while training, greedy on held-out
  games; `consolidate()` every 10 training games.

The memory strategies record each training game with `add_trajectory`: every step is an
episode (state, command) whose reward is the discounted return that followed (gamma 0.7; a
step's own reward is the points it gained / the game's maximum). Strategies other than value
explore with probability 0.1 while training. Then, for the value agent after training,
escalation: `memory.as_router(default=agent, strong=expert, budget=f)` hands the steps whose
state the student values lowest to the expert, against handing the same share of steps to the
expert at random. As RouteLLM reports routers: PGR (the share of the gap between the agent
alone and the expert that a hand-off recovers), APGR (its area over the share of steps handed
off, from 0 to 1) and CPT(x%) (the share of steps handed off to recover x% of the gap).
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
    DiskCachedEmbeddings,
    Summary,
    machine_facts,
    markdown_table,
    time_per_call,
    update_section,
)
from references import KnnValues, RidgeValues  # noqa: E402

from langchain_kd_memory import (  # noqa: E402
    DistilledEpisodicMemory,
    ModelDistillation,
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
BOOTSTRAP: int | None = None
"""The value agent's credit: None for Monte-Carlo returns, n for n-step ones (--bootstrap)."""
EPSILON = 0.1
REFERENCE_EPSILON = 0.25
EXPLORE = 1.0
RECALL_K = 10
MEMRL_ALPHA = 0.3
CONSOLIDATE_EVERY = 10
BUDGETS = (0.1, 0.2, 0.3, 0.5)
STRATEGIES = ("random", "similarity", "hindsight", "memrl", "ridge", "knn", "value")
REFERENCES = {"ridge": RidgeValues, "knn": KnnValues}
TRAIN_GAMES = {"L1": 50, "L2": 200, "L3": 300}
PLOT_DIR = ROOT / "docs" / "img"

Policy = Callable[[Observation], str]


class Strategy:
    """A way to choose commands; memory strategies learn from each training game."""

    def __init__(self, name: str, seed: int, memory: DistilledEpisodicMemory | None) -> None:
        self.name, self.memory = name, memory
        self.rng = np.random.default_rng(seed)
        self.used: list[tuple[int, str]] = []  # memrl: (step, memory id) of this game
        self.reference = REFERENCES[name]() if name in REFERENCES else None
        self.fitted = False
        self.consolidations: list[tuple[int, float]] = []  # value: (episodes, seconds)

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
        if self.reference is not None:
            if not self.fitted or (training and self.rng.random() < REFERENCE_EPSILON):
                return self.random(obs)
            vectors = self.memory.store.embedder.texts([obs.state, *obs.candidates])
            return obs.candidates[int(np.argmax(self.reference.values(vectors[0], vectors[1:])))]
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
        self.memory.add_trajectory(steps, gains, gamma=GAMMA, trajectory_id=f"game-{game}",
                                   bootstrap=BOOTSTRAP if self.name == "value" else None)
        if self.name == "memrl":
            got = discounted_returns(gains, GAMMA)
            for step, memory_id in self.used:
                q = self.memory.store.get([memory_id])[0].reward or 0.0
                self.memory.record_feedback(memory_id, q + MEMRL_ALPHA * (got[step] - q))
            self.used.clear()
        if (game + 1) % CONSOLIDATE_EVERY:
            return
        if self.name == "value":
            start = time.perf_counter()
            self.memory.consolidate()
            self.consolidations.append((self.memory.store.count(),
                                        time.perf_counter() - start))
        elif self.reference is not None:
            self.reference.fit(self.memory.store.training_arrays())
            self.fitted = True

    def policy(self, training: bool) -> Policy:
        steps = iter(range(1 << 30))
        return lambda obs: self.act(obs, next(steps), training)


def evaluate(strategy: Strategy, games: list[Path], level: str) -> float:
    """Mean normalized score on `games`, greedy, nothing recorded."""
    policy = strategy.policy(training=False)
    return float(np.mean([play_game(g, policy, MAX_STEPS[level]).score for g in games]))


def new_memory(directory: Path, embeddings: Embeddings, seed: int) -> DistilledEpisodicMemory:
    """A memory with the package's defaults (only the seed and reward range given)."""
    return DistilledEpisodicMemory(
        embeddings=embeddings, persist_directory=str(directory), reward_range=(0.0, 1.0),
        distillation=ModelDistillation(embeddings=embeddings, seed=seed),
    )


def run_strategy(
    name: str, seed: int, level: str, train: list[Path], test: list[Path],
    checkpoints: Sequence[int], embeddings: Embeddings, workdir: Path,
) -> tuple[dict[int, float], Strategy, float]:
    """Train one strategy on `train` in seed order; its held-out score at each checkpoint."""
    memory = None if name in ("random", "walkthrough") else new_memory(
        workdir / f"{level}-{name}-{seed}", embeddings, seed
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
        share = router.status.escalated_share
        coin = np.random.default_rng(seed)

        def blind_policy(obs: Observation, rng: Any = coin, share: float = share) -> str:
            return (obs.expert or greedy(obs)) if rng.random() < share else greedy(obs)

        blind = np.mean([play_game(g, blind_policy, MAX_STEPS[level]).score for g in test])
        rows.append({"budget": budget, "share": float(share), "router": float(routed),
                     "random": float(blind)})
    return rows


def gap_recovered(rows: list[dict[str, float]], alone: float, expert: float,
                  key: str) -> tuple[np.ndarray, np.ndarray]:
    """Shares handed off and the PGR at each, with the end points (0, 0) and (1, 1)."""
    gap = max(expert - alone, 1e-9)
    shares = np.array([0.0, *(r["share"] for r in rows), 1.0])
    pgr = np.array([0.0, *((r[key] - alone) / gap for r in rows), 1.0])
    order = np.argsort(shares, kind="stable")
    return shares[order], pgr[order]


def apgr(shares: np.ndarray, pgr: np.ndarray) -> float:
    """Area under the PGR curve over the share handed off (trapezoids)."""
    return float(np.sum((shares[1:] - shares[:-1]) * (pgr[1:] + pgr[:-1]) / 2))


def cpt(shares: np.ndarray, pgr: np.ndarray, target: float) -> float:
    """The smallest share handed off at which the interpolated PGR reaches `target`."""
    for i in range(1, len(shares)):
        if pgr[i] >= target:
            if pgr[i] == pgr[i - 1]:
                return float(shares[i])
            t = (target - pgr[i - 1]) / (pgr[i] - pgr[i - 1])
            return float(shares[i - 1] + max(t, 0.0) * (shares[i] - shares[i - 1]))
    return 1.0


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

    levels = sorted(results["levels"])
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(5 * (len(levels) + 1), 4))
    for ax, level in zip(axes, levels, strict=False):
        data = results["levels"][level]
        for name in data["curves"]:
            xs = sorted(int(x) for x in data["curves"][name])
            means = np.array([np.mean(data["curves"][name][str(x)]) for x in xs])
            stds = np.array([np.std(data["curves"][name][str(x)]) for x in xs])
            color = f"C{STRATEGIES.index(name)}"  # one colour per learner in every panel
            ax.plot(xs, means, marker="o", label=name, color=color,
                    lw=2.5 if name == "value" else 1.2)
            ax.fill_between(xs, means - stds, means + stds, color=color, alpha=0.12)
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="walkthrough")
        seeds = len(data["seeds"])
        spread = f"{seeds} seeds (± std)" if seeds > 1 else "1 seed"
        ax.set(title=f"{level}: held-out games, {spread}", xlabel="training games played",
               ylabel="mean score (1 = won)", ylim=(0, 1.05))
        ax.legend(fontsize=8)
    ax = axes[-1]
    for level in levels:
        rows = results["levels"][level]["escalation"]
        if not rows:
            continue
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


def checkpoints_for(n_train: int) -> list[int]:
    """Every consolidation up to 50 games, then every 50."""
    points = set(range(0, min(n_train, 50) + 1, CONSOLIDATE_EVERY)) | set(range(0, n_train, 50))
    return sorted(points | {n_train})


def mean_std(values: Sequence[float]) -> str:
    summary = Summary.of(list(values))
    return f"{summary.mean:.2f} ± {summary.std:.2f}"


def level_report(level: str, data: dict[str, Any]) -> list[str]:
    """The BENCHMARKS.md lines of one level, prose included, from its numbers."""
    n_seeds = len(data["seeds"])
    lines = [f"### {level}: {data['train_games']} training games, {data['test_games']} held-out "
             f"games, {n_seeds} seed{'s' if n_seeds > 1 else ''} (mean ± std over seeds)", "",
             f"`{data['command']}` ({data['machine']}; {data['minutes']:.0f} min)", ""]
    checkpoints = data["checkpoints"]
    headers = ["strategy", *[f"after {c}" for c in checkpoints], "per seed, last", "time"]
    ceiling = f"{data['walkthrough']:.2f}"
    rows = [["walkthrough (ceiling)", *[ceiling] * len(checkpoints), "", "-"]]
    for name, curve in data["curves"].items():
        last = " / ".join(f"{v:.2f}" for v in curve[str(checkpoints[-1])])
        rows.append([name, *[mean_std(curve[str(c)]) for c in checkpoints], last,
                     f"{np.mean(data['seconds'][name]) / 60:.1f} min"])
    lines += [markdown_table(headers, rows), ""]
    last = str(checkpoints[-1])
    final = {name: float(np.mean(curve[last])) for name, curve in data["curves"].items()}
    if "value" in final:
        others = ", ".join(f"{name} {score:.2f}" for name, score in final.items()
                           if name != "value")
        lines += [f"After {last} training games the value agent scores {final['value']:.2f} on "
                  f"held-out {level} games ({others}).", ""]
    if data["consolidations"]:
        pairs = [p for run in data["consolidations"] for p in run]
        largest = max(pairs)
        lines += [f"One consolidation of the value agent: {np.median([t for _, t in pairs]):.1f} "
                  f"s median, {largest[1]:.1f} s at {largest[0]} episodes (the largest).", ""]
    if data["escalation"]:
        lines += escalation_report(data)
    return lines


def escalation_report(data: dict[str, Any]) -> list[str]:
    """Escalation table and RouteLLM's summary figures for one level."""
    esc = data["escalation"]
    rows = []
    for i, budget in enumerate(BUDGETS):
        rows.append([f"{budget:.1f}", mean_std([r[i]["share"] for r in esc]),
                     mean_std([r[i]["router"] for r in esc]),
                     mean_std([r[i]["random"] for r in esc])])
    figures: dict[str, list[float]] = {}
    for seed, rows_of_seed in enumerate(esc):
        alone = data["curves"]["value"][str(data["checkpoints"][-1])][seed]
        if data["walkthrough"] - alone < 0.05:
            continue  # no gap to recover: the agent alone is at the expert's score
        for key in ("router", "random"):
            shares, pgr = gap_recovered(rows_of_seed, alone, data["walkthrough"], key)
            figures.setdefault(f"{key} APGR", []).append(apgr(shares, pgr))
            figures.setdefault(f"{key} CPT(50%)", []).append(cpt(shares, pgr, 0.5))
            figures.setdefault(f"{key} CPT(80%)", []).append(cpt(shares, pgr, 0.8))
    lines = [
        "Escalation (the value agent after training; the router's share of steps vs the same "
        "share handed to the expert at random):", "",
        markdown_table(["budget", "steps escalated", "router score", "random hand-off score"],
                       rows), "",
    ]
    if not figures:
        return [*lines, "APGR and CPT: not measurable (the agent alone is within 0.05 of the "
                "expert's score in every seed).", ""]
    return [*lines, markdown_table(["hand-offs", "APGR", "CPT(50%)", "CPT(80%)"], [
        [key, *[mean_std(figures[f"{key} {f}"]) for f in ("APGR", "CPT(50%)", "CPT(80%)")]]
        for key in ("router", "random")
    ]), f"(over the {len(figures['router APGR'])} seeds with a gap to recover)", ""]


def report(levels: dict[str, dict[str, Any]], speed: dict[str, float] | None) -> str:
    """The BENCHMARKS.md section from every level's numbers."""
    lines: list[str] = []
    for level in sorted(levels):
        lines += level_report(level, levels[level])
    if speed:
        lines += [
            f"`rank_responses` of {speed['candidates']} candidates with their embeddings cached: "
            f"{speed['rank_cached_ms']:.2f} ms; embedding the state and candidates with MiniLM: "
            f"{speed['embed_ms']:.1f} ms (what an uncached call adds).", "",
        ]
    lines.append("![learning curves](docs/img/agent_learning.png)")
    return "\n".join(lines)


def run_level(level: str, names: list[str], n_train: int, n_test: int, seeds: Sequence[int],
              embeddings: Embeddings, workdir: Path,
              save: Callable[[dict[str, Any]], None],
              resumed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every strategy and seed on one level; `save` gets the figures after each seed.

    `resumed` is a saved run of the same level, games and strategies: its seeds are kept
    and skipped.
    """
    started = time.perf_counter()
    train = ensure_games(level, "train", n_train)
    test = ensure_games(level, "test", n_test)
    checkpoints = checkpoints_for(n_train)
    data: dict[str, Any] = resumed or {
        "train_games": n_train, "test_games": n_test, "checkpoints": checkpoints,
        "seeds": [], "walkthrough": evaluate(Strategy("walkthrough", 0, None), test,
                                                      level),
        "curves": {name: {str(c): [] for c in checkpoints} for name in names},
        "seconds": {name: [] for name in names}, "escalation": [], "consolidations": [],
        "rank_speed": None,
    }
    earlier_minutes = data.get("minutes", 0.0)
    for seed in [s for s in seeds if s not in data["seeds"]]:
        for name in names:
            curve, strategy, seconds = run_strategy(
                name, seed, level, train, test, checkpoints, embeddings, workdir
            )
            for c, score in curve.items():
                data["curves"][name][str(c)].append(score)
            data["seconds"][name].append(seconds)
            print(f"{level} seed {seed} {name:<10} "
                  + " ".join(f"{c}:{s:.2f}" for c, s in curve.items())
                  + f"  ({seconds:.0f} s)", flush=True)
            if name != "value":
                continue
            data["consolidations"].append(strategy.consolidations)
            data["escalation"].append(escalation(strategy, test, level, seed))
            print(f"  escalation {data['escalation'][-1]}", flush=True)
            if data["rank_speed"] is None:
                with CookingGame.open(test[0], MAX_STEPS[level]) as game:
                    assert strategy.memory is not None
                    data["rank_speed"] = rank_speed(strategy.memory, game.reset())
        data["seeds"].append(seed)
        data["minutes"] = earlier_minutes + (time.perf_counter() - started) / 60
        save(data)  # a run stopped later keeps the seeds it finished
    return data


def resumable(level: str, names: list[str], n_train: int, n_test: int) -> dict[str, Any] | None:
    """The saved run of `level` if it used these games and strategies, else None."""
    path = CACHE_DIR / f"agent-{level}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    same = (data["train_games"], data["test_games"], sorted(data["curves"])) == (
        n_train, n_test, sorted(names))
    return data if same else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="L1, 20 games, 1 seed; prints only")
    parser.add_argument("--levels", default=None, help="comma-separated, e.g. L1,L2")
    parser.add_argument("--train-games", type=int, default=None,
                        help=f"per level; default {TRAIN_GAMES}")
    parser.add_argument("--test-games", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N",
                        help="the value agent credits steps with N-step returns (default: "
                             "Monte-Carlo, as add_trajectory's default)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds a saved run of the same settings finished")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md and the plot from the saved levels; run none")
    args = parser.parse_args(argv)
    global BOOTSTRAP
    BOOTSTRAP = args.bootstrap
    levels = (args.levels or ("L1" if args.quick else ",".join(TRAIN_GAMES))).split(",")
    if unknown := set(levels) - set(TRAIN_GAMES):
        parser.error(f"unknown levels {sorted(unknown)}; choose from {list(TRAIN_GAMES)}")
    n_test = args.test_games or (5 if args.quick else 20)
    seeds = range(args.seeds or (1 if args.quick else 5))
    names = args.strategies.split(",")
    if unknown := set(names) - set(STRATEGIES):
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    command = " ".join(["python benchmarks/bench_agent.py", *(sys.argv[1:] if argv is None
                                                              else argv)])
    write = not (args.quick or args.no_write)
    embeddings = DiskCachedEmbeddings()
    with tempfile.TemporaryDirectory(dir=CACHE_DIR if CACHE_DIR.exists() else None) as tmp:
        for level in [] if args.report_only else levels:
            n_train = args.train_games or (20 if args.quick else TRAIN_GAMES[level])
            def save(data: dict[str, Any], level: str = level) -> None:
                data.update(command=command, machine=machine_facts())
                if write:  # one file per level: levels may run in separate processes
                    CACHE_DIR.mkdir(parents=True, exist_ok=True)
                    (CACHE_DIR / f"agent-{level}.json").write_text(json.dumps(data, indent=1))

            data = run_level(level, names, n_train, n_test, seeds, embeddings, Path(tmp), save,
                             resumable(level, names, n_train, n_test) if args.resume else None)
            print("\n".join(level_report(level, data)), flush=True)
    if write:
        saved = {path.stem.removeprefix("agent-"): json.loads(path.read_text())
                 for path in sorted(CACHE_DIR.glob("agent-L*.json"))}
        plot({"levels": saved}, PLOT_DIR / "agent_learning.png")
        speed = next((d["rank_speed"] for d in saved.values() if d.get("rank_speed")), None)
        update_section("Agent", report(saved, speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
