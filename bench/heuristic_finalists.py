"""Would round 2's finalists stage have picked a free allocation over the search's finds?

For each ResNet-20 target, the committed round-2 allocations of ``bench.final_quality`` (searched with
``relative`` actions, seeds 0-1) carry their finalists' ``finetune:50`` scores. This scores the
allocations a user gets without searching -- sensitivity's, uniform's, the universal policy's -- by the
same finalist scorer (same workspace, same seed: the score of an allocation does not depend on the row's
seed) and reports which would have won a final stage that included them, next to the test accuracy each
arm reached after the 8-epoch fine-tune. Why ``--finalists`` now always re-scores the RL search's starting
points (sensitivity, uniform).

    python -m bench.heuristic_finalists          # ~3 min on one thread; writes the JSON below
"""
from __future__ import annotations

import json
import sys
import time

from autoprune.core.allocation import Allocation
from autoprune.runs import write_json_atomic

from .common import machine
from .final_quality import OUT as FINAL_QUALITY, WORK, ModelBench, round2_settings, stage

OUT = WORK / "heuristic-finalists-check.json"
MODEL, TARGETS, SEEDS, FREE = "resnet20", (0.3, 0.5), (0, 1), ("sensitivity", "uniform", "universal")


def main() -> int:
    bench = ModelBench(MODEL, "auto")
    finalist = bench.scorer_for("finetune:50")
    today = round2_settings()  # the rows of today's default search (not kept-apart earlier stages)
    rows = [r for r in json.loads(FINAL_QUALITY.read_text())["rows"]
            if r.get("round") == 2 and r["model"] == MODEL and r.get("recipe") == "lr-rewind"
            and r.get("start", "recalibrated") == "recalibrated"
            and stage(r["arm"], r["settings"]) == stage(r["arm"], today)]
    cells = []
    for target in TARGETS:
        free = {}
        for arm in FREE:
            saved = json.loads((WORK / "allocations-r2" / f"{MODEL}_t{target:g}_{arm}_s0.json").read_text())
            t0 = time.perf_counter()
            free[arm] = {"finetune50": finalist.value(Allocation.from_dict(saved, bench.structure)),
                         "seconds": time.perf_counter() - t0}
        for seed in SEEDS:
            saved = json.loads((WORK / "allocations-r2" /
                                f"{MODEL}_t{target:g}_searched_s{seed}_top3-finetune50-relative.json").read_text())
            searched = max(f["final"] for f in saved["finalists"])
            test = {r["arm"]: r["test_acc"] for r in rows if r["target"] == target and r["seed"] == seed}
            winner = max([("searched", searched)] + [(a, free[a]["finetune50"]) for a in FREE], key=lambda x: x[1])[0]
            cells.append({"target": target, "seed": seed, "searched_pick_finetune50": searched,
                          **{f"{a}_finetune50": free[a]["finetune50"] for a in FREE},
                          "winner_with_heuristics": winner, "winner_with_sensitivity_and_uniform":
                          max([("searched", searched)] + [(a, free[a]["finetune50"]) for a in FREE[:2]],
                              key=lambda x: x[1])[0],
                          "test_acc_after_finetune": test})
            print(cells[-1], flush=True)
    write_json_atomic(OUT, {"command": "python -m bench.heuristic_finalists", "machine": machine(),
                            "finalist_score": "finetune:50", "cells": cells}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
