"""Learned allocation (DDPG) vs uniform vs EagleEye's random search, same evaluator, several seeds.

For each case (model, MACs target) and seed: the best adaptive-BN accuracy found by the RL agent
in N episodes, the score of its kept policy's noise-free rollout (and of the final actor's), the
best of N random feasible allocations, and the uniform allocation; time per episode and the share
spent in the evaluator's forward passes. Then the transfer check: each seed's ResNet-20 policy
rolled out on ResNet-56 (adaptive-BN accuracy vs uniform) and on torchvision resnet18 (meets the
target).

    python -m bench.search --quick      # ResNet-20 50%, 1 seed, 30 episodes: ~5-10 min on 2 idle cores
    python -m bench.search              # full: see --help; hours (ResNet-56 dominates)

Prints one JSON document and writes it to bench/results/search[-quick].json.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.agents.policy import PolicyAllocator
from autoprune.agents.random_search import RandomSearch
from autoprune.agents.rl import RLConfig, RLSearch
from autoprune.agents.uniform import UniformAllocator
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.core.structure import ModelStructure
from autoprune.models import create_model
from autoprune.workspace import open_workspace

from .base_models import CHECKPOINTS, DATA, finetuned_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "values": a.tolist()}


def _checkpoint(model: str, source: str) -> str | None:
    if source == "finetuned":
        return str(finetuned_checkpoint(model))
    if source == "shared":
        return str(CHECKPOINTS[model])
    return None


def run_case(model: str, target: float, seeds: list[int], episodes: int, warmup: int, args, run_root: Path) -> dict:
    ws = open_workspace(model, _checkpoint(model, args.checkpoints), args.data, val_size=args.val_size,
                        calib_size=args.calib_size, seed=0)
    structure = ws.structure()
    calib = ws.data.calibration_batches(128)
    per_seed = []
    for seed in seeds:
        evaluator = ws.evaluator()
        problem = PruningProblem(structure, target, calib_batches=calib)
        scorer = Scorer(problem, evaluator)
        uniform_acc = scorer.value(UniformAllocator().allocate(problem))
        run_dir = run_root / f"{model}-m{target:g}-s{seed}"
        rl = RLSearch(RLConfig(episodes=episodes, warmup_episodes=warmup, seed=seed, checkpoint_every=25,
                               action=args.action))
        res = rl.search(problem, scorer, run_dir, resume=args.resume, progress=args.progress)
        seconds, eval_seconds = res.seconds, res.eval_seconds
        t0 = time.perf_counter()
        rand_best = scorer.value(RandomSearch(samples=episodes, seed=seed).allocate(problem, scorer))
        rand_seconds = time.perf_counter() - t0
        cost = problem.cost(res.allocation.counts(structure)) / problem.dense_cost
        final_policy = scorer.value(PolicyAllocator(run_dir / "final_policy.zip").allocate(problem, scorer))
        per_seed.append({"seed": seed, "learned": res.best.info["accuracy"], "random": rand_best,
                         "uniform": uniform_acc, "policy": res.policy_score, "policy_episode": res.policy_episode,
                         "policy_path": str(res.policy_path),
                         "final_policy": final_policy, "learned_cost_ratio": cost, "best_episode": res.best.episode,
                         "seconds_per_episode": seconds / max(1, episodes),
                         "evaluator_share": eval_seconds / seconds if seconds else None,
                         "random_seconds": rand_seconds})
        print(json.dumps({"case": f"{model}@{target}", **per_seed[-1]}), file=sys.stderr, flush=True)
    keys = ("learned", "random", "uniform", "policy", "final_policy", "seconds_per_episode", "evaluator_share")
    summary = {k: _stats([s[k] for s in per_seed]) for k in keys}
    summary["learned_minus_uniform"] = _stats([s["learned"] - s["uniform"] for s in per_seed])
    summary["learned_minus_random"] = _stats([s["learned"] - s["random"] for s in per_seed])
    summary["policy_minus_uniform"] = _stats([s["policy"] - s["uniform"] for s in per_seed])
    return {"model": model, "target": target, "episodes": episodes, "warmup_episodes": warmup,
            "dense_macs": structure.dense_macs, "summary": summary, "seeds": per_seed}


def transfer(policies: list[Path], args) -> dict:
    """Roll each ResNet-20 policy out on ResNet-56 (scored) and torchvision resnet18 (budget only)."""
    allocators = [PolicyAllocator(p) for p in policies]
    out: dict = {"policies": [str(p) for p in policies]}
    ws = open_workspace("resnet56", _checkpoint("resnet56", args.checkpoints), args.data, val_size=args.val_size,
                        calib_size=args.calib_size, seed=0)
    structure = ws.structure()
    calib = ws.data.calibration_batches(128)
    for target in args.transfer_targets:
        problem = PruningProblem(structure, target, calib_batches=calib)
        scorer = Scorer(problem, ws.evaluator())
        uniform_acc = scorer.value(UniformAllocator().allocate(problem))
        rows = []
        for allocator in allocators:
            alloc = allocator.allocate(problem, scorer)  # reads the sensitivity, measured once
            rows.append({"cost_ratio": problem.cost(alloc.counts(structure)) / problem.dense_cost,
                         "meets_target": problem.feasible(alloc), "policy_acc": scorer.value(alloc)})
        out[f"resnet56@{target:g}"] = {"uniform_acc": uniform_acc, "policy_acc": _stats([r["policy_acc"] for r in rows]),
                                       "policy_minus_uniform": _stats([r["policy_acc"] - uniform_acc for r in rows]),
                                       "per_policy": rows}
    torch.manual_seed(0)
    tv = ModelStructure(create_model("tv:resnet18", 10).eval(), torch.randn(1, 3, 32, 32), num_classes=10)
    for target in args.transfer_targets:
        problem = PruningProblem(tv, target)
        rows = []
        for allocator in allocators:
            alloc = allocator.allocate(problem)
            rows.append({"cost_ratio": problem.cost(alloc.counts(tv)) / problem.dense_cost,
                         "meets_target": problem.feasible(alloc)})
        out[f"tv:resnet18@{target:g}"] = rows
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-20 50%%, 1 seed, 30 episodes (10 warm-up)")
    p.add_argument("--cases", nargs="+", default=None, help="model@target, e.g. resnet20@0.5 resnet56@0.3")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--episodes", type=int, nargs="+", default=None, help="per case (one value = all cases)")
    p.add_argument("--warmup", type=int, nargs="+", default=None, help="warm-up episodes per case")
    p.add_argument("--action", choices=("absolute", "relative"), default=RLConfig.action,
                   help="the env's action mode (see autoprune.envs)")
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--calib-size", type=int, default=1024)
    p.add_argument("--data", default=DATA)
    p.add_argument("--checkpoints", choices=("finetuned", "shared", "none"), default="finetuned",
                   help="dense models: JPEG-fine-tuned (bench.base_models), the shared originals, or random init")
    p.add_argument("--transfer-targets", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--no-transfer", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue interrupted RL runs under the results folder")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        cases = args.cases or ["resnet20@0.5"]
        seeds, episodes, warmup = args.seeds or [0], args.episodes or [30], args.warmup or [10]
    else:
        cases = args.cases or ["resnet20@0.5", "resnet56@0.5", "resnet56@0.3"]
        seeds = args.seeds or [0, 1, 2]
        episodes, warmup = args.episodes or [300, 200, 200], args.warmup or [100, 60, 60]
    if len(episodes) == 1:
        episodes = episodes * len(cases)
    if len(warmup) == 1:
        warmup = warmup * len(cases)
    name = "search-quick" if args.quick else "search"
    output = args.output or RESULTS / f"{name}.json"
    run_root = output.parent / f"{output.stem}-runs"
    t0 = time.perf_counter()
    results = []
    for case, n, w in zip(cases, episodes, warmup):
        model, target = case.split("@")
        results.append(run_case(model, float(target), seeds, n, w, args, run_root))
    doc: dict = {"command": "python -m bench.search " + shlex.join(argv if argv is not None else sys.argv[1:]),
                 "settings": {"val_size": args.val_size, "calib_size": args.calib_size, "data": args.data,
                              "checkpoints": args.checkpoints, "seeds": seeds, "criterion": "l1",
                              "agent": f"ddpg (AMC defaults, {args.action} actions, {RLConfig.credit} credit)", "threads": torch.get_num_threads(),
                              "machine": platform.processor() or platform.machine()},
                 "cases": results}
    r20 = [r for r in results if r["model"] == "resnet20"]
    if r20 and not args.no_transfer:
        doc["transfer"] = transfer([Path(s["policy_path"]) for s in r20[0]["seeds"]], args)
    doc["seconds"] = time.perf_counter() - t0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
