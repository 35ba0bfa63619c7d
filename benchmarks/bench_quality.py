"""Quality benchmark of the value model on chitchat-dataset.

Two tasks on one fixed 80/20 split, every model and baseline in the same run:

* A, score an episode: the networks see query + response.
* B, score a new query: the student sees the query alone.

Run `python benchmarks/bench_quality.py` (about 10 minutes on 2 cores) or `--quick` for a smoke
run. The markdown is printed and written into the `## Quality` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from langchain_core.embeddings import Embeddings
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import KNeighborsRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCHMARKS_MD,
    Summary,
    chitchat_arrays,
    machine_facts,
    mae,
    markdown_table,
    paired_bootstrap_se,
    spearman,
    split_indices,
    time_per_call,
    update_section,
)

from langchain_kd_memory.distillation import ModelDistillation  # noqa: E402
from langchain_kd_memory.embeddings import EmbedderIdentity  # noqa: E402
from langchain_kd_memory.episodes import TrainingArrays  # noqa: E402
from langchain_kd_memory.models import count_parameters  # noqa: E402

SPLIT_SEED = 0
CONSOLIDATION_EPISODES = 5000
# Engine runs use one torch thread (set in main): on this shared 2-core machine two threads ran
# a teacher step 15x slower.
BASE_CONFIG: dict[str, Any] = {"device": "cpu"}
# alpha = 0 ignores the teacher, so the labels-alone run gets a tiny one to save time.
NO_TEACHER: dict[str, Any] = {"alpha": 0.0, "beta": 1.0, "teacher": {"hidden_sizes": [8]}}
Predictions = dict[str, np.ndarray]


@dataclass(frozen=True)
class Setting:
    """One engine configuration, trained once per seed.

    Attributes:
        name: Row label.
        task: "A" (student sees query + response) or "B" (student sees the query alone).
        config: `ModelDistillation` arguments on top of `BASE_CONFIG` and the seed.
        note: What the setting tests.
        report_teacher: Whether the teacher's own predictions get a row.
    """

    name: str
    task: str
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    report_teacher: bool = False


# The protocol's settings first, then every attempt to make distillation help on task B.
SETTINGS = [
    Setting("KD, defaults", "A", {"privileged": False}, "both see [query|response]", True),
    Setting("KD, patience 6", "A", {"privileged": False, "patience": 6},
            "attempt: later early stopping", True),
    Setting("KD, lr 3e-4", "A", {"privileged": False, "learning_rate": 3e-4},
            "attempt: smaller learning rate", True),
    Setting("KD, regression term", "A", {"privileged": False, "regression_weight": 1.0},
            "attempt: + squared error of the expected reward", True),
    Setting("KD, soft-target width 4", "A", {"privileged": False, "soft_target_width": 4.0},
            "attempt: wider Gaussian targets (4 bins)", True),
    Setting("KD, patience 6 + regression term", "A",
            {"privileged": False, "patience": 6, "regression_weight": 1.0},
            "attempt: the two changes that steadied task A, together", True),
    Setting("privileged KD, defaults", "B", {}, "teacher saw query+response", True),
    Setting("labels alone", "B", NO_TEACHER, "alpha=0, beta=1"),
    Setting("non-privileged KD", "B", {"privileged": False}, "teacher saw the query only", True),
    Setting("privileged KD, cross-fitted", "B", {"cross_fit_folds": 5},
            "attempt: student learns out-of-fold teacher logits (5 folds)"),
    Setting("privileged KD, T=1", "B", {"temperature": 1.0}, "attempt: temperature 1"),
    Setting("privileged KD, alpha=0.3", "B", {"alpha": 0.3, "beta": 0.7},
            "attempt: more weight on labels"),
    Setting("privileged KD, regression term", "B", {"regression_weight": 1.0},
            "attempt: + squared error of the expected reward"),
    Setting("privileged KD, strong regularisation", "B",
            {"weight_decay": 0.1, "student": {"hidden_sizes": [256, 128], "dropout": 0.3}},
            "attempt: weight decay 0.1, student dropout 0.3"),
    Setting("privileged KD, patience 6 + regression term", "B",
            {"patience": 6, "regression_weight": 1.0}, "attempt: task A's best pair"),
]
QUICK_SETTINGS = {"KD, defaults", "privileged KD, defaults", "labels alone"}


def baselines(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> Predictions:
    """Predict-the-mean/-median, ridge (alpha by leave-one-out CV on train), cosine kNN."""
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x_train, y_train)
    out = {
        "predict-the-mean": np.full(len(x_test), float(np.mean(y_train))),
        "predict-the-median": np.full(len(x_test), float(np.median(y_train))),
        f"ridge (alpha={ridge.alpha_:g} by LOO-CV)": ridge.predict(x_test),
    }
    for k in (10, 50):
        knn = KNeighborsRegressor(n_neighbors=k, metric="cosine", algorithm="brute")
        out[f"kNN k={k} (cosine)"] = knn.fit(x_train, y_train).predict(x_test)
    return out


def cv_ridge_spearman(data: TrainingArrays, folds: int = 5) -> list[float]:
    """Diagnostic beside the fixed split: ridge's Spearman on each fold of a K-fold CV."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data))
    out = []
    for test in np.array_split(order, folds):
        train = np.setdiff1d(order, test)
        ridge = RidgeCV(alphas=np.logspace(-2, 4, 13))
        ridge.fit(data.query_embeddings[train], data.rewards[train])
        out.append(spearman(data.rewards[test], ridge.predict(data.query_embeddings[test])))
    return out


