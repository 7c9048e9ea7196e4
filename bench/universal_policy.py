"""One policy for any model and budget: train it, then measure it zero-shot and warm-started.

Parts (rows in ``bench/results/universal-policy.json``; each part is resumable):

- ``train``: ``autoprune search`` on ResNet-20 and ResNet-56 (JPEG-adapted checkpoints) at once,
  each episode's target drawn from 0.25-0.75 of MACs, relative reward, ``--action sensitivity`` (the
  default when the committed policy was trained; kept, so the command rebuilds that policy), DDPG,
  300 episodes (50 warm-up, the first four playing each model's sensitivity and uniform allocations),
  seed 0. The kept policy becomes
  ``bench/results/policies/universal.zip`` (with its ``episodes.csv`` logs and ``summary.json``);
  the run folder lives in the cache. A committed policy trained on an older observation layout
  is retrained, and the rows measured with it move to ``superseded``.
- ``zero-shot``: the policy rolled out with no search at 30/40/50/70% of MACs on ResNet-20 and
  ResNet-56 (adaptive-BN accuracy vs uniform, vs sensitivity analysis' allocation and vs the best
  of 30 random allocations, same held-out split; the policy reads the model's sensitivity sweep,
  measured once per model: ``sweep_evaluations``) and, for shape and budget only (random weights,
  no data: the sensitivity features read 1 and the actions centre on the even count), on
  ResNet-32, ResNet-110, tv:resnet18 and tv:mobilenet_v2: does every allocation meet its target within 1%?
- ``warm-start``: ResNet-20 and ResNet-56 at 30% and 50%, seeds 0-2: 30 episodes of DDPG started
  from the universal policy (no warm-up) vs random search with 30 samples, best adaptive-BN accuracy
  (the search reads the model's sensitivity sweep, measured once per model: ``sweep_evaluations``).

    python -m bench.universal_policy                 # all parts: the retrain on layout 2, then both tables
    python -m bench.universal_policy zero-shot       # one part

Time on layout 2, estimated from ``bench/agent_vs_sensitivity.py --smoke`` (one fp32 thread of this
2-core machine: 3.4-5.6 s CPU per ResNet-20 evaluation, ResNet-56 ~3x): ``train`` ~1.4 h (150
episodes per model, both sweeps, uniform references per target), ``zero-shot`` ~1.1 h, ``warm-start``
~2 h; ~4.5 h in all on an idle thread (it took ~40 min on layout 1, on 2 idle cores of a CPU with
native bf16).
"""
from __future__ import annotations

import json
import shutil
import sys
import time

import torch

from autoprune.agents.policy import PolicyAllocator
from autoprune.agents.rl.policy_io import policy_meta
from autoprune.agents.random_search import RandomSearch
from autoprune.agents.rl import RLSearch
from autoprune.cli.main import main as cli_main
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import Scorer
from autoprune.core.sensitivity import measure_sensitivity
from autoprune.core.structure import ModelStructure
from autoprune.envs import OBS_VERSION
from autoprune.models import create_model, model_info
from autoprune.runs import write_json_atomic
from autoprune.train.data import cache_dir
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine, run_parts

OUT = RESULTS / "universal-policy.json"
POLICY = RESULTS / "policies" / "universal.zip"
SCORED, SHAPE_ONLY = ("resnet20", "resnet56"), ("resnet32", "resnet110", "tv:resnet18", "tv:mobilenet_v2")
TARGETS, WARM_TARGETS, SEEDS = (0.3, 0.4, 0.5, 0.7), (0.3, 0.5), (0, 1, 2)
EPISODES, WARMUP, WARM_EPISODES, RANDOM_SAMPLES = 300, 50, 30, 30
ACTION = "sensitivity"  # the committed policy's actions (the default then): the train command rebuilds it


def load() -> dict:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"machine": machine(), "train": None, "zero_shot": [], "warm_start": []}


def save(record: dict) -> None:
    write_json_atomic(OUT, record, indent=1)


def train(record: dict) -> None:
    current = POLICY.exists() and policy_meta(POLICY).get("obs_version") == OBS_VERSION
    if record["train"] is not None and current:
        return
    if record["train"] is not None:  # trained on an older observation layout: keep its rows apart, retrain
        record.setdefault("superseded", []).append({
            "obs_version": record["train"].get("obs_version", 1), "train": record["train"],
            "zero_shot": record["zero_shot"], "warm_start": record["warm_start"]})
        record.update(train=None, zero_shot=[], warm_start=[])
        save(record)
    run = cache_dir() / f"universal-run-v{OBS_VERSION}"
    args = ["search", "--model", "resnet20", "--checkpoint", str(finetuned_checkpoint("resnet20")),
            "--more-models", f"resnet56={finetuned_checkpoint('resnet56')}", "--data", DATA, "--macs", "0.25:0.75",
            "--episodes", str(EPISODES), "--warmup-episodes", str(WARMUP), "--action", ACTION, "--seed", "0",
            "--output", str(run),
            "--finalists", "0"]  # the product here is the policy; the finalists stage only re-picks the best allocation
    t0 = time.perf_counter()
    if cli_main(args + (["--resume"] if (run / "checkpoints").exists() else [])) != 0:
        raise SystemExit("the universal policy's search failed: see above")
    POLICY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "policy.zip", POLICY)
    logs = RESULTS / "policies" / "universal-logs"  # summary.json and one episodes.csv per model
    for src in [run / "summary.json", *run.glob("*g/episodes.csv")]:
        dst = logs / src.relative_to(run)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    record["train"] = {"command": "autoprune " + " ".join(args).replace(str(cache_dir()), "$AUTOPRUNE_CACHE"),
                       "seconds_this_process": time.perf_counter() - t0, "policy": str(POLICY.relative_to(RESULTS)),
                       "obs_version": OBS_VERSION}
    save(record)


