"""Multi-fidelity scoring: a candidate that surely cannot beat the best stops early, and an early-stopped
estimate is flagged and never reported as a full score."""
import csv
import json

import numpy as np
import pytest
import torch

from autoprune.agents.random_search import random_feasible_counts
from autoprune.cli.main import main
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.models import create_model
from autoprune.train.evaluator import AdaptiveBNEvaluator, accuracy_upper_bound

from .conftest import RESNET20_CKPT, SHARED

CIFAR = SHARED / "data" / "cifar10"


def test_upper_bound_is_sound_and_tightens():
    assert accuracy_upper_bound(50, 100, 100, 0.01) == pytest.approx(0.5)  # everything seen: exact
    loose, tight = accuracy_upper_bound(5, 10, 1000, 0.01), accuracy_upper_bound(250, 500, 1000, 0.01)
    assert 0.5 < tight < loose <= 1.0
    rng = np.random.default_rng(0)  # empirical coverage: a 0.6-accurate model, 2,000 images
    truth = rng.random(2000) < 0.6
    misses = sum(accuracy_upper_bound(int(s[:256].sum()), 256, 2000, 0.01) < s.mean()
                 for s in (rng.permutation(truth) for _ in range(500)))
    assert misses <= 10


@pytest.mark.slow
def test_evaluator_stops_a_hopeless_candidate_and_flags_it(synthetic_bundle):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    x, y = synthetic_bundle.tensors("val")
    ev = AdaptiveBNEvaluator(synthetic_bundle.calibration_batches(64), x, y, eval_batch_size=32, precision="fp32")
    full = ev.score(model)
    assert not full.partial and full.images == len(y)
    stopped = ev.score(model, must_beat=0.99)  # an untrained net cannot reach 99%
    assert stopped.partial and stopped.images < len(y) and stopped.value < 0.99
    assert not ev.score(model, must_beat=0.0).partial  # anything beats 0: no reason to stop


@pytest.mark.slow
def test_problem_rescores_partial_entries_before_reporting(resnet20_structure, synthetic_bundle):
    x, y = synthetic_bundle.tensors("val")
    ev = AdaptiveBNEvaluator(synthetic_bundle.calibration_batches(64), x, y, eval_batch_size=32, precision="fp32")
    problem = PruningProblem(resnet20_structure, 0.5)
    scorer = Scorer(problem, ev, early_stop=True)
    scorer.best_full = 0.99  # pretend an excellent candidate was already found
    alloc = Allocation.from_counts(resnet20_structure, random_feasible_counts(problem, np.random.default_rng(0)))
    estimate = scorer.score(alloc)
    assert estimate.partial
    scorer.full_scores()
    full = scorer.score(alloc)
    assert not full.partial and full.images == len(y) and estimate.value < 0.99


@pytest.mark.skipif(not (CIFAR.is_dir() and RESNET20_CKPT.exists()), reason="shared data not present")
@pytest.mark.slow
def test_search_with_early_stop_logs_partial_rows_and_reports_full_scores(tmp_path, capsys):
    """ResNet-20 on 2,100 real training images: candidates differ enough for early stopping to engage."""
    root = tmp_path / "slice"
    for cls in sorted(p.name for p in (CIFAR / "train").iterdir()):
        (root / "train" / cls).mkdir(parents=True)
        (root / "test" / cls).mkdir(parents=True)
        for f in sorted((CIFAR / "train" / cls).iterdir())[:210]:
            (root / "train" / cls / f.name).symlink_to(f)
    run = tmp_path / "run"
    code = main(["search", "--finalists", "0", "--model", "resnet20", "--checkpoint", str(RESNET20_CKPT), "--data", f"imagefolder:{root}",
                 "--val-size", "2000", "--calib-size", "100", "--macs", "0.3", "--agent", "random", "--episodes", "8",
                 "--output", str(run), "--no-progress", "--early-stop", "--score", "adaptive-bn"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((run / "episodes.csv").open()))
    assert {"images", "partial"} <= set(rows[0])
    assert rows[0]["partial"] == "0" and rows[0]["images"] == "2000"  # nothing to beat yet
    assert any(r["partial"] == "1" for r in rows)  # the switch engages on this run
    summary = json.loads((run / "summary.json").read_text())
    best = summary["best"]["score_value"]
    best_rows = [r for r in rows if float(r["accuracy"]) == pytest.approx(best, abs=1e-5)]
    assert best_rows and all(r["partial"] == "0" for r in best_rows)
    assert all(float(r["accuracy"]) < best and int(r["images"]) < 2000 for r in rows if r["partial"] == "1")


def test_early_stop_with_a_loss_score_is_one_line(tmp_path, capsys):
    """The default score is a loss, which never stops early: asking for both is refused before data is read."""
    code = main(["search", "--model", "resnet20", "--data", "synthetic", "--macs", "0.5", "--early-stop",
                 "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--score reconstruct (its top-1)" in err[0]
    assert not (tmp_path / "r").exists()
