"""Every criterion on a constructed case whose right answer is known (and that a naive one gets wrong)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.core.allocation import Allocation
from autoprune.core.criteria import get_criterion, group_scores, list_criteria
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError

ALL = ["l1", "l2", "fpgm", "bn", "apoz", "activation-mean", "activation-std", "hrank", "taylor"]


class TinyNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> pool -> linear: groups conv1 (4 ch) and conv2 (6 ch)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.linear = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = TinyNet().eval()
    return model


def _structure(model):
    return ModelStructure(model, torch.randn(1, 3, 12, 12))


def _batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 12, 12, generator=g) for _ in range(n)]


def _conv1_scores(model, name):
    s = _structure(model)
    assert s.groups[0].name == "conv1" and s.groups[0].channels == 4
    return group_scores(s, name, _batches())[0]


def test_registry_holds_all_nine_criteria():
    assert set(ALL) <= set(list_criteria())
    assert [n for n in ALL if get_criterion(n).data_dependent] == ["apoz", "activation-mean", "activation-std",
                                                                    "hrank", "taylor"]


def test_fpgm_drops_a_duplicated_filter_before_a_small_outlier():
    model = _tiny()
    with torch.no_grad():
        v = torch.randn(3, 3, 3)
        w = model.conv1.weight
        w[0] = -0.3 * v  # small and pointing elsewhere: the lowest norm
        w[1] = v
        w[2] = v  # duplicate of 1: replaceable
        w[3] = v + 0.05 * torch.randn(3, 3, 3)
    fpgm = _conv1_scores(model, "fpgm")
    assert int(fpgm.argmin()) in (1, 2) and int(fpgm.argmax()) == 0
    assert int(_conv1_scores(model, "l1").argmin()) == 0  # a norm criterion gets it the other way round


def _silence_channel(model, c, bias):
    """Channel ``c`` of bn1 becomes the constant ``bias`` (before the ReLU), whatever the input."""
    with torch.no_grad():
        model.bn1.weight[c] = 0.0
        model.bn1.bias[c] = bias
        model.conv1.weight[c] *= 10  # a large filter: weight norms would keep it


def test_apoz_and_activation_mean_rank_an_always_zero_channel_last():
    model = _tiny()
    _silence_channel(model, 1, -5.0)
    for name in ("apoz", "activation-mean", "hrank"):
        assert int(_conv1_scores(model, name).argmin()) == 1, name
    assert float(_conv1_scores(model, "apoz")[1]) == 0.0
    assert int(_conv1_scores(model, "l1").argmax()) == 1


def test_activation_std_ranks_a_constant_channel_last_while_mean_ranks_it_first():
    model = _tiny()
    _silence_channel(model, 2, 50.0)
    std, mean = _conv1_scores(model, "activation-std"), _conv1_scores(model, "activation-mean")
    assert int(std.argmin()) == 2 and float(std[2]) < 1e-4
    assert int(mean.argmax()) == 2


def test_hrank_ranks_a_rank_one_feature_map_last():
    model = _tiny()
    _silence_channel(model, 3, 1.0)  # constant map: rank 1; the others are full rank (12)
    hrank = _conv1_scores(model, "hrank")
    assert int(hrank.argmin()) == 3 and float(hrank[3]) == pytest.approx(1.0)
    assert float(hrank[[0, 1, 2]].min()) > 4


def test_taylor_ranks_a_channel_that_does_not_reach_the_loss_last():
    model = _tiny()
    with torch.no_grad():
        model.conv2.weight[:, 0] = 0.0  # channel 0 of conv1 is read by nobody
        model.conv1.weight[0] *= 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    taylor = _conv1_scores(model, "taylor")
    assert int(taylor.argmin()) == 0 and float(taylor[0]) == 0.0 and float(taylor[1:].min()) > 0
    # labelled batches work too and give positive scores for live channels
    s = _structure(model)
    labelled = [(x, torch.randint(0, 3, (len(x),))) for x in _batches()]
    assert float(get_criterion("taylor").scores(s, labelled)[0][1:].min()) > 0
    # the criterion leaves the model as it found it: no gradients, same weights and BN statistics
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["apoz", "activation-mean", "activation-std", "hrank"])
def test_activation_criteria_leave_bn_statistics_alone(name):
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    _conv1_scores(model, name)
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_data_dependent_criteria_need_batches():
    s = _structure(_tiny())
    with pytest.raises(AutopruneError, match="calibration batches"):
        group_scores(s, "hrank")


@pytest.mark.parametrize("name", ALL)
def test_every_criterion_prunes_resnet20(resnet20_structure, synthetic_bundle, name):
    s = resnet20_structure
    batches = synthetic_bundle.calibration_batches(64)[:2]
    scores = group_scores(s, name, batches)
    assert [len(t) for t in scores] == [g.channels for g in s.groups]
    assert all(torch.isfinite(t).all() for t in scores)
    if name != "bn":  # an untrained model's BN gammas are all 1
        assert len({round(float(v), 6) for v in scores[-1]}) > 1  # not a constant score
    pruned = prune(s, Allocation.uniform(s, 0.5), name, batches)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bn_criterion_on_a_model_without_batchnorm_is_a_clear_error():
    import torch.nn as nn

    from autoprune.core.criteria import group_scores
    from autoprune.core.structure import ModelStructure
    from autoprune.errors import AutopruneError

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 8, 8))
    s = ModelStructure(net, torch.randn(1, 3, 8, 8))
    with pytest.raises(AutopruneError, match="cannot score group"):
        group_scores(s, "bn")
