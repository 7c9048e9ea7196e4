"""``random``: EagleEye's search -- score N random feasible allocations, keep the best.

A sample draws a keep ratio per group uniformly in [min_keep, max_keep], scales the whole
vector so the cost meets the budget (bisection), then fills the rounding gap in a random group
order: every sample lands within 1% below the budget, and no group order is favoured.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from autoprune.core.allocation import Allocation
from autoprune.core.legal import bisect
from autoprune.core.problem import PruningProblem, Score, fill_to_budget
from autoprune.errors import AutopruneError


def random_feasible_counts(problem: PruningProblem, rng: np.random.Generator) -> np.ndarray:
    """One random allocation (keep counts) at the problem's budget."""
    s = problem.structure
    lo, hi = problem.min_counts(), problem.max_counts()
    ratios = rng.uniform(problem.min_keep, problem.max_keep, size=len(s.groups))

    def counts_at(scale: float) -> np.ndarray:
        raw = [s.snap(g, scale * r * g.channels, problem.round_to) for g, r in zip(s.groups, ratios)]
        return np.clip(np.array(raw, dtype=np.int64), lo, hi)

    scale, _ = bisect(lambda x: problem.cost(counts_at(x)) <= problem.budget, 0.0, 1.0 / max(ratios.min(), 1e-6))
    return fill_to_budget(problem, counts_at(scale), order=list(rng.permutation(len(s.groups))))


class RandomSearch:
    """Best of ``samples`` random feasible allocations by ``problem.score``.

    Candidates are drawn one after another from the seed, then scored ``batch`` at a time
    (default: one per worker of ``problem.pool``) and compared in draw order, so the candidates
    and the best allocation are the same whatever the number of workers. ``start`` skips the
    callback for candidates a resumed run has already logged (their scores come from the cache).
    """

    name = "random"

    def __init__(self, samples: int = 60, seed: int = 0,
                 on_sample: Callable[[int, Allocation, Score], None] | None = None, batch: int | None = None):
        if samples < 1:
            raise AutopruneError(f"random search needs at least one sample, got {samples}")
        self.samples, self.seed, self.on_sample, self.batch = samples, seed, on_sample, batch
        self.history: list[tuple[Allocation, float]] = []

    def candidates(self, problem: PruningProblem) -> list[Allocation]:
        rng = np.random.default_rng(self.seed)
        groups = problem.structure.groups
        return [Allocation({g.name: int(k) for g, k in zip(groups, random_feasible_counts(problem, rng))})
                for _ in range(self.samples)]

    def allocate(self, problem: PruningProblem, start: int = 0) -> Allocation:
        candidates = self.candidates(problem)
        batch = self.batch or (problem.pool.workers if problem.pool is not None else 1)
        best: tuple[float, Allocation] | None = None
        self.history = []
        for first in range(0, self.samples, batch):
            chunk = candidates[first:first + batch]
            for i, (alloc, score) in enumerate(zip(chunk, problem.score_many(chunk)), start=first):
                self.history.append((alloc, score.accuracy))
                if self.on_sample is not None and i >= start:
                    self.on_sample(i, alloc, score)
                if best is None or score.accuracy > best[0]:
                    best = (score.accuracy, alloc)
        assert best is not None
        return best[1]
