"""Heuristic allocators: budget met within 1% below, bounds respected, and known answers on rigged problems."""
import csv

import numpy as np
import pytest
import torch

from autoprune.agents import get_allocator
from autoprune.agents.global_threshold import normalise
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import FunctionEvaluator, Scorer
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import create_model

HEURISTICS = ["uniform", "global", "tp-global", "sensitivity", "layer-stats", "greedy"]


def _structure(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet20", 10).eval()
    return ModelStructure(model, torch.randn(1, 3, 32, 32))


def _rigged_evaluator(sensitive: str) -> FunctionEvaluator:
    """Accuracy falls steeply when the ``sensitive`` conv is thinned, gently for any other conv."""
    def evaluate(model):
        acc = 1.0
        for name, m in model.named_modules():
            if name.endswith("conv1") and name.startswith("layer"):
                lost = 1 - m.out_channels / create_widths[name]
                acc -= (0.8 if name == sensitive else 0.02) * lost
        return acc
    return FunctionEvaluator(evaluate)


create_widths = {n: m.out_channels for n, m in create_model("resnet20", 10).named_modules()
                 if n.endswith("conv1") and n.startswith("layer")}


def _check(problem, alloc):
    counts = alloc.counts(problem.structure)
    assert problem.feasible(alloc), problem.cost(counts) / problem.budget
    assert (counts >= problem.min_counts()).all() and (counts <= problem.max_counts()).all()
    return counts


@pytest.mark.parametrize("target", [0.5, 0.3])
@pytest.mark.parametrize("name", HEURISTICS)
def test_budget_met_within_one_percent_and_bounds_respected(name, target):
    s = _structure()
    problem = PruningProblem(s, target, criterion="l1", min_keep=0.25, max_keep=0.9 if name != "uniform" else 1.0)
    scorer = Scorer(problem, _rigged_evaluator("layer2.1.conv1"))
    kwargs = {"greedy": {"step": 0.2}, "sensitivity": {"rates": (0.5,)}}.get(name, {})
    _check(problem, get_allocator(name, **kwargs).allocate(problem, scorer))


def test_params_budget_is_met_too():
    s = _structure()
    problem = PruningProblem(s, 0.5, metric="params")
    scorer = Scorer(problem, _rigged_evaluator("layer1.0.conv1"))
    for name, kwargs in (("global", {}), ("layer-stats", {}), ("sensitivity", {"rates": (0.5,)})):
        _check(problem, get_allocator(name, **kwargs).allocate(problem, scorer))


@pytest.mark.parametrize("name", ["sensitivity", "greedy"])
def test_evaluator_driven_allocators_spare_the_sensitive_group(name, tmp_path):
    s = _structure()
    sensitive = "layer3.0.conv1"  # the most expensive stage: uniform would cut it like the rest
    problem = PruningProblem(s, 0.5)
    kwargs = {"output_dir": tmp_path} if name == "sensitivity" else {"step": 0.1}
    counts = _check(problem, get_allocator(name, **kwargs).allocate(problem, Scorer(problem, _rigged_evaluator(sensitive))))
    idx = [g.name for g in s.groups].index(sensitive)
    ratios = counts / s.channels
    assert ratios[idx] == pytest.approx(1.0) and ratios.min() < 0.5
    if name == "sensitivity":
        rows = list(csv.DictReader(open(tmp_path / "sensitivity.csv")))
        assert {r["group"] for r in rows} == {g.name for g in s.groups}
        worst = max(rows, key=lambda r: float(r["drop"]))
        assert worst["group"] == sensitive


def _scale_gamma(s, group_name, factor):
    bn = s.model.get_submodule(group_name.replace("conv1", "bn1"))
    with torch.no_grad():
        bn.weight.mul_(factor)


def test_layer_stats_cuts_the_relatively_weak_group_most_and_spares_the_strong_one():
    s = _structure()
    with torch.no_grad():  # a trained-looking spread of gammas
        for g in s.groups:
            s.model.get_submodule(g.name.replace("conv1", "bn1")).weight.uniform_(0.5, 1.5)
    _scale_gamma(s, "layer2.0.conv1", 0.1)
    _scale_gamma(s, "layer1.2.conv1", 10.0)
    problem = PruningProblem(s, 0.6, criterion="bn")
    counts = _check(problem, get_allocator("layer-stats").allocate(problem))
    ratios = dict(zip([g.name for g in s.groups], counts / s.channels))
    assert ratios["layer2.0.conv1"] == min(ratios.values())
    assert ratios["layer1.2.conv1"] == max(ratios.values())


def test_global_raw_threshold_floors_a_weak_group_but_lamp_does_not():
    s = _structure()
    _scale_gamma(s, "layer1.0.conv1", 0.01)
    problem = PruningProblem(s, 0.6, criterion="bn", min_keep=0.2)
    raw = _check(problem, get_allocator("global", normalize="none").allocate(problem))
    lamp = _check(problem, get_allocator("global").allocate(problem))
    assert raw[0] == problem.min_counts()[0]  # the floor is what saves the weak layer
    assert lamp[0] > raw[0]


def test_lamp_normalisation_gives_each_groups_best_channel_one():
    x = np.array([3.0, 1.0, 2.0])
    out = normalise(x, "lamp")
    assert out[0] == pytest.approx(1.0) and out[2] == pytest.approx(2 / 5) and out[1] == pytest.approx(1 / 6)
    with pytest.raises(AutopruneError, match="normalisation"):
        get_allocator("global", normalize="zscore")
