"""Seconds per candidate of every search score (``--score``), on one thread of this machine.

ResNet-20 (and ResNet-56) JPEG-adapted, 30% of MACs, random feasible candidates (seeded): each score
scores a warm-up candidate first (the dense model's outputs and layer targets, computed once per
search, are not a per-candidate cost), then ``--candidates`` more, timed one by one. Held-out and
calibration sizes are the search's defaults (2,000 and 1,024 images), precision fp32, one torch
thread: run it on an otherwise idle core (``bench/README.md`` says how the figures were taken).

    OMP_NUM_THREADS=1 python -m bench.score_cost                 # ~10 min on ResNet-20
    OMP_NUM_THREADS=1 python -m bench.score_cost --models resnet20 resnet56
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time

import numpy as np
import torch

from autoprune.agents.random_search import random_feasible_counts
from autoprune.core.allocation import Allocation
from autoprune.runs import write_json_atomic
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine
from .proxy_validity import SCORES

OUT = RESULTS / "score-cost.json"


def measure(model: str, candidates: int, target: float = 0.3) -> dict:
    ws = open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=2000, calib_size=1024,
                        precision="fp32")
    problem = ws.problem(target)
    rng = np.random.default_rng(0)
    allocs = [Allocation.from_counts(problem.structure, random_feasible_counts(problem, rng))
              for _ in range(candidates + 1)]
    rows = {}
    for score in SCORES:
        scorer = ws.scorer(problem, score)
        scorer.value(allocs[0])  # warm-up: the once-per-search parts
        seconds = []
        for alloc in allocs[1:]:
            t0 = time.perf_counter()
            scorer.value(alloc)
            seconds.append(time.perf_counter() - t0)
        rows[score] = {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}
        print(f"{model} {score}: {rows[score]['median']:.2f} s per candidate", flush=True)
    base = rows["adaptive-bn"]["median"]
    for r in rows.values():
        r["x_adaptive_bn"] = r["median"] / base
    return {"target": target, "candidates": candidates, "seconds": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python -m bench.score_cost " + shlex.join(sys.argv[1:] if argv is None else argv)
    record = json.loads(OUT.read_text()) if OUT.exists() else {"models": {}}
    for m, entry in record["models"].items():  # the first version kept one command and machine for the file
        entry.setdefault("command", record.get("command"))
        entry.setdefault("machine", record.get("machine"))
    record.update(torch_threads=torch.get_num_threads(), precision="fp32")
    for key in ("command", "machine"):
        record.pop(key, None)
    for m in args.models:  # other models' figures are kept, each with the command and machine that took them
        record["models"][m] = {**measure(m, args.candidates), "command": command, "machine": machine()}
        write_json_atomic(OUT, record, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
