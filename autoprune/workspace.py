"""What most commands share: model + data, and from them the structure, the problem and its scorer."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.core.io import load_model_noting
from autoprune.core.problem import LatencyModel, PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import input_hw, model_info, parse_input_size
from autoprune.train.data import DataBundle, make_bundle
from autoprune.train.evaluator import AdaptiveBNEvaluator, resolve_device
from autoprune.train.precision import Precision, resolve_precision
from autoprune.train.scores import make_evaluator

DEFAULT_DATA = "imagefolder:../shared/data/cifar10"


@dataclass
class WorkspaceOptions:
    """The model and data a command runs on (every command nests these; ``open()`` loads them)."""

    model: str
    checkpoint: str | None = None
    data: str = DEFAULT_DATA
    val_size: int = 5000  # held-out training images (the adaptive-BN score's split)
    calib_size: int = 2048  # training images recalibrating BatchNorm
    train_subset: int | None = None
    image_size: int | None = None  # resolution the model sees (images resized per batch); None: stored size
    # the shape MACs, parameters and latency are counted at (H or HxW); None: the family's deployment size
    input_size: int | str | None = field(default=None, metadata={"parse": parse_input_size})
    seed: int = 0  # fixes the held-out / calibration split (and the command's other randomness)
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autoprune.train.precision)

    def open(self) -> "Workspace":
        """Load model and data; an unset ``input_size`` is resolved here, so the run's config records it."""
        if self.input_size is None:
            self.input_size = parse_input_size(model_info(self.model).input_size)
        return open_workspace(**asdict(self))


INPUT_HELP = {
    "input_size": "input size (H or HxW) that MACs, parameters and latency are counted at, independent of the "
                  "data's resolution (default: the model's own: 32 for CIFAR ResNets, 224 for most torchvision/timm "
                  "models, 299 for Inception-v3)",
    "image_size": "resolution the model sees: images are resized per batch (default: their stored size, or the "
                  "input size when the model cannot run at it)",
}


PARALLEL_HELP = {
    "workers": "score candidates on this many Ray actors, each holding the model and data once "
               "(needs pip install 'autoprune[distributed]'); RL agents then learn from that many episodes per round",
    "ray_address": "run the workers on an existing Ray cluster (ray://HOST:10001 or auto) instead of a local one",
}


@dataclass
class ParallelOptions:
    """Where candidates are scored: in this process, or on Ray actors (``--workers``, ``--ray-address``)."""

    workers: int = 1  # > 1: score candidates on this many Ray actors (pip install 'autoprune[distributed]')
    ray_address: str | None = None  # an existing Ray cluster (e.g. ray://head:10001); default: start one locally

    def pool(self, problem: PruningProblem, evaluator: AdaptiveBNEvaluator):
        """A Ray scoring pool when asked for (close it when done), else None."""
        from autoprune.train.ray_pool import scoring_pool

        return scoring_pool(problem, evaluator, self.workers, self.ray_address)


@dataclass
class Workspace:
    """A loaded model and its data; the structure and calibration batches are built once and shared."""

    model: nn.Module
    model_name: str
    data: DataBundle
    device: torch.device
    precision: Precision
    input_size: tuple[int, int] = (224, 224)  # (H, W) that costs are counted at
    _structure: ModelStructure | None = field(default=None, repr=False)
    _calibration: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def structure(self) -> ModelStructure:
        """The model's prunable groups and costs (traced once: it costs ~1 s on ResNet-56)."""
        if self._structure is None:
            self._structure = ModelStructure(self.model, self.example_input(), num_classes=self.data.num_classes)
        return self._structure

    def example_input(self) -> torch.Tensor:
        """One random image at the input size: the shape every cost (MACs, parameters, latency) is counted at."""
        gen = torch.Generator().manual_seed(0)
        return torch.randn(1, 3, *self.input_size, generator=gen).to(self.device)

    def calibration(self, batch_size: int = 128) -> list[torch.Tensor]:
        """The calibration images (BN recalibration, data-dependent criteria) on the device, in batches."""
        if batch_size not in self._calibration:
            self._calibration[batch_size] = self.data.calibration_batches(batch_size, self.device)
        return self._calibration[batch_size]

    def problem(self, target: float, metric: str = "macs", *, criterion: str = "l1", min_keep: float = 0.2,
                max_keep: float = 1.0, round_to: int = 1, latency: LatencyModel | None = None,
                target_range: tuple[float, float] | None = None, calib_batch_size: int = 128) -> PruningProblem:
        """This model's pruning problem at ``target`` x its dense ``metric``."""
        return PruningProblem(self.structure(), target, metric, criterion, self.calibration(calib_batch_size), min_keep,
                              max_keep, round_to, latency, target_range)

    def evaluator(self, calib_batch_size: int = 128, score: str = "adaptive-bn", seed: int = 0) -> AdaptiveBNEvaluator:
        """The candidates' score (``--score``, ``autoprune.train.scores``) on the held-out split."""
        x, y = self.data.tensors("val", self.device)
        return make_evaluator(score, self.data, self.calibration(calib_batch_size), x, y, precision=self.precision,
                              seed=seed, structure=self.structure())

    def scorer(self, problem: PruningProblem, score: str = "adaptive-bn", *, calib_batch_size: int = 128,
               seed: int = 0, early_stop: bool = False, parallel: ParallelOptions | None = None) -> Scorer:
        """A ``Scorer`` of ``problem``'s allocations by ``score``; with ``parallel`` workers, on a Ray pool
        (``scorer.pool.close()`` when done)."""
        evaluator = self.evaluator(calib_batch_size, score, seed)
        pool = parallel.pool(problem, evaluator) if parallel is not None else None
        return Scorer(problem, evaluator, pool=pool, early_stop=early_stop)


