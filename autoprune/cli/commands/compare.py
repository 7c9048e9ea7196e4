"""``autoprune compare``: every allocator on the same model, target, criterion and training recipe.

The pipeline is ``autoprune.experiments.comparison.run_compare``; this command parses, calls and prints.
"""
from __future__ import annotations

from pathlib import Path

from autoprune.config import add_config_args, resolve_config
from autoprune.experiments.compare_config import HELP as FIELD_HELP
from autoprune.experiments.compare_config import CompareConfig
from autoprune.experiments.comparison import run_compare
from autoprune.train import distributed

NAME = "compare"
HELP = "Compare budget allocators (heuristics, random search, learned policies) after fine-tuning, over seeds."


def add_arguments(parser) -> None:
    add_config_args(parser, CompareConfig, FIELD_HELP)


def run(args) -> None:
    cfg = resolve_config(CompareConfig, args)
    run_compare(cfg)
    if distributed.is_main():
        print((Path(cfg.output) / "report.md").read_text())
