"""The workflow on a real one-node SLURM (scripts/slurm-local.sh) through profiles/slurm: the
synthetic subject and two training steps of the face, every job of a cluster rule a SLURM job;
a job killed with scancel leaves no output taken as complete, and a rerun finishes the work.

Runs where the machine can host SLURM (root and Debian's apt-get, or SLURM already installed);
elsewhere it is skipped with the reason, except under CI, where it must run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from test_workflow import LPIPS_WEIGHTS, REPO, TINY

SCRIPT = REPO / "scripts" / "slurm-local.sh"


def can_host_slurm() -> str | None:
    """None when this machine can run the local SLURM, else why not (never a machine whose own
    SLURM the script would have to replace)."""
    if shutil.which("pgrep"):
        check = subprocess.run(["bash", str(SCRIPT), "check"], capture_output=True, text=True)
        if check.returncode != 0:
            return f"this machine has its own SLURM: {check.stdout.strip()}"
    if shutil.which("slurmctld") and shutil.which("slurmd"):
        return None if os.geteuid() == 0 else "SLURM daemons need root"
    if os.geteuid() != 0:
        return "not root: cannot install or run SLURM"
    if not shutil.which("apt-get"):
        return "no apt-get: cannot install Debian's SLURM packages"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = can_host_slurm()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the SLURM test must run on CI, but {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state)}
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        stopped = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
        print(stopped.stdout, stopped.stderr)
        left = subprocess.run(["pgrep", "-f", "slurmctld|slurmd|munged"], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"daemons left behind: {left.stdout}"
        jobs = subprocess.run(["bash", str(SCRIPT), "leftovers"], env=env, capture_output=True, text=True)
        assert jobs.stdout.strip() == "", f"job processes left behind: {jobs.stdout}"
        # Its configuration goes too: left behind, it names a controller that is gone, and every
        # later snakemake run on this machine would wait ~9 s for it (the SLURM plugin's import).
        for conf in (Path("/etc/slurm/slurm.conf"), Path("/etc/slurm/gres.conf")):
            assert not (conf.is_file() and "Written by scripts/slurm-local.sh" in conf.read_text()), conf


def workdir_with(tmp_path: Path, face_iterations: int) -> Path:
    settings = {**TINY, "evaluation": {"lpips_weights": str(LPIPS_WEIGHTS)}}
    settings["synthetic"] = {**TINY["synthetic"], "face": {**TINY["synthetic"]["face"],
                                                           "iterations": face_iterations}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    return tmp_path


# What this test cluster differs in from a real one: no accounting database, so the plugin asks
# squeue (its sacct default would wait forever), and it may check job states sooner.
LOCAL_CLUSTER = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2", "--jobs", "2"]


def snakemake_slurm(workdir: Path, env: dict, *args: str, timeout: int = 900, wait: bool = True):
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "tiny.yaml"), "--workflow-profile", str(REPO / "profiles" / "slurm"),
               *LOCAL_CLUSTER, *args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


TARGET = "results/train/synthetic/mega/face/metrics.json"


def cancel_once_training(run: subprocess.Popen, checkpoint: Path) -> str | None:
    """Cancel the face stage's SLURM job as soon as it has written a checkpoint; its job id."""
    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None:
        if checkpoint.is_file():
            jobs = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
            face = [line.split()[0] for line in jobs.splitlines() if "rule_train_face" in line]
            if face:
                subprocess.run(["scancel", face[0]], check=True)
                return face[0]
        time.sleep(1)
    return None


def test_jobs_run_under_slurm_and_a_cancelled_one_is_redone(cluster, tmp_path):
    """One workflow, two runs: the first has its training job cancelled mid-way and fails with no
    output taken as complete; the second resumes that job from its checkpoint and finishes. Every
    job of a cluster rule ran as a SLURM job, the local rule where snakemake ran."""
    workdir = workdir_with(tmp_path, face_iterations=60)
    face_dir = workdir / "results" / "train" / "synthetic" / "mega"
    started = time.perf_counter()
    run = snakemake_slurm(workdir, cluster, TARGET, "--retries", "0", wait=False)
    job_id = cancel_once_training(run, face_dir / "face" / "checkpoint.pt")
    output, _ = run.communicate(timeout=600)
    assert job_id is not None, output[-3000:]
    assert run.returncode != 0, output[-3000:]
    assert not (face_dir / "face.pt").exists() and not (face_dir / "face" / "metrics.json").exists()

    rerun = snakemake_slurm(workdir, cluster, TARGET)
    seconds = time.perf_counter() - started
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert torch.load(face_dir / "face.pt", weights_only=False)["iterations"] == 60

    logs = {p.relative_to(workdir / "logs").with_suffix("").parts[0]: p for p in (workdir / "logs").rglob("*.log")}
    assert set(logs) == {"head_model", "synthesize", "train_face"}, logs
    for rule in ("synthesize", "train_face"):  # cluster rules: each a SLURM job
        assert "in SLURM job" in logs[rule].read_text(), f"{logs[rule]} did not run under SLURM"
        assert list((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log")), rule
    assert "resuming" in logs["train_face"].read_text()  # the rerun went on from the checkpoint
    assert "in SLURM job" not in logs["head_model"].read_text()  # a local rule: no cluster round trip
    print(f"SLURM: cancelled job {job_id}, rerun finished; {seconds:.0f} s")
