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
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from autoprune.errors import AutopruneError
from autoprune.runs import atomic_path


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
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_folders(root: Path) -> list[str]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise AutopruneError(f"'{root}' has no class folders: expected ImageFolder layout {root}/<class>/<image>")
    return classes


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def _read_image(path: Path) -> torch.Tensor:
    """One image as uint8 (3, H, W); an unreadable file is a one-line error naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError (truncated), ValueError, ...
        raise AutopruneError(f"image '{path}' cannot be read ({type(exc).__name__}): remove it, or re-extract "
                             "the data set") from None


def _decode_folder(root: Path, image_size: int | tuple[int, int] | None) -> tuple[ImageSet, bool]:
    """(every image of ``root`` at its stored size, False); a folder of mixed sizes is resized here, to
    ``image_size``, as its images cannot be stacked otherwise: (those, True). Uniform folders are
    resized per batch instead (``DataBundle.normalize``)."""
    classes = _class_folders(root)
    files = {cls: _image_files(root / cls) for cls in classes}
    empty = [cls for cls, fs in files.items() if not fs]
    if len(empty) == len(classes):
        raise AutopruneError(f"'{root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders: "
                             "point --data at the folder with train/ and test/ inside")
    if empty:
        raise AutopruneError(f"class folder '{root / empty[0]}' has no images: add its images or remove the folder "
                             "(from train/ and test/ alike)")
    images, labels = [], []
    first: tuple[int, ...] | None = None
    for label, cls in enumerate(classes):
        for f in files[cls]:
            img = _read_image(f)
            first = first or tuple(img.shape)
            if tuple(img.shape) != first and image_size is None:
                raise AutopruneError(f"images under '{root}' differ in size ({first[1:]} and {tuple(img.shape[1:])}): "
                                     "pass --image-size")
            images.append(img)
            labels.append(label)
    mixed = any(tuple(i.shape) != first for i in images)
    if mixed:
        images = [resize_images(i, image_size) for i in images]
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long)), mixed


def resize_images(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize (shorter side, antialiased) and centre-crop images (..., 3, H, W) to ``size``."""
    from torchvision.transforms.v2.functional import center_crop, resize

    h, w = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[-2:]) == (h, w):
        return images
    return center_crop(resize(images, min(h, w), antialias=True), [h, w])


