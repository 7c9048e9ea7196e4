"""The sensitivity-aware agent: it reads each group's sensitivity, starts from the heuristics, and steers around them.

One sweep per model and score (``sensitivity.json``), shared by compare's allocators and reused on
resume; the first two episodes play the sensitivity and uniform allocations with the scores compare
gives them; old-layout policies are refused in one line; ``--action sensitivity`` at 0 plays the
sensitivity allocation.
"""
import csv
import json
import zipfile

import numpy as np
import pytest
import torch

from autoprune.cli.main import main
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import FunctionEvaluator, Scorer
from autoprune.core.sensitivity import FILE, cached_sensitivity, load_tables, sweep
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.experiments.comparison import run_comparison
from autoprune.train.training import TrainRecipe
from autoprune.train.data import DataBundle
from autoprune.train.evaluator import AdaptiveBNEvaluator
from tests.test_compare import SmallNet, _config, _small

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(synthetic_bundle):
    """test_compare's three-group net on 8x8 images: (model, data, adaptive-BN evaluator)."""
    b = synthetic_bundle
    data = DataBundle(_small(b.train, 256), _small(b.val, 100), _small(b.calib, 128), _small(b.test, 100),
                      b.mean, b.std, 10)
    torch.manual_seed(0)
    x, y = data.tensors("val")
    return SmallNet(), data, AdaptiveBNEvaluator(data.calibration_batches(64), x, y)


class Counting:
    """An evaluator that records the channel widths of every model it scores (SmallNet: three groups)."""

    def __init__(self, inner):
        self.inner, self.label, self.kind = inner, inner.label, inner.kind
        self.widths: list[tuple[int, ...]] = []

    def prepare(self, model):
        return self.inner.prepare(model)

    def score(self, model, must_beat=None):
        self.widths.append((model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels))
        return self.inner.score(model, must_beat)

    def single_group(self) -> int:
        """Scores of a sweep's candidates: exactly one group pruned."""
        return sum(sum(w < 64 for w in ws) == 1 for ws in self.widths)


def _problem(small, target=0.6):
    model, data, _ = small
    structure = ModelStructure(model, torch.randn(1, 3, 8, 8))
    return PruningProblem(structure, target, calib_batches=data.calibration_batches(128))


def _compare(tmp_path, name, small, allocators, counting):
    model, data, _ = small
    cfg = _config(tmp_path / name, allocators=allocators, seeds=[0], recipes=["lr-rewind"],
                  train=TrainRecipe(epochs=0.05, batch_size=64))
    return run_comparison(cfg, model, data, torch.device("cpu"), counting,
                          lambda: ModelStructure(model, torch.randn(1, 3, 8, 8)), log=lambda s: None)


def test_compare_reuses_a_cached_sensitivity_table_without_a_second_sweep(tmp_path, small):
    counting = Counting(small[2])
    first = _compare(tmp_path, "a", small, ["sensitivity", "ddpg@episodes=3,warmup_episodes=2"], counting)
    sweep_size = len(sweep(_problem(small))) - 1
    assert counting.single_group() == sweep_size  # the allocator and the agent shared one sweep
    assert (tmp_path / "a" / FILE).exists() and len(load_tables(tmp_path / "a" / FILE)) == 1

    again = Counting(small[2])  # another run, handed the first one's table: no sweep at all
    second = _compare(tmp_path, "b", small, [f"sensitivity@table={tmp_path / 'a' / FILE}",
                                                  "ddpg@episodes=3,warmup_episodes=2"], again)
    assert again.single_group() == 0
    assert second["allocations"]["sensitivity|0.6|0"] == first["allocations"]["sensitivity|0.6|0"]
    assert not (tmp_path / "b" / FILE).exists()


def test_a_resumed_search_reads_its_sensitivity_table_back(tmp_path, small):
    from autoprune.agents.rl import RLSearch

    problem = _problem(small)
    counting = Counting(small[2])
    RLSearch(episodes=3, warmup_episodes=2, checkpoint_every=1).search(problem, Scorer(problem, counting), tmp_path)
    assert counting.single_group() == len(sweep(problem)) - 1
    resumed = Counting(small[2])
    RLSearch(episodes=5, warmup_episodes=2, checkpoint_every=1).search(problem, Scorer(problem, resumed), tmp_path,
                                                                       resume=True)
    assert resumed.single_group() == 0 and len(resumed.widths) <= 2  # only the two new episodes


