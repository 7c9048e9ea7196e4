"""The comparison loop behind ``autoprune compare``: every allocator, same problem, same training recipe.

For each target, one ``PruningProblem`` (fixed calibration and held-out splits) is handed to each
allocator; the allocation is pruned with the problem's criterion, scored (``--score``: adaptive BN), then
trained with each recipe and tested. Seeds change the fine-tune (data order) and the search of
seeded allocators (random search, the RL searches: their factory declares ``seeded``, and each gets
the row's seed); deterministic allocators (``seeded = False``) are run once per target. Rows are
appended to ``results.json`` as they finish, so an interrupted run resumes. Allocators that read the
per-group sensitivity (``UsesSensitivity``: ``sensitivity``, the RL searches, ``policy:``) share one
sweep per model and score, measured once and cached in ``sensitivity.json``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from autoprune.agents import Allocator, MeasuresSensitivity, UsesSensitivity, allocator_factory, get_allocator
from autoprune.config import flat_config, save_config
from autoprune.core.allocation import Allocation
from autoprune.core.criteria import group_scores
from autoprune.core.io import load_model
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import channels_to_remove
from autoprune.core.finalists import rerank
from autoprune.core.scoring import Evaluator, Scorer
from autoprune.core.sensitivity import SensitivityTable, cached_sensitivity
from autoprune.deploy.latency import latency_table
from autoprune.errors import AutopruneError
from autoprune.experiments.compare_config import (
    CompareConfig,
    method_labels,
    recipe_for,
    reinitialise,
    rewind_checkpoint,
    validate,
)
from autoprune.registry import parse_spec
from autoprune.runs import write_json_atomic
from autoprune.train import distributed
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy
from autoprune.train.scores import format_score
from autoprune.train.training import train

RESULT_FORMAT = "autoprune.compare/1"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def build_allocator(spec: str, seed: int) -> Allocator:
    """The allocator ``spec`` names; a seeded one gets ``seed`` unless the spec sets its own."""
    _, options = parse_spec(spec)
    extra = {"seed": seed} if allocator_factory(spec).seeded and "seed" not in options else {}
    return get_allocator(spec, **extra)


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
        old_config, new_config = old.get("config", {}), _comparable(cfg)
        defaults = {f.name: f.default for f in dataclasses.fields(CompareConfig)}
        # options added since that run was written count as equal when left at their defaults
        new_config = {k: v for k, v in new_config.items() if k in old_config or v != defaults.get(k)}
        if old.get("format") != RESULT_FORMAT or old_config != new_config:
            raise AutopruneError(f"'{cfg.output}' holds another run (different settings): "
                                 "pick another --output or move that folder away")
        return old
    if Path(cfg.output).exists() and any(Path(cfg.output).iterdir()):
        raise AutopruneError(f"'{cfg.output}' exists and is not a compare run: pick another --output")
    return {"format": RESULT_FORMAT, "config": _comparable(cfg), "dense": None, "rows": [], "allocations": {}}


def save_results(cfg: CompareConfig, record: dict) -> None:
    if distributed.is_main():
        write_json_atomic(Path(cfg.output) / "results.json", record, indent=1)


def row_key(target: float, method: str, recipe: str, seed: int) -> str:
    return f"{target:g}|{method}|{recipe}|{seed}"


# -- the loop --------------------------------------------------------------------------------
def run_compare(cfg: CompareConfig) -> dict:
    """The whole ``autoprune compare``: check, open the model and data, run (or resume) every row, and
    (rank 0) write results.csv/json, report.md and the plots; returns the results record."""
    validate(cfg)
    open_results(cfg)  # refuse a folder holding another run before loading anything
    ws = cfg.ws.open()
    finalist = ws.evaluator(score=cfg.finalist_score, seed=cfg.ws.seed) if cfg.finalists else None
    record = run_comparison(cfg, ws.model, ws.data, ws.device, ws.evaluator(score=cfg.score, seed=cfg.ws.seed),
                            ws.structure, finalist_evaluator=finalist)
    if distributed.is_main():  # under torchrun, rank 0 writes
        write_outputs(record, cfg.output)
    return record


def run_comparison(cfg: CompareConfig, model: nn.Module, data: DataBundle, device: torch.device,
                   evaluator: AdaptiveBNEvaluator, structure_factory: Callable[[], Any],
                   log: Callable[[str], None] = print, finalist_evaluator: Evaluator | None = None) -> dict:
    """Run (or resume) the comparison; returns the results record (also in ``cfg.output``). With
    ``cfg.finalists``, an allocator that scored several feasible candidates gets the search's finalists
    stage: its K best re-scored by ``finalist_evaluator``, the best of those kept (random and RL alike)."""
    validate(cfg)
    main = distributed.is_main()  # under torchrun: every rank trains, rank 0 allocates, logs and writes
    if cfg.metric == "latency" and distributed.active():
        raise AutopruneError("--metric latency measures timings that differ between processes: run it without torchrun")
    log = log if main else (lambda _: None)
    out = Path(cfg.output)
    record = open_results(cfg)
    distributed.barrier()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "allocations").mkdir(exist_ok=True)
        if not (out / "config.yaml").exists():
            save_config(cfg, out / "config.yaml")
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
    latency = (latency_table(structure, cfg.latency_batch, cfg.latency_precision, cfg.round_to)
               if cfg.metric == "latency" else None)
    base = PruningProblem(structure, cfg.targets[0], metric=cfg.metric, criterion=cfg.criterion, latency=latency,
                          calib_batches=calib, min_keep=cfg.min_keep, max_keep=cfg.max_keep, round_to=cfg.round_to)
    # one scorer (and pool) for every target; allocators run on rank 0 only
    scorer = Scorer(base, evaluator, pool=cfg.parallel.pool(base, evaluator) if main else None)
    finalist_scorer = Scorer(base, finalist_evaluator) if cfg.finalists and finalist_evaluator is not None else None
    tables: dict[tuple[float, ...], SensitivityTable] = {}

    def share_sensitivity(allocator: Allocator) -> None:
        """Hand a sensitivity-reading allocator the run's table (one sweep per run: it does not depend on
        the target), unless it brings its own (``sensitivity@table=PATH``)."""
        if not isinstance(allocator, UsesSensitivity) or allocator.sensitivity is not None \
                or getattr(allocator, "table_path", None) is not None:
            return
        rates = tuple(sorted(allocator.rates))
        if rates not in tables:
            tables[rates] = cached_sensitivity(out, base, scorer, model=cfg.ws.model, ratios=rates)
        allocator.sensitivity = tables[rates]

    if main:  # a table brought by one allocator (sensitivity@table=PATH) serves every other one too
        for spec in cfg.allocators:
            if "table" in parse_spec(spec)[1]:
                given = build_allocator(spec, cfg.seeds[0])
                if isinstance(given, UsesSensitivity) and hasattr(given, "table"):
                    tables.setdefault(tuple(sorted(given.rates)), given.table(base, scorer))
    for target in cfg.targets:
        problem = base.with_target(target)
        for spec, method in zip(cfg.allocators, method_labels(cfg.allocators)):
            reuse: tuple[Allocation, float] | None = None
            for seed in cfg.seeds:
                todo = [r for r in cfg.recipes if row_key(target, method, r, seed) not in done]
                if not todo:
                    continue
                alloc_file = out / "allocations" / f"{_slug(method)}_t{target:g}_s{seed}.json"
                t0 = time.perf_counter()
                def choose() -> tuple[Allocation, float, bool]:
                    """(allocation, seconds, reusable for the other seeds); on rank 0 only under DDP."""
                    if alloc_file.exists():  # computed before an interruption: do not search again
                        saved = json.loads(alloc_file.read_text())
                        return Allocation.from_dict(saved, structure), float(saved["alloc_seconds"]), False
                    if reuse is not None:
                        return reuse[0], reuse[1], False
                    allocator = build_allocator(spec, seed)
                    share_sensitivity(allocator)
                    log(f"[{target:g}] {method} seed {seed}: allocating")
                    mark = len(scorer.requested)
                    alloc = allocator.allocate(problem, scorer)
                    if finalist_scorer is not None and len(set(scorer.requested[mark:])) > 1:
                        scorer.value(alloc)  # the allocator's own pick is always a candidate
                        ranked = rerank(problem, scorer, finalist_scorer, cfg.finalists,
                                        keys=scorer.requested[mark:], also=getattr(allocator, "heuristics", ()))
                        log(f"[{target:g}] {method} seed {seed}: {len(ranked)} finalists re-scored by "
                            f"{cfg.finalist_score}")
                        alloc = ranked[0].allocation
                    if isinstance(allocator, MeasuresSensitivity) and allocator.rows:
                        from autoprune.experiments.plots import plot_sensitivity

                        folder = out / "allocators" / f"{_slug(method)}_t{target:g}_s{seed}"
                        allocator.save(folder)
                        plot_sensitivity(allocator.rows, folder / "sensitivity.png")
                    return alloc, time.perf_counter() - t0, not allocator_factory(spec).seeded

                alloc, alloc_seconds, reusable = distributed.from_main(choose)
                if reusable:
                    reuse = (alloc, alloc_seconds)
                within = problem.feasible(alloc)
                if not within:  # keep the row (hours of work elsewhere in the run) but say so
                    log(f"warning: allocator '{method}' missed the budget at target {target:g} "
                        f"({problem.cost(alloc.counts(structure)) / problem.dense_cost:.4f} of dense)")
                score_value = scorer.value(alloc)
                if main:
                    alloc.save(alloc_file, structure, method=method, spec=spec, target=target, seed=seed,
                               score_value=score_value, alloc_seconds=alloc_seconds)
                counts = alloc.counts(structure)
                record["allocations"][f"{method}|{target:g}|{seed}"] = {g.name: int(k) / g.channels
                                                                        for g, k in zip(structure.groups, counts)}
                macs, params = structure.macs(counts), structure.params(counts)
                pruned = problem.pruned_model(alloc)
                for recipe_name in todo:
                    net = copy.deepcopy(pruned)
                    if recipe_name.startswith("scratch"):
                        reinitialise(net, seed)
                    elif recipe_name == "weight-rewind":  # the same channels, their values from the rewind epoch
                        net = rewound(cfg, problem, alloc, data.num_classes).to(device)
                    recipe = recipe_for(cfg, recipe_name, macs / structure.dense_macs)
                    log(f"[{target:g}] {method} seed {seed}: {recipe_name} ({recipe.epochs:g} epochs)")
                    t1 = time.perf_counter()
                    result = train(net, data, recipe, device=device, seed=seed, macs_per_image=macs, progress=False,
                                   precision=cfg.ws.precision, teacher=model if recipe.kd_weight else None)
                    test_acc = accuracy(net, test_x, test_y)
                    record["rows"].append({
                        "method": method, "spec": spec, "recipe": recipe_name, "seed": seed, "target": target,
                        "macs": macs, "params": params, "macs_ratio": macs / structure.dense_macs,
                        "params_ratio": params / structure.dense_params,
                        "score_value": None if recipe_name.startswith("scratch") else score_value,
                        "finalist_score_value": (finalist_scorer.value(alloc) if finalist_scorer is not None
                                                 and not recipe_name.startswith("scratch") else None),
                        "val_acc": accuracy(net, val_x, val_y), "test_acc": test_acc,
                        "drop": 100 * (dense_acc - test_acc), "epochs": recipe.epochs, "within_budget": within,
                        "alloc_seconds": alloc_seconds, "train_seconds": result.seconds,
                        "wall_seconds": alloc_seconds + time.perf_counter() - t1})
                    save_results(cfg, record)
                    log(f"    test {100 * test_acc:.2f}% ({evaluator.kind} before: {format_score(evaluator.kind, score_value)})")
    if scorer.pool is not None:
        scorer.pool.close()
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


def rewound(cfg: CompareConfig, problem: PruningProblem, alloc: Allocation, num_classes: int) -> nn.Module:
    """``alloc`` pruned as ``problem`` prunes it (channels chosen on the final dense weights), with the
    kept channels' values taken from the dense run's checkpoint at ``--rewind-to``."""
    structure = problem.structure
    scores = group_scores(structure, problem.criterion, problem.calib_batches)
    remove = channels_to_remove(structure, alloc.counts(structure), scores)
    early = load_model(cfg.ws.model, num_classes, rewind_checkpoint(cfg)).to(next(structure.model.parameters()).device)
    return structure.prune_copy(remove, model=early)
