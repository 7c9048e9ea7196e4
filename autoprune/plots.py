"""Small matplotlib helpers shared by search, compare and progressive (PNG files, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(values: Sequence[float], path: str | Path, *, running_best: bool = True, title: str = "",
               xlabel: str = "episode", ylabel: str = "reward", marks: Mapping[str, float] | None = None,
               highlight: Mapping[str, Sequence[int]] | None = None) -> None:
    """Per-step values as dots, their running maximum as a line, optional horizontal reference lines
    and highlighted steps (label -> indices, e.g. the noise-free episodes)."""
    plt = _pyplot()
    v = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(len(v)), v, ".", alpha=0.5, label=ylabel)
    if running_best and len(v):
        ax.plot(np.arange(len(v)), np.maximum.accumulate(v), "-", label="best so far")
    for i, (label, idx) in enumerate((highlight or {}).items()):
        idx = np.asarray([j for j in idx if 0 <= j < len(v)], dtype=int)
        ax.plot(idx, v[idx], "o-", color=f"C{i + 5}", markersize=4, label=label)
    for i, (label, y) in enumerate((marks or {}).items()):
        ax.axhline(y, linestyle="--", color=f"C{i + 2}", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_group(names: Sequence[str], series: Mapping[str, Sequence[float]], path: str | Path, *,
                   title: str = "", ylabel: str = "channels kept (ratio)") -> None:
    """One line per series over the groups (e.g. keep ratio per group: best vs uniform)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7, 0.3 * len(names)), 4))
    x = np.arange(len(names))
    for label, values in series.items():
        ax.plot(x, values, "o-", label=label)
    ax.set_xticks(x, names, rotation=75, fontsize=7)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
