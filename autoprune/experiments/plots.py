"""Every figure autoprune writes (PNG, Agg backend, matplotlib imported on use): search curves,
allocations, compare tables, sensitivity, progressive schedules."""
from __future__ import annotations

from collections import defaultdict
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


def plot_sensitivity(rows: Sequence[dict], path: str | Path) -> None:
    """Adaptive-BN accuracy drop vs keep ratio, one curve per group (rows of ``SensitivityAllocator``)."""
    plt = _pyplot()
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        curves[r["group"]].append((r["keep_ratio"], 100 * r["drop"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts + [(1.0, 0.0)])
        ax.plot(*zip(*pts), marker="o", ms=3, color=cmap(i / max(1, len(curves) - 1)), label=name)
    ax.set_xlabel("keep ratio of the group (others dense)")
    ax.set_ylabel("adaptive-BN accuracy drop (points)")
    ax.set_title("Sensitivity of each group")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_macs(rows: Sequence[dict], path: str | Path, dense_acc: float | None = None) -> None:
    """Test accuracy after fine-tuning vs MACs kept, mean +- std over seeds, one series per method.

    One panel per training recipe (fine-tune, LR rewinding, scratch baselines).
    """
    plt = _pyplot()
    recipes = sorted({r["recipe"] for r in rows})
    fig, axes = plt.subplots(1, len(recipes), figsize=(5.5 * len(recipes), 4.2), squeeze=False, sharey=True)
    methods = sorted({r["method"] for r in rows})
    markers = "osD^v<>ph*"
    for ax, recipe in zip(axes[0], recipes):
        for j, method in enumerate(methods):
            pts: dict[float, list[tuple[float, float]]] = defaultdict(list)
            for r in rows:
                if r["recipe"] == recipe and r["method"] == method and r.get("test_acc") is not None:
                    pts[r["target"]].append((r["macs_ratio"], 100 * r["test_acc"]))
            if not pts:
                continue
            xs = [np.mean([p[0] for p in v]) for _, v in sorted(pts.items())]
            ys = [np.mean([p[1] for p in v]) for _, v in sorted(pts.items())]
            es = [np.std([p[1] for p in v]) for _, v in sorted(pts.items())]
            ax.errorbar(xs, ys, yerr=es, marker=markers[j % len(markers)], capsize=3, label=method,
                        linestyle="-", alpha=0.85)
        if dense_acc is not None:
            ax.axhline(100 * dense_acc, color="grey", linestyle="--", linewidth=1, label="dense")
        ax.set_title(recipe)
        ax.set_xlabel("MACs kept (fraction of dense)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test top-1 after training (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_allocations(allocations: dict[tuple[str, float], dict[str, float]], path: str | Path) -> None:
    """Keep ratio per group, one line per method, one panel per target.

    ``allocations`` maps (method, target) to {group name: keep ratio} in group order.
    """
    plt = _pyplot()
    targets = sorted({t for _, t in allocations})
    fig, axes = plt.subplots(len(targets), 1, figsize=(9, 3.4 * len(targets)), squeeze=False)
    for ax, target in zip(axes[:, 0], targets):
        names: list[str] = []
        for (method, t), ratios in sorted(allocations.items()):
            if t != target:
                continue
            names = list(ratios)
            ax.plot(range(len(ratios)), list(ratios.values()), marker="o", ms=3, label=method)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("keep ratio")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"channels kept per group at {100 * target:g}% MACs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_schedule(planned: list[tuple[int, float]], events: list, path: str | Path) -> None:
    """Planned vs realised kept fraction of the original MACs over training steps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step([s for s, _ in planned], [100 * t for _, t in planned], where="post", label="planned")
    steps = [0] + [e.step for e in events] + [planned[-1][0]]
    real = [100.0] + [100 * e.realised for e in events]
    ax.step(steps, real + real[-1:], where="post", linestyle="--", marker="o", markersize=3, label="realised")
    ax.set(xlabel="training step", ylabel="MACs (% of original)", title="Pruning schedule")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_channels_over_training(events: list, original: dict[str, int], total: int, path: str | Path) -> None:
    """Channels kept per group over training, one line per group."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [0] + [e.step for e in events] + [total]
    for name, dense in original.items():
        series = [dense] + [e.channels[name] for e in events]
        ax.step(steps, series + series[-1:], where="post", label=name)
    ax.set(xlabel="training step", ylabel="channels kept", title="Channels per group over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(original) > 12 else 1, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
