"""Legal channel counts: the rules every allocator, the environment and the progressive driver share.

A group's kept-channel count is a multiple of its legal step (its conv groups and ``round_to``),
at least one step (or the whole group), at most the whole group. Ratios become counts here, and
budgets are met here (bisection on a scale, then channels given back one step at a time).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from autoprune.errors import AutopruneError

if TYPE_CHECKING:
    from autoprune.core.structure import ModelStructure, PrunableGroup


class BudgetProblem(Protocol):
    """What the budget rules read of a ``PruningProblem`` (a protocol: ``problem`` builds on this module)."""

    @property
    def structure(self) -> ModelStructure: ...

    @property
    def round_to(self) -> int: ...

    @property
    def budget(self) -> float: ...

    def cost(self, counts: Sequence[int] | np.ndarray) -> float: ...

    def min_counts(self) -> np.ndarray: ...

    def max_counts(self) -> np.ndarray: ...


def legal_step(ch_groups: int, round_to: int = 1) -> int:
    """Channel counts of a group must be multiples of this: its conv groups and ``round_to``."""
    if int(round_to) != round_to or round_to < 1:
        raise AutopruneError(f"--round-to {round_to} must be a positive integer (1 = any channel count)")
    return int(np.lcm(ch_groups, int(round_to)))


def bisect(holds: Callable[[float], bool], lo: float = 0.0, hi: float = 1.0, iters: int = 40) -> tuple[float, float]:
    """Shrink ``[lo, hi]`` onto the point where the monotone ``holds`` flips: ``holds`` stays true at
    the returned ``lo`` side (if it held there) and false at the ``hi`` side.

    Budget searches use it as "the largest scale whose allocation fits": ``holds = fits(scale)``,
    answer ``lo``; or, when fitting grows with the argument, ``holds = not fits``, answer ``hi``.
    """
    for _ in range(iters):
        mid = (lo + hi) / 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def min_count(group: PrunableGroup, round_to: int = 1) -> int:
    """The smallest legal channel count of ``group``: one step, or the whole group if it is smaller."""
    return min(group.channels, legal_step(group.ch_groups, round_to))


def snap_count(group: PrunableGroup, count: float, round_to: int = 1) -> int:
    """Nearest legal channel count: at least one channel, a multiple of the conv groups / ``round_to``."""
    step = legal_step(group.ch_groups, round_to)
    k = int(round(count / step)) * step
    return int(min(group.channels, max(min_count(group, round_to), k)))


def count_steps(problem: BudgetProblem) -> np.ndarray:
    """The unit each group's channel count moves in (conv groups and ``round_to``)."""
    return np.array([legal_step(g.ch_groups, problem.round_to) for g in problem.structure.groups])


def uniform_counts(problem: BudgetProblem, ratio: float) -> np.ndarray:
    """Keep ``ratio`` of every group's channels (snapped to legal counts)."""
    s = problem.structure
    return np.array([snap_count(g, ratio * g.channels, problem.round_to) for g in s.groups], dtype=np.int64)


def floor_counts(problem: BudgetProblem, counts: np.ndarray) -> np.ndarray:
    """Round keep counts down to legal values inside the problem's [min, max] keep bounds."""
    step = count_steps(problem)
    snapped = (np.floor(np.asarray(counts, dtype=np.float64) / step) * step).astype(np.int64)
    return np.clip(snapped, problem.min_counts(), problem.max_counts())


def fill_to_budget(problem: BudgetProblem, counts: np.ndarray, order: Sequence[int] | None = None,
                   budget: float | None = None) -> np.ndarray:
    """Greedily add channels back (in ``order``, default round-robin) while the cost stays within
    ``budget`` (default: the problem's).

    Allocators that round down land a little under the budget; this closes the gap so every
    allocator is compared at the same cost (within one channel).
    """
    budget = problem.budget if budget is None else budget
    counts = counts.copy()
    hi = problem.max_counts()
    groups = list(order) if order is not None else list(range(len(counts)))
    step = [legal_step(g.ch_groups, problem.round_to) for g in problem.structure.groups]
    improved = True
    while improved:
        improved = False
        for i in groups:
            if counts[i] + step[i] <= hi[i]:
                counts[i] += step[i]
                if problem.cost(counts) <= budget:
                    improved = True
                else:
                    counts[i] -= step[i]
    return counts


def fill_in_order(counts: np.ndarray, steps: Sequence[int], ceiling: np.ndarray, order: Sequence[int],
                  fits: Callable[[np.ndarray], bool]) -> np.ndarray:
    """Give channels back one group at a time: each group in ``order`` grows by its step until the
    next step would pass ``ceiling`` or break ``fits``, then the next group; one pass, in place.

    Not ``fill_to_budget``: that one goes round-robin, one step per group per pass, until no group
    can grow, so the gap is spread thinly. This one fills the first groups of ``order`` before
    touching the others: the progressive driver gives back to the groups its rounding cut deepest,
    up to their current widths, with no ``PruningProblem`` (the budget is the original model's MACs).
    """
    for i in order:
        while counts[i] + steps[i] <= ceiling[i]:
            counts[i] += steps[i]
            if not fits(counts):
                counts[i] -= steps[i]
                break
    return counts
