"""Model registry: one factory, ``create_model(name, num_classes, checkpoint=...)``.

Names: ``resnet20|32|44|56|110`` (CIFAR, option-A shortcuts) and ``tv:<name>`` for any
torchvision classification model (``tv:resnet18``, ``tv:mobilenet_v2``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import AutopruneError
from .cifar_resnet import CifarResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of autoprune needs to know about a model family."""

    name: str
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_CIFAR: dict[str, Callable[[int], nn.Module]] = {
    f"resnet{d}": (lambda nc, d=d: CifarResNet(d, nc)) for d in (20, 32, 44, 56, 110)
}


def list_models() -> list[str]:
    return sorted(_CIFAR) + ["tv:<any torchvision classification model>"]


def model_info(name: str) -> ModelInfo:
    if name in _CIFAR:
        return ModelInfo(name, input_size=32)
    if name.startswith("tv:"):
        return ModelInfo(name, input_size=224)
    raise AutopruneError(f"unknown model '{name}': use one of {', '.join(list_models())}")


def _torchvision_model(name: str, num_classes: int) -> nn.Module:
    import torchvision

    tv_name = name[3:]
    if tv_name not in torchvision.models.list_models(module=torchvision.models):
        raise AutopruneError(
            f"unknown torchvision model '{tv_name}': see torchvision.models.list_models()"
        )
    return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a plain state_dict: unwraps ``state_dict``/``model`` and strips ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"checkpoint '{path}' not found: check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise AutopruneError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}): is it a torch file?") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AutopruneError(f"checkpoint '{path}' holds no state_dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with a one-line error naming what does not match."""
    own = model.state_dict()
    # old checkpoints (e.g. the shared CIFAR ResNets) predate BatchNorm's num_batches_tracked
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of other shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise AutopruneError(f"{source} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(state)


def create_model(name: str, num_classes: int = 10, checkpoint: str | Path | None = None) -> nn.Module:
    """Build a model by registry name; load a checkpoint (plain, DataParallel or pruned) if given."""
    if checkpoint is not None:
        from ..pruning import is_pruned_checkpoint, load_pruned

        if is_pruned_checkpoint(checkpoint):
            model, saved_name = load_pruned(checkpoint)
            if saved_name != name:
                raise AutopruneError(
                    f"checkpoint '{checkpoint}' is a pruned {saved_name}, not a {name}: pass --model {saved_name}"
                )
            return model
    if name in _CIFAR:
        model = _CIFAR[name](num_classes)
    elif name.startswith("tv:"):
        model = _torchvision_model(name, num_classes)
    else:
        model_info(name)  # raises the unknown-model error
        raise AssertionError
    if checkpoint is not None:
        load_weights(model, load_state_dict_file(checkpoint), f"checkpoint '{checkpoint}'")
    return model


__all__ = ["create_model", "model_info", "list_models", "ModelInfo", "load_weights", "load_state_dict_file", "CifarResNet"]
