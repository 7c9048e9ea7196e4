"""``--score reconstruct``: the least-squares refit of the layers after a cut, checked against torch's own
convolution on images the refit never saw, and the search's saved model is what it scored."""
import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.core.allocation import Allocation
from autoprune.core.io import load_model, load_pruned
from autoprune.core.problem import PruningProblem
from autoprune.core.structure import REMOVED_ATTR, ModelStructure
from autoprune.errors import AutopruneError
from autoprune.train.reconstruct import DenseTargets, input_pruned_layers, refit_pruned_layers

from .conftest import RESNET20_CKPT

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def _layer_io(model: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of ``model``'s layer ``name`` on ``x``, eval mode."""
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.update(i=i[0], o=o))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen["i"], seen["o"]


def _kept(n: int, removed: list[int]) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[removed] = False
    return keep


def _check_refit_lowers_error(dense: nn.Module, structure: ModelStructure, keep: float, fit_x, test_x):
    pruned = PruningProblem(structure, keep).pruned_model(Allocation.uniform(structure, keep))
    before = copy.deepcopy(pruned)
    layers = input_pruned_layers(structure)
    reports = refit_pruned_layers(pruned, DenseTargets(dense, layers, fit_x, positions=16), keep_scale=False)
    assert {r.name for r in reports} <= set(layers) and reports
    removed = getattr(pruned, REMOVED_ATTR)
    for r in reports:
        assert r.error_after < r.error_before
        # oracle: torch's own conv/linear on the refitted model's inputs to this layer (held-out images), against
        # the dense layer's output on the dense inputs, restricted to the channels the pruned layer keeps
        x_in, _ = _layer_io(pruned, r.name, test_x)
        _, dense_out = _layer_io(dense, r.name, test_x)
        out_keep = _kept(dense_out.shape[1], removed[r.name].get("out", []))
        target = dense_out[:, out_keep]
        old, new = before.get_submodule(r.name), pruned.get_submodule(r.name)
        with torch.no_grad():
            err_old = float(((old(x_in) - target) ** 2).mean())
            err_new = float(((new(x_in) - target) ** 2).mean())
        assert err_new < err_old, (r.name, err_old, err_new)
    return reports


def test_refit_lowers_each_layers_error_on_a_tiny_model():
    torch.manual_seed(0)
    dense = Tiny().eval()
    structure = ModelStructure(dense, torch.randn(1, 3, 16, 16), num_classes=10)
    reports = _check_refit_lowers_error(dense, structure, 0.5, torch.randn(64, 3, 16, 16), torch.randn(32, 3, 16, 16))
    assert [r.name for r in reports] == ["conv2", "fc"]  # conv1 loses outputs only; conv2 and fc lose inputs


def test_refit_lowers_each_layers_error_on_resnet20():
    dense = load_model("resnet20", 10, RESNET20_CKPT).eval()
    structure = ModelStructure(dense, torch.randn(1, 3, 32, 32), num_classes=10)
    gen = torch.Generator().manual_seed(0)
    fit_x, test_x = torch.randn(128, 3, 32, 32, generator=gen), torch.randn(32, 3, 32, 32, generator=gen)
    reports = _check_refit_lowers_error(dense, structure, 0.3, fit_x, test_x)
    assert len(reports) == 9  # every block's second convolution lost input channels



@pytest.mark.parametrize("model", ["tiny", "resnet20"])
def test_refit_keeps_the_pruned_weights_scale_where_a_batchnorm_follows(model):
    """keep_scale: each output channel of a refitted layer that feeds a BN gets back the plain pruned weights'
    norm (the refit doubles it, and fine-tuning then stalls), and the model computes what the unscaled refit
    computes, in eval mode and after BN recalibration; a layer without a BN after it (fc) is left as refitted."""
    from autoprune.train.evaluator import recalibrate_bn

    torch.manual_seed(0)
    dense = (Tiny() if model == "tiny" else load_model("resnet20", 10, RESNET20_CKPT)).eval()
    size = 16 if model == "tiny" else 32
    structure = ModelStructure(dense, torch.randn(1, 3, size, size), num_classes=10)
    gen = torch.Generator().manual_seed(0)
    fit_x, test_x = torch.randn(128, 3, size, size, generator=gen), torch.randn(64, 3, size, size, generator=gen)
    plain = PruningProblem(structure, 0.4).pruned_model(Allocation.uniform(structure, 0.4))
    targets = DenseTargets(dense, input_pruned_layers(structure), fit_x, positions=16)
    unscaled, scaled = copy.deepcopy(plain), copy.deepcopy(plain)
    reports = refit_pruned_layers(unscaled, targets, keep_scale=False)
    assert [r.name for r in refit_pruned_layers(scaled, targets)] == [r.name for r in reports]
    for r in reports:
        norm = {m: dict(net.named_modules())[r.name].weight.detach().flatten(1).norm(dim=1)
                for m, net in (("plain", plain), ("unscaled", unscaled), ("scaled", scaled))}
        if r.name == "fc":
            assert torch.equal(norm["scaled"], norm["unscaled"])
        else:
            assert torch.allclose(norm["scaled"], norm["plain"], rtol=1e-5)
            assert not torch.allclose(norm["unscaled"], norm["plain"], rtol=1e-2)  # what the rescale undoes
    def same_function():  # up to BN's eps, which the rescale moves relative to each channel's variance
        with torch.no_grad():
            a, b = scaled.eval()(test_x), unscaled.eval()(test_x)
        assert float((a - b).abs().max()) <= 1e-3 * float(b.abs().max())

    same_function()
    recalibrate_bn(scaled, [fit_x]), recalibrate_bn(unscaled, [fit_x])
    same_function()


