"""The foundation commands end to end on synthetic data, and their one-line errors."""
import json
import subprocess
import sys

import pytest

from autoprune.cli.main import main

from .conftest import RESNET20_CKPT

SYN = ["--data", "synthetic", "--val-size", "300", "--device", "cpu"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_prune_then_evaluate_then_train(tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["prune", "--model", "resnet20", "--ratio", "0.5", "--output", str(out), "--calib-size", "128", *SYN]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.45 < report["macs_ratio"] < 0.55 and out.exists() and out.with_suffix(".allocation.json").exists()
    assert main(["evaluate", "--model", "resnet20", "--checkpoint", str(out), "--split", "test", *SYN]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 500
    cfg = tmp_path / "train.yaml"
    cfg.write_text("epochs: 0.2\nlr: 0.05\nbatch_size: 64\n")
    run_dir = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--checkpoint", str(out), "--output", str(run_dir),
                 "--config", str(cfg), "--epochs", "0.1", *SYN]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["epochs"] == 0.1 and summary["config"]["lr"] == 0.05  # flag beats file
    assert (run_dir / "model.pt").exists() and any((run_dir / "tb").iterdir())


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--model", "resnet21"], "unknown model 'resnet21'"),
    (["evaluate", "--model", "resnet20", "--checkpoint", "/no/such.th"], "not found"),
    (["evaluate", "--model", "resnet20", "--data", "imagefolder:/no/such/dir"], "has no 'train/' subfolder"),
    (["prune", "--model", "resnet20", "--output", "x.pt", "--ratio", "1.5", *SYN], "outside (0, 1]"),
    (["evaluate", "--model", "resnet20", "--config", "/no/such.yaml"], "config file"),
])
def test_bad_input_is_one_line(args, message):
    res = run_cli(*args)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and message in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(not RESNET20_CKPT.exists(), reason="shared checkpoints not present")
def test_mismatched_checkpoint_is_one_line(tmp_path):
    res = run_cli("evaluate", "--model", "resnet56", "--checkpoint", str(RESNET20_CKPT), *SYN)
    assert res.returncode == 2 and "does not match the model" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["evaluate", "prune", "train", "progressive", "search", "apply", "compare"])
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None) (default" not in text and "(required) (default" not in text
    assert text.count("(default:") == text.count("default:")  # no second "default:" spelling
    if command != "compare":
        assert "--model MODEL (required)" in text


@pytest.mark.parametrize("yaml_text,message", [
    ("targets: 0.5\n", "key 'targets' must be a list of float, got 0.5"),
    ("epochs: abc\n", "key 'epochs' must be float, got 'abc'"),
    ("seeds: [0, one]\n", "key 'seeds' must be a list of int"),
    ("data_seed: true\n", "key 'data_seed' must be int, got True"),
])
def test_yaml_values_are_type_checked_in_one_line(tmp_path, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet20\noutput: " + str(tmp_path / "out") + "\n" + yaml_text)
    res = run_cli("compare", "--config", str(cfg), "--data", "synthetic")
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_well_typed_yaml_loads(tmp_path):
    import argparse

    from autoprune.config import add_config_args, resolve_config
    from autoprune.experiments.compare_config import CompareConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet20\noutput: out\ntargets: [0.5, 1]\nepochs: 2\ntrain_subset: null\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser, CompareConfig)
    resolved = resolve_config(CompareConfig, parser.parse_args(["--config", str(cfg)]))
    assert resolved.targets == [0.5, 1] and resolved.train.epochs == 2 and resolved.ws.train_subset is None


def test_nested_options_read_flat_or_nested_and_save_flat(tmp_path):
    """Command configs nest TrainRecipe / RLConfig; YAML may give their options either way, and the
    saved config.yaml uses the flag names, so it reads back as the same config."""
    import argparse

    from autoprune.config import add_config_args, resolve_config, save_config
    from autoprune.experiments.progressive import ProgressiveConfig

    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("model: resnet20\noutput: out\nepochs: 2\nlr_schedule: constant\n")
    nested.write_text("model: resnet20\noutput: out\nrecipe: {epochs: 2, schedule: constant}\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser, ProgressiveConfig)
    a = resolve_config(ProgressiveConfig, parser.parse_args(["--config", str(flat)]))
    b = resolve_config(ProgressiveConfig, parser.parse_args(["--config", str(nested)]))
    assert a == b and a.recipe.epochs == 2 and a.recipe.schedule == "constant" and a.recipe.lr == 0.05
    save_config(a, tmp_path / "saved.yaml")
    assert "lr_schedule: constant" in (tmp_path / "saved.yaml").read_text()
    assert resolve_config(ProgressiveConfig, parser.parse_args(["--config", str(tmp_path / "saved.yaml")])) == a


def test_train_refuses_a_folder_holding_another_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model: resnet20\n")
    (run_dir / "model.pt").write_bytes(b"weights of another run")
    res = run_cli("train", "--model", "resnet20", "--output", str(run_dir), "--epochs", "0.01", *SYN)
    assert res.returncode == 2 and "holds another run" in res.stderr and "Traceback" not in res.stderr
    assert (run_dir / "model.pt").read_bytes() == b"weights of another run"  # nothing overwritten


@pytest.mark.slow
def test_weight_rewinding_from_a_training_run(tmp_path):
    """train --save-every keeps early weights; compare --recipes weight-rewind restarts the kept channels from
    them (chosen on the final weights); without that history the error says how to make it."""
    import torch

    from autoprune.core.allocation import Allocation
    from autoprune.core.io import load_pruned
    from autoprune.core.problem import PruningProblem
    from autoprune.core.structure import ModelStructure
    from autoprune.experiments.compare_config import CompareConfig
    from autoprune.experiments.comparison import rewound
    from autoprune.workspace import WorkspaceOptions

    run = tmp_path / "dense"
    res = run_cli("train", "--model", "resnet20", "--output", str(run), "--epochs", "2", "--save-every", "1",
                  "--train-subset", "64", "--batch-size", "32", *SYN)
    assert res.returncode == 0, res.stderr[-1500:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0.pt", "epoch-1.pt"]
    final, early = load_pruned(run / "model.pt")[0], load_pruned(run / "checkpoints" / "epoch-1.pt")[0]
    s = ModelStructure(final.eval(), torch.randn(1, 3, 32, 32))
    problem = PruningProblem(s, 0.5)
    alloc = Allocation.uniform(s, 0.5)
    cfg = CompareConfig(output="x", ws=WorkspaceOptions(model="resnet20", checkpoint=str(run / "model.pt")),
                        recipes=["weight-rewind"], rewind_to=1)
    net = rewound(cfg, problem, alloc, 10)
    cut = problem.pruned_model(alloc)  # the same channels, final values
    kept = (cut.layer1[0].conv1.weight[:, None] == final.layer1[0].conv1.weight[None]).flatten(2).all(-1)
    idx = kept.float().argmax(1)
    assert torch.equal(net.layer1[0].conv1.weight, early.layer1[0].conv1.weight[idx])
    common = ["compare", "--model", "resnet20", "--output", str(tmp_path / "c"), "--recipes", "weight-rewind",
              "--allocators", "uniform", *SYN]
    res = run_cli(*common, "--checkpoint", str(run / "model.pt"), "--rewind-to", "5")
    assert res.returncode == 2 and "has no training history at epoch 5" in res.stderr
    res = run_cli(*common, "--checkpoint", str(run / "model.pt"))
    assert res.returncode == 2 and "needs --rewind-to" in res.stderr