class PairedVectors(Embeddings):
    """Identity of [query | response] vectors for task A; it never embeds text.

    The engine's student sees the "query" embedding alone and checks its dimension against the
    embedder's, so task A feeds the concatenation as the query under this 2 x 384-dim identity.
    """

    def __init__(self, dimension: int) -> None:
        self.identity = EmbedderIdentity("all-MiniLM-L6-v2 [query|response]", dimension)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError("task A trains and predicts on stored vectors only")

    def embed_query(self, text: str) -> list[float]:
        raise NotImplementedError("task A trains and predicts on stored vectors only")


def task_view(data: TrainingArrays, task: str) -> TrainingArrays:
    """Task B: the data as is. Task A: [query | response] as the query (and unused response)."""
    if task == "B":
        return data
    both = np.concatenate([data.query_embeddings, data.response_embeddings], axis=1)
    return TrainingArrays(both, both, data.rewards, data.ids)


def new_model(task: str, dimension: int, seed: int, config: dict[str, Any]) -> ModelDistillation:
    """An untrained engine for `task` on vectors of `dimension`."""
    embeddings = PairedVectors(dimension) if task == "A" else None
    return ModelDistillation(seed=seed, embeddings=embeddings, **{**BASE_CONFIG, **config})


@dataclass
class Row:
    """Metrics of one model over seeds."""

    task: str
    model: str
    note: str = ""
    spearman: list[float] = field(default_factory=list)
    mae: list[float] = field(default_factory=list)
    median_mae: list[float] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list)
    params: int | None = None

    def add(self, y: np.ndarray, pred: np.ndarray, median: np.ndarray | None = None) -> None:
        """Score one seed's predictions (and the median of its distributions, if given)."""
        self.predictions.append(pred)
        self.spearman.append(spearman(y, pred))
        self.mae.append(mae(y, pred))
        if median is not None:
            self.median_mae.append(mae(y, median))


def forward_times(model: ModelDistillation, dim: int, privileged: bool) -> dict[str, float]:
    """Seconds per query of the student's and the teacher's forward pass, batch 1 and 256."""
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for batch in (1, 256):
        q = torch.randn(batch, dim)
        with torch.inference_mode():
            out[f"student, batch {batch}"] = time_per_call(lambda q=q: model.student(q)) / batch
            out[f"teacher, batch {batch}"] = time_per_call(
                lambda q=q: model.teacher(q, q) if privileged else model.teacher(q)
            ) / batch
    torch.set_num_threads(threads)
    return out


def consolidation_times(
    train: TrainingArrays, threads: tuple[int, ...], quiet: bool
) -> list[list[str]]:
    """Default training on 5,000 episodes (train rows resampled: timing only) per thread count."""
    rows = np.random.default_rng(0).choice(len(train), CONSOLIDATION_EPISODES, replace=True)
    data = train.subset(rows)
    out = []
    previous = torch.get_num_threads()
    for n in threads:
        model = ModelDistillation(seed=0, device="cpu")
        torch.set_num_threads(n)
        start = time.perf_counter()
        results = model.distill_from_memories(data, quiet=quiet)
        torch.set_num_threads(previous)
        out.append([f"{n}", f"{time.perf_counter() - start:.1f}",
                    f"{results['teacher']['epochs_run']} + {results['student']['epochs_run']}"])
    return out


