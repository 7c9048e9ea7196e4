"""``autoprune apply``: roll a learned policy out on a model and target, prune, optionally fine-tune.

The pipeline is ``autoprune.experiments.apply.run_apply``; this command parses, calls and prints.
"""
from __future__ import annotations

from pathlib import Path

from autoprune.config import add_config_args, resolve_config
from autoprune.experiments.apply import HELP as FIELD_HELP
from autoprune.experiments.apply import ApplyConfig, run_apply
from autoprune.train.scores import parse_score

NAME = "apply"
HELP = "Apply a learned pruning policy (policy.zip from search) to a model and target; prune, fine-tune, save."


def add_arguments(parser) -> None:
    add_config_args(parser, ApplyConfig, FIELD_HELP)


def run(args) -> None:
    cfg = resolve_config(ApplyConfig, args)
    r = run_apply(cfg)
    line = (f"{r['model']}: MACs {r['macs_before']:,} -> {r['macs_after']:,}, params {r['params_before']:,} -> "
            f"{r['params_after']:,} ({100 * r['cost_ratio']:.1f}% of {r['metric']}, target {100 * r['target']:g}%)")
    if cfg.evaluate:
        fmt = parse_score(r["score"]).format
        line += f"; {fmt(r['score_value'])} (uniform {fmt(r['uniform_score_value'])})"
    print(line)
    line = (f"saved {Path(cfg.output) / 'model.pt'}: as loaded from disk, {100 * r['saved_model_val_accuracy']:.2f}% "
            "plain accuracy on the held-out training images")
    if cfg.report_test:
        line += f", {100 * r['saved_model_test_accuracy']:.2f}% on the test split"
    print(line)
