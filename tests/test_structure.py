"""Groups, analytical cost, and physical pruning on CIFAR and torchvision models."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.criteria import group_scores
from autoprune.core.prune import channels_to_remove, prune
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import create_model

from .conftest import flop_counter_cost


@pytest.mark.parametrize("name,n_groups", [("resnet20", 9), ("resnet56", 27)])
def test_option_a_resnets_prune_block_internal_channels_only(name, n_groups):
    model = create_model(name, 10)
    s = ModelStructure(model, torch.randn(1, 3, 32, 32))
    assert len(s.groups) == n_groups
    assert all(g.name.endswith(".conv1") and g.name.startswith("layer") for g in s.groups)
    # the residual stream (stem, block conv2s, classifier) must never lose output channels:
    # only each block's conv1 + bn1 outputs are cut (conv2 loses the matching input channels)
    out_cut = {m.name for g in s.groups for m in g.members if s.graph.is_out_channel_pruning_fn(m.handler)}
    blocks = [f"{g.name.rsplit('.', 1)[0]}" for g in s.groups]
    assert out_cut == {f"{b}.{layer}" for b in blocks for layer in ("conv1", "bn1")}
    half = prune(s, Allocation.uniform(s, 0.5))
    assert half(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,samples", [("resnet20", 100), ("resnet56", 30)])
def test_analytical_cost_equals_measured_cost(name, samples):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    x = torch.randn(1, 3, 32, 32)
    s = ModelStructure(model, x)
    rng = np.random.default_rng(0)
    for _ in range(samples):
        keep = [int(rng.integers(1, g.channels + 1)) for g in s.groups]
        alloc = Allocation.from_counts(s, keep)
        pruned = s.prune_copy(channels_to_remove(s, alloc.counts(s), group_scores(s, "l1")))
        assert flop_counter_cost(pruned, x) == (alloc.macs(s), alloc.params(s))


TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
               "regnet_y_400mf", "vgg11_bn", "resnext50_32x4d", "convnext_tiny"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_prune_to_half_channels(name):
    torch.manual_seed(0)
    model = create_model(f"tv:{name}", 10).eval()
    x = torch.randn(2, 3, 64, 64)
    s = ModelStructure(model, x[:1], num_classes=10)
    alloc = Allocation.uniform(s, 0.5)
    pruned = prune(s, alloc, "l1").eval()
    macs, params = flop_counter_cost(pruned, x)
    assert (macs, params) == (alloc.macs(s), alloc.params(s))
    assert macs < 0.5 * s.dense_macs  # both sides of most layers shrink
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_unsupported_model_gets_clear_error():
    model = create_model("tv:shufflenet_v2_x0_5", 10).eval()
    with pytest.raises(AutopruneError):
        ModelStructure(model, torch.randn(1, 3, 64, 64), num_classes=10)


def _zero_channels(model: nn.Module, s: ModelStructure, remove):
    """Mask: zero every output-side slice (conv filters, BN affine) of the channels to be removed."""
    plan = s.removal_plan(remove)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for (name, handler, dim, is_param), idxs in plan.items():
            if is_param or not s.graph.is_out_channel_pruning_fn(handler):
                continue
            m = modules[name]
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if p is not None:
                    p[idxs] = 0


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("tv:resnet18", 64), ("tv:mobilenet_v2", 64)])
def test_pruned_model_equals_masked_model(name, size):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, size, size)
    s = ModelStructure(model, x[:1], num_classes=10)
    rng = np.random.default_rng(1)
    alloc = Allocation.from_counts(s, [int(rng.integers(1, g.channels + 1)) for g in s.groups])
    remove = channels_to_remove(s, alloc.counts(s), group_scores(s, "l2"))
    pruned = s.prune_copy(remove).eval()
    masked = s.prune_copy([[] for _ in s.groups]).eval()
    _zero_channels(masked, s, remove)
    with torch.no_grad():
        diff = (pruned(x) - masked(x)).abs().max().item()
    assert diff < 1e-4


def test_prune_removes_lowest_scoring_channels(resnet20_structure):
    s = resnet20_structure
    g = s.groups[0]
    pruned = prune(s, Allocation.from_counts(s, [g.channels - 3] + [h.channels for h in s.groups[1:]]), "l1")
    norms = s.model.get_submodule(g.name).weight.abs().sum((1, 2, 3))
    kept = pruned.get_submodule(g.name).weight.abs().sum((1, 2, 3))
    assert torch.allclose(kept.sort().values, norms.sort().values[3:])


def test_snap_respects_floor_and_rounding(resnet20_structure):
    from autoprune.core.counts import snap_count

    g = resnet20_structure.groups[-1]  # 64 channels
    assert snap_count(g, 0.0) == 1
    assert snap_count(g, 13, round_to=8) == 16
    assert snap_count(g, 1000) == g.channels


@pytest.mark.parametrize("round_to", [0, -8, 2.5])
def test_round_to_must_be_a_positive_integer(resnet20_structure, round_to):
    from autoprune.core.allocation import Allocation
    from autoprune.core.problem import PruningProblem
    from autoprune.errors import AutopruneError

    with pytest.raises(AutopruneError, match="must be a positive integer"):
        PruningProblem(resnet20_structure, 0.5, round_to=round_to)
    with pytest.raises(AutopruneError, match="must be a positive integer"):
        Allocation.uniform(resnet20_structure, 0.5, round_to)


def test_legal_step_is_the_one_rule(resnet20_structure):
    from autoprune.core.counts import legal_step, min_count, snap_count

    assert legal_step(1, 8) == 8 and legal_step(4, 6) == 12 and legal_step(3, 1) == 3
    g = resnet20_structure.groups[0]
    assert snap_count(g, 13.0, 8) % 8 == 0 and min_count(g, 8) == 8
