"""``PruningProblem``: one model and one budget -- the value every allocator is handed."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.counts import bisect, fill_to_budget, legal_step, snap_count, uniform_counts
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError

METRICS = ("macs", "params", "latency")


class LatencyModel(Protocol):
    """Predicted seconds of a pruned model from its keep counts (``autoprune.deploy.latency.LatencyTable``)."""

    dense: float

    def predict(self, counts: Sequence[int] | np.ndarray) -> float:
        ...


@dataclass(frozen=True, eq=False)
class PruningProblem:
    """Prune ``structure.model`` to ``target`` x its dense cost (``metric``: "macs", "params", or
    "latency" predicted by ``latency``, a lookup table with ``predict(counts)`` and ``dense``,
    e.g. ``autoprune.deploy.latency.latency_table``).

    A value: what to prune and to what budget, never who scores it (``autoprune.core.scoring.Scorer``).
    Channels are chosen by ``criterion`` (on ``calib_batches`` for data-dependent criteria); keep
    ratios per group are bounded to [``min_keep``, ``max_keep``]. ``target_range``: a
    budget-conditioned search samples each episode's target from it (``with_target``).
    """

    structure: ModelStructure
    target: float
    metric: str = "macs"
    criterion: str = "l1"
    calib_batches: Sequence[torch.Tensor] | None = None
    min_keep: float = 0.2
    max_keep: float = 1.0
    round_to: int = 1
    latency: LatencyModel | None = None  # for metric="latency"
    target_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise AutopruneError(f"unknown budget metric '{self.metric}': use {', '.join(METRICS)}")
        if self.metric == "latency" and self.latency is None:
            raise AutopruneError("a latency target needs a latency table (autoprune.deploy.latency.latency_table)")
        if not 0.0 < self.target <= 1.0:
            raise AutopruneError(f"target {self.target} is outside (0, 1]: it is the fraction of {self.metric} to keep")
        legal_step(1, self.round_to)  # rejects --round-to 0 with a one-line error
        if not 0.0 < self.min_keep <= self.max_keep <= 1.0:
            raise AutopruneError(f"keep bounds [{self.min_keep}, {self.max_keep}] must satisfy 0 < min <= max <= 1")
        floor = self.cost(self.min_counts()) / self.dense_cost
        if floor > self.target + 1e-9:
            raise AutopruneError(
                f"target {self.target:.3f} is below what the bounds allow ({floor:.3f} of {self.metric} "
                f"with every group at min_keep={self.min_keep}): lower --min-keep or raise the target")

    # -- costs -------------------------------------------------------------------------------
    def cost(self, counts: Sequence[int] | np.ndarray) -> float:
        if self.metric == "latency":
            return self.latency.predict(counts)
        return self.structure.macs(counts) if self.metric == "macs" else self.structure.params(counts)

    @property
    def dense_cost(self) -> float:
        if self.metric == "latency":
            return self.latency.dense
        return self.structure.dense_macs if self.metric == "macs" else self.structure.dense_params

    @property
    def budget(self) -> float:
        return self.target * self.dense_cost

    def min_counts(self) -> np.ndarray:
        """Every group's legal count at the ``min_keep`` ratio (at least one channel)."""
        return np.array([snap_count(g, max(self.min_keep * g.channels, 1), self.round_to)
                         for g in self.structure.groups], dtype=np.int64)

    def max_counts(self) -> np.ndarray:
        """Every group's legal count at the ``max_keep`` ratio."""
        return uniform_counts(self, self.max_keep)

    def feasible(self, allocation: Allocation, tolerance: float = 0.01) -> bool:
        """Within ``tolerance`` below the budget and not above it."""
        c = self.cost(allocation.counts(self.structure))
        slack = 0.5 if self.metric != "latency" else 1e-9 * self.budget  # MACs/params are integers, seconds are not
        return self.budget * (1 - tolerance) <= c <= self.budget + slack

    # -- scoring -----------------------------------------------------------------------------
    def pruned_model(self, allocation: Allocation) -> nn.Module:
        return prune(self.structure, allocation, self.criterion, self.calib_batches)

    def key(self, allocation: Allocation) -> tuple[int, ...]:
        """An allocation's keep counts: what identifies a candidate (score caches are keyed by it)."""
        return tuple(int(k) for k in allocation.counts(self.structure))

    def with_target(self, target: float) -> "PruningProblem":
        """The same problem at another budget (budget-conditioned episodes, reports at several targets)."""
        return replace(self, target=target)


def uniform_allocation(problem: PruningProblem) -> Allocation:
    """The same keep ratio in every group, solved for the budget by bisection; the rounding gap is
    closed deepest-cut groups first so the ratio stays as even as possible."""
    ratio, _ = bisect(lambda r: problem.cost(uniform_counts(problem, r)) <= problem.budget)
    counts = uniform_counts(problem, ratio)
    counts = fill_to_budget(problem, counts, order=list(np.argsort(counts / problem.structure.channels)))
    return Allocation.from_counts(problem.structure, counts)
