import pytest

from autoprune.agents import get_allocator
from autoprune.agents.uniform import UniformAllocator
from autoprune.core.problem import PruningProblem
from autoprune.errors import AutopruneError


def test_saved_allocation_round_trips_and_checks_the_budget(tmp_path, resnet20_structure):
    s = resnet20_structure
    alloc = UniformAllocator().allocate(PruningProblem(s, 0.5))
    alloc.save(tmp_path / "a.json", s)
    assert get_allocator(f"allocation:{tmp_path / 'a.json'}").allocate(PruningProblem(s, 0.5)) == alloc
    with pytest.raises(AutopruneError, match="made for another target"):
        get_allocator(f"allocation:{tmp_path / 'a.json'}").allocate(PruningProblem(s, 0.3))
    with pytest.raises(AutopruneError, match="not found"):
        get_allocator(f"allocation:{tmp_path / 'missing.json'}").allocate(PruningProblem(s, 0.5))
