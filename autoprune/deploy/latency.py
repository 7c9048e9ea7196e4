"""A measured-latency budget (NetAdapt's lookup table), for when MACs are the wrong proxy.

``latency_table(structure, ...)`` times the dense model and builds one of two tables:

* ``layers`` (default, NetAdapt): every conv (with a BatchNorm and ReLU behind it) and linear layer
  timed on its own over a grid of (input, output) channel counts, identical layers timed once. A
  layer's width follows from the allocation through the structure's cost table, so a cut that
  shrinks both sides of a layer is priced as such. Conv kernels work on blocks of channels (oneDNN:
  16 fp32 channels on AVX-512; GPUs' tensor cores: 8), so time is a staircase in the channel count,
  not a line: 20 output channels cost what 32 do. The grid therefore sits on multiples of ``quantum``
  (8) channels and a count is rounded up to the quantum before it is looked up: exact where the grid
  holds every multiple (layers up to ``points`` x 8 channels), interpolated between grid points on
  wider ones.
* ``groups``: the whole model timed with one group cut to a few widths (the others dense); the
  groups' changes are added up, which misses how cuts on both sides of a layer interact.

Either way an allocation's latency is the dense latency plus the table's change, times one factor
fitted on a few whole pruned models (``_calibrate``); tables are made monotone so the budget
bisections stay valid. A table is measured once per model, device, batch size, threads, precision
and method and cached on disk with those keys; a key that differs is measured again, never reused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.core.structure import ModelStructure
from autoprune.runs import write_json_atomic
from autoprune.train.data import cache_dir
from autoprune.train.precision import Precision, resolve_precision

TABLE_FORMAT = "autoprune.latency/4"
METHODS = ("layers", "groups")
QUANTUM = 8  # channel block the layer grid sits on (see the module docstring)


def measure_latency(model: nn.Module, x: torch.Tensor, precision: Precision | str = "fp32",
                    repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``x`` (eval mode, the precision's autocast and memory
    format), timed on a copy: ``model`` itself is left as it was."""
    prec = resolve_precision(precision, x.device)
    model = copy.deepcopy(model).eval().to(memory_format=prec.memory_format)
    x = x.contiguous(memory_format=prec.memory_format) if x.dim() == 4 else x
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


