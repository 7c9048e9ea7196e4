"""Learned vs heuristic budgets after fine-tuning, and the nine criteria, on ResNet-20 (JPEG CIFAR-10).

``allocators``: ``autoprune compare`` on the JPEG-fine-tuned ResNet-20 (``bench.base_models``) at 50%
and 30% of MACs with uniform, global, sensitivity, layer-stats, random, greedy and (given
``--policy PATH`` from ``autoprune search``) the learned policy; 3 seeds; L1 criterion; LR-rewind
fine-tuning on a training subset (the CPU-affordable budget is written into the report).

``criteria``: uniform allocation at 50% MACs, adaptive-BN accuracy of each of the nine criteria;
each seed draws its own calibration images from the training split (used by the data-dependent
criteria and by the BN recalibration alike).

    python -m bench.compare criteria                          # ~5-10 min on 2 idle cores
    python -m bench.compare allocators --policy runs/search/policy.zip   # ~1.5-2.5 h on 2 idle cores
    python -m bench.compare --quick [--policy PATH]           # both, 50% only, 1 seed, light: ~3 min
    python -m bench.compare --smoke --output /tmp/cmp-smoke   # wiring check only (~10 min on busy cores)

Both print one JSON document (with the command to rerun) and write it under bench/results/;
both resume from their results file when rerun with the same settings.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from autoprune.agents.uniform import UniformAllocator
from autoprune.cli.main import main as cli_main
from autoprune.core.criteria import group_scores
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import prune
from autoprune.experiments.report import summarize
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import AdaptiveBNEvaluator
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import machine

RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ["l1", "l2", "fpgm", "bn", "apoz", "activation-mean", "activation-std", "hrank", "taylor"]


def _command() -> str:
    return " ".join(["python -m bench.compare", *map(shlex.quote, sys.argv[1:])])


# -- allocators ------------------------------------------------------------------------------
def allocator_argv(args) -> list[str]:
    allocators = ["uniform", "global", f"sensitivity@rates=[{args.sensitivity_rates}]", "layer-stats",
                  f"random@samples={args.random_samples}", f"greedy@step={args.greedy_step}"]
    if args.policy:
        allocators.append(f"policy:{args.policy}")
    return ["compare", "--model", "resnet20", "--checkpoint", str(finetuned_checkpoint("resnet20")),
            "--data", args.data, "--output", str(args.run_dir), "--targets", *map(str, args.targets),
            "--criterion", args.criterion, "--allocators", *allocators, "--seeds", *map(str, args.seeds),
            "--recipes", *args.recipes, "--epochs", str(args.epochs), "--rewind-lr", str(args.rewind_lr), "--train-subset", str(args.train_subset),
            "--val-size", str(args.val_size), "--calib-size", str(args.calib_size), "--device", "cpu",
            "--finalists", "0"]  # the protocol its recorded tables ran with (before the stage was on by default)


def run_allocators(args) -> dict:
    argv = allocator_argv(args)
    t0 = time.perf_counter()
    code = cli_main(argv)
    if code != 0:
        raise SystemExit(code)
    record = json.loads((args.run_dir / "results.json").read_text())
    summary = summarize(record["rows"])
    return {"suite": "compare-allocators", "command": _command(), "autoprune_command": "autoprune " + shlex.join(argv),
            "finetune_budget": f"{args.epochs:g} epoch(s) of {', '.join(args.recipes)} (rewind lr {args.rewind_lr:g}) "
                               f"on {args.train_subset} training images, batch 128",
            "dense": record["dense"], "summary": summary, "seconds": time.perf_counter() - t0,
            "machine": machine(), "run_dir": str(args.run_dir)}


# -- criteria --------------------------------------------------------------------------------
def draw_calibration(data: DataBundle, n: int, seed: int, batch_size: int = 128) -> list[torch.Tensor]:
    """``n`` images drawn at random (by ``seed``) from the training split, normalised, in batches."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:n]
    return list(data.normalize(data.train.images[idx]).split(batch_size))


