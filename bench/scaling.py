"""Parallel candidate scoring: candidates per minute in one process and on 1 or 2 Ray workers.

ResNet-20 and ResNet-56 (JPEG-adapted checkpoints), 50% of MACs, the search defaults (1,024
calibration / 2,000 held-out images, default precision), the same ``CANDIDATES`` random feasible
allocations scored by each setting, no cache between settings:

- ``in-process, 1 thread`` / ``in-process, 2 threads``: ``Scorer.score`` one after another;
- ``ray, 1 worker`` / ``ray, 2 workers``: ``Scorer.score_many`` on ``RayScoringPool`` actors at one
  thread each (actor start-up, which holds the model and data once, is timed separately).

Also ``resnet50_prune`` (the CPU side of an ImageNet candidate, for the estimate in bench/README.md)
and ``ddp_equivalence`` (torchrun x2 vs one process). Run on an idle machine (it uses both cores):
``python -m bench.scaling [throughput|resnet50_prune|ddp_equivalence ...]``. Writes
``bench/results/scaling.json``; each setting's scores are compared with the first's (in-process, 1
thread): equal, largest difference, same best candidate.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from autoprune.agents.random_search import RandomSearch
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.runs import write_json_atomic
from autoprune.train.ray_pool import RayScoringPool
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine

OUT = RESULTS / "scaling.json"
MODELS, TARGET, CANDIDATES = ("resnet20", "resnet56"), 0.5, 24


def measure(model: str) -> list[dict]:
    ws = open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=2000, calib_size=1024, seed=0)
    problem = PruningProblem(ws.structure(), TARGET, calib_batches=ws.data.calibration_batches(128, ws.device))
    evaluator = ws.evaluator(128)
    candidates = RandomSearch(CANDIDATES, seed=0).candidates(problem)
    rows, reference = [], None

    def record(setting: str, workers: int, threads: int, seconds: float, scores: list[float], startup=None):
        nonlocal reference
        reference = scores if reference is None else reference
        rows.append({"model": model, "setting": setting, "workers": workers, "threads_per_worker": threads,
                     "candidates": len(scores), "seconds": seconds, "candidates_per_minute": 60 * len(scores) / seconds,
                     "startup_seconds": startup, "same_scores_as_first": scores == reference,
                     "max_score_difference": max(abs(a - b) for a, b in zip(scores, reference)),
                     "same_best_as_first": scores.index(max(scores)) == reference.index(max(reference)),
                     "precision": ws.precision.name})
        print(f"{model} {setting}: {rows[-1]['candidates_per_minute']:.1f} candidates/min", flush=True)

    for threads in (1, 2):
        torch.set_num_threads(threads)
        Scorer(problem, evaluator).score(candidates[0])  # warm-up (first-call allocations), not timed
        scorer = Scorer(problem, evaluator)
        t0 = time.perf_counter()
        scores = [scorer.value(c) for c in candidates]
        record(f"in-process, {threads} thread{'s' * (threads > 1)}", 1, threads, time.perf_counter() - t0, scores)
    torch.set_num_threads(1)  # the driver only waits
    for workers in (1, 2):
        t0 = time.perf_counter()
        pool = RayScoringPool(problem, evaluator, workers, threads=1)
        pool.score([problem.key(c) for c in candidates[:workers]])  # actors built and warmed up
        startup = time.perf_counter() - t0
        scorer = Scorer(problem, evaluator, pool=pool)
        t0 = time.perf_counter()
        scores = [s.value for s in scorer.score_many(candidates)]
        record(f"ray, {workers} worker{'s' * (workers > 1)}", workers, 1, time.perf_counter() - t0, scores, startup)
        pool.close()
    return rows


def resnet50_prune_seconds(samples: int = 5) -> dict:
    """The CPU side of one ImageNet candidate: pruning torchvision's ResNet-50 (224 px) to a random
    allocation at 50% of MACs, one thread (the GPU side is the forward passes, estimated from
    published throughput in bench/README.md)."""
    from autoprune.core.io import load_model
    from autoprune.core.structure import ModelStructure

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    structure = ModelStructure(load_model("tv:resnet50", 1000), torch.randn(1, 3, 224, 224), num_classes=1000)
    build = time.perf_counter() - t0
    problem = PruningProblem(structure, TARGET)
    times = []
    for alloc in RandomSearch(samples, seed=0).candidates(problem):
        t0 = time.perf_counter()
        problem.pruned_model(alloc)
        times.append(time.perf_counter() - t0)
    return {"model": "tv:resnet50", "structure_build_seconds": build, "prune_seconds": times,
            "prune_seconds_median": sorted(times)[len(times) // 2], "dense_macs": structure.dense_macs,
            "threads": 1}


def ddp_equivalence() -> dict:
    """``tests/ddp_train_tiny.py`` (a small conv net, 18 SGD steps of 100 images, augmentation on) alone and
    under ``torchrun --nproc_per_node 2`` (one thread each): largest weight difference, seconds."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    script = str(Path(__file__).resolve().parents[1] / "tests" / "ddp_train_tiny.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"one process": [sys.executable, script, f"{tmp}/one.pt"],
                "torchrun x2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                script, f"{tmp}/two.pt"]}
        seconds = {}
        for name, cmd in runs.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            seconds[name] = time.perf_counter() - t0
        one, two = torch.load(f"{tmp}/one.pt"), torch.load(f"{tmp}/two.pt")
    diff = max((one["trained"][k] - two["trained"][k]).abs().max().item() for k in one["trained"])
    moved = max((one["trained"][k] - one["init"][k]).abs().max().item() for k in one["init"])
    return {"max_abs_weight_difference": diff, "max_abs_weight_change_in_training": moved,
            "seconds_with_startup": seconds}


PARTS = {"throughput": lambda: [row for model in MODELS for row in measure(model)],
         "resnet50_prune": resnet50_prune_seconds, "ddp_equivalence": ddp_equivalence}


def main() -> int:
    """``python -m bench.scaling [PART ...]`` (default: all); each part replaces its key in scaling.json."""
    parts = sys.argv[1:] or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown part(s) {', '.join(unknown)}: use {', '.join(PARTS)}", file=sys.stderr)
        return 2
    record = json.loads(OUT.read_text()) if OUT.exists() else {"target": TARGET, "commands": {}}
    record.setdefault("commands", {})
    for part in parts:
        record[part] = PARTS[part]()
        record["commands"][part] = f"python -m bench.scaling {part}"
        record.setdefault("machines", {})[part] = machine()
        write_json_atomic(OUT, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
