"""The latency lookup table: a dense latency and the change an allocation makes to it.

Two layouts (``method``), filled in by ``latency_measure``:

* ``layers`` (NetAdapt): every conv (with a BatchNorm and ReLU behind it) and linear layer timed on
  its own over a grid of (input, output) channel counts. A layer's width follows from the allocation
  through the structure's cost table, so a cut that shrinks both sides of a layer is priced as such.
  Conv kernels work on blocks of channels (oneDNN: 16 fp32 channels on AVX-512; GPUs' tensor cores: 8),
  so time is a staircase in the channel count, not a line: 20 output channels cost what 32 do. A count
  is therefore rounded up to ``quantum`` channels before it is looked up on a grid that sits on
  multiples of the quantum: exact where the grid holds every multiple, interpolated between grid
  points on wider layers.
* ``groups``: the whole model timed with one group cut to a few widths (the others dense); the
  groups' changes are added up, which misses how cuts on both sides of a layer interact.

Either way an allocation's latency is the dense latency plus the table's change, times one factor
(``scale``) fitted on a few whole pruned models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

TABLE_FORMAT = "autoprune.latency/4"
METHODS = ("layers", "groups")
QUANTUM = 8  # channel block the layer grid sits on (see the module docstring)


@dataclass
class LatencyTable:
    """Dense latency and the change an allocation makes to it: ``predict(counts)`` in seconds."""

    key: dict
    dense: float
    widths: list[list[int]] = field(default_factory=list)  # groups: per group, ascending, last = dense width
    deltas: list[list[float]] = field(default_factory=list)  # groups: seconds added (<= 0) at those widths
    scale: float = 1.0  # calibration: measured joint change / the table's change
    channels: list[int] = field(default_factory=list)  # layers: the groups' dense widths
    layers: list[dict] = field(default_factory=list)  # layers: channel maps, (in, out) grid and its times
    # share of the calibration models' measured changes the table explains (1 - SSE / sum of squares)
    fit_r2: float | None = None
    quantum: int = 1  # layers: counts are rounded up to a multiple of this before lookup (kernels' channel blocks)

    @property
    def reliable(self) -> bool:
        """The table explains most of what whole pruned models measured (and they are faster, not slower)."""
        return self.scale > 0 and (self.fit_r2 is None or self.fit_r2 >= 0.5)

    def summed(self, counts: Sequence[int] | np.ndarray) -> float:
        """The table's change from the dense latency (seconds, before ``scale``)."""
        if self.layers:
            return self._layer_time(counts) - self._layer_time(self.channels)
        return float(sum(np.interp(float(k), w, d) for k, w, d in zip(counts, self.widths, self.deltas)))

    def predict(self, counts: Sequence[int] | np.ndarray) -> float:
        return self.dense + self.scale * self.summed(counts)

    def _layer_time(self, counts: Sequence[int] | np.ndarray) -> float:
        removed = np.asarray(self.channels, dtype=np.float64) - np.asarray(counts, dtype=np.float64)
        q = self.quantum
        total = 0.0
        for layer in self.layers:
            c_in = layer["in0"] - sum(m * removed[g] for g, m in layer["in_refs"])
            c_out = layer["out0"] - sum(m * removed[g] for g, m in layer["out_refs"])
            c_in, c_out = (min(q * math.ceil(c / q - 1e-9), full) if refs else c
                           for c, full, refs in ((c_in, layer["in0"], layer["in_refs"]),
                                                 (c_out, layer["out0"], layer["out_refs"])))
            along_out = [np.interp(c_out, layer["out"], row) for row in layer["times"]]
            total += float(np.interp(c_in, layer["in"], along_out))
        return total