def _shape_structure(model: str) -> ModelStructure:
    torch.manual_seed(0)
    size = model_info(model).input_size
    return ModelStructure(create_model(model, 10).eval(), torch.randn(1, 3, size, size), num_classes=10)


def stamp(record: dict, part: str) -> None:
    """The command and machine of a part's latest run (the file's top-level ``machine`` is the first run's)."""
    record.setdefault("runs", {})[part] = {"command": f"python -m bench.universal_policy {part}", "machine": machine()}


def zero_shot(record: dict) -> None:
    stamp(record, "zero-shot")
    policy = PolicyAllocator(POLICY)
    done = {(r["model"], r["target"]) for r in record["zero_shot"]}
    for model in SCORED + SHAPE_ONLY:
        ws = scorer = table = None
        for target in TARGETS:
            if (model, target) in done:
                continue
            if model in SCORED:
                ws = ws or open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=2000, calib_size=1024)
                structure = ws.structure()
                problem = PruningProblem(structure, target, calib_batches=ws.data.calibration_batches(128))
                scorer = scorer or Scorer(problem, ws.evaluator())  # one cache per model: one sweep for every target
                table = table or measure_sensitivity(problem, scorer, model=model)
                policy.sensitivity = table
            else:
                structure = _shape_structure(model)
                problem = PruningProblem(structure, target)
                policy.sensitivity = None
            alloc = policy.allocate(problem, scorer if model in SCORED else None)
            row = {"model": model, "target": target, "cost_ratio": problem.cost(alloc.counts(structure)) / problem.dense_cost,
                   "meets_target": problem.feasible(alloc), "scored": model in SCORED}
            if model in SCORED:
                rand = RandomSearch(RANDOM_SAMPLES, seed=0).allocate(problem, scorer)
                row.update(policy=scorer.value(alloc), uniform=scorer.value(uniform_allocation(problem)),
                           sensitivity=scorer.value(table.allocation(problem)), sweep_evaluations=table.evaluations,
                           random_best=scorer.value(rand), random_samples=RANDOM_SAMPLES)
            record["zero_shot"].append(row)
            save(record)
            print(json.dumps(row), flush=True)


def warm_start(record: dict) -> None:
    stamp(record, "warm-start")
    done = {(r["model"], r["target"], r["seed"]) for r in record["warm_start"]}
    for model in SCORED:
        ws = table = None
        for target in WARM_TARGETS:
            for seed in SEEDS:
                if (model, target, seed) in done:
                    continue
                ws = ws or open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=2000, calib_size=1024)
                structure, calib = ws.structure(), ws.data.calibration_batches(128)

                problem = PruningProblem(structure, target, calib_batches=calib)
                table = table or measure_sensitivity(problem, Scorer(problem, ws.evaluator()), model=model)  # once
                t0 = time.perf_counter()  # no score cache shared between the two arms
                search = RLSearch(episodes=WARM_EPISODES, warmup_episodes=0, reward="relative", seed=seed,
                                  init_policy=str(POLICY), action=ACTION)
                warm = search.search(problem, Scorer(problem, ws.evaluator()), sensitivity=table)
                warm_seconds = time.perf_counter() - t0
                scorer = Scorer(problem, ws.evaluator())
                t0 = time.perf_counter()
                rand = scorer.value(RandomSearch(WARM_EPISODES, seed=seed).allocate(problem, scorer))
                row = {"model": model, "target": target, "seed": seed, "episodes": WARM_EPISODES,
                       "sweep_evaluations": table.evaluations,  # measured once per model, not in warm_seconds
                       "warm_started_best": warm.best.info["accuracy"], "random_best": rand,
                       "uniform": scorer.value(uniform_allocation(problem)), "warm_seconds": warm_seconds,
                       "random_seconds": time.perf_counter() - t0}
                record["warm_start"].append(row)
                save(record)
                print(json.dumps(row), flush=True)


PARTS = {"train": train, "zero-shot": zero_shot, "warm-start": warm_start}


def main(argv: list[str] | None = None) -> int:
    return run_parts(__doc__, PARTS, load, argv)


if __name__ == "__main__":
    sys.exit(main())
