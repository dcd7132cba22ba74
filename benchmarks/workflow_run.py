"""Wall time and peak memory of the workflow's default job (Table 1) and of Table 2, from a fresh
clone, set-up excluded (the clone borrows this checkout's .venv and LPIPS weights).

    python benchmarks/workflow_run.py --workdir /tmp/mega-fresh                 # make run's target
    python benchmarks/workflow_run.py --workdir /tmp/mega-fresh --target table2_all   # then Table 2

Run the targets one after the other in the same workdir to time Table 2 on top of Table 1, as a
user would. Prints the wall time, the peak resident memory of the largest process (GNU time's
maximum RSS over the job's processes), and every job's time and memory from Snakemake's
``benchmark:`` files, slowest first.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]


def fresh_clone(workdir: Path) -> None:
    if (workdir / "Snakefile").is_file():
        return
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(workdir)], check=True)
    (workdir / ".venv").symlink_to(REPO / ".venv")
    (workdir / ".cache").mkdir()
    (workdir / ".cache" / "mega").symlink_to(REPO / ".cache" / "mega")


def job_times(workdir: Path, since: float) -> pd.DataFrame:
    rows = []
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        if tsv.stat().st_mtime < since or "hybrid_variants" in tsv.parts:
            continue
        table = pd.read_csv(tsv, sep="\t")
        rows.append({"job": str(tsv.relative_to(workdir / "results" / "benchmarks").with_suffix("")),
                     "seconds": float(table["s"].iloc[0]), "max_rss_mb": float(table["max_rss"].iloc[0])})
    return pd.DataFrame(rows).sort_values("seconds", ascending=False) if rows else pd.DataFrame()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--target", default="all", help="all (make run's) or table2_all")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    fresh_clone(args.workdir)
    started = time.time()
    result = subprocess.run(["/usr/bin/time", "-v", str(args.workdir / ".venv" / "bin" / "snakemake"), "--cores",
                             str(args.cores), args.target], cwd=args.workdir, capture_output=True, text=True)
    wall = time.time() - started
    log = args.workdir / f"workflow_run_{args.target}.log"
    log.write_text(result.stdout + result.stderr)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    memory = psutil.virtual_memory().total / 2**30
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} CPUs, {memory:.0f} GiB; snakemake --cores "
          f"{args.cores} {args.target}; exit {result.returncode} (log: {log})")
    print(f"wall time: {wall / 60:.1f} min; peak RSS of one process: "
          f"{int(peak.group(1)) / 1024:.0f} MB" if peak else f"wall time: {wall / 60:.1f} min")
    jobs = job_times(args.workdir, started)
    if not jobs.empty:
        print(f"jobs with benchmark files: {len(jobs)}, {jobs['seconds'].sum() / 60:.1f} min in all")
        print(jobs.to_markdown(index=False, floatfmt=".0f"))


if __name__ == "__main__":
    main()
