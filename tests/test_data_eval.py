"""Data specs, splits, caching, augmentation, and the adaptive-BN evaluator."""
import pytest
import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.models import IMAGENET_MEAN, IMAGENET_STD
from autoprune.train.data import augment_batch, load_dataset, make_bundle
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy, recalibrate_bn


def _write_folder(root, n_per_class=6, size=16):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n_per_class):
                pixels = torch.randint(0, 255, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg")


def test_imagefolder_loads_labels_and_caches(tmp_path):
    _write_folder(tmp_path / "d")
    train, test = load_dataset(f"imagefolder:{tmp_path / 'd'}")
    assert train.images.shape == (12, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0] * 6 + [1] * 6
    again, _ = load_dataset(f"imagefolder:{tmp_path / 'd'}")  # from the tensor cache
    assert torch.equal(again.images, train.images)


def test_bad_data_specs(tmp_path):
    with pytest.raises(AutopruneError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(AutopruneError, match="no 'train/' subfolder"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_splits_are_disjoint_and_seeded():
    a = make_bundle("synthetic", IMAGENET_MEAN, IMAGENET_STD, val_size=300, calib_size=100, seed=3)
    b = make_bundle("synthetic", IMAGENET_MEAN, IMAGENET_STD, val_size=300, calib_size=100, seed=3)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.calib.images, b.calib.images)
    assert len(a.val) == 300 and len(a.train) == 2000 - 300 and len(a.calib) == 100
    train_rows = {tuple(r) for r in a.train.images.flatten(1)[:, :64].tolist()}
    assert not any(tuple(r) in train_rows for r in a.val.images.flatten(1)[:, :64].tolist())
    assert all(tuple(r) in train_rows for r in a.calib.images.flatten(1)[:, :64].tolist())


def test_augmentation_is_a_shifted_flipped_crop():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int32).view(2, 3, 8, 8).to(torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    for img, src in zip(out, x):
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        windows = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(2)) for w in windows)


def test_recalibration_recovers_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    batches = [torch.randn(16, 3, 8, 8) * 3 + 1 for _ in range(4)]
    recalibrate_bn(net, batches)
    feats = torch.cat([net[0](b) for b in batches])
    assert torch.allclose(net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert not net.training


def test_adaptive_bn_evaluator_scores_and_times(synthetic_bundle):
    """Labels made from the model itself with BN statistics averaged over the calibration batches (by
    torch's own cumulative BN, in a copy), then every other one made wrong: the score is exactly 0.5,
    and would not be with stale statistics or without the recalibration."""
    import copy

    from autoprune.core.io import load_model

    from .conftest import RESNET20_CKPT

    if not RESNET20_CKPT.exists():
        pytest.skip("shared checkpoints not present")
    model = load_model("resnet20", 10, str(RESNET20_CKPT))  # trained: predictions spread over the classes
    x, _ = synthetic_bundle.tensors("val")
    calib = synthetic_bundle.calibration_batches(64)
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        reference.train()
        for b in calib:
            reference(b)
        labels = reference.eval()(x).argmax(1)
    labels[::2] = (labels[::2] + 1) % 10
    assert accuracy(model, x, labels) != pytest.approx(0.5, abs=0.02)  # the dense statistics score otherwise
    ev = AdaptiveBNEvaluator(calib, x, labels, precision="fp32")
    assert ev(model) == pytest.approx(0.5, abs=0.01)  # channels-last kernels may flip a near tie
    assert ev.timing.calls == 1 and ev.timing.calibrate > 0 and ev.timing.evaluate > 0


def test_a_model_without_checkpoint_is_the_same_random_init_for_the_same_seed():
    """--seed fixes every command's randomness, the weights of a model without a checkpoint included (and
    opening a workspace leaves the global RNG as it was)."""
    from autoprune.workspace import open_workspace

    def weights(seed):
        ws = open_workspace("resnet20", None, "synthetic", val_size=10, calib_size=8, seed=seed, precision="fp32")
        return torch.cat([p.detach().flatten() for p in ws.model.parameters()])

    state = torch.random.get_rng_state()
    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), state)
