"""``uniform``: the same keep ratio in every group, solved for the budget by bisection."""
from __future__ import annotations

import numpy as np

from autoprune.allocation import Allocation
from autoprune.problem import PruningProblem, fill_to_budget


def uniform_counts(problem: PruningProblem, ratio: float) -> np.ndarray:
    s = problem.structure
    return np.array([s.snap(g, ratio * g.channels, problem.round_to) for g in s.groups], dtype=np.int64)


class UniformAllocator:
    name = "uniform"

    def allocate(self, problem: PruningProblem) -> Allocation:
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if problem.cost(uniform_counts(problem, mid)) <= problem.budget:
                lo = mid
            else:
                hi = mid
        counts = uniform_counts(problem, lo)
        # close the rounding gap, deepest groups first so the ratio stays as even as possible
        counts = fill_to_budget(problem, counts, order=list(np.argsort(counts / problem.structure.channels)))
        return Allocation.from_counts(problem.structure, counts)
