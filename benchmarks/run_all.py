"""Run every benchmark in sequence (what `make bench` runs) and print a summary.

    python benchmarks/run_all.py            # full runs; each rewrites its section of BENCHMARKS.md
    python benchmarks/run_all.py --quick    # smoke runs; BENCHMARKS.md is left alone

Each benchmark runs as its own process (quality, storage, speed, consolidation, callback,
journal (the kill loop), import, agent, scale, models), its output streamed as it comes. A
failing one does not stop the others; the exit status is 1 if any failed. The agent benchmark
(TextWorld games) takes about 30 minutes and scale (300,000 episodes through a local Chroma
server) about 40 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUDGET_SECONDS = 100 * 60

# (name, full-run arguments, quick-run arguments)
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("quality", [], ["--quick"]),
    ("storage", ["--update-md"], ["--quick"]),
    ("speed", [], ["--quick"]),
    ("consolidation", [], ["--quick"]),
    ("callback", [], ["--runs", "5", "--no-write"]),
    ("journal", ["--kills", "30"], ["--kills", "2", "--no-write"]),
    ("import", [], ["--quick"]),
    ("agent", [], ["--quick"]),
    ("scale", ["--update-md"], ["--quick"]),
    ("models", [], ["--quick"]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke runs of every benchmark; BENCHMARKS.md is not written")
    args = parser.parse_args(argv)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "PYTHONUNBUFFERED": "1",
    }
    rows = []
    started = time.perf_counter()
    for name, full, quick in BENCHMARKS:
        command = [sys.executable, str(HERE / f"bench_{name}.py"), *(quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(command[1:])} (load average {os.getloadavg()[0]:.1f})",
              flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, env=env, check=False).returncode
        rows.append((name, code, time.perf_counter() - start))
    total = time.perf_counter() - started

    print("\n=== summary" + (" (quick runs)" if args.quick else ""))
    print("| benchmark | status | wall time |\n|---|---|---|")
    for name, code, seconds in rows:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"| {name} | {status} | {seconds / 60:.1f} min |")
    print(f"| total | | {total / 60:.1f} min |")
    if not args.quick:
        print("Results: BENCHMARKS.md")
    if total > BUDGET_SECONDS and not args.quick:
        over = (total - BUDGET_SECONDS) / 60
        print(f"Over the {BUDGET_SECONDS // 60}-minute budget by {over:.1f} min.")
    return 0 if all(code == 0 for _, code, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
