"""``run_apply(config)``: a learned policy rolled out on a model and target, pruned, optionally
fine-tuned, saved as it was scored (the pipeline behind ``autoprune apply``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoprune.config import flat_config, nested, save_config
from autoprune.experiments.targets import HELP as TARGET_HELP
from autoprune.experiments.targets import TargetOptions
from autoprune.runs import check_run_dir
from autoprune.train.training import TrainRecipe
from autoprune.workspace import INPUT_HELP, WorkspaceOptions


# the fine-tune distils from the dense model by default: on ResNet-20 (bench/results/final-quality.json, round 2)
# LR rewinding with it scored +1.21 to +2.02 points at 30% of MACs (7 allocation-seed pairs) and +0.45 to +0.96
# at 50% (6) over plain LR rewinding, for 1.1-1.7x the fine-tune's CPU time (the dense model's forward pass)
KD_WEIGHT = 0.9


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
    score: str | None = None  # autoprune.train.scores; default: the score the policy was trained with
    report_test: bool = False
    sensitivity: str | None = None  # a sensitivity.json measured before with the same score: its sweep is reused
    finetune: TrainRecipe = nested(TrainRecipe, exclude=("momentum", "schedule", "warmup_steps", "bn_l1", "augment"),
                                   rename={"epochs": "finetune_epochs"}, epochs=0.0, kd_weight=KD_WEIGHT)


HELP = {
    "policy": "policy.zip written by autoprune search (read without unpickling: safe to take from others); it reads "
              "each group's sensitivity, measured first with --score (one sweep: dense + 4 keep ratios per group)",
    "output": "directory for model.pt, allocation.json, report.json (must be new or empty)",
    **TARGET_HELP,
    "evaluate": "report the --score of the policy's allocation and of uniform at the same cost",
    "score": "what the policy's sensitivity features and the allocation are scored by (see search --help); when not "
             "given, the score the policy was trained with (adaptive-bn for policies that do not say); with reconstruct or "
             "finetune:STEPS and no --finetune-epochs the saved model is the one scored (refitted or fine-tuned); "
             "--finetune-epochs starts from the plain pruned weights, BN recalibrated, which fine-tune better",
    "report_test": "also score the saved model on the test split (decodes test/)",
    "sensitivity": "reuse the sensitivity sweep in this sensitivity.json (a search's, compare's or apply's output "
                   "folder: same model and --score); the sweep is written to OUTPUT/sensitivity.json either way",
    "finetune_epochs": "epochs of fine-tuning after pruning (0: none)",
    "kd_weight": "the fine-tune distils from the dense model: weight of the KL term to its outputs against the label "
                 "loss, in [0, 1] (0: plain LR rewinding, up to 1.7x faster; distilled scored +1.2 to +2.0 points "
                 "at 30% of MACs on ResNet-20)",
    "kd_temperature": "softmax temperature of the distillation term",
    **INPUT_HELP,
}


def run_apply(cfg: ApplyConfig) -> dict:
    """Prune ``cfg.ws.model`` with the policy and write ``model.pt``, ``allocation.json``, ``report.json``
    into ``cfg.output``; returns the report."""
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.core.cost import measure_cost
    from autoprune.core.problem import uniform_allocation
    from autoprune.core.sensitivity import cached_sensitivity, load_tables
    from autoprune.train.artifacts import save_calibrated, split_accuracy
    from autoprune.train.evaluator import recalibrate_bn
    from autoprune.train.scores import parse_score
    from autoprune.train.training import train

    if cfg.score is not None:
        parse_score(cfg.score)  # a bad score fails before any data is loaded
    metric, target = cfg.target.resolve()
    out = Path(cfg.output)
    check_run_dir(out, resumable=False)
    allocator = PolicyAllocator(cfg.policy)  # a corrupt policy fails before any data is loaded
    score = cfg.score or allocator.score
    spec = parse_score(score)
    if cfg.sensitivity is not None:
        load_tables(cfg.sensitivity)  # so does a missing or foreign sensitivity file
    min_keep = cfg.min_keep if cfg.min_keep is not None else float(allocator.meta["min_keep"])
    max_keep = cfg.max_keep if cfg.max_keep is not None else float(allocator.meta["max_keep"])
    ws = cfg.ws.open()
    structure = ws.structure()
    calib = ws.calibration()
    problem = ws.problem(target, metric, criterion=cfg.criterion, min_keep=min_keep, max_keep=max_keep,
                         round_to=cfg.round_to, latency=cfg.target.table(structure, cfg.round_to))
    scorer = ws.scorer(problem, score, seed=cfg.ws.seed)  # the policy reads the model's sensitivity, measured by it
    allocator.sensitivity = cached_sensitivity(out, problem, scorer, model=cfg.ws.model, reuse=cfg.sensitivity)
    allocation, latency_fit = cfg.target.fit(problem, allocator.allocate(problem, scorer))
    cost_ratio = problem.cost(allocation.counts(structure)) / problem.dense_cost
    pruned = problem.pruned_model(allocation)
    x1 = ws.example_input()
    (macs0, params0), (macs1, params1) = measure_cost(ws.model, x1), measure_cost(pruned, x1)
    report: dict = {"precision": ws.precision.name, "policy": cfg.policy, "policy_trained_on": allocator.meta,
                    "model": cfg.ws.model, "metric": metric, "input_size": list(ws.input_size),
                    "target": target, "cost_ratio": cost_ratio, "meets_target": problem.feasible(allocation),
                    "macs_before": macs0, "macs_after": macs1, "params_before": params0, "params_after": params1,
                    "config": flat_config(cfg)}
    if cfg.evaluate:
        report.update(score=score, score_value=scorer.value(allocation),
                      uniform_score_value=scorer.value(uniform_allocation(problem)))
    # without fine-tuning, the model that was scored (refitted / briefly fine-tuned) is what is saved; fine-tuning
    # starts from the plain pruned weights with BN recalibrated, which train better than refitted ones
    # (bench/README.md, "Fine-tune from the plain start")
    prepared = spec.preparation != "adaptive-bn" and cfg.finetune.epochs == 0
    if prepared:
        pruned = scorer.scored_model(allocation)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.finetune.epochs > 0:
        recalibrate_bn(pruned, calib)
        result = train(pruned, ws.data, cfg.finetune, device=ws.device, precision=ws.precision, seed=cfg.ws.seed,
                       log_dir=out / "tb", macs_per_image=macs1,
                       teacher=structure.model if cfg.finetune.kd_weight else None)
        report["finetune"] = {"epochs": cfg.finetune.epochs, "steps": result.steps, "seconds": result.seconds,
                              "start": "pruned weights, BN recalibrated", "kd_weight": cfg.finetune.kd_weight,
                              "kd_temperature": cfg.finetune.kd_temperature}
    vx, vy = ws.data.tensors("val", ws.device)
    report["saved_model_val_accuracy"], saved = save_calibrated(
        pruned, cfg.ws.model, ws.data.num_classes, out / "model.pt", calib, vx, vy, criterion=cfg.criterion,
        policy=cfg.policy, input_size=list(ws.input_size),
        prepare=(lambda m: m) if prepared else None)
    if problem.latency is not None:
        report["latency"] = cfg.target.measured(saved, structure.model, problem.latency, allocation.counts(structure))
        report["latency_fit"] = latency_fit
    if cfg.report_test:
        report["saved_model_test_accuracy"] = split_accuracy(saved, ws.data, "test", ws.device)
    allocation.save(out / "allocation.json", structure, metric=metric, target=target)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
