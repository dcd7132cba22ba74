"""How long Snakemake takes to parse the workflow and plan a DAG: a dry run of the default job
and of a real subject's face stage, each in a fresh process (Snakemake parses the workflow once
per invocation, and once more inside every SLURM job).

    python benchmarks/workflow_parse.py [--repeats 5] [--repo DIR ...]

``--repo`` names checkouts to compare (the default: this one), e.g. a worktree of an older
commit: ``git worktree add /tmp/before <rev>``. Prints per checkout the median wall and CPU
seconds of a dry run (its own process, os.times), and whether the parse loaded torch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]


def dry_run(repo: Path, workdir: Path) -> tuple[float, float, bool]:
    """One dry run in a fresh interpreter: (wall s, CPU s, torch loaded)."""
    arguments = ["-s", str(repo / "Snakefile"), "-d", str(workdir), "-n", "--cores", "2",
                 "results/tables/table1.csv", "results/train/306/mega/face.pt",
                 "--configfile", str(workdir / "c.yaml")]
    code = ("import os, sys\nsys.path.insert(0, os.environ['MEGA_REPO'])\nfrom snakemake.cli import main\n"
            f"try:\n    main({arguments!r})\nexcept SystemExit as done:\n    status = done.code\n"
            "t = os.times()\nprint('RESULT', status, t.user + t.system, 'torch' in sys.modules)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MEGA_REPO": str(repo)}, cwd=repo)
    wall = time.perf_counter() - started
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None or line.split()[1] != "0":
        raise SystemExit(f"dry run failed in {repo}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    _, _, cpu, torch_loaded = line.split()
    return wall, float(cpu), torch_loaded == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, nargs="+", default=[REPO])
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, Python "
          f"{platform.python_version()}; {args.repeats} dry runs each, alternating checkouts")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "UNION_306").mkdir()
        (workdir / "c.yaml").write_text(yaml.safe_dump({"subjects": {"306": {"union": str(workdir / "UNION_306")}}}))
        runs: dict[Path, list[tuple[float, float, bool]]] = {repo: [] for repo in args.repo}
        for _ in range(args.repeats):
            for repo in args.repo:
                runs[repo].append(dry_run(repo.resolve(), workdir))
    for repo, measured in runs.items():
        wall = statistics.median(m[0] for m in measured)
        cpu = statistics.median(m[1] for m in measured)
        print(f"{repo}: dry run {wall:.2f} s wall, {cpu:.2f} s CPU (median), torch loaded: {measured[0][2]}")


if __name__ == "__main__":
    main()
