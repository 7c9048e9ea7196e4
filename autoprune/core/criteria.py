"""Channel importance criteria: which channels of a group to cut, given how many.

Every criterion maps a ``ModelStructure`` (and, for data-dependent ones, calibration batches)
to one score tensor per group, higher = more important. Register new ones with
``@register_criterion("name")``.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.registry import Registry


class Criterion(Protocol):
    data_dependent: bool

    def scores(self, structure: ModelStructure, batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        ...


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str, **preset: Any) -> Callable:
    return CRITERIA.register(name, **preset)


def list_criteria() -> list[str]:
    return CRITERIA.names()


def get_criterion(spec: str) -> Criterion:
    """A criterion by name, with options as ``name@key=value``."""
    return CRITERIA.build(spec)


class TorchPruningImportance:
    """Wraps a weight-only ``torch_pruning.importance`` scorer, applied to each full group."""

    data_dependent = False

    def __init__(self, importance: tp.importance.Importance):
        self.importance = importance

    @torch.no_grad()
    def scores(self, structure: ModelStructure, batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        out = []
        for group, tpg in zip(structure.groups, structure.tp_groups):
            score = self.importance(tpg)
            if score is None:  # e.g. BN gamma asked of a group without BatchNorm
                raise AutopruneError(f"this criterion cannot score group '{group.name}' (no layer of the kind it "
                                     "reads, e.g. BatchNorm): pick another --criterion")
            out.append(score.detach().float().cpu())
        return out


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


# -- filter geometry -------------------------------------------------------------------------
class FPGMCriterion:
    """FPGM (He et al. 2019): a filter's summed distance to the other filters of its layer.

    Filters near the geometric median are replaceable by the others, so they score low. Written
    here rather than via ``tp.importance.FPGMImportance``, which measures distances between
    ``|w|**p`` (sign-blind) instead of between the filters themselves.
    """

    data_dependent = False

    @torch.no_grad()
    def scores(self, structure: ModelStructure, batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        out = []
        for g in structure.groups:
            w = structure.model.get_submodule(g.name).weight.detach().float().flatten(1)
            out.append(torch.cdist(w, w).sum(1).cpu())
        return out


register_criterion("fpgm")(FPGMCriterion)


# -- data-dependent criteria: forward (and backward) passes on calibration batches -------------
_IN_HANDLERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def _inputs_and_labels(batch, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch is images, or (images, labels); without labels the model's own predictions stand in."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    with torch.no_grad():
        return batch, model(batch).argmax(1)


class _ChannelStats:
    """Running per-channel statistics of one activation tensor (N, C, H, W) or (N, C)."""

    def __init__(self, hrank_images: int):
        self.n = self.total = self.sq = self.nonpos = self.rank = None
        self.images = 0
        self.hrank_images = hrank_images

    def add(self, x: torch.Tensor, hrank: bool) -> None:
        x = x.detach().float()
        if x.dim() == 2:
            x = x[:, :, None, None]
        flat = x.transpose(0, 1).flatten(1)  # (C, N*H*W)
        vals = (torch.full((x.shape[1],), float(flat.shape[1])), flat.sum(1), flat.pow(2).sum(1),
                (flat <= 0).sum(1).float())
        if self.n is None:
            self.n, self.total, self.sq, self.nonpos = vals
            self.rank = torch.zeros(x.shape[1])
        else:
            for acc, v in zip((self.n, self.total, self.sq, self.nonpos), vals):
                acc += v
        take = min(len(x), self.hrank_images - self.images) if hrank else 0
        if take > 0:
            self.rank += torch.linalg.matrix_rank(x[:take]).float().sum(0)
            self.images += take

    def stat(self, name: str) -> torch.Tensor:
        mean = self.total / self.n
        if name == "apoz":  # 1 - average percentage of zeros: higher = more active
            return 1.0 - self.nonpos / self.n
        if name == "mean":
            return mean.abs()
        if name == "std":
            return (self.sq / self.n - mean.pow(2)).clamp_min(0).sqrt()
        if name == "hrank":
            return self.rank / max(1, self.images)
        raise ValueError(name)


class ActivationCriterion:
    """Statistics of each group's activations, read where they are consumed.

    The hooked tensor is the input of every layer whose input channels the group cuts (for a
    CIFAR ResNet block: conv2's input, i.e. after BN and ReLU), averaged over such layers;
    a group without consumers falls back to its root layer's output. ``stat``:
    ``apoz`` (Hu et al. 2016; scores 1 - APoZ), ``mean`` / ``std`` (Molchanov et al. 2016),
    ``hrank`` (Lin et al. 2020: average rank of the channel's feature maps over
    ``hrank_images`` images).
    """

    data_dependent = True

    def __init__(self, stat: str, hrank_images: int = 256):
        self.stat = stat
        self.hrank_images = hrank_images

    def _taps(self, structure: ModelStructure) -> list[list[tuple[str, bool, list[list[int]]]]]:
        """Per group: (module name, read its output?, channel -> tensor indices) to hook."""
        taps = []
        for g in structure.groups:
            mine = [(m.name, False, m.root_to_idxs) for m in g.members
                    if not m.is_param and m.handler in _IN_HANDLERS]
            taps.append(mine or [(g.name, True, [[i] for i in range(g.channels)])])
        return taps

    @torch.no_grad()
    def scores(self, structure: ModelStructure, batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        model = structure.model
        taps = self._taps(structure)
        stats: dict[tuple[str, bool], _ChannelStats] = {}
        hrank = self.stat == "hrank"

        def hook_for(key):
            def hook(mod, inp, out):
                stats.setdefault(key, _ChannelStats(self.hrank_images)).add(out if key[1] else inp[0], hrank)
            return hook

        keys = {(name, use_out) for group in taps for name, use_out, _ in group}
        handles = [model.get_submodule(name).register_forward_hook(hook_for((name, use_out))) for name, use_out in keys]
        was_training = model.training
        model.eval()
        try:
            for batch in batches or []:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        out = []
        for group in taps:
            per_tap = []
            for name, use_out, idx_map in group:
                s = stats[(name, use_out)].stat(self.stat)
                per_tap.append(torch.stack([s[idx].mean() for idx in idx_map]))
            out.append(torch.stack(per_tap).mean(0))
        return out


class TaylorCriterion:
    """First-order Taylor (Molchanov et al. 2019): |w * dL/dw| summed over the group's weights.

    Gradients of the cross-entropy are accumulated over the calibration batches (labels if the
    batches carry them, else the model's predictions) and scored with torch-pruning's
    ``GroupTaylorImportance``; the model's gradients are cleared afterwards.
    """

    data_dependent = True

    def scores(self, structure: ModelStructure, batches: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        model = structure.model
        was_training = model.training
        model.eval()  # BN uses its running statistics: the criterion must not change the model
        model.zero_grad(set_to_none=True)
        try:
            total = 0
            for batch in batches or []:
                x, y = _inputs_and_labels(batch, model)
                F.cross_entropy(model(x), y, reduction="sum").backward()
                total += len(y)
            imp = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
            return [imp(g).detach().float().cpu() / max(1, total) for g in structure.tp_groups]
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)


register_criterion("apoz")(lambda: ActivationCriterion("apoz"))
register_criterion("activation-mean")(lambda: ActivationCriterion("mean"))
register_criterion("activation-std")(lambda: ActivationCriterion("std"))
register_criterion("hrank")(lambda: ActivationCriterion("hrank"))
register_criterion("taylor")(TaylorCriterion)


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
