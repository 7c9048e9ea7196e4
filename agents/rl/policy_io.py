"""The ``policy.zip`` format: an SB3 model file whose data carries ``PolicyMeta``.

Written by the RL search (``search.py``), read by ``policy:PATH`` (``agents/policy.py``): both
go through this module, so the format is defined once.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from autoprune.envs import ENV_ID, FEATURES, OBS_VERSION
from autoprune.errors import AutopruneError

POLICY_FORMAT = "autoprune.policy/1"


@dataclass
class PolicyMeta:
    """What a policy was trained on: enough to roll it out the same way and to refuse a mismatch."""

    algo: str
    min_keep: float
    max_keep: float
    reward: str
    action: str
    metric: str
    target: float
    groups: int
    format: str = POLICY_FORMAT
    env: str = ENV_ID
    obs_version: int = OBS_VERSION
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny MLP updates run ~5-30x faster on one thread than on two busy ones (measured here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_policy(path: str | Path) -> tuple[Any, dict]:
    """(SB3 policy network in eval mode, its ``PolicyMeta`` as a dict) from a ``policy.zip``."""
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
