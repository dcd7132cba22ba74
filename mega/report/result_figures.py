"""Figures of the results: the three stages' training curves of one avatar, and the qualitative
grid of Table 2 (ground truth | full model | each ablation) on a few val and test images."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from mega.atomic import atomic_path  # noqa: E402
from mega.data.gaussian_avatars import SubjectFrames  # noqa: E402
from mega.errors import DataError  # noqa: E402

STAGES = ("face", "hair", "joint")
PANELS = {"total": "total loss", "psnr_train": "training PSNR (dB)", "hair_iou": "hair IoU (training batch)"}


def save_figure(fig, out: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return out


def write_stage_curves(run_dir: str | Path, out: str | Path, title: str = "") -> Path:
    """Total loss, training PSNR and hair IoU of the face, canonical-hair and joint stages, one
    after the other on a common step axis (each stage's ``loss.csv`` in ``run_dir``; a hairless
    subject's hair stage, which takes no step, is left out and the title says so)."""
    run_dir = Path(run_dir)
    logs = {}
    hairless = _is_hairless(run_dir)
    for stage in STAGES:
        path = run_dir / stage / "loss.csv"
        if stage == "hair" and hairless:
            continue  # a hairless subject's hair stage takes no step
        if not path.is_file():
            raise DataError(f"{path}: no training log of the {stage} stage (train it first)")
        logs[stage] = pd.read_csv(path)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.0))
    offset = 0
    for i, (stage, table) in enumerate(logs.items()):
        steps = table["step"].to_numpy() + offset
        window = max(1, len(table) // 40)
        for ax, (column, name) in zip(axes, PANELS.items()):
            if column in table and table[column].notna().any():
                values = table[column].astype(float).rolling(window, min_periods=1).mean()
                ax.plot(steps, values, color=f"C{i}", lw=1.2, label=stage)
            ax.set_title(name, fontsize=9)
        for ax in axes:
            ax.axvline(offset, color="0.85", lw=0.8)
        offset = int(steps[-1]) if len(steps) else offset
    axes[0].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step (stages in order)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=8)
    title = title or f"training of {run_dir}"
    fig.suptitle(f"{title} (hairless: no hair stage)" if hairless else title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


def _is_hairless(run_dir: Path) -> bool:
    """Whether the run's canonical-hair stage found its subject hairless (hair/metrics.json)."""
    path = run_dir / "hair" / "metrics.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("hairless"))


def pick_views(metrics_csv: str | Path, n: int) -> list[str]:
    """``n`` render names spread evenly over an evaluated split (from its metrics.csv)."""
    table = pd.read_csv(metrics_csv)
    if table.empty:
        raise DataError(f"{metrics_csv}: no evaluated images")
    rows = np.linspace(0, len(table) - 1, min(n, len(table))).round().astype(int)
    return [Path(table["render"].iloc[r]).name for r in rows]


def write_comparison_grid(union_dir: str | Path, eval_dir: str | Path, variants: list[str], labels: dict[str, str],
                          out: str | Path, n_views: int = 3, title: str = "") -> Path:
    """Rows: ``n_views`` images of val then of test; columns: ground truth, then each variant's
    render (from ``eval_dir/<variant>/<split>/renders/``, written by ``mega evaluate``)."""
    eval_dir = Path(eval_dir)
    cells = []  # (split, name, ground truth path)
    for split in ("val", "test"):
        frames = SubjectFrames(Path(union_dir), split)
        by_name = {f"{int(frames.timestep[i]):05d}_{int(frames.camera_index[i]):02d}.png": frames.resolve(
            frames.image_paths[i]) for i in range(len(frames))}
        for name in pick_views(eval_dir / variants[0] / split / "metrics.csv", n_views):
            cells.append((split, name, by_name[name]))
    columns = ["ground truth", *[labels.get(v, v) for v in variants]]
    first = np.asarray(Image.open(cells[0][2]))
    aspect = first.shape[1] / first.shape[0]
    fig, axes = plt.subplots(len(cells), len(columns), figsize=(1.6 * aspect * len(columns) + 0.6, 1.7 * len(cells)),
                             squeeze=False)
    for r, (split, name, truth) in enumerate(cells):
        images = [truth] + [eval_dir / v / split / "renders" / name for v in variants]
        for c, path in enumerate(images):
            if not Path(path).is_file():
                raise DataError(f"{path}: missing (evaluate with evaluation.save_renders: true)")
            ax = axes[r, c]
            ax.imshow(np.asarray(Image.open(path).convert("RGB")))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{split}\n{Path(name).stem}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)
