"""Model registry: one factory, ``create_model(name, num_classes)``.

Names: ``resnet20|32|44|56|110`` (CIFAR, option-A shortcuts), ``tv:<name>`` for any torchvision
classification model (``tv:resnet18``, ``tv:mobilenet_v2``, ...) and ``timm:<name>`` for any timm model
(``pip install 'autoprune[timm]'``). ``model_info(name)`` says at which input size a family is deployed
and how its images are normalised, without building the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.models.cifar_resnet import CifarResNet
from autoprune.models.heads import drop_aux_heads
from autoprune.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of autoprune needs to know about a model family."""

    name: str
    input_size: int | tuple[int, int]  # the size it is deployed at: costs are counted there by default
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


InputSize = int | str | tuple[int, int]  # 224, "224x160" (height x width) or (224, 160)


def input_hw(size: InputSize) -> tuple[int, int]:
    """(height, width) of an input size written as 224, "224", "224x160" or (224, 160)."""
    if isinstance(size, (tuple, list)) and len(size) == 2:
        hw = (int(size[0]), int(size[1]))
    else:
        text = str(size).strip().lower()
        parts = text.split("x")
        try:
            hw = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
        except ValueError:
            hw = (0, 0)
    if min(hw) < 1:
        raise AutopruneError(f"input size '{size}' is neither H (224) nor HxW (224x160) in pixels")
    return hw


def parse_input_size(value: InputSize) -> int | str:
    """A flag or YAML value as it is stored in configs: 224 for a square, "224x160" otherwise."""
    try:
        h, w = input_hw(value)
    except AutopruneError as exc:
        raise ValueError(str(exc)) from None  # argparse and config files print a ValueError as one line
    return h if h == w else f"{h}x{w}"


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


def _torchvision_info(name: str, tv_name: str) -> ModelInfo:
    """The crop size of the family's default weights (224; 299 for Inception, 600 for EfficientNet-B7).
    Vision transformers built without weights have a fixed 224-pixel position embedding, whatever
    resolution their larger weights were trained at."""
    import torchvision

    if tv_name.startswith("vit_"):
        return ModelInfo(name, 224)
    try:
        tf = torchvision.models.get_model_weights(tv_name).DEFAULT.transforms()
    except (ValueError, AttributeError):
        return ModelInfo(name, 224)
    crop = list(tf.crop_size)
    return ModelInfo(name, crop[0] if len(crop) == 1 or crop[0] == crop[1] else (crop[0], crop[1]),
                     tuple(tf.mean), tuple(tf.std))


MODELS.register_prefix("tv:", _torchvision_model, lambda tv_name: {"tv_name": tv_name},
                       "tv:<any torchvision classification model>")


def _timm_model(timm_name: str, num_classes: int) -> nn.Module:
    from autoprune.models.timm_models import create_timm_model

    return create_timm_model(timm_name, num_classes)


MODELS.register_prefix("timm:", _timm_model, lambda timm_name: {"timm_name": timm_name},
                       "timm:<any timm model>")


def list_models() -> list[str]:
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    MODELS.check(name)
    if name.startswith("tv:"):
        return _torchvision_info(name, name[3:])
    if name.startswith("timm:"):
        from autoprune.models.timm_models import timm_info

        size, mean, std = timm_info(name[5:])
        return ModelInfo(name, size, mean, std)
    return ModelInfo(name, input_size=32)


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a model by registry name, freshly initialised (checkpoints: ``autoprune.core.io.load_model``)."""
    return MODELS.build(name, num_classes=num_classes)


__all__ = ["create_model", "model_info", "list_models", "ModelInfo", "CifarResNet", "drop_aux_heads", "input_hw",
           "parse_input_size"]
