"""``run_train(config)``: train or fine-tune a model (dense or pruned), resumable, with checkpoints
kept every few epochs if asked (the pipeline behind ``autoprune train``). Under torchrun every rank
trains; rank 0 writes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoprune.config import flat_config, nested, save_config
from autoprune.core.cost import measure_cost
from autoprune.core.io import PRUNED_FORMAT, read_weights_only, save_pruned
from autoprune.errors import AutopruneError
from autoprune.runs import check_run_dir
from autoprune.train import distributed
from autoprune.train.evaluator import accuracy
from autoprune.train.training import TrainRecipe, check_distillation, train
from autoprune.workspace import INPUT_HELP, WorkspaceOptions


@dataclass
class TrainConfig:
    output: str  # run directory
    ws: WorkspaceOptions = nested(WorkspaceOptions, exclude=("calib_size",))  # --model, --checkpoint, --data, ...
    recipe: TrainRecipe = nested(TrainRecipe)  # epochs, lr, momentum, weight decay, batch size, schedule, ...
    teacher: str | None = None  # dense checkpoint to distil from (with --kd-weight)
    resume: bool = False
    save_every: int | None = None  # epochs between kept checkpoints (checkpoints/epoch-K.pt; weight rewinding)


HELP = {**INPUT_HELP, "output": "run directory (model.pt, TensorBoard events, config)",
        "teacher": "checkpoint of the dense model to distil from (same --model): the LR-rewind-with-distillation "
                   "recipe is --teacher DENSE.pt --kd-weight 0.9 --lr 0.01 on a pruned --checkpoint",
        "kd_weight": "weight of the distillation term (KL to the teacher's outputs) against the label loss, in [0, 1]",
        "kd_temperature": "softmax temperature of the distillation term",
        "bn_l1": "Network Slimming L1 penalty on BN gammas",
        "save_every": "keep the weights every N epochs (and at the start) as "
                      "checkpoints/epoch-K.pt, for compare --recipes weight-rewind"}


def start_is_prepared(checkpoint: str | Path) -> str | None:
    """The score that refitted or fine-tuned a saved pruned model (``search``'s ``best_model.pt``), else None."""
    from autoprune.train.scores import parse_score

    saved = read_weights_only(checkpoint, "checkpoint")
    score = saved.get("meta", {}).get("score") if saved.get("format") == PRUNED_FORMAT else None
    return score if score and parse_score(score).preparation != "adaptive-bn" else None


def run_train(cfg: TrainConfig) -> dict | None:
    """Train ``cfg.ws.model``; write model.pt, summary.json, config.yaml and TensorBoard events into
    ``cfg.output`` and return the summary (None on ranks other than 0)."""
    out = Path(cfg.output)
    check_distillation(cfg.recipe.kd_weight, cfg.recipe.kd_temperature)
    if bool(cfg.recipe.kd_weight) != (cfg.teacher is not None):
        raise AutopruneError("distillation needs both --teacher DENSE_CHECKPOINT and --kd-weight W > 0")
    if cfg.teacher is not None and not Path(cfg.teacher).is_file():
        raise AutopruneError(f"--teacher '{cfg.teacher}' not found: give the dense model's checkpoint")
    check_run_dir(out, cfg.resume)
    distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
    ws = cfg.ws.open()  # resolves the input size, which the config records
    prepared_by = start_is_prepared(cfg.ws.checkpoint) if cfg.ws.checkpoint is not None else None
    if prepared_by and distributed.is_main():
        print(f"note: {cfg.ws.checkpoint} holds the weights its score prepared ({prepared_by}); "
              "fine-tuning from the plain pruned weights trains better (autoprune prune --allocation "
              "best_allocation.json; bench/README.md, 'Fine-tune from the plain start')")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    recipe = cfg.recipe
    state_path = out / "state.pt"
    start = 0
    optimizer = None
    if cfg.resume and state_path.exists():
        from autoprune.train.training import make_optimizer

        state = read_weights_only(state_path, "training state")
        ws.model.load_state_dict(state["model"])
        optimizer = make_optimizer(ws.model, recipe)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    macs = measure_cost(ws.model, ws.example_input())[0]
    on_step = None
    if cfg.save_every is not None:
        if cfg.save_every < 1:
            raise AutopruneError(f"--save-every {cfg.save_every} must be a positive number of epochs")
        every = cfg.save_every * -(-len(ws.data.train) // recipe.batch_size)

        def on_step(step, model, optimizer):  # before the step's update: weights after `step` updates
            if step % every == 0 and distributed.is_main():
                save_pruned(model, cfg.ws.model, ws.data.num_classes,
                            out / "checkpoints" / f"epoch-{step // (every // cfg.save_every)}.pt", step=step)
    teacher = None
    if cfg.teacher is not None:
        from autoprune.core.io import load_model

        teacher = load_model(cfg.ws.model, ws.data.num_classes, cfg.teacher).to(ws.device)
    result = train(ws.model, ws.data, recipe, device=ws.device, precision=ws.precision, seed=cfg.ws.seed,
                   log_dir=out / "tb", on_step=on_step, checkpoint=state_path, macs_per_image=macs,
                   start_step=start, optimizer=optimizer, teacher=teacher)
    if not distributed.is_main():
        return None
    save_pruned(ws.model, cfg.ws.model, ws.data.num_classes, out / "model.pt")
    vx, vy = ws.data.tensors("val", ws.device)
    summary = {"val_acc": accuracy(ws.model, vx, vy), "steps": result.steps, "seconds": result.seconds,
               "precision": ws.precision.name, "processes": distributed.rank_and_world()[1],
               "input_size": list(ws.input_size), "macs_per_image": macs, "config": flat_config(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
