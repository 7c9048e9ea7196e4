"""Does bf16 change what autoprune measures, and what does it buy?

Three parts, each a list of rows in ``bench/results/precision.json``, resumable row by row:

- ``speed``: ResNet-20, batch 256, images/s for inference and a training step, fp32 / bf16, with
  and without channels-last, median of 5 -- the table behind ``autoprune.precision``'s choices.
- ``agreement``: on 50 random feasible allocations per (model, target) -- ResNet-20 and ResNet-56
  at 50% and 30% of MACs, the JPEG-adapted checkpoints, 1,024 calibration / 2,000 held-out
  images (the search defaults) -- the adaptive-BN score in bf16 against fp32 on the same pruned
  models and images: Spearman, mean/max absolute difference, whether the best of the 50 is the
  same allocation, and seconds per score.
- ``training``: a 2-epoch LR-rewind fine-tune (cosine from 0.01, full training split minus the
  held-out images) of ResNet-20 pruned uniformly to 50% of MACs, bf16 vs fp32, 2 seeds; test
  accuracy of the fine-tuned model (always scored in fp32) and wall time.

    python -m bench.precision                       # all parts (~1 h on 2 idle cores)
    python -m bench.precision speed agreement       # some parts
"""
from __future__ import annotations

import copy
import json
import shlex
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from autoprune.agents.random_search import random_feasible_counts
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.runs import write_json_atomic
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy
from autoprune.train.training import TrainRecipe, train
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine, run_parts, timed

OUT = RESULTS / "precision.json"
COMMAND = "python -m bench.precision " + " ".join(map(shlex.quote, sys.argv[1:]))


def _load() -> dict:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"command": "python -m bench.precision", "machine": machine(), "speed": [], "agreement": [],
            "training": []}


def _save(record: dict) -> None:
    write_json_atomic(OUT, record, indent=1)


def speed(record: dict) -> None:
    from autoprune.models import create_model

    if record["speed"]:
        return
    x = torch.randn(256, 3, 32, 32)
    y = torch.randint(0, 10, (256,))
    for prec in ("fp32", "bf16"):
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            model = create_model("resnet20", 10).to(memory_format=fmt)
            xb = x.contiguous(memory_format=fmt)
            ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else torch.no_grad

            def infer() -> None:
                model.eval()
                with torch.inference_mode(), ctx():
                    model(xb)

            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step() -> None:
                model.train()
                with (torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else torch.enable_grad()):
                    out = model(xb)
                loss = F.cross_entropy(out.float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            for mode, fn in (("inference", infer), ("train_step", step)):
                times = timed(fn, 5, warmup=2)
                record["speed"].append({"precision": prec, "channels_last": cl, "mode": mode, "batch": 256,
                                        "images_per_s": 256 / statistics.median(times), "seconds": times})
                print(record["speed"][-1]["precision"], cl, mode, f"{record['speed'][-1]['images_per_s']:.0f} img/s")
    _save(record)


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(record: dict, samples: int = 50) -> None:
    for model in ("resnet20", "resnet56"):
        todo = [t for t in (0.5, 0.3) if not any(r["model"] == model and r["target"] == t for r in record["agreement"])]
        if not todo:
            continue
        ws = open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=2000, calib_size=1024,
                            precision="fp32")
        structure = ws.structure()
        calib = ws.data.calibration_batches(128)
        vx, vy = ws.data.tensors("val")
        evaluators = {p: AdaptiveBNEvaluator(calib, vx, vy, precision=p) for p in ("fp32", "bf16")}
        for target in todo:
            problem = PruningProblem(structure, target, calib_batches=calib)
            rng = np.random.default_rng(0)
            scores: dict[str, list[float]] = {"fp32": [], "bf16": []}
            seconds: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
            for _ in range(samples):
                counts = random_feasible_counts(problem, rng)
                pruned = problem.pruned_model(Allocation.from_counts(structure, counts))
                for p, ev in evaluators.items():
                    t = time.perf_counter()
                    scores[p].append(ev(copy.deepcopy(pruned)))
                    seconds[p] += time.perf_counter() - t
            diff = np.abs(np.array(scores["bf16"]) - np.array(scores["fp32"]))
            row = {"model": model, "target": target, "samples": samples, "seed": 0,
                   "spearman": _spearman(scores["fp32"], scores["bf16"]),
                   "mean_abs_diff_points": 100 * float(diff.mean()), "max_abs_diff_points": 100 * float(diff.max()),
                   "same_best": int(np.argmax(scores["fp32"])) == int(np.argmax(scores["bf16"])),
                   "best_fp32": max(scores["fp32"]), "best_bf16": max(scores["bf16"]),
                   "bf16_score_of_fp32_best": scores["bf16"][int(np.argmax(scores["fp32"]))],
                   "seconds_per_score": {p: s / samples for p, s in seconds.items()},
                   "speedup": seconds["fp32"] / seconds["bf16"], "scores": scores}
            record["agreement"].append(row)
            _save(record)
            print(f"{model} @{target}: spearman {row['spearman']:.3f}, mean |diff| {row['mean_abs_diff_points']:.2f} "
                  f"max {row['max_abs_diff_points']:.2f} points, same best {row['same_best']}, "
                  f"bf16 {row['speedup']:.2f}x faster")


def training(record: dict, seeds: tuple[int, ...] = (0, 1), epochs: float = 2.0) -> None:
    ws = None
    for seed in seeds:
        for prec in ("fp32", "bf16"):
            if any(r["seed"] == seed and r["precision"] == prec for r in record["training"]):
                continue
            if ws is None:
                ws = open_workspace("resnet20", str(finetuned_checkpoint("resnet20")), DATA, val_size=5000,
                                    calib_size=1024, precision="fp32")
                structure = ws.structure()
                calib = ws.data.calibration_batches(128)
                problem = PruningProblem(structure, 0.5, calib_batches=calib)
                from autoprune.agents.uniform import UniformAllocator

                pruned0 = problem.pruned_model(UniformAllocator().allocate(problem))
                from autoprune.train.evaluator import recalibrate_bn

                recalibrate_bn(pruned0, calib)
                test_x, test_y = ws.data.tensors("test")
            net = copy.deepcopy(pruned0)
            recipe = TrainRecipe(epochs=epochs, lr=0.01, schedule="cosine")
            result = train(net, ws.data, recipe, seed=seed, progress=False, precision=prec)
            row = {"model": "resnet20", "target": 0.5, "allocation": "uniform", "recipe": "lr-rewind",
                   "epochs": epochs, "seed": seed, "precision": prec, "test_acc": accuracy(net, test_x, test_y),
                   "seconds": result.seconds, "images_per_s": result.steps * recipe.batch_size / result.seconds}
            record["training"].append(row)
            _save(record)
            print(f"seed {seed} {prec}: test {100 * row['test_acc']:.2f}% in {row['seconds']:.0f} s")


PARTS = {"speed": speed, "agreement": agreement, "training": training}


def main(argv: list[str] | None = None) -> int:
    return run_parts(__doc__, PARTS, _load, argv)


if __name__ == "__main__":
    sys.exit(main())
