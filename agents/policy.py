"""``policy:PATH``: a policy learned by ``autoprune search``, rolled out deterministically on any problem."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.envs import ENV_ID, FEATURES, OBS_VERSION, ChannelPruningEnv, rollout
from autoprune.errors import AutopruneError

POLICY_FORMAT = "autoprune.policy/1"


def load_policy(path: str | Path) -> tuple[Any, dict]:
    """(SB3 policy network in eval mode, autoprune metadata) from a ``policy.zip``."""
    from stable_baselines3.common.save_util import load_from_zip_file

    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"policy file '{path}' not found: pass the policy.zip of an autoprune search run")
    try:
        data, params, _ = load_from_zip_file(path, device="cpu", print_system_info=False)
    except Exception as exc:
        raise AutopruneError(f"policy file '{path}' cannot be read ({type(exc).__name__}): is it a policy.zip "
                             "written by autoprune search?") from None
    meta = (data or {}).get("autoprune_meta")
    if not isinstance(meta, dict) or meta.get("format") != POLICY_FORMAT or "policy" not in (params or {}):
        raise AutopruneError(f"policy file '{path}' was not written by autoprune search (no autoprune metadata)")
    if meta.get("env") != ENV_ID or meta.get("obs_version") != OBS_VERSION or meta.get("features") != list(FEATURES):
        raise AutopruneError(f"policy file '{path}' was trained on another observation layout "
                             f"({meta.get('env')} v{meta.get('obs_version')}): retrain it with this autoprune version")
    try:
        policy = data["policy_class"](data["observation_space"], data["action_space"], lambda _: 0.0,
                                      **data.get("policy_kwargs", {}))
        policy.load_state_dict(params["policy"])
    except Exception as exc:
        raise AutopruneError(f"policy file '{path}' does not match its own network ({type(exc).__name__}): "
                             "is it corrupt?") from None
    policy.set_training_mode(False)
    return policy, meta


class PolicyAllocator:
    """Roll a saved policy out on ``problem`` (the env's wall keeps it within budget)."""

    name = "policy"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.policy, self.meta = load_policy(self.path)

    def allocate(self, problem: PruningProblem) -> Allocation:
        env = ChannelPruningEnv(problem, evaluate=False, action=self.meta.get("action", "absolute"))
        if env.observation_space.shape != self.policy.observation_space.shape:
            raise AutopruneError(f"policy '{self.path}' expects observations of shape "
                                 f"{self.policy.observation_space.shape}, this env gives {env.observation_space.shape}")

        def act(obs: np.ndarray) -> np.ndarray:
            from autoprune.agents.rl import _one_thread

            with _one_thread():
                return self.policy.predict(obs, deterministic=True)[0]

        return rollout(env, act)["allocation"]
