"""Progressive train-prune-train: shrink the model a little at a time while it trains.

Two ways to decide where each cut goes (``trajectory``):

- ``final`` (the default for ``policy:`` and ``allocation:``): the allocator is asked ONCE, on the
  original model at the final target, so every group's final width is fixed before training
  starts. At each event every group moves from its current width toward its final width by the
  same share of its remaining cut -- the smallest share that meets the step's planned MACs -- so
  the run lands on the searched shape and the schedule only decides *when* channels go.
- ``per-step``: at each event the allocator is asked again, on the current, partly pruned model at
  the step's budget (for heuristics meant to re-look at the model, e.g. ``layer-stats``).

From scratch (a ``ShapeDecision``, ``autoprune.train.decision``), the ``final`` shape is not decided
before training but part-way through it, on the dense model as trained so far: at a fixed step, or
when the allocation the allocator would give stops moving between epochs. Nothing is cut before
the decision; the schedule's events are then compressed into what is left of it.

At every event of a ``PruningSchedule`` the driver

1. reads the step's planned cost (a fraction of the ORIGINAL model's MACs),
2. builds a ``ModelStructure`` on the current, already smaller model,
3. decides the widths (as above), lets the criterion pick the channels, prunes, and
4. carries the optimizer state over (``surgery.prune_with_optimizer``).

Training itself is ``autoprune.training.train``; the driver is its ``on_step`` hook, which also
counts training MACs (batch MACs of the model that actually ran; ``ledger`` keeps the running sum
at every epoch boundary) and writes a resumable state file at every epoch boundary. A from-scratch run
with a fixed decision step also keeps the last state before its decision (``DENSE_STATE``): other runs
that differ only in what is decided there start from it instead of training the same dense prefix again.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.counts import bisect, fill_in_order, legal_step, snap_count
from autoprune.core.criteria import group_scores
from autoprune.core.io import load_pruned, save_pruned
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import channels_to_remove
from autoprune.core.scoring import Scorer
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.runs import atomic_path
from autoprune.train import distributed
from autoprune.train.data import DataBundle
from autoprune.train.decision import ShapeDecision, keep_distance
from autoprune.train.precision import Precision, resolve_precision
from autoprune.train.schedules import PruningSchedule
from autoprune.train.scores import DEFAULT_SCORE, make_evaluator
from autoprune.train.surgery import group_widths, prune_with_optimizer
from autoprune.train.training import TrainRecipe, make_optimizer, train

STATE_FORMAT = "autoprune.progressive-state/1"
DENSE_STATE = "dense_state.pt"  # beside state.pt: the last state before a fixed-step decision
TRAJECTORIES = ("final", "per-step")


def default_trajectory(allocator_spec: str) -> str:
    """Head for a decided shape when the allocator is a learned policy or a saved allocation."""
    return "final" if allocator_spec.startswith(("policy:", "allocation:")) else "per-step"


@dataclass
class PruneEvent:
    """One cut: planned and realised kept fraction of the original MACs, and the widths after it; when it
    happened (step, epoch, learning rate) and the training MACs spent before it."""

    step: int
    planned: float
    realised: float
    macs: int
    channels: dict[str, int]
    seconds: float
    epoch: float = 0.0
    lr: float = 0.0
    train_macs: float = 0.0


@dataclass
class ProgressiveResult:
    model: nn.Module
    original: ModelStructure  # the model before any cut: the reference of every MACs figure
    allocation: Allocation  # channels kept per group of the original model
    events: list[PruneEvent]
    train_macs: float  # sum over steps of forward MACs per image x batch size
    seconds: float
    steps: int
    history: list[dict] = field(default_factory=list)  # per-epoch val accuracy (of this process)
    schedule: PruningSchedule | None = None  # the schedule the cuts followed (from scratch: from the decision on)
    decision: dict | None = None  # from scratch: step, epoch, reason and widths of the decided shape
    probes: list[dict] = field(default_factory=list)  # --decide-at auto: the allocation asked at each epoch
    ledger: list[dict] = field(default_factory=list)  # training MACs spent by each epoch boundary


# -- the driver ----------------------------------------------------------------------------
class ProgressivePruner:
    """``train(on_step=...)`` hook: prunes at the schedule's events, counts MACs, checkpoints.

    ``original`` is the structure of the model before any cut: its dense MACs are the reference
    of every planned target, and its group names index the widths recorded per event.
    """

    def __init__(self, original: ModelStructure, data: DataBundle, recipe: TrainRecipe, schedule: PruningSchedule,
                 allocator: Any, *, base_name: str, criterion: str = "l1", min_keep: float = 0.2, round_to: int = 1,
                 seed: int = 0, device: torch.device | str = "cpu", state_path: str | Path | None = None,
                 writer: Any = None, progress: bool = True, precision: str | Precision = "auto",
                 trajectory: str = "per-step", decision: ShapeDecision | None = None,
                 example_input: torch.Tensor | None = None, score: str = DEFAULT_SCORE):
        if trajectory not in TRAJECTORIES:
            raise AutopruneError(f"unknown trajectory '{trajectory}': use {' or '.join(TRAJECTORIES)}")
        if decision is not None and trajectory != "final":
            raise AutopruneError("a shape decided during training is the one every cut heads for: use trajectory final")
        self.decision, self.score = decision, score
        self.decided: dict | None = None  # step, epoch, reason, widths (once decided)
        self.probes: list[dict] = []
        self.ledger: list[dict] = []
        self.trajectory = trajectory
        self.final_widths: dict[str, int] | None = None  # trajectory "final": fixed before training
        self.original = original
        self.data, self.recipe, self.schedule, self.allocator = data, recipe, schedule, allocator
        self.base_name, self.criterion, self.min_keep, self.round_to, self.seed = base_name, criterion, min_keep, round_to, seed
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.state_path = Path(state_path) if state_path is not None else None
        self.writer, self.progress = writer, progress
        self.n_train = len(data.train)
        self.steps_per_epoch = math.ceil(self.n_train / recipe.batch_size)
        self.total = recipe.total_steps(self.n_train)
        self.events: list[PruneEvent] = []
        self._event_steps = set() if decision is not None else set(schedule.events)  # no cut before a decision
        self.train_macs = 0.0
        self.elapsed = 0.0  # wall seconds of earlier processes (resume)
        self.resumed_at = -1
        self.model: nn.Module = original.model
        self.optimizer: torch.optim.Optimizer | None = None
        self.macs = original.dense_macs
        self._calib: list[torch.Tensor] | None = None
        # the shape every cut's MACs are counted at: the original structure's (its input size), not the data's
        self._example = (original.example_input if example_input is None else example_input)[:1].to(self.device)

    # -- state --------------------------------------------------------------------------------
    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, self.recipe)

    def widths(self, model: nn.Module) -> dict[str, int]:
        return group_widths(model, [g.name for g in self.original.groups])

    def allocation(self) -> Allocation:
        """The current widths as an allocation of the original model."""
        return Allocation(self.widths(self.model))

    def save_state(self, step: int) -> None:
        if self.state_path is None or not distributed.is_main():
            return
        with atomic_path(self.state_path) as tmp:
            save_pruned(self.model, self.base_name, self.data.num_classes, tmp, format=STATE_FORMAT, step=step,
                        optimizer=self.optimizer.state_dict(), events=[asdict(e) for e in self.events],
                        train_macs=self.train_macs, seconds=self.elapsed + time.perf_counter() - self._t0,
                        final_widths=self.final_widths, decided=self.decided, probes=self.probes,
                        ledger=self.ledger)

    def load_state(self) -> int:
        """Restore model, optimizer, events and counters from ``state_path``; returns the step to resume at."""
        model, base = load_pruned(self.state_path)
        meta = torch.load(self.state_path, map_location="cpu", weights_only=True)["meta"]
        if meta.get("format") != STATE_FORMAT or base != self.base_name:
            raise AutopruneError(f"'{self.state_path}' is not a progressive state of a {self.base_name}: "
                                 "choose another --output or drop --resume")
        self.model = model.to(self.device)
        self.optimizer = self.make_optimizer(self.model)
        self.optimizer.load_state_dict(meta["optimizer"])
        self.events = [PruneEvent(**e) for e in meta["events"]]
        self.train_macs, self.elapsed = float(meta["train_macs"]), float(meta["seconds"])
        self.final_widths = meta.get("final_widths")
        self.probes, self.ledger = list(meta.get("probes") or []), list(meta.get("ledger") or [])
        if meta.get("decided") is not None:
            self._follow(meta["decided"])
        self.macs = self.original.macs([self.widths(self.model)[g.name] for g in self.original.groups])
        self.resumed_at = int(meta["step"])
        return self.resumed_at

    # -- the hook -----------------------------------------------------------------------------
    def __call__(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        boundary = step % self.steps_per_epoch == 0 and step > 0
        if boundary and step > self.resumed_at:
            self.ledger.append({"epoch": step / self.steps_per_epoch, "step": step, "train_macs": self.train_macs})
            self.save_state(step)
        if self.decision is not None and self.decided is None:
            self.consider_deciding(step, boundary)
        replaced = None
        if step in self._event_steps and all(e.step != step for e in self.events):
            replaced = self.prune(step)
        batch = min(self.recipe.batch_size, self.n_train - (step % self.steps_per_epoch) * self.recipe.batch_size)
        self.train_macs += self.macs * batch
        if self.writer is not None and step % 20 == 0:
            self.writer.add_scalar("cost/train_gmacs", self.train_macs / 1e9, step)
        return replaced

    def _calibration(self) -> list[torch.Tensor]:
        """Calibration batches (criteria, BN recalibration), built on first use."""
        if self._calib is None:
            self._calib = self.data.calibration_batches(128, self.device)
        return self._calib

    def _problem(self, structure: ModelStructure, target: float) -> tuple[PruningProblem, Scorer]:
        """``structure``'s problem at ``target`` and a scorer by ``self.score``; the scores that compare with
        the dense model compare with ``structure``'s model as it is now (trained so far, cut so far)."""
        calib = self._calibration()
        problem = PruningProblem(structure, target=target, metric="macs", criterion=self.criterion,
                                 calib_batches=calib, min_keep=self.min_keep, round_to=self.round_to)
        vx, vy = self.data.tensors("val", self.device)
        evaluator = make_evaluator(self.score, self.data, calib, vx, vy, precision=self.precision, seed=self.seed,
                                   structure=structure)
        return problem, Scorer(problem, evaluator)

    def prune(self, step: int) -> tuple[nn.Module, torch.optim.Optimizer] | None:
        """Cut the current model to the schedule's target at ``step``."""
        t0 = time.perf_counter()
        planned = self.schedule.target(step)
        structure = ModelStructure(self.model, self._example, num_classes=self.data.num_classes)
        relative = planned * self.original.dense_macs / structure.dense_macs
        replaced = None

        def decide() -> tuple[np.ndarray, list[list[int]] | None]:
            if self.trajectory == "final":
                counts = self.trajectory_counts(structure, planned)
            elif relative < 1.0:
                counts = self.allocator.allocate(*self._problem(structure, relative)).counts(structure)
            else:
                counts = np.array([g.channels for g in structure.groups])
            if not any(int(k) < g.channels for g, k in zip(structure.groups, counts)):
                return counts, None
            return counts, channels_to_remove(structure, counts, group_scores(structure, self.criterion,
                                                                              self._calibration()))

        counts, remove = distributed.from_main(decide)  # under DDP every rank makes rank 0's cut
        if remove is not None:
            replaced = prune_with_optimizer(structure, remove, self.optimizer, self.make_optimizer)
            self.model, self.optimizer = replaced
            self.macs = structure.macs(counts)
        widths = self.widths(self.model)
        event = PruneEvent(step, planned, self.macs / self.original.dense_macs, int(self.macs), widths,
                           time.perf_counter() - t0, step / self.steps_per_epoch, self.recipe.lr_at(step, self.total),
                           self.train_macs)
        self.events.append(event)
        self.log_event(event)
        return replaced

    def plan_final_widths(self) -> dict[str, int]:
        """Trajectory ``final``: the allocator decides every group's final width once, on the original model."""
        if self.final_widths is None:
            def decide() -> dict[str, int]:
                counts = self.allocator.allocate(*self._problem(self.original, self.schedule.final)).counts(self.original)
                return {g.name: int(k) for g, k in zip(self.original.groups, counts)}

            self.final_widths = distributed.from_main(decide)
        return self.final_widths

    # -- deciding the shape during training (from scratch) -----------------------------------
    def ask_allocator(self) -> dict[str, int]:
        """The widths the allocator gives the current (still dense) model at the final target."""
        def decide() -> dict[str, int]:
            structure = ModelStructure(self.model, self._example, num_classes=self.data.num_classes)
            counts = self.allocator.allocate(*self._problem(structure, self.schedule.final)).counts(structure)
            return {g.name: int(k) for g, k in zip(structure.groups, counts)}

        return distributed.from_main(decide)  # under DDP every rank heads for rank 0's shape

    def consider_deciding(self, step: int, boundary: bool) -> None:
        """``ShapeDecision``: decide at its step; or (auto) ask the allocator at each epoch boundary and
        decide once its answer has stopped moving, or at the latest step."""
        d = self.decision
        assert d is not None
        if not d.auto:
            if step >= d.step:
                t0 = time.perf_counter()
                self.decide(step, self.ask_allocator(), "fixed", time.perf_counter() - t0)
            return
        late = step >= d.latest
        if not (boundary or late) or (self.probes and self.probes[-1]["step"] == step):
            return
        t0 = time.perf_counter()
        widths = self.ask_allocator()
        channels = {g.name: g.channels for g in self.original.groups}
        distance = keep_distance(widths, self.probes[-1]["widths"], channels) if self.probes else None
        self.probes.append({"step": step, "epoch": step / self.steps_per_epoch, "distance": distance,
                            "widths": widths, "seconds": time.perf_counter() - t0})
        if self.progress and distributed.is_main():
            moved = "" if distance is None else f", moved {distance:.4f} (threshold {d.threshold:g})"
            print(f"step {step}: allocation asked on the dense model{moved}", flush=True)
        distances = [p["distance"] for p in self.probes if p["distance"] is not None]
        if d.settled(distances) or late:
            self.decide(step, widths, "settled" if d.settled(distances) else "latest",
                        sum(p["seconds"] for p in self.probes))

    def decide(self, step: int, widths: dict[str, int], reason: str, seconds: float) -> None:
        """Fix the final shape at ``step`` and schedule the cuts from there (``seconds``: spent deciding)."""
        if self.state_path is not None and self.state_path.exists() and distributed.is_main() \
                and self.decision is not None and not self.decision.auto:  # nothing decided in it yet: forkable
            with atomic_path(self.state_path.with_name(DENSE_STATE)) as tmp:
                shutil.copyfile(self.state_path, tmp)
        self._follow({"step": step, "epoch": step / self.steps_per_epoch, "reason": reason, "widths": widths,
                      "seconds": seconds})
        if self.progress and distributed.is_main():
            print(f"step {step} (epoch {step / self.steps_per_epoch:g}): shape decided ({reason}), "
                  f"cuts at steps {self.schedule.events[0]}..{self.schedule.end}", flush=True)

    def _follow(self, decided: dict) -> None:
        self.decided = decided
        self.final_widths = dict(decided["widths"])
        self.schedule = self.schedule.starting_at(int(decided["step"]))
        self._event_steps = set(self.schedule.events)

    def trajectory_counts(self, structure: ModelStructure, planned: float) -> np.ndarray:
        """Widths (in ``structure``'s group order) after moving every group the same share of the way
        from its current width to its final one: the smallest share whose MACs meet ``planned``."""
        final = self.plan_final_widths()
        names = [g.name for g in structure.groups]
        current = np.array([g.channels for g in structure.groups], dtype=float)
        target = np.array([final[n] for n in names], dtype=float)
        budget = planned * self.original.dense_macs

        def counts_at(share: float) -> np.ndarray:
            raw = [snap_count(g, c - share * (c - f), self.round_to) for g, c, f in zip(structure.groups, current, target)]
            return np.clip(np.array(raw, dtype=np.int64), target.astype(np.int64), current.astype(np.int64))

        if structure.macs(counts_at(0.0)) <= budget:
            return counts_at(0.0)
        if planned <= self.schedule.final + 1e-12:
            return counts_at(1.0)  # the last cut lands exactly on the decided shape
        counts = counts_at(bisect(lambda share: structure.macs(counts_at(share)) > budget, iters=30)[1])
        # rounding overshoots the cut a little: give channels back, one legal step at a time, largest gap first
        steps = [legal_step(g.ch_groups, self.round_to) for g in structure.groups]
        return fill_in_order(counts, steps, current, np.argsort(-(current - counts)),
                             lambda c: structure.macs(c) <= budget)

    def log_event(self, event: PruneEvent) -> None:
        if self.writer is not None:
            self.writer.add_scalar("cost/macs_planned", event.planned, event.step)
            self.writer.add_scalar("cost/macs_realised", event.realised, event.step)
            for name, c in event.channels.items():
                self.writer.add_scalar(f"channels/{name}", c, event.step)
        if self.progress and distributed.is_main():
            print(f"step {event.step}: MACs {100 * event.realised:.1f}% of original "
                  f"(planned {100 * event.planned:.1f}%), cut in {event.seconds:.2f}s", flush=True)

    # -- the whole run ------------------------------------------------------------------------
    def run(self, resume: bool = False, log_dir: str | Path | None = None) -> ProgressiveResult:
        start = 0
        if resume and self.state_path is not None and self.state_path.exists():
            start = self.load_state()
        if self.optimizer is None:
            self.optimizer = self.make_optimizer(self.model)
        if self.trajectory == "final" and self.decision is None:
            self.plan_final_widths()
        total = self.total
        if self.schedule.end >= total:
            raise AutopruneError(f"the pruning schedule ends at step {self.schedule.end}, after training ({total} steps)")
        self._t0 = time.perf_counter()
        if self.writer is not None and start == 0:
            self.log_event(PruneEvent(0, 1.0, self.macs / self.original.dense_macs, int(self.macs),
                                      self.widths(self.model), 0.0))
        history: list[dict] = []
        if start < total:
            result = train(self.model, self.data, self.recipe, device=self.device, seed=self.seed, log_dir=log_dir,
                           progress=self.progress, on_step=self, start_step=start, optimizer=self.optimizer,
                           precision=self.precision)
            history = result.history
        if self.decision is not None and self.decided is None:
            raise AutopruneError(f"training ended before the shape was decided (latest step {self.decision.latest} "
                                 f"of {total}): lower --decide-by or --decide-at")
        if not self.ledger or self.ledger[-1]["step"] != total:
            self.ledger.append({"epoch": total / self.steps_per_epoch, "step": total, "train_macs": self.train_macs})
        self.save_state(total)
        return ProgressiveResult(self.model, self.original, self.allocation(), self.events, self.train_macs,
                                 self.elapsed + time.perf_counter() - self._t0, total, history, self.schedule,
                                 self.decided, self.probes, self.ledger)


