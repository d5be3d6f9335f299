"""Copy speed against dsync: `mailmigrator migrate --user` and `doveadm backup -R` over imapc on 5,000 and 20,000 messages.

Each corpus (the copy_speed distribution: 2-18 KB, 2% of 100 KB-2 MB, 20
folders) is written into a fresh old Dovecot's Maildir, then each copier
copies it into its own fresh new Dovecot, `--repeat` times; the best wall time
of each is kept. mailmigrator's copy must `verify` equal. Prints wall times,
peak RSS and dsync's time / mailmigrator's (targets: 1.2x at 5,000, 1.3x at 20,000). Not a test.

    .venv/bin/python bench/copy_vs_dsync.py [--sizes 5000,20000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import maildir_corpus
from copy_memory import run_size

SPEED_SHAPE = maildir_corpus.CorpusShape(small=(2_000, 18_000), large=(100_000, 2_000_000), large_share=0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000", help="comma-separated message counts")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each copier per size; the best counts")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes comma-separated whole numbers")
    if not sizes or min(sizes) < 1 or args.repeat < 1:
        parser.error("--sizes and --repeat must be at least 1")
    print(f"{'messages':>9} {'mm wall s':>9} {'dsync wall s':>12} {'dsync/mm':>9} {'mm RSS MB':>10} "
          f"{'dsync RSS MB':>12}  verify", flush=True)
    for count in sizes:
        runs = [run_size(Path(tempfile.mkdtemp(prefix="mmspeed-")), count, 0, True, SPEED_SHAPE)
                for _ in range(args.repeat)]
        mm = min((r["mailmigrator"] for r in runs), key=lambda t: t[0])
        ds = min((r["dsync"] for r in runs), key=lambda t: t[0])
        verdicts = sorted({r["mailmigrator"][2] for r in runs})
        print(f"{count:9,} {mm[0]:9.2f} {ds[0]:12.2f} {ds[0] / mm[0]:8.2f}x {mm[1]:10.1f} {ds[1]:12.1f}  "
              f"{'/'.join(verdicts)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
