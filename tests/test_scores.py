"""``--score finetune:STEPS``: the short-fine-tune proxy, as a search uses it and saves it."""
import copy
import json

import pytest
import torch

from autoprune.cli.main import main
from autoprune.core.io import load_pruned
from autoprune.errors import AutopruneError
from autoprune.models import create_model
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy
from autoprune.train.scores import FinetuneEvaluator, finetune_steps

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_spec_parsing():
    assert finetune_steps("adaptive-bn") == 0 and finetune_steps("finetune:100") == 100
    for bad in ("finetune", "finetune:0", "finetune:-3", "finetune:1.5", "abn"):
        with pytest.raises(AutopruneError, match="use adaptive-bn or finetune:STEPS"):
            finetune_steps(bad)


@pytest.mark.slow
def test_finetune_score_trains_then_scores_deterministically(synthetic_bundle):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    x, y = synthetic_bundle.tensors("val")
    calib = synthetic_bundle.calibration_batches(64)
    ft = FinetuneEvaluator(synthetic_bundle, 6, calib, x, y, lr=0.05, precision="fp32")
    abn = AdaptiveBNEvaluator(calib, x, y, precision="fp32")
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    score = ft(first)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is left where it was
    assert ft(second) == score  # same data order for every candidate: only the shape differs
    assert not torch.equal(first.conv1.weight, model.conv1.weight)  # it did train
    assert ft.recipe.total_steps(len(synthetic_bundle.train)) == 6
    prepared = ft.prepare(copy.deepcopy(model))  # what a search saves: the model as scored
    assert accuracy(prepared, x, y) == pytest.approx(score, abs=1e-9)
    assert abn(copy.deepcopy(model)) != score


@pytest.mark.slow
def test_search_with_finetune_score_saves_the_scored_model(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["search", "--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64",
                 "--macs", "0.5", "--agent", "random", "--episodes", "3", "--score", "finetune:4",
                 "--precision", "fp32", "--output", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "4-step fine-tuned accuracy" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["score"] == "finetune:4"
    assert json.loads((run / "best_allocation.json").read_text())["score"] == "finetune:4"
    # the file on disk, loaded back, scores what the search reported for it
    saved = load_pruned(run / "best_model.pt")[0]
    from autoprune.workspace import open_workspace

    x, y = open_workspace("resnet20", None, "synthetic", val_size=100, calib_size=64).data.tensors("val")
    assert accuracy(saved, x, y) == pytest.approx(summary["best"]["score_value"], abs=1e-9)
    code = main(["search", "--model", "resnet20", "--data", "synthetic", "--macs", "0.5", "--score", "finetune",
                 "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown --score 'finetune'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_compare_scores_allocators_by_the_chosen_score(tmp_path, capsys):
    base = ["compare", "--model", "resnet20", "--data", "synthetic", "--targets", "0.5", "--allocators", "uniform",
            "--recipes", "finetune", "--epochs", "0.25", "--train-subset", "128", "--batch-size", "64", "--val-size",
            "100", "--calib-size", "64", "--device", "cpu", "--precision", "fp32"]
    pre = {}
    for score in ("adaptive-bn", "finetune:12"):
        torch.manual_seed(0)  # the same random-init model for both runs
        out = tmp_path / score.replace(":", "")
        assert main(base + ["--score", score, "--output", str(out)]) == 0
        record = json.loads((out / "results.json").read_text())
        assert record["config"]["score"] == score
        pre[score] = record["rows"][0]["score_value"]
    report = (tmp_path / "finetune12" / "report.md").read_text()
    assert "12-step fine-tuned acc %" in report and "adaptive-BN acc %" not in report
    assert "adaptive-BN acc %" in (tmp_path / "adaptive-bn" / "report.md").read_text()
    assert pre["finetune:12"] != pre["adaptive-bn"]  # the column holds the score the allocators used
    capsys.readouterr()
    assert main(base + ["--score", "finetune:x", "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "unknown --score 'finetune:x'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