def progressive_train(model: nn.Module, data: DataBundle, recipe: TrainRecipe, schedule: PruningSchedule,
                      allocator: Any, *, base_name: str, criterion: str = "l1", min_keep: float = 0.2,
                      round_to: int = 1, seed: int = 0, device: torch.device | str = "cpu",
                      state_path: str | Path | None = None, resume: bool = False,
                      log_dir: str | Path | None = None, progress: bool = True,
                      precision: str | Precision = "auto", trajectory: str = "per-step",
                      decision: ShapeDecision | None = None,
                      example_input: torch.Tensor | None = None, score: str = DEFAULT_SCORE) -> ProgressiveResult:
    """Train ``model`` for ``recipe.epochs`` while pruning it to ``schedule.final`` of its MACs.

    ``allocator`` is any ``Allocator`` (``autoprune.agents.get_allocator(name)``); ``trajectory``
    says whether it decides the final shape once (``final``) or every cut anew (``per-step``);
    ``decision`` (from scratch) says when during training the ``final`` shape is decided; ``score``
    (``autoprune.train.scores``) is what a searching allocator scores candidates by. With
    ``state_path`` a resumable state is written at every epoch boundary; ``resume`` continues from it.
    Every MACs figure is counted on ``example_input`` (the command passes one at ``--input-size``; default:
    one image of the data, at the resolution it is fed).
    """
    device = torch.device(device)
    model.to(device)
    example = (data.tensors("val")[0] if example_input is None else example_input)[:1].to(device)
    original = ModelStructure(model, example, num_classes=data.num_classes)
    writer = None
    if log_dir is not None and distributed.is_main():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(log_dir) / "pruning"))
    try:
        pruner = ProgressivePruner(original, data, recipe, schedule, allocator, base_name=base_name,
                                   criterion=criterion, min_keep=min_keep, round_to=round_to, seed=seed,
                                   device=device, state_path=state_path, writer=writer, progress=progress,
                                   precision=precision, trajectory=trajectory, decision=decision,
                                   example_input=example, score=score)
        return pruner.run(resume=resume, log_dir=log_dir)
    finally:
        if writer is not None:
            writer.close()
