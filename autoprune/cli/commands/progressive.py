"""``autoprune progressive``: train-prune-train, the model shrinking on a schedule while it trains.

The pipeline is ``autoprune.experiments.progressive.run_progressive``; this command parses, calls and
prints (rank 0 only under torchrun).
"""
from __future__ import annotations

from pathlib import Path

from autoprune.config import add_config_args, resolve_resumable
from autoprune.core.io import load_pruned
from autoprune.experiments.progressive import HELP as FIELD_HELP
from autoprune.experiments.progressive import ProgressiveConfig, run_progressive
from autoprune.train.artifacts import has_batchnorm

NAME = "progressive"
HELP = "Prune while training: an allocator splits each step's cut, a schedule sets its size."

# options that may differ between a run and its --resume (they do not change the result)
_RESUME_FREE = {"device", "output"}


def add_arguments(parser) -> None:
    add_config_args(parser, ProgressiveConfig, FIELD_HELP)


def run(args) -> None:
    cfg = resolve_resumable(ProgressiveConfig, args, _RESUME_FREE)
    s = run_progressive(cfg)
    if s is None:  # not rank 0
        return
    bn = (f"BN recalibrated; {100 * s['val_acc_training_bn']:.2f}% with training-time BN statistics"
          if has_batchnorm(load_pruned(Path(cfg.output) / "model.pt")[0]) else "no BatchNorm to recalibrate")
    print(f"saved {Path(cfg.output) / 'model.pt'}: MACs {100 * s['macs_ratio']:.1f}% of original at "
          f"{'x'.join(map(str, s['input_size']))} (target {100 * cfg.target:.1f}%), held-out acc {100 * s['val_acc']:.2f}% as loaded from disk ({bn}), "
          f"training {s['train_macs'] / 1e12:.3f} TMACs in {s['seconds']:.0f}s")
    if s["decision"] is not None:
        d = s["decision"]
        print(f"shape decided at epoch {d['epoch']:g} (step {d['step']}, {d['reason']})")
