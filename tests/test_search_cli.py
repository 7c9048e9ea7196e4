"""The search and apply commands end to end on tiny synthetic settings, and their one-line errors."""
import json

import pytest

from autoprune.cli.main import main


def _cli(capsys, *args: str):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_search_apply_and_errors(tmp_path, capsys, swept):
    run = tmp_path / "run"
    common = ["--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64"]
    code, out, err = _cli(capsys, "search", *common, "--finalists", "0", "--macs", "0.5", "--output", str(run), "--episodes", "4",
                          "--warmup-episodes", "2", "--eval-every", "2", "--no-progress", "--sensitivity", swept())
    assert code == 0, err
    assert "uniform allocation" in out and "best ddpg allocation" in out
    assert "kept policy (policy.zip)" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["policy"]["distilled"] and "fitted onto the best episode, plays it" in out
    assert summary["policy"]["noise_free_reward"] == pytest.approx(summary["best"]["score_value"], abs=1e-6)
    for f in ("config.yaml", "policy.zip", "final_policy.zip", "best_allocation.json", "episodes.csv", "best_model.pt", "reward.png",
              "allocation.png", "summary.json"):
        assert (run / f).exists(), f
    assert any((run / "tb").iterdir())
    best = json.loads((run / "best_allocation.json").read_text())
    assert 0.49 <= best["macs_ratio"] <= 0.5 and best["score_value"] is not None
    from autoprune.core.io import load_pruned

    assert load_pruned(run / "best_model.pt")[1] == "resnet20"
    stamp = (run / "episodes.csv").read_bytes()
    errors = {
        "another run": ("search", *common, "--macs", "0.5", "--output", str(run)),
        "unknown agent": ("search", *common, "--macs", "0.5", "--output", str(tmp_path / "x"), "--agent", "ppo"),
        "outside (0, 1]": ("search", *common, "--macs", "1.5", "--output", str(tmp_path / "y")),
        "below what the bounds allow": ("search", *common, "--macs", "0.02", "--output", str(tmp_path / "z")),
        "cannot be read": ("apply", *common, "--macs", "0.5", "--policy", str(run / "config.yaml"),
                           "--output", str(tmp_path / "w")),
    }
    for expected, args in errors.items():
        code, out, err = _cli(capsys, *args)
        assert code == 2 and expected in err, (expected, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (run / "episodes.csv").read_bytes() == stamp  # nothing overwritten
    import torch

    from autoprune.core.io import load_model

    applied, dense_file = tmp_path / "applied", tmp_path / "dense32.pt"
    dense = load_model("resnet32", 10)
    torch.save(dense.state_dict(), dense_file)
    # --lr 0: the fine-tune moves only BN statistics, so the saved weights show where fine-tuning started
    code, out, err = _cli(capsys, "apply", "--model", "resnet32", "--checkpoint", str(dense_file), "--data", "synthetic",
                          "--val-size", "100", "--calib-size", "64", "--macs", "0.4", "--policy", str(run / "policy.zip"),
                          "--output", str(applied), "--finetune-epochs", "0.02", "--lr", "0",
                          "--sensitivity", swept("resnet32"))
    assert code == 0, err
    report = json.loads((applied / "report.json").read_text())
    assert report["meets_target"] and 0.396 <= report["cost_ratio"] <= 0.4
    assert report["finetune"]["steps"] >= 1 and report["score"] == "reconstruct:loss"
    assert "uniform_score_value" in report and (applied / "model.pt").exists()
    # fine-tuning started from the plain pruned weights (values cut out of the dense ones), not the refitted ones
    saved = dict(load_pruned(applied / "model.pt")[0].named_modules())
    cut = [(n, m) for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d)
           and saved[n].weight.shape != m.weight.shape]
    assert cut and all(torch.isin(saved[n].weight, m.weight).all() for n, m in cut)


