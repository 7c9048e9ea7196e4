"""The table predicts, the device decides: re-scale an allocation until its measured latency fits."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.deploy import timing
from autoprune.train.precision import Precision

if TYPE_CHECKING:
    from autoprune.core.allocation import Allocation
    from autoprune.core.problem import PruningProblem


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


def fit_measured(problem: PruningProblem, allocation: Allocation, precision: Precision | str = "fp32",
                 tolerance: float = 0.05, steps: int = 4, min_run_time: float = 0.5, rounds: int = 10,
                 reference: tuple[nn.Module, Sequence[int]] | None = None,
                 target: float | None = None) -> tuple[Allocation, list[dict]]:
    """The table predicts, the device decides: time ``allocation``'s pruned model against the dense
    one (``paired_ratio``) and, while the measured ratio is more than ``tolerance`` (relative) off the
    problem's latency target, ask the table for a corrected predicted ratio (``_next_goal``) with
    every group's count scaled by one factor -- the allocation's shape kept -- and measure again.
    NetAdapt likewise measures every proposal instead of trusting the table. Returns (the measured
    allocation closest to the target, one row per measurement; ``dense_seconds`` is the reference's).

    ``reference`` = (a pruned model, its counts) times against that model instead of the dense one,
    ``target`` then relative to it (1.0: as fast as it): two allocations brought to equal measured speed."""
    from autoprune.core.allocation import Allocation
    from autoprune.core.counts import bisect, fill_to_budget, snap_count

    s, table = problem.structure, problem.latency
    target = problem.target if target is None else target
    ref_model, ref_predicted = (s.model, table.dense) if reference is None else (reference[0], table.predict(reference[1]))
    x = torch.randn(table.key["batch_size"], *table.key["input_shape"], device=next(s.model.parameters()).device)
    base = np.asarray(allocation.counts(s), dtype=np.float64)
    lo, hi = problem.min_counts(), problem.max_counts()

    def scaled(f: float) -> np.ndarray:
        return np.clip([snap_count(g, f * k, problem.round_to) for g, k in zip(s.groups, base)], lo, hi)

    counts, goal, rows = np.asarray(allocation.counts(s)), target, []
    for step in range(steps + 1):
        remove = [list(range(g.channels - int(k))) for g, k in zip(s.groups, counts)]
        ratio, seconds, dense = timing.paired_ratio(s.prune_copy(remove), ref_model, x, precision, min_run_time, rounds)
        rows.append({"step": step, "asked_ratio": goal, "predicted_ratio": table.predict(counts) / ref_predicted,
                     "measured_ratio": ratio, "measured_seconds": seconds, "dense_seconds": dense,
                     "counts": [int(k) for k in counts]})
        if abs(ratio / target - 1) <= tolerance or step == steps:
            break
        goal = _next_goal(rows, target)
        f, _ = bisect(lambda f: table.predict(scaled(f)) <= goal * ref_predicted, 0.0, 1.0 / max(1e-9, min(base / hi)))
        # one factor moves every group's channel block at once: fill the gap it leaves channel by channel,
        # up to the corrected goal
        new = fill_to_budget(problem, scaled(f), order=list(np.argsort(scaled(f) / hi)),
                             budget=goal * ref_predicted)
        if np.array_equal(new, counts):
            break  # the table cannot express a finer step from here
        counts = new
    # a noisy or unreachable fit may end farther off than an earlier step: keep the closest measured one
    best = min(rows, key=lambda r: abs(r["measured_ratio"] / target - 1))
    return Allocation.from_counts(s, best["counts"]), rows
