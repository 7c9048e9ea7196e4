"""``tp-global``: the widths torch-pruning's global pruning gives when called directly, then a feasible allocation."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.agents import get_allocator, list_allocators
from autoprune.agents.tp_global import TPGlobalAllocator
from autoprune.core.cost import measure_cost
from autoprune.core.problem import PruningProblem
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import create_model

from .conftest import flop_counter_cost

pytestmark = pytest.mark.usefixtures("one_thread")  # many small forward passes


def _structure() -> ModelStructure:
    torch.manual_seed(0)
    return ModelStructure(create_model("resnet20", 10).eval(), torch.randn(1, 3, 32, 32))


def _direct_torch_pruning(structure: ModelStructure, budget_macs: float, steps: int) -> tuple[list[int], int]:
    """What a Torch-Pruning user writes: global group-magnitude pruning (library defaults), 90% cap, stepped until the measured
    conv + linear MACs fit; the widths of the block-internal convs it leaves."""
    model = copy.deepcopy(structure.model).eval()
    pruner = tp.pruner.MetaPruner(
        model, structure.example_input, importance=tp.importance.GroupMagnitudeImportance(),  # the library defaults
        global_pruning=True, pruning_ratio=0.9, max_pruning_ratio=0.9, iterative_steps=steps,
        ignored_layers=model.pruning_ignored_layers())
    for step in range(1, steps + 1):
        pruner.step()
        if measure_cost(model, structure.example_input)[0] <= budget_macs:
            break
    assert flop_counter_cost(model, structure.example_input)[0] <= budget_macs  # the oracle agrees it fits
    widths = [m.out_channels for n, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and n.startswith("layer") and n.endswith("conv1")]
    return widths, step


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_raw_widths_are_torch_prunings_and_the_allocation_is_feasible_and_measured_right(target):
    s = _structure()
    assert [g.name for g in s.groups] == [n for n, m in s.model.named_modules()
                                          if n.startswith("layer") and n.endswith("conv1")]
    problem = PruningProblem(s, target, min_keep=0.05)  # the problem's floor is one channel: the library's 90% cap rules
    allocator = get_allocator("tp-global@steps=60")
    alloc = allocator.allocate(problem)

    widths, step = _direct_torch_pruning(s, problem.budget, steps=60)
    assert allocator.raw_counts.tolist() == widths
    assert allocator.steps_taken == step
    assert len(set(widths)) > 2  # a global ranking: widths differ from group to group
    assert s.macs(allocator.raw_counts) <= problem.budget

    counts = alloc.counts(s)
    assert problem.feasible(alloc), problem.cost(counts) / problem.budget
    assert (counts >= problem.min_counts()).all() and (counts <= problem.max_counts()).all()
    assert (counts >= allocator.raw_counts).all()  # the fill only gives channels back
    pruned = problem.pruned_model(alloc)
    assert flop_counter_cost(pruned, s.example_input)[0] == measure_cost(pruned, s.example_input)[0] == alloc.macs(s)


def test_problem_bounds_cap_the_library_and_are_respected():
    s = _structure()
    problem = PruningProblem(s, 0.3, min_keep=0.25, max_keep=0.9)
    allocator = TPGlobalAllocator()
    counts = allocator.allocate(problem).counts(s)
    assert (counts >= problem.min_counts()).all() and (counts <= problem.max_counts()).all()
    assert problem.budget * 0.99 <= problem.cost(counts) <= problem.budget
    # the library's cap holds between steps only: here a step cut groups past the problem's floor,
    # so the widths were raised back to it and still fit
    assert (allocator.raw_counts < problem.min_counts()).any()
    assert problem.cost(np.maximum(allocator.raw_counts, problem.min_counts())) <= problem.budget


def test_other_metrics_and_bad_options_are_one_line_errors():
    s = _structure()
    with pytest.raises(AutopruneError, match="MACs"):
        TPGlobalAllocator().allocate(PruningProblem(s, 0.5, metric="params"))
    with pytest.raises(AutopruneError, match="max_pruning_ratio"):
        get_allocator("tp-global@max_pruning_ratio=1.5")
    with pytest.raises(AutopruneError, match="do not reach"):
        # one step prunes 2% of the channels: far from 30% of the MACs
        TPGlobalAllocator(max_pruning_ratio=0.02, steps=1).allocate(PruningProblem(s, 0.3))
    assert "tp-global" in list_allocators()
    assert np.array_equal(get_allocator("tp-global").allocate(PruningProblem(s, 0.7)).counts(s),
                          TPGlobalAllocator().allocate(PruningProblem(s, 0.7)).counts(s))