def paired_ratio(model: nn.Module, reference: nn.Module, x: torch.Tensor, precision: Precision | str = "fp32",
                 repeats: int = 60, rounds: int = 10) -> tuple[float, float, float]:
    """(model's latency / reference's, model seconds, reference seconds), timed in alternating rounds.

    The ratio is the median of the per-round ratios: a clock that drifts (a shared VM's CPU was seen
    16% slower within one run) moves both sides of a round alike, so it cancels out of the ratio."""
    per_round = max(1, repeats // rounds)
    mine, theirs = [], []
    for _ in range(rounds):
        theirs.append(measure_latency(reference, x, precision, per_round))
        mine.append(measure_latency(model, x, precision, per_round))
    ratio = statistics.median(m / r for m, r in zip(mine, theirs))
    return ratio, statistics.median(mine), statistics.median(theirs)


@dataclass
class LatencyTable:
    """Dense latency and the change an allocation makes to it: ``predict(counts)`` in seconds."""

    key: dict
    dense: float
    widths: list[list[int]] = field(default_factory=list)  # groups: per group, ascending, last = dense width
    deltas: list[list[float]] = field(default_factory=list)  # groups: seconds added (<= 0) at those widths
    scale: float = 1.0  # calibration: measured joint change / the table's change
    channels: list[int] = field(default_factory=list)  # layers: the groups' dense widths
    layers: list[dict] = field(default_factory=list)  # layers: channel maps, (in, out) grid and its times
    # share of the calibration models' measured changes the table explains (1 - SSE / sum of squares)
    fit_r2: float | None = None
    quantum: int = 1  # layers: counts are rounded up to a multiple of this before lookup (kernels' channel blocks)

    @property
    def reliable(self) -> bool:
        """The table explains most of what whole pruned models measured (and they are faster, not slower)."""
        return self.scale > 0 and (self.fit_r2 is None or self.fit_r2 >= 0.5)

    def summed(self, counts: Sequence[int] | np.ndarray) -> float:
        if self.layers:
            return self._layer_time(counts) - self._layer_time(self.channels)
        return float(sum(np.interp(float(k), w, d) for k, w, d in zip(counts, self.widths, self.deltas)))

    def predict(self, counts: Sequence[int] | np.ndarray) -> float:
        return self.dense + self.scale * self.summed(counts)

    def _layer_time(self, counts: Sequence[int] | np.ndarray) -> float:
        removed = np.asarray(self.channels, dtype=np.float64) - np.asarray(counts, dtype=np.float64)
        q = self.quantum
        total = 0.0
        for layer in self.layers:
            c_in = layer["in0"] - sum(m * removed[g] for g, m in layer["in_refs"])
            c_out = layer["out0"] - sum(m * removed[g] for g, m in layer["out_refs"])
            c_in, c_out = (min(q * math.ceil(c / q - 1e-9), full) if refs else c
                           for c, full, refs in ((c_in, layer["in0"], layer["in_refs"]),
                                                 (c_out, layer["out0"], layer["out_refs"])))
            along_out = [np.interp(c_out, layer["out"], row) for row in layer["times"]]
            total += float(np.interp(c_in, layer["in"], along_out))
        return total


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
                  round_to: int = 1, points: int = 8, repeats: int = 20, rounds: int = 5,
                  method: str = "layers", quantum: int = QUANTUM) -> LatencyTable:
    """The ``method`` table; the dense latency is the median of paired rounds (see ``_group_table``).
    ``points``: grid points per layer side (``layers``) or per group (``groups``)."""
    if method not in METHODS:
        raise ValueError(f"unknown latency table method '{method}': use {' or '.join(METHODS)}")
    if method == "layers":
        device = next(structure.model.parameters()).device
        prec = resolve_precision(precision, device)
        x = torch.randn(batch_size, *structure.example_input.shape[1:], device=device)
        per_round = max(1, repeats // rounds)
        dense = statistics.median(measure_latency(structure.model, x, prec, per_round) for _ in range(rounds))
        table = LatencyTable(table_key(structure, batch_size, prec, round_to, points, method, quantum), dense,
                             channels=[int(c) for c in structure.channels], quantum=quantum,
                             layers=_layer_grid(structure, batch_size, prec, points, repeats, quantum))
        table.scale = _calibrate(structure, table, x, prec, round_to, per_round, rounds)
        return table
    return _group_table(structure, batch_size, precision, round_to, points, repeats, rounds)


def _group_table(structure: ModelStructure, batch_size: int, precision: Precision | str, round_to: int, points: int,
                 repeats: int, rounds: int) -> LatencyTable:
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
    table = LatencyTable(table_key(structure, batch_size, prec, round_to, points, "groups"), dense, widths, deltas)
    table.scale = _calibrate(structure, table, x, prec, round_to, per_round, rounds)
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
                repeats: int, quantum: int) -> list[dict]:
    modules = dict(structure.model.named_modules())
    inputs = _layer_inputs(structure)
    device = next(structure.model.parameters()).device
    timed: dict[tuple, list[list[float]]] = {}
    layers = []
    for row in structure.costs.rows:
        if row["kind"] not in ("conv", "dwconv", "linear") or row.get("name") not in inputs:
            continue
        module = modules[row["name"]]
        dw = row["kind"] == "dwconv"
        step = math.lcm(quantum, module.groups if row["kind"] == "conv" else 1)  # grouped convs keep whole groups
        in_refs = [] if dw else [list(r) for r in row["in_refs"]]  # a depthwise conv's input is its output
        out_refs = [list(r) for r in row["out_refs"]]
        ins, outs = _axis(row["in"], in_refs, points, step), _axis(row["out"], out_refs, points, step)
        spatial = inputs[row["name"]][1:]
        sig = (type(module).__name__, row["kind"], getattr(module, "kernel_size", None), getattr(module, "stride", None),
               getattr(module, "padding", None), getattr(module, "dilation", None), step, module.bias is not None,
               spatial, tuple(ins), tuple(outs))
        if sig not in timed:
            grid = []
            for c_in in ins:
                line = []
                for c_out in outs:
                    block = _block(module, row["kind"], c_in, c_out).to(device)
                    x = torch.randn(batch_size, c_out if dw else c_in, *spatial, device=device)
                    line.append(measure_latency(block, x, prec, repeats))
                grid.append(_isotonic(line))  # more output channels never faster
            columns = [_isotonic([grid[i][j] for i in range(len(ins))]) for j in range(len(outs))]
            timed[sig] = [[columns[j][i] for j in range(len(outs))] for i in range(len(ins))]
        layers.append({"name": row["name"], "in0": row["in"], "out0": row["out"], "in_refs": in_refs,
                       "out_refs": out_refs, "in": ins, "out": outs, "times": timed[sig]})
    return layers


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


