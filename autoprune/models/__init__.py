"""Model registry: one factory, ``create_model(name, num_classes)``.

Names: ``resnet20|32|44|56|110`` (CIFAR, option-A shortcuts) and ``tv:<name>`` for any
torchvision classification model (``tv:resnet18``, ``tv:mobilenet_v2``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.models.cifar_resnet import CifarResNet

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


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a model by registry name, freshly initialised (checkpoints: ``autoprune.core.io.load_model``)."""
    if name in _CIFAR:
        return _CIFAR[name](num_classes)
    if name.startswith("tv:"):
        return _torchvision_model(name, num_classes)
    model_info(name)  # raises the unknown-model error
    raise AssertionError(name)


__all__ = ["create_model", "model_info", "list_models", "ModelInfo", "CifarResNet"]
