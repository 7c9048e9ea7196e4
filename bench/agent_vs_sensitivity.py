"""The default agent (sensitivity in the observation, heuristic warm start) vs random search vs sensitivity.

Grid: ResNet-20 and ResNet-56 (JPEG-adapted checkpoints) at 30% and 50% of MACs, seeds 0 1 2, the
search defaults otherwise (1,024 calibration / 2,000 held-out images, the default score
``reconstruct:loss``, default precision). Every arm's allocation is also scored by its preparation's
top-1 (``reconstruct``: the same refitted model's held-out accuracy), and the goals are checked in
those points, so they keep their meaning for a loss score. Every arm gets the same number of evaluations, ``--evaluations`` (200):

- ``sensitivity``: sensitivity analysis' allocation as is, from one sweep per model (dense + 4 keep
  ratios per group: 37 scores on ResNet-20, 109 on ResNet-56), measured once and kept in the JSON;
- ``random_best``: the best of 200 random feasible allocations (the row's seed);
- the agent: the sweep counts against its budget, so it plays 200 - sweep episodes (163 / 91), the
  first two being the sensitivity and uniform allocations, 30 warm-up episodes in all. ``best`` is
  the best allocation it scored, ``policy`` its kept policy.zip rolled out once, no search.

Agents: DDPG with ``--action relative`` (the default, listed first), ``sensitivity`` and ``wall``. All three
ran on ResNet-20 and on ResNet-56 at 30% seed 0, with ``sensitivity`` the default then; ``relative`` was
best on every one of those cells and became the default, and the rest of ResNet-56 runs it alone
(``--agents ddpg/relative``).
Rows (``model, target, seed, agent, action, best, random_best, sensitivity, policy, uniform``, ...)
go to ``bench/results/agent-vs-sensitivity.json`` as they finish (resumable: rerun the command; the
sweep is saved once measured, and a killed random search or agent search continues from its last
checkpoint in ``--work``, its earlier sessions' seconds counted in the row);
``agent-vs-sensitivity.md`` has mean ± std per cell and the goal check, win or lose: the agent's
best >= max(sensitivity, random best) + 0.5 on the cell means, its kept policy within 0.5 of its best.

    python -m bench.agent_vs_sensitivity                                   # the default agent's grid
    python -m bench.agent_vs_sensitivity --models resnet20 --agents ddpg/relative ddpg/sensitivity ddpg/wall
    python -m bench.agent_vs_sensitivity --models resnet20 --targets 0.3 --seeds 0 --agents ddpg/sensitivity
    python -m bench.agent_vs_sensitivity --agent-episodes 200              # at the default search's budget

``--agent-episodes N`` sets the budget the other way round, as ``autoprune search`` spends it: the agent plays
N episodes after the sweep (``--warmup-episodes``, default the search's 50), and random search gets as many
evaluations as the agent's sweep plus its N episodes (N + 37 on ResNet-20, N + 109 on ResNet-56). With
N = 200 that is the default search, as ``final_quality`` runs it; rows go to
``agent-vs-sensitivity-<N>-episodes.json``.

Time, from the smoke run (``--smoke``: ResNet-20 at 30%, the sweep, 45 random samples, 8 episodes;
one fp32 thread of this AVX2-only 2-core machine while two other benchmarks and a test run shared
it: 728 s wall, 398 s CPU): the sweep's near-dense candidates cost 5.6 s CPU each (37 in 207 s),
candidates at the target 3.4 s (random search: 45 in 152 s); ResNet-56 ~3x. On one idle thread
(CPU time; this load stretched wall time 1.8x):

- a ResNet-20 agent row (163 episodes): ~10 min; a ResNet-56 row (91 episodes): ~17 min;
- per cell, random search's 200 samples: ~12 min (ResNet-20), ~37 min (ResNet-56);
- per model, the sweep: ~3.5 min (ResNet-20), ~31 min (ResNet-56);
- the grid, 3 agents x 12 cells + 12 random searches: ~13.5 h; the default agent alone
  (``--agents`` left out): ~8 h. Two processes on disjoint ``--models`` can share the file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from autoprune.agents.policy import PolicyAllocator
from autoprune.agents.random_search import RandomSearch
from autoprune.agents.rl import RLSearch
from autoprune.agents.rl.config import RLConfig
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import Scorer
from autoprune.core.sensitivity import SensitivityTable, measure_sensitivity
from autoprune.train.data import cache_dir
from autoprune.train.scores import DEFAULT_SCORE, parse_score

from .common import RESULTS, machine, save_merged
from .common import agents_to_run
from .common import percent_mean_std as ms

OUT = RESULTS / "agent-vs-sensitivity.json"
MODELS, TARGETS, SEEDS = ("resnet20", "resnet56"), (0.3, 0.5), (0, 1, 2)
AGENTS = (("ddpg", "relative"), ("ddpg", "sensitivity"), ("ddpg", "wall"))  # the default first
EVALUATIONS, WARMUP, VAL, CALIB = 200, 30, 2000, 1024
GOAL, POLICY_GAP = 0.005, 0.005  # best >= max(sensitivity, random) + 0.5 points; policy within 0.5 of best


def load(path: Path, command: str, evaluations: int | None, agent_episodes: int | None = None,
         warmup: int = WARMUP) -> dict:
    """The grid's record; its budget is either ``evaluations`` per arm (the agent's include the sweep) or
    ``agent_episodes`` after the sweep (random search: the sweep's count more)."""
    budget = {"evaluations": evaluations, "agent_episodes": agent_episodes, "warmup_episodes": warmup}
    if path.exists():
        record = json.loads(path.read_text())
        held = {k: record.get(k) for k in budget}
        if held != budget:
            held_text = ", ".join(f"{k} {v}" for k, v in held.items())
            raise SystemExit(f"{path} holds a grid at another budget ({held_text}): pass those options or "
                             "another --out")
        return record
    return {"command": command, "machine": machine(), **budget,
            "score": DEFAULT_SCORE, "top1": top1_of(DEFAULT_SCORE), "tables": {}, "cells": [], "rows": []}


def budget_of(record: dict, sweep: int) -> tuple[int, int]:
    """(random search's evaluations, the agent's episodes) for a model whose sweep costs ``sweep`` scores."""
    if record.get("agent_episodes"):
        return record["agent_episodes"] + sweep, record["agent_episodes"]
    return record["evaluations"], record["evaluations"] - sweep


def top1_of(score: str) -> str:
    """The top-1 score of ``score``'s preparation (``reconstruct:loss`` -> ``reconstruct``): what goals are
    checked in."""
    spec = parse_score(score)
    return spec.preparation + (f":{spec.steps}" if spec.steps else "")


def both(scorer: Scorer, top1_scorer: Scorer, alloc) -> tuple[float, float]:
    """An allocation's search score and its top-1."""
    return scorer.value(alloc), top1_scorer.value(alloc)


def save(record: dict, out: Path) -> None:
    """Write the record, first taking in rows another process added to the file meanwhile (two processes
    on disjoint --models or --seeds can share one file)."""
    save_merged(out, record, {"rows": lambda r: (r["model"], r["target"], r["seed"], r["agent"], r["action"]),
                              "cells": lambda c: (c["model"], c["target"], c["seed"]), "tables": None})
    out.with_suffix(".md").write_text(report(record))


def table_of(record: dict, model: str, problem: PruningProblem, scorer: Scorer) -> SensitivityTable:
    """The model's sweep, measured once (its evaluations and seconds are charged to every agent row)."""
    if model not in record["tables"]:
        cpu = time.process_time()
        table = measure_sensitivity(problem, scorer, model=model)
        record["tables"][model] = {**table.to_dict(), "cpu_seconds": time.process_time() - cpu}
        print(f"{model}: sensitivity sweep, {table.evaluations} evaluations in {table.seconds:.0f} s "
              f"({time.process_time() - cpu:.0f} s CPU)", flush=True)
    return SensitivityTable.from_dict(record["tables"][model])


def cell(record: dict, problem: PruningProblem, scorer: Scorer, top1_scorer: Scorer, table: SensitivityTable, model: str,
         target: float, seed: int, evaluations: int, run_dir: Path) -> dict:
    """Random search's best, sensitivity's and uniform's scores (and top-1s) for (model, target, seed), once;
    the random search checkpoints in ``run_dir`` (removed once the cell is kept)."""
    for c in record["cells"]:
        if (c["model"], c["target"], c["seed"]) == (model, target, seed):
            return c
    t0, cpu = time.perf_counter(), time.process_time()
    found = RandomSearch(evaluations, seed).search(problem, scorer, run_dir, resume=True)
    best = found.allocation
    seconds, cpu = time.perf_counter() - t0 + found.resumed_seconds, time.process_time() - cpu
    c = {"model": model, "target": target, "seed": seed, "random_evaluations": evaluations,
         "random_seconds": seconds, "random_cpu_seconds": cpu,
         "random_resumed_seconds": found.resumed_seconds}
    for name, alloc in (("random_best", best), ("sensitivity", table.allocation(problem)),
                        ("uniform", uniform_allocation(problem))):
        c[name], c[f"{name}_top1"] = both(scorer, top1_scorer, alloc)
    print(f"{model} @{target:g} seed {seed}: random search, {evaluations} evaluations in {c['random_seconds']:.0f} s "
          f"({c['random_cpu_seconds']:.0f} s CPU)", flush=True)
    record["cells"].append(c)
    return c


def open_bench_workspace(model: str, val_size: int = VAL, calib_size: int = CALIB):
    """The model's JPEG-adapted checkpoint on the shipped data (``bench.base_models``)."""
    from autoprune.workspace import open_workspace

    from .base_models import DATA, finetuned_checkpoint

    return open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=val_size, calib_size=calib_size)


