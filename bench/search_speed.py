"""Search speed and multi-fidelity scoring.

Two parts, rows in ``bench/results/search-speed.json``, resumable row by row:

- ``early-stop``: ResNet-20 and ResNet-56 (JPEG-adapted checkpoints) at 50% and 30% of MACs,
  seeds 0-2, random search and DDPG with 100 episodes (DDPG: 30 warm-up), the search defaults
  otherwise (1,024 calibration / 2,000 held-out images, default precision), with early stopping
  off and on: best adaptive-BN accuracy found (always a full score), held-out images scored,
  seconds. "Same best" means the same best allocation.
- ``precision``: ``autoprune search`` itself (the CLI, as a user runs it), DDPG, 60 episodes (20
  warm-up), seed 0: ``--precision fp32`` vs the default, early stopping off and on; seconds per
  episode from each run's summary.json, and the ratios.

    python -m bench.search_speed                    # both parts (~1 h on 2 idle cores)
    python -m bench.search_speed precision          # one part
"""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from autoprune.agents import get_allocator
from autoprune.cli.main import main as cli_main
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.runs import write_json_atomic
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine, parse_parts

OUT = RESULTS / "search-speed.json"
MODELS, TARGETS, SEEDS, AGENTS = ("resnet20", "resnet56"), (0.5, 0.3), (0, 1, 2), ("random", "ddpg")
EPISODES, WARMUP = 100, 30


def load() -> dict:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"command": "python -m bench.search_speed", "machine": machine(), "early_stop": [], "precision": []}


def save(record: dict) -> None:
    write_json_atomic(OUT, record, indent=1)


def early_stop(record: dict, models: tuple[str, ...] = MODELS) -> None:
    for model in models:
        ws = None
        for target in TARGETS:
            for seed in SEEDS:
                for agent in AGENTS:
                    for stop in (False, True):
                        if any(r["model"] == model and r["target"] == target and r["seed"] == seed
                               and r["agent"] == agent and r["early_stop"] == stop for r in record["early_stop"]):
                            continue
                        if ws is None:
                            ws = open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=2000,
                                                calib_size=1024)
                            structure = ws.structure()
                            calib = ws.data.calibration_batches(128)
                        evaluator = ws.evaluator()
                        problem = PruningProblem(structure, target, calib_batches=calib)
                        scorer = Scorer(problem, evaluator, early_stop=stop)
                        images = {"n": 0}
                        score = evaluator.score

                        def counted(model_, must_beat=None, _score=score):
                            result = _score(model_, must_beat)
                            images["n"] += result.images
                            return result

                        evaluator.score = counted
                        t0 = time.perf_counter()
                        if agent == "random":
                            alloc = get_allocator("random", samples=EPISODES, seed=seed).allocate(problem, scorer)
                        else:
                            alloc = get_allocator("ddpg", episodes=EPISODES, warmup_episodes=WARMUP,
                                                  seed=seed).allocate(problem, scorer)
                        seconds = time.perf_counter() - t0
                        full = scorer.full_scores().score(alloc)
                        assert not full.partial
                        best = full.value
                        row = {"model": model, "target": target, "seed": seed, "agent": agent, "early_stop": stop,
                               "episodes": EPISODES, "best": best, "best_counts": [int(c) for c in
                                                                                   alloc.counts(structure)],
                               "images_scored": images["n"], "seconds": seconds,
                               "precision": ws.precision.name}
                        record["early_stop"].append(row)
                        save(record)
                        print(f"{model} @{target:g} seed {seed} {agent} early-stop {stop}: best {100 * best:.2f}% "
                              f"{images['n']:,} images {seconds:.0f} s", flush=True)
    record["early_stop_summary"] = summarize(record["early_stop"])
    save(record)


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for model in MODELS:
        for target in TARGETS:
            for agent in AGENTS:
                pairs = []
                for seed in SEEDS:
                    off = [r for r in rows if (r["model"], r["target"], r["agent"], r["seed"], r["early_stop"])
                           == (model, target, agent, seed, False)]
                    on = [r for r in rows if (r["model"], r["target"], r["agent"], r["seed"], r["early_stop"])
                          == (model, target, agent, seed, True)]
                    if off and on:
                        pairs.append((off[0], on[0]))
                if pairs:
                    out.append({"model": model, "target": target, "agent": agent, "seeds": len(pairs),
                                "same_best": sum(a["best_counts"] == b["best_counts"] for a, b in pairs),
                                "best_diff_points": [100 * (b["best"] - a["best"]) for a, b in pairs],
                                "images_ratio": sum(b["images_scored"] for _, b in pairs)
                                / sum(a["images_scored"] for a, _ in pairs),
                                "speedup": sum(a["seconds"] for a, _ in pairs) / sum(b["seconds"] for _, b in pairs)})
    return out


def precision(record: dict, models: tuple[str, ...] = MODELS) -> None:
    for model in models:
        for prec, stop in (("fp32", False), ("auto", False), ("auto", True)):
            if any(r["model"] == model and r["precision_flag"] == prec and r["early_stop"] == stop
                   for r in record["precision"]):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                argv = ["search", "--model", model, "--checkpoint", str(finetuned_checkpoint(model)), "--data", DATA,
                        "--macs", "0.5", "--episodes", "60", "--warmup-episodes", "20", "--precision", prec,
                        "--early-stop" if stop else "--no-early-stop", "--output", str(Path(tmp) / "run"),
                        "--no-progress", "--finalists", "0"]  # it times the screening score, not the stage
                t0 = time.perf_counter()
                if cli_main(argv) != 0:
                    raise SystemExit(f"autoprune {shlex.join(argv)} failed")
                wall = time.perf_counter() - t0
                summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
            record["precision"].append({"model": model, "precision_flag": prec, "precision": summary["precision"],
                                        "early_stop": stop, "seconds_per_episode": summary["seconds_per_episode"],
                                        "best": summary["best"]["score_value"], "wall_seconds": wall,
                                        "command": "autoprune " + shlex.join(argv)})
            save(record)
    for model in MODELS:
        rows = {(r["precision_flag"], r["early_stop"]): r for r in record["precision"] if r["model"] == model}
        base = rows.get(("fp32", False))
        if base:
            for r in rows.values():
                r["speedup_vs_fp32"] = base["seconds_per_episode"] / r["seconds_per_episode"]
    save(record)
    for r in record["precision"]:
        print(f"{r['model']} {r['precision']} early-stop {r['early_stop']}: {r['seconds_per_episode']:.3f} s/episode "
              f"(x{r.get('speedup_vs_fp32', float('nan')):.2f}), best {100 * r['best']:.2f}%")


PARTS = {"early-stop": early_stop, "precision": precision}


def main(argv: list[str] | None = None) -> int:
    args = parse_parts(__doc__, PARTS, argv,
                       lambda p: p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS))
    record = load()
    for part in args.parts:
        PARTS[part](record, tuple(args.models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
