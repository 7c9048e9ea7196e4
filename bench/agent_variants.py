"""The agent grid's search with one setting changed, on development seeds (not the grid's judged 0-2):
what ``bench.rl_tuning`` is to ``bench.rl_vs_random``, for ``bench.agent_vs_sensitivity``.

Where a cell of ``bench/agent_vs_sensitivity.py`` misses its goal, a candidate change to the default agent
is tried here first, on other seeds, so the grid that judges it is never the data it was picked on. A row
is one search exactly as the grid runs it (the model's committed sensitivity sweep counted in the 200
evaluations, 30 warm-up episodes unless overridden, the default score), with ``--settings`` overrides
of ``RLConfig`` (JSON, as ``bench.rl_tuning`` takes them); it reports the best allocation's search score
and its top-1 next to the sensitivity allocation's. No random search runs here: the grid has it.

    python -m bench.agent_variants --model resnet56 --target 0.5 --seeds 3 4               # the default
    python -m bench.agent_variants --model resnet56 --target 0.5 --seeds 3 4 --settings '{"warmup_episodes": 50}'

Rows go to ``bench/results/agent-variants.json`` as they finish, keyed by (model, target, seed, settings);
rerun a command to fill what is missing.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from autoprune.agents.rl import RLConfig, RLSearch
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.core.sensitivity import SensitivityTable

from .agent_vs_sensitivity import OUT as GRID, WARMUP, open_bench_workspace, top1_of
from .common import RESULTS, machine, save_merged

OUT = RESULTS / "agent-variants.json"


def parse_settings(text: str) -> dict:
    """``--settings`` JSON (``'{"warmup_episodes": 50}'``) -> RLConfig overrides, checked."""
    try:
        out = json.loads(text)
    except json.JSONDecodeError:
        out = None
    if not isinstance(out, dict):
        raise SystemExit(f"--settings '{text}': give a JSON object, e.g. '{{\"warmup_episodes\": 50}}'")
    unknown = sorted(set(out) - {f.name for f in fields(RLConfig)})
    if unknown:
        raise SystemExit(f"--settings {', '.join(unknown)}: not an RLConfig setting (agents/rl/config.py lists them)")
    return out


def key(row: dict) -> tuple:
    return row["model"], row["target"], row["seed"], json.dumps(row["settings"], sort_keys=True)


def report(record: dict) -> str:
    """Per (model, target, settings): the best's top-1 and its margin over the sensitivity allocation, per seed."""
    lines = ["# The grid's agent with one setting changed, on development seeds", "",
             "Top-1 % (`reconstruct`, held-out training images) of each search's best allocation; sensitivity is the "
             "sensitivity allocation's; the search's own score (higher is better) beside it. Rows: "
             "`bench/results/agent-variants.json` (each with its command).", "",
             "| model | MACs | settings | seed | best | best − sensitivity | by the search's score | best at episode |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(record["rows"], key=lambda r: (r["model"], r["target"], json.dumps(r["settings"]), r["seed"])):
        settings = json.dumps(r["settings"]) if r["settings"] else "default"
        margin = 100 * (r["best_top1"] - r["sensitivity_top1"])
        lines.append(f"| {r['model']} | {100 * r['target']:g}% | {settings} | {r['seed']} | {100 * r['best_top1']:.2f} | "
                     f"{margin:+.2f} | {r['best'] - r['sensitivity']:+.4f} | {r['best_episode']} of {r['episodes']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--seeds", nargs="+", type=int, default=[3, 4])
    p.add_argument("--settings", default="{}", help="RLConfig overrides as JSON, e.g. '{\"warmup_episodes\": 50}'")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    settings = parse_settings(args.settings)
    grid = json.loads(GRID.read_text())
    if args.model not in grid["tables"]:
        raise SystemExit(f"{GRID} has no sensitivity sweep for {args.model}: run bench.agent_vs_sensitivity first")
    table = SensitivityTable.from_dict(grid["tables"][args.model])
    record = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    done = {key(r) for r in record["rows"]}
    ws = None
    for seed in args.seeds:
        row = {"model": args.model, "target": args.target, "seed": seed, "settings": settings}
        if key(row) in done:
            continue
        ws = ws or open_bench_workspace(args.model)
        problem = PruningProblem(ws.structure(), args.target, calib_batches=ws.calibration(128))
        scorer = Scorer(problem, ws.evaluator(score=grid["score"]))
        top1 = Scorer(problem, ws.evaluator(score=top1_of(grid["score"])))
        episodes = grid["evaluations"] - table.evaluations
        config = {"episodes": episodes, "warmup_episodes": min(WARMUP, episodes), "seed": seed, **settings}
        t0 = time.perf_counter()
        result = RLSearch(**config).search(problem, scorer, None, sensitivity=table)
        row.update(best=result.best.info["accuracy"], best_top1=top1.value(result.allocation),
                   best_episode=result.best.episode, sensitivity=scorer.value(table.allocation(problem)),
                   sensitivity_top1=top1.value(table.allocation(problem)), episodes=episodes,
                   warmup_episodes=config["warmup_episodes"], seconds=time.perf_counter() - t0,
                   precision=ws.precision.name, torch_threads=torch.get_num_threads(), machine=machine(),
                   command="python -m bench.agent_variants " + shlex.join(argv if argv is not None else sys.argv[1:]))
        record["rows"].append(row)
        save_merged(args.out, record, {"rows": key})
        args.out.with_suffix(".md").write_text(report(record))
        print(f"{args.model} @{args.target:g} seed {seed} {settings or 'default'}: best top-1 "
              f"{100 * row['best_top1']:.2f} (episode {row['best_episode']}), sensitivity "
              f"{100 * row['sensitivity_top1']:.2f} ({row['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
