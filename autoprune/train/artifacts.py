"""What a command saves is what was scored.

A pruned model's BatchNorm statistics belong to the dense model until they are re-estimated, and
with the dense model's statistics it scores far below its adaptive-BN accuracy. So every pruned
model is recalibrated on the evaluator's calibration batches before it is saved, and the file is
read back from disk and scored, so the figure a command prints is the figure of the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from autoprune.core.io import load_pruned, save_pruned
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import accuracy, recalibrate_bn
from autoprune.train.precision import Precision


def split_accuracy(model: nn.Module, data: DataBundle, split: str, device: torch.device | str = "cpu",
                   batch_size: int = 256, precision: str | Precision = "fp32") -> float:
    """Top-1 on a whole split, batch by batch: a large test split is never held at the model's resolution."""
    correct = total = 0
    for x, y in data.batches(split, batch_size, device):
        correct += accuracy(model, x, y, batch_size, precision) * len(y)
        total += len(y)
    return round(correct) / max(1, total)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether recalibration changes anything (ConvNeXt and ViTs normalise with LayerNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def save_calibrated(model: nn.Module, base_name: str, num_classes: int, path: str | Path,
                    calib_batches: Sequence[torch.Tensor], val_x: torch.Tensor, val_y: torch.Tensor,
                    prepare: Callable[[nn.Module], object] | None = None, **meta: object) -> tuple[float, nn.Module]:
    """Recalibrate ``model``'s BN (in place), save it, load the file back: (its plain held-out accuracy, it).

    ``prepare`` replaces the recalibration when the score did more (``--score finetune:STEPS``: the
    evaluator's ``prepare`` fine-tunes), so the saved file is the model that was scored."""
    if prepare is None:
        recalibrate_bn(model, calib_batches)
    else:
        prepare(model)
    save_pruned(model, base_name, num_classes, path, bn_calibrated_on=sum(len(b) for b in calib_batches), **meta)
    saved = load_pruned(path)[0].to(val_x.device)
    return accuracy(saved, val_x, val_y), saved
