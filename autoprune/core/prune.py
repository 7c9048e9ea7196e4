"""The verb: ``prune(structure, allocation, criterion)`` -> a physically smaller model (files: ``io``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.criteria import Criterion, group_scores
from autoprune.core.structure import ModelStructure


def channels_to_remove(structure: ModelStructure, keep: Sequence[int], scores: Sequence[torch.Tensor]) -> list[list[int]]:
    """Lowest-scoring channels per group; grouped convs lose the same positions in every conv group."""
    remove: list[list[int]] = []
    for g, k, s in zip(structure.groups, keep, scores):
        n_cut = g.channels - int(k)
        if n_cut <= 0:
            remove.append([])
            continue
        if g.ch_groups > 1:
            per = g.channels // g.ch_groups
            pos = torch.argsort(s.view(g.ch_groups, per).sum(0))[: n_cut // g.ch_groups]
            remove.append(sorted(int(c * per + p) for c in range(g.ch_groups) for p in pos))
        else:
            remove.append(sorted(torch.argsort(s)[:n_cut].tolist()))
    return remove


def prune(structure: ModelStructure, allocation: Allocation, criterion: str | Criterion = "l1",
          batches: Sequence[torch.Tensor] | None = None) -> nn.Module:
    """Return a pruned copy of ``structure.model`` keeping ``allocation`` channels per group."""
    keep = allocation.counts(structure)
    remove = channels_to_remove(structure, keep, group_scores(structure, criterion, batches))
    return structure.prune_copy(remove)