def run(record: dict, out: Path, models: list[str], agents: list[tuple[str, str]], targets: tuple[float, ...],
        seeds: tuple[int, ...], work: Path, open_ws=open_bench_workspace) -> None:
    """Every missing row of the grid; ``open_ws(model)`` gives the model's workspace (tests pass a tiny one).
    Searches run in ``work/<model>_t<target>_s<seed>/``, so that a killed one resumes."""
    for model in models:
        ws = None
        for target in targets:
            for seed in seeds:
                todo = agents_to_run(record["rows"], model, target, seed, agents)
                if not todo:
                    continue
                if ws is None:
                    ws = open_ws(model)
                problem = PruningProblem(ws.structure(), target, calib_batches=ws.calibration(128))
                score = record.get("score", "adaptive-bn")
                top1_scorer = Scorer(problem, ws.evaluator(score=record.get("top1") or top1_of(score)))
                fresh = model not in record["tables"]
                table = table_of(record, model, problem, Scorer(problem, ws.evaluator(score=score)))
                if fresh:
                    save(record, out)  # the sweep, before the cell's random search
                cell_dir = work / f"{model}_t{target:g}_s{seed}"
                evaluations, episodes = budget_of(record, table.evaluations)
                if episodes < 2:
                    raise SystemExit(f"--evaluations {evaluations} does not cover {model}'s sweep "
                                     f"({table.evaluations}) and the two heuristic episodes")
                ref = cell(record, problem, Scorer(problem, ws.evaluator(score=score)), top1_scorer, table, model, target,
                           seed, evaluations, cell_dir / "random")
                save(record, out)
                shutil.rmtree(cell_dir / "random", ignore_errors=True)
                for agent, action in todo:
                    scorer = Scorer(problem, ws.evaluator(score=score))  # a fresh cache per search: equal counts
                    t0, cpu = time.perf_counter(), time.process_time()
                    run_dir = cell_dir / f"{agent}-{action}"
                    search = RLSearch(algo=agent, action=action, episodes=episodes,
                                      warmup_episodes=min(record["warmup_episodes"], episodes), seed=seed)
                    result = search.search(problem, scorer, run_dir, sensitivity=table,
                                           resume=(run_dir / "checkpoints").exists())
                    seconds = time.perf_counter() - t0 + result.resumed_seconds + table.seconds
                    cpu_seconds = time.process_time() - cpu
                    kept = PolicyAllocator(result.policy_path)
                    kept.sensitivity = table
                    evaluated = len(scorer.cache_state())
                    policy, policy_top1 = both(scorer, top1_scorer, kept.allocate(problem, scorer))
                    row = {"model": model, "target": target, "seed": seed, "agent": agent, "action": action,
                           "score": score, "best": result.best.info["accuracy"],
                           "best_top1": top1_scorer.value(result.allocation), "policy": policy,
                           "policy_top1": policy_top1,
                           **{k: ref[k] for k in ref if k.startswith(("random_best", "sensitivity", "uniform"))},
                           "best_episode": result.best.episode, "policy_distilled": result.policy_distilled,
                           "episodes": episodes, "sweep_evaluations": table.evaluations,
                           "evaluations": table.evaluations + evaluated,
                           "config": asdict(search.config), "seconds": seconds, "cpu_seconds_after_sweep": cpu_seconds,
                           "resumed_seconds": result.resumed_seconds,
                           "precision": ws.precision.name,
                           "torch_threads": torch.get_num_threads()}
                    record["rows"].append(row)
                    save(record, out)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    print(f"{model} @{target:g} seed {seed} {agent}/{action}: top-1 best {100 * row['best_top1']:.2f} "
                          f"(episode {result.best.episode}) random {100 * row['random_best_top1']:.2f} sensitivity "
                          f"{100 * row['sensitivity_top1']:.2f} policy {100 * policy_top1:.2f} ({seconds:.0f} s)",
                          flush=True)


