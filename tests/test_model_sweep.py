"""Every model a user brings, in CI: the cheapest member of each torchvision family and a list of timm
models (31 in all), each pruned to 50% of its MACs at its own input size (FlopCounterMode on the saved
and reloaded model, within 1%), exported to ONNX and matched by onnxruntime; or refused in one line.

Policy: ``bench/model_sweep.py`` runs the same ``check`` on *every* torchvision classifier and the timm
list and commits the table (``bench/results/model-sweep.md``); this test covers each family at its
cheapest member, plus the models whose handling was fixed (MobileViT's cost of layers run on patches
folded into the batch, PoolFormer's width kept in a shape tuple, RexNet's and CSPNet's one-line
refusals), with torch's TorchScript-based ONNX exporter (``opset=17``: about 5x faster than the default
exporter), so the suite stays within its time budget. Architectures that are another's twin with other
weights (DeiT-Tiny = ViT-Tiny; timm's EfficientNet-B0 and MobileNetV3-Small = torchvision's), and a second
member of a family already here (RegNetX-400MF next to timm's RegNetX-002; AlexNet next to RepVGG, both
plain), run only in the sweep.
"""
import pytest

from bench.model_sweep import check

pytest.importorskip("onnxruntime")
pytest.importorskip("timm")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TORCHVISION = ["tv:resnet18", "tv:mobilenet_v2", "tv:mobilenet_v3_small", "tv:mnasnet0_5", "tv:efficientnet_b0",
               "tv:regnet_y_400mf", "tv:squeezenet1_1", "tv:googlenet", "tv:inception_v3",
               "tv:densenet121", "tv:shufflenet_v2_x0_5", "tv:convnext_tiny", "tv:vit_b_32", "tv:swin_t",
               "tv:swin_v2_t", "tv:maxvit_t"]
TIMM = ["timm:resnet18", "timm:ghostnet_100", "timm:convnext_atto", "timm:vit_tiny_patch16_224",
        "timm:regnetx_002", "timm:regnety_002", "timm:lcnet_050", "timm:tinynet_e", "timm:levit_128s",
        "timm:mixnet_s", "timm:repvgg_a0", "timm:mobilevit_xxs", "timm:poolformer_s12", "timm:rexnet_100",
        "timm:cspresnet50"]
# what autoprune refuses, and the words its one line must contain (bench/results/model-sweep.md has the lines)
REFUSED = {"tv:shufflenet_v2_x0_5": "channel shuffle", "tv:swin_t": "window attention",
           "tv:swin_v2_t": "window attention", "tv:maxvit_t": "window attention",
           "timm:ghostnet_100": "maps its channels unevenly", "timm:levit_128s": "beyond the width",
           "timm:mixnet_s": "maps its channels unevenly", "timm:rexnet_100": "residual to a slice of its channels",
           "timm:cspresnet50": "beyond the width"}


def test_the_sweep_covers_every_family():
    from bench.model_sweep import family

    assert len(TORCHVISION + TIMM) >= 30
    assert {"residual", "depthwise", "depthwise + SE", "grouped", "grouped + SE", "dense", "inception",
            "channel shuffle", "attention", "ConvNeXt", "metaformer"} <= {family(m) for m in TORCHVISION + TIMM}


@pytest.mark.parametrize("name", TORCHVISION + TIMM)
def test_model_prunes_to_half_its_macs_or_is_refused_in_one_line(tmp_path, name):
    row = check(name, tmp_path, opset=17)
    assert row["result"] != "failing", f"{name} at {row['input_size']} ({row.get('stage')}): {row['reason']}"
    if name in REFUSED:
        assert row["result"] == "refused" and REFUSED[name] in row["reason"] and "\n" not in row["reason"]
        return
    assert row["result"] == "pruned", row.get("reason")
    assert abs(row["macs_kept"] / 0.5 - 1) <= 0.01 and row["reload_identical"] and row["export_ok"]
