"""What the training-length benchmarks (hair_curve.py, joint_curve.py) share: their table as
Markdown and their curves as a figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from mega.hair.config import HairConfig
from mega.settings import synthetic_stage_settings
from named_overrides import parse_named_overrides


def run_settings(config_path: str | Path, run: str, **fixed) -> tuple[str, dict, HairConfig]:
    """``run`` = 'NAME=JSON': (name, the JSON's overrides, the workflow's synthetic hair settings
    updated by them and by ``fixed``)."""
    name, overrides = parse_named_overrides(run, "--run")
    settings = {**synthetic_stage_settings(yaml.safe_load(Path(config_path).read_text()), "hair"), **overrides,
                **fixed}
    return name, overrides, HairConfig.from_dict(settings, where=f"--run {name}")


def print_markdown(table: pd.DataFrame) -> None:
    print("\n| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.to_dict("records"):
        print("| " + " | ".join(str(row[c]) for c in table.columns) + " |")


def plot_panels(table: pd.DataFrame, path: Path, x: str, panels: list[tuple[str, dict[str, str]]],
                title: str) -> None:
    """One panel per (y-axis label, {line label: column}), side by side, against column ``x``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5))
    for axis, (ylabel, lines) in zip(axes, panels):
        for label, column in lines.items():
            axis.plot(table[x], table[column], marker="o", label=label)
        axis.set(xlabel=x, ylabel=ylabel)
        axis.legend()
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