def top1(row: dict, key: str) -> float:
    """A row's top-1 figure (rows of a top-1 score carry only the score)."""
    return row.get(f"{key}_top1", row[key])


def goals(rows: list[dict]) -> dict:
    """The cell's means of the top-1 figures and its goal check (values in [0, 1])."""
    mean = {k: float(np.mean([top1(r, k) for r in rows])) for k in ("best", "random_best", "sensitivity", "policy",
                                                                     "uniform")}
    margin = mean["best"] - max(mean["sensitivity"], mean["random_best"])
    gap = mean["best"] - mean["policy"]
    return {**mean, "margin": margin, "beats": margin >= GOAL - 1e-12, "policy_gap": gap,
            "policy_ok": gap <= POLICY_GAP + 1e-12}


def report(record: dict) -> str:
    if record.get("agent_episodes"):
        n, sweeps = record["agent_episodes"], record.get("tables", {})
        per_model = ", ".join(f"{n + t['evaluations']} on {m}" for m, t in sorted(sweeps.items())) or f"{n} + the sweep"
        budget = (f"the agent plays {n} episodes after the sensitivity sweep (its first two play the sensitivity "
                  f"and uniform allocations, {record['warmup_episodes']} warm-up episodes in all), random search gets "
                  f"as many evaluations as the sweep and those episodes ({per_model})")
    else:
        budget = (f"{record['evaluations']} evaluations per arm (the agent's include the sensitivity sweep; its first "
                  f"two episodes play the sensitivity and uniform allocations, {record['warmup_episodes']} warm-up "
                  "episodes in all)")
    lines = ["# The default agent vs sensitivity analysis vs random search, at equal evaluations", "",
             f"`{record['command']}` -- {budget}, searching by `{record.get('score', 'adaptive-bn')}`; "
             f"figures are `{record.get('top1', 'adaptive-bn')}` top-1 (%) of the same allocations on the held-out "
             "training images; mean ± std over seeds. Goals per cell: best − max(sensitivity, random best) ≥ "
             "+0.5 on the means, and the kept policy within 0.5 of the best.", "",
             "| model | MACs | agent | action | seeds | best | random best | sensitivity | best − max(sens, random) "
             "| goal | policy | best − policy | policy goal | uniform |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    keys = sorted({(r["model"], r["target"], r["agent"], r["action"]) for r in record["rows"]},
                  key=lambda k: (k[0], k[1], k[2], k[3]))
    for model, target, agent, action in keys:
        rs = sorted((r for r in record["rows"] if (r["model"], r["target"], r["agent"], r["action"])
                     == (model, target, agent, action)), key=lambda r: r["seed"])
        g = goals(rs)
        lines.append(f"| {model} | {100 * target:g}% | {agent} | {action} | {','.join(str(r['seed']) for r in rs)} | "
                     f"{ms([top1(r, 'best') for r in rs])} | {ms([top1(r, 'random_best') for r in rs])} | "
                     f"{ms([top1(r, 'sensitivity') for r in rs])} | {100 * g['margin']:+.2f} | "
                     f"{'met' if g['beats'] else 'missed'} | {ms([top1(r, 'policy') for r in rs])} | "
                     f"{100 * g['policy_gap']:.2f} | {'met' if g['policy_ok'] else 'missed'} | "
                     f"{ms([top1(r, 'uniform') for r in rs])} |")
    agent, action = AGENTS[0]
    done = {(r["model"], r["target"], r["seed"]) for r in record["rows"] if (r["agent"], r["action"]) == AGENTS[0]}
    missing = [f"{m} @{100 * t:g}% seed {s}" for m in MODELS for t in TARGETS for s in SEEDS if (m, t, s) not in done]
    lines += ["", f"{len(record['rows'])} rows; the default agent ({agent}, `{action}` actions): "
              f"{len(MODELS) * len(TARGETS) * len(SEEDS) - len(missing)} of {len(MODELS) * len(TARGETS) * len(SEEDS)}"
              + (f", missing: {', '.join(missing)}." if missing else ".")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--agents", nargs="+", default=[f"{a}/{act}" for a, act in AGENTS[:1]],
                   help="AGENT/ACTION (default: the default agent; the others: " + " ".join(f"{a}/{act}" for a, act in AGENTS[1:]) + ")")
    p.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--evaluations", type=int, default=EVALUATIONS, help="scores per arm (the sweep included)")
    p.add_argument("--agent-episodes", type=int, default=None,
                   help="instead of --evaluations: the agent's episodes after the sweep (random search: as many "
                        "evaluations as the sweep and these); 200 is the search's default budget")
    p.add_argument("--warmup-episodes", type=int, default=None,
                   help=f"the agent's warm-up episodes (default: {WARMUP}; with --agent-episodes the search's "
                        f"default, {RLConfig().warmup_episodes})")
    p.add_argument("--out", type=Path, default=OUT, help="results JSON (the .md beside it)")
    p.add_argument("--work", type=Path, default=None,
                   help="run folders of unfinished searches (default: $AUTOPRUNE_CACHE/agent-vs-sensitivity/"
                        "<out's name>-e<evaluations>, so another grid never resumes this one's searches)")
    p.add_argument("--smoke", action="store_true", help="time it: ResNet-20, 30%%, seed 0, the default agent, "
                   "8 episodes after the sweep (random search: as many evaluations), into a temporary file")
    args = p.parse_args(argv)
    if args.smoke and args.agent_episodes is not None:
        raise SystemExit("--smoke runs its own budget (8 episodes after the sweep): drop --agent-episodes")
    if args.agent_episodes is not None:
        if args.agent_episodes < 2:
            raise SystemExit(f"--agent-episodes {args.agent_episodes}: the agent needs at least 2 episodes (the two "
                             "heuristic allocations)")
        args.evaluations = None
        args.out = args.out if args.out != OUT else OUT.with_name(f"{OUT.stem}-{args.agent_episodes}-episodes.json")
    warmup = args.warmup_episodes if args.warmup_episodes is not None else (
        WARMUP if args.agent_episodes is None else RLConfig().warmup_episodes)
    if args.smoke:
        args.models, args.targets, args.seeds, args.agents = ["resnet20"], [0.3], [0], ["ddpg/sensitivity"]
        args.evaluations, args.out = 37 + 8, Path(tempfile.mkdtemp()) / "smoke.json"
        args.work = args.out.parent / "runs"
    options = (" --smoke" if args.smoke else "") + (
        f" --agent-episodes {args.agent_episodes}" if args.agent_episodes is not None else "") + (
        f" --warmup-episodes {args.warmup_episodes}" if args.warmup_episodes is not None else "")
    record = load(args.out, "python -m bench.agent_vs_sensitivity" + options, args.evaluations,
                  args.agent_episodes, warmup)
    t0, cpu0 = time.perf_counter(), time.process_time()
    budget = f"e{args.evaluations}" if args.agent_episodes is None else f"a{args.agent_episodes}"
    run(record, args.out, args.models, [tuple(a.split("/")) for a in args.agents], tuple(args.targets),
        tuple(args.seeds), args.work or cache_dir() / "agent-vs-sensitivity" / f"{args.out.stem}-{budget}")
    save(record, args.out)
    if args.smoke:
        r, table = record["rows"][0], record["tables"]["resnet20"]
        scored = r["evaluations"] - r["sweep_evaluations"] + table["evaluations"] + args.evaluations
        print(f"smoke: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU (the machine's "
              f"load shows in the difference) for about {scored} evaluations; sweep "
              f"{table['seconds'] / table['evaluations']:.2f} s per evaluation; row {r['seconds']:.0f} s "
              f"(sweep included); random search {record['cells'][0]['random_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
