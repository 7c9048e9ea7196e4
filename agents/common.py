"""Small helpers the heuristic allocators share: criterion scores and the channels they keep."""
from __future__ import annotations

import numpy as np

from autoprune.core.criteria import group_scores
from autoprune.core.problem import PruningProblem


def criterion_scores(problem: PruningProblem, criterion: str | None = None) -> list[np.ndarray]:
    """Per-group channel scores under ``criterion`` (default: the problem's), cached on the structure."""
    scores = group_scores(problem.structure, criterion or problem.criterion, problem.calib_batches)
    return [t.detach().double().numpy() for t in scores]


def kept_mask(scores: np.ndarray, keep: int) -> np.ndarray:
    """Which channels a criterion keeps when a group keeps ``keep`` of them (the highest scores)."""
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:keep]] = True
    return mask