def test_warmup_plays_sensitivity_then_uniform_with_the_scores_compare_gives_them(tmp_path, small):
    from autoprune.agents.rl import RLSearch

    record = _compare(tmp_path, "cmp", small, ["sensitivity", "uniform"], Counting(small[2]))
    scores = {r["method"]: r["score_value"] for r in record["rows"]}
    problem = _problem(small)
    RLSearch(episodes=4, warmup_episodes=3, seed=1).search(problem, Scorer(problem, small[2]), tmp_path / "s")
    with open(tmp_path / "s" / "episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    groups = problem.structure.groups
    for row, method in zip(rows[:2], ("sensitivity", "uniform")):
        assert [float(row[f"keep:{g.name}"]) for g in groups] == pytest.approx(
            [record["allocations"][f"{method}|0.6|0"][g.name] for g in groups], abs=1e-4), method
        assert float(row["accuracy"]) == pytest.approx(scores[method], abs=1e-6), method
    best = max(float(r["accuracy"]) for r in rows)
    assert best >= max(scores.values())  # the search's best is never below either heuristic


def test_a_policy_trained_on_the_old_observation_layout_is_refused_in_one_line(tmp_path, small, capsys):
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.agents.rl import RLSearch
    from autoprune.envs import FEATURES

    problem = _problem(small)
    RLSearch(episodes=2, warmup_episodes=1).search(problem, Scorer(problem, small[2]), tmp_path / "run")
    old = tmp_path / "old.zip"
    with zipfile.ZipFile(tmp_path / "run" / "policy.zip") as z, zipfile.ZipFile(old, "w") as out:
        doc = json.loads(z.read("policy.json"))
        doc["meta"].update(obs_version=1, features=[f for f in FEATURES if not f.startswith("sensitivity_")])
        out.writestr("policy.json", json.dumps(doc))
        out.writestr("actor.safetensors", z.read("actor.safetensors"))
    with pytest.raises(AutopruneError, match="another observation layout") as exc:
        PolicyAllocator(old)
    assert "\n" not in str(exc.value) and "v1" in str(exc.value)
    assert main(["apply", "--policy", str(old), "--model", "resnet20", "--macs", "0.5",
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "another observation layout" in err and "\n" not in err


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_sensitivity_action_zero_plays_the_sensitivity_allocation(resnet20_structure, target):
    from autoprune.envs import ChannelPruningEnv, rollout

    problem = PruningProblem(resnet20_structure, target)
    # a cheap score that makes the groups differ in sensitivity
    scorer = Scorer(problem, FunctionEvaluator(lambda m: float(sum(
        p.detach().abs().sum() for n, p in m.named_parameters() if "layer1" in n or "layer3.2" in n)) / 1e3))
    table = cached_sensitivity(None, problem, scorer)
    env = ChannelPruningEnv(problem, evaluate=False, action="sensitivity", sensitivity=table)
    counts = rollout(env, lambda obs: np.zeros(1, dtype=np.float32))["counts"]
    expected = table.allocation(problem).counts(resnet20_structure)
    assert np.abs(counts - expected).max() <= 1
    assert problem.feasible(table.allocation(problem))
    assert not np.array_equal(expected, uniform_allocation(problem).counts(resnet20_structure))  # not trivial


def test_search_and_apply_reuse_a_sweep_from_another_run_and_refuse_a_foreign_file(tmp_path, capsys, monkeypatch):
    """``search``/``apply --sensitivity A/sensitivity.json``: no second sweep (measuring would raise here), the
    table is copied into the new folder; a file that is not a table is one line before any data is read."""
    import autoprune.core.sensitivity as sens
    from autoprune.cli.main import main

    common = ["--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64",
              "--macs", "0.5", "--episodes", "2", "--warmup-episodes", "1", "--eval-every", "0", "--no-progress"]
    assert main(["search", *common, "--finalists", "0", "--output", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "sensitivity.json").read_text())

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep was measured again")

    monkeypatch.setattr(sens, "measure_sensitivity", no_sweep)
    assert main(["search", *common, "--finalists", "0", "--seed", "1", "--sensitivity", str(tmp_path / "a" / "sensitivity.json"),
                 "--output", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "sensitivity.json").read_text())["tables"] == first["tables"]
    target = common[:common.index("--episodes")]
    applied = ["apply", *target, "--policy", str(tmp_path / "a" / "policy.zip")]
    assert main([*applied, "--sensitivity", str(tmp_path / "a" / "sensitivity.json"),
                 "--output", str(tmp_path / "applied")]) == 0
    assert json.loads((tmp_path / "applied" / "sensitivity.json").read_text())["tables"] == first["tables"]
    capsys.readouterr()
    (tmp_path / "foreign.json").write_text('{"format": "something else"}')
    for args in (["search", *common], applied):
        code = main([*args, "--sensitivity", str(tmp_path / "foreign.json"), "--output", str(tmp_path / "c")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and "not a sensitivity table" in err[0]
        assert not (tmp_path / "c").exists()
