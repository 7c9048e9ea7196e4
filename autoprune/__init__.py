"""autoprune: learn per-layer channel-pruning budgets (RL, heuristics) and prune CNNs with them."""
from .allocation import Allocation
from .errors import AutopruneError
from .deploy import export
from .models import create_model
from .problem import PruningProblem
from .pruning import load_pruned, prune, save_pruned
from .structure import ModelStructure, measure_cost

__version__ = "0.1.0"
__all__ = ["Allocation", "AutopruneError", "ModelStructure", "PruningProblem", "create_model", "export",
           "load_pruned", "measure_cost", "prune", "save_pruned"]
