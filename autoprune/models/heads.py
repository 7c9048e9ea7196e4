"""Auxiliary classifiers (GoogLeNet's ``aux1``/``aux2``, Inception-v3's ``AuxLogits``): training-time
heads that hang off the middle of the network and run only in training mode. The pruned network is
traced in eval mode, so their inputs would be pruned without them; a user deploys the main head, so
they are removed instead."""
from __future__ import annotations

from typing import Container

import torch.nn as nn

AUX_HEADS = ("aux1", "aux2", "AuxLogits")


def drop_aux_heads(model: nn.Module, keep: Container[str] = ()) -> list[str]:
    """Remove ``model``'s auxiliary classifiers in place (not those named in ``keep``); the names removed."""
    dropped = []
    for name in AUX_HEADS:
        if isinstance(getattr(model, name, None), nn.Module) and name not in keep:
            setattr(model, name, None)
            dropped.append(name)
    if dropped and hasattr(model, "aux_logits"):
        model.aux_logits = False  # torchvision: forward then returns plain logits in training mode too
    return dropped
