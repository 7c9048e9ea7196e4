"""When a run trained from its initialization fixes the shape it will be pruned to.

A dense model trained from scratch has no useful channel ranking at step 0, so the final shape
(the allocation every cut heads for) is decided part-way through training:

- at a fixed step (``--decide-at F``: a fraction of the run), or
- when it stops moving (``--decide-at auto``, Early-Bird style, You et al. ICLR 2020): at every
  epoch boundary the allocator is asked what it would allocate on the current dense model; the
  shape is decided once ``patience`` consecutive epoch-to-epoch changes are all below
  ``threshold``, and at ``latest`` whatever the changes.

The change between two allocations is the mean absolute difference of their keep ratios, over
groups (``keep_distance``): 0.02 means one group in ten moved by a fifth of its channels, or every
group by 2%. Early-Bird measured the normalised Hamming distance of channel masks instead; keep
ratios are what an allocator decides (which channels go is the criterion's business at each cut).
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping

from autoprune.errors import AutopruneError

AUTO = "auto"


@dataclass(frozen=True)
class ShapeDecision:
    """The rule deciding the final shape: at ``step``, or (``step`` None) when the allocation settles.

    ``threshold``, ``patience`` and ``latest`` (a step) apply to the automatic rule only.
    """

    step: int | None = None
    threshold: float = 0.02
    patience: int = 2
    latest: int = 0

    def __post_init__(self) -> None:
        if self.step is not None and self.step < 0:
            raise AutopruneError(f"decision step {self.step} must not be negative")
        if self.threshold <= 0:
            raise AutopruneError(f"--decide-threshold {self.threshold} must be positive (a mean keep-ratio change)")
        if self.patience < 1:
            raise AutopruneError(f"--decide-patience {self.patience} must be at least 1 epoch")

    @property
    def auto(self) -> bool:
        return self.step is None

    def settled(self, distances: list[float]) -> bool:
        """Whether the last ``patience`` epoch-to-epoch changes are all below ``threshold``."""
        recent = distances[-self.patience:]
        return len(recent) == self.patience and all(d < self.threshold for d in recent)


def keep_distance(a: Mapping[str, int], b: Mapping[str, int], channels: Mapping[str, int]) -> float:
    """Mean over groups of |keep ratio in a - keep ratio in b| (widths by group name)."""
    if set(a) != set(b):
        raise AutopruneError("the two allocations name different groups: compare allocations of one model")
    return sum(abs(a[n] - b[n]) / channels[n] for n in a) / max(1, len(a))


def parse_decide_at(value: str | float | None) -> float | None:
    """``auto`` (or None) -> None; else a fraction of the run in [0, 1)."""
    if value is None or str(value).strip().lower() == AUTO:
        return None
    try:
        fraction = float(value)
    except ValueError:
        raise AutopruneError(f"--decide-at '{value}': give a fraction of the run in [0, 1), or auto") from None
    if not 0.0 <= fraction < 1.0:
        raise AutopruneError(f"--decide-at {fraction} must be a fraction of the run in [0, 1), or auto")
    return fraction

