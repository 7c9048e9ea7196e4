"""Allocators: everything that turns a ``PruningProblem`` into an ``Allocation``.

``get_allocator(spec)`` builds one by name, with options as ``name@key=value`` (the CLI's
``--allocators`` syntax): ``uniform``, ``random``, ``ddpg``/``td3``/``sac`` (an RL search),
``global``, ``tp-global`` (torch-pruning's own global pruning), ``sensitivity``, ``layer-stats``,
``greedy``, ``policy:PATH`` (a policy learned by
``autoprune search``), ``allocation:PATH`` (a saved allocation, e.g. a search's
``best_allocation.json``), ``search:N`` (EagleEye's random search with N samples:
``random@samples=N``).

Other packages add allocators through the ``autoprune.allocators`` entry-point group, each entry
naming an ``AllocatorFactory`` (a class with ``seeded = True/False``, or a ``Factory``)::

    [project.entry-points."autoprune.allocators"]
    my-budget = "my_package.budget:MyAllocator"

``register_allocator`` does the same in-process.
"""
from __future__ import annotations

from typing import Any

from autoprune.agents.base import Allocator, AllocatorFactory, Factory, MeasuresSensitivity, UsesSensitivity
from autoprune.agents.global_threshold import GlobalThresholdAllocator
from autoprune.agents.greedy import GreedyAllocator
from autoprune.agents.layer_stats import LayerStatsAllocator
from autoprune.agents.policy import PolicyAllocator
from autoprune.agents.random_search import RandomSearch
from autoprune.agents.saved import SavedAllocation
from autoprune.agents.sensitivity import SensitivityAllocator
from autoprune.agents.tp_global import TPGlobalAllocator
from autoprune.agents.uniform import UniformAllocator
from autoprune.errors import AutopruneError
from autoprune.registry import Registry, parse_spec

ENTRY_POINT_GROUP = "autoprune.allocators"
ALLOCATORS: Registry[AllocatorFactory] = Registry("allocator", entry_point_group=ENTRY_POINT_GROUP)


def _rl_search(**options: Any) -> Allocator:
    """An RL search; imported here so that SB3 loads only when one is built, not for a heuristic."""
    from autoprune.agents.rl.search import RLSearch

    return RLSearch(**options)


def _samples(n: str) -> dict[str, Any]:
    if not n.isdigit() or int(n) < 1:
        raise AutopruneError(f"allocator 'search:{n}': write search:N with N a positive number of samples")
    return {"samples": int(n)}


ALLOCATORS.register("uniform", UniformAllocator)
ALLOCATORS.register("random", RandomSearch)
for _algo in ("ddpg", "td3", "sac"):
    ALLOCATORS.register(_algo, Factory(_rl_search, seeded=True), algo=_algo)
ALLOCATORS.register("global", GlobalThresholdAllocator)
ALLOCATORS.register("tp-global", TPGlobalAllocator)
ALLOCATORS.register("sensitivity", SensitivityAllocator)
ALLOCATORS.register("layer-stats", LayerStatsAllocator)
ALLOCATORS.register("greedy", GreedyAllocator)
ALLOCATORS.register_prefix("policy:", PolicyAllocator, lambda p: {"path": p}, "policy:PATH")
ALLOCATORS.register_prefix("allocation:", SavedAllocation, lambda p: {"path": p}, "allocation:PATH")
ALLOCATORS.register_prefix("search:", RandomSearch, _samples, "search:N")


def register_allocator(name: str, factory: AllocatorFactory, **preset: Any) -> None:
    """Add an allocator under ``name``: a class or ``Factory`` declaring ``seeded``, plus preset options."""
    ALLOCATORS.register(name, factory, **preset)


def list_allocators() -> list[str]:
    return ALLOCATORS.names()


def allocator_factory(spec: str) -> AllocatorFactory:
    """The factory a spec names (checked to declare ``seeded``: a plugin's contract)."""
    factory = ALLOCATORS.lookup(spec)
    if not isinstance(getattr(factory, "seeded", None), bool):
        raise AutopruneError(f"allocator '{parse_spec(spec)[0]}' does not declare seeded = True or False: "
                             "add it to its class (or wrap it in autoprune.agents.Factory)")
    return factory


def get_allocator(spec: str, **kwargs: Any) -> Allocator:
    """Build an allocator from its spec (``name``, ``name@key=value``, ``policy:PATH``, ...)."""
    return ALLOCATORS.build(spec, **kwargs)


__all__ = ["ALLOCATORS", "ENTRY_POINT_GROUP", "Allocator", "AllocatorFactory", "Factory", "MeasuresSensitivity",
           "UsesSensitivity", "allocator_factory", "get_allocator", "list_allocators", "register_allocator"]
