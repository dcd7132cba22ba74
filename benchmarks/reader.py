"""Reader throughput and memory: images/s and peak RSS while streaming 2,000+ images at the real
802×550 resolution through ``SubjectDataset`` and a DataLoader.

    python benchmarks/reader.py [--workdir DIR] [--workers 0 2]

The fixture subject (3 sequences × 50 timesteps × 16 cameras, textured PNGs) is written once
into the work folder and reused.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

from mega.data.fixtures import write_fixture_subject
from mega.data.gaussian_avatars import SubjectDataset, collate_samples


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(own, children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="results/benchmarks/reader")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--timesteps", type=int, default=50)
    args = parser.parse_args()

    work = Path(args.workdir)
    union = next(work.glob("UNION10_*"), None) if work.exists() else None
    if union is None:
        t0 = time.perf_counter()
        union = write_fixture_subject(work, n_sequences=3, n_timesteps=args.timesteps, width=550, height=802,
                                      textured=True)
        print(f"wrote fixture subject in {time.perf_counter() - t0:.1f} s: {union}")

    print(f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}")
    print(f"{'split':>6} {'workers':>7} {'images':>7} {'images/s':>9} {'MB/s':>7} {'RSS start MB':>12} {'peak RSS MB':>11}")
    for workers in args.workers:
        ds = SubjectDataset(union, "train")
        rss_start = psutil.Process().memory_info().rss / 2**20
        loader = DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=collate_samples)
        t0 = time.perf_counter()
        n = 0
        for batch in loader:
            n += batch["image"].shape[0]
        seconds = time.perf_counter() - t0
        megabytes = n * 3 * 802 * 550 * 4 / 2**20
        print(f"{'train':>6} {workers:>7} {n:>7} {n / seconds:>9.1f} {megabytes / seconds:>7.0f} "
              f"{rss_start:>12.0f} {peak_rss_mb():>11.0f}")


if __name__ == "__main__":
    main()
