"""Accuracy and the EagleEye adaptive-BN evaluator (the inner loop of every search)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from autoprune.core.scoring import Score
from autoprune.train.precision import Precision, resolve_precision


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             precision: str | Precision = "fp32") -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode on pre-normalised tensors."""
    return top1(model, x, y, batch_size, resolve_precision(precision, x.device)).value


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor], precision: str | Precision = "fp32") -> None:
    """Reset BatchNorm statistics and re-estimate them (cumulative average) on ``batches``.

    Only the BatchNorm layers are put in training mode: everything else runs as at inference, so
    auxiliary heads stay silent and dropout / stochastic depth stay off (the statistics are those of
    the network that is scored and saved). A model without BatchNorm is left as it is. The statistics
    are fp32 buffers whatever ``precision`` the forward passes run in.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # exact average over the calibration batches
        m.train()
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


def accuracy_upper_bound(correct: int, seen: int, total: int, delta: float) -> float:
    """With probability >= 1 - ``delta``, the accuracy over all ``total`` images is below this, given
    ``correct`` of the first ``seen`` (a uniformly random subset: the held-out split is shuffled).
    Hoeffding's bound on the unseen part's mean (it also holds when sampling without replacement)."""
    unseen = total - seen
    mean_bound = min(1.0, correct / seen + math.sqrt(math.log(1.0 / delta) / (2 * seen)))
    return (correct + unseen * mean_bound) / total


@torch.inference_mode()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, precision: Precision,
         must_beat: float | None = None, confidence: float = 0.99) -> "Score":
    """Top-1 over ``x`` in chunks of ``batch_size``; with ``must_beat``, stop once a bound (``confidence``,
    Bonferroni over the chunks) says the full accuracy cannot reach it, returning the partial estimate."""
    model.eval()
    total = len(y)
    delta = (1.0 - confidence) / max(1, math.ceil(total / batch_size))
    correct = seen = 0
    with precision.autocast():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            correct += int((model(xb).argmax(1) == yb).sum())
            seen += len(yb)
            if must_beat is not None and seen < total and accuracy_upper_bound(correct, seen, total, delta) < must_beat:
                return Score(correct / seen, seen, partial=True)
    return Score(correct / max(1, total), total)


class AdaptiveBNEvaluator:
    """EagleEye's score: recalibrate BN on calibration batches, then top-1 on the held-out split.

    Tensors are normalised once and kept on the device, so a call costs only its forward passes.
    The model passed in is modified (its BN statistics); pass a pruned copy. ``precision`` (default
    ``auto``: bf16 where the hardware runs it natively) applies to both calibration and scoring.

    Multi-fidelity: ``score(model, must_beat=x)`` scores the held-out split in chunks of
    ``eval_batch_size`` and stops once, with confidence ``confidence`` (Bonferroni over the
    chunks), the full accuracy cannot reach ``x``; the estimate so far is returned flagged partial.
    """

    def __init__(self, calib_batches: Sequence[torch.Tensor], val_x: torch.Tensor, val_y: torch.Tensor,
                 eval_batch_size: int = 256, precision: str | Precision = "auto", confidence: float = 0.99):
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence {confidence} must be in [0.5, 1)")
        self.confidence = confidence
        self.precision = resolve_precision(precision, val_x.device)
        fmt = self.memory_format = self.precision.memory_format
        self.calib_batches = [b.contiguous(memory_format=fmt) for b in calib_batches]
        self.val_x, self.val_y = val_x.contiguous(memory_format=fmt), val_y
        self.eval_batch_size = eval_batch_size
        self.timing = EvalTiming()
        self.label = "adaptive-BN"  # how reports name this score
        self.kind = "adaptive-bn"  # its --score value

    def prepare(self, model: nn.Module) -> nn.Module:
        """Bring ``model`` (in place) to the state that is scored: here, BN recalibrated."""
        model.to(memory_format=self.memory_format)
        recalibrate_bn(model, self.calib_batches, self.precision)
        return model

    def __call__(self, model: nn.Module) -> float:
        return self.score(model).value

    def score(self, model: nn.Module, must_beat: float | None = None) -> Score:
        """Recalibrate, then score; with ``must_beat``, stop early once the model surely cannot reach it."""
        t0 = time.perf_counter()
        self.prepare(model)
        t1 = time.perf_counter()
        result = top1(model, self.val_x, self.val_y, self.eval_batch_size, self.precision, must_beat,
                      self.confidence)
        t2 = time.perf_counter()
        self.timing.calibrate += t1 - t0
        self.timing.evaluate += t2 - t1
        self.timing.calls += 1
        self.timing.history.append((t1 - t0, t2 - t1))
        return result
