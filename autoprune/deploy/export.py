"""Export a (pruned) model to ONNX or TorchScript, and prove the file computes what the model does.

The parity check runs the written file through an independent runtime (onnxruntime, or
``torch.jit.load`` of the saved TorchScript) on random inputs at the model's input size and several
batch sizes and compares with PyTorch within a relative tolerance, so a broken export fails here
instead of at deployment.
"""
from __future__ import annotations

import copy
import importlib
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from autoprune.errors import AutopruneError

FORMATS = ("onnx", "torchscript")
DEPLOY_HINT = "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'autoprune[deploy]'"
# Example batch for tracing/export: torch.export specialises size-1 dims, and a batch not among the
# checked sizes makes the parity check also test that the batch axis really is dynamic.
_EXAMPLE_BATCH = 2
# ONNX protobufs cannot exceed 2 GB; above this the weights go to a side file '<path>.data'.
_EXTERNAL_DATA_BYTES = 1_800_000_000
_DYNAMO_MIN_OPSET = 18

Runner = Callable[[torch.Tensor], np.ndarray]


def _import_onnx_stack() -> tuple[object, object]:
    """onnx, onnxruntime (and onnxscript, which torch's default exporter needs), or the one-line hint."""
    try:
        onnx = importlib.import_module("onnx")
        importlib.import_module("onnxscript")
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        raise AutopruneError(DEPLOY_HINT) from None
    return onnx, ort


def _export_onnx(model: nn.Module, path: Path, example: torch.Tensor, opset: int | None) -> tuple[Runner, int, str]:
    onnx, ort = _import_onnx_stack()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter; the parity check below is what counts
            if opset is not None and opset < _DYNAMO_MIN_OPSET:
                # the default (torch.export-based) exporter emits opset >= 18 and its down-conversion fails on
                # common ops (Pad); the legacy TorchScript-based exporter writes opsets 7..20 natively
                method = "torchscript-onnx"
                # with gradients off, nn.MultiheadAttention takes a fused fast path this exporter has no ONNX op for
                with torch.enable_grad():
                        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                                      opset_version=opset, dynamo=False)
            else:
                method = "dynamo"  # torch's default exporter; dynamic_shapes replaces dynamic_axes there
                big = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > _EXTERNAL_DATA_BYTES
                torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                  external_data=big, verbose=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AutopruneError(f"ONNX export failed ({type(exc).__name__}: {first}): try --format torchscript") from None
    used = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx"))
    if opset is not None and used != opset:
        raise AutopruneError(f"the ONNX exporter could not target opset {opset} (it wrote opset {used}): "
                             f"pass --opset {used}, or leave it out")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return (lambda x: session.run(["logits"], {"input": x.numpy()})[0]), used, method


def _export_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> tuple[Runner, str]:
    """Trace (keeps every Python-side detail of the forward); script only if tracing fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit as deprecated; still the TS API
        try:
            module, method = torch.jit.trace(model, example), "trace"
        except Exception:
            try:
                module, method = torch.jit.script(model), "script"
            except Exception as exc:
                raise AutopruneError(f"TorchScript export failed: neither trace nor script works "
                                     f"({type(exc).__name__}): try --format onnx") from None
        module.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return run, method


def _files(path: Path) -> list[Path]:
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


def _parity(model: nn.Module, run: Runner, batch_sizes: Sequence[int], input_hw: tuple[int, int], gen: torch.Generator,
            rtol: float, atol: float) -> tuple[dict[str, float], dict[str, float], str | None]:
    """Per batch size on random inputs: max |export - PyTorch|, and the worst ratio of a difference to
    what ``numpy.allclose`` allows (``atol + rtol * |PyTorch|``; above 1 fails). The failure, if any, in words."""
    diffs: dict[str, float] = {}
    ratios: dict[str, float] = {}
    failure = None
    for b in batch_sizes:
        x = torch.randn(int(b), 3, *input_hw, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        out = run(x)
        if out.shape != ref.shape:
            diffs[str(b)], ratios[str(b)] = float("inf"), float("inf")
            failure = failure or f"output shape {out.shape} != {ref.shape} at batch {b}"
            continue
        err = np.abs(out.astype(np.float64) - ref)
        allowed = atol + rtol * np.abs(ref.astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero tolerance: any difference is infinitely over
            ratio = np.where(err == 0, 0.0, err / allowed)
        diffs[str(b)] = float(err.max())
        ratios[str(b)] = float(ratio.max())
        if not np.isfinite(out).all() or not ratios[str(b)] <= 1.0:  # also catches NaN
            i = np.unravel_index(np.argmax(np.nan_to_num(ratio, nan=np.inf)), err.shape)
            where = f" (worst: {float(out[i]):.6g} vs {float(ref[i]):.6g})"
            failure = failure or (f"at batch {b}, max |diff| {diffs[str(b)]:.3g} is {ratios[str(b)]:.3g}x what "
                                  f"rtol {rtol:g} + atol {atol:g} allow{where}")
    return diffs, ratios, failure


class ParityError(AutopruneError):
    """The export was written but does not match PyTorch within tolerance; ``report`` says by how much."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def export(model: nn.Module, path: str | Path, format: str = "onnx", *, input_size: int | tuple[int, int],
           batch_sizes: Sequence[int] = (1, 4), opset: int | None = None, rtol: float = 1e-3,
           atol: float = 1e-4) -> dict:
    """Write ``model`` (fp32, CPU, eval mode) as ONNX or TorchScript and check parity; return a report.

    The check is ``numpy.allclose``'s, ``|export - PyTorch| <= atol + rtol * |PyTorch|`` element-wise, on
    random inputs at ``input_size`` (the model's own): a fixed absolute tolerance fails models whose
    outputs are large. A failed check raises ``ParityError`` (its ``report`` says how far off) and keeps
    the file, so a user can judge it; a failed export leaves no file. The caller's model is not modified.
    """
    if format not in FORMATS:
        raise AutopruneError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise AutopruneError(f"batch sizes {list(batch_sizes)} must be positive integers")
    if format == "onnx":
        _import_onnx_stack()  # before anything is written
    hw = (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(_EXAMPLE_BATCH, 3, *hw, generator=gen)
    try:
        with torch.no_grad():
            if format == "onnx":
                run, used_opset, method = _export_onnx(model, path, example, opset)
            else:
                (run, method), used_opset = _export_torchscript(model, path, example), None
    except AutopruneError:
        for p in _files(path):  # an export that failed leaves nothing behind
            p.unlink()
        raise
    diffs, ratios, failure = _parity(model, run, batch_sizes, hw, gen, rtol, atol)
    report = {"format": format, "path": str(path), "method": method, "opset": used_opset,
              "input_size": hw[0] if hw[0] == hw[1] else list(hw), "batch_sizes": [int(b) for b in batch_sizes],
              "rtol": rtol, "atol": atol, "max_abs_diff": diffs, "max_tolerance_ratio": ratios,
              "parity_ok": failure is None, "file_bytes": sum(p.stat().st_size for p in _files(path))}
    if failure is not None:
        raise ParityError(f"export parity failed: {failure}; the {format} file is kept at {path} (use it only if "
                          "that error is acceptable; --rtol/--atol set the check, or try the other --format)", report)
    return report


__all__ = ["export", "FORMATS", "DEPLOY_HINT", "ParityError"]
