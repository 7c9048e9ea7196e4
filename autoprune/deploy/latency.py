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

TABLE_FORMAT = "autoprune.latency/1"


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

    def predict(self, counts: Sequence[int] | np.ndarray) -> float:
        return self.dense + float(sum(np.interp(float(k), w, d) for k, w, d in zip(counts, self.widths, self.deltas)))


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


def measure_table(structure: ModelStructure, batch_size: int = 1, precision: Precision | str = "fp32",
                  round_to: int = 1, points: int = 5, repeats: int = 20) -> LatencyTable:
    device = next(structure.model.parameters()).device
    prec = resolve_precision(precision, device)
    x = torch.randn(batch_size, *structure.example_input.shape[1:], device=device)
    dense = measure_latency(structure.model, x, prec, repeats)
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
            d.append(measure_latency(structure.prune_copy(remove), x, prec, repeats) - dense)
        widths.append(ws)
        deltas.append(np.minimum.accumulate(np.asarray(d)[::-1])[::-1].tolist())  # fewer channels never slower
    return LatencyTable(table_key(structure, batch_size, prec, round_to, points), dense, widths, deltas)


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
