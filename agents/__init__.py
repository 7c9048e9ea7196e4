"""Allocators: everything that turns a ``PruningProblem`` into an ``Allocation``.

``get_allocator(spec)`` builds one by name: ``uniform``, ``random``, ``global``, ``sensitivity``,
``layer-stats``, ``greedy``, ``policy:PATH`` (a policy learned by ``autoprune search``),
``allocation:PATH`` (a saved allocation, e.g. a search's ``best_allocation.json``),
``search:N`` (EagleEye's random search with N samples: ``random`` with ``samples=N``).
"""
from __future__ import annotations

import importlib
from typing import Any

from autoprune.agents.base import Allocator
from autoprune.errors import AutopruneError

# name -> "module:Class" (imported on use, so a heuristic does not import SB3)
_REGISTRY: dict[str, str] = {
    "uniform": "autoprune.agents.uniform:UniformAllocator",
    "random": "autoprune.agents.random_search:RandomSearch",
    "ddpg": "autoprune.agents.rl:DDPGSearch",
    "td3": "autoprune.agents.rl:TD3Search",
    "sac": "autoprune.agents.rl:SACSearch",
    "global": "autoprune.agents.global_threshold:GlobalThresholdAllocator",
    "sensitivity": "autoprune.agents.sensitivity:SensitivityAllocator",
    "layer-stats": "autoprune.agents.layer_stats:LayerStatsAllocator",
    "greedy": "autoprune.agents.greedy:GreedyAllocator",
}


def register_allocator(name: str, target: str) -> None:
    _REGISTRY[name] = target


def list_allocators() -> list[str]:
    return sorted(_REGISTRY) + ["policy:PATH", "allocation:PATH", "search:N"]


def get_allocator(spec: str, **kwargs: Any) -> Allocator:
    """Build an allocator from its name (``policy:PATH`` loads a learned policy, ``allocation:PATH`` a saved budget)."""
    if spec.startswith("policy:"):
        module, cls = "autoprune.agents.policy", "PolicyAllocator"
        kwargs = {"path": spec.split(":", 1)[1], **kwargs}
    elif spec.startswith("allocation:"):
        module, cls = "autoprune.agents.saved", "SavedAllocation"
        kwargs = {"path": spec.split(":", 1)[1], **kwargs}
    elif spec.startswith("search:"):
        module, cls = _REGISTRY["random"].split(":")
        n = spec.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise AutopruneError(f"allocator '{spec}': write search:N with N a positive number of samples")
        kwargs = {"samples": int(n), **kwargs}
    elif spec in _REGISTRY:
        module, cls = _REGISTRY[spec].split(":")
    else:
        raise AutopruneError(f"unknown allocator '{spec}': use one of {', '.join(list_allocators())}")
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["Allocator", "get_allocator", "list_allocators", "register_allocator"]
