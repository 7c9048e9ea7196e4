"""What a user takes home is what was scored: saved pruned models carry recalibrated BN, commands
decode only the splits they use, and bad data is a one-line error."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprune.cli.main import main
from autoprune.core.io import load_pruned
from autoprune.errors import AutopruneError
from autoprune.models import IMAGENET_MEAN, IMAGENET_STD
from autoprune.train.data import make_bundle
from autoprune.train.evaluator import accuracy
from autoprune.train.scores import DEFAULT_SCORE

from .conftest import RESNET20_CKPT, SHARED

CIFAR = SHARED / "data" / "cifar10"
needs_shared = pytest.mark.skipif(not (CIFAR.is_dir() and RESNET20_CKPT.exists()), reason="shared data not present")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *map(str, args)], capture_output=True, text=True)


def _write_garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a JPEG")


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    """50 training images per class of the shared JPEG CIFAR-10; test/ holds only unreadable files."""
    root = tmp_path_factory.mktemp("slice")
    for cls in sorted(p.name for p in (CIFAR / "train").iterdir()):
        (root / "train" / cls).mkdir(parents=True)
        for f in sorted((CIFAR / "train" / cls).iterdir())[:50]:
            (root / "train" / cls / f.name).symlink_to(f)
        _write_garbage(root / "test" / cls / "0000.jpg")
    return root


def _held_out(data: str, model: str = "resnet20", val_size: int = 200, seed: int = 0):
    bundle = make_bundle(data, IMAGENET_MEAN, IMAGENET_STD, val_size=val_size, calib_size=128, seed=seed)
    return bundle.tensors("val")


def _plain(path: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(load_pruned(path)[0], x, y)


def _as_scored(path: Path, x: torch.Tensor, y: torch.Tensor, score: str, precision: str = "fp32") -> float:
    """The held-out figure ``score`` reports, computed here on the file as loaded: top-1, or for a ``:loss`` score
    minus the mean cross-entropy (torch's own, under torch's own bf16 autocast when the run scored in bf16: a
    loss moves by ~0.01 between fp32 and bf16, more than the tolerance)."""
    if not score.endswith(":loss"):
        return _plain(path, x, y)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return -torch.nn.functional.cross_entropy(load_pruned(path)[0].eval()(x).float(), y).item()


def test_search_saves_what_it_scored_tiny(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = _cli(capsys, "search", "--finalists", 0, "--model", "resnet20", "--data", "synthetic", "--val-size", 200,
                          "--calib-size", 128, "--macs", 0.5, "--agent", "random", "--episodes", 2, "--output", run,
                          "--no-progress")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    best, x, y = summary["best"], *_held_out("synthetic")
    assert summary["score"] == DEFAULT_SCORE  # the default, as a user runs it
    assert abs(_as_scored(run / "best_model.pt", x, y, summary["score"], summary["precision"]) - best["score_value"]) <= 0.005 + 1e-9
    assert best["saved_model_val_accuracy"] == pytest.approx(_plain(run / "best_model.pt", x, y), abs=1e-9)
    assert "best_model.pt as loaded from disk" in out


@needs_shared
@pytest.mark.slow
def test_search_apply_prune_save_what_they_scored_and_never_open_test(tmp_path, capsys, cifar_slice):
    """ResNet-20 on real images; test/ holds only unreadable files, so any decode of it would fail."""
    data = f"imagefolder:{cifar_slice}"
    common = ["--model", "resnet20", "--checkpoint", RESNET20_CKPT, "--data", data, "--val-size", 200,
              "--calib-size", 128]
    x, y = _held_out(data)
    run = tmp_path / "search"
    code, out, err = _cli(capsys, "search", *common, "--finalists", 0, "--macs", 0.5, "--episodes", 3, "--warmup-episodes", 1,
                          "--eval-every", 1, "--output", run, "--no-progress")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    best, score = summary["best"], summary["score"]
    assert _plain(run / "best_model.pt", x, y) > 0.3  # a real model, not chance: recalibration matters here
    assert abs(_as_scored(run / "best_model.pt", x, y, score, summary["precision"]) - best["score_value"]) <= 0.005 + 1e-9

    applied = tmp_path / "apply"
    swept = ["--sensitivity", run / "sensitivity.json"]  # same model, data and score: the search's sweep is reused
    code, out, err = _cli(capsys, "apply", *common, "--macs", 0.5, "--policy", run / "policy.zip",
                          "--output", applied, *swept)
    assert code == 0, err
    assert json.loads((applied / "sensitivity.json").read_text()) == json.loads((run / "sensitivity.json").read_text())
    report = json.loads((applied / "report.json").read_text())
    assert report["score"] == score  # the policy's own score, by default
    assert abs(_as_scored(applied / "model.pt", x, y, score, report["precision"]) - report["score_value"]) <= 0.005 + 1e-9
    assert report["saved_model_val_accuracy"] == pytest.approx(_plain(applied / "model.pt", x, y), abs=1e-9)

    pruned = tmp_path / "pruned.pt"
    code, out, err = _cli(capsys, "prune", *common, "--ratio", 0.5, "--output", pruned)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert abs(_plain(pruned, x, y) - report["adaptive_bn_val_acc"]) <= 0.005 + 1e-9

    # asking for the test split is where the unreadable files surface, as one line naming a file
    res = _run_cli("apply", *common, "--macs", 0.5, "--policy", run / "policy.zip", "--output",
                   tmp_path / "apply2", "--report-test", *swept)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "0000.jpg' cannot be read" in res.stderr and "re-extract" in res.stderr


def test_unreadable_training_image_is_one_line_naming_the_file(tmp_path):
    from PIL import Image

    root = tmp_path / "d"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / cls / f"{i}.jpg")
    _write_garbage(root / "train" / "b" / "9.jpg")
    truncated = (root / "train" / "a" / "0.jpg").read_bytes()[:40]
    res = _run_cli("search", "--model", "resnet20", "--data", f"imagefolder:{root}", "--val-size", 2,
                   "--macs", 0.5, "--output", tmp_path / "run")
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "9.jpg' cannot be read" in res.stderr
    (root / "train" / "b" / "9.jpg").unlink()
    (root / "train" / "a" / "0.jpg").write_bytes(truncated)
    res = _run_cli("prune", "--model", "resnet20", "--data", f"imagefolder:{root}", "--val-size", 2,
                   "--ratio", 0.5, "--output", tmp_path / "p.pt")
    assert res.returncode == 2 and "0.jpg' cannot be read" in res.stderr and "Traceback" not in res.stderr


def _folder(root: Path, layout: dict[str, dict[str, int]]) -> str:
    from PIL import Image

    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 10, 0)).save(root / split / cls / f"{i}.png")
    return f"imagefolder:{root}"


@pytest.mark.parametrize("layout,message", [
    ({"train": {"a": 3, "b": 0}, "test": {"a": 1, "b": 1}}, "class folder '.*b' has no images"),
    ({"train": {"a": 3, "b": 3}, "test": {"a": 1, "c": 1}}, "different class folders"),
    ({"train": {"a": 0, "b": 0}, "test": {"a": 1, "b": 1}}, "holds no images"),
    ({"train": {}, "test": {}}, "has no class folders"),
])
def test_bad_folder_layouts(tmp_path, layout, message):
    spec = _folder(tmp_path / "d", layout)
    for split in ("train", "test"):
        (tmp_path / "d" / split).mkdir(parents=True, exist_ok=True)
    with pytest.raises(AutopruneError, match=message):
        make_bundle(spec, IMAGENET_MEAN, IMAGENET_STD, val_size=1, calib_size=1)


def test_unknown_or_empty_data_spec_is_one_line():
    for spec, message in (("mnist", "unknown dataset 'mnist'"), ("imagefolder:", "names no folder")):
        res = _run_cli("evaluate", "--model", "resnet20", "--data", spec)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_test_split_is_decoded_only_when_used(tmp_path):
    spec = _folder(tmp_path / "d", {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}})
    _write_garbage(tmp_path / "d" / "test" / "a" / "zz.jpg")
    bundle = make_bundle(spec, IMAGENET_MEAN, IMAGENET_STD, val_size=2, calib_size=2)
    assert bundle.num_classes == 2 and len(bundle.val) == 2
    with pytest.raises(AutopruneError, match="zz.jpg' cannot be read"):
        bundle.test


def test_failed_decode_leaves_no_cache_and_changed_files_are_not_reused(tmp_path):
    import os

    from autoprune.train.data import cache_dir, load_dataset

    spec = _folder(tmp_path / "d", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    before = set(cache_dir().iterdir())
    _write_garbage(tmp_path / "d" / "train" / "a" / "bad.jpg")
    with pytest.raises(AutopruneError):
        load_dataset(spec)
    assert set(cache_dir().iterdir()) == before  # nothing half-written
    (tmp_path / "d" / "train" / "a" / "bad.jpg").unlink()
    train, _ = load_dataset(spec)
    # same file names, count and modification time; other pixels: the cache must not be reused
    from PIL import Image

    f = tmp_path / "d" / "train" / "b" / "0.png"
    st = f.stat()
    Image.new("RGB", (8, 8), (255, 255, 255)).save(f, compress_level=0)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    again, _ = load_dataset(spec)
    assert not torch.equal(again.images, train.images)
