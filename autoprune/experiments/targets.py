"""The budget options of search and apply: one of --macs, --params, --latency (fractions to keep)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from autoprune.core.structure import ModelStructure
from autoprune.deploy import latency as lat
from autoprune.deploy.latency import LatencyTable
from autoprune.errors import AutopruneError


class BadTarget(argparse.ArgumentTypeError, ValueError):
    """A target that is neither a fraction nor a range (argparse prints it as the flag's one-line error)."""


def fraction_or_range(value: float | str) -> float | str:
    """``0.5`` (a fraction to keep) or ``0.25:0.75`` (a range: each episode samples its target)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value)
    parts = text.split(":")
    try:
        numbers = [float(x) for x in parts]
    except ValueError:
        raise BadTarget(f"'{text}' is neither a fraction (0.5) nor a range (0.25:0.75)") from None
    if len(numbers) == 1:
        return numbers[0]
    if len(numbers) != 2 or not numbers[0] < numbers[1]:
        raise BadTarget(f"'{text}': write a range as LOW:HIGH with LOW < HIGH")
    return text


def _bounds(value: float | str) -> tuple[float, float]:
    if isinstance(value, str):
        lo, hi = (float(x) for x in value.split(":"))
        return lo, hi
    return float(value), float(value)


_TARGET = {"parse": fraction_or_range}


@dataclass
class TargetOptions:
    macs: float | str | None = field(default=None, metadata=_TARGET)
    params: float | str | None = field(default=None, metadata=_TARGET)
    latency: float | str | None = field(default=None, metadata=_TARGET)
    latency_batch: int = 1
    latency_precision: str = "fp32"
    latency_fit: bool = True

    def resolve_range(self) -> tuple[str, float, float]:
        """(metric, lowest target, highest target) from the mutually exclusive target options."""
        given = [(m, v) for m, v in (("macs", self.macs), ("params", self.params), ("latency", self.latency))
                 if v is not None]
        if len(given) != 1:
            raise AutopruneError("give exactly one target: --macs F, --params F or --latency F (fraction to keep, "
                                 "in (0, 1])")
        metric, value = given[0]
        lo, hi = _bounds(value)
        if not 0.0 < lo <= hi <= 1.0:
            raise AutopruneError(f"--{metric} {value} is outside (0, 1]: it is the fraction of {metric} to keep")
        return metric, lo, hi

    def resolve(self) -> tuple[str, float]:
        """(metric, target) for commands that take one target, not a range."""
        metric, lo, hi = self.resolve_range()
        if lo != hi:
            raise AutopruneError(f"--{metric} takes one fraction here, not a range (ranges train budget-conditioned "
                                 "policies in search)")
        return metric, lo

    def table(self, structure: ModelStructure, round_to: int) -> LatencyTable | None:
        """The latency lookup table (measured on first use, then cached) when the target is latency."""
        if self.resolve_range()[0] != "latency":
            return None
        print(f"latency table: batch {self.latency_batch}, {self.latency_precision} (measured once, then cached)")
        table = lat.latency_table(structure, self.latency_batch, self.latency_precision, round_to)
        if not table.reliable:
            raise AutopruneError(
                f"latency at batch {self.latency_batch} is not predictable on this device: the table explains "
                f"{table.fit_r2:.2f} of what whole pruned models measured (factor {table.scale:.2f}); "
                "use --macs, or a larger --latency-batch")
        return table

    def fit(self, problem, allocation):
        """(allocation, measurements): with --latency and --latency-fit, the allocation re-scaled until
        its measured latency is within 5% of the target (``latency.fit_measured``); else unchanged."""
        if problem.latency is None or not self.latency_fit:
            return allocation, []
        fitted, rows = lat.fit_measured(problem, allocation, self.latency_precision)
        steps = " -> ".join(f"{100 * r['measured_ratio']:.1f}%" for r in rows)
        missed = "" if min(abs(r["measured_ratio"] / problem.target - 1) for r in rows) <= 0.05 else (
            f" (not within 5% after {len(rows)} measurements: out of reach within --min-keep, or too noisy to "
            "settle; the closest one is kept)")
        print(f"latency fit (batch {self.latency_batch}): measured {steps} of dense, target "
              f"{100 * problem.target:.1f}%{missed}")
        return fitted, rows

    def measured(self, model: nn.Module, dense: nn.Module, table: LatencyTable, counts) -> dict:
        """The saved model's latency, measured now against the dense model (alternating rounds, so the
        ratio does not drift with the machine), next to the table's prediction."""
        x = torch.randn(table.key["batch_size"], *table.key["input_shape"], device=next(model.parameters()).device)
        ratio, measured, dense_now = lat.paired_ratio(model, dense, x, self.latency_precision)
        return {"predicted_seconds": table.predict(counts), "measured_seconds": measured,
                "dense_seconds": table.dense, "dense_seconds_now": dense_now, "measured_ratio": ratio,
                "predicted_ratio": table.predict(counts) / table.dense,
                "batch_size": self.latency_batch, "precision": self.latency_precision}


HELP = {
    "macs": "fraction of the dense model's MACs to keep, e.g. 0.5; in search also a range, e.g. 0.25:0.75: each "
            "episode samples its target, so one policy learns every budget",
    "params": "fraction of the dense model's parameters to keep (instead of --macs)",
    "latency": "fraction of the dense model's measured latency to keep (instead of --macs): a per-layer lookup "
               "table is measured once per model, device, batch, threads and precision, and cached",
    "latency_batch": "batch size the latency is measured at",
    "latency_precision": "precision the latency is measured in (the deployed one)",
    "latency_fit": "with --latency: time the chosen allocation's pruned model and re-scale it (shape kept) until "
                   "the measured latency is within 5% of the target; --no-latency-fit trusts the table",
}

