"""The verb: ``prune(structure, allocation, criterion)`` -> a physically smaller model.

Also the pruned-model file format: base-model name + channel spec + ordinary ``state_dict``,
loadable without pickled classes (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .allocation import Allocation
from .criteria import Criterion, group_scores
from .errors import AutopruneError
from .structure import ModelStructure, channel_spec

PRUNED_FORMAT = "autoprune.pruned/1"


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


def save_pruned(model: nn.Module, base_name: str, num_classes: int, path: str | Path, **meta: object) -> None:
    """Save a (pruned) model as base name + channel spec + state_dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": PRUNED_FORMAT, "base": base_name, "num_classes": int(num_classes),
                "channels": channel_spec(model), "state_dict": model.state_dict(), "meta": dict(meta)}, path)


def _read(path: str | Path) -> dict:
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AutopruneError(f"model file '{path}' not found") from None
    except Exception as exc:
        raise AutopruneError(f"model file '{path}' cannot be read ({type(exc).__name__}): is it corrupt?") from None
    return obj


def is_pruned_checkpoint(path: str | Path) -> bool:
    obj = _read(path)
    return isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT


def _resize(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            owner_name, _, attr = key.rpartition(".")
            owner = model.get_submodule(owner_name)
            old = getattr(owner, attr)
            new = torch.empty(tensor.shape, dtype=tensor.dtype)
            setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)


def load_pruned(path: str | Path) -> tuple[nn.Module, str]:
    """Rebuild a pruned model from its file: (model, base model name)."""
    from .models import create_model, load_weights

    obj = _read(path)
    if not isinstance(obj, dict) or obj.get("format") != PRUNED_FORMAT:
        raise AutopruneError(f"'{path}' is not an autoprune pruned-model file")
    model = create_model(obj["base"], obj["num_classes"])
    for name, attrs in obj["channels"].items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    _resize(model, obj["state_dict"])
    load_weights(model, obj["state_dict"], f"pruned model '{path}'")
    return model, obj["base"]
