"""Score candidate allocations in parallel on Ray actors (``--workers N``, ``--ray-address ADDR``).

Each actor receives the dense model, the calibration batches and the held-out tensors once, as
one object in Ray's object store, rebuilds the model's structure and the evaluator of the
``--score`` (any score that needs no training data: ``adaptive-bn`` and ``reconstruct``, any metric),
and from then on is sent only keep counts (a tuple of ints per candidate). ``ray.util.ActorPool``
hands candidates to whichever actor is free and returns the scores in submission order, so the
result of a search does not depend on the number of workers.
"""
from __future__ import annotations

import copy
import os
from typing import Sequence

import torch

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import prune
from autoprune.core.scoring import Score
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.train.evaluator import AdaptiveBNEvaluator


def _ray():
    try:
        import ray
    except ImportError:
        raise AutopruneError("parallel scoring needs Ray: pip install 'autoprune[distributed]' "
                             "(or run with --workers 1)") from None
    return ray


def _cpu(batches: Sequence[torch.Tensor] | None) -> list[torch.Tensor] | None:
    return None if batches is None else [b.detach().cpu() for b in batches]


class ScoreWorker:
    """One Ray actor: a copy of the problem's structure and evaluator, scoring keep-count tuples."""

    def __init__(self, payload: dict, threads: int):
        torch.set_num_threads(threads)
        self.load(payload)

    def load(self, payload: dict) -> None:
        """Take up a (new) problem: a spare actor reused by the next pool is sent its payload."""
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU only if Ray gave this actor one
        self.structure = ModelStructure(payload["model"].to(dev), payload["example"].to(dev),
                                        num_classes=payload["num_classes"])
        names = [g.name for g in self.structure.groups]
        if names != payload["groups"]:
            raise AutopruneError("a Ray worker found different prunable groups than the driver: the model's "
                                 "ignored layers must come from the model itself (pruning_ignored_layers)")
        ev = payload["evaluator"]
        calib, vx, vy = [b.to(dev) for b in ev["calib"]], ev["val_x"].to(dev), ev["val_y"].to(dev)
        if ev["kind"] == "adaptive-bn":
            self.evaluator = AdaptiveBNEvaluator(calib, vx, vy, ev["batch_size"], ev["precision"], ev["confidence"])
        else:
            from autoprune.train.scores import make_evaluator

            self.evaluator = make_evaluator(ev["kind"], None, calib, vx, vy, ev["precision"], structure=self.structure)
        calib = payload["criterion_batches"]
        self.criterion, self.calib = payload["criterion"], None if calib is None else [b.to(dev) for b in calib]

    def score(self, counts: tuple[int, ...], must_beat: float | None) -> Score:
        keep = Allocation({g.name: int(k) for g, k in zip(self.structure.groups, counts)})
        model = prune(self.structure, keep, self.criterion, self.calib)
        return self.evaluator.score(model, must_beat)


class RayScoringPool:
    """``workers`` Ray actors scoring allocations of one ``PruningProblem`` with ``evaluator`` (a
    ``Scorer``'s pool), ``threads`` torch threads each (default: the local cores shared out, or 1 per
    actor on a cluster).

    A closed pool's actors are kept as spares for the next pool of this Ray session (``compare``'s
    allocators and targets, a search's finalists): starting an actor (a process importing torch) costs
    seconds, handing a spare the next problem costs what rebuilding the structure does."""

    _spares: dict[tuple, list] = {}  # (Ray node id, threads, GPUs) -> idle actors

    def __init__(self, problem: PruningProblem, evaluator: AdaptiveBNEvaluator, workers: int,
                 address: str | None = None, threads: int | None = None):
        if workers < 1:
            raise AutopruneError(f"--workers {workers} must be at least 1")
        ev = evaluator
        from autoprune.train.scores import parse_score

        if not isinstance(ev, AdaptiveBNEvaluator) or parse_score(ev.kind).steps:  # workers rebuild it from its kind
            raise AutopruneError(f"parallel scoring (--workers) supports the scores that need no training data "
                                 f"(adaptive-bn, reconstruct), not '{ev.kind}': drop --workers, or change --score")
        ray = _ray()
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        self.workers = workers
        if threads is None:  # locally: share this machine's cores; on a cluster: one CPU per actor
            threads = max(1, (os.cpu_count() or 1) // workers) if address is None else 1
        payload = ray.put({
            "model": copy.deepcopy(problem.structure.model).cpu(), "example": problem.structure.example_input.cpu(),
            "num_classes": problem.structure.num_classes, "groups": [g.name for g in problem.structure.groups],
            "criterion": problem.criterion, "criterion_batches": _cpu(problem.calib_batches),
            "evaluator": {"kind": ev.kind, "calib": _cpu(ev.calib_batches), "val_x": ev.val_x.cpu(), "val_y": ev.val_y.cpu(),
                          "batch_size": ev.eval_batch_size, "precision": ev.precision.name,
                          "confidence": ev.confidence}})
        gpus = 1 if torch.cuda.is_available() else 0
        self._key = (ray.get_runtime_context().get_node_id(), threads, gpus)
        for key in [k for k in self._spares if k != self._key]:  # spares of another shape would hold the CPUs
            for a in self._spares.pop(key):
                try:
                    ray.kill(a)
                except Exception:  # an actor of an earlier Ray session: gone with it
                    pass
        spares = self._spares.pop(self._key, [])
        reused, self._spares[self._key] = spares[:workers], spares[workers:]
        try:
            ray.get([a.load.remote(payload) for a in reused])
        except ray.exceptions.RayActorError:  # a spare died meanwhile: start afresh
            reused = []
        actor = ray.remote(num_cpus=threads, num_gpus=gpus)(ScoreWorker)
        self._actors = reused + [actor.remote(payload, threads) for _ in range(workers - len(reused))]
        self._pool = ray.util.ActorPool(self._actors)

    def score(self, keys: Sequence[tuple[int, ...]], must_beat: float | None = None) -> list[Score]:
        """Scores of ``keys`` (keep-count tuples), in order."""
        return list(self._pool.map(lambda actor, key: actor.score.remote(key, must_beat), list(keys)))

    def close(self) -> None:
        """Hand the actors on to the next pool of this Ray session (they end with it)."""
        self._spares.setdefault(self._key, []).extend(self._actors)
        self._actors = []


def scoring_pool(problem: PruningProblem, evaluator: AdaptiveBNEvaluator, workers: int,
                 address: str | None = None) -> RayScoringPool | None:
    """A Ray pool when asked for (``workers > 1`` or a cluster address), else None (score in this process)."""
    if workers < 1:
        raise AutopruneError(f"--workers {workers} must be at least 1")
    if workers == 1 and address is None:
        return None
    return RayScoringPool(problem, evaluator, workers, address)
