"""``run_progressive(config)``: train-prune-train, the model shrinking on a schedule while it trains
(the pipeline behind ``autoprune progressive``). Under torchrun every rank trains; rank 0 writes.

``--from-scratch`` trains from the initialization and decides the final shape part-way through
(``autoprune.train.decision``): the dense model's training is not paid for yet, so most epochs run
on the smaller network."""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoprune.config import flat_config, nested, save_config
from autoprune.errors import AutopruneError
from autoprune.experiments.plots import plot_channels_over_training, plot_schedule
from autoprune.experiments.targets import TargetOptions
from autoprune.runs import check_run_dir
from autoprune.train import distributed
from autoprune.train.decision import AUTO, ShapeDecision, parse_decide_at
from autoprune.train.training import TrainRecipe
from autoprune.workspace import INPUT_HELP, WorkspaceOptions


class BadDecideAt(argparse.ArgumentTypeError, ValueError):
    """A --decide-at that is neither a fraction nor auto (argparse prints it as the flag's one-line error)."""


def decide_at_option(value: str | float) -> str:
    """``--decide-at`` as a config keeps it (flag or YAML, string or number): ``auto`` or the checked fraction."""
    try:
        fraction = parse_decide_at(value)
    except AutopruneError as exc:
        raise BadDecideAt(str(exc)) from None
    return AUTO if fraction is None else f"{fraction:g}"


@dataclass
class ProgressiveConfig:
    output: str  # run directory
    ws: WorkspaceOptions = nested(WorkspaceOptions, exclude=("image_size",))  # --model, --checkpoint, --data, ...
    target: float = 0.5  # kept fraction of the original MACs at the end
    latency: float | None = None  # instead: kept fraction of the measured latency (the final shape is decided on it)
    latency_batch: int = 1
    latency_precision: str = "fp32"
    latency_fit: bool = True
    allocator: str = "uniform"
    score: str | None = None  # autoprune.train.scores; default: DEFAULT_SCORE, or the score a policy was trained with
    trajectory: str | None = None  # final | per-step; default: final for policy:/allocation:, else per-step
    criterion: str = "l1"
    schedule: str = "cubic"
    prune_start: float = 0.0  # fraction of training before the schedule starts
    final_share: float = 0.25  # fraction of training left at the final width
    prune_every: float = 0.25  # epochs between cuts
    from_scratch: bool = False  # train from the initialization; decide the final shape at --decide-at
    decide_at: str = field(default="auto", metadata={"parse": decide_at_option})  # F (fraction of the run) | auto
    decide_threshold: float = 0.02  # auto: mean |change of keep ratio| per group between epochs
    decide_patience: int = 2  # auto: consecutive epochs below the threshold
    decide_by: float = 0.5  # auto: decide at this fraction of the run at the latest
    fork_from: str | None = None  # a from-scratch run whose dense training up to the decision this one shares
    min_keep: float = 0.2  # per-cut lower bound on each group's keep ratio
    round_to: int = 1
    recipe: TrainRecipe = nested(TrainRecipe, exclude=("momentum", "bn_l1", "augment", "kd_weight", "kd_temperature"),
                                 rename={"schedule": "lr_schedule"}, epochs=4.0, lr=0.05)
    resume: bool = False


