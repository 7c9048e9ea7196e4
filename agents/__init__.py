"""Allocators: everything that turns a ``PruningProblem`` into an ``Allocation``.

``get_allocator(spec)`` builds one by name, with options as ``name@key=value``: ``uniform``,
``random``, ``ddpg``/``td3``/``sac`` (an RL search), ``global``, ``sensitivity``, ``layer-stats``,
``greedy``, ``policy:PATH`` (a policy learned by ``autoprune search``), ``allocation:PATH`` (a
saved allocation, e.g. a search's ``best_allocation.json``), ``search:N`` (EagleEye's random
search with N samples: ``random@samples=N``). Targets are imported on use, so a heuristic does
not import SB3.
"""
from __future__ import annotations

from typing import Any

from autoprune.agents.base import Allocator
from autoprune.errors import AutopruneError
from autoprune.registry import Registry

ALLOCATORS: Registry[Allocator] = Registry("allocator")
ALLOCATORS.register("uniform", "autoprune.agents.uniform:UniformAllocator")
ALLOCATORS.register("random", "autoprune.agents.random_search:RandomSearch")
for _algo in ("ddpg", "td3", "sac"):
    ALLOCATORS.register(_algo, "autoprune.agents.rl.search:RLSearch", algo=_algo)
ALLOCATORS.register("global", "autoprune.agents.global_threshold:GlobalThresholdAllocator")
ALLOCATORS.register("sensitivity", "autoprune.agents.sensitivity:SensitivityAllocator")
ALLOCATORS.register("layer-stats", "autoprune.agents.layer_stats:LayerStatsAllocator")
ALLOCATORS.register("greedy", "autoprune.agents.greedy:GreedyAllocator")


def _samples(n: str) -> dict[str, Any]:
    if not n.isdigit() or int(n) < 1:
        raise AutopruneError(f"allocator 'search:{n}': write search:N with N a positive number of samples")
    return {"samples": int(n)}


ALLOCATORS.register_prefix("policy:", "autoprune.agents.policy:PolicyAllocator", lambda p: {"path": p}, "policy:PATH")
ALLOCATORS.register_prefix("allocation:", "autoprune.agents.saved:SavedAllocation", lambda p: {"path": p},
                           "allocation:PATH")
ALLOCATORS.register_prefix("search:", "autoprune.agents.random_search:RandomSearch", _samples, "search:N")


def register_allocator(name: str, target: Any, **preset: Any) -> None:
    """Add an allocator: a class/factory, or ``"module:Class"`` imported on first use."""
    ALLOCATORS.register(name, target, **preset)


def list_allocators() -> list[str]:
    return ALLOCATORS.names()


def get_allocator(spec: str, **kwargs: Any) -> Allocator:
    """Build an allocator from its spec (``name``, ``name@key=value``, ``policy:PATH``, ...)."""
    return ALLOCATORS.build(spec, **kwargs)


__all__ = ["ALLOCATORS", "Allocator", "get_allocator", "list_allocators", "register_allocator"]
