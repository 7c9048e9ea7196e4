"""The training loop: it learns, it schedules the learning rate, and a NaN loss stops it cleanly."""
import pytest
import torch

from autoprune.errors import AutopruneError
from autoprune.models import create_model
from autoprune.train.evaluator import accuracy
from autoprune.train.training import TrainRecipe, train


def test_training_improves_a_tiny_model(synthetic_bundle):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    x, y = synthetic_bundle.tensors("val")
    before = accuracy(model, x, y)
    result = train(model, synthetic_bundle, TrainRecipe(epochs=1, lr=0.05, batch_size=64, augment=False), progress=False)
    assert result.steps == 27 and accuracy(model, x, y) > max(0.5, before + 0.2)


def test_cosine_schedule_ends_at_zero():
    r = TrainRecipe(lr=0.1, schedule="cosine")
    assert r.lr_at(0, 100) == pytest.approx(0.1) and r.lr_at(100, 100) == pytest.approx(0.0)
    assert TrainRecipe(lr=0.1, schedule="constant").lr_at(50, 100) == 0.1


def test_nan_loss_stops_with_one_line_and_keeps_state(synthetic_bundle, tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    with pytest.raises(AutopruneError, match="loss became"):
        train(model, synthetic_bundle, TrainRecipe(epochs=1, lr=1e12, batch_size=64), progress=False,
              checkpoint=tmp_path / "state.pt")
    assert (tmp_path / "state.pt").exists()
