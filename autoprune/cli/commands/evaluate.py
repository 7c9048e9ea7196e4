"""``autoprune evaluate``: top-1 accuracy of a model or pruned model on a split."""
from __future__ import annotations

import json
from dataclasses import dataclass

from autoprune.config import add_config_args, nested, resolve_config
from autoprune.train.artifacts import split_accuracy
from autoprune.train.evaluator import recalibrate_bn
from autoprune.workspace import INPUT_HELP, WorkspaceOptions

NAME = "evaluate"
HELP = "Top-1 accuracy of a model (or pruned model file) on a data split."


@dataclass
class EvaluateConfig:
    # --model, --checkpoint, --data, ... (accuracy needs no input size for costs)
    ws: WorkspaceOptions = nested(WorkspaceOptions, exclude=("train_subset", "input_size"))
    split: str = "test"
    adaptive_bn: bool = False  # recalibrate BN on the calibration split first (EagleEye)


def add_arguments(parser) -> None:
    add_config_args(parser, EvaluateConfig, {"split": "train, val, calib or test",
                                             "checkpoint": "weights, or a pruned-model file from autoprune",
                                             "image_size": INPUT_HELP["image_size"]})


def run(args) -> None:
    cfg = resolve_config(EvaluateConfig, args)
    ws = cfg.ws.open()
    if cfg.adaptive_bn:
        recalibrate_bn(ws.model, ws.data.calibration_batches(128, ws.device))
    acc = split_accuracy(ws.model, ws.data, cfg.split, ws.device, precision=ws.precision)
    n = len(ws.data.split(cfg.split))
    print(f"{cfg.ws.model} on {cfg.split} ({n} images): top-1 {100 * acc:.2f}%")
    print(json.dumps({"model": cfg.ws.model, "split": cfg.split, "images": n, "top1": acc}))
