"""Loss curves of a training log, or the message of a stage that had none."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mega.report.result_figures import save_figure  # noqa: E402


def write_loss_figure(log_csv: str | Path, out: str | Path, title: str) -> Path:
    """One panel per loss column of ``log_csv`` (log scale, raw and smoothed), saved as PNG."""
    table = pd.read_csv(log_csv)
    columns = [c for c in table.columns if c not in ("step", "seconds") and table[c].notna().any()]
    n = len(columns)
    cols = 4
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    window = max(1, len(table) // 50)
    for ax, name in zip(axes.flat, columns):
        values = table[name].astype(float)
        ax.plot(table["step"], values, color="0.8", lw=0.6)
        ax.plot(table["step"], values.rolling(window, min_periods=1).mean(), color="C0", lw=1.2)
        if (values > 0).all():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


def write_message_figure(out: str | Path, title: str, message: str) -> Path:
    """A figure that says ``message`` where a stage that had nothing to do would show its curves."""
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, wrap=True)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)
