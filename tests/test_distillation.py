"""Distillation from the dense model: the ``lr-rewind-kd`` recipe of ``compare``, ``train --teacher``, and the
one-line errors for its settings."""
import copy
import json

import pytest
import torch

from autoprune.cli.main import main
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import create_model
from autoprune.train.scores import logits_of
from autoprune.train.precision import resolve_precision
from autoprune.train.training import TrainRecipe, kd_divergence, train

from .conftest import RESNET20_CKPT

pytestmark = pytest.mark.usefixtures("one_thread")
SYN = ["--data", "synthetic", "--val-size", "100", "--calib-size", "64"]


def test_distilled_training_moves_towards_the_teacher(synthetic_bundle):
    torch.manual_seed(0)
    teacher = create_model("resnet20", 10).eval()
    structure = ModelStructure(teacher, torch.randn(1, 3, 32, 32))
    student = PruningProblem(structure, 0.5).pruned_model(Allocation.uniform(structure, 0.5))
    x, _ = synthetic_bundle.tensors("val")
    fp32 = resolve_precision("fp32", "cpu")
    t_logits = logits_of(teacher, x, 256, fp32)
    runs = {}
    for w in (0.0, 1.0):
        net = copy.deepcopy(student)
        train(net, synthetic_bundle, TrainRecipe(epochs=0.2, lr=0.02, batch_size=64, kd_weight=w), seed=0,
              progress=False, precision="fp32", validate=False, teacher=teacher)
        runs[w] = float(kd_divergence(logits_of(net, x, 256, fp32), t_logits))
    assert runs[1.0] < runs[0.0]  # pure distillation ends closer to the teacher than the label loss alone


def test_distillation_settings_get_one_line_errors(synthetic_bundle):
    net = create_model("resnet20", 10)
    for recipe, message in ((TrainRecipe(kd_weight=0.5), "needs the teacher"),
                            (TrainRecipe(kd_weight=1.5), "--kd-weight 1.5 must be in"),
                            (TrainRecipe(kd_weight=0.5, kd_temperature=0), "--kd-temperature 0 must be positive")):
        with pytest.raises(AutopruneError, match=message):
            train(net, synthetic_bundle, recipe, progress=False, teacher=None if "teacher" in message else net)


def test_compare_lr_rewind_kd_recipe(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--model", "resnet20", "--checkpoint", str(RESNET20_CKPT), "--targets", "0.5",
                 "--allocators", "uniform", "--recipes", "lr-rewind", "lr-rewind-kd", "--kd-weight", "0.9",
                 "--epochs", "0.1", "--train-subset", "256", "--batch-size", "64", "--device", "cpu",
                 "--precision", "fp32", "--finalists", "0", "--output", str(out), *SYN])
    assert code == 0, capsys.readouterr().err
    rows = {r["recipe"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"lr-rewind", "lr-rewind-kd"}
    assert rows["lr-rewind-kd"]["val_acc"] != rows["lr-rewind"]["val_acc"] or \
        rows["lr-rewind-kd"]["test_acc"] != rows["lr-rewind"]["test_acc"]  # the distillation term changed training
    capsys.readouterr()
    assert main(["compare", "--model", "resnet20", "--allocators", "uniform", "--recipes", "lr-rewind-kd",
                 "--kd-weight", "2", "--output", str(tmp_path / "bad"), *SYN]) == 2
    err = capsys.readouterr().err
    assert "--kd-weight 2.0 must be in [0, 1]" in err and len(err.strip().splitlines()) == 1


def test_train_with_a_teacher(tmp_path, capsys):
    pruned = tmp_path / "p.pt"
    assert main(["prune", "--model", "resnet20", "--checkpoint", str(RESNET20_CKPT), "--ratio", "0.5", "--output",
                 str(pruned), *SYN]) == 0
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--checkpoint", str(pruned), "--teacher", str(RESNET20_CKPT),
                 "--kd-weight", "0.9", "--epochs", "0.05", "--lr", "0.01", "--output", str(run), *SYN[:4]]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["teacher"] == str(RESNET20_CKPT) and summary["config"]["kd_weight"] == 0.9
    capsys.readouterr()
    for args, message in ((["--kd-weight", "0.9"], "needs both --teacher"),
                          (["--teacher", str(tmp_path / "none.pt"), "--kd-weight", "0.9"], "not found")):
        assert main(["train", "--model", "resnet20", "--checkpoint", str(pruned), "--output", str(tmp_path / "bad"),
                     *args, *SYN[:4]]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_apply_fine_tunes_distilled_from_the_dense_model_by_default(tmp_path, monkeypatch):
    """``apply --finetune-epochs`` distils from the dense model it pruned (weight 0.9) unless ``--kd-weight 0``;
    the report says which. The recipe and teacher handed to training are checked; that such training moves the
    student towards its teacher is the first test of this file."""
    import autoprune.train.training as training
    from autoprune.models import create_model as make

    seen = []

    def fake_train(model, data, recipe, teacher=None, **kw):
        seen.append((recipe.kd_weight, teacher))
        return training.TrainResult(steps=1)

    monkeypatch.setattr(training, "train", fake_train)
    policy = "bench/results/policies/universal.zip"
    for name, extra in (("default", []), ("plain", ["--kd-weight", "0"])):
        assert main(["apply", "--model", "resnet20", *SYN, "--policy", policy, "--macs", "0.5", "--no-evaluate",
                     "--finetune-epochs", "0.01", "--output", str(tmp_path / name), *extra]) == 0
    (kd, teacher), (plain, none) = seen
    assert kd == 0.9 and plain == 0.0 and none is None
    dense = make("resnet20", 10)  # the teacher is the dense network (every channel), not the pruned student
    assert [p.shape for p in teacher.parameters()] == [p.shape for p in dense.parameters()]
    reports = [json.loads((tmp_path / n / "report.json").read_text())["finetune"] for n in ("default", "plain")]
    assert [r["kd_weight"] for r in reports] == [0.9, 0.0]
