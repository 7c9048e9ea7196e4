"""Every command that builds a model counts its costs at ``--input-size``, records it in the run folder,
and the figures it reports are what torch's FlopCounterMode counts at that size (not at the data's
32-pixel resolution). ``prune`` is covered in ``test_any_model.py``, ``export`` in ``test_export.py``; here
``search``, ``progressive``, ``apply``, ``compare`` and ``train``. (``evaluate`` counts no cost.)"""
import json

import pytest
import torch
import yaml

from autoprune.cli.main import main
from autoprune.core.io import load_model, load_pruned

from .conftest import flop_counter_cost

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

MODEL, SIZE = "tv:mobilenet_v3_small", 96  # the family's default is 224; the data are 32x32
SYN = ["--model", MODEL, "--data", "synthetic", "--val-size", "32", "--calib-size", "16", "--device", "cpu",
       "--input-size", str(SIZE), "--seed", "1"]


def macs_ratio_at_input_size(path) -> float:
    torch.manual_seed(0)
    x = torch.randn(1, 3, SIZE, SIZE)
    return flop_counter_cost(load_pruned(path)[0], x)[0] / flop_counter_cost(load_model(MODEL, 10), x)[0]


def recorded_input_size(run) -> str:
    return str(yaml.safe_load((run / "config.yaml").read_text())["input_size"])


def test_search_counts_macs_at_the_input_size(tmp_path, capsys):
    run = tmp_path / "s"
    assert main(["search", *SYN, "--finalists", "0", "--agent", "random", "--episodes", "2", "--macs", "0.5", "--output", str(run)]) == 0
    assert f"MACs at {SIZE}x{SIZE}" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["input_size"] == [SIZE, SIZE] and recorded_input_size(run) in (str(SIZE), f"{SIZE}x{SIZE}")
    assert macs_ratio_at_input_size(run / "best_model.pt") == pytest.approx(summary["best"]["cost_ratio"], abs=1e-6)
    assert summary["best"]["cost_ratio"] <= 0.5


def test_progressive_counts_macs_at_the_input_size(tmp_path, capsys):
    """Before: every cut was costed on one image of the data (32x32), where a budget of 50% of MACs is a
    different network than at the size the model is deployed at."""
    run = tmp_path / "p"
    assert main(["progressive", *SYN, "--train-subset", "32", "--batch-size", "16", "--epochs", "2",
                 "--prune-every", "0.5", "--target", "0.5", "--output", str(run)]) == 0
    assert f"of original at {SIZE}x{SIZE}" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["input_size"] == [SIZE, SIZE] and recorded_input_size(run) in (str(SIZE), f"{SIZE}x{SIZE}")
    assert macs_ratio_at_input_size(run / "model.pt") == pytest.approx(summary["macs_ratio"], abs=1e-6)
    assert 0.49 <= summary["macs_ratio"] <= 0.5


def test_apply_counts_macs_at_the_input_size(tmp_path):
    run = tmp_path / "a"
    assert main(["apply", *SYN, "--policy", "bench/results/policies/universal.zip", "--macs", "0.5", "--no-evaluate",
                 "--output", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["input_size"] == [SIZE, SIZE] and recorded_input_size(run) in (str(SIZE), f"{SIZE}x{SIZE}")
    assert macs_ratio_at_input_size(run / "model.pt") == pytest.approx(report["macs_after"] / report["macs_before"])
    assert report["cost_ratio"] <= 0.5


def test_compare_and_train_count_macs_at_the_input_size(tmp_path):
    torch.manual_seed(0)
    dense_macs = flop_counter_cost(load_model(MODEL, 10), torch.randn(1, 3, SIZE, SIZE))[0]
    run = tmp_path / "c"
    assert main(["compare", *SYN, "--targets", "0.5", "--seeds", "0", "--allocators", "uniform", "--recipes",
                 "finetune", "--epochs", "0.5", "--train-subset", "32", "--batch-size", "16", "--finalists", "0",
                 "--output", str(run)]) == 0
    record = json.loads((run / "results.json").read_text())
    assert record["dense"]["macs"] == dense_macs and recorded_input_size(run) in (str(SIZE), f"{SIZE}x{SIZE}")
    assert 0.49 <= record["rows"][0]["macs_ratio"] <= 0.5
    run = tmp_path / "t"
    train_args = [a for a in SYN if a not in ("--calib-size", "16")]  # train recalibrates nothing
    assert main(["train", *train_args, "--epochs", "0.5", "--train-subset", "32", "--batch-size", "16", "--output", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["input_size"] == [SIZE, SIZE] and summary["macs_per_image"] == dense_macs
