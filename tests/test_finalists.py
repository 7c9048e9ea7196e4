"""``--finalists K --finalist-score SCORE``: the K best candidates by the search's score, re-ranked by a
second score; the pick, what is saved and what the logs say."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from autoprune.agents.random_search import random_feasible_counts
from autoprune.cli.main import main
from autoprune.core.allocation import Allocation
from autoprune.core.finalists import rerank, top_candidates
from autoprune.core.io import load_pruned
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import FunctionEvaluator, Scorer

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _params(model) -> float:
    return float(sum(p.numel() for p in model.parameters()))


def test_a_reversed_finalist_score_picks_the_last_finalist(resnet20_structure):
    problem = PruningProblem(resnet20_structure, 0.5)
    search = Scorer(problem, FunctionEvaluator(_params))  # a stub: more parameters, better
    reverse = Scorer(problem, FunctionEvaluator(lambda m: -_params(m)))  # the opposite order
    rng = np.random.default_rng(0)
    allocs = [Allocation.from_counts(resnet20_structure, random_feasible_counts(problem, rng)) for _ in range(8)]
    values = [search.value(a) for a in allocs]
    search.value(allocs[0])  # scored twice: still one candidate
    top = top_candidates(problem, search, 3)
    assert [s.value for _, s in top] == sorted(values, reverse=True)[:3]
    ranked = rerank(problem, search, reverse, 3)
    assert len(ranked) == 3 and ranked[0].search.value == sorted(values, reverse=True)[2]  # the last finalist
    assert [f.final.value for f in ranked] == sorted((f.final.value for f in ranked), reverse=True)
    # only the keys an allocator asked for compete (compare runs several allocators on one scorer)
    mine = search.requested[-3:]
    assert {problem.key(f.allocation) for f in rerank(problem, search, reverse, 8, keys=mine)} == set(mine)
    # an infeasible candidate never becomes a finalist
    dense = Allocation.dense(resnet20_structure)
    search.value(dense)
    assert problem.key(dense) not in {k for k, _ in top_candidates(problem, search, 20)}


def test_heuristics_reach_the_final_stage_whatever_their_search_score(resnet20_structure):
    """``also``: the search's starting points are re-scored even when the cheap score ranks them last, so the
    pick is never below them by the finalist score; an infeasible or repeated one is not added."""
    problem = PruningProblem(resnet20_structure, 0.5)
    search = Scorer(problem, FunctionEvaluator(_params))
    reverse = Scorer(problem, FunctionEvaluator(lambda m: -_params(m)))
    rng = np.random.default_rng(1)
    allocs = [Allocation.from_counts(resnet20_structure, random_feasible_counts(problem, rng)) for _ in range(8)]
    worst = min(allocs, key=search.value)  # last by the search score, first by the finalist score
    top = [k for k, _ in top_candidates(problem, search, 3)]
    assert problem.key(worst) not in top
    ranked = rerank(problem, search, reverse, 3, also=[worst, worst, Allocation.dense(resnet20_structure)])
    assert len(ranked) == 4 and ranked[0].allocation == worst
    assert [problem.key(f.allocation) for f in ranked[1:]] == top[::-1]  # the reversed score orders the rest


def test_search_finalists_pick_log_and_save(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["search", "--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64",
                 "--macs", "0.5", "--agent", "random", "--episodes", "6", "--score", "adaptive-bn", "--finalists", "3",
                 "--finalist-score", "adaptive-bn:loss", "--precision", "fp32", "--output", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "finalists: the 3 best by adaptive-bn re-scored by adaptive-bn:loss" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["score"] == "adaptive-bn:loss" and summary["search_score"] == "adaptive-bn"
    cands = summary["finalists"]["candidates"]
    assert len(cands) == 3 and cands[0]["finalist_score_value"] == max(c["finalist_score_value"] for c in cands)
    with (run / "episodes.csv").open() as f:
        rows = list(csv.DictReader(f))
    marked = [r for r in rows if r["finalist_score"]]
    assert len(marked) >= 3  # every episode that played a finalist (a repeat plays it again)
    keep = [c for c in rows[0] if c.startswith("keep:")]
    assert len({tuple(r[c] for c in keep) for r in marked}) == 3
    third = sorted((float(r["accuracy"]) for r in rows), reverse=True)[2]
    assert min(float(r["accuracy"]) for r in marked) >= third  # the finalists are the search's best
    best = json.loads((run / "best_allocation.json").read_text())
    assert best["score"] == "adaptive-bn:loss" and best["score_value"] == pytest.approx(cands[0]["finalist_score_value"])
    assert summary["best"]["score_value"] == pytest.approx(cands[0]["finalist_score_value"])
    saved, _ = load_pruned(run / "best_model.pt")
    ws_counts = [saved.get_submodule(name).out_channels for name in json.loads(
        (run / "best_allocation.json").read_text())["groups"]]
    assert ws_counts == cands[0]["counts"]


def test_rl_search_finalists_include_the_sensitivity_and_uniform_allocations(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["search", "--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64",
                 "--macs", "0.5", "--episodes", "4", "--warmup-episodes", "2", "--score", "adaptive-bn",
                 "--finalists", "1", "--finalist-score", "adaptive-bn:loss", "--precision", "fp32",
                 "--output", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    cands = json.loads((run / "summary.json").read_text())["finalists"]["candidates"]
    assert sum(c["heuristic"] for c in cands) == 2 and len(cands) in (2, 3)  # the best may be one of them
    with (run / "episodes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["finalist_score"] and rows[1]["finalist_score"]  # episodes 0-1 played sensitivity, uniform
    assert f"finalists: {len(cands)} (the 1 best by adaptive-bn and the 2 heuristic allocations the search " \
           "started from) re-scored by adaptive-bn:loss" in out


def test_candidates_join_the_finalists_a_policy_read_by_its_own_score(tmp_path, capsys):
    """``--candidates``: a heuristic allocator's and a policy's allocations are re-scored with the finalists;
    the policy reads sensitivity measured by the score it was trained on (a second table in the run folder)."""
    from autoprune.agents.policy import PolicyAllocator

    policy = ROOT / "bench" / "results" / "policies" / "universal.zip"
    assert PolicyAllocator(policy).score == "adaptive-bn"
    run = tmp_path / "run"
    code = main(["search", "--model", "resnet20", "--data", "synthetic", "--val-size", "100", "--calib-size", "64",
                 "--macs", "0.5", "--agent", "random", "--episodes", "3", "--score", "adaptive-bn:loss",
                 "--finalists", "1", "--finalist-score", "adaptive-bn", "--candidates", "global", f"policy:{policy}",
                 "--precision", "fp32", "--output", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    cands = json.loads((run / "summary.json").read_text())["finalists"]["candidates"]
    named = {c["candidate"] for c in cands if c["candidate"]}
    assert named <= {"global", f"policy:{policy}"} and len(cands) == 1 + len(named)  # a repeat is one finalist
    assert {t["key"]["score"] for t in json.loads((run / "sensitivity.json").read_text())["tables"]} == {"adaptive-bn"}
    assert f"--candidates {' '.join(sorted(named, key=[c['candidate'] for c in cands].index))}" in out


@pytest.mark.parametrize("args, message", [
    (["--finalists", "-1"], "--finalists -1 must be 0"),
    (["--finalists", "2", "--finalist-score", "finetune"], "--score 'finetune'"),
])
def test_bad_finalists_options_get_one_line(tmp_path, capsys, args, message):
    for cmd in (["search", "--agent", "random", "--macs", "0.5"],
                ["compare", "--allocators", "random", "--targets", "0.5"]):
        code = main(cmd + ["--model", "resnet20", "--data", "synthetic", "--output", str(tmp_path / "bad")] + args)
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


def test_compare_gives_random_search_the_finalists_stage(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--model", "resnet20", "--data", "synthetic", "--targets", "0.5", "--allocators",
                 "random@samples=5", "uniform", "--finalists", "2", "--finalist-score", "adaptive-bn:loss",
                 "--recipes", "finetune", "--epochs", "0.05", "--train-subset", "128", "--batch-size", "64",
                 "--val-size", "100", "--calib-size", "64", "--device", "cpu", "--precision", "fp32",
                 "--output", str(out)])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert "random seed 0: 2 finalists re-scored by adaptive-bn:loss" in text
    assert "uniform seed 0: 2 finalists" not in text  # nothing to re-rank: uniform scores no candidates
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["random"]["finalist_score_value"] is not None


@pytest.mark.parametrize("args, message", [
    (["--finalists", "0", "--candidates", "global"], "pass --finalists K"),
    (["--candidates", "no-such-allocator"], "no-such-allocator"),
    (["--candidates", "policy:missing.zip"], "missing.zip"),
])
def test_bad_candidates_get_one_line(tmp_path, capsys, args, message):
    code = main(["search", "--agent", "random", "--macs", "0.5", "--model", "resnet20", "--data", "synthetic",
                 "--output", str(tmp_path / "bad")] + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
