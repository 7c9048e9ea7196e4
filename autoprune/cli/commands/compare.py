"""``autoprune compare``: every allocator on the same model, target, criterion and training recipe."""
from __future__ import annotations

from pathlib import Path

from autoprune.config import add_config_args, resolve_config
from autoprune.experiments.compare_config import HELP as FIELD_HELP
from autoprune.experiments.compare_config import CompareConfig, validate
from autoprune.experiments.comparison import open_results, run_comparison, write_outputs
from autoprune.train import distributed

NAME = "compare"
HELP = "Compare budget allocators (heuristics, random search, learned policies) after fine-tuning, over seeds."


def add_arguments(parser) -> None:
    add_config_args(parser, CompareConfig, FIELD_HELP)


def run(args) -> None:
    cfg = resolve_config(CompareConfig, args)
    validate(cfg)
    open_results(cfg)  # refuse a folder holding another run before loading anything
    ws = cfg.ws.open()
    record = run_comparison(cfg, ws.model, ws.data, ws.device, ws.evaluator(score=cfg.score, seed=cfg.ws.seed),
                            ws.structure)
    if distributed.is_main():  # under torchrun, rank 0 writes
        write_outputs(record, cfg.output)
        print((Path(cfg.output) / "report.md").read_text())
