"""`kd-memory`: the command line of langchain-kd-memory.

Every subcommand works on one memory: an embedded Chroma database in `--persist-dir` (or a
Chroma server with `--chroma-host`), the collection prefix `--collection`, and the value model's
checkpoints in `--model-dir` (default: `{persist-dir}/models`, also with a server, so the
checkpoint stays on this machine). Results go to stdout (`--json` for machine-readable output),
progress and messages to stderr.

Exit codes: 0 success, 2 bad usage or bad input (nothing was changed), 1 any other error,
130 and 143 when stopped by Ctrl-C or SIGTERM, 141 (silently) when the reader of the output
closed it early (`kd-memory export | head`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from langchain_kd_memory import ingest
from langchain_kd_memory.episodes import (
    DEFAULT_NAMESPACE,
    DEFAULT_PERSIST_DIRECTORY,
    Episode,
    RewardEstimate,
)
from langchain_kd_memory.errors import (
    ConfigError,
    DuplicateEpisodeError,
    InvalidArgumentError,
    InvalidEpisodeError,
    InvalidNamespaceError,
    KDMemoryError,
    NotTrainedError,
)

if TYPE_CHECKING:  # the heavy modules (chromadb, torch, LangChain) load when a command runs
    from langchain_kd_memory.consolidation import ConsolidationReport
    from langchain_kd_memory.memory import DistilledEpisodicMemory
    from langchain_kd_memory.storage import EpisodeStore

logger = logging.getLogger(__name__)

PROG = "kd-memory"
DEFAULT_COLLECTION = "episodes"
DEFAULT_CHROMA_PORT = 8000
INGEST_BATCH = 256
EXPORT_PAGE = 1000
HISTOGRAM_ROWS = 16
HISTOGRAM_WIDTH = 40
LISTED_EXISTING = 20
"""At most this many already-stored ids are listed one by one."""

_USAGE_ERRORS = (
    InvalidEpisodeError,
    InvalidArgumentError,
    InvalidNamespaceError,
    ConfigError,
    DuplicateEpisodeError,
)


class UsageError(Exception):
    """Bad usage or bad input detected by the command line itself (exit code 2)."""


# ----------------------------------------------------------------------------- output


@dataclass
class _Console:
    """Where results, messages and progress go, as the global options ask."""

    json: bool
    quiet: bool

    def result(self, data: Any, text: str) -> None:
        """Print a result: `data` as JSON with --json, else `text`."""
        print(json.dumps(data, indent=2, ensure_ascii=False) if self.json else text)

    def info(self, message: str) -> None:
        """A message for people (stderr), hidden by --quiet."""
        if not self.quiet:
            print(message, file=sys.stderr)

    @property
    def bars(self) -> bool:
        """Whether to draw progress bars: on a terminal, unless --quiet or --json."""
        return not (self.quiet or self.json) and sys.stderr.isatty()


def _short(text: str, width: int = 100) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...") or '""'


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- opening


def _open_memory(args: argparse.Namespace) -> DistilledEpisodicMemory:
    """The memory the global options describe (a Chroma server with --chroma-host)."""
    from langchain_kd_memory.memory import DistilledEpisodicMemory
    from langchain_kd_memory.storage import EpisodeStore, http_client

    persist = Path(args.persist_dir)
    if args.chroma_host:
        store = EpisodeStore(args.collection, client=http_client(args.chroma_host, args.port))
    else:
        if args.command != "ingest" and not persist.exists():
            raise UsageError(
                f"no memory at {persist}: ingest episodes first (kd-memory ingest FILE.jsonl) "
                "or pass --persist-dir"
            )
        store = EpisodeStore(args.collection, persist_directory=str(persist))
    model_dir = args.model_dir or str(persist / "models")
    return DistilledEpisodicMemory(
        store=store, model_dir=model_dir, namespace=args.namespace or DEFAULT_NAMESPACE
    )


def _checkpoint_manifest(
    memory: DistilledEpisodicMemory, model_namespace: str | None
) -> dict[str, Any] | None:
    """The current manifest of a namespace's own model (None: the shared one), with its path.

    Verified as loading verifies it.
    """
    from langchain_kd_memory.checkpoint import load_checkpoint, manifest_path
    from langchain_kd_memory.value_models import checkpoint_prefix

    assert memory.model_dir is not None
    prefix = checkpoint_prefix(memory.model_dir, model_namespace)
    checkpoint = load_checkpoint(prefix, embedder=memory.store.identity)
    if checkpoint is None:
        return None
    return {**checkpoint.manifest, "path": str(manifest_path(prefix))}


def _model_name(model_namespace: str | None) -> str:
    """How the text output names the model that answers."""
    return "the shared model" if model_namespace is None else (
        f"namespace {model_namespace!r}'s own model")


def _require_trained(memory: DistilledEpisodicMemory) -> None:
    if not memory.is_trained:
        rated = memory.store.count_rated(memory.namespace)
        raise NotTrainedError(
            f"no trained value model in {memory.model_dir} (namespace {memory.namespace!r} has "
            f"{rated} rated episodes): run `kd-memory consolidate` first"
        )


# ----------------------------------------------------------------------------- ingest


def _cmd_ingest(args: argparse.Namespace, console: _Console) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    try:
        with (
            contextlib.nullcontext(sys.stdin.buffer) if args.file == "-"
            else open(args.file, "rb")
        ) as handle:
            lines, invalid = ingest.parse_file(handle, args.namespace or DEFAULT_NAMESPACE)
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from exc
    memory = _open_memory(args) if lines else None  # a file of bad lines creates nothing
    if memory is not None:
        lines, unstorable = ingest.storable(memory.store, lines)
        invalid = sorted(invalid + unstorable)
    for number, reason in invalid:
        print(f"{source}:{number}: {reason}", file=sys.stderr)
    if invalid and not args.skip_invalid:
        raise UsageError(
            f"{len(invalid)} invalid line(s) in {source}; nothing was ingested (fix them, or "
            f"pass --skip-invalid to ingest the {len(lines)} valid one(s))"
        )
    if memory is None:
        memory = _open_memory(args)
    stored = ingest.find_stored(memory.store, [line.episode for line in lines])
    taken = [line for line in lines if (line.episode.namespace, line.episode.id) in stored]
    changed = [
        (line, diff) for line in taken
        if (diff := ingest.differences(line, stored[line.episode.namespace, line.episode.id]))
    ]
    if changed and not args.skip_existing:
        for line, diff in changed[:LISTED_EXISTING]:
            print(
                f"{source}:{line.number}: id {line.episode.id!r} is stored in namespace "
                f"{line.episode.namespace!r} with another {', '.join(diff)}",
                file=sys.stderr,
            )
        if len(changed) > LISTED_EXISTING:
            print(f"... and {len(changed) - LISTED_EXISTING} more", file=sys.stderr)
        raise UsageError(
            f"{len(changed)} episode(s) of {source} differ from those stored under their ids; "
            "nothing was ingested (pass --skip-existing to keep the stored ones and ingest the "
            "new ones, or give these lines other ids)"
        )
    taken_numbers = {line.number for line in taken}
    new = [line.episode for line in lines if line.number not in taken_numbers]
    ingest.store_all(memory, new, args.batch_size, progress=console.bars,
                     say=lambda message: print(f"{PROG}: {message}", file=sys.stderr))
    counts: dict[str, int] = {}
    for episode in new:
        counts[episode.namespace] = counts.get(episode.namespace, 0) + 1
    result = {
        "ingested": len(new),
        "rated": sum(e.is_rated for e in new),
        "invalid_lines_skipped": [number for number, _ in invalid],
        "already_stored_skipped": len(taken),
        "namespaces": counts,
    }
    where = "".join(f", {n} in namespace {ns!r}" for ns, n in counts.items())
    console.result(
        result,
        f"ingested {len(new)} episodes ({result['rated']} rated){where}; skipped "
        f"{len(invalid)} invalid line(s) and {len(taken)} episode(s) already stored",
    )
    return 0


# ----------------------------------------------------------------------------- consolidate


def _cmd_consolidate(args: argparse.Namespace, console: _Console) -> int:
    memory = _open_memory(args)
    # Set after opening: a loaded checkpoint brings its own settings.
    overrides = {"seed": args.seed, "min_episodes": args.min_episodes}
    chosen = {name: value for name, value in overrides.items() if value is not None}
    memory.distillation.config = replace(memory.distillation.config, **chosen)
    where = "every namespace" if args.namespace is None else f"namespace {args.namespace!r}"
    console.info(f"training on the rated episodes of {where} ...")
    report = memory.consolidate(
        args.namespace,
        max_training_episodes=args.max_episodes,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        quiet=not console.bars,
    )
    m = report.metrics
    val = m["validation"]
    result = {
        "namespace": report.namespace,
        "episodes_used": report.episodes_used,
        "num_train": m["num_train"],
        "num_val": m["num_val"],
        "duration_s": report.duration_s,
        "validation_mae": val,
        "teacher": {k: m["teacher"][k] for k in ("epochs_run", "best_epoch", "params")},
        "student": {k: m["student"][k] for k in ("epochs_run", "best_epoch", "params")},
        "seed": m["seed"],
        "checkpoint_version": report.checkpoint_version,
        "checkpoint_path": report.checkpoint_path,
    }
    model = "the shared model" if report.namespace is None else f"namespace {report.namespace!r}"
    text = "\n".join([
        f"consolidated {model}: {report.episodes_used} rated episodes "
        f"({m['num_train']} training / {m['num_val']} validation) in {report.duration_s:.1f} s",
        f"  validation MAE   teacher {_fmt(val['teacher_mae'])}   student "
        f"{_fmt(val['student_mae'])}   predict-the-mean {_fmt(val['mean_mae'])}",
        f"  epochs           teacher {m['teacher']['epochs_run']} (best "
        f"{m['teacher']['best_epoch']})   student {m['student']['epochs_run']} (best "
        f"{m['student']['best_epoch']})   seed {m['seed']}",
        f"  checkpoint       v{report.checkpoint_version}: {report.checkpoint_path}",
    ])
    console.result(result, text)
    return 0


def _cmd_worker(args: argparse.Namespace, console: _Console) -> int:
    from langchain_kd_memory.worker import ConsolidationWorker

    memory = _open_memory(args)
    worker = ConsolidationWorker(
        memory, every_n_ratings=args.every, poll_s=args.poll, shared=args.shared
    )
    console.info(
        f"watching {memory.store!r}: each namespace is trained after {args.every} new ratings"
        + (" (and the shared model)" if args.shared else "") + f"; models in {memory.model_dir}"
    )
    def said(report: ConsolidationReport) -> str:
        name = "the shared model" if report.namespace is None else \
            f"namespace {report.namespace!r}"
        return (f"trained {name} on {report.episodes_used} rated episodes: "
                f"v{report.checkpoint_version}")

    if args.once:
        reports = worker.run_once()
        console.result(
            [{"namespace": r.namespace, "episodes_used": r.episodes_used,
              "checkpoint_version": r.checkpoint_version} for r in reports],
            "\n".join(map(said, reports)) or "nothing was due",
        )
        return 0
    stop, why = threading.Event(), []

    def terminated(signum: int, frame: object) -> None:
        why.append("SIGTERM")
        stop.set()

    signal.signal(signal.SIGTERM, terminated)
    try:
        worker.run(stop, trained=lambda report: console.info(said(report)))
    except KeyboardInterrupt:
        why.append("Ctrl-C")
    console.info(f"stopped ({why[0] if why else 'done'})")
    return 0


# ----------------------------------------------------------------------------- score, compare


def _histogram(estimate: RewardEstimate, rows: int = HISTOGRAM_ROWS) -> list[str]:
    """The distribution as text bars, neighbouring bins summed into `rows` rows."""
    centers, probs = estimate.bin_centers, estimate.distribution
    groups = np.array_split(np.arange(len(probs)), min(rows, len(probs)))
    half = (centers[1] - centers[0]) / 2
    digits = max(0, 2 - int(np.floor(np.log10(centers[-1] - centers[0] + 2 * half))))
    mass = [float(probs[g].sum()) for g in groups]
    peak = max(mass) or 1.0
    lines = []
    for g, p in zip(groups, mass, strict=True):
        low, high = centers[g[0]] - half, centers[g[-1]] + half
        bar = "#" * round(HISTOGRAM_WIDTH * p / peak)
        lines.append(f"  {low:9.{digits}f} .. {high:<9.{digits}f} {bar:<{HISTOGRAM_WIDTH}} "
                     f"{100 * p:5.1f}%")
    return lines


def _estimate_dict(estimate: RewardEstimate) -> dict[str, Any]:
    return {
        **estimate.to_dict(),
        "quantiles": {f"{q:g}": estimate.quantile(q) for q in (0.1, 0.5, 0.9)},
        "bin_centers": [float(c) for c in estimate.bin_centers],
    }


def _cmd_score(args: argparse.Namespace, console: _Console) -> int:
    memory = _open_memory(args)
    _require_trained(memory)
    estimate = memory.score(args.query)
    q10, q50, q90 = (estimate.quantile(q) for q in (0.1, 0.5, 0.9))
    text = "\n".join([
        f"student's estimate for {_short(args.query)!r}",
        f"  expected reward  {estimate.expected:.3f} ± {estimate.std:.3f} (std)   most likely "
        f"{estimate.mode:.3f}",
        f"  quantiles        10%: {q10:.3f}   50%: {q50:.3f}   90%: {q90:.3f}",
        f"  model            {_model_name(estimate.model_namespace)}, checkpoint "
        f"v{estimate.model_version}",
        f"  distribution over {len(estimate.distribution)} bins, summed in "
        f"{min(HISTOGRAM_ROWS, len(estimate.distribution))} rows (reward range, probability):",
        *_histogram(estimate),
    ])
    console.result({"query": args.query, **_estimate_dict(estimate)}, text)
    return 0


def _cmd_compare(args: argparse.Namespace, console: _Console) -> int:
    memory = _open_memory(args)
    _require_trained(memory)
    c = memory.distillation.compare_teacher_student(args.query, args.response)
    teacher: RewardEstimate = c["teacher"]
    student: RewardEstimate = c["student"]
    similarity = c["similarity"]
    reads = "query + response" if memory.distillation.config.privileged else "query only"
    text = "\n".join([
        f"teacher ({reads}) vs student (query only) on {_short(args.query)!r}"
        + (f" with response {_short(args.response, 60)!r}" if args.response else ""),
        f"  {'':18} {'teacher':>12} {'student':>12}",
        f"  {'expected reward':18} {teacher.expected:12.3f} {student.expected:12.3f}",
        f"  {'std':18} {teacher.std:12.3f} {student.std:12.3f}",
        f"  {'most likely bin':18} {teacher.predicted_bin:12d} {student.predicted_bin:12d}",
        f"  {'parameters':18} {c['teacher_params']:12,d} {c['student_params']:12,d}",
        f"  compression ratio {c['compression_ratio']:.1f}x   same bin: "
        f"{'yes' if similarity['prediction_match'] else 'no'}   KL(teacher || student) "
        f"{similarity['kl_divergence']:.4f}   |expected difference| "
        f"{similarity['expected_difference']:.3f}",
    ])
    data = {
        "query": args.query,
        "response": args.response,
        "compression_ratio": c["compression_ratio"],
        "teacher_params": c["teacher_params"],
        "student_params": c["student_params"],
        "similarity": similarity,
        "teacher": _estimate_dict(teacher),
        "student": _estimate_dict(student),
    }
    console.result(data, text)
    return 0


# ----------------------------------------------------------------------------- recall


def _cmd_recall(args: argparse.Namespace, console: _Console) -> int:
    memory = _open_memory(args)
    kwargs: dict[str, Any] = {"k": args.k}
    if args.reward_weight is not None:
        kwargs["reward_weight"] = args.reward_weight
    documents = memory.invoke(args.query, **kwargs)
    lines = [f"{len(documents)} episodes recalled for {_short(args.query)!r} "
             f"(score = (1 - w) * similarity + w * value)"]
    lines.append(f"  {'#':>2} {'score':>6} {'similar':>7} {'reward':>7} {'value':>6}  query")
    for rank, doc in enumerate(documents, start=1):
        meta = doc.metadata
        reward = "-" if meta["reward"] is None else f"{meta['reward']:.3g}"
        lines.append(
            f"  {rank:2d} {meta['score']:6.3f} {meta['similarity']:7.3f} {reward:>7} "
            f"{meta['value']:6.3f}  {_short(meta['query'], 80)}"
        )
        if meta["response"]:
            lines.append(f"{'':36}-> {_short(meta['response'], 80)}")
    console.result([doc.metadata for doc in documents], "\n".join(lines))
    return 0


# ----------------------------------------------------------------------------- stats, export


def _reward_summary(store: EpisodeStore, namespace: str) -> dict[str, float | None]:
    low, high, total, count = np.inf, -np.inf, 0.0, 0
    for batch in store.training_batches(namespace=namespace):
        low = min(low, float(batch.rewards.min()))
        high = max(high, float(batch.rewards.max()))
        total += float(batch.rewards.astype(np.float64).sum())
        count += len(batch)
    if not count:
        return {"min": None, "mean": None, "max": None}
    return {"min": low, "mean": total / count, "max": high}


def _cmd_stats(args: argparse.Namespace, console: _Console) -> int:
    memory = _open_memory(args)
    store = memory.store
    namespaces = [args.namespace] if args.namespace else store.namespaces()
    rows: dict[str, dict[str, Any]] = {
        ns: {"episodes": store.count(ns), "rated": store.count_rated(ns),
             "reward": _reward_summary(store, ns)}
        for ns in namespaces
    }
    answering = memory.model_namespace()  # the namespace asked for, or the default one
    manifest = _checkpoint_manifest(memory, answering) if memory.is_trained else None
    model: dict[str, Any] = {"trained": memory.is_trained, "model_dir": memory.model_dir,
                             "answers_for": memory.namespace, "namespace": answering}
    if manifest is not None:
        metrics = manifest.get("metrics", {})
        model.update(
            checkpoint_version=manifest.get("version"),
            checkpoint_path=manifest["path"],
            created_at=manifest.get("created_at"),
            trained_on=metrics.get("num_train", 0) + metrics.get("num_val", 0),
            validation_mae=metrics.get("validation"),
        )
    where = (
        f"Chroma server {args.chroma_host}:{args.port}" if args.chroma_host
        else f"{args.persist_dir} (embedded Chroma)"
    )
    data = {
        "store": where,
        "collection": store.collection_name,
        "embedder": {"name": store.identity.name, "dimension": store.identity.dimension},
        "namespaces": rows,
        "model": model,
    }
    lines = [
        f"store      {where}, collection {store.collection_name!r}",
        f"embedder   {store.identity}",
        f"  {'namespace':<24} {'episodes':>9} {'rated':>9} {'min':>8} {'mean':>8} {'max':>8}",
    ]
    for ns, row in rows.items():
        reward = row["reward"]
        lines.append(
            f"  {_short(ns, 24):<24} {row['episodes']:9d} {row['rated']:9d} "
            f"{_fmt(reward['min']):>8} {_fmt(reward['mean']):>8} {_fmt(reward['max']):>8}"
        )
    if not rows:
        lines.append("  (no episodes yet)")
    if manifest is not None:
        mae = model["validation_mae"] or {}
        lines += [
            f"model      for namespace {memory.namespace!r}: {_model_name(answering)}, trained "
            f"on {model['trained_on']} episodes: checkpoint v{model['checkpoint_version']} of "
            f"{str(model['created_at'])[:19]} UTC",
            f"           validation MAE teacher {_fmt(mae.get('teacher_mae'))}, student "
            f"{_fmt(mae.get('student_mae'))}, predict-the-mean {_fmt(mae.get('mean_mae'))}",
            f"           {model['checkpoint_path']}",
        ]
    else:
        lines.append(f"model      not trained (no checkpoint in {memory.model_dir}): run "
                     "`kd-memory consolidate`")
    console.result(data, "\n".join(lines))
    return 0


def _episodes(store: EpisodeStore, namespaces: Iterable[str]) -> Iterator[Episode]:
    for ns in namespaces:
        offset = 0
        while page := store.list_episodes(ns, limit=EXPORT_PAGE, offset=offset):
            yield from page
            offset += len(page)


def _cmd_export(args: argparse.Namespace, console: _Console) -> int:
    memory = _open_memory(args)
    store = memory.store
    namespaces = [args.namespace] if args.namespace else store.namespaces()
    count = 0
    handle: IO[str]
    try:
        handle = (sys.stdout if args.out in (None, "-")
                  else open(args.out, "w", encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    try:
        for episode in _episodes(store, namespaces):
            data = episode.to_dict()
            data["metadata"] = dict(sorted(data["metadata"].items()))  # Chroma reorders keys
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
    finally:
        if handle is not sys.stdout:
            handle.close()
    console.info(f"exported {count} episodes from {len(namespaces)} namespace(s) to "
                 f"{'<stdout>' if handle is sys.stdout else args.out}")
    return 0


def _cmd_migrate(args: argparse.Namespace, console: _Console) -> int:
    from langchain_kd_memory.storage import EpisodeStore, http_client

    if args.chroma_host:
        store = EpisodeStore(args.collection, client=http_client(args.chroma_host, args.port))
    elif not Path(args.persist_dir).exists():
        raise UsageError(f"no memory at {args.persist_dir}: pass --persist-dir")
    else:
        store = EpisodeStore(args.collection, persist_directory=args.persist_dir)
    registered = store.migrate()
    console.result({"registered": registered},
                   f"registered {len(registered)} namespace(s) of collection "
                   f"{args.collection!r}: {', '.join(map(repr, registered)) or 'none to migrate'}")
    return 0


# ----------------------------------------------------------------------------- plot


def _cmd_plot(args: argparse.Namespace, console: _Console) -> int:
    from langchain_kd_memory.plots import write_all

    memory = _open_memory(args)
    _require_trained(memory)
    console.info("training a calibration model on the non-held-out episodes ...")
    paths = write_all(
        memory, args.out, query=args.query, holdout=args.holdout, seed=args.seed,
        num_epochs=args.epochs, quiet=not console.bars,
    )
    names = ("calibration", "training_curves", "distribution")
    console.result(
        {name: str(path) for name, path in zip(names, paths, strict=True)},
        "\n".join(str(path) for path in paths),
    )
    return 0


# ----------------------------------------------------------------------------- parser


def _number(cast: type[int] | type[float], low: float, high: float | None = None) -> Any:
    """An argparse `type` that parses `cast` and checks low <= value (<= high)."""

    def parse(text: str) -> int | float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {cast.__name__}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1)
_seed = _number(int, 0)


_HELP = {
    "ingest": (
        "store episodes from a JSON Lines file",
        """One JSON object per line with "query" (required), "response", "reward" (a number, or
null = not rated yet), "metadata" (an object of scalars), "id", "namespace" (default:
--namespace) and "created_at" (ISO 8601). Every line is checked first: each bad line is
reported as FILE:LINE: reason, and nothing is stored unless --skip-invalid.