class Benchmark:
    """Runs baselines and engine settings on one split and collects rows."""

    def __init__(self, limit: int | None) -> None:
        data = chitchat_arrays(limit)
        train_idx, test_idx = split_indices(len(data), 0.2, SPLIT_SEED)
        self.train, self.test = data.subset(train_idx), data.subset(test_idx)
        self.y = self.test.rewards.astype(np.float64)
        self.rows: dict[tuple[str, str], Row] = {}
        self.train_seconds: dict[str, list[float]] = {}
        self.timing: dict[str, dict[str, float]] = {}
        self.cv_folds = {task: cv_ridge_spearman(task_view(data, task)) for task in ("A", "B")}

    def row(self, task: str, name: str, note: str = "") -> Row:
        """The row of (task, name), created on first use."""
        return self.rows.setdefault((task, name), Row(task, name, note))

    def run_baselines(self) -> None:
        """Every baseline on both tasks (deterministic: once)."""
        for task in ("A", "B"):
            train, test = task_view(self.train, task), task_view(self.test, task)
            for name, pred in baselines(
                train.query_embeddings, train.rewards, test.query_embeddings
            ).items():
                self.row(task, name, "baseline").add(self.y, pred)

    def run_setting(self, setting: Setting, seed: int, quiet: bool) -> None:
        """Train `setting` with `seed` and score student (and teacher) on the test part."""
        train, test = task_view(self.train, setting.task), task_view(self.test, setting.task)
        model = new_model(setting.task, train.dimension, seed, setting.config)
        start = time.perf_counter()
        model.distill_from_memories(train, quiet=quiet)
        seconds = time.perf_counter() - start
        self.train_seconds.setdefault(setting.name, []).append(seconds)
        networks = {"student": model.student} | (
            {"teacher": model.teacher} if setting.report_teacher else {}
        )
        for role, network in networks.items():
            estimates = model.predict_embeddings(
                test.query_embeddings, test.response_embeddings, model=role
            )
            row = self.row(setting.task, f"{role}: {setting.name}", setting.note)
            row.add(self.y, np.array([e.expected for e in estimates]),
                    np.array([e.quantile(0.5) for e in estimates]))
            row.params = count_parameters(network)
        if setting.report_teacher and setting.name not in self.timing and setting.name in (
            "KD, defaults", "privileged KD, defaults"
        ):
            self.timing[setting.name] = forward_times(
                model, self.train.dimension * (2 if setting.task == "A" else 1),
                privileged=setting.task == "B",
            )
        print(f"{time.strftime('%H:%M:%S')} seed {seed} {setting.name}: {seconds:.1f} s",
              file=sys.stderr, flush=True)


def summary_cell(values: list[float]) -> str:
    """'mean ± std (se)', or the single value of a deterministic baseline."""
    if not values:
        return ""
    s = Summary.of(values)
    return f"{s.mean:.3f}" if s.n == 1 else f"{s.mean:.3f} ± {s.std:.3f} ({s.se:.3f})"


def targets(bench: Benchmark) -> list[list[str]]:
    """The quality bars for the default settings, each with its numbers and verdict."""

    def get(task: str, name: str) -> Row:
        return bench.rows[(task, name)]

    def mean(values: list[float]) -> float:
        return Summary.of(values).mean

    def best_baseline(task: str) -> Row:
        rows = [r for r in bench.rows.values() if r.task == task and r.note == "baseline"]
        return max(rows, key=lambda r: mean(r.spearman))

    def compare(label: str, row: Row, other: Row) -> list[Any]:
        """Mean Spearman gap; the bar is one seed standard error of `row`'s own seeds."""
        gap = mean(row.spearman) - mean(other.spearman)
        se = Summary.of(row.spearman).se
        test_se = paired_bootstrap_se(
            bench.y, np.mean(row.predictions, axis=0), np.mean(other.predictions, axis=0)
        )
        return [label, f"{gap:+.3f} (seed se {se:.3f}; test-set se {test_se:.3f})", gap >= -se]

    out = []
    student_a, teacher_a = get("A", "student: KD, defaults"), get("A", "teacher: KD, defaults")
    ratio = mean(student_a.spearman) / mean(teacher_a.spearman)
    out.append(["A: student keeps >= 95% of teacher Spearman", f"{ratio:.1%}", ratio >= 0.95])
    params = (student_a.params or 0) / (teacher_a.params or 1)
    out.append(["A: student params <= 1/4 of teacher", f"{params:.3f}", params <= 0.25])
    for task, student in (("A", student_a), ("B", get("B", "student: privileged KD, defaults"))):
        base = best_baseline(task)
        out.append(compare(f"{task}: student vs best baseline ({base.model}), Spearman",
                           student, base))
    labels = get("B", "student: labels alone")
    for kd in ("privileged KD, defaults", "non-privileged KD"):
        if ("B", f"student: {kd}") in bench.rows:
            out.append(compare(f"B: {kd} student vs labels alone, Spearman",
                               get("B", f"student: {kd}"), labels))
    mean_mae = mean(get("A", "predict-the-mean").mae)
    for r in (r for r in bench.rows.values() if r.note != "baseline"):
        gaps = [mean(r.mae) - mean_mae, mean(r.median_mae) - mean_mae]
        out.append([f"{r.task}: {r.model} beats the mean in MAE (expected / median)",
                    f"{gaps[0]:+.3f} / {gaps[1]:+.3f}", min(gaps) < 0])
    return [[a, b, "met" if ok else "**missed**"] for a, b, ok in out]


