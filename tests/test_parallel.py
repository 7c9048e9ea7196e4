"""Parallel scoring on Ray (``--workers``): same results as one process, resumable, with a clear error without Ray."""
import csv
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoprune.cli.main import main

from .conftest import RESNET20_CKPT

ray = pytest.importorskip("ray", reason="the [distributed] extra is part of the test install")
# one Ray session per worker: the module's tests stay together (pytest-xdist ``--dist loadgroup``)
pytestmark = [pytest.mark.skipif(not RESNET20_CKPT.exists(), reason="shared checkpoints not present"),
              pytest.mark.slow, pytest.mark.xdist_group("ray")]

# a trained network on the synthetic images: candidates score differently (a random net ties them all)
COMMON = ["--model", "resnet20", "--checkpoint", str(RESNET20_CKPT), "--data", "synthetic", "--val-size", "200",
          "--calib-size", "64", "--macs", "0.5", "--precision", "fp32", "--no-progress", "--finalists", "0"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    yield
    ray.shutdown()


def _rows(run: Path) -> list[dict]:
    with open(run / "episodes.csv", newline="") as f:
        return list(csv.DictReader(f))


def _candidates(run: Path) -> list[tuple]:
    """(episode, accuracy, keep ratios) per row: what a search scored, in order."""
    return [(r["episode"], r["accuracy"], tuple(v for k, v in r.items() if k.startswith("keep:"))) for r in _rows(run)]


@pytest.mark.parametrize("score", ["adaptive-bn", "reconstruct:loss"])
def test_random_search_on_two_workers_equals_one_process(tmp_path, score):
    random = ["--agent", "random", "--episodes", "8", "--score", score]
    assert main(["search", *COMMON, *random, "--output", str(tmp_path / "one")]) == 0
    assert main(["search", *COMMON, *random, "--workers", "2", "--output", str(tmp_path / "two")]) == 0
    one, two = _candidates(tmp_path / "one"), _candidates(tmp_path / "two")
    assert len({acc for _, acc, _ in one}) > 1  # the comparison below can fail
    if score == "adaptive-bn":  # top-1 counts: identical
        assert two == one
        assert ((tmp_path / "two" / "best_allocation.json").read_text()
                == (tmp_path / "one" / "best_allocation.json").read_text())
    else:  # a mean loss: equal up to the summation order of the workers' single thread (fp32: measured up to
        # 3e-6 relative, on a loss near 4, with one thread in the test process)
        assert [(e, k) for e, _, k in two] == [(e, k) for e, _, k in one]
        assert [float(a) for _, a, _ in two] == pytest.approx([float(a) for _, a, _ in one], rel=1e-5)
        best = [json.loads((tmp_path / r / "best_allocation.json").read_text())["groups"] for r in ("one", "two")]
        assert best[0] == best[1]


# the CLI in a process that SIGKILLs itself at the argv[3]-th call of argv[1].argv[2] (before the call
# runs): an interruption at a known point, however fast the machine
KILLED_AT = textwrap.dedent("""
    import importlib, os, signal, sys
    from autoprune.cli.main import main
    owner, name, at = sys.argv[1].rsplit(".", 1), sys.argv[2], int(sys.argv[3])
    cls = getattr(importlib.import_module(owner[0]), owner[1])
    original, calls = getattr(cls, name), [0]
    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(cls, name, dying)
    sys.exit(main(sys.argv[4:]))
""")


def _run_killed(args: list[str], method: str, call: int) -> None:
    """Run the CLI in a subprocess that SIGKILLs itself at the ``call``-th call of ``method``
    ("module.Class.method")."""
    owner, name = method.rsplit(".", 1)
    proc = subprocess.run([sys.executable, "-c", KILLED_AT, owner, name, str(call), *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_killed_parallel_random_search_resumes_with_nothing_lost_or_repeated(tmp_path):
    random = ["--agent", "random", "--episodes", "8", "--workers", "2"]
    run = tmp_path / "killed"
    # dies saving its first best allocation: episode 0 logged, the other seven not
    _run_killed(["search", *COMMON, *random, "--output", str(run)], "autoprune.core.allocation.Allocation.save", 1)
    assert 0 < len(_rows(run)) < 8
    assert main(["search", *COMMON, *random, "--output", str(run), "--resume"]) == 0
    assert main(["search", *COMMON, *random, "--output", str(tmp_path / "whole")]) == 0
    assert [r["episode"] for r in _rows(run)] == [str(i) for i in range(8)]
    assert _candidates(run) == _candidates(tmp_path / "whole")


def test_two_worker_ddpg_search_runs_and_resumes(tmp_path, swept):
    rl = ["--episodes", "6", "--warmup-episodes", "2", "--eval-every", "2", "--checkpoint-every", "2",
          "--workers", "2", "--sensitivity", swept()]
    run = tmp_path / "ddpg"
    # dies starting its second checkpoint (episode 4): the one of episode 2 is the last complete one
    _run_killed(["search", *COMMON, *rl, "--output", str(run)],
                "stable_baselines3.common.off_policy_algorithm.OffPolicyAlgorithm.save_replay_buffer", 2)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["episode"] == 2
    assert main(["search", *COMMON, *rl, "--output", str(run), "--resume"]) == 0
    rows = _rows(run)
    assert [r["episode"] for r in rows] == [str(i) for i in range(6)]
    assert all(r["accuracy"] for r in rows)  # every episode scored (by the workers)
    assert (run / "policy.zip").exists()


@pytest.fixture(scope="module")
def r20_swept(synthetic_bundle, swept):
    """ResNet-20's structure and its sensitivity table (the process's shared sweep: it is not what these tests
    are about, the searches below are handed it)."""
    from autoprune.core.io import load_model
    from autoprune.core.sensitivity import load_tables
    from autoprune.core.structure import ModelStructure

    x, _ = synthetic_bundle.tensors("val")
    structure = ModelStructure(load_model("resnet20", 10, str(RESNET20_CKPT)), x[:1])
    return structure, next(t for t in load_tables(swept(score="adaptive-bn"))
                           if t.key["model"] == "resnet20" and t.key["score"] == "adaptive-bn")


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_parallel_rounds_keep_the_update_to_data_ratio(algo, synthetic_bundle, r20_swept, one_thread):
    """K episodes per round, K x (steps x updates_per_step) gradient steps after it: as many updates
    per transition as AMC's one-episode loop."""
    import torch

    from autoprune.agents.rl import RLSearch
    from autoprune.core.problem import PruningProblem
    from autoprune.core.scoring import Scorer
    from autoprune.train.evaluator import AdaptiveBNEvaluator
    from autoprune.train.ray_pool import scoring_pool

    x, y = synthetic_bundle.tensors("val")
    structure, table = r20_swept
    updates = {}
    for workers in (1, 2):
        problem = PruningProblem(structure, 0.5)
        evaluator = AdaptiveBNEvaluator([x[:64]], x[:100], y[:100], precision="fp32")
        pool = scoring_pool(problem, evaluator, workers)
        search = RLSearch(episodes=6, warmup_episodes=2, eval_every=0, seed=0, algo=algo)
        search.search(problem, Scorer(problem, evaluator, pool=pool), sensitivity=table)
        updates[workers] = search.model._n_updates
        if pool is not None:
            pool.close()
    assert updates[1] == updates[2] == 4 * len(structure.groups)  # the 4 episodes after warm-up, 1 update per step
    assert torch.get_num_threads() == 1


def test_workers_with_a_training_score_is_a_one_line_error(tmp_path, capsys):
    code = main(["search", *COMMON, "--agent", "random", "--episodes", "2", "--workers", "2", "--score", "finetune:5",
                 "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "not 'finetune:5'" in err[0]


def test_workers_without_ray_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["search", *COMMON, "--agent", "random", "--episodes", "2", "--workers", "2",
                 "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "autoprune[distributed]" in err[0]


def test_sensitivity_and_greedy_allocate_the_same_on_workers(synthetic_bundle, one_thread):
    from autoprune.agents.greedy import GreedyAllocator
    from autoprune.agents.sensitivity import SensitivityAllocator
    from autoprune.core.io import load_model
    from autoprune.core.problem import PruningProblem
    from autoprune.core.scoring import Scorer
    from autoprune.core.structure import ModelStructure
    from autoprune.train.evaluator import AdaptiveBNEvaluator
    from autoprune.train.ray_pool import scoring_pool

    x, y = synthetic_bundle.tensors("val")
    structure = ModelStructure(load_model("resnet20", 10, str(RESNET20_CKPT)), x[:1])
    found = {}
    for workers in (1, 2):
        problem = PruningProblem(structure, 0.7)
        evaluator = AdaptiveBNEvaluator([x[:64]], x[:100], y[:100], precision="fp32")
        pool = scoring_pool(problem, evaluator, workers)
        scorer = Scorer(problem, evaluator, pool=pool)
        sens = SensitivityAllocator(rates=(0.5,))
        found[workers] = (sens.allocate(problem, scorer).keep, [r["accuracy"] for r in sens.rows],
                          GreedyAllocator(step=0.15).allocate(problem, Scorer(problem, evaluator, pool=pool)).keep)
        if pool is not None:
            pool.close()
    assert len(set(found[1][1])) > 1  # the curves are not flat: the comparison can fail
    assert found[2] == found[1]


def test_a_closed_pools_actors_take_up_the_next_problem(synthetic_bundle, one_thread):
    """The next pool of the session reuses the actors (no new processes) and they score the new model and score
    exactly as this process does."""
    from autoprune.core.problem import PruningProblem, uniform_allocation
    from autoprune.core.scoring import Scorer
    from autoprune.core.structure import ModelStructure
    from autoprune.models import create_model
    from autoprune.train.evaluator import AdaptiveBNEvaluator
    from autoprune.train.ray_pool import scoring_pool
    from autoprune.train.scores import make_evaluator

    x, y = synthetic_bundle.tensors("val")
    actors, found = [], []
    for name, kind in (("resnet20", "adaptive-bn"), ("resnet32", "reconstruct:loss")):
        problem = PruningProblem(ModelStructure(create_model(name, 10).eval(), x[:1]), 0.5)
        evaluator = (AdaptiveBNEvaluator([x[:64]], x[:100], y[:100], precision="fp32") if kind == "adaptive-bn" else
                     make_evaluator(kind, None, [x[:64]], x[:100], y[:100], "fp32", structure=problem.structure))
        pool = scoring_pool(problem, evaluator, 2)
        alloc = uniform_allocation(problem)
        found.append((pool.score([problem.key(alloc)])[0].value, Scorer(problem, evaluator).value(alloc)))
        actors.append(list(pool._actors))
        pool.close()
    assert actors[1] == actors[0]  # the same two actors served both pools
    for remote, local in found:
        assert remote == pytest.approx(local, abs=1e-6)
    assert found[0][0] != pytest.approx(found[1][0])  # a different model and score: the check can fail
