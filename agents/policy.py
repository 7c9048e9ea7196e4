"""``policy:PATH``: a policy learned by ``autoprune search``, rolled out deterministically on any problem.

The file is read without unpickling anything (``policy_io``), so a policy from anyone can be applied.
The policy reads each group's sensitivity: with a scorer it is measured (one sweep, cached by the
scorer; or handed over as ``sensitivity``); without one (no held-out data) those features read 1,
nothing measured, ``sensitivity`` actions centre on the even count instead, and the budget still holds."""
from __future__ import annotations

from pathlib import Path

from autoprune.agents.rl.policy_io import load_policy
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.core.sensitivity import FEATURE_RATIOS, SensitivityTable, measure_sensitivity
from autoprune.envs import ChannelPruningEnv, rollout
from autoprune.errors import AutopruneError


class PolicyAllocator:
    """Roll a saved policy out on ``problem`` (the env's wall keeps it within budget)."""

    name = "policy"
    seeded = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.policy, self.meta = load_policy(self.path)
        self.rates = FEATURE_RATIOS
        self.sensitivity: SensitivityTable | None = None  # ``UsesSensitivity``

    @property
    def score(self) -> str:
        """The score the policy's sensitivity features were measured with (adaptive-bn for files that do not say)."""
        return self.meta.get("score") or "adaptive-bn"

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        table = self.sensitivity
        if table is not None:
            table.check(problem, scorer.evaluator.kind if scorer is not None else None)
        elif scorer is not None:
            table = measure_sensitivity(problem, scorer)
        env = ChannelPruningEnv(problem, evaluate=False, action=self.meta["action"], sensitivity=table,
                                relative_span=self.meta.get("relative_span", 1.0))
        if env.observation_space.shape != self.policy.observation_shape:
            raise AutopruneError(f"policy '{self.path}' expects observations of shape "
                                 f"{self.policy.observation_shape}, this env gives {env.observation_space.shape}")
        return rollout(env, self.policy.act)["allocation"]
