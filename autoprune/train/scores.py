"""What a search scores candidates by (``--score``): adaptive BN, or a short fine-tune.

EagleEye's adaptive-BN accuracy costs a few forward passes and ranks allocations only moderately
like the accuracy they reach after fine-tuning; a few SGD steps of LR-rewind fine-tuning before
scoring rank them more alike, at many times the cost per candidate. ``finetune:STEPS`` makes that
the search's score.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import AdaptiveBNEvaluator
from autoprune.train.precision import Precision
from autoprune.train.training import TrainRecipe, train

BATCH = 128  # fine-tune batch size


def finetune_steps(score: str) -> int:
    """0 for ``adaptive-bn``, STEPS for ``finetune:STEPS``; anything else is a one-line error."""
    if score == "adaptive-bn":
        return 0
    kind, _, steps = score.partition(":")
    if kind == "finetune" and steps.isdigit() and int(steps) > 0:
        return int(steps)
    raise AutopruneError(f"unknown --score '{score}': use adaptive-bn or finetune:STEPS with STEPS a positive "
                         "number of SGD steps (e.g. finetune:100)")


def score_label(score: str) -> str:
    """How logs and reports name a ``--score``: adaptive-BN, or e.g. 100-step fine-tuned."""
    steps = finetune_steps(score)
    return f"{steps}-step fine-tuned" if steps else "adaptive-BN"


class FinetuneEvaluator(AdaptiveBNEvaluator):
    """Recalibrate BN, fine-tune ``steps`` SGD steps (batch 128, cosine from ``lr``: LR rewinding), then
    top-1 on the held-out split. Every candidate sees the same data order (``seed``), so candidates
    differ only by their shape. ``prepare`` leaves the model as scored, which is what a search saves."""

    def __init__(self, data: DataBundle, steps: int, calib_batches: Sequence[torch.Tensor], val_x: torch.Tensor,
                 val_y: torch.Tensor, *, lr: float = 0.01, seed: int = 0, precision: str | Precision = "auto",
                 **kwargs):
        super().__init__(calib_batches, val_x, val_y, precision=precision, **kwargs)
        self.data, self.steps, self.seed = data, steps, seed
        per_epoch = -(-len(data.train) // BATCH)
        self.recipe = TrainRecipe(epochs=steps / per_epoch, lr=lr, batch_size=BATCH)
        self.kind = f"finetune:{steps}"
        self.label = score_label(self.kind)

    def prepare(self, model: nn.Module) -> nn.Module:
        super().prepare(model)
        device = self.val_x.device
        # train() seeds torch's global generator; the search's own randomness (e.g. SAC's sampling) must not
        # restart from that seed at every candidate
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            train(model, self.data, self.recipe, device=device, seed=self.seed, progress=False,
                  precision=self.precision, validate=False)
        return model


def make_evaluator(score: str, data: DataBundle, calib_batches: Sequence[torch.Tensor], val_x: torch.Tensor,
                   val_y: torch.Tensor, precision: str | Precision = "auto", seed: int = 0) -> AdaptiveBNEvaluator:
    """The evaluator ``--score`` names, on these calibration batches and held-out tensors."""
    steps = finetune_steps(score)
    if steps:
        return FinetuneEvaluator(data, steps, calib_batches, val_x, val_y, precision=precision, seed=seed)
    return AdaptiveBNEvaluator(calib_batches, val_x, val_y, precision=precision)
