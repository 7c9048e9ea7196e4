"""Data-parallel training under torchrun: same weights as one process, DDP rebuilt after cuts, rank 0 writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
SYN = ["--data", "synthetic", "--val-size", "200", "--calib-size", "64", "--precision", "fp32"]


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(tmp_path):
    """Same seed, same global batch (augmentation on): torchrun x2 ends within float tolerance of one process."""
    script = str(HERE / "ddp_train_tiny.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one.pt")], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    two = _torchrun(script, str(tmp_path / "two.pt"), cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    moved = max((a["trained"][k] - a["init"][k]).abs().max().item() for k in a["init"])
    diff = max((a["trained"][k] - b["trained"][k]).abs().max().item() for k in a["trained"])
    assert moved > 1e-2  # training changed the weights, so the comparison can fail
    assert diff < 1e-5


@pytest.mark.slow
def test_torchrun_train_progressive_and_compare_write_one_run(tmp_path):
    res = _torchrun("-m", "autoprune.cli", "train", "--model", "resnet20", *SYN[:4], *SYN[6:], "--epochs", "0.1",
                    "--batch-size", "100", "--output", "t", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["processes"] == 2 and res.stdout.count("saved t/model.pt") == 1  # rank 0 alone writes and prints
    # progressive: a cut every 0.1 epoch, DDP rebuilt around each smaller model; lands on the target
    res = _torchrun("-m", "autoprune.cli", "progressive", "--model", "resnet20", *SYN, "--epochs", "0.5",
                    "--batch-size", "100", "--target", "0.5", "--prune-every", "0.1", "--output", "p", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert len(summary["events"]) >= 3 and 0.49 <= summary["macs_ratio"] <= 0.5
    from autoprune.core.io import load_pruned

    assert load_pruned(tmp_path / "p" / "model.pt")[1] == "resnet20"
    # compare: rank 0 allocates and broadcasts, both ranks fine-tune each arm, rank 0 writes the table
    res = _torchrun("-m", "autoprune.cli", "compare", "--model", "resnet20", *SYN, "--epochs", "0.1", "--batch-size",
                    "100", "--allocators", "uniform", "random@samples=3", "--finalists", "0", "--output", "c", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "c" / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["random", "uniform"] and res.stdout.count("## 50% macs") == 1


@pytest.mark.slow
def test_torchrun_progressive_from_scratch_decides_once_for_every_rank(tmp_path):
    """--from-scratch under torchrun: rank 0 asks the allocator at each epoch end and decides; every rank
    heads for that shape (one decision printed, one run written, the target met)."""
    res = _torchrun("-m", "autoprune.cli", "progressive", "--model", "resnet20", *SYN, "--train-subset", "400",
                    "--epochs", "4", "--batch-size", "100", "--target", "0.5", "--prune-every", "0.5",
                    "--from-scratch", "--allocator", "global", "--decide-threshold", "1", "--decide-patience", "1",
                    "--output", "p", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["decision"]["step"] == 8 and [p["step"] for p in summary["probes"]] == [4, 8]
    assert [e["step"] for e in summary["events"]] == [10, 12] and 0.495 <= summary["macs_ratio"] <= 0.5
    assert res.stdout.count("shape decided at epoch 2") == 1


def test_torchrun_refuses_commands_that_do_not_train(tmp_path):
    res = _torchrun("-m", "autoprune.cli", "search", "--model", "resnet20", *SYN, "--macs", "0.5",
                    "--output", "s", cwd=tmp_path)
    assert res.returncode != 0 and "does not train data-parallel" in res.stderr
    assert not (tmp_path / "s").exists()


def test_shard_is_identity_without_torchrun():
    from autoprune.train import distributed

    x, y = torch.arange(6).view(6, 1), torch.arange(6)
    assert distributed.shard(x, y)[0] is x and distributed.from_main(lambda: 7) == 7 and distributed.is_main()
