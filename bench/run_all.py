"""Every benchmark in bench/, one after another, each as a subprocess; a summary table at the end.

Each benchmark prints its own figures and its baseline's as it runs; the summary repeats the
last lines each printed (its figures and its verdict), its exit status and its wall time.
`--quick` runs them with small sizes (a few minutes in all), to prove they still run; the
full sizes are the issue's and take far longer (the 100,000-message and million-event ones most).

    .venv/bin/python bench/run_all.py [--quick] [--only fleet,login_overhead] [--tail 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (full arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "login_overhead": ([], ["--users", "8"]),
    "fleet": ([], ["--accounts", "100", "--verify-sample", "10"]),
    "copy_vs_dsync": ([], ["--sizes", "1000", "--repeat", "1"]),
    "copy_memory": ([], ["--sizes", "1000,5000", "--big-mb", "5"]),
    "copy_speed": ([], ["--small"]),
    "large_mailbox": ([], ["--messages", "5000", "--big-mb", "5"]),
    "many_accounts": ([], ["--accounts", "20", "--messages", "20"]),
    "switch_delta": ([], ["--messages", "1000", "--changes", "20"]),
    "cutover_morning": ([], ["--users", "40"]),
    "replay": (["--events", "1000000"], ["--events", "20000"]),
    "read_side": ([], ["--accounts", "5000"]),
    "serve_memory": ([], ["--accounts", "5000"]),
    "proxy": ([], []),
    "proxy_load": ([], ["--idle", "100", "--active", "20", "--seconds", "3"]),
    "proxy_scale": ([], ["--connections", "1000", "--relaying", "100"]),
    "relay": ([], []),
}


def run(name: str, args: list[str], tail: int) -> tuple[int, float, list[str]]:
    """Run one benchmark with its output passed through; (exit status, wall seconds, its last lines)."""
    print(f"\n===== {name} {' '.join(args)}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(HERE / f"{name}.py"), *args], cwd=HERE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    figures: list[str] = []
    for line in process.stdout:
        sys.stdout.write(line)
        # The product's own log lines are not figures.
        if line.strip() and not line.startswith("20"):
            figures = [*figures[-(tail - 1):], line.rstrip()] if tail > 1 else [line.rstrip()]
    return process.wait(), time.monotonic() - started, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: proves each benchmark runs")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--tail", type=int, default=4, help="lines of each benchmark's output in the summary")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        full, quick = BENCHMARKS[name]
        results[name] = run(name, quick if args.quick else full, args.tail)
    print(f"\n===== summary ({'quick' if args.quick else 'full'} sizes)")
    print(f"{'benchmark':16} {'exit':>4} {'wall s':>7}  last lines")
    for name, (code, wall, figures) in results.items():
        lines = figures or ["(no output)"]
        print(f"{name:16} {code:4d} {wall:7.1f}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':30}{line}")
    failed = [name for name, (code, _, _) in results.items() if code != 0]
    print(f"{len(results) - len(failed)} of {len(results)} benchmarks exited 0" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
