"""``autoprune compare``: the loop on a tiny model and 8x8 images, the CLI once on ResNet-20, and the pieces."""
import csv
import json
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.cli.main import main
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.experiments.compare_config import CompareConfig, method_labels, recipe_for, reinitialise
from autoprune.experiments.comparison import run_comparison, write_outputs
from autoprune.experiments.report import summarize, verdict
from autoprune.models import create_model
from autoprune.registry import parse_spec
from autoprune.train.data import DataBundle, ImageSet
from autoprune.train.evaluator import AdaptiveBNEvaluator
from autoprune.train.training import TrainRecipe
from autoprune.workspace import WorkspaceOptions

METHODS = ["uniform", "layer-stats", "global@normalize=mean", "random@samples=2"]


class SmallNet(nn.Module):
    """Three 64-channel groups: fine enough cost granularity to hit a budget within 1%."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _small(images: ImageSet, n: int) -> ImageSet:
    x = F.avg_pool2d(images.images[:n].float(), 4).round().to(torch.uint8)  # 32x32 -> 8x8
    return ImageSet(x, images.labels[:n])


@pytest.fixture(scope="module")
def tiny_setup(synthetic_bundle):
    b = synthetic_bundle
    data = DataBundle(_small(b.train, 256), _small(b.val, 100), _small(b.calib, 128), _small(b.test, 100),
                      b.mean, b.std, 10)
    torch.manual_seed(0)
    model = SmallNet()
    x, y = data.tensors("val")
    evaluator = AdaptiveBNEvaluator(data.calibration_batches(64), x, y)
    return model, data, evaluator


def _config(out, **over):
    kw = dict(output=str(out), ws=WorkspaceOptions(model="small", device="cpu"), targets=[0.6], seeds=[0, 1],
              allocators=METHODS, recipes=["lr-rewind", "scratch-E"], train=TrainRecipe(epochs=0.5, batch_size=64))
    kw.update(over)
    return CompareConfig(**kw)


def _run(cfg, tiny_setup):
    model, data, evaluator = tiny_setup
    record = run_comparison(cfg, model, data, torch.device("cpu"), evaluator,
                            lambda: ModelStructure(model, torch.randn(1, 3, 8, 8)), log=lambda s: None)
    write_outputs(record, cfg.output)
    return record


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_setup):
    out = tmp_path_factory.mktemp("cmp") / "run"
    _run(_config(out), tiny_setup)
    return out


def _rows(run_dir):
    with open(run_dir / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.xdist_group("compare-run")  # the module-scoped run_dir is built once
def test_compare_writes_one_row_per_method_recipe_and_seed_at_the_budget(run_dir, tiny_setup):
    from autoprune.core.allocation import Allocation
    from autoprune.core.prune import prune

    rows = _rows(run_dir)
    assert {(r["method"], r["recipe"], r["seed"]) for r in rows} == {
        (m, rec, s) for m in ("uniform", "layer-stats", "global", "random") for rec in ("lr-rewind", "scratch-E") for s in ("0", "1")}
    record = json.loads((run_dir / "results.json").read_text())
    model, data, evaluator = tiny_setup
    structure = ModelStructure(model, torch.randn(1, 3, 8, 8))
    n_test = len(data.tensors("test")[1])
    assert len({r["score_value"] for r in rows if r["score_value"]}) > 1  # allocations score apart: the check below can fail
    for r in rows:
        assert 0.594 <= float(r["macs_ratio"]) <= 0.6 and r["within_budget"] == "True"
        assert float(r["test_acc"]) * n_test == pytest.approx(round(float(r["test_acc"]) * n_test))  # k of 100 images
        assert (r["score_value"] == "") == r["recipe"].startswith("scratch")
        if r["score_value"]:  # the score of the row's allocation, pruned again here (L1) and scored again
            ratios = record["allocations"][f"{r['method']}|0.6|{r['seed']}"].values()
            alloc = Allocation.from_counts(structure, [round(k * g.channels) for k, g in zip(ratios, structure.groups)])
            assert float(r["score_value"]) == pytest.approx(evaluator(prune(structure, alloc, "l1")), abs=1e-9)
        assert float(r["drop"]) == pytest.approx(100 * (record["dense"]["test_acc"] - float(r["test_acc"])))
    for name in ("report.md", "accuracy_vs_macs.png", "channels.png", "config.yaml"):
        assert (run_dir / name).stat().st_size > 100
    report = (run_dir / "report.md").read_text()
    assert "## 60% macs, lr-rewind" in report and "## 60% macs, scratch-E" in report
    assert "±" in report and "wins" in report


@pytest.mark.xdist_group("compare-run")  # the module-scoped run_dir is built once
def test_deterministic_allocators_give_the_same_allocation_for_every_seed(run_dir):
    def counts(name):
        return json.loads((run_dir / "allocations" / name).read_text())["groups"]
    assert counts("layer-stats_t0.6_s0.json") == counts("layer-stats_t0.6_s1.json")
    rows = [r for r in _rows(run_dir) if r["method"] == "layer-stats" and r["recipe"] == "lr-rewind"]
    assert float(rows[0]["alloc_seconds"]) == float(rows[1]["alloc_seconds"])  # searched once


@pytest.mark.xdist_group("compare-run")  # the module-scoped run_dir is built once
def test_rerun_resumes_without_new_work_and_other_settings_are_refused(run_dir, tiny_setup):
    before = (run_dir / "results.json").read_text()
    record = _run(_config(run_dir), tiny_setup)
    assert record["rows"] == json.loads(before)["rows"]
    with pytest.raises(AutopruneError, match="holds another run"):
        _run(_config(run_dir, train=TrainRecipe(epochs=1.0, batch_size=64)), tiny_setup)
    assert (run_dir / "results.json").read_text() == before  # nothing lost


CLI = ["compare", "--model", "resnet20", "--data", "synthetic", "--targets", "0.5", "--seeds", "3",
       "--allocators", "uniform", "--recipes", "finetune", "--epochs", "0.25", "--train-subset", "128",
       "--batch-size", "64", "--val-size", "100", "--calib-size", "64", "--device", "cpu", "--finalists", "0"]


def test_cli_runs_and_prints_the_report(tmp_path, capsys):
    assert main(CLI + ["--output", str(tmp_path / "r")]) == 0
    assert "| uniform |" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "r" / "results.csv")))
    assert len(rows) == 1 and rows[0]["recipe"] == "finetune" and 0.495 <= float(rows[0]["macs_ratio"]) <= 0.5


def test_bad_input_is_a_one_line_error_before_any_work(tmp_path, capsys):
    assert main(CLI + ["--output", str(tmp_path / "a"), "--recipes", "warm-restart"]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    assert main(CLI + ["--output", str(tmp_path / "b"), "--allocators", "uniform", "magic@x=1"]) == 2
    assert "unknown allocator 'magic'" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("someone else's")
    assert main(CLI + ["--output", str(tmp_path / "c")]) == 2
    assert "not a compare run" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and (tmp_path / "c" / "notes.txt").read_text() == "someone else's"


def test_spec_options_recipes_and_reinitialisation():
    assert parse_spec("random@samples=30,seed=2") == ("random", {"samples": 30, "seed": 2})
    assert parse_spec("policy:runs/a@b/policy.zip") == ("policy:runs/a@b/policy.zip", {})
    assert parse_spec("sensitivity@rates=[0.8,0.5]") == ("sensitivity", {"rates": [0.8, 0.5]})
    assert method_labels(["global@normalize=none", "global", "policy:a/p.zip", "random@samples=3"]) == [
        "global@normalize=none", "global", "policy", "random"]
    cfg = CompareConfig(output="x", ws=WorkspaceOptions(model="resnet20"), train=TrainRecipe(epochs=2), scratch_epochs=4)
    assert recipe_for(cfg, "finetune", 0.5).schedule == "constant" and recipe_for(cfg, "finetune", 0.5).lr == 0.001
    assert recipe_for(cfg, "lr-rewind", 0.5).lr == cfg.rewind_lr == 0.01
    assert recipe_for(cfg, "scratch-E", 0.5).epochs == 4 and recipe_for(cfg, "scratch-B", 0.5).epochs == 8
    net = create_model("resnet20", 10)
    w = net.layer1[0].conv1.weight.clone()
    with torch.no_grad():
        net.layer1[0].bn1.running_mean.fill_(3.0)
    reinitialise(net, 0)
    assert not torch.equal(w, net.layer1[0].conv1.weight)
    assert float(net.layer1[0].bn1.running_mean.abs().max()) == 0.0


def test_verdict_names_the_winner_and_the_learned_policy_rank():
    rows = [{"target": 0.5, "recipe": "r", "method": m, "test_acc": a, "seed": s}
            for m, accs in (("uniform", (0.80, 0.82)), ("policy", (0.70, 0.72)), ("random", (0.90, 0.90)))
            for s, a in enumerate(accs)]
    text = verdict(summarize(rows, metrics=("test_acc",)))
    assert text.startswith("**random** wins with 90.00%, 9.00 points ahead of uniform")
    assert "policy) ranks 3 of 3, 19.00 points behind" in text


def test_every_seeded_allocator_gets_the_compare_seed(tmp_path):
    """compare --allocators ddpg --seeds 0 1 2 must run three different searches, not one three times."""
    from autoprune.experiments.comparison import build_allocator

    for spec in ("ddpg", "td3", "sac", "random", "search:4", "ddpg@episodes=5"):
        seeds = {build_allocator(spec, s).seed for s in (0, 1, 2)}
        assert seeds == {0, 1, 2}, spec
    assert build_allocator("ddpg@episodes=5", 1).config.episodes == 5
    assert build_allocator("random@seed=7", 1).seed == 7  # the spec's own seed wins



def test_sensitivity_curves_are_kept_and_plotted_once_per_target(tmp_path, tiny_setup):
    """Sensitivity declares its curves (``MeasuresSensitivity``) and is deterministic: one measurement, two seeds."""
    cfg = _config(tmp_path / "run", allocators=["sensitivity@rates=[0.5]"], recipes=["lr-rewind"],
                  train=TrainRecipe(epochs=0.1, batch_size=64))
    _run(cfg, tiny_setup)
    folders = sorted(p.name for p in (tmp_path / "run" / "allocators").iterdir())
    assert folders == ["sensitivity_t0.6_s0"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "allocators" / folders[0] / "sensitivity.csv")))
    assert {r["group"] for r in rows} == {"conv1", "conv2", "conv3"}
    assert (tmp_path / "run" / "allocators" / folders[0] / "sensitivity.png").stat().st_size > 100

PLUGIN = """
from autoprune.core.problem import uniform_allocation


