"""Measuring a latency table, and the on-disk cache that keeps it.

A table is measured once per model, device, batch size, threads, precision and method and cached
with those keys (``table_key``); a key that differs is measured again, never reused. Single-group or
single-layer changes do not add up exactly to what a whole pruned model measures, so the table's
``scale`` is fitted on a few whole pruned models (``_calibrate``), and every row of times is made
monotone so the budget bisections stay valid. Every clock reading goes through
``timing.measure_latency``.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.core.counts import min_count, snap_count
from autoprune.core.structure import ModelStructure
from autoprune.deploy import timing
from autoprune.deploy.latency_table import METHODS, QUANTUM, TABLE_FORMAT, LatencyTable
from autoprune.runs import write_json_atomic
from autoprune.train.data import cache_dir
from autoprune.train.precision import Precision, resolve_precision


def table_key(structure: ModelStructure, batch_size: int, precision: Precision, round_to: int, points: int,
              method: str = "layers", quantum: int = 1) -> dict:
    """Everything a measured latency depends on: a change in any of them means measuring again."""
    shape = [g.name + ":" + str(g.channels) for g in structure.groups]
    fingerprint = hashlib.sha256(json.dumps([type(structure.model).__name__, shape,
                                             list(structure.example_input.shape[1:])]).encode()).hexdigest()[:16]
    device = next(structure.model.parameters()).device
    return {"format": TABLE_FORMAT, "model": fingerprint, "batch_size": int(batch_size), "device": str(device),
            "cpu_threads": torch.get_num_threads(), "precision": precision.name, "torch": torch.__version__,
            "round_to": int(round_to), "points": int(points), "input_shape": list(structure.example_input.shape[1:]),
            "method": method, "quantum": int(quantum)}


def _grid(structure: ModelStructure, g: int, round_to: int, points: int) -> list[int]:
    group = structure.groups[g]
    raw = np.linspace(min_count(group, round_to), group.channels, points)
    return sorted({snap_count(group, float(k), round_to) for k in raw} | {group.channels})


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
                  round_to: int = 1, points: int = 8, min_run_time: float = 0.02, rounds: int = 5,
                  method: str = "layers", quantum: int = QUANTUM) -> LatencyTable:
    """The ``method`` table; the dense latency is the median of paired rounds (see ``_group_table``).
    ``points``: grid points per layer side (``layers``) or per group (``groups``); ``min_run_time``:
    seconds of timing per measurement (one grid point, or one side of one paired round)."""
    if method not in METHODS:
        raise ValueError(f"unknown latency table method '{method}': use {' or '.join(METHODS)}")
    if method == "layers":
        device = next(structure.model.parameters()).device
        prec = resolve_precision(precision, device)
        x = torch.randn(batch_size, *structure.example_input.shape[1:], device=device)
        dense = statistics.median(timing.measure_latency(structure.model, x, prec, min_run_time) for _ in range(rounds))
        table = LatencyTable(table_key(structure, batch_size, prec, round_to, points, method, quantum), dense,
                             channels=[int(c) for c in structure.channels], quantum=quantum,
                             layers=_layer_grid(structure, batch_size, prec, points, min_run_time, quantum))
        table.scale = _calibrate(structure, table, x, prec, round_to, min_run_time, rounds)
        return table
    return _group_table(structure, batch_size, precision, round_to, points, min_run_time, rounds)


def _group_table(structure: ModelStructure, batch_size: int, precision: Precision | str, round_to: int, points: int,
                 min_run_time: float, rounds: int) -> LatencyTable:
    """Each width's change is a paired measurement: the dense model and the cut one, timed in
    alternating rounds, the median of the differences (drift and load cancel out of each pair)."""
    device = next(structure.model.parameters()).device
    prec = resolve_precision(precision, device)
    x = torch.randn(batch_size, *structure.example_input.shape[1:], device=device)
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
                base = timing.measure_latency(structure.model, x, prec, min_run_time)
                dense_times.append(base)
                diffs.append(timing.measure_latency(cut, x, prec, min_run_time) - base)
            d.append(statistics.median(diffs))
        widths.append(ws)
        deltas.append(_isotonic(d))  # fewer channels never slower, within the measurements' noise
    dense = (statistics.median(dense_times) if dense_times
             else timing.measure_latency(structure.model, x, prec, min_run_time * rounds))
    table = LatencyTable(table_key(structure, batch_size, prec, round_to, points, "groups"), dense, widths, deltas)
    table.scale = _calibrate(structure, table, x, prec, round_to, min_run_time, rounds)
    return table


def _layer_inputs(structure: ModelStructure) -> dict[str, tuple[int, ...]]:
    """Input shape (without the batch) of every conv and linear layer, from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output is left alone
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in structure.model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = structure.model.training
    try:
        with torch.inference_mode():
            structure.model.eval()(structure.example_input)
    finally:
        for h in handles:
            h.remove()
        structure.model.train(was_training)
    return shapes


def _block(module: nn.Module, kind: str, c_in: int, c_out: int) -> nn.Module:
    """The layer at (c_in, c_out) on its own: conv + BatchNorm + ReLU (as most convs run), or linear."""
    if isinstance(module, nn.Linear):
        return nn.Linear(c_in, c_out, bias=module.bias is not None)
    groups = c_out if kind == "dwconv" else module.groups
    conv = nn.Conv2d(c_out if kind == "dwconv" else c_in, c_out, module.kernel_size, module.stride, module.padding,
                     module.dilation, groups, bias=module.bias is not None)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())


