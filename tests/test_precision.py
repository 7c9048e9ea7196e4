"""``--precision``: honoured inside the forward pass, fp32 state kept, clear errors."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.models import create_model
from autoprune.train.evaluator import AdaptiveBNEvaluator
from autoprune.train.precision import Precision, cpu_has_native_bf16, resolve_precision
from autoprune.train.training import TrainRecipe, train

needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU without native bf16")


def _conv_dtypes(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32),
                                        pytest.param("bf16", torch.bfloat16, marks=needs_bf16)])
def test_evaluator_and_training_run_in_the_requested_precision(synthetic_bundle, name, dtype):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    seen = _conv_dtypes(model)
    x, y = synthetic_bundle.tensors("val")
    ev = AdaptiveBNEvaluator(synthetic_bundle.calibration_batches(64)[:2], x[:64], y[:64], precision=name)
    ev(model)
    assert seen and set(seen) == {dtype}
    assert all(b.dtype == torch.float32 for b in model.buffers() if b.is_floating_point())  # BN stats stay fp32
    seen.clear()
    opt_model = create_model("resnet20", 10)
    seen = _conv_dtypes(opt_model)
    train(opt_model, synthetic_bundle, TrainRecipe(epochs=0.05, batch_size=64), progress=False, precision=name)
    assert seen and dtype in set(seen)
    assert all(p.dtype == torch.float32 for p in opt_model.parameters())


def test_auto_resolves_by_hardware_not_by_name():
    auto = resolve_precision("auto", "cpu")
    assert auto == Precision("bf16" if cpu_has_native_bf16() else "fp32", "cpu")
    assert resolve_precision("fp32", "cpu").autocast().__class__.__name__ == "nullcontext"


def test_unrunnable_precision_is_a_one_line_error():
    with pytest.raises(AutopruneError, match="fp16 is for CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(AutopruneError, match="unknown precision 'int8'"):
        resolve_precision("int8", "cpu")
    res = subprocess.run([sys.executable, "-m", "autoprune.cli", "evaluate", "--model", "resnet20", "--data",
                          "synthetic", "--precision", "fp16"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "fp16 is for CUDA" in res.stderr


def test_run_folder_records_the_precision_used(tmp_path, capsys):
    from autoprune.cli.main import main

    run = tmp_path / "run"
    assert main(["search", "--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64",
                 "--macs", "0.5", "--agent", "random", "--episodes", "1", "--finalists", "0", "--output", str(run), "--no-progress",
                 "--precision", "fp32"]) == 0
    assert json.loads((run / "summary.json").read_text())["precision"] == "fp32"
    assert "precision: fp32" in (run / "config.yaml").read_text()
