"""``timm:NAME`` models: built without weights (a local ``--checkpoint`` supplies them), described by
timm's pretrained config (input size, normalisation) without building them."""
from __future__ import annotations

import torch.nn as nn

from autoprune.errors import AutopruneError

TIMM_HINT = "timm models need timm: pip install 'autoprune[timm]'"


def _timm():
    try:
        import timm
    except ImportError:
        raise AutopruneError(TIMM_HINT) from None
    return timm


def _check(timm_name: str) -> None:
    if not _timm().is_model(timm_name):
        raise AutopruneError(f"unknown timm model '{timm_name}': see timm.list_models()")


def create_timm_model(timm_name: str, num_classes: int) -> nn.Module:
    """A freshly initialised timm model (never downloads: ``pretrained=False``)."""
    _check(timm_name)
    return _timm().create_model(timm_name, pretrained=False, num_classes=num_classes)


def timm_info(timm_name: str) -> tuple[int | tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) from the model's default pretrained config."""
    _check(timm_name)
    cfg = _timm().models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    _, h, w = cfg.input_size
    return (h if h == w else (h, w)), tuple(cfg.mean), tuple(cfg.std)
