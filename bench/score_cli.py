"""Offline scoring CLI at scale: 10,000 videos x 7 days of hourly rows (issue target: < 60 s).

Prints a table: rows, file size, wall time, rows/s and the peak RSS of the CLI process.
Usage: python bench/score_cli.py [--videos 10000] [--granularity hour|minute] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream_detector.dev.simulate import simulate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--granularity", choices=("hour", "minute"), default="hour")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, out_path = Path(tmp) / "in.csv", Path(tmp) / "out.jsonl"
        t0 = time.perf_counter()
        simulate(args.videos, seed=args.seed).write_csv(str(csv_path), granularity=args.granularity)
        t_sim = time.perf_counter() - t0
        rows = csv_path.read_bytes().count(b"\n") - 1
        size_mb = csv_path.stat().st_size / 1e6
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "stream_detector.cli", "score", "--input", str(csv_path), "--output", str(out_path)],
            capture_output=True, text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        lines = out_path.read_bytes().count(b"\n")
    result = {
        "videos": args.videos, "rows": rows, "csv_mb": round(size_mb, 1), "score_wall_s": round(wall, 2),
        "rows_per_s": round(rows / wall), "peak_rss_mb": round(peak_mb), "output_lines": lines,
        "simulate_and_write_s": round(t_sim, 1),
    }
    print(f"| videos | rows ({args.granularity}) | CSV MB | score wall s | rows/s | peak RSS MB | target |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.videos:,} | {rows:,} | {size_mb:.0f} | {wall:.1f} | {rows / wall:,.0f} | {peak_mb:.0f} | < 60 s |")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
