"""Pruning schedules: how much of the final cut is reached at each training step.

A schedule is treated like a learning-rate schedule. Pruning happens at ``n`` evenly spaced
events between ``start`` (exclusive: Zhu & Gupta's t0, where s_t = s_i) and ``end`` (inclusive,
the last cut), ``frequency`` steps apart; event k (1..n) reaches ``shape(k / n)`` of the final
cut, and the fraction holds between events. Shapes, as functions of progress p in [0, 1]:

* ``constant``    -- the same share of the *current* model removed at every event (equal steps
  in log-MACs, the ``p^(1/k)`` rate of iterative pruning): kept = final^p;
* ``linear``      -- equal steps in MACs: p;
* ``cosine``      -- slow, fast, slow: (1 - cos(pi p)) / 2;
* ``exponential`` -- front-loaded exponential approach: (1 - e^(-5p)) / (1 - e^(-5));
* ``cubic``       -- Zhu & Gupta 2017, s_t = s_f + (s_i - s_f)(1 - p)^3: 1 - (1 - p)^3.

Register new shapes with ``@register_schedule("name")``; a shape maps (p, final) to the fraction
of the final cut, where ``final`` is the kept fraction at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from autoprune.errors import AutopruneError
from autoprune.registry import Registry

Shape = Callable[[float, float], float]
SHAPES: Registry[Shape] = Registry("pruning schedule")

EXPONENTIAL_RATE = 5.0


def register_schedule(name: str) -> Callable[[Shape], Shape]:
    return SHAPES.register(name)


def list_schedules() -> list[str]:
    return SHAPES.names()


@register_schedule("constant")
def _constant(p: float, final: float) -> float:
    if final >= 1.0:
        return p
    return (1.0 - final ** p) / (1.0 - final)


@register_schedule("linear")
def _linear(p: float, final: float) -> float:
    return p


@register_schedule("cosine")
def _cosine(p: float, final: float) -> float:
    return 0.5 * (1.0 - math.cos(math.pi * p))


@register_schedule("exponential")
def _exponential(p: float, final: float) -> float:
    return (1.0 - math.exp(-EXPONENTIAL_RATE * p)) / (1.0 - math.exp(-EXPONENTIAL_RATE))


@register_schedule("cubic")
def _cubic(p: float, final: float) -> float:
    return 1.0 - (1.0 - p) ** 3


@dataclass(frozen=True)
class PruningSchedule:
    """Kept fraction of the original cost at every step, ending at ``final`` at step ``end``.

    Args:
        shape: a registered shape name (see ``list_schedules()``).
        final: kept fraction of the original cost after the last event, in (0, 1].
        start: step t0 from which pruning is scheduled (no cut at t0 itself).
        end: step of the last cut.
        frequency: steps between cuts (the events are spread evenly over (start, end]).
    """

    shape: str
    final: float
    start: int
    end: int
    frequency: int

    def __post_init__(self) -> None:
        SHAPES.check(self.shape)
        if not 0.0 < self.final <= 1.0:
            raise AutopruneError(f"final kept fraction {self.final} is outside (0, 1]")
        if self.frequency < 1:
            raise AutopruneError(f"pruning frequency {self.frequency} must be at least one step")
        if not 0 <= self.start < self.end:
            raise AutopruneError(f"pruning must start before it ends (start step {self.start}, end step {self.end})")

    @property
    def events(self) -> list[int]:
        """Steps at which the model is pruned (the last one is ``end``)."""
        n = max(1, round((self.end - self.start) / self.frequency))
        return [self.start + round(k * (self.end - self.start) / n) for k in range(1, n + 1)]

    def fraction(self, step: int) -> float:
        """Fraction of the final cut reached at ``step`` (0 before the first event, 1 from ``end``)."""
        events = self.events
        done = sum(1 for e in events if e <= step)
        if done == 0:
            return 0.0
        return min(1.0, max(0.0, SHAPES.lookup(self.shape)(done / len(events), self.final)))

    def target(self, step: int) -> float:
        """Kept fraction of the original cost planned at ``step``."""
        return 1.0 - self.fraction(step) * (1.0 - self.final)

    def starting_at(self, step: int) -> PruningSchedule:
        """The same cuts compressed into (``step``, ``end``]: for a shape decided part-way through training,
        pruning cannot start before the decision (same end, same spacing between events)."""
        if step <= self.start:
            return self
        if step >= self.end:
            raise AutopruneError(f"the shape was decided at step {step}, at or after the last planned cut "
                                 f"(step {self.end}): decide earlier (--decide-at, --decide-by) or lower --final-share")
        return replace(self, start=step)

    @classmethod
    def over_training(cls, shape: str, final: float, total_steps: int, start: float = 0.0, end: float = 0.75,
                      every: int = 1) -> "PruningSchedule":
        """A schedule with ``start``/``end`` given as fractions of ``total_steps`` of training."""
        if not 0.0 <= start < end <= 1.0:
            raise AutopruneError(f"pruning start {start} and end {end} must satisfy 0 <= start < end <= 1 "
                                 "(fractions of training)")
        # the last step that still runs is total_steps - 1: a cut at total_steps would never happen
        s, e = int(round(start * total_steps)), min(int(round(end * total_steps)), total_steps - 1)
        if e <= s:
            raise AutopruneError(f"training is too short ({total_steps} steps) to prune between {start} and {end} of it")
        return cls(shape, final, s, e, max(1, every))
