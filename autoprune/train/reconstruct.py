"""Least-squares reconstruction: refit each layer whose inputs were pruned so that it reproduces
the dense layer's output (He et al. 2017, "Channel Pruning"; AMC and ThiNet do the same).

Pruning a layer's input channels leaves its output short of what the next layers were trained on;
a refit by ridge regression on a few hundred calibration images recovers much of it. Layers are
refitted in forward order during one pass of the pruned model, each on the inputs the already
refitted layers before it produce, so errors are corrected rather than accumulated. Only plain
convolutions (one conv group) and linear layers are refitted; the targets are the dense model's
outputs at the same sampled positions (computed once per model: ``DenseTargets``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.core.structure import REMOVED_ATTR, ModelStructure
from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class RefitReport:
    """One refitted layer: relative squared output error on the fitting sample, before and after."""

    name: str
    rows: int
    error_before: float
    error_after: float


def refittable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def input_pruned_layers(structure: ModelStructure) -> list[str]:
    """The layers of ``structure`` whose input channels some group removes (the refit candidates)."""
    names = {m.name for g in structure.groups for m in g.members
             if not m.is_param and m.handler.__name__ == "prune_in_channels"}
    modules = dict(structure.model.named_modules())
    return sorted(n for n in names if refittable(modules[n]))


def _positions(module: nn.Module, out: torch.Tensor, per_image: int, seed: int) -> torch.Tensor | None:
    """Sampled output positions, [N, P] flat spatial indices (None: a linear layer on [N, F] inputs)."""
    if isinstance(module, nn.Linear) and out.dim() == 2:
        return None
    spatial = out.shape[2:].numel() if isinstance(module, nn.Conv2d) else out.shape[1:-1].numel()
    gen = torch.Generator().manual_seed(seed)
    p = min(per_image, spatial)
    return torch.stack([torch.randperm(spatial, generator=gen)[:p] for _ in range(out.shape[0])]).to(out.device)


def _output_rows(module: nn.Module, out: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """The layer's outputs at the sampled positions, [rows, channels]."""
    if pos is None:
        return out
    if isinstance(module, nn.Conv2d):
        flat = out.flatten(2)  # [N, C, L]
        return flat.gather(2, pos.unsqueeze(1).expand(-1, flat.shape[1], -1)).permute(0, 2, 1).reshape(-1, flat.shape[1])
    flat = out.reshape(out.shape[0], -1, out.shape[-1])  # linear on [N, ..., F]
    return flat.gather(1, pos.unsqueeze(2).expand(-1, -1, flat.shape[2])).reshape(-1, flat.shape[2])


