"""The budget options of search and apply: one of --macs, --params, --latency (fractions to keep)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from autoprune.core.structure import ModelStructure
from autoprune.deploy.latency import LatencyTable, latency_table, measure_latency
from autoprune.errors import AutopruneError


@dataclass
class TargetOptions:
    macs: float | None = None
    params: float | None = None
    latency: float | None = None
    latency_batch: int = 1
    latency_precision: str = "fp32"

    def resolve(self) -> tuple[str, float]:
        """(metric, target) from the mutually exclusive target options."""
        given = [(m, v) for m, v in (("macs", self.macs), ("params", self.params), ("latency", self.latency))
                 if v is not None]
        if len(given) != 1:
            raise AutopruneError("give exactly one target: --macs F, --params F or --latency F (fraction to keep, "
                                 "in (0, 1])")
        metric, value = given[0]
        if not 0.0 < value <= 1.0:
            raise AutopruneError(f"--{metric} {value} is outside (0, 1]: it is the fraction of {metric} to keep")
        return metric, float(value)

    def table(self, structure: ModelStructure, round_to: int) -> LatencyTable | None:
        """The latency lookup table (measured on first use, then cached) when the target is latency."""
        if self.resolve()[0] != "latency":
            return None
        print(f"latency table: batch {self.latency_batch}, {self.latency_precision} (measured once, then cached)")
        return latency_table(structure, self.latency_batch, self.latency_precision, round_to)

    def measured(self, model: nn.Module, table: LatencyTable, counts) -> dict:
        """The saved model's measured latency next to the table's prediction."""
        x = torch.randn(table.key["batch_size"], *table.key["input_shape"], device=next(model.parameters()).device)
        measured = measure_latency(model, x, self.latency_precision, repeats=50)
        return {"predicted_seconds": table.predict(counts), "measured_seconds": measured,
                "dense_seconds": table.dense, "measured_ratio": measured / table.dense,
                "batch_size": self.latency_batch, "precision": self.latency_precision}


HELP = {
    "macs": "fraction of the dense model's MACs to keep, e.g. 0.5",
    "params": "fraction of the dense model's parameters to keep (instead of --macs)",
    "latency": "fraction of the dense model's measured latency to keep (instead of --macs): a per-group lookup "
               "table is measured once per model, device, batch, threads and precision, and cached",
    "latency_batch": "batch size the latency is measured at",
    "latency_precision": "precision the latency is measured in (the deployed one)",
}

