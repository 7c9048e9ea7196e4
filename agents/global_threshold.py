"""``global``: one threshold over channel scores of all groups (normalised per group, floored per group).

Raw scores are not comparable across layers (filter norms grow with fan-in, so a global L1
threshold can empty a layer); LAMP (Lee et al. 2021) or mean normalisation makes them so. The
problem's ``min_keep`` floor still guarantees that no group is emptied.
"""
from __future__ import annotations

import numpy as np

from autoprune.agents.common import criterion_scores
from autoprune.core.allocation import Allocation
from autoprune.core.counts import count_steps
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.errors import AutopruneError


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """``lamp``: score / sum of the scores not below it (the best channel gets 1); ``mean``; ``none``."""
    if how == "none":
        return scores
    if how == "mean":
        return scores / max(scores.mean(), 1e-12)
    if how == "lamp":
        order = np.argsort(scores, kind="stable")
        tail = np.cumsum(scores[order][::-1])[::-1]  # sum of this and every larger score
        out = np.empty_like(scores)
        out[order] = scores[order] / np.maximum(tail, 1e-12)
        return out
    raise AutopruneError(f"unknown normalisation '{how}' for the global allocator: use lamp, mean or none")


class GlobalThresholdAllocator:
    name = "global"
    seeded = False  # deterministic: one allocation serves every seed

    def __init__(self, normalize: str = "lamp"):
        normalise(np.ones(2), normalize)  # validate early
        self.normalize = normalize

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        """Lower the threshold channel by channel (best normalised score first) while the budget holds.

        Up to the first channel that does not fit this is exactly a global threshold; channels
        after it still join if they fit (a cheaper group), which closes the rounding gap.
        """
        scores = [np.sort(normalise(s, self.normalize))[::-1] for s in criterion_scores(problem)]
        counts, hi, unit = problem.min_counts(), problem.max_counts(), count_steps(problem)
        ranked = sorted(((float(v), g, j) for g, s in enumerate(scores) for j, v in enumerate(s)), key=lambda e: -e[0])
        for _, g, j in ranked:
            if j < counts[g] or counts[g] + unit[g] > hi[g]:
                continue
            counts[g] += unit[g]
            if problem.cost(counts) > problem.budget:
                counts[g] -= unit[g]
        return Allocation.from_counts(problem.structure, counts)