def _input_rows(module: nn.Module, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """The inputs each sampled output sees: conv patches (unfolded in small image chunks, memory-bounded)
    or linear features, [rows, in_features]."""
    if pos is None:
        return x
    if isinstance(module, nn.Linear):
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        return flat.gather(1, pos.unsqueeze(2).expand(-1, -1, flat.shape[2])).reshape(-1, flat.shape[2])
    k, d, p, s = module.kernel_size, module.dilation, module.padding, module.stride
    if isinstance(p, str):
        raise AutopruneError(f"reconstruct cannot refit a conv with padding='{p}': use another --score")
    per_patch = x.shape[1] * k[0] * k[1]
    chunk = max(1, int(2e7 // max(1, per_patch * x.shape[2] * x.shape[3])))
    rows = []
    for i in range(0, x.shape[0], chunk):
        cols = F.unfold(x[i:i + chunk], k, dilation=d, padding=p, stride=s)  # [n, Cin*k*k, L]
        idx = pos[i:i + chunk].unsqueeze(1).expand(-1, cols.shape[1], -1)
        rows.append(cols.gather(2, idx).permute(0, 2, 1).reshape(-1, per_patch))
    return torch.cat(rows)


class DenseTargets:
    """The dense model's outputs of the candidate layers at sampled positions of ``images``."""

    def __init__(self, dense: nn.Module, layers: Sequence[str], images: torch.Tensor, positions: int = 16,
                 seed: int = 0):
        self.images, self.layers, self.per_image, self.seed = images, list(layers), positions, seed
        self.positions: dict[str, torch.Tensor | None] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(dense.named_modules())

        def keep(name: str, i: int):
            def hook(mod, inp, out):
                pos = _positions(mod, out, self.per_image, self.seed + i)
                self.positions[name] = pos
                self.outputs[name] = _output_rows(mod, out.float(), pos)
            return hook

        handles = [modules[n].register_forward_hook(keep(n, i)) for i, n in enumerate(self.layers)]
        was_training = dense.training
        try:
            dense.eval()
            with torch.no_grad():
                dense(images)
        finally:
            for h in handles:
                h.remove()
            dense.train(was_training)
        self.folds = scale_folds(dense, self.layers, images[:32])  # layer -> BN that absorbs its scale


def _solve(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_W ||x W^T - y||^2 + lam ||W - w0||^2 with lam = ``ridge`` x mean diag(x^T x): a refit that
    stays near the pruned weights where the sample says little (float64 normal equations)."""
    x, y, w0 = x.double(), y.double(), w0.double()
    gram = x.T @ x
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    gram.diagonal().add_(lam)
    rhs = x.T @ y + lam * w0.T
    return torch.linalg.solve(gram, rhs).T


def _relative_error(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ w.T - y) ** 2).sum() / (y ** 2).sum().clamp_min(1e-12))


def refit_pruned_layers(pruned: nn.Module, targets: DenseTargets, ridge: float = 1e-3,
                        keep_scale: bool = True) -> list[RefitReport]:
    """Refit, in place and in forward order, every layer of ``pruned`` whose inputs were pruned
    (``ModelStructure.prune_copy`` records which) towards ``targets``; BN statistics are left as they
    are (recalibrate afterwards). Returns each refitted layer's error before and after.

    ``keep_scale``: a refitted layer that feeds a BatchNorm gets back its pruned weights' norm, channel by
    channel (``restore_scale``). The refit roughly doubles those norms, and under BN a weight twice as
    large trains at a quarter of the effective learning rate, so the refitted model fine-tuned worse than
    the plain one; BN makes the rescaled model compute the same function."""
    removed = getattr(pruned, REMOVED_ATTR, None)
    if removed is None:
        raise AutopruneError("reconstruct needs a model pruned by autoprune (it records the removed channels): "
                             "prune with ModelStructure.prune_copy / PruningProblem.pruned_model")
    modules = dict(pruned.named_modules())
    reports: list[RefitReport] = []

    def refit(name: str):
        def hook(mod, args):
            x = args[0].float()
            pos = targets.positions[name]
            xr = _input_rows(mod, x, pos)
            y = targets.outputs[name]
            out_cut = removed[name].get("out", [])
            if out_cut:
                keep = torch.ones(y.shape[1], dtype=torch.bool, device=y.device)
                keep[out_cut] = False
                y = y[:, keep]
            w0 = mod.weight.detach().reshape(mod.weight.shape[0], -1).float()
            if mod.bias is not None:  # the bias is one more column of ones
                xr = torch.cat([xr, xr.new_ones(len(xr), 1)], 1)
                w0 = torch.cat([w0, mod.bias.detach().float()[:, None]], 1)
            before = _relative_error(xr, w0, y)
            w = _solve(xr, y, w0, ridge).float()
            after = _relative_error(xr, w, y)
            if after >= before:  # never make a layer worse than pruning left it
                return None
            with torch.no_grad():
                if mod.bias is not None:
                    mod.bias.copy_(w[:, -1])
                    w = w[:, :-1]
                mod.weight.copy_(w.reshape(mod.weight.shape))
            reports.append(RefitReport(name, len(xr), before, after))
            return None
        return hook

    layers = [n for n in targets.layers if removed.get(n, {}).get("in") and n in modules]
    plain = {n: modules[n].weight.detach().clone() for n in layers if n in targets.folds} if keep_scale else {}
    handles = [modules[n].register_forward_pre_hook(refit(n)) for n in layers]
    was_training = pruned.training
    images = targets.images.to(next(pruned.parameters()).device)
    try:
        pruned.eval()
        with torch.no_grad():
            pruned(images)
        for h in handles:
            h.remove()
        if keep_scale:
            restore_scale(pruned, {r.name: plain[r.name] for r in reports if r.name in plain}, targets.folds)
    finally:
        for h in handles:
            h.remove()
        pruned.train(was_training)
    return reports


def bn_fed_by(model: nn.Module, layers: Sequence[str], images: torch.Tensor) -> dict[str, str]:
    """For each of ``layers`` whose output tensor goes straight into a BatchNorm, that BatchNorm's name (one
    forward pass; tensor identity, so a layer whose output is also used elsewhere is still listed)."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    found: dict[str, str] = {}

    def keep(name):
        def hook(mod, args, out):
            outputs[name] = out
        return hook

    def match(bn_name):
        def hook(mod, args):
            found.update({n: bn_name for n, out in outputs.items() if args[0] is out})
        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in layers]
    handles += [m.register_forward_pre_hook(match(n)) for n, m in modules.items()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found


def fold_scale(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, s: torch.Tensor) -> None:
    """Multiply ``layer``'s output channels by ``s`` and fold the inverse into ``bn`` (running statistics, and its
    weight for the eps term), so that the pair computes the same function in eval mode."""
    with torch.no_grad():
        layer.weight.mul_(s.view((-1,) + (1,) * (layer.weight.dim() - 1)))
        if layer.bias is not None:
            layer.bias.mul_(s)
        if bn.running_var is not None:  # (s x - s mu) / sqrt(s^2 var + eps) * w' == (x - mu) / sqrt(var + eps) * w
            var = bn.running_var.clone()
            bn.running_mean.mul_(s)
            bn.running_var.mul_(s * s)
            if bn.weight is not None:
                bn.weight.mul_(torch.sqrt(s * s * var + bn.eps) / (s * torch.sqrt(var + bn.eps)))


def scale_folds(model: nn.Module, layers: Sequence[str], images: torch.Tensor, rtol: float = 1e-3) -> dict[str, str]:
    """layer -> BN, for the ``layers`` whose output scale the BN after them absorbs: ``fold_scale`` with random
    per-channel factors leaves the model's outputs on ``images`` where they were (all layers at once, else one by
    one). A layer whose output is also used unnormalized fails the check. Run once on the dense model: a pruned
    copy has the same graph, so each candidate's rescale needs no forward pass."""
    candidates = bn_fed_by(model, layers, images)
    if not candidates:
        return {}
    probe = copy.deepcopy(model).eval()
    modules = dict(probe.named_modules())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        reference = probe(images).float()
    tol = rtol * float(reference.abs().max().clamp_min(1e-12))
    saved = copy.deepcopy(probe.state_dict())

    def keeps_function(names: list[str]) -> bool:
        for n in names:
            weight = modules[n].weight
            s = 0.5 + 1.5 * torch.rand(weight.shape[0], generator=gen)
            fold_scale(modules[n], modules[candidates[n]], s.to(weight))
        with torch.no_grad():
            moved = float((probe(images).float() - reference).abs().max())
        probe.load_state_dict(saved)
        return moved <= tol

    names = sorted(candidates)
    if not keeps_function(names):
        names = [n for n in names if keeps_function([n])]
    return {n: candidates[n] for n in names}


def restore_scale(model: nn.Module, reference: dict[str, torch.Tensor], folds: dict[str, str]) -> list[str]:
    """Scale each output channel of the layers in ``reference`` (name -> weight) back to the reference weight's
    norm, where ``folds`` (``scale_folds``) names a BatchNorm that absorbs the factor. Returns the layers scaled."""
    modules = dict(model.named_modules())
    scaled = sorted(n for n in reference if n in folds)
    with torch.no_grad():
        for name in scaled:
            weight = modules[name].weight
            norm = weight.flatten(1).norm(dim=1)
            s = reference[name].flatten(1).norm(dim=1).to(norm) / norm.clamp_min(1e-12)
            fold_scale(modules[name], modules[folds[name]], s)
    return scaled
