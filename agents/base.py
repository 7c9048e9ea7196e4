"""The interfaces of allocators: a ``PruningProblem`` in, an ``Allocation`` out.

``Allocator`` is what every allocator is. ``AllocatorFactory`` is what the registry holds (a class,
usually) and what a plugin's entry point names: it declares up front whether its allocations depend
on a ``seed`` constructor argument, so ``compare`` passes one per seed without probing the object.
``MeasuresSensitivity`` is an optional capability that ``compare`` keeps and plots; ``UsesSensitivity``
one that reads a sensitivity table, which ``compare`` measures once and hands to every such allocator.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.core.sensitivity import SensitivityTable


class Allocator(Protocol):
    """Decides how many channels each group keeps so that the problem's budget is met (within 1%)."""

    name: str

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        ...


class AllocatorFactory(Protocol):
    """Builds an allocator from a spec's options (``name@key=value``).

    ``seeded`` True: the factory takes ``seed=`` and different seeds give different allocations
    (``compare --seeds`` runs it once per seed); False: deterministic, run once per target.
    """

    seeded: bool

    def __call__(self, **options: Any) -> Allocator:
        ...


@runtime_checkable
class MeasuresSensitivity(Protocol):
    """Optional: per-group accuracy-drop curves measured while allocating (one row per group and keep ratio)."""

    rows: list[dict]

    def save(self, folder: str | Path) -> None:
        """Write the curves (``sensitivity.csv``) into ``folder``."""


@runtime_checkable
class UsesSensitivity(Protocol):
    """Optional: reads the per-group sensitivity table measured at ``rates`` (set ``sensitivity`` to hand
    it a table already measured with the same score; None: it measures its own)."""

    rates: tuple[float, ...]
    sensitivity: SensitivityTable | None


class Factory:
    """A plain callable made into an ``AllocatorFactory`` by declaring ``seeded`` next to it."""

    def __init__(self, build: Callable[..., Allocator], seeded: bool):
        self.build, self.seeded = build, seeded

    def __call__(self, **options: Any) -> Allocator:
        return self.build(**options)
