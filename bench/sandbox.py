"""Sandbox benchmark: every MBPP reference solution through `reasonlab.sandbox.run_many`.

    python bench/sandbox.py [--mbpp PATH] [--workers N] [--single N] [--timeout S] [--confinement MODE]

Runs all problems with `--workers` (default: all cores), then the first `--single` problems with one
worker, and prints the pass rate, throughput, every reference that did not pass (and why), and
finally its figures as key=value lines, ending with read_confined=, programs_per_s= and pass_rate=.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mirror import mirror_root  # noqa: E402
from reasonlab.sandbox import isolation, run_many  # noqa: E402


def load_mbpp(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def jobs_for(rows: list[dict], timeout_s: float) -> list[dict]:
    return [{"code": r["code"], "tests": list(r["test_list"]), "setup_code": r.get("test_setup_code") or "",
             "timeout_s": timeout_s} for r in rows]


def timed(jobs: list[dict], workers: int, confinement: str | None = None):
    start = time.perf_counter()
    results = run_many(jobs, workers=workers, confinement=confinement)
    return results, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbpp", type=Path, default=mirror_root() / "mbpp" / "mbpp.jsonl",
                    help="MBPP's mbpp.jsonl (default: in the offline mirror, REASONLAB_SHARED_DATA or ../shared/data)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--single", type=int, default=200, help="problems for the 1-worker arm (0: skip)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--confinement", choices=["bwrap", "mountns", "none"], default=None,
                    help="force one (default: the best that works here)")
    args = ap.parse_args(argv)
    if not args.mbpp.is_file():
        print(f"error: {args.mbpp}: no such file: the offline data mirror is missing here (set "
              "REASONLAB_SHARED_DATA) or pass --mbpp PATH", file=sys.stderr)
        return 2

    rows = load_mbpp(args.mbpp)
    jobs = jobs_for(rows, args.timeout)
    iso = isolation(args.confinement)
    print(f"sandbox isolation: {iso}")
    print(f"MBPP: {len(rows)} problems from {args.mbpp}; workers={args.workers}")

    results, wall = timed(jobs, args.workers, args.confinement)
    statuses = Counter(r.status for r in results)
    passed = statuses["passed"]
    rate = len(jobs) / wall
    durations = sorted(r.duration_s for r in results)
    print(f"all {len(jobs)} with {args.workers} workers: {wall:.2f} s, {rate:.1f} programs/s, "
          f"statuses {dict(statuses)}, median child {durations[len(durations) // 2] * 1000:.0f} ms, "
          f"max child {durations[-1]:.2f} s")

    slowest = sorted(zip(rows, results), key=lambda rr: -rr[1].duration_s)[:5]
    print("slowest: " + ", ".join(f"task {row['task_id']} {res.duration_s:.2f} s" for row, res in slowest))

    failures = [(row, res) for row, res in zip(rows, results) if not res.passed]
    if failures:
        print(f"\n{len(failures)} reference solutions did not pass:")
        for row, res in failures:
            why = f"{res.error_type}: {res.error_message}" if res.error_type else ""
            print(f"  task {row['task_id']}: {res.status}"
                  + (f" on `{res.failed_test}`" if res.failed_test else "") + (f" ({why})" if why else "")
                  + (f" [compared a {res.suspicious}]" if res.suspicious else ""))

    single_n = min(args.single, len(jobs))
    single_rate = multi_rate_subset = None
    if single_n:
        _, single_wall = timed(jobs[:single_n], 1, args.confinement)
        _, multi_wall = timed(jobs[:single_n], args.workers, args.confinement)
        single_rate, multi_rate_subset = single_n / single_wall, single_n / multi_wall
        print(f"\nfirst {single_n}: 1 worker {single_rate:.1f} programs/s | "
              f"{args.workers} workers {multi_rate_subset:.1f} programs/s "
              f"(speed-up {multi_rate_subset / single_rate:.2f}x)")

    print()
    figures = {
        "programs": len(jobs),
        "passed": passed,
        "failed": statuses["failed"],
        "error": statuses["error"],
        "timeout": statuses["timeout"],
        "suspicious": statuses["suspicious"],
        "workers": args.workers,
        "wall_s": f"{wall:.2f}",
        "median_program_s": f"{durations[len(durations) // 2]:.4f}",
    }
    if single_n:
        figures.update({"subset_programs": single_n, "programs_per_s_1_worker": f"{single_rate:.1f}",
                        f"programs_per_s_{args.workers}_workers_subset": f"{multi_rate_subset:.1f}",
                        "speedup": f"{multi_rate_subset / single_rate:.2f}"})
    figures["failing_task_ids"] = ",".join(str(row["task_id"]) for row, _ in failures) or "none"
    figures["confinement"] = iso["confinement"]
    figures["read_confined"] = bool(iso.get("read_confined"))
    figures["programs_per_s"] = f"{rate:.1f}"
    figures["pass_rate"] = f"{passed / len(jobs):.4f}"
    for key, value in figures.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
