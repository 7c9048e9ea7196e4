"""What ``autoprune compare`` runs: its config, the training recipes it compares, and their checks."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.config import nested
from autoprune.core.problem import METRICS
from autoprune.errors import AutopruneError
from autoprune.registry import parse_spec
from autoprune.train.scores import DEFAULT_SCORE
from autoprune.train.training import TrainRecipe, check_distillation
from autoprune.workspace import INPUT_HELP, PARALLEL_HELP, ParallelOptions, WorkspaceOptions

RECIPES = ("finetune", "lr-rewind", "lr-rewind-kd", "weight-rewind", "scratch-E", "scratch-B")


@dataclass
class CompareConfig:
    output: str  # run directory
    # --model, --checkpoint, --data, ...; --data-seed fixes the validation / calibration split for every seed
    ws: WorkspaceOptions = nested(WorkspaceOptions, rename={"seed": "data_seed"})
    parallel: ParallelOptions = nested(ParallelOptions)  # --workers, --ray-address: allocators score on Ray
    targets: list[float] = field(default_factory=lambda: [0.5])
    metric: str = "macs"  # macs | params | latency
    latency_batch: int = 1
    latency_precision: str = "fp32"
    criterion: str = "l1"
    score: str = DEFAULT_SCORE  # autoprune.train.scores: adaptive-bn[:loss|:kd], reconstruct, finetune[-kd]:STEPS
    allocators: list[str] = field(default_factory=lambda: ["uniform", "global", "sensitivity", "layer-stats",
                                                           "random", "greedy"])
    seeds: list[int] = field(default_factory=lambda: [0])
    recipes: list[str] = field(default_factory=lambda: ["lr-rewind"])
    train: TrainRecipe = nested(TrainRecipe, exclude=("lr", "momentum", "schedule", "warmup_steps", "augment",
                                                      "kd_weight", "kd_temperature"))
    finetune_lr: float = 0.001  # classic fine-tuning: constant small learning rate
    rewind_lr: float = 0.01  # learning-rate rewinding: cosine from this rate (Renda et al. 2020)
    scratch_lr: float = 0.1
    finalists: int = 3  # re-rank a searching allocator's K best candidates with --finalist-score (0: off)
    finalist_score: str = "finetune:50"  # the same stage as search, so random search gets it too
    kd_weight: float = 0.9  # lr-rewind-kd: loss = (1 - w) x cross-entropy + w x T^2 x KL(dense || pruned)
    kd_temperature: float = 4.0
    rewind_to: int | None = None  # weight-rewind: the epoch of the dense run's checkpoints/epoch-K.pt
    scratch_epochs: float | None = None  # scratch-E epochs (default: --epochs); scratch-B scales it by dense/pruned MACs
    min_keep: float = 0.2
    max_keep: float = 1.0
    round_to: int = 1


HELP = {
    **PARALLEL_HELP,
    **INPUT_HELP,
    "metric": "budget metric: macs, params or latency (measured lookup table at --latency-batch / --latency-precision)",
    "output": "run directory (results.csv/json, report.md, plots, allocations)",
    "allocators": "allocator specs: uniform global sensitivity layer-stats random greedy policy:PATH allocation:PATH; "
                  "options as NAME@key=value,key=value (e.g. random@samples=30). sensitivity, the RL agents and "
                  "policy:PATH share one sensitivity sweep per run (sensitivity.json); sensitivity@table=PATH reuses "
                  "a search's (its run folder's sensitivity.json, same score and model)",
    "score": "what allocators score candidates by and the report's pre-training column: adaptive-bn (EagleEye), "
             "reconstruct, finetune:STEPS, finetune-kd:STEPS, optionally :loss or :kd (see search --help)",
    "recipes": f"training after pruning, any of {', '.join(RECIPES)}",
    "epochs": "fine-tune epochs (fractions allowed)",
    "finalists": "give every allocator that scores several candidates (random, RL, greedy) the search's finalists "
                 "stage: its K best distinct feasible candidates (and an RL search's sensitivity and uniform starting "
                 "points) re-scored by --finalist-score, the best kept. 0: off",
    "finalist_score": "the score that re-ranks the finalists (any --score value)",
    "kd_weight": "lr-rewind-kd recipe: weight of the distillation term (KL to the dense model's outputs) against "
                 "the label loss, in [0, 1]",
    "kd_temperature": "lr-rewind-kd recipe: softmax temperature of the distillation term",
    "targets": "fractions of dense MACs (or params) to keep",
    "train_subset": "train on this many images of the training split (CPU-sized runs)",
    "rewind_to": "weight-rewind recipe: the kept channels restart from the dense run's weights at this epoch "
                 "(checkpoints/epoch-K.pt beside --checkpoint, kept by autoprune train --save-every N), then the "
                 "LR-rewinding schedule",
}


# -- allocator specs -------------------------------------------------------------------------
def method_labels(specs: list[str]) -> list[str]:
    """Short names for the table: the allocator name (``policy`` for a policy file), unless two specs
    share it (then the full specs, e.g. ``global@normalize=none`` vs ``global@normalize=lamp``)."""
    short = [parse_spec(s)[0].split(":")[0] for s in specs]
    return [sp if short.count(sh) > 1 else sh for sh, sp in zip(short, specs)]



def recipe_for(cfg: CompareConfig, recipe: str, macs_ratio: float) -> TrainRecipe:
    if recipe == "finetune":
        return replace(cfg.train, lr=cfg.finetune_lr, schedule="constant")
    if recipe in ("lr-rewind", "weight-rewind"):  # weight rewinding replays the LR-rewinding schedule
        return replace(cfg.train, lr=cfg.rewind_lr, schedule="cosine")
    if recipe == "lr-rewind-kd":  # LR rewinding distilled from the dense model
        return replace(cfg.train, lr=cfg.rewind_lr, schedule="cosine", kd_weight=cfg.kd_weight,
                       kd_temperature=cfg.kd_temperature)
    scratch = cfg.scratch_epochs if cfg.scratch_epochs is not None else cfg.train.epochs
    if recipe == "scratch-E":
        return replace(cfg.train, epochs=scratch, lr=cfg.scratch_lr, schedule="cosine")
    if recipe == "scratch-B":  # same training MACs as scratch-E on the dense model (Liu et al. 2019)
        return replace(cfg.train, epochs=scratch / macs_ratio, lr=cfg.scratch_lr, schedule="cosine")
    raise AutopruneError(f"unknown recipe '{recipe}': use any of {', '.join(RECIPES)}")


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Same architecture, fresh weights (conv/linear Kaiming-normal as in the CIFAR ResNets, BN reset)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "reset_parameters"):  # BatchNorm: gamma 1, beta 0, running statistics reset
            m.reset_parameters()
    return model


def validate(cfg: CompareConfig) -> None:
    if not cfg.allocators:
        raise AutopruneError("no allocators given: pass --allocators uniform global ...")
    if not cfg.seeds:
        raise AutopruneError("no seeds given: pass --seeds 0 1 2")
    bad = [r for r in cfg.recipes if r not in RECIPES]
    if bad:
        raise AutopruneError(f"unknown recipe(s) {bad}: use any of {', '.join(RECIPES)}")
    if "weight-rewind" in cfg.recipes:
        rewind_checkpoint(cfg)  # fails now, not after hours of other rows
    from autoprune.train.scores import parse_score

    parse_score(cfg.score)  # a bad --score fails before any data is read
    if cfg.train.epochs <= 0:
        raise AutopruneError(f"--epochs {cfg.train.epochs} must be positive")
    check_distillation(cfg.kd_weight, cfg.kd_temperature)
    from autoprune.core.finalists import check_finalists

    check_finalists(cfg.finalists, cfg.finalist_score)
    for t in cfg.targets:
        if not 0 < t <= 1:
            raise AutopruneError(f"target {t} is outside (0, 1]: it is the fraction of {cfg.metric} to keep")
    if cfg.metric not in METRICS:
        raise AutopruneError(f"unknown --metric '{cfg.metric}': use one of {', '.join(METRICS)}")
    from autoprune.agents import ALLOCATORS

    for spec in cfg.allocators:
        ALLOCATORS.check(spec)
    labels = method_labels(cfg.allocators)
    if len(set(labels)) != len(labels):
        raise AutopruneError(f"allocator list {cfg.allocators} names a method twice")


def rewind_checkpoint(cfg: CompareConfig) -> Path:
    """The dense run's kept weights at ``--rewind-to`` (written by ``autoprune train --save-every``)."""
    if cfg.rewind_to is None:
        raise AutopruneError("--recipes weight-rewind needs --rewind-to EPOCH (a checkpoint kept by "
                             "autoprune train --save-every N)")
    if cfg.ws.checkpoint is None:
        raise AutopruneError("weight rewinding needs --checkpoint: the model.pt of an autoprune train run")
    path = Path(cfg.ws.checkpoint).parent / "checkpoints" / f"epoch-{cfg.rewind_to}.pt"
    if not path.is_file():
        raise AutopruneError(f"checkpoint '{cfg.ws.checkpoint}' has no training history at epoch {cfg.rewind_to} "
                             f"({path} is missing): train it with autoprune train --save-every N")
    return path