HELP = {
    "output": "run directory (config, TensorBoard, state.pt, model.pt, allocation.json, plots; from scratch with "
              "a fixed --decide-at also dense_state.pt, what --fork-from starts from)",
    "input_size": INPUT_HELP["input_size"] + "; every MACs figure of the run (targets, cuts, train_macs) is "
                  "counted at it",
    "checkpoint": "dense (or pruned) checkpoint to start from; omit to train from scratch",
    "target": "kept fraction of the original MACs at the end",
    "latency": "instead of --target: kept fraction of the measured latency (lookup table at --latency-batch, "
               "--latency-precision); the allocator decides the final shape on the original model against it, "
               "and every cut heads for that shape (--trajectory final)",
    "latency_fit": "with --latency: time the decided shape and re-scale it until its measured latency is "
                   "within 5% of the target, before training; --no-latency-fit trusts the table",
    "allocator": "uniform, layer-stats, global, policy:PATH, allocation:PATH, search:EPISODES (random search "
                 "by --score at each cut), ... (autoprune.agents)",
    "score": "what a search allocator (and a policy's sensitivity sweep) scores candidates by, see search --help; "
             "when not given, the search's own default score, or for policy:PATH the score the policy was trained with",
    "trajectory": "final: fix each group's final width once (the allocator on the original model at --target) "
                  "and move every group toward it at each cut | per-step: re-allocate on the current model at "
                  "every cut (default: final for policy:/allocation:, per-step otherwise)",
    "schedule": "pruning schedule: constant, linear, cosine, exponential, cubic",
    "prune_start": "fraction of training before pruning starts (never before the LR warm-up ends)",
    "final_share": "fraction of training left at the final width (pruning ends before it)",
    "prune_every": "epochs between cuts",
    "from_scratch": "train from the initialization (no --checkpoint) and decide the final shape part-way through "
                    "(--decide-at), by --allocator on the dense model as trained so far; every cut then heads for "
                    "that shape (--trajectory final)",
    "decide_at": "with --from-scratch: the fraction of the run at which the shape is decided, or auto: when the "
                 "allocation --allocator gives at each epoch end stops moving (Early-Bird; with a search allocator "
                 "that is one search per epoch)",
    "decide_threshold": "--decide-at auto: the allocation has settled when its keep ratios move by less than this "
                        "between consecutive epochs (mean absolute change over groups)",
    "decide_patience": "--decide-at auto: consecutive epoch-to-epoch changes that must be below the threshold",
    "decide_by": "--decide-at auto: decide at this fraction of the run at the latest, settled or not",
    "fork_from": "with --from-scratch and a fixed --decide-at: the folder of another such run; start from its "
                 "dense training at the decision (its dense_state.pt) instead of training that part again. It must "
                 "have the same model, data, seed, training recipe and --decide-at (the allocator, target, score and "
                 "cut schedule may differ); this run's seconds and training MACs count the shared part",
    "min_keep": "lower bound on each group's keep ratio at any one cut",
    "lr_schedule": "learning-rate schedule over the whole run: cosine or constant",
    "resume": "continue the run in --output from its last epoch"}


