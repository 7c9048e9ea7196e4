"""``tp-global``: torch-pruning's own global pruning, stepped until the MACs budget is met.

What a Torch-Pruning user runs instead of a search: ``GroupMagnitudeImportance()`` with the library's
defaults (p=2, normaliser and group reduction both "mean"; ``tp-global@p=1`` for L1), one
ranking over all groups (``global_pruning=True``), at most ``max_pruning_ratio`` of each group
pruned, and the library's linear schedule of ``iterative_steps`` steps up to ``max_pruning_ratio``
of all channels, on a copy of the model, stopped at the first step whose model fits the budget. The
widths the library leaves are read off the pruned copy; the gap left by the last step
is then closed as every other allocator closes it.

Only the widths carry over: the problem's criterion still picks which channels an allocation keeps.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch.nn as nn
import torch_pruning as tp

from autoprune.core.allocation import Allocation
from autoprune.core.cost import measure_cost
from autoprune.core.counts import fill_to_budget, floor_counts
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError


def group_widths(structure: ModelStructure, model: nn.Module) -> np.ndarray:
    """Each group's channel count in ``model`` (a pruned copy of the structure's): its root layer's outputs."""
    widths = []
    for g in structure.groups:
        root = model.get_submodule(g.name)
        widths.append(root.out_channels if isinstance(root, nn.Conv2d) else root.out_features)
    return np.array(widths, dtype=np.int64)


def global_pruner(structure: ModelStructure, model: nn.Module, pruning_ratio: float, max_pruning_ratio: float,
                  steps: int, p: int = 2, round_to: int = 1) -> tp.pruner.MetaPruner:
    """torch-pruning's global magnitude pruner on ``model`` (a copy of the structure's), leaving the
    structure's ignored layers alone; its linear schedule ends at ``pruning_ratio`` of all channels."""
    ignored = [model.get_submodule(name) for name in structure.ignored_names]
    with warnings.catch_warnings():  # loose parameters (layer scales) are pruned on their channel dim
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.pruner.MetaPruner(
            model, structure.example_input, importance=tp.importance.GroupMagnitudeImportance(p=p),
            global_pruning=True, pruning_ratio=pruning_ratio, max_pruning_ratio=max_pruning_ratio,
            iterative_steps=steps, ignored_layers=ignored, round_to=round_to if round_to > 1 else None,
            root_module_types=[nn.Conv2d, nn.Linear])


def _check_options(max_pruning_ratio: object, steps: object, p: object) -> None:
    ok = (isinstance(max_pruning_ratio, (int, float)) and 0.0 < max_pruning_ratio < 1.0
          and isinstance(steps, int) and steps >= 1 and isinstance(p, int) and p >= 1)
    if not ok:
        raise AutopruneError(f"tp-global needs 0 < max_pruning_ratio < 1 and whole numbers steps >= 1, p >= 1; "
                             f"got {max_pruning_ratio}, {steps}, {p}")


def tp_global_counts(problem: PruningProblem, max_pruning_ratio: float = 0.9, steps: int = 100,
                     p: int = 2) -> tuple[np.ndarray, int]:
    """Kept channels per group at the first step where the model torch-pruning's global pruning
    leaves fits the MACs budget, and that step (raw: before the problem's bounds and the final fill).

    The schedule runs to ``max_pruning_ratio`` of all channels; the library's per-group cap is the
    tighter of ``max_pruning_ratio`` and ``1 - min_keep``. The cap holds between steps only, so a
    step can cut a group past the problem's floor; the widths must then fit the budget once raised
    back to the floor too, or pruning goes on (the other groups keep shrinking until they do).
    """
    if problem.metric != "macs":
        raise AutopruneError(f"tp-global meets MACs budgets only, not {problem.metric}: use --metric macs")
    _check_options(max_pruning_ratio, steps, p)
    s = problem.structure
    cap = min(max_pruning_ratio, 1.0 - problem.min_keep)
    model = copy.deepcopy(s.model).eval()
    pruner = global_pruner(s, model, max_pruning_ratio, cap, steps, p, problem.round_to)
    for step in range(1, steps + 1):
        pruner.step()
        widths = group_widths(s, model)
        if problem.cost(widths) <= problem.budget and problem.cost(floor_counts(problem, widths)) <= problem.budget:
            if measure_cost(model, s.example_input)[0] != s.macs(widths):
                raise AutopruneError("tp-global: torch-pruning pruned layers outside autoprune's groups "
                                     "(the pruned copy's MACs differ from its widths' cost)")
            return widths, step
    raise AutopruneError(f"tp-global: {steps} steps up to {max_pruning_ratio:.2f} of the channels do not reach "
                         f"{problem.target} of the MACs: raise max_pruning_ratio or lower --min-keep")


class TPGlobalAllocator:
    name = "tp-global"
    seeded = False  # magnitude ranking of fixed weights: deterministic

    def __init__(self, max_pruning_ratio: float = 0.9, steps: int = 100, p: int = 2):
        _check_options(max_pruning_ratio, steps, p)  # a bad spec option fails before any pruning
        self.max_pruning_ratio, self.steps, self.p = max_pruning_ratio, steps, p
        self.raw_counts: np.ndarray | None = None  # widths torch-pruning left, before bounds and fill
        self.steps_taken = 0

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        self.raw_counts, self.steps_taken = tp_global_counts(problem, self.max_pruning_ratio, self.steps, self.p)
        counts = fill_to_budget(problem, floor_counts(problem, self.raw_counts))
        return Allocation.from_counts(problem.structure, counts)
