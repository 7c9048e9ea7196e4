"""Channel importance criteria: which channels of a group to cut, given how many.

Every criterion maps a ``ModelStructure`` (and, for data-dependent ones, calibration batches)
to one score tensor per group, higher = more important. Register new ones with
``@register_criterion("name")``.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
import torch_pruning as tp

from .errors import AutopruneError
from .structure import ModelStructure


class Criterion(Protocol):
    data_dependent: bool

    def scores(self, structure: ModelStructure, batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        ...


_REGISTRY: dict[str, Callable[[], Criterion]] = {}


def register_criterion(name: str) -> Callable:
    def wrap(factory: Callable[[], Criterion]) -> Callable[[], Criterion]:
        _REGISTRY[name] = factory
        return factory
    return wrap


def list_criteria() -> list[str]:
    return sorted(_REGISTRY)


def get_criterion(name: str) -> Criterion:
    if name not in _REGISTRY:
        raise AutopruneError(f"unknown criterion '{name}': use one of {', '.join(list_criteria())}")
    return _REGISTRY[name]()


class TorchPruningImportance:
    """Wraps a weight-only ``torch_pruning.importance`` scorer, applied to each full group."""

    data_dependent = False

    def __init__(self, importance: tp.importance.Importance):
        self.importance = importance

    @torch.no_grad()
    def scores(self, structure: ModelStructure, batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        return [self.importance(g).detach().float().cpu() for g in structure.tp_groups]


# Li et al. 2016: norm of the root layer's filters.
register_criterion("l1")(lambda: TorchPruningImportance(
    tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None)))
register_criterion("l2")(lambda: TorchPruningImportance(
    tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first", normalizer=None)))
# DepGraph's group norm: every coupled layer's slice counts.
register_criterion("group-l2")(lambda: TorchPruningImportance(
    tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)))
# Network Slimming: |gamma| of the group's BatchNorm layers.
register_criterion("bn")(lambda: TorchPruningImportance(tp.importance.BNScaleImportance(normalizer=None)))


def group_scores(structure: ModelStructure, criterion: str | Criterion,
                 batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Scores per group, cached on the structure (its reference weights do not change)."""
    name = criterion if isinstance(criterion, str) else None
    if name is not None and name in structure._importance_cache:
        return structure._importance_cache[name]
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    if crit.data_dependent and not batches:
        raise AutopruneError(f"criterion '{name}' needs calibration batches from the training split")
    scores = crit.scores(structure, batches)
    if name is not None:
        structure._importance_cache[name] = scores
    return scores
