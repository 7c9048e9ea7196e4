"""Results tables: rows of a comparison -> mean +- std per method, CSV and a markdown report."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from autoprune.train.scores import score_label

COLUMNS = ["method", "recipe", "seed", "target", "macs", "params", "macs_ratio", "params_ratio", "score_value",
           "val_acc", "test_acc", "drop", "epochs", "within_budget", "alloc_seconds", "train_seconds",
           "wall_seconds", "spec"]


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] = COLUMNS) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _stats(values: Iterable[float | None]) -> tuple[float, float, int] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def summarize(rows: Sequence[dict], keys: Sequence[str] = ("target", "recipe", "method"),
              metrics: Sequence[str] = ("macs_ratio", "params_ratio", "score_value", "test_acc", "drop",
                                        "wall_seconds")) -> list[dict]:
    """One entry per ``keys`` combination: (mean, std, n) of each metric over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, members in groups.items():
        entry = dict(zip(keys, key))
        entry["seeds"] = len(members)
        for m in metrics:
            entry[m] = _stats(r.get(m) for r in members)
        out.append(entry)
    return out


def _pm(stat: tuple[float, float, int] | None, scale: float = 100.0, digits: int = 2) -> str:
    if stat is None:
        return "-"
    mean, std, n = stat
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}" if n > 1 else f"{scale * mean:.{digits}f}"


def markdown_table(summary: Sequence[dict], sort_by: str = "test_acc", score: str = "adaptive-bn") -> str:
    """Methods of one (target, recipe), best first."""
    lines = [f"| method | MACs kept % | params kept % | {score_label(score)} acc % | test acc % | drop (points) "
             "| seeds | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    ordered = sorted(summary, key=lambda e: -(e[sort_by][0] if e.get(sort_by) else -1e9))
    for e in ordered:
        lines.append(f"| {e['method']} | {_pm(e['macs_ratio'], digits=1)} | {_pm(e['params_ratio'], digits=1)} | "
                     f"{_pm(e['score_value'])} | {_pm(e['test_acc'])} | {_pm(e['drop'], scale=1.0)} | {e['seeds']} | "
                     f"{_pm(e['wall_seconds'], scale=1.0, digits=0)} |")
    return "\n".join(lines)


def verdict(summary: Sequence[dict], metric: str = "test_acc", learned: str = "policy") -> str:
    """Who wins one (target, recipe), by how much, and where the learned policy stands."""
    ranked = sorted((e for e in summary if e.get(metric)), key=lambda e: -e[metric][0])
    if not ranked:
        return "no results yet."
    best = ranked[0]
    text = f"**{best['method']}** wins with {100 * best[metric][0]:.2f}%"
    if len(ranked) > 1:
        second = ranked[1]
        gap = 100 * (best[metric][0] - second[metric][0])
        spread = 100 * max(best[metric][1], second[metric][1])
        text += (f", {gap:.2f} points ahead of {second['method']}"
                 + (f" (within the seed std of {spread:.2f}: not resolved)" if gap <= spread else ""))
    learned_entries = [e for e in ranked if e["method"].startswith(learned)]
    for e in learned_entries:
        place = ranked.index(e) + 1
        gap = 100 * (best[metric][0] - e[metric][0])
        text += (f"; the learned policy ({e['method']}) is the winner" if place == 1 else
                 f"; the learned policy ({e['method']}) ranks {place} of {len(ranked)}, {gap:.2f} points behind")
    return text + "."


def compare_report(record: dict, title: str = "autoprune compare") -> str:
    """The markdown report of a comparison record (see ``autoprune.comparison``)."""
    cfg, dense, rows = record["config"], record["dense"] or {}, record["rows"]
    score = cfg["score"]
    lines = [f"# {title}", "",
             f"Model `{cfg['model']}` (checkpoint `{cfg['checkpoint']}`), criterion `{cfg['criterion']}`, "
             f"budget metric {cfg['metric']}, seeds {cfg['seeds']}.",
             f"Dense baseline: test top-1 {100 * dense.get('test_acc', float('nan')):.2f}%, "
             f"{dense.get('macs', 0):,} MACs, {dense.get('params', 0):,} params.",
             f"Training after pruning: {cfg['epochs']:g} epoch(s)"
             + (f" on a {cfg['train_subset']}-image subset" if cfg.get("train_subset") else "")
             + f", batch {cfg['batch_size']}, weight decay {cfg['weight_decay']:g}; fine-tune = constant lr "
               f"{cfg['finetune_lr']:g}, lr-rewind = cosine from {cfg['rewind_lr']:g}, scratch = cosine from "
               f"{cfg['scratch_lr']:g}.",
             f"{score_label(score)} accuracy (the allocators' score) is on the held-out part of the training split, "
             "before training; test accuracy after training; drop = dense test accuracy - pruned test accuracy "
             "(points). Mean ± std over seeds.", ""]
    summary = summarize(rows)
    for target in sorted({e["target"] for e in summary}, reverse=True):
        for recipe in sorted({e["recipe"] for e in summary if e["target"] == target}):
            part = [e for e in summary if e["target"] == target and e["recipe"] == recipe]
            lines += [f"## {100 * target:g}% {cfg['metric']}, {recipe}", "", markdown_table(part, score=score), "",
                      verdict(part), ""]
    return "\n".join(lines)