def _next_goal(rows: list[dict], target: float) -> float:
    """The predicted ratio to ask the table for next: the secant through the last two (predicted,
    measured) pairs where they rise together -- on the first step the other pair is the dense model,
    (1, 1) by definition, so a device with a fixed overhead is hit at once -- else the proportional
    correction predicted x target / measured (measurements too noisy to slope)."""
    x1, y1 = rows[-1]["predicted_ratio"], rows[-1]["measured_ratio"]
    x0, y0 = (rows[-2]["predicted_ratio"], rows[-2]["measured_ratio"]) if len(rows) > 1 else (1.0, 1.0)
    goal = x1 * target / y1
    if (x1 - x0) * (y1 - y0) > 0 and abs(y1 - y0) > 1e-3 * target:
        goal = x1 + (target - y1) * (x1 - x0) / (y1 - y0)
    return float(min(1.0, max(0.5 * x1, min(2.0 * x1, goal))))


def fit_measured(problem, allocation, precision: Precision | str = "fp32", tolerance: float = 0.05,
                 steps: int = 4, repeats: int = 60, rounds: int = 10,
                 reference: tuple[nn.Module, Sequence[int]] | None = None, target: float | None = None) -> tuple:
    """The table predicts, the device decides: time ``allocation``'s pruned model against the dense
    one (``paired_ratio``) and, while the measured ratio is more than ``tolerance`` (relative) off the
    problem's latency target, ask the table for a corrected predicted ratio (``_next_goal``) with
    every group's count scaled by one factor -- the allocation's shape kept -- and measure again.
    NetAdapt likewise measures every proposal instead of trusting the table. Returns (the measured
    allocation closest to the target, one row per measurement; ``dense_seconds`` is the reference's).

    ``reference`` = (a pruned model, its counts) times against that model instead of the dense one,
    ``target`` then relative to it (1.0: as fast as it): two allocations brought to equal measured speed."""
    from autoprune.core.allocation import Allocation
    from autoprune.core.legal import bisect
    from autoprune.core.problem import fill_to_budget

    s, table = problem.structure, problem.latency
    target = problem.target if target is None else target
    ref_model, ref_predicted = (s.model, table.dense) if reference is None else (reference[0], table.predict(reference[1]))
    x = torch.randn(table.key["batch_size"], *table.key["input_shape"], device=next(s.model.parameters()).device)
    base = np.asarray(allocation.counts(s), dtype=np.float64)
    lo, hi = problem.min_counts(), problem.max_counts()

    def scaled(f: float) -> np.ndarray:
        return np.clip([s.snap(g, f * k, problem.round_to) for g, k in enumerate(base)], lo, hi)

    counts, goal, rows = np.asarray(allocation.counts(s)), target, []
    for step in range(steps + 1):
        remove = [list(range(g.channels - int(k))) for g, k in zip(s.groups, counts)]
        ratio, seconds, dense = paired_ratio(s.prune_copy(remove), ref_model, x, precision, repeats, rounds)
        rows.append({"step": step, "asked_ratio": goal, "predicted_ratio": table.predict(counts) / ref_predicted,
                     "measured_ratio": ratio, "measured_seconds": seconds, "dense_seconds": dense,
                     "counts": [int(k) for k in counts]})
        if abs(ratio / target - 1) <= tolerance or step == steps:
            break
        goal = _next_goal(rows, target)
        f, _ = bisect(lambda f: table.predict(scaled(f)) <= goal * ref_predicted, 0.0, 1.0 / max(1e-9, min(base / hi)))
        asked = copy.copy(problem)  # the same problem, budgeted at the corrected goal
        asked.target = goal * ref_predicted / table.dense
        # one factor moves every group's channel block at once: fill the gap it leaves channel by channel
        new = fill_to_budget(asked, scaled(f), order=list(np.argsort(scaled(f) / hi)))
        if np.array_equal(new, counts):
            break  # the table cannot express a finer step from here
        counts = new
    # a noisy or unreachable fit may end farther off than an earlier step: keep the closest measured one
    best = min(rows, key=lambda r: abs(r["measured_ratio"] / target - 1))
    return Allocation.from_counts(s, best["counts"]), rows