class Half:
    name = "half"
    seeded = True
    built = []  # the seeds it was built with

    def __init__(self, seed: int = 0):
        Half.built.append(seed)

    def allocate(self, problem, scorer=None):
        return uniform_allocation(problem)


class Undeclared:
    name = "undeclared"

    def allocate(self, problem, scorer=None):
        return uniform_allocation(problem)
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed package (a dist-info on sys.path) with three ``autoprune.allocators`` entry points."""
    from autoprune.agents import ALLOCATORS

    (tmp_path / "fake_budget.py").write_text(PLUGIN)
    dist = tmp_path / "fake_budget-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-budget\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[autoprune.allocators]\nhalf = fake_budget:Half\n"
                                           "undeclared = fake_budget:Undeclared\nbroken = fake_budget_gone:Nothing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ALLOCATORS, "_plugins", None)  # read the entry points again, and forget them afterwards
    monkeypatch.setattr(ALLOCATORS, "_entries", dict(ALLOCATORS._entries))
    yield
    monkeypatch.delitem(sys.modules, "fake_budget", raising=False)


def test_a_plugin_allocator_is_built_and_compared_with_a_seed_per_row(plugin, tmp_path, tiny_setup):
    from autoprune.agents import get_allocator, list_allocators

    assert {"half", "broken", "uniform"} <= set(list_allocators())
    assert type(get_allocator("half")).__name__ == "Half"
    half = sys.modules["fake_budget"].Half
    half.built.clear()
    cfg = _config(tmp_path / "run", allocators=["uniform", "half"], recipes=["lr-rewind"],
                  train=TrainRecipe(epochs=0.1, batch_size=64))
    record = _run(cfg, tiny_setup)
    assert {(r["method"], r["seed"]) for r in record["rows"]} == {(m, s) for m in ("uniform", "half") for s in (0, 1)}
    assert half.built == [0, 1]  # seeded: built once per compare seed, with that seed


def test_a_broken_plugin_is_a_one_line_error_naming_it_and_breaks_nothing_else(plugin):
    from autoprune.agents import get_allocator
    from autoprune.experiments.comparison import build_allocator

    with pytest.raises(AutopruneError) as err:
        get_allocator("broken")
    assert str(err.value).startswith("allocator plugin 'broken' (fake_budget_gone:Nothing) failed to load: "
                                     "ModuleNotFoundError") and "\n" not in str(err.value)
    with pytest.raises(AutopruneError, match="'undeclared' does not declare seeded"):
        build_allocator("undeclared", 0)
    assert get_allocator("uniform").name == "uniform"


def test_compare_with_a_latency_budget(tmp_path, tiny_setup, blocked_clock):
    """--metric latency: the table is measured on the model (a blocked-MACs stand-in clock, so the
    toy model's figures do not depend on this machine's load), and every allocation meets its prediction."""
    from autoprune.deploy.latency import latency_table

    cfg = _config(tmp_path / "lat", metric="latency", allocators=["uniform", "layer-stats"], seeds=[0],
                  recipes=["lr-rewind"], train=TrainRecipe(epochs=0.1, batch_size=64))
    record = _run(cfg, tiny_setup)
    model = tiny_setup[0]
    table = latency_table(ModelStructure(model, torch.randn(1, 3, 8, 8)), cfg.latency_batch, cfg.latency_precision)
    assert len(record["rows"]) == 2
    for row in record["rows"]:
        assert row["within_budget"]
        counts = list(record["allocations"][f"{row['method']}|0.6|0"].values())
        chans = [g.channels for g in ModelStructure(model, torch.randn(1, 3, 8, 8)).groups]
        predicted = table.predict([round(r * c) for r, c in zip(counts, chans)])
        assert predicted <= 0.6 * table.dense * 1.001
