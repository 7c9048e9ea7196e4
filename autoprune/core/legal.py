"""The rules every allocator and the environment share: legal channel steps and budget bisection."""
from __future__ import annotations

from typing import Callable

import numpy as np

from autoprune.errors import AutopruneError


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
