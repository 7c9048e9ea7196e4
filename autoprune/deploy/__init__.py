"""Deployment: export to ONNX / TorchScript with parity checks."""
from autoprune.deploy.export import export

__all__ = ["export"]