def test_scale_folds_leave_out_a_layer_whose_output_is_also_used_elsewhere():
    """The rescale is only done where the BN absorbs it: a conv whose output also feeds the head unnormalized is
    left out (found once per model), and the refit then leaves that layer's weights as refitted."""
    from autoprune.train.reconstruct import scale_folds

    class Leaky(Tiny):  # conv2's output feeds bn2 and, unnormalized, the head: scaling it would change the model
        def forward(self, x):
            z = self.conv2(F.relu(self.bn1(self.conv1(x))))
            return self.fc(F.relu(self.bn2(z)).mean((2, 3)) + z.mean((2, 3)))

    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    leaky, tiny = Leaky().eval(), Tiny().eval()
    state = copy.deepcopy(leaky.state_dict())
    assert scale_folds(leaky, ["conv1", "conv2", "fc"], images) == {"conv1": "bn1"}
    assert all(torch.equal(v, state[k]) for k, v in leaky.state_dict().items())  # the check ran on a copy
    assert scale_folds(tiny, ["conv1", "conv2", "fc"], images) == {"conv1": "bn1", "conv2": "bn2"}

    structure = ModelStructure(leaky, torch.randn(1, 3, 16, 16), num_classes=10)
    plain = PruningProblem(structure, 0.5).pruned_model(Allocation.uniform(structure, 0.5))
    targets = DenseTargets(leaky, input_pruned_layers(structure), torch.randn(64, 3, 16, 16), positions=16)
    assert "conv2" in targets.layers and "conv2" not in targets.folds
    unscaled, scaled = copy.deepcopy(plain), copy.deepcopy(plain)
    refit_pruned_layers(unscaled, targets, keep_scale=False)
    refit_pruned_layers(scaled, targets)
    assert torch.equal(scaled.conv2.weight, unscaled.conv2.weight)
    assert not torch.equal(scaled.conv2.weight, plain.conv2.weight)


def test_refit_needs_a_model_pruned_by_autoprune():
    torch.manual_seed(0)
    dense = Tiny().eval()
    structure = ModelStructure(dense, torch.randn(1, 3, 16, 16), num_classes=10)
    targets = DenseTargets(dense, input_pruned_layers(structure), torch.randn(8, 3, 16, 16))
    with pytest.raises(AutopruneError, match="pruned by autoprune"):
        refit_pruned_layers(copy.deepcopy(dense), targets)


@pytest.mark.slow
def test_search_with_reconstruct_saves_the_refitted_model(tmp_path, capsys):
    """best_model.pt holds the refitted weights: loaded back from disk it scores what the search reported."""
    from autoprune.cli.main import main
    from autoprune.train.evaluator import accuracy
    from autoprune.workspace import open_workspace

    run = tmp_path / "run"
    code = main(["search", "--model", "resnet20", "--checkpoint", str(RESNET20_CKPT), "--data", "synthetic",
                 "--val-size", "100", "--calib-size", "64", "--macs", "0.5", "--agent", "random", "--episodes", "4",
                 "--score", "reconstruct", "--finalists", "0", "--precision", "fp32", "--output", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "reconstructed accuracy" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["score"] == "reconstruct"
    saved = load_pruned(run / "best_model.pt")[0]
    ws = open_workspace("resnet20", str(RESNET20_CKPT), "synthetic", val_size=100, calib_size=64)
    x, y = ws.data.tensors("val")
    assert accuracy(saved, x, y) == pytest.approx(summary["best"]["score_value"], abs=1e-9)
    # and it is not the un-refitted model: plain adaptive BN of the same allocation scores differently
    alloc = Allocation.load(run / "best_allocation.json", ws.structure())
    plain = ws.scorer(ws.problem(0.5), "adaptive-bn").value(alloc)
    assert plain != pytest.approx(summary["best"]["score_value"], abs=1e-9)


def test_apply_with_reconstruct_saves_the_model_it_scored(tmp_path, capsys, swept):
    """``apply --score reconstruct``: model.pt holds the refitted weights, and read back from disk it scores what
    the report says (plain held-out top-1 == the reconstruct score)."""

    from autoprune.cli.main import main

    common = ["--model", "resnet20", "--checkpoint", str(RESNET20_CKPT), "--data", "synthetic", "--val-size", "100",
              "--calib-size", "64", "--macs", "0.5", "--precision", "fp32"]
    search = tmp_path / "search"  # a policy of this version's observation layout, played by apply below
    assert main(["search", *common, "--finalists", "0", "--episodes", "2", "--warmup-episodes", "1", "--eval-every", "1",
                 "--output", str(search), "--no-progress", "--sensitivity", swept()]) == 0
    capsys.readouterr()
    out = tmp_path / "applied"
    code = main(["apply", "--policy", str(search / "policy.zip"), *common, "--score", "reconstruct",
                 "--output", str(out)])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert "reconstructed accuracy" in text
    report = json.loads((out / "report.json").read_text())
    assert report["score"] == "reconstruct"
    assert report["saved_model_val_accuracy"] == pytest.approx(report["score_value"], abs=1e-9)
