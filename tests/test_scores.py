"""``--score``: every score a search can rank candidates by, as a search uses it and saves it."""
import copy
import json

import pytest
import torch

from autoprune.cli.main import main
from autoprune.core.io import load_pruned
from autoprune.errors import AutopruneError
from autoprune.models import create_model
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy
from autoprune.train.scores import ScoreEvaluator, ScoreSpec, parse_score

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_spec_parsing():
    assert parse_score("adaptive-bn") == ScoreSpec()
    assert parse_score("finetune:100") == ScoreSpec("finetune", 100)
    assert parse_score("finetune-kd:25:loss") == ScoreSpec("finetune-kd", 25, "loss")
    assert parse_score("adaptive-bn:kd") == ScoreSpec("adaptive-bn", 0, "kd")
    for text in ("adaptive-bn", "adaptive-bn:loss", "reconstruct", "reconstruct:loss", "finetune:10",
                 "finetune-kd:50", "finetune:10:kd"):
        assert str(parse_score(text)) == text  # what run folders record is what was typed
    for bad in ("finetune", "finetune:0", "finetune:-3", "finetune:1.5", "abn", "adaptive-bn:top5",
                "reconstruct:loss:kd", "finetune-kd", "adaptive-bn:3"):
        with pytest.raises(AutopruneError) as err:
            parse_score(bad)
        assert f"'{bad}'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_finetune_score_trains_then_scores_deterministically(synthetic_bundle):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    x, y = synthetic_bundle.tensors("val")
    calib = synthetic_bundle.calibration_batches(64)
    ft = ScoreEvaluator(ScoreSpec("finetune", 6), calib, x, y, data=synthetic_bundle, lr=0.05, precision="fp32")
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
                 "--macs", "0.5", "--agent", "random", "--episodes", "3", "--score", "finetune:4", "--finalists", "0",
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
    # training it says that the plain pruned weights are the better start; a plain pruned file gets no note
    from autoprune.core.io import save_pruned
    from autoprune.experiments.train import start_is_prepared

    save_pruned(saved, "resnet20", 10, tmp_path / "plain.pt")
    assert start_is_prepared(run / "best_model.pt") == "finetune:4" and start_is_prepared(tmp_path / "plain.pt") is None
    code = main(["train", "--model", "resnet20", "--checkpoint", str(run / "best_model.pt"), "--data", "synthetic",
                 "--epochs", "0.01", "--train-subset", "64", "--output", str(tmp_path / "tuned")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "holds the weights its score prepared (finetune:4)" in out and "prune --allocation" in out
    code = main(["search", "--model", "resnet20", "--data", "synthetic", "--macs", "0.5", "--score", "finetune",
                 "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "--score 'finetune'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_compare_scores_allocators_by_the_chosen_score(tmp_path, capsys):
    base = ["compare", "--model", "resnet20", "--data", "synthetic", "--targets", "0.5", "--allocators", "uniform",
            "--recipes", "finetune", "--epochs", "0.25", "--train-subset", "128", "--batch-size", "64", "--val-size",
            "100", "--calib-size", "64", "--device", "cpu", "--precision", "fp32", "--finalists", "0"]
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
    assert "--score 'finetune:x'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def _pruned_resnet20(keep: float = 0.5):
    from autoprune.core.allocation import Allocation
    from autoprune.core.problem import PruningProblem
    from autoprune.core.structure import ModelStructure

    torch.manual_seed(0)
    dense = create_model("resnet20", 10).eval()
    structure = ModelStructure(dense, torch.randn(1, 3, 32, 32))
    problem = PruningProblem(structure, keep)
    return structure, problem.pruned_model(Allocation.uniform(structure, keep))


def test_loss_and_kd_metrics_match_torch_directly(synthetic_bundle):
    """adaptive-bn:loss is minus the held-out cross-entropy, adaptive-bn:kd minus the KL divergence from the
    dense model's outputs, both after the same BN recalibration; checked with torch.nn.functional directly."""
    import torch.nn.functional as F

    from autoprune.train.evaluator import recalibrate_bn
    from autoprune.train.scores import make_evaluator

    structure, pruned = _pruned_resnet20()
    x, y = synthetic_bundle.tensors("val")
    calib = synthetic_bundle.calibration_batches(64)
    expected = copy.deepcopy(pruned)
    recalibrate_bn(expected, calib)
    with torch.no_grad():
        student, teacher = expected(x), structure.model.eval()(x)
    kl = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
    # the same quantity written out: sum_c p_dense (log p_dense - log p_pruned), averaged over images
    p = F.softmax(teacher, 1)
    assert float(kl) == pytest.approx(float((p * (p.log() - F.log_softmax(student, 1))).sum(1).mean()), rel=1e-4)
    kwargs = dict(data=synthetic_bundle, calib_batches=calib, val_x=x, val_y=y, precision="fp32",
                  structure=structure)
    kd = make_evaluator("adaptive-bn:kd", **kwargs)
    loss = make_evaluator("adaptive-bn:loss", **kwargs)
    assert kd.score(copy.deepcopy(pruned)).value == pytest.approx(-float(kl), rel=1e-4)
    assert loss.score(copy.deepcopy(pruned)).value == pytest.approx(-float(F.cross_entropy(student, y)), rel=1e-4)
    assert "KL divergence" in parse_score("adaptive-bn:kd").format(-0.25)


def test_finetune_kd_distils_from_the_dense_model(synthetic_bundle):
    """finetune-kd trains towards the dense model's outputs: after the steps its KL to the dense model is lower
    than plain fine-tuning's with the same data order."""
    from autoprune.train.scores import make_evaluator

    structure, pruned = _pruned_resnet20()
    x, y = synthetic_bundle.tensors("val")
    calib = synthetic_bundle.calibration_batches(64)
    kwargs = dict(data=synthetic_bundle, calib_batches=calib, val_x=x, val_y=y, precision="fp32",
                  structure=structure)
    plain, distilled = make_evaluator("finetune:8:kd", **kwargs), make_evaluator("finetune-kd:8:kd", **kwargs)
    assert distilled.recipe.kd_weight > 0 and plain.recipe.kd_weight == 0
    assert distilled.score(copy.deepcopy(pruned)).value > plain.score(copy.deepcopy(pruned)).value
