"""Start-up cost: importing the package and `kd-memory --help`, each in a fresh interpreter.

    python benchmarks/bench_import.py            # 7 runs each; rewrites "Import" in BENCHMARKS.md
    python benchmarks/bench_import.py --quick    # 3 runs, prints only

Every command runs as a new process (what a user or a CLI call pays), alternating between the
commands in rounds so that load on the shared machine hits all of them alike; reported is the
median wall time. `python -c pass` is the interpreter's own start, `import torch` a reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_facts, markdown_table, update_section  # noqa: E402

KD_MEMORY = str(Path(sys.executable).with_name("kd-memory"))
COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("import langchain_kd_memory", [sys.executable, "-c", "import langchain_kd_memory"]),
    ("from langchain_kd_memory import EpisodeStore",
     [sys.executable, "-c", "from langchain_kd_memory import EpisodeStore"]),
    ("from langchain_kd_memory import DistilledEpisodicMemory",
     [sys.executable, "-c", "from langchain_kd_memory import DistilledEpisodicMemory"]),
    ("kd-memory --help", [KD_MEMORY, "--help"]),
    ("import torch (reference)", [sys.executable, "-c", "import torch"]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 runs each; prints only")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 7
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    seconds: dict[str, list[float]] = {name: [] for name, _ in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS:
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
    rows = [[f"`{name}`", f"{statistics.median(times):.2f} s"] for name, times in seconds.items()]
    text = "\n".join([
        f"Command: `python benchmarks/bench_import.py{' --quick' if args.quick else ''}`  ",
        f"Machine: {machine_facts()}; load average {os.getloadavg()[0]:.1f} at the end.  ",
        f"Median wall time of {rounds} fresh processes each, interleaved.", "",
        markdown_table(["command", "median"], rows),
    ])
    print(text)
    if not args.quick:
        update_section("Import", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
