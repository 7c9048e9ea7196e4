"""``PruningProblem``: one model, one budget, one scorer -- what every allocator is handed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.legal import bisect, legal_step
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class Score:
    """An adaptive-BN score: accuracy on ``images`` held-out images; ``partial`` when stopped early."""

    accuracy: float
    images: int
    partial: bool = False


METRICS = ("macs", "params", "latency")


@dataclass
class PruningProblem:
    """Prune ``structure.model`` to ``target`` x its dense cost (``metric``: "macs", "params", or
    "latency" predicted by ``latency``, a lookup table with ``predict(counts)`` and ``dense``,
    e.g. ``autoprune.deploy.latency.latency_table``).

    ``evaluator`` scores a pruned copy (adaptive-BN accuracy on the held-out split); ``score``
    prunes with ``criterion`` and caches by allocation, so no allocation is evaluated twice.
    Keep ratios per group are bounded to [``min_keep``, ``max_keep``].

    ``early_stop`` (searches only): a candidate is scored against the best full score so far and
    stopped once it surely cannot beat it (``AdaptiveBNEvaluator.score``); its partial estimate is
    returned and flagged in ``last_score``, and never becomes the best (it is below it by design).
    """

    structure: ModelStructure
    target: float
    metric: str = "macs"
    evaluator: Callable[[nn.Module], float] | None = None
    criterion: str = "l1"
    calib_batches: Sequence[torch.Tensor] | None = None
    min_keep: float = 0.2
    max_keep: float = 1.0
    round_to: int = 1
    early_stop: bool = False
    latency: Any = None  # LatencyTable for metric="latency"
    # budget-conditioned search: each episode of ChannelPruningEnv samples ``target`` from this range
    target_range: tuple[float, float] | None = None
    # parallel scoring (e.g. ``autoprune.train.ray_pool.RayScoringPool``): ``score(keys, must_beat)``
    # returns one Score per keep-count tuple; ``score_many`` sends it every uncached candidate at once
    pool: Any = None
    _cache: dict[tuple[int, ...], Score] = field(default_factory=dict, repr=False)
    best_full: float = field(default=-float("inf"), repr=False)
    last_score: Score | None = field(default=None, repr=False)

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
        return np.array([self.structure.snap(g, max(self.min_keep * g.channels, 1), self.round_to)
                         for g in self.structure.groups], dtype=np.int64)

    def max_counts(self) -> np.ndarray:
        return np.array([self.structure.snap(g, self.max_keep * g.channels, self.round_to)
                         for g in self.structure.groups], dtype=np.int64)

    def feasible(self, allocation: Allocation, tolerance: float = 0.01) -> bool:
        """Within ``tolerance`` below the budget and not above it."""
        c = self.cost(allocation.counts(self.structure))
        slack = 0.5 if self.metric != "latency" else 1e-9 * self.budget  # MACs/params are integers, seconds are not
        return self.budget * (1 - tolerance) <= c <= self.budget + slack

    # -- scoring -----------------------------------------------------------------------------
    def pruned_model(self, allocation: Allocation) -> nn.Module:
        return prune(self.structure, allocation, self.criterion, self.calib_batches)

    def cache_state(self) -> dict[tuple[int, ...], Score]:
        """The scores so far (kept in search checkpoints so a resumed search re-scores nothing)."""
        return dict(self._cache)

    def restore_cache(self, entries: dict[tuple[int, ...], Score | float]) -> None:
        """Reload ``cache_state()`` output (plain floats from older checkpoints are full scores)."""
        for key, value in entries.items():
            score = value if isinstance(value, Score) else Score(float(value), 0)
            self._cache[key] = score
            if not score.partial:
                self.best_full = max(self.best_full, score.accuracy)

    def key(self, allocation: Allocation) -> tuple[int, ...]:
        """The score cache's key: the allocation's keep counts."""
        return tuple(int(k) for k in allocation.counts(self.structure))

    def _needs_scoring(self, key: tuple[int, ...]) -> bool:
        cached = self._cache.get(key)
        return cached is None or (cached.partial and not self.early_stop)

    def _must_beat(self) -> float | None:
        return self.best_full if self.early_stop and self.best_full > -float("inf") else None

    def _store(self, key: tuple[int, ...], score: Score) -> Score:
        self._cache[key] = score
        if not score.partial:
            self.best_full = max(self.best_full, score.accuracy)
        return score

    def score(self, allocation: Allocation) -> float:
        """Adaptive-BN accuracy of ``allocation`` (cached); see ``last_score`` for how many images."""
        if self.evaluator is None:
            raise AutopruneError("this problem has no evaluator: pass held-out data")
        key = self.key(allocation)
        if self._needs_scoring(key):
            model = self.pruned_model(allocation)
            if hasattr(self.evaluator, "score"):
                self._store(key, self.evaluator.score(model, self._must_beat()))
            else:  # any callable scorer: full scores, image count unknown
                self._store(key, Score(float(self.evaluator(model)), 0))
        self.last_score = self._cache[key]
        return self.last_score.accuracy

    def score_many(self, allocations: Sequence[Allocation]) -> list[Score]:
        """Score several allocations, in parallel on ``pool`` when there is one (same cache as ``score``).

        Early stopping compares every candidate of the batch with the best full score known when the
        batch is sent, so a batch may stop fewer candidates early than one-by-one scoring would.
        """
        keys = [self.key(a) for a in allocations]
        todo = list(dict.fromkeys(k for k in keys if self._needs_scoring(k)))
        if todo and self.pool is not None:
            for key, score in zip(todo, self.pool.score(todo, self._must_beat())):
                self._store(key, score)
        else:
            for key, alloc in zip(keys, allocations):
                if key in todo:
                    self.score(alloc)
        return [self._cache[k] for k in keys]


def fill_to_budget(problem: PruningProblem, counts: np.ndarray, order: Sequence[int] | None = None) -> np.ndarray:
    """Greedily add channels back (in ``order``, default round-robin) while the cost stays within budget.

    Allocators that round down land a little under the budget; this closes the gap so every
    allocator is compared at the same cost (within one channel).
    """
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
                if problem.cost(counts) <= problem.budget:
                    improved = True
                else:
                    counts[i] -= step[i]
    return counts


def uniform_counts(problem: PruningProblem, ratio: float) -> np.ndarray:
    """Keep ``ratio`` of every group's channels (snapped to legal counts)."""
    s = problem.structure
    return np.array([s.snap(g, ratio * g.channels, problem.round_to) for g in s.groups], dtype=np.int64)


def uniform_allocation(problem: PruningProblem) -> Allocation:
    """The same keep ratio in every group, solved for the budget by bisection; the rounding gap is
    closed deepest-cut groups first so the ratio stays as even as possible."""
    ratio, _ = bisect(lambda r: problem.cost(uniform_counts(problem, r)) <= problem.budget)
    counts = uniform_counts(problem, ratio)
    counts = fill_to_budget(problem, counts, order=list(np.argsort(counts / problem.structure.channels)))
    return Allocation.from_counts(problem.structure, counts)
