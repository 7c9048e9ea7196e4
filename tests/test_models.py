import pytest
import torch

from autoprune.core.cost import measure_cost
from autoprune.core.io import load_model
from autoprune.errors import AutopruneError
from autoprune.models import create_model

from .conftest import RESNET20_CKPT, RESNET56_CKPT, flop_counter_cost


@pytest.mark.parametrize("name,macs,params", [
    ("resnet20", 40_551_040, 269_722),
    ("resnet32", 68_862_592, 464_154),
    ("resnet56", 125_485_696, 853_018),
])
def test_cifar_resnet_cost_matches_papers(name, macs, params):
    model, x = create_model(name, 10), torch.randn(1, 3, 32, 32)
    assert flop_counter_cost(model, x) == (macs, params)  # torch's own counter agrees with the papers
    assert measure_cost(model, x) == (macs, params)  # and so does autoprune's


def test_torchvision_resnet18_macs():
    model, x = create_model("tv:resnet18", 1000), torch.randn(1, 3, 224, 224)
    macs, _ = measure_cost(model, x)
    assert abs(macs - 1.82e9) / 1.82e9 < 0.01 and macs == flop_counter_cost(model, x)[0]


@pytest.mark.skipif(not RESNET20_CKPT.exists(), reason="shared checkpoints not present")
def test_shared_checkpoint_loads_and_predicts():
    model = load_model("resnet20", 10, RESNET20_CKPT).eval()
    w = torch.load(RESNET20_CKPT, map_location="cpu", weights_only=True)["state_dict"]["module.conv1.weight"]
    assert torch.equal(model.conv1.weight, w)


def test_unknown_model_is_one_line_error():
    with pytest.raises(AutopruneError, match="unknown model 'resnet21'"):
        create_model("resnet21")
    with pytest.raises(AutopruneError, match="unknown torchvision model"):
        create_model("tv:not_a_net")


def test_bad_checkpoints(tmp_path):
    with pytest.raises(AutopruneError, match="not found"):
        load_model("resnet20", 10, tmp_path / "missing.th")
    corrupt = tmp_path / "corrupt.th"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(AutopruneError, match="cannot be read"):
        load_model("resnet20", 10, corrupt)
    if RESNET56_CKPT.exists():
        with pytest.raises(AutopruneError, match="does not match the model"):
            load_model("resnet20", 10, RESNET56_CKPT)
