"""``greedy``: NetAdapt-style (Yang et al. 2018) -- shrink one group per iteration, the best-scoring one.

Each iteration asks every group for a proposal that removes about ``step`` x the dense cost by
shrinking that group alone, scores each proposal with the adaptive-BN evaluator and keeps the
best, until the budget is met. Costs groups x iterations evaluations (ResNet-20 at 50% MACs
with step 0.05: ~90).
"""
from __future__ import annotations

import numpy as np

from autoprune.core.allocation import Allocation
from autoprune.core.counts import count_steps, fill_to_budget
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer, require_scorer


class GreedyAllocator:
    name = "greedy"
    seeded = False

    def __init__(self, step: float = 0.05):
        self.step = float(step)
        self.history: list[dict] = []

    def _proposal(self, problem: PruningProblem, counts: np.ndarray, i: int, goal: float,
                  lo: np.ndarray, unit: np.ndarray) -> np.ndarray | None:
        """The fewest channels group ``i`` can lose to bring the cost to ``goal`` (or its floor)."""
        if counts[i] - unit[i] < lo[i]:
            return None
        trial = counts.copy()
        for k in range(int(counts[i]) - int(unit[i]), int(lo[i]) - 1, -int(unit[i])):
            trial[i] = k
            if problem.cost(trial) <= goal:
                break
        return trial

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        scorer = require_scorer(scorer, self.name)
        s = problem.structure
        lo, unit = problem.min_counts(), count_steps(problem)
        counts = problem.max_counts()
        self.history = []
        while problem.cost(counts) > problem.budget:
            goal = max(problem.budget, problem.cost(counts) - self.step * problem.dense_cost)
            proposals = [p for i in range(len(counts)) if (p := self._proposal(problem, counts, i, goal, lo, unit)) is not None]
            if not proposals:  # every group at its floor (cannot happen for a valid problem)
                break
            scores = scorer.score_many([Allocation.from_counts(s, p) for p in proposals])  # in parallel with a pool
            scored = [(sc.value, -problem.cost(p), p) for sc, p in zip(scores, proposals)]
            acc, _, counts = max(scored, key=lambda t: (t[0], t[1]))
            self.history.append({"counts": counts.tolist(), "cost": problem.cost(counts), "accuracy": acc})
        counts = fill_to_budget(problem, counts)
        return Allocation.from_counts(s, counts)
