"""RL search settings tried on seeds outside ``bench.rl_vs_random``'s grid (0-2), so that what is
tuned here is judged there on other seeds.

Same protocol as ``bench.rl_vs_random`` (JPEG-adapted checkpoint, 2,000 held-out / 1,024 calibration
images, 100 episodes of which 30 random warm-up), one cell per run: random search's best of 100, then
each setting's best explored allocation and its kept noise-free policy (adaptive-BN accuracy).
Rows go to ``bench/results/rl-tuning.json`` (resumable: settings already run for a seed are skipped).

    python -m bench.rl_tuning --model resnet20 --target 0.3 --seeds 10 11 --settings '{}' '{"algo": "td3"}'
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time

import torch

from autoprune.agents.policy import PolicyAllocator
from autoprune.agents.random_search import RandomSearch
from autoprune.agents.rl import RLSearch
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.runs import write_json_atomic
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine
from .rl_vs_random import EPISODES, WARMUP

OUT = RESULTS / "rl-tuning.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--target", type=float, default=0.3)
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    p.add_argument("--settings", nargs="+", default=["{}"],
                   help="RLSearch overrides as JSON, e.g. '{\"algo\": \"td3\"}'")
    args = p.parse_args(argv)
    record = json.loads(OUT.read_text()) if OUT.exists() else {"machine": machine(), "episodes": EPISODES,
                                                                "warmup_episodes": WARMUP, "cells": [], "rows": []}
    record.setdefault("commands", []).append("python -m bench.rl_tuning " + shlex.join(argv or sys.argv[1:]))
    ws = open_workspace(args.model, str(finetuned_checkpoint(args.model)), DATA, val_size=2000, calib_size=1024)
    structure, calib = ws.structure(), ws.data.calibration_batches(128)

    def problem() -> tuple[PruningProblem, Scorer]:  # a fresh score cache per search: equal evaluation counts
        prob = PruningProblem(structure, args.target, calib_batches=calib)
        return prob, Scorer(prob, ws.evaluator())

    for seed in args.seeds:
        key = {"model": args.model, "target": args.target, "seed": seed}
        if not any(all(c[k] == v for k, v in key.items()) for c in record["cells"]):
            (prob, scorer), t0 = problem(), time.perf_counter()
            best = scorer.value(RandomSearch(EPISODES, seed).allocate(prob, scorer))  # the winner's score is cached
            record["cells"].append({**key, "random_best": best, "seconds": time.perf_counter() - t0})
            write_json_atomic(OUT, record, indent=1)
        for text in args.settings:
            setting = json.loads(text)
            if any(all(r[k] == v for k, v in key.items()) and r["setting"] == setting for r in record["rows"]):
                continue
            (prob, scorer), t0 = problem(), time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                result = RLSearch(episodes=EPISODES, warmup_episodes=WARMUP, seed=seed, **setting).search(
                    prob, scorer, run_dir)
                policy = scorer.value(PolicyAllocator(result.policy_path).allocate(prob, scorer))
                searched = result.policy_path.with_name("noise_free_policy.zip")  # kept beside a distilled policy
                noise_free = scorer.value(PolicyAllocator(searched).allocate(prob, scorer)) if searched.exists() else policy
            row = {**key, "setting": setting, "best": result.best.info["accuracy"], "policy": policy,
                   "policy_distilled": result.policy_distilled, "policy_noise_free": noise_free,
                   "best_episode": result.best.episode, "seconds": time.perf_counter() - t0,
                   "torch_threads": torch.get_num_threads()}
            record["rows"].append(row)
            write_json_atomic(OUT, record, indent=1)
            print(f"{args.model} @{args.target:g} seed {seed} {setting}: best {100 * row['best']:.2f} "
                  f"(episode {row['best_episode']}) policy {100 * policy:.2f} "
                  f"(noise-free actor {100 * noise_free:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
