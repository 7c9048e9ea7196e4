"""What a search scores candidates by (``--score``).

A score is a preparation and a held-out metric: ``PREPARATION[:STEPS][:METRIC]``.

- preparations: ``adaptive-bn`` (EagleEye: BN recalibrated), ``reconstruct`` (each layer whose
  inputs were pruned refitted by least squares to the dense layer's output, then BN recalibrated:
  ``autoprune.train.reconstruct``), ``finetune:STEPS`` (BN recalibrated, then STEPS SGD steps of
  LR-rewind fine-tuning), ``finetune-kd:STEPS`` (the same steps distilled from the dense model);
- metrics on the held-out split, higher is better: top-1 (default), ``loss`` (minus the mean
  cross-entropy), ``kd`` (minus the mean KL divergence from the dense model's outputs: no labels).

Adaptive BN costs a few forward passes and ranks allocations only moderately like the accuracy they
reach after fine-tuning (``bench/results/proxy-validity.md`` has every score's rank correlation and
cost); the others trade cost for a better ranking. The prepared model is what a search saves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.core.scoring import Score
from autoprune.errors import AutopruneError
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import AdaptiveBNEvaluator, top1
from autoprune.train.precision import Precision
from autoprune.train.training import TrainRecipe, kd_divergence, train

BATCH = 128  # fine-tune batch size
# search's and compare's default: among the scores within 3x adaptive BN's cost per candidate, the one that ranks
# candidates most like their fine-tuned accuracy (ResNet-20, Spearman 0.91 at 30% of MACs and 0.94 at 50%, adaptive
# BN 0.73 / 0.91; bench/results/proxy-validity.md)
DEFAULT_SCORE = "reconstruct:loss"
PREPARATIONS = ("adaptive-bn", "reconstruct", "finetune", "finetune-kd")
METRICS = ("top1", "loss", "kd")
SCORE_HELP = ("adaptive-bn, reconstruct, finetune:STEPS or finetune-kd:STEPS, optionally followed by :loss or :kd "
              "(e.g. adaptive-bn:kd, finetune-kd:25)")


@dataclass(frozen=True)
class ScoreSpec:
    """A parsed ``--score``."""

    preparation: str = "adaptive-bn"
    steps: int = 0
    metric: str = "top1"

    def __str__(self) -> str:
        text = self.preparation + (f":{self.steps}" if self.steps else "")
        return text + ("" if self.metric == "top1" else f":{self.metric}")

    @property
    def label(self) -> str:
        """How logs and reports name it: adaptive-BN, 25-step KD fine-tuned loss, ..."""
        base = {"adaptive-bn": "adaptive-BN", "reconstruct": "reconstructed",
                "finetune": f"{self.steps}-step fine-tuned", "finetune-kd": f"{self.steps}-step KD fine-tuned"}
        return base[self.preparation] + {"top1": "", "loss": " loss", "kd": " KD"}[self.metric]

    @property
    def needs_dense(self) -> bool:
        """Whether scoring needs the dense model (its outputs or its layers)."""
        return self.metric == "kd" or self.preparation in ("reconstruct", "finetune-kd")

    def format(self, value: float) -> str:
        """A score value as reports print it: top-1 in %, loss and KL as their (positive) size."""
        if self.metric == "top1":
            return f"{100 * value:.2f}% {self.label} accuracy"
        return f"{-value:.4f} {self.label} ({'cross-entropy' if self.metric == 'loss' else 'KL divergence'})"


def parse_score(text: str) -> ScoreSpec:
    """``--score`` text -> ``ScoreSpec``; anything unknown is a one-line error."""
    parts = str(text).split(":")
    prep, rest = parts[0], parts[1:]
    steps = 0
    if prep in ("finetune", "finetune-kd"):
        if not rest or not rest[0].isdigit() or int(rest[0]) <= 0:
            raise AutopruneError(f"--score '{text}': {prep} needs a positive number of SGD steps, e.g. {prep}:25")
        steps, rest = int(rest[0]), rest[1:]
    metric = rest[0] if len(rest) == 1 else "top1"
    if prep not in PREPARATIONS or len(rest) > 1 or metric not in METRICS:
        raise AutopruneError(f"unknown --score '{text}': use {SCORE_HELP}")
    return ScoreSpec(prep, steps, metric)


def score_label(score: str) -> str:
    """How logs and reports name a ``--score``."""
    return parse_score(score).label


def format_score(kind: str, value: float) -> str:
    return parse_score(kind).format(value)


@torch.inference_mode()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int, precision: Precision) -> torch.Tensor:
    """``model``'s fp32 outputs on ``x`` (eval mode, in chunks)."""
    model.eval()
    with precision.autocast():
        return torch.cat([model(xb).float() for xb in x.split(batch_size)])


