"""Wall-clock latency of a forward pass, alone or paired with a reference model."""
from __future__ import annotations

import copy
import statistics

import torch
import torch.nn as nn

from autoprune.train.precision import Precision, resolve_precision


def measure_latency(model: nn.Module, x: torch.Tensor, precision: Precision | str = "fp32",
                    min_run_time: float = 0.02) -> float:
    """Median seconds of one forward pass of ``x`` (eval mode, the precision's autocast and memory
    format) by ``torch.utils.benchmark``'s ``blocked_autorange``, at this process's thread count
    (``Timer`` would default to one). Timed on a copy: ``model`` itself is left as it was."""
    # imported here: torch.utils.benchmark pulls in the C++ extension loader, which warns on import
    # on machines with a CUDA toolkit but no GPU (every command would print it)
    from torch.utils.benchmark import Timer

    prec = resolve_precision(precision, x.device)
    model = copy.deepcopy(model).eval().to(memory_format=prec.memory_format)
    x = x.contiguous(memory_format=prec.memory_format) if x.dim() == 4 else x
    timer = Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
    with torch.inference_mode(), prec.autocast():
        return timer.blocked_autorange(min_run_time=min_run_time).median


def paired_ratio(model: nn.Module, reference: nn.Module, x: torch.Tensor, precision: Precision | str = "fp32",
                 min_run_time: float = 0.5, rounds: int = 10) -> tuple[float, float, float]:
    """(model's latency / reference's, model seconds, reference seconds), timed in alternating rounds,
    each side ``min_run_time`` seconds in all.

    The ratio is the median of the per-round ratios: a clock that drifts (a shared VM's CPU slowing
    down within one run) moves both sides of a round alike, so it cancels out of the ratio."""
    per_round = min_run_time / max(1, rounds)
    mine, theirs = [], []
    for _ in range(rounds):
        theirs.append(measure_latency(reference, x, precision, per_round))
        mine.append(measure_latency(model, x, precision, per_round))
    ratio = statistics.median(m / r for m, r in zip(mine, theirs))
    return ratio, statistics.median(mine), statistics.median(theirs)
