"""The learned agent against EagleEye's random search at equal evaluations.

Grid: ResNet-20 and ResNet-56 (JPEG-adapted checkpoints) at 50% and 30% of MACs, seeds 0 1 2,
100 episodes per search (30 of them random warm-up for the RL agents), the search defaults
otherwise (1,024 calibration / 2,000 held-out images, default precision, relative actions).
Agents (the search defaults: self-imitation of the 3 best episodes, noise decay 0.98, the kept policy
fitted onto the best episode): DDPG, TD3, SAC; DDPG also with ``wall`` and ``absolute`` actions; and
``ddpg-plain``, DDPG without those three (the defaults before they were chosen on seeds 10-11,
``bench/rl_tuning.py``), to measure what they buy. Per cell, once:
``random_best`` (best of 100 random feasible allocations, same seed, same evaluator) and
``uniform``. Per agent: ``best`` (best allocation it evaluated), ``policy`` (the kept policy.zip rolled
out once, no search: fitted onto the best episode where ``policy_distilled``) and ``policy_noise_free``
(the best actor of the search's own noise-free episodes).

Rows go to ``bench/results/rl-vs-random.json`` as they finish (resumable: rerun the command);
``rl-vs-random.md`` has mean +- std over seeds and the goals (best >= random + 0.5, policy within
0.5 of random best).

    python -m bench.rl_vs_random                        # the whole grid (~11 h on one thread: a ResNet-20
                                                        # cell, random + 6 agents, ~29 min; ResNet-56 ~3x)
    python -m bench.rl_vs_random --models resnet20      # one model
    python -m bench.rl_vs_random --models resnet20 --targets 0.3 --seeds 0   # one cell (rows are the same)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch

from autoprune.agents.policy import PolicyAllocator
from autoprune.agents.random_search import RandomSearch
from autoprune.agents.rl import RLSearch
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import Scorer
from autoprune.runs import write_json_atomic
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine
from .common import agents_to_run
from .common import percent_mean_std as ms

OUT = RESULTS / "rl-vs-random.json"
MODELS, TARGETS, SEEDS = ("resnet20", "resnet56"), (0.5, 0.3), (0, 1, 2)
AGENTS = (("ddpg", "relative"), ("td3", "relative"), ("sac", "relative"), ("ddpg", "wall"), ("ddpg", "absolute"),
          ("ddpg-plain", "relative"))
# agent labels that are an algorithm with other settings than the search defaults
VARIANTS = {"ddpg-plain": ("ddpg", {"imitation": 0.0, "noise_decay": 0.95, "distil_best": False})}
EPISODES, WARMUP = 100, 30


def load(command: str) -> dict:
    import json

    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"command": command, "machine": machine(), "episodes": EPISODES, "warmup_episodes": WARMUP,
            "cells": [], "rows": []}


def cell(record: dict, problem: PruningProblem, scorer: Scorer, model: str, target: float, seed: int) -> dict:
    """Random search's best and uniform's score for (model, target, seed), computed once."""
    for c in record["cells"]:
        if (c["model"], c["target"], c["seed"]) == (model, target, seed):
            return c
    t0 = time.perf_counter()
    best = scorer.value(RandomSearch(EPISODES, seed).allocate(problem, scorer))
    c = {"model": model, "target": target, "seed": seed, "random_best": best, "random_seconds": time.perf_counter() - t0,
         "uniform": scorer.value(uniform_allocation(problem))}
    record["cells"].append(c)
    return c


def run(record: dict, models: list[str], agents: list[tuple[str, str]], targets: tuple[float, ...] = TARGETS,
        seeds: tuple[int, ...] = SEEDS) -> None:
    for model in models:
        ws = structure = calib = None
        for target in targets:
            for seed in seeds:
                todo = agents_to_run(record["rows"], model, target, seed, agents)
                if not todo:
                    continue
                if ws is None:
                    ws = open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=2000, calib_size=1024)
                    structure, calib = ws.structure(), ws.data.calibration_batches(128)
                problem = PruningProblem(structure, target, calib_batches=calib)
                ref = cell(record, problem, Scorer(problem, ws.evaluator()), model, target, seed)
                write_json_atomic(OUT, record, indent=1)
                for agent, action in todo:
                    scorer = Scorer(problem, ws.evaluator())  # a fresh cache per search: equal evaluation counts
                    t0 = time.perf_counter()
                    with tempfile.TemporaryDirectory() as run_dir:
                        algo, settings = VARIANTS.get(agent, (agent, {}))
                        search = RLSearch(algo=algo, action=action, episodes=EPISODES, warmup_episodes=WARMUP,
                                          seed=seed, **settings)
                        result = search.search(problem, scorer, run_dir)
                        seconds = time.perf_counter() - t0
                        policy = scorer.value(PolicyAllocator(result.policy_path).allocate(problem, scorer))
                        searched = result.policy_path.with_name("noise_free_policy.zip")  # kept beside a distilled one
                        noise_free = (scorer.value(PolicyAllocator(searched).allocate(problem, scorer)) if searched.exists()
                                      else policy)
                    row = {"model": model, "target": target, "seed": seed, "episodes": EPISODES, "agent": agent,
                           "action": action, "best": result.best.info["accuracy"], "random_best": ref["random_best"],
                           "uniform": ref["uniform"], "policy": policy, "policy_episode": result.policy_episode,
                           "policy_distilled": result.policy_distilled, "policy_noise_free": noise_free,
                           "config": asdict(search.config),
                           "seconds": seconds, "precision": ws.precision.name,
                           "torch_threads": torch.get_num_threads()}
                    record["rows"].append(row)
                    write_json_atomic(OUT, record, indent=1)
                    (OUT.with_suffix(".md")).write_text(report(record))
                    print(f"{model} @{target:g} seed {seed} {agent}/{action}: best {100 * row['best']:.2f} random "
                          f"{100 * row['random_best']:.2f} policy {100 * policy:.2f} uniform {100 * row['uniform']:.2f} "
                          f"({seconds:.0f} s)", flush=True)


def report(record: dict) -> str:
    lines = ["# Learned agent vs random search at equal evaluations", "",
             f"`{record['command']}` -- {record['episodes']} episodes per search ({record['warmup_episodes']} "
             "random warm-up for the RL agents), adaptive-BN accuracy (%) on 2,000 held-out training images; "
             "mean ± std over seeds. Goals: best − random ≥ +0.5, policy − random ≥ −0.5. `policy` is the kept "
             "policy.zip (fitted onto the best episode where `distilled` says so), `noise-free actor` the best actor "
             "the search's own noise-free episodes played.", "",
             "| model | MACs | agent | action | seeds | best | random best | best − random | policy | "
             "policy − random | distilled | noise-free actor | uniform |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    keys = sorted({(r["model"], r["target"], r["agent"], r["action"]) for r in record["rows"]},
                  key=lambda k: (k[0], -k[1], k[2], k[3]))
    for model, target, agent, action in keys:
        rs = sorted((r for r in record["rows"]
                     if (r["model"], r["target"], r["agent"], r["action"]) == (model, target, agent, action)),
                    key=lambda r: r["seed"])  # rows of one cell may have been run by two processes, in any order
        best, rand = [r["best"] for r in rs], [r["random_best"] for r in rs]
        pol = [r["policy"] for r in rs]
        distilled = sum(bool(r.get("policy_distilled")) for r in rs)
        lines.append(f"| {model} | {100 * target:g}% | {agent} | {action} | {','.join(str(r['seed']) for r in rs)} | "
                     f"{ms(best)} | {ms(rand)} | {ms(np.subtract(best, rand))} | {ms(pol)} | "
                     f"{ms(np.subtract(pol, rand))} | {distilled} of {len(rs)} | "
                     f"{ms([r.get('policy_noise_free', r['policy']) for r in rs])} | {ms([r['uniform'] for r in rs])} |")
    planned = len(MODELS) * len(TARGETS) * len(SEEDS) * len(AGENTS)
    lines += ["", f"{len(record['rows'])} of {planned} planned rows."]
    if record.get("superseded_rows"):
        lines += [f"{len(record['superseded_rows'])} superseded rows kept in the JSON: {record['superseded_note']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--agents", nargs="+", default=[f"{a}/{act}" for a, act in AGENTS], help="AGENT/ACTION")
    p.add_argument("--targets", nargs="+", type=float, default=list(TARGETS), help="a part of the grid, in this order")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = p.parse_args(argv)
    record = load("python -m bench.rl_vs_random")
    run(record, args.models, [tuple(a.split("/")) for a in args.agents], tuple(args.targets), tuple(args.seeds))
    OUT.with_suffix(".md").write_text(report(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
