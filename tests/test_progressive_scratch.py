"""Progressive from scratch: the shape decided during training (fixed or when it settles), the target met
(FlopCounterMode), the training-MACs ledger, and resume after SIGKILL."""
import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.agents import get_allocator
from autoprune.agents.random_search import random_feasible_counts
from autoprune.cli.main import main
from autoprune.core.allocation import Allocation
from autoprune.core.problem import uniform_allocation
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import IMAGENET_MEAN, IMAGENET_STD, create_model
from autoprune.train.data import make_bundle
from autoprune.train.decision import ShapeDecision, keep_distance, parse_decide_at
from autoprune.train.progressive import progressive_train
from autoprune.train.schedules import PruningSchedule
from autoprune.train.scores import DEFAULT_SCORE
from autoprune.train.training import TrainRecipe

from .conftest import flop_counter_cost
from .test_progressive import KILLED_AFTER_SAVING, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

# 64 training images in batches of 16: 4 steps per epoch; 8 epochs = 32 steps, the last cut at step 24
SPE, EPOCHS = 4, 8
TINY = ["--model", "resnet20", "--data", "synthetic", "--train-subset", "64", "--batch-size", "16",
        "--val-size", "64", "--calib-size", "32", "--seed", "3", "--epochs", str(EPOCHS), "--from-scratch"]


@pytest.fixture(scope="module")
def tiny_data():
    return make_bundle("synthetic", IMAGENET_MEAN, IMAGENET_STD, val_size=64, calib_size=32, seed=0, train_subset=64)


