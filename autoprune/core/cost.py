"""The cost model and its oracle.

``CostTable`` holds every weighted module's MACs and parameters as linear functions of the
channels each group removes, so any allocation is costed with a few numpy products (the
environment does this at every step). ``measure_cost`` measures a real model with torch's
``FlopCounterMode``: the independent check of the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

GroupRefs = tuple[tuple[int, int], ...]  # (group index, channels of this module per channel of the group)


@dataclass(frozen=True)
class CostRow:
    """One module (or loose parameter) of the cost table, at its dense size.

    ``kind`` is "conv", "dwconv" or "linear" (weighted: MACs and parameters) or "channel" (BN,
    LayerNorm, loose parameters: parameters that scale with one channel count, held in ``out_channels``).
    """

    kind: str
    out_channels: int
    in_channels: int
    out_refs: GroupRefs  # the groups that cut this module's output channels
    in_refs: GroupRefs  # the groups that cut its input channels
    params: int  # parameters the module owns (loose parameters have rows of their own)
    name: str | None = None  # module name, for weighted modules
    conv_groups: int = 1
    kernel_area: int = 1  # kernel height x width
    spatial: float = 0.0  # output positions per image
    bias: bool = False


class CostTable:
    """MACs and parameters of every weighted module as linear functions of channels removed."""

    def __init__(self) -> None:
        self.rows: list[CostRow] = []

    def finish(self, n_groups: int) -> None:
        n = len(self.rows)
        self.out0 = np.array([r.out_channels for r in self.rows], dtype=np.float64)
        self.in0 = np.array([r.in_channels for r in self.rows], dtype=np.float64)
        self.a_out = np.zeros((n, n_groups))
        self.a_in = np.zeros((n, n_groups))
        for i, r in enumerate(self.rows):
            for g, mult in r.out_refs:
                self.a_out[i, g] += mult
            for g, mult in r.in_refs:
                self.a_in[i, g] += mult
        self.kind = np.array([r.kind for r in self.rows])
        self.groups0 = np.array([r.conv_groups for r in self.rows], dtype=np.float64)
        self.kk = np.array([r.kernel_area for r in self.rows], dtype=np.float64)
        self.spatial = np.array([r.spatial for r in self.rows], dtype=np.float64)
        self.bias = np.array([r.bias for r in self.rows], dtype=np.float64)
        self.numel0 = np.array([r.params for r in self.rows], dtype=np.float64)
        self.is_mac = np.isin(self.kind, ("conv", "dwconv", "linear"))

    def shapes(self, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.out0 - self.a_out @ removed, self.in0 - self.a_in @ removed

    def macs(self, removed: np.ndarray) -> float:
        out, inn = self.shapes(removed)
        per_out = np.where(self.kind == "dwconv", self.in0 / self.groups0, inn / self.groups0)
        m = self.spatial * out * per_out * self.kk
        return float(np.round(m[self.is_mac].sum()))

    def params(self, removed: np.ndarray) -> float:
        out, inn = self.shapes(removed)
        per_out = np.where(self.kind == "dwconv", self.in0 / self.groups0, inn / self.groups0)
        weighted = out * per_out * self.kk + self.bias * out
        # per-channel modules (BN, LayerNorm, loose parameters) scale with their channel count
        scale = np.divide(out, self.out0, out=np.ones_like(out), where=self.out0 > 0)
        p = np.where(self.is_mac, weighted, self.numel0 * scale)
        return float(np.round(p.sum()))


_MAC_OPS = ("convolution", "addmm", "mm")  # what conv and linear layers run as, however they are called


def counted_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Conv + linear multiply-accumulates per image of one eval-mode forward pass, as torch's
    ``FlopCounterMode`` counts them (2 FLOPs per MAC): it sees layers applied functionally too (Swin's
    ``F.linear(x, self.qkv.weight)``), which forward hooks miss."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_input[:1])
    finally:
        model.train(was_training)
    ops = counter.get_flop_counts().get("Global", {})
    return int(sum(v for op, v in ops.items() if str(op).split(".")[1] in _MAC_OPS) // 2)


def measure_cost(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Measured (conv + linear MACs per image, parameters) of a real model: the oracle of the cost table."""
    return counted_macs(model, example_input), sum(p.numel() for p in model.parameters())