A line without an "id" gets one derived from its content (and, for identical lines, from
which occurrence it is; not from the file's path), so ingesting a file again adds nothing
twice: episodes already stored as the line gives them are skipped. A line whose id is stored
with other fields (e.g. a reward recorded since) is reported, and nothing is stored unless
--skip-existing, which keeps the stored episode.

Ctrl-C, SIGTERM (kill, timeout, a container stop) or an error removes what the run stored:
nothing is ingested. SIGKILL (kill -9, the out-of-memory killer) cannot be caught and may
leave the first batches stored: run the same command again to complete the ingest.

examples:
  kd-memory ingest episodes.jsonl
  kd-memory --namespace user42 ingest feedback.jsonl --skip-invalid
  kd-memory export | kd-memory --persist-dir ./copy ingest -""",
    ),
    "consolidate": (
        "train the value model on the stored rated episodes",
        """Trains the teacher, distils it into the student, and saves a new checkpoint version
in --model-dir. With --namespace, that namespace's own model (its scores and recall use it);
without, the shared model on every namespace (it answers for namespaces without their own).
Uses the stored embeddings: nothing is embedded again.

examples:
  kd-memory consolidate
  kd-memory --namespace user42 consolidate --epochs 20 --seed 0
  kd-memory consolidate --min-episodes 50   # wait for more ratings before training""",
    ),
    "score": (
        "predict the reward of a query with the student",
        """Prints the expected reward ± its standard deviation (the model's uncertainty), the
10/50/90% quantiles and the predicted distribution as a text histogram.

examples:
  kd-memory score "How do I reset my password?"
  kd-memory --json score "Can I get a refund?" """,
    ),
    "compare": (
        "compare the teacher's and the student's predictions",
        """The teacher may also read a response (--response); the student reads the query only.

examples:
  kd-memory compare "Can I get a refund?"
  kd-memory compare "Can I get a refund?" --response "Yes, within 30 days." """,
    ),
    "recall": (
        "recall similar episodes, re-ranked by reward",
        """Score = (1 - w) * similarity + w * value, with value the reward mapped to [0, 1]
(predicted by the student for unrated episodes).

examples:
  kd-memory recall "forgot my password" -k 5
  kd-memory recall "forgot my password" --reward-weight 0   # similarity only""",
    ),
    "stats": (
        "show episodes per namespace, rewards and the model's state",
        """The model shown is the one that answers for --namespace (default 'default'): the
namespace's own model if it has one, else the shared model.

examples:
  kd-memory stats
  kd-memory --namespace user42 stats
  kd-memory --json stats""",
    ),
    "export": (
        "write the episodes as JSON Lines (no embeddings)",
        """The output is what `ingest` reads back. All namespaces unless --namespace is given.

examples:
  kd-memory export --out episodes.jsonl
  kd-memory --namespace user42 export > user42.jsonl""",
    ),
    "worker": (
        "consolidate each namespace after every N new ratings, until stopped",
        """Run it in a process of its own, against the agents' store (--chroma-host for a Chroma
server, or their --persist-dir) and model directory (--model-dir): training then never
shares the agents' threads. Every --poll seconds it counts each namespace's rated episodes and
trains the namespace's value model when --every new ones have arrived since its last training
(the count at each training is kept beside the model's checkpoint, so a restart goes on
where it, or an agent's callback, stopped). Agents pick up each new checkpoint version without
a restart (their memory checks the model directory every model_refresh_s seconds). Stop it
with Ctrl-C or SIGTERM.

examples:
  kd-memory --chroma-host localhost --model-dir /shared/models worker --every 50
  kd-memory --threads 1 worker --every 20 --shared      # also the shared model
  kd-memory worker --once                               # one round, then exit""",
    ),
    "migrate": (
        "register the collections of a store written by version 1, once",
        """Version 1 kept one Chroma collection per namespace and no registry; this version
refuses such a store until its collections are registered. Nothing is copied or re-embedded;
running it again registers nothing.

examples:
  kd-memory migrate
  kd-memory --chroma-host localhost --collection episodes migrate""",
    ),
    "plot": (
        "write calibration, training-curve and distribution PNGs",
        """calibration.png: predicted vs actual reward on held-out episodes, from a model retrained
with the saved settings on the rest (--holdout); training_curves.png: loss per epoch of the
saved model; distribution.png: the student's distribution for --query (default: the first
stored episode's query). Needs matplotlib (pip install matplotlib).

examples:
  kd-memory plot --out plots
  kd-memory plot --out plots --query "Can I get a refund?" --holdout 0.3""",
    ),
}