def _run(data, allocator, final: float, decision: ShapeDecision, every: int = 2, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = create_model("resnet20", 10)
    recipe = TrainRecipe(epochs=EPOCHS, lr=0.05, batch_size=16)
    total = recipe.total_steps(len(data.train))
    schedule = PruningSchedule.over_training("cubic", final, total, 0.0, 0.75, every=every)
    return progressive_train(model, data, recipe, schedule, allocator, base_name="resnet20", progress=False,
                             trajectory="final", decision=decision, **kw)


def _macs_of_widths(widths: dict[str, int], x: torch.Tensor) -> int:
    """Conv + linear MACs per image of a ResNet-20 with these widths, by FlopCounterMode (not autoprune's counter)."""
    s = ModelStructure(create_model("resnet20", 10), x)
    return flop_counter_cost(prune(s, Allocation(dict(widths))), x)[0]


@pytest.mark.parametrize("allocator,final,at", [("global", 0.3, 3 * SPE), ("uniform", 0.5, 2 * SPE + 1)])
def test_from_scratch_lands_on_the_shape_decided_during_training(tiny_data, allocator, final, at):
    res = _run(tiny_data, get_allocator(allocator), final, ShapeDecision(at))
    x = tiny_data.tensors("val")[0][:1]
    assert res.decision["step"] == at and res.decision["reason"] == "fixed"
    decided = res.decision["widths"]
    got = res.allocation.keep
    assert all(abs(got[name] - k) <= 1 for name, k in decided.items())  # within one channel per group
    dense = flop_counter_cost(create_model("resnet20", 10), x)[0]
    assert final * 0.99 <= flop_counter_cost(res.model, x)[0] / dense <= final + 1e-9  # within 1% of the target
    assert all(e.step > at for e in res.events)  # nothing is cut before the decision ...
    assert [e.step for e in res.events] == res.schedule.events and res.schedule.end == 24  # ... then on the schedule
    for e in res.events:  # every event: epoch, learning rate, MACs, training MACs so far
        assert e.epoch == e.step / SPE and e.lr == pytest.approx(TrainRecipe(lr=0.05).lr_at(e.step, EPOCHS * SPE))
        assert e.macs == round(e.realised * dense) and 0 < e.train_macs < res.train_macs


def test_decision_rule_settles_after_patience_epochs_below_threshold():
    rule = ShapeDecision(None, threshold=0.05, patience=2, latest=100)
    assert not rule.settled([]) and not rule.settled([0.01])
    assert rule.settled([0.3, 0.01, 0.04]) and not rule.settled([0.01, 0.3, 0.04])
    assert keep_distance({"a": 8, "b": 16}, {"a": 4, "b": 16}, {"a": 16, "b": 32}) == pytest.approx(0.125)
    assert parse_decide_at("auto") is None and parse_decide_at("0.2") == 0.2
    for bad in ("1.0", "-0.1", "soon"):
        with pytest.raises(AutopruneError, match="--decide-at"):
            parse_decide_at(bad)


class ConvergesAt:
    """Stub allocator: alternates between two shapes on its first calls, then gives a third one for ever
    (asked once per epoch, it converges at epoch ``epoch``)."""

    name = "stub"

    def __init__(self, epoch: int):
        self.epoch, self.calls = epoch, 0

    def allocate(self, problem, scorer=None):
        self.calls += 1
        k = 2 if self.calls >= self.epoch else self.calls % 2
        counts = random_feasible_counts(problem, np.random.default_rng(k))
        return Allocation({g.name: int(c) for g, c in zip(problem.structure.groups, counts)})


@pytest.mark.parametrize("converges,patience,threshold,latest,decided,reason", [
    (3, 2, 0.02, 20, 5 * SPE, "settled"),  # epoch 3's answer repeats at epochs 4 and 5: two changes below threshold
    (3, 1, 0.02, 20, 4 * SPE, "settled"),
    (4, 1, 0.02, 23, 5 * SPE, "settled"),
    (9, 2, 0.02, 17, 17, "latest"),  # still moving at step 17 (--decide-by): decided there, settled or not
    (9, 1, 1.0, 20, 2 * SPE, "settled"),  # every change is below a threshold of 1: the second epoch decides
])
def test_decide_at_auto_decides_when_the_allocation_stops_moving(tiny_data, converges, patience, threshold,
                                                                 latest, decided, reason):
    stub = ConvergesAt(converges)
    res = _run(tiny_data, stub, 0.5, ShapeDecision(None, threshold, patience, latest))
    assert res.decision["reason"] == reason and res.decision["step"] == decided
    asked = list(range(SPE, decided + 1, SPE)) + ([decided] if decided % SPE else [])
    assert [p["step"] for p in res.probes] == asked  # once per epoch end until the decision
    assert stub.calls == len(asked)
    moved = [p["distance"] for p in res.probes[1:]]
    assert all(d > 0.02 for d in moved[:converges - 2]) and all(d == 0 for d in moved[converges - 1:])
    assert res.decision["widths"] == res.probes[-1]["widths"] == res.allocation.keep  # lands on the last answer
    assert all(e.step > decided for e in res.events)


def test_training_macs_ledger_is_model_macs_times_images_seen(tiny_data):
    """Cuts every epoch from a decision at an epoch end: the model is constant within each epoch, so the
    ledger's increment over an epoch is that model's MACs (FlopCounterMode) x the 64 images seen."""
    res = _run(tiny_data, get_allocator("global"), 0.4, ShapeDecision(2 * SPE), every=SPE)
    x = tiny_data.tensors("val")[0][:1]
    assert all(e.step % SPE == 0 for e in res.events) and len(res.events) >= 3
    assert [row["epoch"] for row in res.ledger] == list(range(1, EPOCHS + 1))
    dense = {g.name: g.channels for g in res.original.groups}
    spent, expected = 0.0, []
    for epoch in range(EPOCHS):  # the widths in force during this epoch: the last cut at or before its first step
        cuts = [e for e in res.events if e.step <= epoch * SPE]
        widths = cuts[-1].channels if cuts else dense
        spent += _macs_of_widths(widths, x) * len(tiny_data.train)
        expected.append(spent)
    assert [row["train_macs"] for row in res.ledger] == expected
    assert res.train_macs == expected[-1]
    for e in res.events:  # each event's "training MACs so far" is the ledger at its epoch end
        assert e.train_macs == expected[e.step // SPE - 1]
    assert _macs_of_widths(res.events[-1].channels, x) == flop_counter_cost(res.model, x)[0]


class RecordsScore:
    """Stub allocator: records what it is handed to score with, scores the uniform allocation, returns it."""

    name = "stub"

    def __init__(self):
        self.kinds, self.compares_with_model_as_trained, self.values = [], [], []

    def allocate(self, problem, scorer=None):
        self.kinds.append(scorer.evaluator.kind)
        dense = getattr(scorer.evaluator, "dense", None)
        self.compares_with_model_as_trained.append(dense is problem.structure.model)
        alloc = uniform_allocation(problem)
        self.values.append(scorer.value(alloc))
        return alloc


@pytest.mark.parametrize("score,kind,refits", [(None, DEFAULT_SCORE, True), ("adaptive-bn", "adaptive-bn", False)])
def test_decision_scores_candidates_by_the_search_score(tiny_data, score, kind, refits):
    """The shape decided mid-training is scored as ``search`` scores (the default score unless told), and a
    score that compares with the dense model compares with the model as trained so far."""
    stub = RecordsScore()
    res = _run(tiny_data, stub, 0.5, ShapeDecision(2 * SPE), **({} if score is None else {"score": score}))
    assert stub.kinds == [kind] and res.decision["step"] == 2 * SPE
    assert stub.compares_with_model_as_trained == [refits]
    assert np.isfinite(stub.values[0]) and (stub.values[0] < 0) == (kind.endswith(":loss"))  # -CE or top-1


@pytest.mark.slow
def test_progressive_records_its_score_and_a_policy_keeps_its_own(tmp_path, capsys):
    policy = ROOT / "bench" / "results" / "policies" / "universal.zip"
    base = ["progressive", "--data", "synthetic", "--model", "resnet20", "--train-subset", "64", "--batch-size", "16",
            "--val-size", "64", "--calib-size", "32", "--epochs", "1", "--target", "0.6", "--prune-every", "0.5"]
    runs = {"default": [], "policy": ["--allocator", f"policy:{policy}"]}  # a given --score: the library test
    for name, extra in runs.items():
        assert main(base + ["--output", str(tmp_path / name)] + extra) == 0
    scores = {n: json.loads((tmp_path / n / "summary.json").read_text())["score"] for n in runs}
    assert scores == {"default": DEFAULT_SCORE, "policy": "adaptive-bn"}
    capsys.readouterr()  # the runs' progress bars
    assert main(base + ["--output", str(tmp_path / "bad"), "--score", "top5"]) == 2
    err = capsys.readouterr().err
    assert "unknown --score 'top5'" in err and err.strip().count("\n") == 0


def test_from_scratch_options_fail_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "x")
    for args, message in [(["--decide-at", "0.9"], "leaves no time to prune"),
                          (["--trajectory", "per-step"], "--trajectory final"),
                          (["--checkpoint", str(tmp_path / "c.pt")], "drop --checkpoint"),
                          (["--decide-by", "0.8"], "--decide-by 0.8"),
                          (["--decide-patience", "0"], "--decide-patience")]:
        assert main(["progressive", "--output", out] + TINY + args) == 2
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0, err
    assert main(["progressive", "--output", out, "--decide-at", "0.2"] + TINY[:-1]) == 2
    assert "add --from-scratch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's one-line error for the flag
        main(["progressive", "--output", out, "--decide-at", "soon"] + TINY)
    assert exit_.value.code == 2 and "give a fraction of the run in [0, 1), or auto" in capsys.readouterr().err
    config = tmp_path / "c.yaml"  # YAML may give the fraction as a number; a config file says which key is wrong
    config.write_text("decide_at: 1.5\n")
    assert main(["progressive", "--output", out, "--config", str(config)] + TINY) == 2
    assert "key 'decide_at': --decide-at 1.5 must be a fraction" in capsys.readouterr().err
    config.write_text("decide_at: 0.25\n")
    from autoprune.config import add_config_args, resolve_config
    from autoprune.experiments.progressive import ProgressiveConfig

    parser = argparse.ArgumentParser()
    add_config_args(parser, ProgressiveConfig)
    assert resolve_config(ProgressiveConfig, parser.parse_args(["--config", str(config), "--model", "resnet20",
                                                                "--output", out])).decide_at == "0.25"


def _final(run: Path) -> dict:
    return {k: v["keep"] for k, v in json.loads((run / "allocation.json").read_text())["groups"].items()}


KILLED_ARGS = TINY + ["--allocator", "global", "--target", "0.4", "--prune-every", "0.5", "--decide-at", "auto",
                      "--decide-threshold", "1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The run the killed ones must reproduce, never interrupted."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert main(["progressive", "--output", str(run)] + KILLED_ARGS) == 0
    return run


@pytest.mark.slow
@pytest.mark.xdist_group("scratch-kill")  # one worker: the straight run is shared
@pytest.mark.parametrize("killed_at", [8, 16])  # before the decision (epoch 3) and between two cuts
def test_killed_from_scratch_run_resumes_to_the_same_allocation(tmp_path, straight, killed_at):
    """A real SIGKILL right after the state of step ``killed_at`` is saved, then --resume: same decision,
    same probes, same cuts and final allocation, same weights as the run never interrupted."""
    args = KILLED_ARGS
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["decision"]["epoch"] == 3 and summary["decision"]["reason"] == "settled"

    killed = tmp_path / "killed"
    command = [sys.executable, "-c", KILLED_AFTER_SAVING, str(killed_at), "progressive", "--output", str(killed)] + args
    proc = subprocess.run(command, check=False, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(killed / "state.pt", weights_only=True)["meta"]
    assert state["step"] == killed_at and not (killed / "model.pt").exists()
    assert (state["decided"] is None) == (killed_at < 12)
    assert main(["progressive", "--output", str(killed), "--resume"]) == 0
    resumed = json.loads((killed / "summary.json").read_text())
    assert _final(killed) == _final(straight)
    decided = ("step", "epoch", "reason", "widths")  # not "seconds", which differ between the runs
    assert [resumed["decision"][k] for k in decided] == [summary["decision"][k] for k in decided]
    assert [(p["step"], p["widths"]) for p in resumed["probes"]] == [(p["step"], p["widths"]) for p in summary["probes"]]
    assert [(e["step"], e["channels"]) for e in resumed["events"]] == [(e["step"], e["channels"]) for e in summary["events"]]
    assert [r["train_macs"] for r in resumed["ledger"]] == pytest.approx([r["train_macs"] for r in summary["ledger"]])
    from autoprune.core.io import load_pruned

    a, b = load_pruned(straight / "model.pt")[0].state_dict(), load_pruned(killed / "model.pt")[0].state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


FORK_ARGS = TINY + ["--prune-every", "0.5", "--decide-at", "0.25"]  # decided at step 8, an epoch boundary


@pytest.mark.slow
def test_a_fork_ends_where_the_run_it_saves_training_for_ends(tmp_path, capsys):
    """--fork-from another run's dense state, deciding with another allocator at another target, lands where the
    same run trained from the initialization lands: same cuts, ledger and weights. Another seed is refused."""
    from autoprune.core.io import load_pruned

    source, straight, fork = tmp_path / "source", tmp_path / "straight", tmp_path / "fork"
    assert main(["progressive", "--output", str(source), "--allocator", "uniform", "--target", "0.5"] + FORK_ARGS) == 0
    dense = torch.load(source / "dense_state.pt", weights_only=True)["meta"]
    assert dense["step"] == 8 and dense["decided"] is None and not dense["events"]
    other = ["--allocator", "global", "--target", "0.4"]
    assert main(["progressive", "--output", str(straight)] + other + FORK_ARGS) == 0
    assert main(["progressive", "--output", str(fork), "--fork-from", str(source)] + other + FORK_ARGS) == 0
    a, b = (json.loads((run / "summary.json").read_text()) for run in (straight, fork))
    assert _final(fork) == _final(straight) != _final(source)
    assert b["decision"]["step"] == a["decision"]["step"] == 8
    assert [(e["step"], e["channels"]) for e in b["events"]] == [(e["step"], e["channels"]) for e in a["events"]]
    assert [r["train_macs"] for r in b["ledger"]] == pytest.approx([r["train_macs"] for r in a["ledger"]])
    wa, wb = load_pruned(straight / "model.pt")[0].state_dict(), load_pruned(fork / "model.pt")[0].state_dict()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5), k
    capsys.readouterr()
    assert main(["progressive", "--output", str(tmp_path / "bad"), "--fork-from", str(source)] + other + FORK_ARGS
                + ["--seed", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other seed" in err[0] and "--fork-from" in err[0]

