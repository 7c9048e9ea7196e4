"""The comparison loop behind ``autoprune compare``: every allocator, same problem, same training recipe.

For each target, one ``PruningProblem`` (fixed calibration and held-out splits) is handed to each
allocator; the allocation is pruned with the problem's criterion, scored with adaptive BN, then
trained with each recipe and tested. Seeds change the fine-tune (data order) and the search of
seeded allocators (random search); deterministic allocators (``seeded = False``) are run once per
target. Rows are appended to ``results.json`` as they finish, so an interrupted run resumes.
"""
from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from autoprune.config import flat_config, nested, save_config
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.errors import AutopruneError
from autoprune.registry import parse_spec
from autoprune.runs import write_json_atomic
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy
from autoprune.train.training import TrainRecipe, train
from autoprune.workspace import WorkspaceOptions

RECIPES = ("finetune", "lr-rewind", "scratch-E", "scratch-B")
RESULT_FORMAT = "autoprune.compare/1"


@dataclass
class CompareConfig:
    output: str  # run directory
    # --model, --checkpoint, --data, ...; --data-seed fixes the validation / calibration split for every seed
    ws: WorkspaceOptions = nested(WorkspaceOptions, exclude=("image_size",), rename={"seed": "data_seed"})
    targets: list[float] = field(default_factory=lambda: [0.5])
    metric: str = "macs"
    criterion: str = "l1"
    allocators: list[str] = field(default_factory=lambda: ["uniform", "global", "sensitivity", "layer-stats",
                                                           "random", "greedy"])
    seeds: list[int] = field(default_factory=lambda: [0])
    recipes: list[str] = field(default_factory=lambda: ["lr-rewind"])
    train: TrainRecipe = nested(TrainRecipe, exclude=("lr", "momentum", "schedule", "warmup_steps", "augment"))
    finetune_lr: float = 0.001  # classic fine-tuning: constant small learning rate
    rewind_lr: float = 0.01  # learning-rate rewinding: cosine from this rate (Renda et al. 2020)
    scratch_lr: float = 0.1
    scratch_epochs: float | None = None  # scratch-E epochs (default: --epochs); scratch-B scales it by dense/pruned MACs
    min_keep: float = 0.2
    max_keep: float = 1.0
    round_to: int = 1


HELP = {
    "output": "run directory (results.csv/json, report.md, plots, allocations)",
    "allocators": "allocator specs: uniform global sensitivity layer-stats random greedy policy:PATH allocation:PATH; "
                  "options as NAME@key=value,key=value (e.g. random@samples=30)",
    "recipes": f"training after pruning, any of {', '.join(RECIPES)}",
    "epochs": "fine-tune epochs (fractions allowed)",
    "targets": "fractions of dense MACs (or params) to keep",
    "train_subset": "train on this many images of the training split (CPU-sized runs)",
}