def open_workspace(model: str, checkpoint: str | None, data: str, *, val_size: int = 5000, calib_size: int = 2048,
                   seed: int = 0, device: str = "auto", image_size: int | None = None,
                   input_size: int | str | None = None, train_subset: int | None = None,
                   precision: str = "auto") -> Workspace:
    """Load data first (to learn the class count), then the model (and its checkpoint) on the device.

    Costs are counted at ``input_size`` (default: the family's); the data are fed at ``image_size``. A
    model that cannot run at the data's stored size (a ViT's fixed position embedding, Inception's
    minimum) gets them resized to its input size, per batch, with a note."""
    info = model_info(model)
    size = input_hw(input_size if input_size is not None else info.input_size)
    prec = resolve_precision(precision, resolve_device(device))  # a bad precision fails before data is read
    if checkpoint is not None and not Path(checkpoint).is_file():  # so does a missing checkpoint
        raise AutopruneError(f"checkpoint '{checkpoint}' not found: check the path")
    bundle = make_bundle(data, info.mean, info.std, val_size=val_size, calib_size=calib_size, seed=seed,
                         image_size=image_size, train_subset=train_subset)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):  # without a checkpoint the weights are a random init: --seed fixes it
        torch.manual_seed(seed)
        net, dropped = load_model_noting(model, bundle.num_classes, checkpoint)
    if dropped:
        print(f"note: {model}: auxiliary classifier(s) {', '.join(dropped)} dropped (training-time heads; the pruned "
              "model keeps the main one, as deployed)")
    net = net.to(dev)
    fit_resolution(net, model, bundle, size, dev)
    return Workspace(net, model, bundle, dev, prec, size)


def fit_resolution(model: nn.Module, name: str, bundle: DataBundle, size: tuple[int, int],
                   device: torch.device) -> None:
    """Make sure ``model`` runs on the data as fed; if it cannot at their stored size and no image size
    was asked for, feed them at the input size (resized per batch), with a note; else one line."""
    def fails() -> Exception | None:
        x = bundle.normalize(bundle.val.images[:1], device)
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(x)
        except Exception as exc:  # any shape error of the model's own forward
            return exc
        finally:
            model.train(was_training)
        return None

    exc = fails()
    if exc is None:
        return
    h, w = input_hw(bundle.image_size) if bundle.image_size is not None else tuple(bundle.val.images.shape[-2:])
    why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:100]}"
    if bundle.image_size is None:
        bundle.image_size = size
        if fails() is None:
            print(f"note: {name} cannot run on {h}x{w} images: they are resized to {size[0]}x{size[1]}, per batch "
                  "(--image-size sets another resolution)")
            return
        bundle.image_size = None
        raise AutopruneError(f"{name} cannot run on {h}x{w} images ({why}), nor at its input size "
                             f"{size[0]}x{size[1]}: pass the --input-size and --image-size it was built for")
    raise AutopruneError(f"{name} cannot run on {h}x{w} images ({why}): pass --image-size {size[0]}")