def _subparser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace, _Console], int],
) -> argparse.ArgumentParser:
    summary, epilog = _HELP[name]
    parser = commands.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `kd-memory` (every subcommand has --help with examples)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reward-aware episodic memory with a distilled value model: store episodes "
        "in Chroma, train the value model, score queries and recall what went well.",
        epilog="""examples:
  kd-memory ingest episodes.jsonl          # store episodes (query, response, reward)
  kd-memory consolidate                    # train the value model on the rated ones
  kd-memory score "Can I get a refund?"    # predicted reward of a new query
  kd-memory recall "refund" -k 5           # similar episodes, best rewarded first
  kd-memory --chroma-host localhost stats  # a Chroma server instead of a local directory

exit codes: 0 success, 2 bad usage or input (nothing changed), 1 other errors,
130/143 stopped by Ctrl-C/SIGTERM (an ingest stores nothing then), 141 output closed early.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--persist-dir", default=DEFAULT_PERSIST_DIRECTORY, metavar="DIR",
        help=f"embedded Chroma database directory (default {DEFAULT_PERSIST_DIRECTORY})",
    )
    parser.add_argument(
        "--collection", default=DEFAULT_COLLECTION,
        help=f"collection name prefix of the store (default {DEFAULT_COLLECTION})",
    )
    parser.add_argument(
        "--namespace", default=None,
        help=f"namespace to work in (default {DEFAULT_NAMESPACE!r}; consolidate: the shared "
        "model of all namespaces; stats and export: all)",
    )
    parser.add_argument(
        "--model-dir", default=None, metavar="DIR",
        help="checkpoint directory of the value model (default {persist-dir}/models, "
        "also with --chroma-host)",
    )
    parser.add_argument(
        "--chroma-host", default=None, metavar="HOST",
        help="use the Chroma server on HOST instead of --persist-dir",
    )
    parser.add_argument(
        "--chroma-port", dest="port", type=_number(int, 1, 65535), default=None, metavar="PORT",
        help=f"port of the Chroma server (default {DEFAULT_CHROMA_PORT})",
    )
    parser.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="torch threads for training and scoring (default: torch's choice; 1 is often "
        "faster on a busy machine)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or messages, results only")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what happens (-vv: debug) and show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ingest = _subparser(commands, "ingest", _cmd_ingest)
    ingest.add_argument("file", metavar="FILE.jsonl", help="JSON Lines file, or - for stdin")
    ingest.add_argument("--skip-invalid", action="store_true",
                        help="ingest the valid lines even if some are invalid")
    ingest.add_argument("--skip-existing", action="store_true",
                        help="keep the stored episode where a line's id is stored with other "
                        "fields, instead of failing (identical ones are always skipped)")
    ingest.add_argument("--batch-size", type=_positive_int, default=INGEST_BATCH,
                        help=f"episodes embedded and stored per batch (default {INGEST_BATCH})")

    consolidate = _subparser(commands, "consolidate", _cmd_consolidate)
    consolidate.add_argument("--epochs", type=_positive_int, default=None,
                             help="most epochs per network (early stopping may end sooner)")
    consolidate.add_argument("--batch-size", type=_positive_int, default=None,
                             help="mini-batch size (default: from the number of episodes)")
    consolidate.add_argument("--max-episodes", type=_positive_int, default=None,
                             help="train on at most this many, the most recent (default 10000)")
    consolidate.add_argument("--seed", type=_seed, default=None,
                             help="seed for a reproducible split and training")
    consolidate.add_argument("--min-episodes", type=_number(int, 2), default=None, metavar="N",
                             help="fewest rated episodes to train on (default: the model's "
                             "min_episodes setting)")

    score = _subparser(commands, "score", _cmd_score)
    score.add_argument("query", help="the query to score")

    compare = _subparser(commands, "compare", _cmd_compare)
    compare.add_argument("query", help="the query")
    compare.add_argument("--response", default="", help="a response for the teacher to read")

    recall = _subparser(commands, "recall", _cmd_recall)
    recall.add_argument("query", help="text to recall episodes for")
    recall.add_argument("-k", type=_positive_int, default=5, help="episodes to show (default 5)")
    recall.add_argument("--reward-weight", type=_number(float, 0.0, 1.0), default=None, metavar="W",
                        help="weight w of the reward in the score, 0..1 (default 0.3)")

    _subparser(commands, "stats", _cmd_stats)

    export = _subparser(commands, "export", _cmd_export)
    export.add_argument("--out", default=None, metavar="FILE",
                        help="output file (default, or -: stdout)")

    worker = _subparser(commands, "worker", _cmd_worker)
    worker.add_argument("--every", type=_positive_int, default=50, metavar="N",
                        help="new rated episodes that trigger a namespace's training (default 50)")
    worker.add_argument("--poll", type=_number(float, 0.0), default=5.0, metavar="SECONDS",
                        help="seconds between two looks at the store (default 5)")
    worker.add_argument("--shared", action="store_true",
                        help="also train the shared model on every namespace")
    worker.add_argument("--once", action="store_true", help="run one round, then exit")

    _subparser(commands, "migrate", _cmd_migrate)

    plot = _subparser(commands, "plot", _cmd_plot)
    plot.add_argument("--out", required=True, metavar="DIR", help="directory for the PNGs")
    plot.add_argument("--query", default=None, help="query whose distribution is drawn")
    plot.add_argument("--holdout", type=float, default=0.2,
                      help="share of rated episodes held out for calibration (default 0.2)")
    plot.add_argument("--seed", type=_seed, default=0,
                      help="seed of the calibration split and training (default 0)")
    plot.add_argument("--epochs", type=_positive_int, default=None,
                      help="most epochs of the calibration training")
    return parser


# ----------------------------------------------------------------------------- main


def _configure_logging(verbosity: int) -> None:
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if verbosity:
        level = logging.INFO if verbosity == 1 else logging.DEBUG
        logging.getLogger("langchain_kd_memory").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `kd-memory` with `argv` (sys.argv[1:] if None) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    if args.port is not None and not args.chroma_host:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: --chroma-port needs --chroma-host", file=sys.stderr)
        return 2
    args.port = args.port or DEFAULT_CHROMA_PORT
    _configure_logging(args.verbose)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the embedder's loading bar
    console = _Console(json=args.json, quiet=args.quiet)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        code = int(args.handler(args, console))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader stopped early (`kd-memory export | head`): no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is left to flush at exit goes nowhere
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except ingest.Terminated:
        print(f"{PROG}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (UsageError, *_USAGE_ERRORS) as exc:
        code, error = 2, exc
    except (KDMemoryError, OSError, ImportError) as exc:
        code, error = 1, exc  # type: ignore[assignment]
    if args.verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
