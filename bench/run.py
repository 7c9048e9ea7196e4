"""autoprune's benchmark suite: one entry point, named suites, JSON under bench/results/.

    python -m bench.run --quick                   # every suite, quick forms (< 15 min on 2 cores)
    python -m bench.run engine latency evaluator  # chosen suites, full forms
    python -m bench.run --list

Suites measured here: ``engine`` (structure build, applying one allocation, analytical vs measured
MACs), ``latency`` (dense vs physically pruned vs masked inference), ``evaluator`` (one adaptive-BN
candidate vs its bare forward passes), ``episode`` (one RL search episode split into its parts).
``search``, ``compare`` and ``progressive`` run those scripts' protocols (bench/search.py,
bench/compare.py, bench/progressive.py) in their quick or full form.
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.cost import measure_cost
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.models import IMAGENET_MEAN, IMAGENET_STD, create_model
from autoprune.train.precision import resolve_precision

from .common import Report, bare_forward_passes, timed

INPUT = {"resnet20": 32, "resnet56": 32, "tv:resnet18": 224, "tv:mobilenet_v2": 224}


def _uniform_at(structure: ModelStructure, target: float) -> Allocation:
    from autoprune.agents.uniform import UniformAllocator

    return UniformAllocator().allocate(PruningProblem(structure, target, min_keep=0.05))


def engine(quick: bool) -> Report:
    rep = Report("engine", quick)
    repeats = 3 if quick else 10
    for name, size in INPUT.items():
        torch.manual_seed(0)
        model = create_model(name, 10 if size == 32 else 1000).eval()
        x = torch.randn(1, 3, size, size)
        build = timed(lambda: ModelStructure(model, x), repeats, warmup=0)
        s = ModelStructure(model, x)
        alloc = _uniform_at(s, 0.5)
        prune(s, alloc)  # importance scores are computed once per structure and cached
        apply = timed(lambda: prune(s, alloc), repeats)
        rng = np.random.default_rng(0)
        mismatches = 0
        for _ in range(5 if quick else 20):
            a = Allocation.from_counts(s, [int(rng.integers(1, g.channels + 1)) for g in s.groups])
            mismatches += measure_cost(prune(s, a), x) != (a.macs(s), a.params(s))
        analytic = timed(lambda: s.macs(alloc.counts(s)), 100, warmup=5)
        rep.add(f"{name}/build_structure", build, "s", groups=len(s.groups))
        rep.add(f"{name}/apply_allocation", apply, "s")
        rep.add(f"{name}/analytical_macs_call", [t * 1e6 for t in analytic], "us")
        rep.add(f"{name}/analytical_vs_measured_mismatches", float(mismatches), "count",
                checked=5 if quick else 20, dense_macs=s.dense_macs)
    return rep


def _masked_copy(model: nn.Module, s: ModelStructure, alloc: Allocation) -> nn.Module:
    """torch.nn.utils.prune structured masks at the same channel counts: zeros, same compute."""
    import copy

    from torch.nn.utils import prune as tprune

    masked = copy.deepcopy(model)
    for g, k in zip(s.groups, alloc.counts(s)):
        if k < g.channels:
            tprune.ln_structured(masked.get_submodule(g.name), "weight", amount=int(g.channels - k), n=1, dim=0)
    return masked


def latency(quick: bool) -> Report:
    rep = Report("latency", quick)
    torch.set_num_threads(2)
    repeats = 3 if quick else 7
    models = ["resnet56", "tv:resnet18", "tv:mobilenet_v2"]
    for name in models:
        size = INPUT[name]
        torch.manual_seed(0)
        model = create_model(name, 10 if size == 32 else 1000).eval()
        s = ModelStructure(model, torch.randn(1, 3, size, size))
        for batch in (1, 64):
            if quick and batch == 64 and size == 224:
                batch = 16
            x = torch.randn(batch, 3, size, size)

            def run(m: nn.Module, precision: str = "fp32") -> list[float]:
                prec = resolve_precision(precision, "cpu")
                m = copy.deepcopy(m).to(memory_format=prec.memory_format) if precision != "fp32" else m
                xp = x.contiguous(memory_format=prec.memory_format) if precision != "fp32" else x
                with torch.inference_mode(), prec.autocast():
                    return timed(lambda: m(xp), repeats, warmup=2)

            dense = run(model)
            rep.add(f"{name}/b{batch}/dense", dense, "s", macs=s.dense_macs)
            fast = run(model, "auto")  # the default precision, side by side
            rep.add(f"{name}/b{batch}/dense-auto", fast, "s", precision=resolve_precision("auto", "cpu").name,
                    speedup_vs_fp32=round(float(np.median(dense) / np.median(fast)), 3))
            for target in (0.7, 0.5, 0.3):
                alloc = _uniform_at(s, target)
                pruned = prune(s, alloc).eval()
                t = run(pruned)
                mac_ratio = alloc.macs(s) / s.dense_macs
                speedup = float(np.median(dense) / np.median(t))
                rep.add(f"{name}/b{batch}/pruned{int(target * 100)}", t, "s", macs_ratio=round(mac_ratio, 4),
                        speedup=round(speedup, 3), speedup_per_mac_reduction=round(speedup * mac_ratio, 3))
                ta = run(pruned, "auto")
                rep.add(f"{name}/b{batch}/pruned{int(target * 100)}-auto", ta, "s",
                        speedup=round(float(np.median(fast) / np.median(ta)), 3),
                        speedup_vs_fp32_pruned=round(float(np.median(t) / np.median(ta)), 3))
                if target == 0.5:
                    tm = run(_masked_copy(model, s, alloc))
                    rep.add(f"{name}/b{batch}/masked50", tm, "s",
                            speedup=round(float(np.median(dense) / np.median(tm)), 3))
    rep.notes["how_to_read"] = ("speedup = dense/pruned median latency; speedup_per_mac_reduction = speedup x "
                                "(pruned MACs / dense MACs), 1.0 means latency falls exactly as MACs do. "
                                "masked50 = torch.nn.utils.prune masks at the 50% channel counts (no speed-up expected). "
                                "-auto rows: the default precision (bf16 autocast + channels-last where native), "
                                "speedup there is dense-auto/pruned-auto.")
    return rep


def evaluator(quick: bool) -> Report:
    """One adaptive-BN candidate (prune + recalibrate + evaluate) vs the bare forward passes inside it."""
    from autoprune.train.data import make_bundle
    from autoprune.train.evaluator import AdaptiveBNEvaluator

    rep = Report("evaluator", quick)
    bundle = make_bundle("synthetic", IMAGENET_MEAN, IMAGENET_STD, val_size=1000, calib_size=1024) if quick else None
    if bundle is None:
        from .base_models import DATA

        bundle = make_bundle(DATA, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    model = create_model("resnet56", 10).eval()
    vx, vy = bundle.tensors("val")
    calib = bundle.calibration_batches(128)
    s = ModelStructure(model, vx[:1])
    alloc = _uniform_at(s, 0.5)
    prune(s, alloc)  # warm the importance cache
    repeats = 2 if quick else 5
    pruned = prune(s, alloc)
    for precision in ("fp32", "auto"):  # side by side: fp32 and the default precision
        ev = AdaptiveBNEvaluator(calib, vx, vy, precision=precision)
        candidate = timed(lambda: ev(prune(s, alloc)), repeats)
        floor = timed(lambda: bare_forward_passes(pruned, ev.calib_batches, ev.val_x, precision), repeats)
        p = f"{precision}/resnet56_50pct"
        rep.add(f"{p}/candidate_evaluation", candidate, "s", calib_images=len(bundle.calib), val_images=len(vy),
                precision=ev.precision.name)
        rep.add(f"{p}/bare_forward_passes", floor, "s")
        rep.add(f"{p}/overhead_share", [1 - f / c for f, c in zip(floor, candidate)], "fraction")
    # The scoring passes are half memory-bound ops (BN, ReLU, add): on a VM where first-touch page faults
    # are slow, an op writing a fresh buffer costs several times one writing into an existing one.
    x = torch.randn(128, 64, 32, 32)  # 32 MB, an early ResNet activation at batch 128
    out = torch.empty_like(x)
    rep.add("memory/relu_32MB_fresh_buffer", timed(lambda: torch.relu(x), 20), "s")
    rep.add("memory/relu_32MB_existing_buffer", timed(lambda: torch.clamp_min(x, 0, out=out), 20), "s")
    fp32, auto = (next(f for f in rep.figures if f["name"] == f"{p}/resnet56_50pct/candidate_evaluation")
                  for p in ("fp32", "auto"))
    rep.add("speedup_auto_vs_fp32/candidate_evaluation", fp32["median"] / auto["median"], "x")
    return rep


def episode(quick: bool) -> Report:
    from .episode import run_episode_suite

    return run_episode_suite(quick)


LOCAL = {"engine": engine, "latency": latency, "evaluator": evaluator, "episode": episode}
EXTERNAL = {"search": "bench.search", "compare": "bench.compare", "progressive": "bench.progressive"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="*", help=f"any of {', '.join([*LOCAL, *EXTERNAL])} (default: all)")
    p.add_argument("--quick", action="store_true", help="minutes instead of hours")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join([*LOCAL, *EXTERNAL]))
        return 0
    suites = args.suites or [*LOCAL, *EXTERNAL]
    unknown = [s for s in suites if s not in LOCAL and s not in EXTERNAL]
    if unknown:
        p.error(f"unknown suite(s) {unknown}")
    failed = []
    for name in suites:
        t = time.perf_counter()
        if name in LOCAL:
            LOCAL[name](args.quick).write()
        else:
            cmd = [sys.executable, "-m", EXTERNAL[name]] + (["--quick"] if args.quick else [])
            if subprocess.run(cmd).returncode != 0:
                failed.append(name)
        print(f"[{name}: {time.perf_counter() - t:.0f} s]")
    if failed:
        print(f"failed suites: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
