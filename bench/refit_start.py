"""Does the refitted model fine-tune as well as the plain one once its weights keep their scale?

The default score refits each layer after a cut by least squares; that roughly doubles those layers'
weight norms, and under BatchNorm a weight twice as large trains at a quarter of the effective learning
rate. Round 2 of final quality measured the consequence: started from the refitted weights, ResNet-20 at
30% of MACs fine-tuned 1.3-1.7 points below the plain pruned start (rows ``start: refitted`` and
``start: recalibrated`` in ``final-quality.json``). The refit now gives each such layer back its pruned
weights' norm, channel by channel, which BN makes a no-op for the function (and the score).

This benchmark fine-tunes the same allocations from the model the default score now prepares (what
``search`` saves as ``best_model.pt``), with round 2's recipe and seed, and sets the result beside the two
earlier starts. Rows (``start: refit-rescaled``) go to ``bench/results/refit-start.json``, one per
allocation, as they finish (resumable: rerun the command).

    python -m bench.refit_start                   # ResNet-20, 30% of MACs, seed 0: searched, random, sensitivity
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from autoprune.train.evaluator import accuracy
from autoprune.train.training import TrainRecipe, train

from .common import RESULTS, machine, write_json_atomic
from .final_quality import OUT as FINAL, ModelBench

OUT = RESULTS / "refit-start.json"
EPOCHS = {"resnet20": 8, "resnet56": 4}


def earlier_starts(model: str, target: float, arm: str, seed: int) -> dict[str, float]:
    """Test accuracy of the same round-2 allocation fine-tuned (lr-rewind) from the earlier starts."""
    rows = json.loads(FINAL.read_text())["rows"] if FINAL.exists() else []
    return {r.get("start", "recalibrated"): r["test_acc"] for r in rows
            if r.get("round") == 2 and r["model"] == model and r["target"] == target and r["arm"] == arm
            and r["seed"] == seed and r["recipe"] == "lr-rewind"}


def norm_ratios(bench: ModelBench, alloc, score: str) -> dict[str, float]:
    """Per refitted layer: weight norm after the unscaled refit / the plain pruned weights' norm (what the
    rescale undoes)."""
    from autoprune.train.reconstruct import refit_pruned_layers

    evaluator = bench.scorer_for(score).evaluator
    plain = bench.problem(0.5).pruned_model(alloc)
    refit = bench.problem(0.5).pruned_model(alloc)
    reports = refit_pruned_layers(refit, evaluator.targets(), evaluator.ridge, keep_scale=False)
    p, r = dict(plain.named_modules()), dict(refit.named_modules())
    return {x.name: float(r[x.name].weight.detach().norm() / p[x.name].weight.detach().norm()) for x in reports}


def add_norm_ratios(record: dict, model: str) -> None:
    bench = None
    for row in record["rows"]:
        if row["model"] == model and "refit_norm_ratio" not in row:
            bench = bench or ModelBench(model, "auto")
            alloc, _, _, settings = bench.allocation_r2(row["target"], row["arm"], row["seed"])
            row["refit_norm_ratio"] = norm_ratios(bench, alloc, settings["score"])
            write_json_atomic(OUT, record, indent=1)


def run(model: str, target: float, arms: list[str], seed: int) -> dict:
    record = json.loads(OUT.read_text()) if OUT.exists() else {
        "command": "python -m bench.refit_start", "machine": machine(), "rows": []}
    done = {(r["model"], r["target"], r["arm"], r["seed"]) for r in record["rows"]}
    bench = None
    for arm in arms:
        if (model, target, arm, seed) in done:
            continue
        bench = bench or ModelBench(model, "auto")
        alloc, score_value, _, settings = bench.allocation_r2(target, arm, seed)
        scorer = bench.scorer_for(settings["score"])
        net = scorer.scored_model(alloc)  # refitted, rescaled, BN recalibrated
        untrained = accuracy(net, *bench.test)
        t0 = time.perf_counter()
        train(net, bench.ws.data, TrainRecipe(epochs=EPOCHS[model], lr=0.01, schedule="cosine"), seed=seed,
              progress=False, precision=bench.ws.precision)
        row = {"model": model, "target": target, "arm": arm, "seed": seed, "recipe": "lr-rewind",
               "epochs": EPOCHS[model], "start": "refit-rescaled", "score": settings["score"],
               "score_value": score_value, "score_value_now": scorer.value(alloc), "untrained_test_acc": untrained, "test_acc": accuracy(net, *bench.test),
               "earlier_starts": earlier_starts(model, target, arm, seed), "seconds": time.perf_counter() - t0,
               "torch_threads": torch.get_num_threads(), "precision": bench.ws.precision.name,
               "cpu": machine()["cpu"]}
        record["rows"].append(row)
        write_json_atomic(OUT, record, indent=1)
        e = row["earlier_starts"]
        print(f"{model}@{target:g} {arm} s{seed}: refit-rescaled {100 * row['test_acc']:.2f}% (refitted "
              f"{100 * e.get('refitted', float('nan')):.2f}%, plain {100 * e.get('recalibrated', float('nan')):.2f}%)",
              flush=True)
    add_norm_ratios(record, model)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(EPOCHS))
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--arms", nargs="+", default=["searched", "random", "sensitivity"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.model, args.target, args.arms, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
