"""``layer-stats``: cut groups that are unimportant *relative to the others* more, in small steps.

A group's importance is a statistic of the channels it still keeps (default: mean |BN gamma|,
which BatchNorm makes comparable across layers; filter norms are divided by the filter's
weight count, or its square root for L2, for the same reason). Each of ``steps`` steps removes
an equal share of the MACs still to go, spread over groups in proportion to
(relative importance) ** -``power``; re-scoring after every step lets a group that has lost its
weak channels look stronger and be spared. No evaluator calls: the cheapest data-aware heuristic.
"""
from __future__ import annotations

import numpy as np

from autoprune.agents.common import criterion_scores, kept_mask
from autoprune.core.allocation import Allocation
from autoprune.core.counts import bisect, count_steps, fill_to_budget, floor_counts
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer


class LayerStatsAllocator:
    name = "layer-stats"
    seeded = False

    def __init__(self, statistic: str = "bn", steps: int = 10, power: float = 1.0):
        self.statistic = statistic
        self.steps = max(1, int(steps))
        self.power = float(power)
        self.history: list[list[int]] = []

    def _statistic(self, problem: PruningProblem) -> list[np.ndarray]:
        stats = criterion_scores(problem, self.statistic)
        if self.statistic in ("l1", "l2"):
            fan_in = [problem.structure.model.get_submodule(g.name).weight[0].numel() for g in problem.structure.groups]
            stats = [s / (f if self.statistic == "l1" else np.sqrt(f)) for s, f in zip(stats, fan_in)]
        return stats

    def importance(self, problem: PruningProblem, counts: np.ndarray, order_scores: list[np.ndarray],
                   stats: list[np.ndarray]) -> np.ndarray:
        """Each group's statistic over the channels it keeps, relative to the mean over groups."""
        imp = np.array([np.abs(st[kept_mask(sc, int(k))]).mean() for st, sc, k in zip(stats, order_scores, counts)])
        return imp / max(imp.mean(), 1e-12)

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        order_scores = criterion_scores(problem)
        stats = self._statistic(problem)
        lo, counts, unit = problem.min_counts(), problem.max_counts(), count_steps(problem)
        self.history = [counts.tolist()]
        for t in range(self.steps):
            excess = problem.cost(counts) - problem.budget
            if excess <= 0:
                break
            goal = problem.cost(counts) - excess / (self.steps - t)
            weight = np.maximum(self.importance(problem, counts, order_scores, stats), 1e-6) ** -self.power
            room = counts - lo

            def cut(scale: float) -> np.ndarray:
                # round the cut (not the count down): flooring would take a channel from every group each step
                return floor_counts(problem, counts - np.round(np.minimum(1.0, scale * weight) * room / unit) * unit)

            # the largest cut's scale is 1 / weight.min(): every group down to its floor
            counts = cut(bisect(lambda x: problem.cost(cut(x)) > goal, 0.0, 1.0 / weight.min(), iters=50)[1])
            self.history.append(counts.tolist())
        final = self.importance(problem, counts, order_scores, stats)
        counts = fill_to_budget(problem, counts, order=list(np.argsort(-final)))
        return Allocation.from_counts(problem.structure, counts)
