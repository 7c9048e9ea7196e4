"""``autoprune export``: pruned models to ONNX / TorchScript, checked against an independent runtime."""
import functools
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from autoprune.cli.main import main
from autoprune.core.allocation import Allocation
from autoprune.core.io import save_pruned
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.deploy.export import ParityError, export
from autoprune.errors import AutopruneError
from autoprune.models import create_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import onnxruntime as ort  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated, still the TorchScript API

SIZES = {"resnet20": 32, "tv:resnet18": 64, "tv:mobilenet_v2": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def pruned_model(name: str) -> nn.Module:
    """A randomly pruned model whose BN statistics are random too, so logits are O(1), not ~0."""
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    size = SIZES[name]
    s = ModelStructure(model, torch.randn(1, 3, size, size), num_classes=10)
    rng = np.random.default_rng(0)
    counts = [int(rng.integers(max(1, g.channels // 4), g.channels + 1)) for g in s.groups]
    return prune(s, Allocation.from_counts(s, counts)).eval()


def reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list(SIZES))
def test_export_parity(tmp_path, name, fmt):
    model, size = pruned_model(name), SIZES[name]
    path = tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'ts'}"
    report = export(model, path, fmt, input_size=size, batch_sizes=(1, 4))
    assert report["format"] == fmt and report["batch_sizes"] == [1, 4] and report["file_bytes"] == path.stat().st_size
    assert set(report["max_abs_diff"]) == {"1", "4"} and max(report["max_abs_diff"].values()) <= 1e-4
    assert model.training is False and next(model.parameters()).dtype == torch.float32

    # independent oracle: reload the file ourselves, fresh inputs at both batch sizes
    if fmt == "onnx":
        assert isinstance(report["opset"], int) and report["opset"] >= 18
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
        assert isinstance(sess.get_inputs()[0].shape[0], str)  # symbolic (dynamic) batch axis
        run = lambda x: sess.run(["logits"], {"input": x.numpy()})[0]  # noqa: E731
    else:
        assert report["opset"] is None and report["method"] == "trace"
        loaded = torch.jit.load(str(path))
        run = lambda x: reference(loaded, x)  # noqa: E731
    torch.manual_seed(1)
    for b in (1, 4):
        x = torch.randn(b, 3, size, size)
        ref = reference(model, x)
        assert np.abs(ref).max() > 1e-2  # the comparison means something
        diff = float(np.abs(run(x) - ref).max())
        print(f"{name} {fmt} batch {b}: max |diff| {diff:.3g}")
        assert diff <= 1e-4


def test_cli_exports_saved_pruned_file_and_refuses_overwrite(tmp_path, capsys):
    ckpt = tmp_path / "p.pt"
    save_pruned(pruned_model("resnet20"), "resnet20", 10, ckpt)
    out = tmp_path / "deploy" / "r20.onnx"
    args = ["export", "--model", "resnet20", "--checkpoint", str(ckpt), "--output", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "parity ok" in lines[0] and str(out) in lines[0]
    report = json.loads((tmp_path / "deploy" / "r20.onnx.json").read_text())
    assert report["model"] == "resnet20" and report["input_size"] == 32 and max(report["max_abs_diff"].values()) <= 1e-4
    x = torch.randn(3, 3, 32, 32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - reference(pruned_model("resnet20"), x)).max() <= 1e-4

    before = out.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and out.read_bytes() == before


def test_cli_exports_dense_weights_to_torchscript(tmp_path, capsys):
    torch.manual_seed(0)
    dense = create_model("resnet20", 7).eval()
    torch.save(dense.state_dict(), tmp_path / "w.th")
    out = tmp_path / "r20.ts"
    assert main(["export", "--model", "resnet20", "--checkpoint", str(tmp_path / "w.th"), "--output", str(out),
                 "--format", "torchscript", "--num-classes", "7", "--input-size", "40", "--batch-sizes", "2", "3"]) == 0
    assert "parity ok" in capsys.readouterr().out
    report = json.loads((tmp_path / "r20.ts.json").read_text())
    assert report["batch_sizes"] == [2, 3] and report["input_size"] == 40
    x = torch.randn(2, 3, 40, 40)
    assert np.abs(reference(torch.jit.load(str(out)), x) - reference(dense, x)).max() <= 1e-4


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(AutopruneError, match=r"pip install 'autoprune\[deploy\]'") as info:
        export(pruned_model("resnet20"), tmp_path / "m.onnx", input_size=32)
    assert "\n" not in str(info.value) and "onnxruntime" in str(info.value) and not (tmp_path / "m.onnx").exists()
    ckpt = tmp_path / "p.pt"
    save_pruned(pruned_model("resnet20"), "resnet20", 10, ckpt)
    assert main(["export", "--model", "resnet20", "--checkpoint", str(ckpt), "--output", str(tmp_path / "c.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "autoprune[deploy]" in err


def test_older_opset_is_honoured(tmp_path):
    report = export(pruned_model("resnet20"), tmp_path / "m13.onnx", input_size=32, opset=13)
    assert report["opset"] == 13 and report["method"] == "torchscript-onnx"
    assert max(report["max_abs_diff"].values()) <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "m13.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(sess.get_inputs()[0].shape[0], str)


class BatchBaked(nn.Module):
    """Tracing bakes ``int(x.shape[0])`` in as a constant: the export is wrong at other batch sizes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.mean((2, 3))) * int(x.shape[0])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_parity_failure_is_one_line_and_keeps_the_file(tmp_path):
    path = tmp_path / "bad.ts"
    with pytest.raises(ParityError, match=r"parity failed: at batch 1, max \|diff\| .* is .*x what rtol") as info:
        export(BatchBaked(), path, "torchscript", input_size=8)
    assert "\n" not in str(info.value) and "kept" in str(info.value)
    report = info.value.report
    assert path.exists() and report["parity_ok"] is False and report["max_tolerance_ratio"]["1"] > 1
    with pytest.raises(AutopruneError, match="unknown export format"):
        export(BatchBaked(), path, "tflite", input_size=8)


class Large(nn.Module):
    """Outputs in the thousands, as random-weight models give: float32 rounding alone is ~1e-4 absolute."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(x.mean((2, 3))) * 5000.0 + 10000.0


def test_parity_is_relative_as_numpy_allclose():
    """A fixed absolute tolerance (the old 1e-4) fails exports of large outputs that are as exact as
    float32 allows; the check is numpy.allclose's: |out - ref| <= atol + rtol * |ref|."""
    from autoprune.deploy.export import _parity

    model = Large().eval()
    off = lambda x: (model(x) * (1 + 3e-6)).detach().numpy()  # noqa: E731  (3e-6 relative: ~0.03 absolute)
    diffs, ratios, failure = _parity(model, off, (1, 4), (8, 8), torch.Generator().manual_seed(0), 1e-3, 1e-4)
    assert failure is None and max(diffs.values()) > 1e-4 and max(ratios.values()) < 0.01
    off = lambda x: (model(x) * (1 + 3e-3)).detach().numpy()  # noqa: E731
    _, ratios, failure = _parity(model, off, (1,), (8, 12), torch.Generator().manual_seed(0), 1e-3, 1e-4)
    assert failure is not None and "at batch 1" in failure and 2 < ratios["1"] < 4


def test_cli_failed_parity_keeps_file_says_how_far_and_exits_nonzero(tmp_path, capsys):
    ckpt = tmp_path / "p.pt"
    save_pruned(pruned_model("resnet20"), "resnet20", 10, ckpt, input_size=[32, 32])
    out = tmp_path / "r20.onnx"
    assert main(["export", "--model", "resnet20", "--checkpoint", str(ckpt), "--output", str(out),
                 "--rtol", "0", "--atol", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "parity failed" in err and "kept" in err and "max |diff|" in err
    report = json.loads((tmp_path / "r20.onnx.json").read_text())
    assert out.exists() and report["parity_ok"] is False and report["input_size"] == 32
