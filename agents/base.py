"""The one interface every allocator implements: a ``PruningProblem`` in, an ``Allocation`` out."""
from __future__ import annotations

from typing import Protocol

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer


class Allocator(Protocol):
    """Decides how many channels each group keeps so that the problem's budget is met (within 1%)."""

    name: str

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        ...
