"""autoprune: learn per-layer channel-pruning budgets (RL, heuristics) and prune CNNs with them."""
from autoprune.core.allocation import Allocation
from autoprune.core.cost import measure_cost
from autoprune.core.io import load_model, load_pruned, save_pruned
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import prune
from autoprune.core.scoring import Score, Scorer
from autoprune.core.structure import ModelStructure
from autoprune.deploy import export
from autoprune.errors import AutopruneError

__version__ = "0.1.0"
__all__ = ["Allocation", "AutopruneError", "ModelStructure", "PruningProblem", "Score", "Scorer", "export",
           "load_model", "load_pruned", "measure_cost", "prune", "save_pruned"]