# -- allocator specs -------------------------------------------------------------------------
def method_labels(specs: list[str]) -> list[str]:
    """Short names for the table: the allocator name (``policy`` for a policy file), unless two specs
    share it (then the full specs, e.g. ``global@normalize=none`` vs ``global@normalize=lamp``)."""
    short = [parse_spec(s)[0].split(":")[0] for s in specs]
    return [sp if short.count(sh) > 1 else sh for sh, sp in zip(short, specs)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def build_allocator(spec: str, seed: int, folder: Path):
    from autoprune.agents import get_allocator

    _, kwargs = parse_spec(spec)
    alloc = get_allocator(spec)
    if hasattr(alloc, "seed") and "seed" not in kwargs:
        alloc.seed = seed
    if hasattr(alloc, "output_dir") and "output_dir" not in kwargs:
        alloc.output_dir = folder
    return alloc


# -- training --------------------------------------------------------------------------------
def recipe_for(cfg: CompareConfig, recipe: str, macs_ratio: float) -> TrainRecipe:
    if recipe == "finetune":
        return replace(cfg.train, lr=cfg.finetune_lr, schedule="constant")
    if recipe == "lr-rewind":
        return replace(cfg.train, lr=cfg.rewind_lr, schedule="cosine")
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
    if cfg.train.epochs <= 0:
        raise AutopruneError(f"--epochs {cfg.train.epochs} must be positive")
    for t in cfg.targets:
        if not 0 < t <= 1:
            raise AutopruneError(f"target {t} is outside (0, 1]: it is the fraction of {cfg.metric} to keep")
    from autoprune.agents import ALLOCATORS

    for spec in cfg.allocators:
        ALLOCATORS.check(spec)
    labels = method_labels(cfg.allocators)
    if len(set(labels)) != len(labels):
        raise AutopruneError(f"allocator list {cfg.allocators} names a method twice")


# -- results file ----------------------------------------------------------------------------
def _comparable(cfg: CompareConfig) -> dict:
    d = flat_config(cfg)  # flat, as results.json has always stored it
    d.pop("output")
    d.pop("device")
    return d


def open_results(cfg: CompareConfig) -> dict:
    """Existing results of the same run (to resume), or a fresh record; refuses to mix runs."""
    path = Path(cfg.output) / "results.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise AutopruneError(f"'{path}' is not valid JSON: move it away or pick another --output") from None
        if old.get("format") != RESULT_FORMAT or old.get("config") != _comparable(cfg):
            raise AutopruneError(f"'{cfg.output}' holds another run (different settings): "
                                 "pick another --output or move that folder away")
        return old
    if Path(cfg.output).exists() and any(Path(cfg.output).iterdir()):
        raise AutopruneError(f"'{cfg.output}' exists and is not a compare run: pick another --output")
    return {"format": RESULT_FORMAT, "config": _comparable(cfg), "dense": None, "rows": [], "allocations": {}}


def save_results(cfg: CompareConfig, record: dict) -> None:
    write_json_atomic(Path(cfg.output) / "results.json", record, indent=1)


def row_key(target: float, method: str, recipe: str, seed: int) -> str:
    return f"{target:g}|{method}|{recipe}|{seed}"


# -- the loop --------------------------------------------------------------------------------
def run_comparison(cfg: CompareConfig, model: nn.Module, data: DataBundle, device: torch.device,
                   evaluator: AdaptiveBNEvaluator, structure_factory: Callable[[], Any],
                   log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the comparison; returns the results record (also in ``cfg.output``)."""
    validate(cfg)
    out = Path(cfg.output)
    record = open_results(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "allocations").mkdir(exist_ok=True)
    yaml_path = out / "config.yaml"
    if not yaml_path.exists():
        save_config(cfg, yaml_path)
    test_x, test_y = data.tensors("test", device)
    val_x, val_y = data.tensors("val", device)
    if record["dense"] is None:
        record["dense"] = {"test_acc": accuracy(model, test_x, test_y), "val_acc": accuracy(model, val_x, val_y)}
        save_results(cfg, record)
    dense_acc = record["dense"]["test_acc"]
    done = {row_key(r["target"], r["method"], r["recipe"], r["seed"]) for r in record["rows"]}
    structure = structure_factory()
    calib = data.calibration_batches(128, device)
    record["dense"].update(macs=structure.dense_macs, params=structure.dense_params)
    for target in cfg.targets:
        problem = PruningProblem(structure, target, metric=cfg.metric, evaluator=evaluator, criterion=cfg.criterion,
                                 calib_batches=calib, min_keep=cfg.min_keep, max_keep=cfg.max_keep,
                                 round_to=cfg.round_to)
        for spec, method in zip(cfg.allocators, method_labels(cfg.allocators)):
            reuse: tuple[Allocation, float] | None = None
            for seed in cfg.seeds:
                todo = [r for r in cfg.recipes if row_key(target, method, r, seed) not in done]
                if not todo:
                    continue
                alloc_file = out / "allocations" / f"{_slug(method)}_t{target:g}_s{seed}.json"
                t0 = time.perf_counter()
                if alloc_file.exists():  # computed before an interruption: do not search again
                    saved = json.loads(alloc_file.read_text())
                    alloc, alloc_seconds = Allocation.from_dict(saved, structure), float(saved["alloc_seconds"])
                elif reuse is not None:
                    alloc, alloc_seconds = reuse
                else:
                    folder = out / "allocators" / f"{_slug(method)}_t{target:g}_s{seed}"
                    allocator = build_allocator(spec, seed, folder)
                    log(f"[{target:g}] {method} seed {seed}: allocating")
                    alloc = allocator.allocate(problem)
                    alloc_seconds = time.perf_counter() - t0
                    if getattr(allocator, "rows", None) and getattr(allocator, "output_dir", None):
                        from autoprune.experiments.plots import plot_sensitivity

                        plot_sensitivity(allocator.rows, Path(allocator.output_dir) / "sensitivity.png")
                    if not getattr(allocator, "seeded", True):
                        reuse = (alloc, alloc_seconds)
                within = problem.feasible(alloc)
                if not within:  # keep the row (hours of work elsewhere in the run) but say so
                    log(f"warning: allocator '{method}' missed the budget at target {target:g} "
                        f"({problem.cost(alloc.counts(structure)) / problem.dense_cost:.4f} of dense)")
                abn = problem.score(alloc)
                alloc.save(alloc_file, structure, method=method, spec=spec, target=target, seed=seed,
                           adaptive_bn_acc=abn, alloc_seconds=alloc_seconds)
                counts = alloc.counts(structure)
                record["allocations"][f"{method}|{target:g}|{seed}"] = {g.name: int(k) / g.channels
                                                                        for g, k in zip(structure.groups, counts)}
                macs, params = structure.macs(counts), structure.params(counts)
                pruned = problem.pruned_model(alloc)
                for recipe_name in todo:
                    net = copy.deepcopy(pruned)
                    if recipe_name.startswith("scratch"):
                        reinitialise(net, seed)
                    recipe = recipe_for(cfg, recipe_name, macs / structure.dense_macs)
                    log(f"[{target:g}] {method} seed {seed}: {recipe_name} ({recipe.epochs:g} epochs)")
                    t1 = time.perf_counter()
                    result = train(net, data, recipe, device=device, seed=seed, macs_per_image=macs, progress=False,
                                   precision=cfg.ws.precision)
                    test_acc = accuracy(net, test_x, test_y)
                    record["rows"].append({
                        "method": method, "spec": spec, "recipe": recipe_name, "seed": seed, "target": target,
                        "macs": macs, "params": params, "macs_ratio": macs / structure.dense_macs,
                        "params_ratio": params / structure.dense_params,
                        "abn_acc": None if recipe_name.startswith("scratch") else abn,
                        "val_acc": accuracy(net, val_x, val_y), "test_acc": test_acc,
                        "drop": 100 * (dense_acc - test_acc), "epochs": recipe.epochs, "within_budget": within,
                        "alloc_seconds": alloc_seconds, "train_seconds": result.seconds,
                        "wall_seconds": alloc_seconds + time.perf_counter() - t1})
                    save_results(cfg, record)
                    log(f"    test {100 * test_acc:.2f}% (adaptive-BN before: {100 * abn:.2f}%)")
    return record


def write_outputs(record: dict, folder: str | Path, title: str = "autoprune compare") -> None:
    """results.csv, report.md, accuracy_vs_macs.png and channels.png from a results record."""
    from autoprune.experiments.plots import plot_accuracy_vs_macs, plot_allocations
    from autoprune.experiments.report import compare_report, write_csv

    folder = Path(folder)
    write_csv(record["rows"], folder / "results.csv")
    (folder / "report.md").write_text(compare_report(record, title) + "\n")
    if record["rows"]:
        plot_accuracy_vs_macs(record["rows"], folder / "accuracy_vs_macs.png", (record["dense"] or {}).get("test_acc"))
    seed0 = min(record["config"]["seeds"])
    chosen = {(k.split("|")[0], float(k.split("|")[1])): v for k, v in record["allocations"].items()
              if int(k.split("|")[2]) == seed0}
    if chosen:
        plot_allocations(chosen, folder / "channels.png")
