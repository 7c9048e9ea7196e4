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
from autoprune.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of autoprune needs to know about a model family."""

    name: str
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
for _depth in (20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_depth}", CifarResNet, depth=_depth)


def _torchvision_model(tv_name: str, num_classes: int) -> nn.Module:
    import torchvision

    if tv_name not in torchvision.models.list_models(module=torchvision.models):
        raise AutopruneError(
            f"unknown torchvision model '{tv_name}': see torchvision.models.list_models()"
        )
    return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)


MODELS.register_prefix("tv:", _torchvision_model, lambda tv_name: {"tv_name": tv_name},
                       "tv:<any torchvision classification model>")


def list_models() -> list[str]:
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    MODELS.check(name)
    return ModelInfo(name, input_size=224 if name.startswith("tv:") else 32)


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a model by registry name, freshly initialised (checkpoints: ``autoprune.core.io.load_model``)."""
    return MODELS.build(name, num_classes=num_classes)


__all__ = ["create_model", "model_info", "list_models", "ModelInfo", "CifarResNet"]