@pytest.mark.slow
def test_cli_random_search_logs_like_rl(tmp_path, capsys):
    run = tmp_path / "random"
    code, out, err = _cli(capsys, "search", "--model", "resnet20", "--data", "synthetic", "--val-size", "100",
                          "--calib-size", "64", "--params", "0.6", "--agent", "random", "--episodes", "3", "--finalists", "0",
                          "--output", str(run), "--no-progress")
    assert code == 0, err
    assert "best random allocation" in out
    lines = (run / "episodes.csv").read_text().strip().splitlines()
    assert len(lines) == 4 and not (run / "policy.zip").exists()
    best = json.loads((run / "best_allocation.json").read_text())
    assert best["metric"] == "params" and 0.594 <= best["params"] / best["dense_params"] <= 0.6
    accs = [float(line.split(",")[2]) for line in lines[1:]]
    assert best["score_value"] == pytest.approx(max(accs), abs=1e-6)
    # resuming continues the same seeded sequence: the 3 scored candidates are kept, 2 more are drawn
    code, _, err = _cli(capsys, "search", "--model", "resnet20", "--data", "synthetic", "--params", "0.6",
                        "--agent", "random", "--output", str(run), "--resume", "--episodes", "5", "--no-progress")
    assert code == 0, err
    more = (run / "episodes.csv").read_text().strip().splitlines()
    assert len(more) == 6 and [line.split(",")[:4] for line in more[:4]] == [line.split(",")[:4] for line in lines]


@pytest.mark.slow
def test_budget_conditioned_search_over_a_target_range(tmp_path, capsys, swept):
    """--macs 0.3:0.6: every episode samples its target from the range (on a 0.01 grid) and meets it; the
    kept policy is scored at the range's ends and middle; a range where one target is expected is refused."""
    import csv

    run = tmp_path / "range"
    common = ["--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64"]
    code, out, err = _cli(capsys, "search", *common, "--finalists", "0", "--macs", "0.3:0.6", "--output", str(run), "--episodes", "8",
                          "--warmup-episodes", "3", "--eval-every", "2", "--no-progress", "--sensitivity", swept())
    assert code == 0, err
    rows = list(csv.DictReader(open(run / "episodes.csv")))
    targets = [float(r["target"]) for r in rows]
    assert all(0.3 <= t <= 0.6 and round(t, 2) == t for t in targets) and len(set(targets)) > 3
    for r in rows:
        assert float(r["target"]) * 0.99 <= float(r["cost_ratio"]) <= float(r["target"]) + 1e-6
    summary = json.loads((run / "summary.json").read_text())
    assert summary["target_range"] == [0.3, 0.6]
    assert [p["target"] for p in summary["policy_at_targets"]] == [0.3, 0.45, 0.6]
    for p in summary["policy_at_targets"]:
        assert p["target"] * 0.99 <= p["cost_ratio"] <= p["target"] + 1e-6
    assert "reward 'relative'" in out
    code, _, err = _cli(capsys, "apply", *common, "--macs", "0.3:0.6", "--policy", str(run / "policy.zip"),
                        "--output", str(tmp_path / "a"))
    assert code == 2 and "not a range" in err
    with pytest.raises(SystemExit) as exit_:  # argparse's own one-line error for a malformed flag
        main(["search", *common, "--macs", "0.6:0.3", "--output", str(tmp_path / "b")])
    assert exit_.value.code == 2 and "LOW < HIGH" in capsys.readouterr().err


@pytest.mark.slow
def test_search_trains_one_policy_on_several_models(tmp_path, capsys, swept):
    """--more-models: episodes alternate between ResNet-20 and ResNet-32, one log each, relative reward."""
    import csv

    run = tmp_path / "multi"
    code, out, err = _cli(capsys, "search", "--model", "resnet20", "--more-models", "resnet32", "--data", "synthetic",
                          "--val-size", "100", "--calib-size", "64", "--macs", "0.5", "--finalists", "0", "--output", str(run),
                          "--episodes", "4", "--warmup-episodes", "2", "--eval-every", "2", "--no-progress",
                          "--sensitivity", swept("resnet32") and swept())  # one file holds both models' tables
    assert code == 0, err
    assert "reward 'relative'" in out and (run / "policy.zip").exists() and (run / "best_model.pt").exists()
    first = [int(r["episode"]) for r in csv.DictReader(open(run / "0-9g" / "episodes.csv"))]
    second = [int(r["episode"]) for r in csv.DictReader(open(run / "1-15g" / "episodes.csv"))]
    assert first == [0, 2] and second == [1, 3]
    code, _, err = _cli(capsys, "search", "--model", "resnet20", "--more-models", "resnet32", "--agent", "random",
                        "--data", "synthetic", "--macs", "0.5", "--output", str(tmp_path / "r"))
    assert code == 2 and "RL --agent" in err
