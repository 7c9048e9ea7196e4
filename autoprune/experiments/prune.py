"""``run_prune(config)``: a model pruned to an allocation file or a uniform keep ratio, its cost
measured before and after, saved with recalibrated BN (the pipeline behind ``autoprune prune``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoprune.config import nested
from autoprune.core.allocation import Allocation
from autoprune.core.cost import measure_cost
from autoprune.core.prune import prune
from autoprune.errors import AutopruneError
from autoprune.train.artifacts import save_calibrated
from autoprune.train.evaluator import accuracy
from autoprune.workspace import WorkspaceOptions


@dataclass
class PruneConfig:
    output: str
    ws: WorkspaceOptions = nested(WorkspaceOptions, exclude=("train_subset", "image_size"))  # --model, --checkpoint, --data, ...
    allocation: str | None = None
    ratio: float | None = None  # uniform channel keep ratio, if no allocation file
    criterion: str = "l1"
    round_to: int = 1
    adaptive_bn_eval: bool = True


HELP = {"output": "where to write the pruned model (.pt)",
        "allocation": "allocation JSON (from search/compare)",
        "ratio": "uniform keep ratio of channels, e.g. 0.5"}


def run_prune(cfg: PruneConfig) -> dict:
    """Prune ``cfg.ws.model``, write it to ``cfg.output`` and its allocation beside it
    (``OUTPUT.allocation.json``); returns the report (MACs, params, accuracies)."""
    if (cfg.allocation is None) == (cfg.ratio is None):
        raise AutopruneError("give exactly one of --allocation FILE or --ratio R")
    if cfg.ratio is not None and not 0 < cfg.ratio <= 1:
        raise AutopruneError(f"--ratio {cfg.ratio} is outside (0, 1]")
    out = Path(cfg.output)
    ws = cfg.ws.open()
    structure = ws.structure()
    if cfg.allocation is not None:
        alloc = Allocation.load(cfg.allocation, structure)
    else:
        alloc = Allocation.uniform(structure, cfg.ratio, cfg.round_to)
    batches = ws.data.calibration_batches(128, ws.device)
    pruned = prune(structure, alloc, cfg.criterion, batches)
    x, _ = ws.data.tensors("val")
    before, after = measure_cost(ws.model, x[:1].to(ws.device)), measure_cost(pruned, x[:1].to(ws.device))
    report = {"model": cfg.ws.model, "criterion": cfg.criterion, "precision": ws.precision.name,
              "macs_before": before[0], "macs_after": after[0], "macs_ratio": after[0] / before[0],
              "params_before": before[1], "params_after": after[1], "params_ratio": after[1] / before[1]}
    vx, vy = ws.data.tensors("val", ws.device)
    if cfg.adaptive_bn_eval:
        report["adaptive_bn_val_acc"] = ws.evaluator()(pruned)  # save_calibrated re-estimates BN below
        report["dense_val_acc"] = accuracy(ws.model, vx, vy)
    report["saved_model_val_acc"], _ = save_calibrated(pruned, cfg.ws.model, ws.data.num_classes, out, batches, vx, vy,
                                                       criterion=cfg.criterion)
    alloc.save(out.with_suffix(".allocation.json"), structure)
    return report