def run_criteria(args) -> dict:
    out = args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    settings = {"target": args.target, "seeds": args.seeds, "calib_size": args.calib_size, "val_size": args.val_size,
                "criteria": args.criteria, "data": args.data}
    record = json.loads(path.read_text()) if path.exists() else {"settings": settings, "rows": []}
    if record["settings"] != settings:
        raise SystemExit(f"{path} holds a run with other settings: pass another --output")
    done = {(r["method"], r["seed"]) for r in record["rows"]}
    ws = open_workspace("resnet20", str(finetuned_checkpoint("resnet20")), args.data, val_size=args.val_size,
                        calib_size=args.calib_size, seed=0)
    val_x, val_y = ws.data.tensors("val")
    t0 = time.perf_counter()
    for seed in args.seeds:
        calib = draw_calibration(ws.data, args.calib_size, seed)
        evaluator = AdaptiveBNEvaluator(calib, val_x, val_y)
        structure = ws.structure()  # fresh score cache: data-dependent scores follow this seed's draw
        alloc = UniformAllocator().allocate(PruningProblem(structure, args.target, calib_batches=calib))
        for name in args.criteria:
            if (name, seed) in done:
                continue
            t = time.perf_counter()
            group_scores(structure, name, calib)
            score_seconds = time.perf_counter() - t
            acc = evaluator(prune(structure, alloc, name, calib))
            record["rows"].append({"method": name, "seed": seed, "target": args.target, "recipe": "adaptive-BN",
                                   "abn_acc": acc, "macs_ratio": alloc.macs(structure) / structure.dense_macs,
                                   "params_ratio": alloc.params(structure) / structure.dense_params,
                                   "score_seconds": score_seconds, "wall_seconds": time.perf_counter() - t})
            path.write_text(json.dumps(record, indent=1))
            print(f"seed {seed} {name:<16} adaptive-BN {100 * acc:.2f}%", flush=True)
    summary = summarize(record["rows"], keys=("method",), metrics=("abn_acc", "macs_ratio", "score_seconds"))
    summary.sort(key=lambda e: -e["abn_acc"][0])
    lines = [f"# Criteria at {100 * args.target:g}% MACs, uniform allocation, ResNet-20 (JPEG CIFAR-10)", "",
             f"Adaptive-BN top-1 on {args.val_size} held-out training images after recalibrating BN on "
             f"{args.calib_size} training images drawn per seed; seeds {args.seeds}. Command: `{_command()}`", "",
             "| criterion | adaptive-BN acc % (mean ± std) | seeds | scoring s |", "|---|---|---|---|"]
    for e in summary:
        m, s, n = e["abn_acc"]
        lines.append(f"| {e['method']} | {100 * m:.2f} ± {100 * s:.2f} | {n} | {e['score_seconds'][0]:.1f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"suite": "compare-criteria", "command": _command(), "summary": summary,
            "seconds": time.perf_counter() - t0, "machine": machine(), "run_dir": str(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="*", choices=["criteria", "allocators", []], default=[],
                   help="criteria, allocators (default: both)")
    p.add_argument("--policy", help="policy file from autoprune search (adds the learned policy to 'allocators')")
    p.add_argument("--output", type=Path, default=RESULTS, help="folder for the run directories")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3], help="allocators: MACs targets")
    p.add_argument("--target", type=float, default=0.5, help="criteria: MACs target")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=["lr-rewind"])
    p.add_argument("--epochs", type=float, default=1.0)
    # rewinding replays the dense model's own last schedule: bench.base_models fine-tuned it with cosine from 0.01
    p.add_argument("--rewind-lr", type=float, default=0.01)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--criterion", default="l1", help="allocators: channel criterion")
    p.add_argument("--criteria", nargs="+", default=CRITERIA)
    p.add_argument("--random-samples", type=int, default=30)
    p.add_argument("--greedy-step", type=float, default=0.08)
    p.add_argument("--sensitivity-rates", default="0.8,0.6,0.4")
    p.add_argument("--data", default=DATA)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--calib-size", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="50%% only, 1 seed, 1k/512 val/calib images, light searches, 0.25-epoch fine-tune on 2k images (~3 min)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks the wiring, measures nothing")
    args = p.parse_args()
    suffix = "-smoke" if args.smoke else "-quick" if args.quick else ""
    if args.quick:
        args.targets, args.seeds, args.train_subset, args.epochs = [0.5], args.seeds[:1], 2000, 0.25
        args.val_size, args.calib_size = 1000, 512
        args.random_samples, args.greedy_step, args.sensitivity_rates = 5, 0.25, "0.5"
    if args.smoke:
        args.val_size, args.calib_size, args.seeds, args.targets = 500, 256, args.seeds[:1], [0.5]
        args.train_subset, args.epochs = 512, 0.25
        args.random_samples, args.greedy_step, args.sensitivity_rates = 2, 0.25, "0.5"
    for suite in args.suites or ["criteria", "allocators"]:
        if suite == "allocators" and not args.policy:
            print("note: no --policy given, the learned policy is left out of the comparison", file=sys.stderr)
        run_dir = args.output / (f"{'compare' if suite == 'allocators' else 'criteria'}_resnet20{suffix}")
        args.run_dir = run_dir
        doc = run_allocators(args) if suite == "allocators" else run_criteria(args)
        text = json.dumps(doc, indent=2, default=str)
        (Path(doc["run_dir"]) / f"{doc['suite']}.json").write_text(text + "\n")
        if not args.smoke:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{doc['suite']}{suffix}.json").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
