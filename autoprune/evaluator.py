"""Accuracy and the EagleEye adaptive-BN evaluator (the inner loop of every search)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from .precision import Precision, resolve_precision


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             precision: str | Precision = "fp32") -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode on pre-normalised tensors."""
    model.eval()
    correct = 0
    with resolve_precision(precision, x.device).autocast():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct / max(1, len(y))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor], precision: str | Precision = "fp32") -> None:
    """Reset BatchNorm statistics and re-estimate them (cumulative average) on ``batches``.

    The statistics are fp32 buffers whatever ``precision`` the forward passes run in.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # exact average over the calibration batches
    model.train()
    with resolve_precision(precision, batches[0].device if len(batches) else "cpu").autocast():
        for xb in batches:
            model(xb)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@dataclass
class EvalTiming:
    """Where the evaluator's time goes (seconds, summed over calls)."""

    calibrate: float = 0.0
    evaluate: float = 0.0
    calls: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)


class AdaptiveBNEvaluator:
    """EagleEye's score: recalibrate BN on calibration batches, then top-1 on the held-out split.

    Tensors are normalised once and kept on the device, so a call costs only its forward passes.
    The model passed in is modified (its BN statistics); pass a pruned copy. ``precision`` (default
    ``auto``: bf16 where the hardware runs it natively) applies to both calibration and scoring.
    """

    def __init__(self, calib_batches: Sequence[torch.Tensor], val_x: torch.Tensor, val_y: torch.Tensor,
                 eval_batch_size: int = 256, precision: str | Precision = "auto"):
        self.precision = resolve_precision(precision, val_x.device)
        fmt = self.memory_format = self.precision.memory_format
        self.calib_batches = [b.contiguous(memory_format=fmt) for b in calib_batches]
        self.val_x, self.val_y = val_x.contiguous(memory_format=fmt), val_y
        self.eval_batch_size = eval_batch_size
        self.timing = EvalTiming()

    def __call__(self, model: nn.Module) -> float:
        t0 = time.perf_counter()
        model.to(memory_format=self.memory_format)
        recalibrate_bn(model, self.calib_batches, self.precision)
        t1 = time.perf_counter()
        acc = accuracy(model, self.val_x, self.val_y, self.eval_batch_size, self.precision)
        t2 = time.perf_counter()
        self.timing.calibrate += t1 - t0
        self.timing.evaluate += t2 - t1
        self.timing.calls += 1
        self.timing.history.append((t1 - t0, t2 - t1))
        return acc
