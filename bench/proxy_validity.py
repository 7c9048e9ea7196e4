"""Does the search's score predict the model after fine-tuning?

ResNet-20 (JPEG-adapted checkpoint), random feasible allocations (seeded; 20 at 30% of MACs, 12 at
50%), L1 criterion. For each allocation, on the same 2,000 held-out training images:
- ``abn``: adaptive-BN accuracy with the search's calibration (1,024 training images),
- ``plain``: accuracy right after pruning, BN statistics of the dense model (no recalibration),
- ``abn_4x``: adaptive-BN accuracy with 4x the calibration images (4,096; the 1,024 are among them),
- ``ft100``: held-out accuracy after 100 steps (batch 128) of LR-rewind fine-tuning -- a candidate
  cheaper proxy; the search's ``--score finetune:100`` is this recipe (``autoprune.train.scores``;
  it recalibrates BN under the search's precision, here in fp32),
then the ground truth: test accuracy (10,000 images, fp32) after a 2-epoch LR-rewind fine-tune
(cosine from 0.01, 48,000 training images, seed 0). Reported: Spearman rank correlation of the
fine-tuned test accuracy with each proxy, per target, and a scatter plot.

    python -m bench.proxy_validity          # resumable row by row (~3 min a row on 2 idle cores)
    python -m bench.proxy_validity --report # correlations (with 95% bootstrap intervals) and plot only
"""
from __future__ import annotations

import copy
import json
import sys
import time

import numpy as np

from autoprune.agents.random_search import random_feasible_counts
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.runs import write_json_atomic
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy, recalibrate_bn
from autoprune.train.training import TrainRecipe, train
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine

OUT = RESULTS / "proxy-validity.json"
SAMPLES = {0.3: 20, 0.5: 12}
PROXIES = ("abn", "plain", "abn_4x", "ft100")


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def bootstrap_intervals(sel: list[dict], resamples: int = 2000, seed: int = 0) -> dict:
    """95% percentile-bootstrap intervals (rows resampled with replacement) of each proxy's Spearman
    correlation, and of its difference from adaptive BN's on the same resample (paired)."""
    rng = np.random.default_rng(seed)
    truth = np.array([r["test_acc"] for r in sel])
    scores = {p: np.array([r[p] for r in sel]) for p in PROXIES}
    rhos: dict[str, list[float]] = {p: [] for p in PROXIES}
    for _ in range(resamples):
        i = rng.integers(0, len(sel), len(sel))
        if len(set(truth[i])) > 1 and all(len(set(v[i])) > 1 for v in scores.values()):
            for p in PROXIES:
                rhos[p].append(spearman(list(scores[p][i]), list(truth[i])))

    def interval(values) -> list[float]:
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    out = {p: interval(rhos[p]) for p in PROXIES}
    out.update({f"{p} - abn": interval(np.array(rhos[p]) - np.array(rhos["abn"])) for p in PROXIES if p != "abn"})
    return out


def summarize(rows: list[dict]) -> dict:
    out = {}
    for target in SAMPLES:
        sel = [r for r in rows if r["target"] == target]
        if len(sel) < 3:
            continue
        truth = [r["test_acc"] for r in sel]
        out[f"{target:g}"] = {"n": len(sel), **{p: spearman([r[p] for r in sel], truth) for p in PROXIES},
                              "interval_95": bootstrap_intervals(sel), "picked": picked(sel)}
    return out


def picked(sel: list[dict]) -> dict:
    """What choosing by each proxy would have taken home: the fine-tuned test accuracy of the allocation
    it ranks first, against the best and the median of the same rows (the search's real question)."""
    truth = sorted(r["test_acc"] for r in sel)
    out = {p: max(sel, key=lambda r: r[p])["test_acc"] for p in PROXIES}
    return {**out, "best": truth[-1], "median": float(np.median(truth))}


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROXIES), figsize=(4 * len(PROXIES), 3.6), sharey=True)
    for ax, proxy in zip(axes, PROXIES):
        for target, marker in zip(SAMPLES, "os"):
            sel = [r for r in rows if r["target"] == target]
            if sel:
                rho = spearman([r[proxy] for r in sel], [r["test_acc"] for r in sel]) if len(sel) > 2 else float("nan")
                ax.scatter([100 * r[proxy] for r in sel], [100 * r["test_acc"] for r in sel], marker=marker,
                           label=f"{100 * target:g}% MACs (rho {rho:.2f})", alpha=0.8)
        ax.set(xlabel=f"{proxy} (held-out %)", title=proxy)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test % after 2-epoch LR rewind")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    record = json.loads(OUT.read_text()) if OUT.exists() else {
        "command": "python -m bench.proxy_validity", "machine": machine(), "rows": []}
    if sys.argv[1:] == ["--report"]:  # recompute the correlations and the plot from the rows, run nothing
        record["spearman_with_finetuned_test_acc"] = summarize(record["rows"])
        write_json_atomic(OUT, record, indent=1)
        plot(record["rows"], RESULTS / "proxy-validity.png")
        print(json.dumps(record["spearman_with_finetuned_test_acc"], indent=1))
        return 0
    ws = open_workspace("resnet20", str(finetuned_checkpoint("resnet20")), DATA, val_size=2000, calib_size=4096)
    structure = ws.structure()
    calib4 = ws.data.calibration_batches(128)
    calib = calib4[:8]  # 1,024 images, as the search uses
    vx, vy = ws.data.tensors("val")
    test_x, test_y = ws.data.tensors("test")
    abn, abn4 = (AdaptiveBNEvaluator(c, vx, vy, precision=ws.precision) for c in (calib, calib4))
    for target, n in SAMPLES.items():
        problem = PruningProblem(structure, target, calib_batches=calib)
        rng = np.random.default_rng(0)
        for i in range(n):
            counts = random_feasible_counts(problem, rng)  # drawn even when the row exists: same sequence
            if any(r["target"] == target and r["index"] == i for r in record["rows"]):
                continue
            t0 = time.perf_counter()
            pruned = problem.pruned_model(Allocation.from_counts(structure, counts))
            row = {"target": target, "index": i, "counts": [int(c) for c in counts],
                   "macs_ratio": structure.macs(counts) / structure.dense_macs,
                   "plain": accuracy(pruned, vx, vy, precision=ws.precision),
                   "abn": abn(copy.deepcopy(pruned)), "abn_4x": abn4(copy.deepcopy(pruned))}
            recalibrate_bn(pruned, calib)
            short = copy.deepcopy(pruned)
            train(short, ws.data, TrainRecipe(epochs=100 / 375, lr=0.01), seed=0, progress=False,
                  precision=ws.precision)
            row["ft100"] = accuracy(short, vx, vy, precision=ws.precision)
            result = train(pruned, ws.data, TrainRecipe(epochs=2, lr=0.01), seed=0, progress=False,
                           precision=ws.precision)
            row.update(test_acc=accuracy(pruned, test_x, test_y), finetune_seconds=result.seconds,
                       seconds=time.perf_counter() - t0, precision=ws.precision.name)
            record["rows"].append(row)
            record["spearman_with_finetuned_test_acc"] = summarize(record["rows"])
            write_json_atomic(OUT, record, indent=1)
            plot(record["rows"], RESULTS / "proxy-validity.png")
            print(f"@{target:g} #{i}: abn {100 * row['abn']:.2f} plain {100 * row['plain']:.2f} "
                  f"abn4x {100 * row['abn_4x']:.2f} ft100 {100 * row['ft100']:.2f} -> test {100 * row['test_acc']:.2f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    print(json.dumps(record.get("spearman_with_finetuned_test_acc"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