def run_progressive(cfg: ProgressiveConfig) -> dict | None:
    """Train ``cfg.ws.model`` while pruning it to ``cfg.target``; write model.pt, allocation.json,
    summary.json and plots into ``cfg.output`` and return the summary (None on ranks other than 0)."""
    import torch

    from autoprune.agents import get_allocator
    from autoprune.core.criteria import get_criterion
    from autoprune.train.artifacts import save_calibrated
    from autoprune.train.evaluator import accuracy
    from autoprune.train.progressive import TRAJECTORIES, default_trajectory, progressive_train
    from autoprune.train.schedules import PruningSchedule, list_schedules
    from autoprune.train.scores import DEFAULT_SCORE, parse_score

    if not cfg.resume:
        check_run_dir(cfg.output)
    distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
    if cfg.latency is not None and distributed.active():
        raise AutopruneError("--latency measures timings that differ between processes: decide the shape first "
                             "(autoprune search --latency ...), then progressive --allocator allocation:PATH")
    if not 0.0 < cfg.final_share < 1.0:
        raise AutopruneError(f"--final-share {cfg.final_share} must be in (0, 1): the share of training at the final width")
    get_criterion(cfg.criterion)  # fail on a bad name before loading data
    allocator = get_allocator(cfg.allocator)
    score = cfg.score or getattr(allocator, "score", DEFAULT_SCORE)  # a policy reads sensitivity by its own score
    parse_score(score)  # a bad score fails before any data is loaded
    trajectory = cfg.trajectory or ("final" if cfg.from_scratch else default_trajectory(cfg.allocator))
    if trajectory not in TRAJECTORIES:
        raise AutopruneError(f"unknown --trajectory '{trajectory}': use {' or '.join(TRAJECTORIES)}")
    if cfg.schedule not in list_schedules():
        raise AutopruneError(f"unknown pruning schedule '{cfg.schedule}': use one of {', '.join(list_schedules())}")
    if cfg.latency is not None and trajectory != "final":
        raise AutopruneError("--latency decides the final shape once on the original model: use --trajectory final")
    decide_at = _check_from_scratch(cfg, trajectory)
    recipe = cfg.recipe
    recipe.lr_at(recipe.warmup_steps, recipe.warmup_steps + 1)  # validates the lr schedule name
    torch.manual_seed(cfg.ws.seed)  # a from-scratch initialisation must be reproducible from the seed
    ws = cfg.ws.open()  # (resolves the options left to the model, e.g. --input-size)
    out, resume = Path(cfg.output), cfg.resume
    if cfg.fork_from is not None and not (resume and (out / "state.pt").exists()):
        _fork(cfg, decide_at, out)  # the other run's dense state becomes this run's state: continue from it
        resume = True
    total = recipe.total_steps(len(ws.data.train))
    steps_per_epoch = -(-len(ws.data.train) // recipe.batch_size)
    target, latency = cfg.target, None
    if cfg.latency is not None:  # decide the shape against the latency table, then schedule its MACs
        allocator, target, latency = _latency_shape(cfg, ws, allocator, score)
    # the two schedules together: no cut while the learning rate is still warming up
    start = max(cfg.prune_start, recipe.warmup_steps / total)
    schedule = PruningSchedule.over_training(cfg.schedule, target, total, start, 1.0 - cfg.final_share,
                                             every=round(cfg.prune_every * steps_per_epoch))
    decision = None
    if cfg.from_scratch:
        decision = ShapeDecision(None if decide_at is None else round(decide_at * total), cfg.decide_threshold,
                                 cfg.decide_patience, round(cfg.decide_by * total))
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    result = progressive_train(ws.model, ws.data, recipe, schedule, allocator, base_name=cfg.ws.model,
                               criterion=cfg.criterion, min_keep=cfg.min_keep, round_to=cfg.round_to,
                               seed=cfg.ws.seed, device=ws.device, precision=ws.precision, trajectory=trajectory,
                               state_path=out / "state.pt",
                               resume=resume,
                               log_dir=out / "tb", decision=decision, example_input=ws.example_input(), score=score)
    if not distributed.is_main():
        return None
    original = result.original
    vx, vy = ws.data.tensors("val", ws.device)
    trained_acc = accuracy(result.model, vx, vy)
    saved_acc, _ = save_calibrated(result.model, cfg.ws.model, ws.data.num_classes, out / "model.pt",
                                   ws.data.calibration_batches(128, ws.device), vx, vy, allocator=cfg.allocator,
                                   schedule=cfg.schedule, target=cfg.target)
    result.allocation.save(out / "allocation.json", original, allocator=cfg.allocator, schedule=cfg.schedule)
    schedule = result.schedule or schedule  # from scratch: the cuts started at the decision
    planned = [(s, schedule.target(s)) for s in range(total + 1)]
    summary = {"val_acc": saved_acc, "val_acc_training_bn": trained_acc, "macs": result.allocation.macs(original),
               "macs_ratio": result.allocation.macs(original) / original.dense_macs, "target": cfg.target,
               "input_size": list(ws.input_size), "train_macs": result.train_macs, "seconds": result.seconds, "precision": ws.precision.name,
               "trajectory": trajectory, "score": score, "steps": result.steps,
               "latency": (latency[0].measured(result.model, latency[2], latency[1], result.allocation.counts(original))
                           if latency else None),
               "events": [asdict(e) for e in result.events], "decision": result.decision, "probes": result.probes,
               "ledger": result.ledger, "history": result.history, "config": flat_config(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_schedule(planned, result.events, out / "macs_schedule.png")
    plot_channels_over_training(result.events, {g.name: g.channels for g in original.groups}, total, out / "channels.png")
    return summary


# what a fork may change: only what is used at or after the decision
FORK_FREE = {"output", "device", "resume", "fork_from", "target", "allocator", "score", "trajectory", "criterion", "schedule",
             "prune_start", "final_share", "prune_every", "min_keep", "round_to",
             "decide_threshold", "decide_patience", "decide_by"}  # the last three: --decide-at auto only


def _fork(cfg: ProgressiveConfig, decide_at: float | None, out: Path) -> None:
    """Check that ``cfg.fork_from`` trained the same dense prefix, then copy its dense state into ``out``."""
    import shutil

    import yaml

    from autoprune.train.progressive import DENSE_STATE

    src = Path(cfg.fork_from)
    if not cfg.from_scratch or decide_at is None:
        raise AutopruneError("--fork-from shares the dense training before a fixed decision: "
                             "use it with --from-scratch and --decide-at F")
    if not (src / DENSE_STATE).exists() or not (src / "config.yaml").exists():
        raise AutopruneError(f"'{src}' holds no {DENSE_STATE}: fork from a progressive --from-scratch run with a "
                             "fixed --decide-at that has reached its decision")
    theirs = yaml.safe_load((src / "config.yaml").read_text())
    mine = yaml.safe_load(yaml.safe_dump(flat_config(cfg), sort_keys=False))
    differ = sorted(k for k in mine if k not in FORK_FREE and theirs.get(k) != mine[k])
    if differ:
        raise AutopruneError(f"--fork-from '{src}' trained with other {', '.join(differ)}: a fork shares that run's "
                             "training up to the decision, so only the allocator, target, score and cut schedule "
                             "may differ")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / DENSE_STATE, out / "state.pt")
    distributed.barrier()


def _check_from_scratch(cfg: ProgressiveConfig, trajectory: str) -> float | None:
    """The one-line errors of the from-scratch options; returns --decide-at as a fraction (None: auto)."""
    if not cfg.from_scratch:
        if str(cfg.decide_at).strip().lower() != "auto":
            raise AutopruneError("--decide-at decides the shape of a run trained from its initialization: "
                                 "add --from-scratch")
        return None
    if cfg.ws.checkpoint is not None:
        raise AutopruneError("--from-scratch trains from the initialization: drop --checkpoint (or --from-scratch)")
    if cfg.latency is not None:
        raise AutopruneError("--latency decides the shape before training; with --from-scratch decide it by MACs "
                             "(--target), or search a latency shape first and pass --allocator allocation:PATH")
    if trajectory != "final":
        raise AutopruneError("--from-scratch heads every cut for the shape decided during training: "
                             "use --trajectory final (the default with --from-scratch)")
    decide_at = parse_decide_at(cfg.decide_at)
    last = 1.0 - cfg.final_share  # the last cut
    if decide_at is not None and decide_at >= last:
        raise AutopruneError(f"--decide-at {decide_at:g} leaves no time to prune before the final share "
                             f"(pruning ends at {last:g} of the run): decide earlier or lower --final-share")
    if decide_at is None and not 0.0 < cfg.decide_by < last:
        raise AutopruneError(f"--decide-by {cfg.decide_by:g} must be in (0, {last:g}): pruning ends at {last:g} "
                             "of the run (1 - --final-share)")
    ShapeDecision(None, cfg.decide_threshold, cfg.decide_patience)  # checks threshold and patience
    return decide_at


class _Decided:
    """An allocation decided before training (the shape every cut heads for)."""

    def __init__(self, allocation):
        self.allocation = allocation

    def allocate(self, problem, scorer=None):
        return self.allocation


def _latency_shape(cfg: ProgressiveConfig, ws, allocator, score: str):
    """(fixed allocator, its MACs fraction as the schedule's final target, (target options, latency table))."""
    options = TargetOptions(latency=cfg.latency, latency_batch=cfg.latency_batch,
                            latency_precision=cfg.latency_precision, latency_fit=cfg.latency_fit)
    structure = ws.structure()
    table = options.table(structure, cfg.round_to)
    problem = ws.problem(cfg.latency, "latency", criterion=cfg.criterion, min_keep=cfg.min_keep, round_to=cfg.round_to,
                         latency=table)
    allocation, _ = options.fit(problem, allocator.allocate(problem, ws.scorer(problem, score, seed=cfg.ws.seed)))
    dense = copy.deepcopy(structure.model)  # the latency reference: training prunes ws.model in place
    return _Decided(allocation), allocation.macs(structure) / structure.dense_macs, (options, table, dense)
