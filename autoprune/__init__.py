"""autoprune: learn per-layer channel-pruning budgets (RL, heuristics) and prune CNNs with them."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from autoprune.core.allocation import Allocation
from autoprune.core.cost import measure_cost
from autoprune.core.io import load_model, load_pruned, save_pruned
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.deploy import export
from autoprune.errors import AutopruneError


def create_model(name: str, num_classes: int = 10, checkpoint: str | Path | None = None) -> nn.Module:
    """A model by registry name; with ``checkpoint`` (plain, DataParallel or pruned), loaded from it.

    (``autoprune.models.create_model`` only builds; ``autoprune.core.io.load_model`` reads files.)
    """
    return load_model(name, num_classes, checkpoint)


__version__ = "0.1.0"
__all__ = ["Allocation", "AutopruneError", "ModelStructure", "PruningProblem", "create_model", "export",
           "load_model", "load_pruned", "measure_cost", "prune", "save_pruned"]
