"""Small helpers the heuristic allocators share: criterion scores and legal channel counts."""
from __future__ import annotations

import numpy as np

from autoprune.core.criteria import group_scores
from autoprune.core.legal import legal_step
from autoprune.core.problem import PruningProblem


def criterion_scores(problem: PruningProblem, criterion: str | None = None) -> list[np.ndarray]:
    """Per-group channel scores under ``criterion`` (default: the problem's), cached on the structure."""
    scores = group_scores(problem.structure, criterion or problem.criterion, problem.calib_batches)
    return [t.detach().double().numpy() for t in scores]


def count_steps(problem: PruningProblem) -> np.ndarray:
    """The unit each group's channel count moves in (conv groups and ``round_to``)."""
    return np.array([legal_step(g.ch_groups, problem.round_to) for g in problem.structure.groups])


def floor_counts(problem: PruningProblem, counts: np.ndarray) -> np.ndarray:
    """Round keep counts down to legal values inside the problem's [min, max] keep bounds."""
    step = count_steps(problem)
    snapped = (np.floor(np.asarray(counts, dtype=np.float64) / step) * step).astype(np.int64)
    return np.clip(snapped, problem.min_counts(), problem.max_counts())


def kept_mask(scores: np.ndarray, keep: int) -> np.ndarray:
    """Which channels a criterion keeps when a group keeps ``keep`` of them (the highest scores)."""
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:keep]] = True
    return mask
