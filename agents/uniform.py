"""``uniform``: the same keep ratio in every group (the baseline every budget is compared with)."""
from __future__ import annotations

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import Scorer


class UniformAllocator:
    name = "uniform"
    seeded = False

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        return uniform_allocation(problem)
