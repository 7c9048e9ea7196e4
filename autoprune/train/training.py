"""Training and fine-tuning: SGD + cosine schedule, checkpoints, TensorBoard scalars, a progress bar."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from autoprune.errors import AutopruneError
from autoprune.runs import atomic_path
from autoprune.train import distributed
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import accuracy
from autoprune.train.precision import Precision, resolve_precision


@dataclass
class TrainRecipe:
    """How to train: ``epochs`` of SGD with a cosine (or step-free constant) learning rate."""

    epochs: float = 1.0  # fractional epochs allowed (CPU-sized fine-tunes)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    bn_l1: float = 0.0  # Network Slimming: L1 penalty on BN gammas
    augment: bool = True
    kd_weight: float = 0.0  # distillation: loss = (1 - w) x cross-entropy + w x T^2 x KL(teacher || student)
    kd_temperature: float = 4.0

    def total_steps(self, n_train: int) -> int:
        return max(1, int(round(self.epochs * math.ceil(n_train / self.batch_size))))

    def lr_at(self, step: int, total: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * min(step, total) / total))
        raise AutopruneError(f"unknown lr schedule '{self.schedule}': use cosine or constant")


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    train_macs: float = 0.0  # forward MACs per image x images seen (x3 for fwd+bwd is left to the reader)
    history: list[dict] = field(default_factory=list)


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.SGD:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=recipe.lr, momentum=recipe.momentum, nesterov=True)


def check_distillation(weight: float, temperature: float) -> None:
    """One-line errors for distillation settings (before any data is read)."""
    if not 0.0 <= weight <= 1.0:
        raise AutopruneError(f"--kd-weight {weight} must be in [0, 1] (the distillation term's share of the loss)")
    if temperature <= 0:
        raise AutopruneError(f"--kd-temperature {temperature} must be positive")


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over images of KL(teacher || student) on outputs softened by ``temperature``."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    log_target=True, reduction="batchmean")


def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    return sum(m.weight.abs().sum() for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None)


def train(model: nn.Module, data: DataBundle, recipe: TrainRecipe, *, device: torch.device | str = "cpu",
          seed: int = 0, log_dir: str | Path | None = None, checkpoint: str | Path | None = None,
          macs_per_image: float = 0.0, progress: bool = True,
          on_step: Callable[[int, nn.Module, torch.optim.Optimizer], tuple[nn.Module, torch.optim.Optimizer] | None] | None = None,
          start_step: int = 0, optimizer: torch.optim.Optimizer | None = None,
          precision: str | Precision = "auto", validate: bool = True, teacher: nn.Module | None = None) -> TrainResult:
    """Train ``model`` in place for ``recipe.epochs``; evaluate on the validation split each epoch.

    ``on_step(step, model, optimizer)`` may return a replacement (model, optimizer) -- the
    progressive pruner uses it to shrink the model mid-training. ``checkpoint`` is written at
    every epoch end (model + optimizer + step) so a run can be resumed with ``start_step``.
    ``validate=False`` skips the per-epoch held-out accuracy (for callers that score the model themselves).
    With ``recipe.kd_weight`` the loss distils from ``teacher`` (e.g. the dense model; kept in eval mode, run
    under no_grad on the same augmented batch; Hinton et al.'s T^2 scaling). A NaN loss stops training with an error after saving what was trained so far. ``precision``
    runs forward and backward passes under autocast (weights, BN statistics, loss and optimizer
    state stay fp32; fp16 adds a gradient scaler). Under ``torchrun`` the model trains in DDP
    (``autoprune.train.distributed``): each rank takes its slice of every global batch, the model is
    re-wrapped after ``on_step`` replaces it, and only rank 0 logs, shows progress and checkpoints.
    """
    device = torch.device(device)
    check_distillation(recipe.kd_weight, recipe.kd_temperature)
    if recipe.kd_weight and teacher is None:
        raise AutopruneError("a distillation recipe (kd_weight > 0) needs the teacher model (the dense checkpoint)")
    if teacher is not None:
        teacher.eval()
    prec = resolve_precision(precision, device)
    fmt = prec.memory_format
    scaler = prec.grad_scaler()
    model.to(device, memory_format=fmt)
    opt = optimizer or make_optimizer(model, recipe)
    _, world = distributed.rank_and_world()
    main = distributed.is_main()
    net = distributed.wrap(model)
    writer = None
    if log_dir is not None and main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    n = len(data.train)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total = recipe.total_steps(n)
    val_x, val_y = data.tensors("val", device)
    result = TrainResult(steps=start_step)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    step = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=start_step, disable=not (progress and main), desc="train", unit="step", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    epoch = 0
    while step < total:
        running, seen = 0.0, 0
        for x, y in data.train_batches(recipe.batch_size, gen, recipe.augment, device):
            if step >= total:
                break
            if step < start_step:  # replay the data order of a resumed run without training
                step += 1
                continue
            if on_step is not None:
                replaced = on_step(step, model, opt)
                if replaced is not None:
                    model, opt = replaced
                    model.to(memory_format=fmt)
                    net = distributed.wrap(model)  # DDP after the cut: its buckets are built for the new shapes
            lr = recipe.lr_at(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = len(y)  # the global batch: every rank drew the same one
            x, y = distributed.shard(x, y)
            net.train()
            with prec.autocast():
                logits = net(x.contiguous(memory_format=fmt))
            if world == 1:
                loss = F.cross_entropy(logits.float(), y)
            else:  # DDP averages over ranks: sum / global batch x world gives the whole batch's mean gradient
                loss = F.cross_entropy(logits.float(), y, reduction="sum") * (world / batch)
            if recipe.kd_weight:
                with torch.no_grad(), prec.autocast():
                    teacher_logits = teacher(x.contiguous(memory_format=fmt)).float()
                t = recipe.kd_temperature
                loss = (1 - recipe.kd_weight) * loss + recipe.kd_weight * t * t * kd_divergence(logits.float(),
                                                                                             teacher_logits, t)
            if recipe.bn_l1:
                loss = loss + recipe.bn_l1 * bn_l1_penalty(model)
            if not torch.isfinite(loss):
                if checkpoint is not None and main:
                    save_training_state(checkpoint, model, opt, step)
                raise AutopruneError(f"loss became {loss.item()} at step {step}: lower --lr (state saved to {checkpoint})")
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            step += 1
            result.train_macs += macs_per_image * batch
            running += loss.item() * len(y)
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{running / seen:.3f}", lr=f"{lr:.4f}")
            if writer is not None and step % 20 == 0:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", lr, step)
        epoch += 1
        if seen and validate:
            val_acc = accuracy(model, val_x, val_y, precision=prec)
            entry = {"epoch": epoch, "step": step, "train_loss": running / seen, "val_acc": val_acc}
            result.history.append(entry)
            if main:
                bar.write(f"epoch {epoch}: train loss {running / seen:.4f}, val acc {100 * val_acc:.2f}%")
            if writer is not None:
                writer.add_scalar("val/accuracy", val_acc, step)
        if seen and checkpoint is not None and main:
            save_training_state(checkpoint, model, opt, step)
        if steps_per_epoch == 0:
            break
    bar.close()
    if writer is not None:
        writer.close()
    result.steps = step
    result.seconds = time.perf_counter() - t0
    return result


def save_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
