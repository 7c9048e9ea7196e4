"""A measured-latency budget (NetAdapt's lookup table), for when MACs are the wrong proxy.

``latency_table(structure, ...)`` times the dense model, then, for every group on its own, the
model with that group cut to a few legal widths (the others dense): each group's latency change
as a function of its width. An allocation's latency is predicted as the dense latency plus the
sum of its groups' changes (interpolated between measured widths, made monotone so the budget
bisections stay valid). The table is measured once per model, device, batch size, threads and
precision and cached on disk with those keys; a key that differs is measured again, never reused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.core.structure import ModelStructure
from autoprune.runs import write_json_atomic
from autoprune.train.data import cache_dir
from autoprune.train.precision import Precision, resolve_precision

TABLE_FORMAT = "autoprune.latency/2"


def measure_latency(model: nn.Module, x: torch.Tensor, precision: Precision | str = "fp32",
                    repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``x`` (eval mode, the precision's autocast and memory
    format), timed on a copy: ``model`` itself is left as it was."""
    prec = resolve_precision(precision, x.device)
    model = copy.deepcopy(model).eval().to(memory_format=prec.memory_format)
    x = x.contiguous(memory_format=prec.memory_format)
    times = []
    with torch.inference_mode(), prec.autocast():
        for i in range(warmup + repeats):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class LatencyTable:
    """Dense latency and, per group, the latency change at a few widths: ``predict(counts)`` in seconds."""

    key: dict
    dense: float
    widths: list[list[int]]  # per group, ascending, the last one the dense width
    deltas: list[list[float]]  # per group, seconds added (<= 0) at those widths, monotone in width
    scale: float = 1.0  # calibration: measured joint change / sum of the groups' single changes

    def summed(self, counts: Sequence[int] | np.ndarray) -> float:
        return float(sum(np.interp(float(k), w, d) for k, w, d in zip(counts, self.widths, self.deltas)))

    def predict(self, counts: Sequence[int] | np.ndarray) -> float:
        return self.dense + self.scale * self.summed(counts)


def table_key(structure: ModelStructure, batch_size: int, precision: Precision, round_to: int, points: int) -> dict:
    """Everything a measured latency depends on: a change in any of them means measuring again."""
    shape = [g.name + ":" + str(g.channels) for g in structure.groups]
    fingerprint = hashlib.sha256(json.dumps([type(structure.model).__name__, shape,
                                             list(structure.example_input.shape[1:])]).encode()).hexdigest()[:16]
    device = next(structure.model.parameters()).device
    return {"format": TABLE_FORMAT, "model": fingerprint, "batch_size": int(batch_size), "device": str(device),
            "cpu_threads": torch.get_num_threads(), "precision": precision.name, "torch": torch.__version__,
            "round_to": int(round_to), "points": int(points), "input_shape": list(structure.example_input.shape[1:])}


def _grid(structure: ModelStructure, g: int, round_to: int, points: int) -> list[int]:
    group = structure.groups[g]
    raw = np.linspace(structure.min_keep(g, round_to), group.channels, points)
    return sorted({structure.snap(g, float(k), round_to) for k in raw} | {group.channels})


def _isotonic(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators): monotone without a running minimum's
    bias toward the most negative noise."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return [s / c for s, c in blocks for _ in range(int(c))]


def measure_table(structure: ModelStructure, batch_size: int = 1, precision: Precision | str = "fp32",
                  round_to: int = 1, points: int = 5, repeats: int = 20, rounds: int = 5) -> LatencyTable:
    """Each width's change is a paired measurement: the dense model and the cut one, timed in
    alternating rounds, the median of the differences (drift and load cancel out of each pair)."""
    device = next(structure.model.parameters()).device
    prec = resolve_precision(precision, device)
    x = torch.randn(batch_size, *structure.example_input.shape[1:], device=device)
    per_round = max(1, repeats // rounds)
    dense_times: list[float] = []
    widths, deltas = [], []
    for g, group in enumerate(structure.groups):
        ws = _grid(structure, g, round_to, points)
        d = []
        for k in ws:
            if k == group.channels:
                d.append(0.0)
                continue
            remove = [[] for _ in structure.groups]
            remove[g] = list(range(group.channels - k))  # which channels go does not change the time
            cut = structure.prune_copy(remove)
            diffs = []
            for _ in range(rounds):
                base = measure_latency(structure.model, x, prec, per_round)
                dense_times.append(base)
                diffs.append(measure_latency(cut, x, prec, per_round) - base)
            d.append(statistics.median(diffs))
        widths.append(ws)
        deltas.append(_isotonic(d))  # fewer channels never slower, within the measurements' noise
    dense = statistics.median(dense_times) if dense_times else measure_latency(structure.model, x, prec, repeats)
    table = LatencyTable(table_key(structure, batch_size, prec, round_to, points), dense, widths, deltas)
    table.scale = _calibrate(structure, table, x, prec, round_to, per_round, rounds)
    return table


def _calibrate(structure: ModelStructure, table: LatencyTable, x: torch.Tensor, prec: Precision, round_to: int,
               per_round: int, rounds: int, samples: int = 6) -> float:
    """Single-group changes do not add up exactly (per-layer overheads, kernel choices): time a few
    random allocations whole, paired with the dense model, and fit one factor on their sum
    (least squares through the origin). Measured on allocations of its own, seeded, not the user's."""
    rng = np.random.default_rng(0)
    summed, measured = [], []
    for _ in range(samples):
        ratios = rng.uniform(0.2, 1.0, size=len(structure.groups))
        counts = [structure.snap(g, r * grp.channels, round_to) for g, (grp, r) in enumerate(zip(structure.groups, ratios))]
        remove = [list(range(grp.channels - k)) for grp, k in zip(structure.groups, counts)]
        cut = structure.prune_copy(remove)
        diffs = []
        for _ in range(rounds):
            base = measure_latency(structure.model, x, prec, per_round)
            diffs.append(measure_latency(cut, x, prec, per_round) - base)
        summed.append(table.summed(counts))
        measured.append(statistics.median(diffs))
    s, m = np.asarray(summed), np.asarray(measured)
    return float((s @ m) / (s @ s)) if (s @ s) > 0 else 1.0


def latency_table(structure: ModelStructure, batch_size: int = 1, precision: Precision | str = "fp32",
                  round_to: int = 1, points: int = 5, cache: bool = True) -> LatencyTable:
    """The cached table for these keys, measured (and cached) when there is none or its key differs."""
    prec = resolve_precision(precision, next(structure.model.parameters()).device)
    key = table_key(structure, batch_size, prec, round_to, points)
    path = cache_dir() / "latency" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    if cache and path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return LatencyTable(**saved)
        except (json.JSONDecodeError, TypeError):
            pass  # unreadable: measured again below
    table = measure_table(structure, batch_size, prec, round_to, points)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, asdict(table))
    return table
