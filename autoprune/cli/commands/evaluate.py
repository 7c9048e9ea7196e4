"""``autoprune evaluate``: top-1 accuracy of a model or pruned model on a split."""
from __future__ import annotations

import json
from dataclasses import dataclass

from autoprune.config import add_config_args, resolve_config
from autoprune.train.evaluator import accuracy, recalibrate_bn
from autoprune.workspace import DEFAULT_DATA, open_workspace

NAME = "evaluate"
HELP = "Top-1 accuracy of a model (or pruned model file) on a data split."


@dataclass
class EvaluateConfig:
    model: str
    checkpoint: str | None = None
    data: str = DEFAULT_DATA
    split: str = "test"
    adaptive_bn: bool = False  # recalibrate BN on the calibration split first (EagleEye)
    val_size: int = 5000
    calib_size: int = 2048
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autoprune.precision)


def add_arguments(parser) -> None:
    add_config_args(parser, EvaluateConfig, {"split": "train, val, calib or test",
                                             "checkpoint": "weights, or a pruned-model file from autoprune"})


def run(args) -> None:
    cfg = resolve_config(EvaluateConfig, args)
    ws = open_workspace(cfg.model, cfg.checkpoint, cfg.data, val_size=cfg.val_size, calib_size=cfg.calib_size,
                        seed=cfg.seed, device=cfg.device, precision=cfg.precision)
    if cfg.adaptive_bn:
        recalibrate_bn(ws.model, ws.data.calibration_batches(128, ws.device))
    x, y = ws.data.tensors(cfg.split, ws.device)
    acc = accuracy(ws.model, x, y, precision=ws.precision)
    print(f"{cfg.model} on {cfg.split} ({len(y)} images): top-1 {100 * acc:.2f}%")
    print(json.dumps({"model": cfg.model, "split": cfg.split, "images": len(y), "top1": acc}))
