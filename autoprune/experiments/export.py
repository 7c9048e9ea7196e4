"""``run_export(config)``: a pruned (or dense) model file exported to ONNX or TorchScript,
parity-checked, its report written beside it (the pipeline behind ``autoprune export``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from autoprune.core.io import load_model, pruned_meta
from autoprune.deploy.export import FORMATS, ParityError, export
from autoprune.errors import AutopruneError
from autoprune.models import input_hw, model_info, parse_input_size


@dataclass
class ExportConfig:
    model: str
    checkpoint: str
    output: str
    format: str = "onnx"
    input_size: int | str | None = field(default=None, metadata={"parse": parse_input_size})
    num_classes: int = 10
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    opset: int | None = None  # None: the exporter's recommended opset
    rtol: float = 1e-3
    atol: float = 1e-4


HELP = {
    "model": "registry name: resnet20..110 or tv:NAME",
    "num_classes": "class count of dense weights (a pruned-model file records its own)",
    "checkpoint": "a pruned-model file from autoprune, or dense weights",
    "output": "file to write; the parity report goes to OUTPUT.json",
    "format": " or ".join(FORMATS),
    "batch_sizes": "batch sizes the parity check runs at",
    "opset": "ONNX opset; below 18 uses torch's older TorchScript-based exporter",
    "input_size": "input size (H or HxW) the export is checked at; unset: the one the pruned model was counted at, "
                  "else the model's own",
    "rtol": "parity check as numpy.allclose: |export - PyTorch| <= atol + rtol * |PyTorch|, element-wise",
    "atol": "absolute part of the parity check (see rtol)",
}


def run_export(cfg: ExportConfig) -> dict:
    """Export ``cfg.checkpoint`` to ``cfg.output`` and write the parity report to ``OUTPUT.json``;
    returns the report. Refuses to overwrite either file."""
    out = Path(cfg.output)
    report_path = out.with_name(out.name + ".json")
    for p in (out, report_path):
        if p.exists():
            raise AutopruneError(f"'{p}' already exists: remove it or choose another --output")
    if not Path(cfg.checkpoint).is_file():
        raise AutopruneError(f"checkpoint '{cfg.checkpoint}' not found: check the path")
    # create_model reads both kinds of file: pruned-model files via load_pruned, dense weights strictly
    model = load_model(cfg.model, cfg.num_classes, cfg.checkpoint)
    size = input_hw(cfg.input_size or pruned_meta(cfg.checkpoint).get("input_size") or model_info(cfg.model).input_size)
    try:
        report = export(model, out, cfg.format, input_size=size, batch_sizes=cfg.batch_sizes, opset=cfg.opset,
                        rtol=cfg.rtol, atol=cfg.atol)
    except ParityError as exc:  # the file is kept: write what the check found beside it, then fail
        exc.report.update(model=cfg.model, checkpoint=cfg.checkpoint)
        report_path.write_text(json.dumps(exc.report, indent=2) + "\n")
        raise
    report.update(model=cfg.model, checkpoint=cfg.checkpoint)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