def _folder_fingerprint(root: Path) -> str:
    """Every file's relative path, size and modification time: a cache built from other files is never reused."""
    h = hashlib.sha1(str(root.resolve()).encode())
    for cls in sorted(os.scandir(root), key=lambda e: e.name):
        if cls.is_dir():
            for e in sorted(os.scandir(cls.path), key=lambda e: e.name):
                st = e.stat()
                h.update(f"{cls.name}/{e.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cached(key: str, build: Callable[[], ImageSet]) -> ImageSet:
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            obj = torch.load(path, weights_only=True)
            return ImageSet(obj["images"], obj["labels"])
        except Exception:
            path.unlink(missing_ok=True)  # a corrupt cache is rebuilt, not trusted
    data = build()  # a failed decode raises here: nothing is written
    with atomic_path(path) as tmp:
        torch.save({"images": data.images, "labels": data.labels}, tmp)
    return data


def _load_imagefolder(path: str, image_size: int | None) -> tuple[ImageSet, Callable[[], ImageSet], int]:
    """The training split decoded now; the test split decoded only when first used."""
    root = Path(path).expanduser()
    if not path:
        raise AutopruneError("data spec 'imagefolder:' names no folder: write imagefolder:PATH")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise AutopruneError(f"data folder '{root}' has no '{split}/' subfolder: expected {root}/train and {root}/test")
    train_classes, test_classes = _class_folders(root / "train"), _class_folders(root / "test")
    if train_classes != test_classes:
        only = sorted(set(train_classes) ^ set(test_classes))
        raise AutopruneError(f"'{root}/train' and '{root}/test' have different class folders (e.g. {only[:3]}): "
                             "both need the same classes")

    def load(split: str) -> ImageSet:
        # kept at the images' own size (resized per batch later); only a mixed-size folder is kept resized
        stem = f"imagefolder-{split}-{_folder_fingerprint(root / split)}"
        native, resized = f"{stem}-None", f"{stem}-{image_size}"
        for key in (native, resized):
            if (cache_dir() / f"{key}.pt").exists():
                return _cached(key, lambda: _decode_folder(root / split, image_size)[0])
        data, mixed = _decode_folder(root / split, image_size)
        return _cached(resized if mixed else native, lambda: data)

    return load("train"), lambda: load("test"), len(train_classes)


def _load_cifar10() -> tuple[ImageSet, Callable[[], ImageSet], int]:
    from torchvision.datasets import CIFAR10

    def build(train: bool) -> ImageSet:
        try:
            ds = CIFAR10(str(cache_dir() / "cifar10"), train=train, download=True)
        except Exception as exc:
            raise AutopruneError(f"CIFAR-10 download failed ({type(exc).__name__}): use --data imagefolder:PATH offline") from None
        return ImageSet(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return _cached("cifar10-train", lambda: build(True)), lambda: _cached("cifar10-test", lambda: build(False)), 10


def _synthetic(n_train: int = 2000, n_test: int = 500, size: int = 32, classes: int = 10) -> tuple[ImageSet, ImageSet]:
    """Learnable toy data: each class is a fixed colour pattern plus noise."""
    g = torch.Generator().manual_seed(1234)
    protos = torch.rand(classes, 3, size, size, generator=g) * 255

    def make(n: int) -> ImageSet:
        labels = torch.arange(n) % classes
        noise = torch.randn(n, 3, size, size, generator=g) * 60
        return ImageSet((protos[labels] + noise).clamp(0, 255).to(torch.uint8), labels)

    return make(n_train), make(n_test)


def open_dataset(spec: str, image_size: int | None = None) -> tuple[ImageSet, Callable[[], ImageSet], int]:
    """(train images, test loader, class count): the test split is decoded only if the loader is called."""
    if spec == "cifar10":
        return _load_cifar10()
    if spec == "synthetic":
        train, test = _synthetic()
        return train, lambda: test, 10
    if spec.startswith("imagefolder:"):
        return _load_imagefolder(spec.split(":", 1)[1], image_size)
    raise AutopruneError(f"unknown dataset '{spec}': use cifar10, imagefolder:PATH or synthetic")


def load_dataset(spec: str, image_size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) image sets for a dataset spec, both decoded."""
    train, test, _ = open_dataset(spec, image_size)
    return train, test()


# -- splits and batches --------------------------------------------------------------------
@dataclass
class DataBundle:
    """Train / validation / calibration / test splits, normalisation and batching."""

    train: ImageSet
    val: ImageSet
    calib: ImageSet
    test_source: ImageSet | Callable[[], ImageSet]  # a loader: the test split is decoded on first use only
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    image_size: int | tuple[int, int] | None = None  # what the model sees; images are resized per batch

    @property
    def test(self) -> ImageSet:
        if not isinstance(self.test_source, ImageSet):
            self.test_source = self.test_source()
        return self.test_source

    def normalize(self, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """A uint8 batch as the model's input: resized to ``image_size`` (if set), scaled, normalised."""
        if self.image_size is not None:
            images = resize_images(images, self.image_size)
        x = images.to(device, non_blocking=True).float().div_(255)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "calib", "test"):
            raise AutopruneError(f"unknown split '{name}': use train, val, calib or test")
        return getattr(self, name)

    def tensors(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split, normalised, as (x, y) on ``device`` (for fast repeated evaluation of the held-out
        and calibration splits, whose sizes the user sets); resized in chunks, so only the result is held."""
        s = self.split(name)
        chunks = s.images.split(_RESIZE_CHUNK)
        if len(chunks) <= 1:
            return self.normalize(s.images, device), s.labels.to(device)
        first = self.normalize(chunks[0], device)
        _check_memory(len(s), first[0].numel() * first.element_size(), name)
        x = torch.empty((len(s), *first.shape[1:]), dtype=first.dtype, device=first.device)
        x[:len(first)] = first
        at = len(first)
        for chunk in chunks[1:]:
            x[at:at + len(chunk)] = self.normalize(chunk, device)
            at += len(chunk)
        return x, s.labels.to(device)

    def batches(self, name: str, batch_size: int = 256,
                device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A split in order, one normalised batch at a time (the test split, at any image size)."""
        s = self.split(name)
        for images, labels in zip(s.images.split(batch_size), s.labels.split(batch_size)):
            yield self.normalize(images, device), labels.to(device)

    def calibration_batches(self, batch_size: int = 128, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        return list(self.tensors("calib", device)[0].split(batch_size))

    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True,
                      device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of (x, y), with random-crop(pad 4) + flip when ``augment``."""
        order = torch.randperm(len(self.train), generator=generator)
        for idx in order.split(batch_size):
            x = self.train.images[idx]
            if augment:
                x = augment_batch(x, generator)
            yield self.normalize(x, device), self.train.labels[idx].to(device)


_RESIZE_CHUNK = 256  # images resized at a time when a whole split is materialised


def _check_memory(n: int, bytes_per_image: int, split: str) -> None:
    """Refuse, in one line, a split that would not fit in memory at the model's input size."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    need = n * bytes_per_image
    if need > total / 2:
        flag = {"val": "--val-size", "calib": "--calib-size"}.get(split, "a smaller split")
        raise AutopruneError(f"the {split} split ({n:,} images) needs {need / 1e9:.1f} GB at this image size, more "
                             f"than half this machine's memory ({total / 1e9:.1f} GB): lower {flag} or --image-size")


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
                image_size: int | tuple[int, int] | None = None, train_subset: int | None = None) -> DataBundle:
    """Load ``spec`` and carve fixed validation and calibration splits out of its training set.

    Images stay at their stored size; with ``image_size``, every batch is resized as it is normalised
    (never the whole training split at once).

    The validation images are removed from the training part; calibration images are drawn from
    the training part (they are training data, used only for BN statistics and criteria).
    ``train_subset`` keeps a fixed random subset of the training part (for CPU-sized benchmarks).
    """
    train, test, num_classes = open_dataset(spec, image_size)
    if spec == "synthetic" and val_size >= len(train):  # toy data: a quarter of it is held out
        val_size = len(train) // 4
    if val_size >= len(train):
        raise AutopruneError(f"validation split of {val_size} needs more than the {len(train)} training images: pass a smaller --val-size")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    calib_idx = train_idx[torch.randperm(len(train_idx), generator=g)[: min(calib_size, len(train_idx))]]
    return DataBundle(train.subset(train_idx), train.subset(val_idx), train.subset(calib_idx), test, mean, std,
                      num_classes, image_size)
