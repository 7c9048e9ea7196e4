"""``autoprune export``: a pruned (or dense) model file to ONNX or TorchScript, parity-checked.

The pipeline is ``autoprune.experiments.export.run_export``; this command parses, calls and prints.
"""
from __future__ import annotations

from pathlib import Path

from autoprune.config import add_config_args, resolve_config
from autoprune.experiments.export import HELP as FIELD_HELP
from autoprune.experiments.export import ExportConfig, run_export

NAME = "export"
HELP = "Export a model (or pruned model file) to ONNX or TorchScript, checking its outputs against PyTorch."


def add_arguments(parser) -> None:
    add_config_args(parser, ExportConfig, FIELD_HELP)


def run(args) -> None:
    cfg = resolve_config(ExportConfig, args)
    report = run_export(cfg)
    worst = max(report["max_abs_diff"].values())
    opset = f", opset {report['opset']}" if report["opset"] is not None else ""
    size = report["input_size"]
    size = f"{size}x{size}" if isinstance(size, int) else "x".join(map(str, size))
    print(f"exported {cfg.model} to {Path(cfg.output)} ({cfg.format}{opset}, {report['file_bytes'] / 1e6:.2f} MB): "
          f"parity ok at {size} px, max |diff| {worst:.3g} (within rtol {cfg.rtol:g} + atol {cfg.atol:g}) at batch "
          f"{', '.join(map(str, report['batch_sizes']))}")
