"""``allocation:PATH``: a budget decided earlier (e.g. a search's ``best_allocation.json``), checked against the problem."""
from __future__ import annotations

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.errors import AutopruneError


class SavedAllocation:
    """Returns the allocation stored in ``path`` if it fits the problem's model and budget (within 1% below)."""

    name = "allocation"
    seeded = False

    def __init__(self, path: str):
        self.path = path

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        alloc = Allocation.load(self.path, problem.structure)
        ratio = problem.cost(alloc.counts(problem.structure)) / problem.dense_cost
        if not problem.feasible(alloc):
            raise AutopruneError(f"allocation '{self.path}' keeps {ratio:.3f} of {problem.metric}, not "
                                 f"{problem.target:g} (within 1% below): it was made for another target")
        return alloc
