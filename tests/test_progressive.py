"""Progressive train-prune-train: target MACs, sliced optimizer state, resume after SIGKILL, run directory."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autoprune.agents import get_allocator
from autoprune.cli.main import main
from autoprune.core.criteria import group_scores
from autoprune.core.io import load_pruned
from autoprune.core.prune import channels_to_remove
from autoprune.core.structure import ModelStructure
from autoprune.models import IMAGENET_MEAN, IMAGENET_STD, create_model
from autoprune.train.data import make_bundle
from autoprune.train.progressive import progressive_train
from autoprune.train.schedules import PruningSchedule
from autoprune.train.surgery import prune_with_optimizer
from autoprune.train.training import TrainRecipe, make_optimizer

from .conftest import flop_counter_cost

ROOT = Path(__file__).resolve().parents[1]
# 64 training images in batches of 16: 4 steps per epoch
TINY = ["--model", "resnet20", "--data", "synthetic", "--train-subset", "64", "--batch-size", "16",
        "--val-size", "64", "--calib-size", "32", "--prune-every", "0.5", "--target", "0.5", "--seed", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data():
    return make_bundle("synthetic", IMAGENET_MEAN, IMAGENET_STD, val_size=64, calib_size=32, seed=0, train_subset=64)


@pytest.mark.parametrize("shape,final", [("cubic", 0.5), ("constant", 0.3)])
def test_tiny_progressive_run_hits_target_macs(tiny_data, shape, final):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    x = tiny_data.tensors("val")[0][:1]
    dense = flop_counter_cost(model, x)[0]
    recipe = TrainRecipe(epochs=3, lr=0.05, batch_size=16)
    total = recipe.total_steps(len(tiny_data.train))
    schedule = PruningSchedule.over_training(shape, final, total, 0.0, 0.75, every=2)
    res = progressive_train(model, tiny_data, recipe, schedule, get_allocator("uniform"), base_name="resnet20",
                            progress=False)
    measured = flop_counter_cost(res.model, x)[0]
    assert final * 0.99 <= measured / dense <= final + 1e-9
    assert res.allocation.macs(res.original) == measured  # the analytical cost agrees with the model
    assert [e.step for e in res.events] == schedule.events
    for e in res.events:  # every intermediate cut is on its own planned budget too
        assert e.planned * 0.99 <= e.realised <= e.planned + 1e-9
    assert all(b.macs <= a.macs for a, b in zip(res.events, res.events[1:]))
    # training cost: a shrinking model is cheaper than the dense one, dearer than the final one
    images = 3 * len(tiny_data.train)
    assert measured * images < res.train_macs < dense * images
    assert res.model(x).shape == (1, 10)


def test_momentum_buffers_are_sliced_to_the_kept_channels():
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    recipe = TrainRecipe(lr=0.1)
    opt = make_optimizer(model, recipe)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    s = ModelStructure(model, x[:1])
    keep = [max(1, g.channels // 2) for g in s.groups]
    remove = channels_to_remove(s, keep, group_scores(s, "l1"))
    old = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    pruned, new_opt = prune_with_optimizer(s, remove, opt, lambda m: make_optimizer(m, recipe))
    new = {n: new_opt.state[p]["momentum_buffer"] for n, p in pruned.named_parameters()}
    assert set(new) == set(old)
    g = s.groups[0]
    assert g.name == "layer1.0.conv1"
    kept = torch.tensor([c for c in range(g.channels) if c not in set(remove[0])])
    assert len(kept) == keep[0]
    assert torch.equal(new["layer1.0.conv1.weight"], old["layer1.0.conv1.weight"][kept])
    assert torch.equal(new["layer1.0.bn1.weight"], old["layer1.0.bn1.weight"][kept])
    assert torch.equal(new["layer1.0.bn1.bias"], old["layer1.0.bn1.bias"][kept])
    assert torch.equal(new["layer1.0.conv2.weight"], old["layer1.0.conv2.weight"][:, kept])
    assert torch.equal(new["conv1.weight"], old["conv1.weight"])  # untouched layers keep their buffer
    assert torch.equal(new["linear.weight"], old["linear.weight"])
    # the weights were sliced the same way, and the new optimizer trains the new parameters
    assert torch.equal(pruned.layer1[0].conv1.weight, model.layer1[0].conv1.weight[kept])
    new_opt.zero_grad()
    F.cross_entropy(pruned(x), y).backward()
    before = pruned.layer1[0].conv1.weight.detach().clone()
    new_opt.step()
    assert not torch.equal(before, pruned.layer1[0].conv1.weight)


def resumed_trajectory(run: Path) -> str:
    return json.loads((run / "summary.json").read_text())["trajectory"]


def _allocation(run: Path) -> dict:
    return {k: v["keep"] for k, v in json.loads((run / "allocation.json").read_text())["groups"].items()}


def _random_allocation(target: float, path: Path, seed: int = 0) -> dict[str, int]:
    """A random feasible allocation of ResNet-20 at ``target`` of MACs, saved as a search would."""
    import numpy as np

    from autoprune.agents.random_search import random_feasible_counts
    from autoprune.core.allocation import Allocation
    from autoprune.core.problem import PruningProblem

    s = ModelStructure(create_model("resnet20", 10), torch.randn(1, 3, 32, 32))
    counts = random_feasible_counts(PruningProblem(s, target), np.random.default_rng(seed))
    Allocation.from_counts(s, counts).save(path, s)
    return {g.name: int(k) for g, k in zip(s.groups, counts)}


@pytest.mark.parametrize("shape,final", [("exponential", 0.3), ("cubic", 0.5)])
def test_trajectory_heads_for_the_searched_shape(tiny_data, tmp_path, shape, final):
    wanted = _random_allocation(final, tmp_path / "best_allocation.json")
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    x = tiny_data.tensors("val")[0][:1]
    recipe = TrainRecipe(epochs=3, lr=0.05, batch_size=16)
    total = recipe.total_steps(len(tiny_data.train))
    schedule = PruningSchedule.over_training(shape, final, total, 0.0, 0.75, every=2)
    res = progressive_train(model, tiny_data, recipe, schedule,
                            get_allocator(f"allocation:{tmp_path / 'best_allocation.json'}"), base_name="resnet20",
                            progress=False, trajectory="final")
    widths = [{"dense": g.channels for g in res.original.groups}] + [e.channels for e in res.events]
    got = res.events[-1].channels
    assert all(abs(got[name] - k) <= 1 for name, k in wanted.items())  # lands on the searched shape
    assert final * 0.99 <= flop_counter_cost(res.model, x)[0] / res.original.dense_macs <= final + 1e-9
    for name in wanted:  # no group ever grows
        series = [res.original.groups[[g.name for g in res.original.groups].index(name)].channels] + \
                 [e.channels[name] for e in res.events]
        assert all(b <= a for a, b in zip(series, series[1:])), (name, series)
    for e in res.events[:-1]:  # intermediate cuts meet their planned budget too
        assert e.planned * 0.99 <= e.realised <= e.planned + 1e-9
    assert len(widths) == len(schedule.events) + 1


# the CLI in a process that SIGKILLs itself right after saving the state of step argv[1]: an
# interruption at a known point, however fast the machine
KILLED_AFTER_SAVING = textwrap.dedent("""
    import os, signal, sys
    from autoprune.cli.main import main
    from autoprune.train.progressive import ProgressivePruner
    save_state, at = ProgressivePruner.save_state, int(sys.argv[1])
    def save_then_die(self, step):
        save_state(self, step)
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)
    ProgressivePruner.save_state = save_then_die
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("allocator", ["uniform", "allocation"])
@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_allocation(tmp_path, allocator):
    args = TINY + ["--epochs", "4"]
    if allocator == "allocation":  # trajectory mode (the default for allocation:)
        wanted = _random_allocation(0.5, tmp_path / "best.json")
        args += ["--allocator", f"allocation:{tmp_path / 'best.json'}"]
    straight = tmp_path / "straight"
    assert main(["progressive", "--output", str(straight)] + args) == 0
    for name in ("config.yaml", "model.pt", "allocation.json", "summary.json", "state.pt",
                 "macs_schedule.png", "channels.png"):
        assert (straight / name).is_file(), name
    assert list((straight / "tb").rglob("events.out.tfevents*"))
    summary = json.loads((straight / "summary.json").read_text())
    assert 0.495 <= summary["macs_ratio"] <= 0.5
    model, base = load_pruned(straight / "model.pt")
    assert base == "resnet20" and model(torch.randn(1, 3, 32, 32)).shape == (1, 10)

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", KILLED_AFTER_SAVING, "8", "progressive", "--output", str(killed)] + args
    proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    state = killed / "state.pt"
    assert state.exists() and not (killed / "model.pt").exists()
    assert torch.load(state, weights_only=True)["meta"]["step"] == 8  # of 16: dies right after saving step 8

    # a directory holding a run is never overwritten; a resume must not change the run's options
    assert main(["progressive", "--output", str(killed)] + args) == 2
    assert main(["progressive", "--output", str(killed), "--resume", "--target", "0.4"]) == 2
    assert main(["progressive", "--output", str(killed), "--resume"]) == 0
    assert _allocation(killed) == _allocation(straight)
    if allocator == "allocation":
        assert _allocation(straight) == wanted and resumed_trajectory(killed) == "final"
    resumed = json.loads((killed / "summary.json").read_text())
    assert [(e["step"], e["channels"]) for e in resumed["events"]] == [(e["step"], e["channels"]) for e in summary["events"]]
    assert resumed["train_macs"] == pytest.approx(summary["train_macs"])
    # not only the widths: the weights after resuming match the uninterrupted run
    a, b = load_pruned(straight / "model.pt")[0].state_dict(), load_pruned(killed / "model.pt")[0].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_progressive_heads_for_a_latency_shape(tmp_path, fake_clock):
    """--latency: the final shape is decided against the latency table, and the run lands on it."""
    out = tmp_path / "lat"
    assert main(["progressive", "--output", str(out), "--latency", "0.6", "--allocator", "layer-stats",
                 "--trajectory", "final"] + TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency"]["predicted_seconds"] <= 0.6 * summary["latency"]["dense_seconds"] * (1 + 1e-9)
    model, _ = load_pruned(out / "model.pt")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert main(["progressive", "--output", str(tmp_path / "bad"), "--latency", "0.6", "--trajectory", "per-step"]
                + TINY) == 2


def test_no_cut_during_lr_warmup_and_events_record_the_lr(tmp_path):
    """The pruning and LR schedules are configured together: cuts start after the warm-up, each event
    records the learning rate it happened at, and the last cut leaves >= --final-share at the final width."""
    out = tmp_path / "warm"
    assert main(["progressive", "--output", str(out), "--epochs", "4", "--warmup-steps", "5"] + TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    events = summary["events"]
    assert events and min(e["step"] for e in events) >= 5
    assert all(0 < e["lr"] <= 0.05 for e in events)
    assert max(e["step"] for e in events) <= 0.75 * summary["steps"]
