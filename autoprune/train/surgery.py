"""Cutting channels out of a model that is training: the optimizer's state goes with them.

Every per-parameter buffer (SGD momentum, Adam moments) is sliced to the kept channels by
replaying the same removal plan on a shadow copy of the model whose weights are the buffers, so
torch-pruning's own layer pruners decide which slice survives.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn

from autoprune.core.structure import ModelStructure


def group_widths(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Current output width of each group's root layer (groups are named after their root)."""
    widths = {}
    for name in names:
        m = model.get_submodule(name)
        widths[name] = int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
    return widths


def prune_with_optimizer(structure: ModelStructure, remove: Sequence[Sequence[int]], optimizer: torch.optim.Optimizer,
                         make: Callable[[nn.Module], torch.optim.Optimizer]) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Prune ``structure.model`` and build its optimizer with every per-parameter buffer sliced alike.

    Buffers shaped like their parameter (SGD momentum, Adam moments) are written into a shadow
    copy of the model and pruned with the same plan; scalars (Adam's step) are copied as is.
    """
    model = structure.model
    pruned = structure.prune_copy(remove)
    new_opt = make(pruned)
    names = {p: n for n, p in model.named_parameters()}
    states = {names[p]: st for p, st in optimizer.state.items() if p in names}
    keys = sorted({k for st in states.values() for k in st})
    new_params = dict(pruned.named_parameters())
    for key in keys:
        shaped = {n: st[key] for n, st in states.items()
                  if isinstance(st.get(key), torch.Tensor) and st[key].shape == model.get_parameter(n).shape}
        if shaped:
            shadow = copy.deepcopy(model)
            with torch.no_grad():
                for n, p in shadow.named_parameters():
                    if n in shaped:
                        p.copy_(shaped[n])
            sliced = dict(structure.prune_copy(remove, model=shadow).named_parameters())
        for n, st in states.items():
            if key not in st:
                continue
            value = st[key]
            new_opt.state[new_params[n]][key] = (sliced[n].detach().clone() if n in shaped
                                                 else value.clone() if isinstance(value, torch.Tensor) else value)
    return pruned, new_opt
