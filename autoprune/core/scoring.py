"""Scoring candidates: a ``Score`` record, the ``Evaluator`` protocol, and the ``Scorer`` session.

A ``PruningProblem`` is a value (what to prune, to what budget); a ``Scorer`` is the session that
scores allocations of it: it prunes a copy, hands it to an ``Evaluator`` (adaptive BN, a short
fine-tune, ...), caches the result by keep counts, and optionally sends candidates to a pool of
workers or stops a hopeless candidate early. A new score is a new ``Evaluator``; everything else
(cache, pool, early stop, resume) comes with the ``Scorer``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class Score:
    """One candidate's score: ``value`` (higher is better; top-1 for ``adaptive-bn``) on ``images``
    held-out images, ``partial`` when stopped early, ``seconds`` spent computing it."""

    value: float
    images: int = 0
    partial: bool = False
    kind: str = "adaptive-bn"
    seconds: float = 0.0


def brief(value: float, kind: str) -> str:
    """A score as a progress bar shows it: top-1 in %, a ``:loss`` or ``:kd`` score as the size of the loss."""
    metric = kind.rsplit(":", 1)[-1]
    return f"{-value:.4f} {metric}" if metric in ("loss", "kd") else f"{100 * value:.2f}%"


class Evaluator(Protocol):
    """What a score is: bring a pruned copy to the scored state (``prepare``), then score it."""

    label: str  # how logs and reports name it, e.g. "adaptive-BN"
    kind: str  # the --score value, e.g. "adaptive-bn"

    def prepare(self, model: nn.Module) -> nn.Module:
        """Bring ``model`` (in place) to the state that is scored, which is also what a search saves."""
        ...

    def score(self, model: nn.Module, must_beat: float | None = None) -> Score:
        """Score ``model`` (modified in place); with ``must_beat`` it may stop early, flagged ``partial``."""
        ...


class FunctionEvaluator:
    """Any ``model -> float`` as an ``Evaluator`` (no preparation, no early stop, image count unknown)."""

    def __init__(self, fn: Callable[[nn.Module], float], label: str = "custom", kind: str = "custom"):
        self.fn, self.label, self.kind = fn, label, kind

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def score(self, model: nn.Module, must_beat: float | None = None) -> Score:
        return Score(float(self.fn(model)), kind=self.kind)


class ScoringPool(Protocol):
    """Scores keep-count tuples elsewhere (e.g. ``autoprune.train.ray_pool.RayScoringPool``)."""

    workers: int

    def score(self, keys: Sequence[tuple[int, ...]], must_beat: float | None = None) -> list[Score]:
        ...

    def close(self) -> None:
        ...


class Scorer:
    """Scores allocations of ``problem`` with ``evaluator``; no allocation is scored twice.

    ``early_stop`` (searches): a candidate is scored against the best full score so far and stopped
    once it surely cannot beat it; its partial estimate is returned flagged and never becomes the
    best (it is below it by design). ``pool``: ``score_many`` sends every uncached candidate to it.
    The cache is keyed by keep counts, so one scorer serves the problem at any target.
    """

    def __init__(self, problem: PruningProblem, evaluator: Evaluator, *, pool: ScoringPool | None = None,
                 early_stop: bool = False):
        self.problem, self.evaluator, self.pool, self.early_stop = problem, evaluator, pool, early_stop
        self._cache: dict[tuple[int, ...], Score] = {}
        self.requested: list[tuple[int, ...]] = []  # every key asked for, in order (what an allocator looked at)
        self.best_full = -float("inf")
        self.seconds = 0.0  # spent scoring in this process

    @property
    def label(self) -> str:
        return self.evaluator.label

    @property
    def workers(self) -> int:
        return self.pool.workers if self.pool is not None else 1

    @contextmanager
    def outside_search(self) -> Iterator["Scorer"]:
        """Scores that are not candidates (a sensitivity sweep, the dense model): full scores, never the
        best that early stopping compares candidates with."""
        early, best = self.early_stop, self.best_full
        self.early_stop = False
        try:
            yield self
        finally:
            self.early_stop, self.best_full = early, best

    def full_scores(self) -> "Scorer":
        """From here on every figure is a full score (no early stop, no pool): for final reports."""
        self.early_stop, self.pool = False, None
        return self

    # -- cache -------------------------------------------------------------------------------
    def key(self, allocation: Allocation) -> tuple[int, ...]:
        return self.problem.key(allocation)

    def cache_state(self) -> dict[tuple[int, ...], Score]:
        """The scores so far (kept in search checkpoints so a resumed search re-scores nothing)."""
        return dict(self._cache)

    def restore_cache(self, entries: dict[tuple[int, ...], Score]) -> None:
        for key, score in entries.items():
            self._store(key, score)

    def _needs_scoring(self, key: tuple[int, ...]) -> bool:
        cached = self._cache.get(key)
        return cached is None or (cached.partial and not self.early_stop)

    def _must_beat(self) -> float | None:
        return self.best_full if self.early_stop and self.best_full > -float("inf") else None

    def _store(self, key: tuple[int, ...], score: Score) -> Score:
        self._cache[key] = score
        if not score.partial:
            self.best_full = max(self.best_full, score.value)
        return score

    # -- scoring -----------------------------------------------------------------------------
    def score(self, allocation: Allocation) -> Score:
        """``allocation``'s score (cached)."""
        key = self.key(allocation)
        self.requested.append(key)
        if self._needs_scoring(key):
            t0 = time.perf_counter()
            result = self.evaluator.score(self.problem.pruned_model(allocation), self._must_beat())
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            self._store(key, Score(result.value, result.images, result.partial, self.evaluator.kind, seconds))
        return self._cache[key]

    def value(self, allocation: Allocation) -> float:
        return self.score(allocation).value

    def score_many(self, allocations: Sequence[Allocation]) -> list[Score]:
        """Several allocations, in parallel on the pool when there is one (same cache as ``score``).

        Early stopping compares every candidate of a pooled batch with the best full score known when
        the batch is sent, so a batch may stop fewer candidates early than one-by-one scoring would.
        """
        keys = [self.key(a) for a in allocations]
        self.requested += keys
        todo = list(dict.fromkeys(k for k in keys if self._needs_scoring(k)))
        if todo and self.pool is not None:
            for key, score in zip(todo, self.pool.score(todo, self._must_beat())):
                self._store(key, Score(score.value, score.images, score.partial, self.evaluator.kind, score.seconds))
        else:
            for key, alloc in zip(keys, allocations):
                if key in todo:
                    self.score(alloc)
        return [self._cache[k] for k in keys]

    def scored_model(self, allocation: Allocation) -> nn.Module:
        """A pruned copy in the state it was scored in (e.g. BN recalibrated): what a run saves."""
        return self.evaluator.prepare(self.problem.pruned_model(allocation))


def require_scorer(scorer: Scorer | None, who: str) -> Scorer:
    """The allocators that score candidates need a scorer: one line when there is none."""
    if scorer is None:
        raise AutopruneError(f"the {who} allocator scores candidates: give it held-out data (a Scorer)")
    return scorer
