"""Shared benchmark plumbing: machine facts, timing with repeats, the JSON result format."""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from autoprune.runs import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}  # two-sided 95% Student t quantiles by degrees of freedom


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times (s) of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


@dataclass
class Report:
    """One suite's figures; ``write`` saves JSON under bench/results and prints a summary table."""

    suite: str
    quick: bool
    figures: list[dict] = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    def add(self, name: str, values: list[float] | float, unit: str, **context: object) -> dict:
        vals = values if isinstance(values, list) else [values]
        fig = {"name": name, "unit": unit, "repeats": len(vals), "median": statistics.median(vals),
               "min": min(vals), "max": max(vals),
               "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals, **context}
        self.figures.append(fig)
        return fig

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.suite}{'-quick' if self.quick else ''}.json"
        doc = {"suite": self.suite, "quick": self.quick, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "machine": machine(), "figures": self.figures, "notes": self.notes}
        path.write_text(json.dumps(doc, indent=2) + "\n")
        self.print_summary()
        print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
        return path

    def print_summary(self) -> None:
        print(f"\n== {self.suite}{' (quick)' if self.quick else ''} ==")
        for f in self.figures:
            ctx = {k: v for k, v in f.items() if k not in ("name", "unit", "repeats", "median", "min", "max", "std", "values")}
            spread = f" (+-{f['std']:.3g}, n={f['repeats']})" if f["repeats"] > 1 else ""
            extra = " ".join(f"{k}={v}" for k, v in ctx.items())
            print(f"  {f['name']:<40} {f['median']:>12.4g} {f['unit']:<10}{spread} {extra}")


def bare_forward_passes(model: torch.nn.Module, calib: list[torch.Tensor], val_x: torch.Tensor,
                        precision: str = "fp32") -> None:
    """What an adaptive-BN evaluation must compute at least: calibration forwards in train mode, then eval
    forwards, in ``precision``."""
    from autoprune.train.precision import resolve_precision

    prec = resolve_precision(precision, val_x.device)
    model.to(memory_format=prec.memory_format)
    model.train()
    with torch.no_grad(), prec.autocast():
        for b in calib:
            model(b)
    model.eval()
    with torch.inference_mode(), prec.autocast():
        for b in val_x.split(256):
            model(b)


def parse_parts(doc: str, parts: dict, argv: list[str] | None = None,
                extra: Callable[["argparse.ArgumentParser"], None] | None = None):
    """Command line of a benchmark made of named, resumable parts: ``python -m bench.X [part ...]``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", help=f"any of {', '.join(parts)} (default: all)")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    unknown = [x for x in args.parts if x not in parts]
    if unknown:
        p.error(f"unknown part(s) {unknown}: use {', '.join(parts)}")
    args.parts = args.parts or list(parts)
    return args


def run_parts(doc: str, parts: dict, load: Callable[[], dict], argv: list[str] | None = None) -> int:
    """``main`` of a benchmark made of parts: each chosen part runs on the loaded (resumable) record."""
    args = parse_parts(doc, parts, argv)
    record = load()
    for name in args.parts:
        parts[name](record)
    return 0


def paired_difference(values: dict[tuple[str, int], float], arm: str, other: str) -> str | None:
    """``arm`` minus ``other`` over the seeds that ran both (the seed fixes the data order of both runs):
    "mean ± std (n=N, resolved)", resolved when the 95% t-interval of the mean excludes 0; None if no seed ran both."""
    diffs = [values[arm, seed] - values[other, seed] for a, seed in values if a == other and (arm, seed) in values]
    if not diffs:
        return None
    m = statistics.mean(diffs)
    s = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    resolved = len(diffs) > 1 and abs(m) > T95.get(len(diffs) - 1, 2.0) * s / len(diffs) ** 0.5
    return f"{m:+.2f} ± {s:.2f} (n={len(diffs)}, {'resolved' if resolved else 'not resolved'})"


def percent_mean_std(values) -> str:
    """Fractions as "mean ± std" in percent (sample std; the mean alone for one value)."""
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def agents_to_run(rows: list[dict], model: str, target: float, seed: int,
                  agents: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (agent, action) pairs of one grid cell and seed that have no row yet (the grids resume by row)."""
    done = {(r["agent"], r["action"]) for r in rows if (r["model"], r["target"], r["seed"]) == (model, target, seed)}
    return [(a, act) for a, act in agents if (a, act) not in done]


def save_merged(out: Path, record: dict, keys: dict[str, Callable[[dict], object] | None]) -> None:
    """Write ``record`` to ``out``, first adopting under a file lock what another process wrote there meanwhile:
    for each list ``record[part]``, the entries on disk whose ``keys[part](entry)`` it lacks; for each dict
    (``keys[part]`` None), the names it lacks. Two processes on disjoint parts of a grid share one file."""
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            disk = json.loads(out.read_text())
            for part, key in keys.items():
                if key is None:
                    record[part] = {**disk.get(part, {}), **record[part]}
                else:
                    have = {key(r) for r in record[part]}
                    record[part] += [r for r in disk.get(part, []) if key(r) not in have]
        write_json_atomic(out, record, indent=1)
