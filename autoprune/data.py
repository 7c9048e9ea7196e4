"""Datasets as cached uint8 tensors, fixed seeded splits, batched GPU/CPU-friendly augmentation.

Specs: ``cifar10`` (torchvision download into the cache), ``imagefolder:PATH`` (``PATH/train`` and
``PATH/test`` in ImageFolder layout), ``synthetic`` (small deterministic images for tests).
The training set is split once, by seed, into a training part, a held-out validation part
(rewards, model selection) and calibration images (BN recalibration, data-dependent criteria);
the test split is for final reports only.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AutopruneError


def cache_dir() -> Path:
    path = Path(os.environ.get("AUTOPRUNE_CACHE", Path.home() / ".cache" / "autoprune"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ImageSet:
    """Images as uint8 (N, 3, H, W) with int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor | np.ndarray) -> "ImageSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx])


# -- loading -------------------------------------------------------------------------------
def _decode_folder(root: Path, image_size: int | None) -> ImageSet:
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise AutopruneError(f"'{root}' has no class folders: expected ImageFolder layout root/<class>/<image>")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            with Image.open(f) as im:
                img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
            if image_size is not None and tuple(img.shape[1:]) != (image_size, image_size):
                from torchvision.transforms.v2.functional import center_crop, resize

                img = center_crop(resize(img, image_size, antialias=True), [image_size, image_size])
            images.append(img)
            labels.append(label)
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) != 1:
        raise AutopruneError(f"images under '{root}' differ in size {sorted(shapes)[:2]}: pass an image size")
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long))


def _folder_fingerprint(root: Path) -> str:
    h = hashlib.sha1(str(root.resolve()).encode())
    for cls in sorted(os.scandir(root), key=lambda e: e.name):
        if cls.is_dir():
            entries = list(os.scandir(cls.path))
            h.update(f"{cls.name}:{len(entries)}:{max((e.stat().st_mtime_ns for e in entries), default=0)}".encode())
    return h.hexdigest()[:16]


def _cached(key: str, build) -> ImageSet:
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            obj = torch.load(path, weights_only=True)
            return ImageSet(obj["images"], obj["labels"])
        except Exception:
            path.unlink(missing_ok=True)  # a corrupt cache is rebuilt, not trusted
    data = build()
    tmp = path.with_suffix(".tmp")
    torch.save({"images": data.images, "labels": data.labels}, tmp)
    tmp.replace(path)
    return data


def _load_imagefolder(path: str, image_size: int | None) -> tuple[ImageSet, ImageSet]:
    root = Path(path).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise AutopruneError(f"data folder '{root}' has no '{split}/' subfolder: expected {root}/train and {root}/test")
    out = []
    for split in ("train", "test"):
        key = f"imagefolder-{split}-{_folder_fingerprint(root / split)}-{image_size}"
        out.append(_cached(key, lambda s=split: _decode_folder(root / s, image_size)))
    return out[0], out[1]


def _load_cifar10() -> tuple[ImageSet, ImageSet]:
    from torchvision.datasets import CIFAR10

    def build(train: bool) -> ImageSet:
        try:
            ds = CIFAR10(str(cache_dir() / "cifar10"), train=train, download=True)
        except Exception as exc:
            raise AutopruneError(f"CIFAR-10 download failed ({type(exc).__name__}): use --data imagefolder:PATH offline") from None
        return ImageSet(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return _cached("cifar10-train", lambda: build(True)), _cached("cifar10-test", lambda: build(False))


def _synthetic(n_train: int = 2000, n_test: int = 500, size: int = 32, classes: int = 10) -> tuple[ImageSet, ImageSet]:
    """Learnable toy data: each class is a fixed colour pattern plus noise."""
    g = torch.Generator().manual_seed(1234)
    protos = torch.rand(classes, 3, size, size, generator=g) * 255

    def make(n: int) -> ImageSet:
        labels = torch.arange(n) % classes
        noise = torch.randn(n, 3, size, size, generator=g) * 60
        return ImageSet((protos[labels] + noise).clamp(0, 255).to(torch.uint8), labels)

    return make(n_train), make(n_test)


def load_dataset(spec: str, image_size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) image sets for a dataset spec."""
    if spec == "cifar10":
        return _load_cifar10()
    if spec == "synthetic":
        return _synthetic()
    if spec.startswith("imagefolder:"):
        return _load_imagefolder(spec.split(":", 1)[1], image_size)
    raise AutopruneError(f"unknown dataset '{spec}': use cifar10, imagefolder:PATH or synthetic")


# -- splits and batches --------------------------------------------------------------------
@dataclass
class DataBundle:
    """Train / validation / calibration / test splits, normalisation and batching."""

    train: ImageSet
    val: ImageSet
    calib: ImageSet
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int

    def normalize(self, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        x = images.to(device, non_blocking=True).float().div_(255)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "calib", "test"):
            raise AutopruneError(f"unknown split '{name}': use train, val, calib or test")
        return getattr(self, name)

    def tensors(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split, normalised, as (x, y) on ``device`` (for fast repeated evaluation)."""
        s = self.split(name)
        return self.normalize(s.images, device), s.labels.to(device)

    def calibration_batches(self, batch_size: int = 128, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        x = self.normalize(self.calib.images, device)
        return list(x.split(batch_size))

    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True,
                      device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of (x, y), with random-crop(pad 4) + flip when ``augment``."""
        order = torch.randperm(len(self.train), generator=generator)
        for idx in order.split(batch_size):
            x = self.train.images[idx]
            if augment:
                x = augment_batch(x, generator)
            yield self.normalize(x, device), self.train.labels[idx].to(device)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a uint8 batch: random crop with zero padding, horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    cols = torch.arange(w).view(1, w).expand(n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols) + dx.view(n, 1)
    cols = cols.view(n, 1, 1, w).expand(n, 3, h, w)
    out = padded.gather(2, rows)
    return out.gather(3, cols)


def make_bundle(spec: str, mean: tuple[float, float, float], std: tuple[float, float, float],
                val_size: int = 5000, calib_size: int = 2048, seed: int = 0,
                image_size: int | None = None, train_subset: int | None = None) -> DataBundle:
    """Load ``spec`` and carve fixed validation and calibration splits out of its training set.

    The validation images are removed from the training part; calibration images are drawn from
    the training part (they are training data, used only for BN statistics and criteria).
    ``train_subset`` keeps a fixed random subset of the training part (for CPU-sized benchmarks).
    """
    train, test = load_dataset(spec, image_size)
    if val_size >= len(train):
        raise AutopruneError(f"validation split of {val_size} needs more than the {len(train)} training images: pass a smaller --val-size")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    calib_idx = train_idx[torch.randperm(len(train_idx), generator=g)[: min(calib_size, len(train_idx))]]
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    return DataBundle(train.subset(train_idx), train.subset(val_idx), train.subset(calib_idx), test, mean, std, num_classes)