class ScoreEvaluator(AdaptiveBNEvaluator):
    """Any ``ScoreSpec``: prepare the pruned copy (refit, recalibrate, fine-tune), then the held-out metric.

    Fine-tunes see the same data order (``seed``) for every candidate, so candidates differ only by
    their shape; the dense model's held-out outputs (``kd``) and layer targets (``reconstruct``) are
    computed once. Only top-1 stops early (``must_beat``); loss and KL are always full scores.
    """

    def __init__(self, spec: ScoreSpec, calib_batches: Sequence[torch.Tensor], val_x: torch.Tensor,
                 val_y: torch.Tensor, *, data: DataBundle | None = None, dense: nn.Module | None = None,
                 refit_layers: Sequence[str] = (), lr: float = 0.01, seed: int = 0,
                 precision: str | Precision = "auto", refit_images: int = 512, refit_positions: int = 16,
                 ridge: float = 1e-3, kd_temperature: float = 4.0, **kwargs):
        super().__init__(calib_batches, val_x, val_y, precision=precision, **kwargs)
        if spec.needs_dense and dense is None:
            raise AutopruneError(f"--score {spec} needs the dense model")
        if spec.steps and data is None:
            raise AutopruneError(f"--score {spec} needs training data to fine-tune on")
        self.spec, self.data, self.dense, self.seed = spec, data, dense, seed
        self.kind, self.label = str(spec), spec.label
        self.refit_layers, self.refit_images, self.refit_positions, self.ridge = (
            list(refit_layers), refit_images, refit_positions, ridge)
        self._targets = None
        self._dense_logits: torch.Tensor | None = None
        if spec.steps:
            per_epoch = -(-len(data.train) // BATCH)
            kd = spec.preparation == "finetune-kd"
            self.recipe = TrainRecipe(epochs=spec.steps / per_epoch, lr=lr, batch_size=BATCH,
                                      kd_weight=0.9 if kd else 0.0, kd_temperature=kd_temperature)

    def targets(self):
        """The dense layers' outputs the refit aims at, on the first ``refit_images`` calibration images."""
        if self._targets is None:
            from autoprune.train.reconstruct import DenseTargets

            images = torch.cat(list(self.calib_batches))[: self.refit_images].contiguous()
            self._targets = DenseTargets(self.dense, self.refit_layers, images, self.refit_positions, self.seed)
        return self._targets

    def dense_logits(self) -> torch.Tensor:
        if self._dense_logits is None:
            self._dense_logits = logits_of(self.dense, self.val_x, self.eval_batch_size, self.precision)
        return self._dense_logits

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.spec.preparation == "reconstruct":
            from autoprune.train.reconstruct import refit_pruned_layers

            refit_pruned_layers(model, self.targets(), self.ridge)
        super().prepare(model)
        if self.spec.steps:
            device = self.val_x.device
            # train() seeds torch's global generator; the search's own randomness (e.g. SAC's sampling) must not
            # restart from that seed at every candidate
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                train(model, self.data, self.recipe, device=device, seed=self.seed, progress=False,
                      precision=self.precision, validate=False,
                      teacher=self.dense if self.spec.preparation == "finetune-kd" else None)
        return model

    def score(self, model: nn.Module, must_beat: float | None = None) -> Score:
        self.prepare(model)
        if self.spec.metric == "top1":
            return top1(model, self.val_x, self.val_y, self.eval_batch_size, self.precision, must_beat,
                        self.confidence)
        logits = logits_of(model, self.val_x, self.eval_batch_size, self.precision)
        if self.spec.metric == "loss":
            value = -float(F.cross_entropy(logits, self.val_y))
        else:
            value = -float(kd_divergence(logits, self.dense_logits()))
        return Score(value, len(self.val_y))


def make_evaluator(score: str | ScoreSpec, data: DataBundle, calib_batches: Sequence[torch.Tensor],
                   val_x: torch.Tensor, val_y: torch.Tensor, precision: str | Precision = "auto", seed: int = 0,
                   structure=None) -> AdaptiveBNEvaluator:
    """The evaluator ``--score`` names, on these calibration batches and held-out tensors; ``structure``
    (a ``ModelStructure``) supplies the dense model for the scores that need it."""
    spec = score if isinstance(score, ScoreSpec) else parse_score(score)
    if spec == ScoreSpec():  # plain adaptive BN: the evaluator Ray workers rebuild
        return AdaptiveBNEvaluator(calib_batches, val_x, val_y, precision=precision)
    dense = layers = None
    if spec.needs_dense:
        if structure is None:
            raise AutopruneError(f"--score {spec} needs the dense model's structure")
        from autoprune.train.reconstruct import input_pruned_layers

        dense = structure.model
        layers = input_pruned_layers(structure) if spec.preparation == "reconstruct" else ()
    return ScoreEvaluator(spec, calib_batches, val_x, val_y, data=data, dense=dense, refit_layers=layers or (),
                          seed=seed, precision=precision)
