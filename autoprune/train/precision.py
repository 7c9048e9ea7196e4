"""Numeric precision of forward/backward passes: ``--precision {auto,fp32,bf16,fp16}``.

Mixed precision only: weights, BatchNorm running statistics, the loss and the optimizer state stay
fp32; convolutions and matmuls run in bf16/fp16 under ``torch.autocast``. ``auto`` picks bf16 on a
CPU with native bf16 instructions (AVX-512 BF16 or AMX, detected, not guessed from the CPU name),
bf16 on a CUDA GPU that supports it (else fp16 with a gradient scaler), fp32 otherwise.

Channels-last memory format is used on CPU (oneDNN's convolutions prefer it, for training and
inference, fp32 and bf16) and with AMP on CUDA (tensor cores); ``python -m bench.precision speed``
measures it on the machine at hand.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from autoprune.errors import AutopruneError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX tiles, as torch's own CPU capability probes report them."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is not None for p in probes):
        return any(bool(p()) for p in probes if p is not None)
    try:  # older torch: the kernel's own flags
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Precision:
    """A resolved precision for one device: ``name`` is fp32, bf16 or fp16."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES.get(self.name, torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling; bf16 has fp32's exponent range and does not."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    @property
    def memory_format(self) -> torch.memory_format:
        """Channels-last where it is faster: always on CPU, with AMP on CUDA (tensor cores)."""
        fast = self.device_type == "cpu" or self.name != "fp32"
        return torch.channels_last if fast else torch.contiguous_format


def resolve_precision(spec: str | Precision, device: torch.device | str) -> Precision:
    """``auto``/``fp32``/``bf16``/``fp16`` -> a precision the device can run (else a one-line error)."""
    device = torch.device(device)
    if isinstance(spec, Precision):
        return spec
    if spec not in PRECISIONS:
        raise AutopruneError(f"unknown precision '{spec}': use one of {', '.join(PRECISIONS)}")
    kind = device.type
    if kind == "cuda":
        if spec == "auto":
            spec = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif spec == "bf16" and not torch.cuda.is_bf16_supported():
            raise AutopruneError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32")
        return Precision(spec, kind)
    if kind == "cpu":
        if spec == "auto":
            spec = "bf16" if cpu_has_native_bf16() else "fp32"
        elif spec == "bf16" and not cpu_has_native_bf16():
            raise AutopruneError("--precision bf16: this CPU has no native bf16 instructions (AVX-512 BF16 or AMX) "
                                 "and would emulate it slowly; use fp32 (or auto)")
        elif spec == "fp16":
            raise AutopruneError("--precision fp16 is for CUDA GPUs; on a CPU use bf16 (if supported) or fp32")
        return Precision(spec, kind)
    if spec not in ("auto", "fp32"):
        raise AutopruneError(f"--precision {spec} is not supported on device '{kind}': use fp32")
    return Precision("fp32", kind)
