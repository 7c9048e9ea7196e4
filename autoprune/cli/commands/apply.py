"""``autoprune apply``: roll a learned policy out on a model and target, prune, optionally fine-tune, export."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoprune.config import add_config_args, flat_config, nested, resolve_config, save_config
from autoprune.experiments.targets import HELP as TARGET_HELP
from autoprune.experiments.targets import TargetOptions
from autoprune.runs import check_run_dir
from autoprune.train.training import TrainRecipe
from autoprune.workspace import WorkspaceOptions

NAME = "apply"
HELP = "Apply a learned pruning policy (policy.zip from search) to a model and target; prune, fine-tune, save."


@dataclass
class ApplyConfig:
    policy: str
    output: str
    ws: WorkspaceOptions = nested(WorkspaceOptions, val_size=2000, calib_size=1024)  # --model, --checkpoint, --data, ...
    target: TargetOptions = nested(TargetOptions)  # --macs | --params | --latency, --latency-batch, ...
    criterion: str = "l1"
    min_keep: float | None = None  # default: the bounds the policy was trained with
    max_keep: float | None = None
    round_to: int = 1
    evaluate: bool = True
    report_test: bool = False
    finetune: TrainRecipe = nested(TrainRecipe, exclude=("momentum", "schedule", "warmup_steps", "bn_l1", "augment"),
                                   rename={"epochs": "finetune_epochs"}, epochs=0.0)


_HELP = {
    "policy": "policy.zip written by autoprune search (read without unpickling: safe to take from others)",
    "output": "directory for model.pt, allocation.json, report.json (must be new or empty)",
    **TARGET_HELP,
    "evaluate": "report adaptive-BN accuracy of the policy's allocation and of uniform at the same cost",
    "report_test": "also score the saved model on the test split (decodes test/)",
    "finetune_epochs": "epochs of fine-tuning after pruning (0: none)",
    "image_size": "resize images (e.g. 224 for torchvision models); None keeps the stored size",
}


def add_arguments(parser) -> None:
    add_config_args(parser, ApplyConfig, _HELP)


def run(args) -> None:
    cfg = resolve_config(ApplyConfig, args)
    metric, target = cfg.target.resolve()
    out = Path(cfg.output)
    check_run_dir(out, resumable=False)

    from autoprune.agents.policy import PolicyAllocator
    from autoprune.agents.uniform import UniformAllocator
    from autoprune.core.cost import measure_cost
    from autoprune.train.artifacts import save_calibrated
    from autoprune.train.evaluator import accuracy
    from autoprune.train.training import train

    allocator = PolicyAllocator(cfg.policy)  # a corrupt policy fails before any data is loaded
    min_keep = cfg.min_keep if cfg.min_keep is not None else float(allocator.meta["min_keep"])
    max_keep = cfg.max_keep if cfg.max_keep is not None else float(allocator.meta["max_keep"])
    ws = cfg.ws.open()
    structure = ws.structure()
    calib = ws.calibration()
    problem = ws.problem(target, metric, criterion=cfg.criterion, min_keep=min_keep, max_keep=max_keep,
                         round_to=cfg.round_to, latency=cfg.target.table(structure, cfg.round_to))
    allocation, latency_fit = cfg.target.fit(problem, allocator.allocate(problem))
    cost_ratio = problem.cost(allocation.counts(structure)) / problem.dense_cost
    pruned = problem.pruned_model(allocation)
    x1 = ws.data.tensors("val")[0][:1].to(ws.device)
    (macs0, params0), (macs1, params1) = measure_cost(ws.model, x1), measure_cost(pruned, x1)
    report: dict = {"precision": ws.precision.name, "policy": cfg.policy, "policy_trained_on": allocator.meta,
                    "model": cfg.ws.model, "metric": metric,
                    "target": target, "cost_ratio": cost_ratio, "meets_target": problem.feasible(allocation),
                    "macs_before": macs0, "macs_after": macs1, "params_before": params0, "params_after": params1,
                    "config": flat_config(cfg)}
    if cfg.evaluate:
        uniform = UniformAllocator().allocate(problem)
        scorer = ws.scorer(problem)
        report["adaptive_bn_accuracy"] = scorer.value(allocation)
        report["uniform_adaptive_bn_accuracy"] = scorer.value(uniform)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.finetune.epochs > 0:
        from autoprune.train.evaluator import recalibrate_bn

        recalibrate_bn(pruned, calib)  # start fine-tuning from recalibrated BN statistics, as scored
        recipe = cfg.finetune
        result = train(pruned, ws.data, recipe, device=ws.device, precision=ws.precision, seed=cfg.ws.seed,
                       log_dir=out / "tb",
                       macs_per_image=macs1)
        report["finetune"] = {"epochs": recipe.epochs, "steps": result.steps, "seconds": result.seconds}
    vx, vy = ws.data.tensors("val", ws.device)
    report["saved_model_val_accuracy"], saved = save_calibrated(
        pruned, cfg.ws.model, ws.data.num_classes, out / "model.pt", calib, vx, vy, criterion=cfg.criterion,
        policy=cfg.policy)
    if problem.latency is not None:
        report["latency"] = cfg.target.measured(saved, structure.model, problem.latency, allocation.counts(structure))
        report["latency_fit"] = latency_fit
    if cfg.report_test:
        report["saved_model_test_accuracy"] = accuracy(saved, *ws.data.tensors("test", ws.device))
    allocation.save(out / "allocation.json", structure, metric=metric, target=target)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    line = (f"{cfg.ws.model}: MACs {macs0:,} -> {macs1:,}, params {params0:,} -> {params1:,} "
            f"({100 * cost_ratio:.1f}% of {metric}, target {100 * target:g}%)")
    if cfg.evaluate:
        line += (f"; adaptive-BN accuracy {100 * report['adaptive_bn_accuracy']:.2f}% "
                 f"(uniform {100 * report['uniform_adaptive_bn_accuracy']:.2f}%)")
    print(line)
    line = (f"saved {out / 'model.pt'}: as loaded from disk, {100 * report['saved_model_val_accuracy']:.2f}% plain "
            "accuracy on the held-out training images")
    if cfg.report_test:
        line += f", {100 * report['saved_model_test_accuracy']:.2f}% on the test split"
    print(line)
