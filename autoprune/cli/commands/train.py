"""``autoprune train``: train or fine-tune a model (dense or pruned) with SGD + cosine.

The pipeline is ``autoprune.experiments.train.run_train``; this command parses, calls and prints
(rank 0 only under torchrun).
"""
from __future__ import annotations

from pathlib import Path

from autoprune.config import add_config_args, resolve_config
from autoprune.experiments.train import HELP as FIELD_HELP
from autoprune.experiments.train import TrainConfig, run_train

NAME = "train"
HELP = "Train or fine-tune a model (dense or pruned) with SGD and a cosine learning rate."


def add_arguments(parser) -> None:
    add_config_args(parser, TrainConfig, FIELD_HELP)


def run(args) -> None:
    cfg = resolve_config(TrainConfig, args)
    summary = run_train(cfg)
    if summary is None:  # not rank 0
        return
    print(f"saved {Path(cfg.output) / 'model.pt'}: val acc {100 * summary['val_acc']:.2f}%")