def report(bench: Benchmark, seeds: list[int], consolidation: list[list[str]],
           total_seconds: float) -> str:
    """The markdown body: one table per task, targets, cost."""
    n_test = len(bench.test)
    lines = [f"{len(bench.train)} train / {n_test} test episodes "
             f"(`load_chitchat()` defaults: rated conversations that got an answer), split seed "
             f"{SPLIT_SEED}, model seeds {seeds}. Cells: mean ± std (standard error) over seeds; "
             f"baselines are deterministic. Sampling noise of the test set alone: a Spearman "
             f"near 0 has a standard error of about 1/sqrt({n_test}) = "
             f"{1 / np.sqrt(n_test):.3f}. Engine runs use {BASE_CONFIG}; MAE is of the "
             f"expected reward, \"MAE (median)\" of the median of the predicted distribution. "
             f"Diagnostic beside the fixed split, ridge in 5-fold CV over all "
             f"{len(bench.train) + n_test} episodes, Spearman per fold: "
             + "; ".join(f"task {task} {', '.join(f'{v:.3f}' for v in values)}"
                         for task, values in bench.cv_folds.items()) + ".", ""]
    for task, title in (("A", "Task A: score an episode (query + response)"),
                        ("B", "Task B: score a new query (query alone)")):
        table = [[r.model, summary_cell(r.spearman), summary_cell(r.mae),
                  summary_cell(r.median_mae), f"{r.params:,}" if r.params else "", r.note]
                 for r in bench.rows.values() if r.task == task]
        lines += [f"### {title}", "", markdown_table(
            ["model", "Spearman", "MAE", "MAE (median)", "params", "note"], table), ""]
    lines += ["### Targets for the default settings", "",
              markdown_table(["target", "value", "verdict"], targets(bench)), ""]
    lines += ["### Cost", "", markdown_table(
        ["setting", "training seconds per run"],
        [[name, summary_cell(s)] for name, s in bench.train_seconds.items()]), ""]
    lines += [f"Consolidation of {CONSOLIDATION_EPISODES:,} episodes (train rows resampled, "
              f"timing only), default settings, seed 0:", "",
              markdown_table(["torch threads", "seconds", "epochs (teacher + student)"],
                             consolidation), ""]
    timing_rows = [[name, role, f"{t * 1e6:.1f}"] for name, times in bench.timing.items()
                   for role, t in times.items()]
    lines += ["Forward time per query (µs, one thread, no embedding):", "",
              markdown_table(["setting", "network, batch", "µs per query"], timing_rows), ""]
    lines += [f"Whole run: {total_seconds:.0f} s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1,500 episodes, 3 "
                        "settings; writes no file unless --out is given")
    parser.add_argument("--seeds", type=int, default=None, help="number of model seeds (5)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"markdown file whose '## Quality' section is replaced "
                        f"(default {BENCHMARKS_MD.name}; none with --quick)")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    out = args.out or (None if args.quick else BENCHMARKS_MD)
    command = " ".join(["python benchmarks/bench_quality.py", *sys.argv[1:]])
    header = (f"Command: `{command}`  \n"
              f"Machine: {machine_facts()}  \n"
              f"Load average at start: {os.getloadavg()[0]:.1f} (the machine is shared)\n")
    started = time.perf_counter()
    bench = Benchmark(1500 if args.quick else None)
    bench.run_baselines()
    settings = [s for s in SETTINGS if not args.quick or s.name in QUICK_SETTINGS]
    for seed in seeds:
        for setting in settings:
            bench.run_setting(setting, seed, quiet=not args.progress)
    consolidation = consolidation_times(
        bench.train, (1,) if args.quick else (1, 2), quiet=not args.progress
    )
    text = header + "\n" + report(bench, seeds, consolidation, time.perf_counter() - started)
    print(text)
    if out is not None:
        update_section("Quality", text, out)


if __name__ == "__main__":
    main()
