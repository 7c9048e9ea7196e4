"""``autoprune prune``: apply an allocation file, a uniform ratio or a share of MACs, report cost before and
after, save.

The pipeline is ``autoprune.experiments.prune.run_prune``; this command parses, calls and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

from autoprune.config import add_config_args, resolve_config
from autoprune.experiments.prune import HELP as FIELD_HELP
from autoprune.experiments.prune import PruneConfig, run_prune

NAME = "prune"
HELP = "Prune a model to an allocation file, a uniform keep ratio or a share of its MACs, and save it."


def add_arguments(parser) -> None:
    add_config_args(parser, PruneConfig, FIELD_HELP)


def run(args) -> None:
    cfg = resolve_config(PruneConfig, args)
    r = run_prune(cfg)
    h, w = r["input_size"]
    bn = "BN recalibrated; " if r["bn_recalibrated"] else ""
    print(f"MACs at {h}x{w} {r['macs_before']:,} -> {r['macs_after']:,} ({100 * r['macs_ratio']:.1f}%), "
          f"params {r['params_before']:,} -> {r['params_after']:,} ({100 * r['params_ratio']:.1f}%); saved "
          f"{Path(cfg.output)} ({bn}as loaded from disk: {100 * r['saved_model_val_acc']:.2f}% held-out accuracy)")
    print(json.dumps(r))
