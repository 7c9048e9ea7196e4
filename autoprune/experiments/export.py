"""``run_export(config)``: a pruned (or dense) model file exported to ONNX or TorchScript,
parity-checked, its report written beside it (the pipeline behind ``autoprune export``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from autoprune.core.io import load_model
from autoprune.deploy.export import FORMATS, export
from autoprune.errors import AutopruneError
from autoprune.models import model_info


@dataclass
class ExportConfig:
    model: str
    checkpoint: str
    output: str
    format: str = "onnx"
    image_size: int | None = None
    num_classes: int = 10
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    opset: int | None = None  # None: the exporter's recommended opset
    atol: float = 1e-4


HELP = {
    "model": "registry name: resnet20..110 or tv:NAME",
    "num_classes": "class count of dense weights (a pruned-model file records its own)",
    "checkpoint": "a pruned-model file from autoprune, or dense weights",
    "output": "file to write; the parity report goes to OUTPUT.json",
    "format": " or ".join(FORMATS),
    "batch_sizes": "batch sizes the parity check runs at",
    "opset": "ONNX opset; below 18 uses torch's older TorchScript-based exporter",
    "image_size": "input height and width; unset means the model's native size",
    "atol": "largest allowed max |diff| between the export and PyTorch",
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
    size = cfg.image_size or model_info(cfg.model).input_size
    report = export(model, out, cfg.format, input_size=size, batch_sizes=cfg.batch_sizes, opset=cfg.opset,
                    atol=cfg.atol)
    report.update(model=cfg.model, checkpoint=cfg.checkpoint)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
