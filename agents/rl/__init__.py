"""Learned allocators: AMC-flavoured SB3 agents (DDPG, TD3, SAC) searching over ``ChannelPruningEnv``.

``config`` (settings), ``amc`` (the agents), ``checkpoint`` (exact resume), ``search`` (the loop),
``policy_io`` (the ``policy.zip`` format: JSON + safetensors), ``legacy`` (converting old SB3 zips).
SB3 is imported only when the search is.
"""
from typing import Any

from autoprune.agents.rl.config import RLConfig


def __getattr__(name: str) -> Any:
    if name == "RLSearch":
        from autoprune.agents.rl import search

        return getattr(search, name)
    raise AttributeError(name)


__all__ = ["RLConfig", "RLSearch"]