def _axis(full: int, refs: list, points: int, base: int) -> list[int]:
    """Channel counts a layer side is timed at: the dense one alone if no group changes it, else
    ``full``, the lowest count pruning leaves (a fifth, ``min_keep``'s default, in whole ``base``
    blocks) and the multiples of a step between them: ``base``, doubled until ``points`` suffice."""
    if not refs:
        return [int(full)]
    low = max(base, base * math.floor(0.2 * full / base))
    step = base
    while math.ceil((full - low) / step) > max(points - 1, 1):
        step *= 2
    return sorted({low, int(full)} | set(range(step * math.ceil(low / step), int(full), step)))


def _layer_grid(structure: ModelStructure, batch_size: int, prec: Precision, points: int,
                min_run_time: float, quantum: int) -> list[dict]:
    modules = dict(structure.model.named_modules())
    inputs = _layer_inputs(structure)
    device = next(structure.model.parameters()).device
    timed: dict[tuple, list[list[float]]] = {}
    layers = []
    for row in structure.costs.rows:
        if row.kind not in ("conv", "dwconv", "linear") or row.name not in inputs:
            continue
        module = modules[row.name]
        dw = row.kind == "dwconv"
        step = math.lcm(quantum, module.groups if row.kind == "conv" else 1)  # grouped convs keep whole groups
        in_refs = [] if dw else [list(r) for r in row.in_refs]  # a depthwise conv's input is its output
        out_refs = [list(r) for r in row.out_refs]
        ins, outs = _axis(row.in_channels, in_refs, points, step), _axis(row.out_channels, out_refs, points, step)
        spatial = inputs[row.name][1:]
        sig = (type(module).__name__, row.kind, getattr(module, "kernel_size", None), getattr(module, "stride", None),
               getattr(module, "padding", None), getattr(module, "dilation", None), step, module.bias is not None,
               spatial, tuple(ins), tuple(outs))
        if sig not in timed:
            grid = []
            for c_in in ins:
                line = []
                for c_out in outs:
                    block = _block(module, row.kind, c_in, c_out).to(device)
                    x = torch.randn(batch_size, c_out if dw else c_in, *spatial, device=device)
                    line.append(timing.measure_latency(block, x, prec, min_run_time))
                grid.append(_isotonic(line))  # more output channels never faster
            columns = [_isotonic([grid[i][j] for i in range(len(ins))]) for j in range(len(outs))]
            timed[sig] = [[columns[j][i] for j in range(len(outs))] for i in range(len(ins))]
        layers.append({"name": row.name, "in0": row.in_channels, "out0": row.out_channels, "in_refs": in_refs,
                       "out_refs": out_refs, "in": ins, "out": outs, "times": timed[sig]})
    return layers


def _calibrate(structure: ModelStructure, table: LatencyTable, x: torch.Tensor, prec: Precision, round_to: int,
               min_run_time: float, rounds: int, samples: int = 6) -> float:
    """Single-group changes do not add up exactly (per-layer overheads, kernel choices): time a few
    random allocations whole, paired with the dense model, and fit one factor on their sum
    (least squares through the origin). Measured on allocations of its own, seeded, not the user's."""
    rng = np.random.default_rng(0)
    summed, measured = [], []
    for _ in range(samples):
        ratios = rng.uniform(0.2, 1.0, size=len(structure.groups))
        counts = [snap_count(grp, r * grp.channels, round_to) for grp, r in zip(structure.groups, ratios)]
        remove = [list(range(grp.channels - k)) for grp, k in zip(structure.groups, counts)]
        cut = structure.prune_copy(remove)
        diffs = []
        for _ in range(rounds):
            base = timing.measure_latency(structure.model, x, prec, min_run_time)
            diffs.append(timing.measure_latency(cut, x, prec, min_run_time) - base)
        summed.append(table.summed(counts))
        measured.append(statistics.median(diffs))
    s, m = np.asarray(summed), np.asarray(measured)
    scale = float((s @ m) / (s @ s)) if (s @ s) > 0 else 1.0
    table.fit_r2 = float(1.0 - ((m - scale * s) ** 2).sum() / (m @ m)) if (m @ m) > 0 else 0.0
    return scale


def latency_table(structure: ModelStructure, batch_size: int = 1, precision: Precision | str = "fp32",
                  round_to: int = 1, points: int = 8, cache: bool = True, method: str = "layers",
                  quantum: int = QUANTUM) -> LatencyTable:
    """The cached table for these keys, measured (and cached) when there is none or its key differs."""
    prec = resolve_precision(precision, next(structure.model.parameters()).device)
    quantum = quantum if method == "layers" else 1
    key = table_key(structure, batch_size, prec, round_to, points, method, quantum)
    path = cache_dir() / "latency" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    if cache and path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return LatencyTable(**saved)
        except (ValueError, TypeError):  # not JSON, not UTF-8, or other fields
            pass  # unreadable: measured again below
    table = measure_table(structure, batch_size, prec, round_to, points, method=method, quantum=quantum)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, asdict(table))
    return table
