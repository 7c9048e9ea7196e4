"""``run_prune(config)``: a model pruned to an allocation file, a uniform keep ratio or a uniform share of
its MACs, its cost measured before and after at its input size, saved with recalibrated BN (the pipeline
behind ``autoprune prune``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoprune.config import nested
from autoprune.core.allocation import Allocation
from autoprune.core.cost import measure_cost
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.prune import prune
from autoprune.errors import AutopruneError
from autoprune.train.artifacts import has_batchnorm, save_calibrated
from autoprune.train.evaluator import accuracy
from autoprune.workspace import INPUT_HELP, WorkspaceOptions


@dataclass
class PruneConfig:
    output: str
    ws: WorkspaceOptions = nested(WorkspaceOptions, exclude=("train_subset",))  # --model, --checkpoint, --data, ...
    allocation: str | None = None
    ratio: float | None = None  # uniform channel keep ratio, if no allocation file
    macs: float | None = None  # uniform keep ratio solved for this share of MACs (at the input size)
    criterion: str = "l1"
    round_to: int = 1
    adaptive_bn_eval: bool = True


HELP = {"output": "where to write the pruned model (.pt)",
        "allocation": "allocation JSON (from search/compare)",
        "ratio": "uniform keep ratio of channels, e.g. 0.5 (MACs fall faster: about its square)",
        "macs": "fraction of the dense model's MACs to keep, at --input-size, with the same keep ratio in every "
                "group (as search and apply's uniform)",
        **INPUT_HELP}


def run_prune(cfg: PruneConfig) -> dict:
    """Prune ``cfg.ws.model``, write it to ``cfg.output`` and its allocation beside it
    (``OUTPUT.allocation.json``); returns the report (MACs, params, accuracies)."""
    if sum(x is not None for x in (cfg.allocation, cfg.ratio, cfg.macs)) != 1:
        raise AutopruneError("give exactly one of --allocation FILE, --ratio R or --macs F")
    for flag, value in (("ratio", cfg.ratio), ("macs", cfg.macs)):
        if value is not None and not 0 < value <= 1:
            raise AutopruneError(f"--{flag} {value} is outside (0, 1]")
    out = Path(cfg.output)
    ws = cfg.ws.open()
    structure = ws.structure()
    batches = ws.calibration()
    if cfg.allocation is not None:
        alloc = Allocation.load(cfg.allocation, structure)
    elif cfg.macs is not None:
        alloc = uniform_allocation(PruningProblem(structure, cfg.macs, round_to=cfg.round_to))
    else:
        alloc = Allocation.uniform(structure, cfg.ratio, cfg.round_to)
    pruned = prune(structure, alloc, cfg.criterion, batches)
    x = ws.example_input()
    before, after = measure_cost(ws.model, x), measure_cost(pruned, x)
    report = {"model": cfg.ws.model, "criterion": cfg.criterion, "precision": ws.precision.name,
              "input_size": list(ws.input_size), "macs_before": before[0], "macs_after": after[0],
              "macs_ratio": after[0] / before[0], "params_before": before[1], "params_after": after[1],
              "params_ratio": after[1] / before[1], "bn_recalibrated": has_batchnorm(pruned)}
    vx, vy = ws.data.tensors("val", ws.device)
    if cfg.adaptive_bn_eval:
        report["adaptive_bn_val_acc"] = ws.evaluator()(pruned)  # save_calibrated re-estimates BN below
        report["dense_val_acc"] = accuracy(ws.model, vx, vy)
    report["saved_model_val_acc"], _ = save_calibrated(pruned, cfg.ws.model, ws.data.num_classes, out, batches, vx, vy,
                                                       criterion=cfg.criterion, input_size=list(ws.input_size))
    alloc.save(out.with_suffix(".allocation.json"), structure)
    return report
